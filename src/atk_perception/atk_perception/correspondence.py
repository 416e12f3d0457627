"""The correspondence function h_C: one interface, several backends.

ROS-free. Points are ``(N, 2)`` float32 pixel coordinates (x right, y down,
origin at the top-left pixel corner); confidences are ``(N,)`` float32 in
[0, 1]; visibility is ``(N,)`` bool. Images are ``(H, W, 3)`` uint8 RGB.

Two uses (paper, section 3.3 and Algorithm 1):

* ``transfer(template_image, template_points, image)``: one-off alignment of
  keypoints defined on a template (the canonical frame I_can) onto another
  image, with a confidence per point ("highest-score matches").
* ``reset(image, points)`` then ``update(image)`` per frame: online tracking.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


class CorrespondenceError(ValueError):
    """Bad input to h_C (empty or mis-sized image, points outside it, ...)."""


@dataclass(frozen=True)
class TrackResult:
    """Result of one ``update``.

    points: (N, 2) float32 pixels; confidence: (N,) float32 in [0, 1];
    visible: (N,) bool; covered: (N,) bool, the robot's own arm or gripper
    covers the point (robot-aware occlusion: its position is a prediction from
    the robot model), or None where no robot model is used.
    """

    points: np.ndarray
    confidence: np.ndarray
    visible: np.ndarray
    covered: np.ndarray | None = None


class Correspondence(ABC):
    """h_C: transfer from a template, and frame-to-frame tracking."""

    @abstractmethod
    def transfer(self, template_image: np.ndarray, template_points: np.ndarray,
                 image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map ``template_points`` (N, 2) on ``template_image`` onto ``image``.

        Returns (points (N, 2) float32 pixels, confidence (N,) float32 in [0, 1]).
        """

    @abstractmethod
    def reset(self, image: np.ndarray, points: np.ndarray) -> None:
        """Start tracking ``points`` (N, 2) pixels that lie on ``image``."""

    @abstractmethod
    def update(self, image: np.ndarray) -> TrackResult:
        """Track the current points into ``image`` (the next frame)."""

    def set_points(self, points: np.ndarray, which: np.ndarray) -> bool:
        """Replace the tracked positions of the points ``which`` (N,) bool by ``points`` (N, 2).

        Used by :class:`~atk_perception.robot_occlusion.RobotAwareTracker`:
        while the robot covers a point its position is predicted, and tracking
        must resume from the prediction. Returns False when the backend cannot
        take positions back (the default); the prediction is then only reported.
        """
        return False
