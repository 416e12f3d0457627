"""The ``oracle`` h_C: PRIVILEGED, SIMULATION-ONLY ground-truth keypoints.

It does not look at pixels at all: it asks a :class:`GroundTruthSource`
(the simulator, which knows every body's pose) where each keypoint truly
is and whether the camera truly sees it. ``transfer`` and ``update``
return the true positions, with confidence 1 for visible and 0 for hidden
points (behind the camera, outside the image, or covered by another
surface). It stands for the paper's simulator protocol (keypoints the
simulator knows) and is the yardstick the real backends are measured
against (benchmarks/bench_tracking_gt.py); it can never run on the robot.

Layering: perception must not import the bringup package, so the source is
injected: ``OracleCorrespondence(source)``, or, when built by name
(``make_correspondence("oracle")``, e.g. ``atk-train --backend oracle``),
found through the ``atk_perception.ground_truth`` entry point, which
``atk_bringup`` registers (atk_bringup.sim.ground_truth.make_source).
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Protocol

import numpy as np

from atk_perception.correspondence import Correspondence, CorrespondenceError, TrackResult

#: Entry-point group through which the simulator provides ground truth.
ENTRY_POINT_GROUP = "atk_perception.ground_truth"


class GroundTruthSource(Protocol):
    """Where the simulator says a point on a frame is (shapes as in correspondence.py)."""

    def anchor(self, image: np.ndarray, points: np.ndarray) -> Any:
        """Attach pixels (N, 2) of the frame ``image`` to what they lie on; opaque result."""

    def locate(self, anchors: Any, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(points (N, 2) pixels, visible (N,) bool) of ``anchors`` in the frame ``image``."""


def load_ground_truth_source() -> GroundTruthSource:
    """The installed simulator's source (entry point ``atk_perception.ground_truth``)."""
    eps = list(entry_points(group=ENTRY_POINT_GROUP))
    if not eps:
        raise ValueError("the oracle h_C is privileged and simulation-only: it needs a ground-truth source, "
                         f"and no package registers one (entry point group {ENTRY_POINT_GROUP!r}; "
                         "atk_bringup does once built with colcon)")
    return eps[0].load()()


class OracleCorrespondence(Correspondence):
    """h_C from simulator ground truth (PRIVILEGED, SIMULATION-ONLY).

    Points the truth puts outside the image are clamped to its border (as
    propagation and the tracker do) and reported not visible.
    """

    name = "oracle"

    def __init__(self, source: GroundTruthSource) -> None:
        self.source = source
        self._anchors: Any = None
        self._last_transfer: tuple[np.ndarray, np.ndarray, Any] | None = None  # (image, points, anchors)

    def bind_episode(self, meta: dict) -> None:
        """Propagation hook (atk_policy.propagation): the recorded episode about to be tracked."""
        bind = getattr(self.source, "bind_episode", None)
        if bind is not None:
            bind(meta)

    def _locate(self, anchors: Any, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise CorrespondenceError(f"oracle h_C: expected an (H, W, 3) frame, got {image.shape}")
        try:
            pts, vis = self.source.locate(anchors, image)
        except ValueError as exc:
            raise CorrespondenceError(str(exc)) from exc
        pts = np.asarray(pts, np.float64)
        vis = np.asarray(vis, bool).copy()
        h, w = image.shape[:2]
        bad = ~np.isfinite(pts).all(axis=1)
        pts[bad] = 0.0
        out = bad | (pts[:, 0] < 0) | (pts[:, 0] > w - 1) | (pts[:, 1] < 0) | (pts[:, 1] > h - 1)
        vis[out] = False
        pts = np.clip(pts, 0, [w - 1, h - 1]).astype(np.float32)
        return pts, vis.astype(np.float32), vis

    def _anchor(self, image: np.ndarray, points: np.ndarray) -> Any:
        p = np.asarray(points, np.float32)
        if p.ndim != 2 or p.shape[1] != 2:
            raise CorrespondenceError(f"oracle h_C: points must be (N, 2), got {p.shape}")
        try:
            return self.source.anchor(np.asarray(image), p)
        except ValueError as exc:
            raise CorrespondenceError(str(exc)) from exc

    def transfer(self, template_image: np.ndarray, template_points: np.ndarray,
                 image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        anchors = self._anchor(template_image, template_points)
        pts, conf, _ = self._locate(anchors, image)
        self._last_transfer = (image, pts, anchors)
        return pts, conf

    def reset(self, image: np.ndarray, points: np.ndarray) -> None:
        p = np.asarray(points, np.float32)
        last = self._last_transfer
        if last is not None and (last[0] is image or np.array_equal(last[0], image)) and len(p) <= len(last[1]) \
                and np.allclose(p, last[1][:len(p)], atol=1e-3):
            # The points of our own transfer onto this frame: keep their anchors,
            # so a keypoint hidden at the transfer stays on its body instead of
            # being re-anchored on whatever covers it.
            self._anchors = _take(last[2], len(p))
        else:
            self._anchors = self._anchor(image, p)

    def update(self, image: np.ndarray) -> TrackResult:
        if self._anchors is None:
            raise CorrespondenceError("oracle h_C: update() before reset()")
        pts, conf, vis = self._locate(self._anchors, image)
        return TrackResult(pts, conf, vis)


def _take(anchors: Any, n: int) -> Any:
    """The first n of ``anchors`` (a dataclass of per-point arrays, or a sequence)."""
    fields = getattr(anchors, "__dataclass_fields__", None)
    if fields:
        return type(anchors)(**{k: getattr(anchors, k)[:n] for k in fields})
    return anchors[:n]
