"""Input checks shared by the h_C backends (ROS-free).

Every backend refuses bad input the same way, with a
:class:`~atk_perception.correspondence.CorrespondenceError` whose message
says what was received and what is expected, so that an operator can act on
it (wrong camera encoding, wrong resolution, keypoints from another image).
"""
from __future__ import annotations

import cv2
import numpy as np

from atk_perception.correspondence import CorrespondenceError


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an image and return it as ``(H, W)`` uint8 grey.

    Accepts ``(H, W)`` grey, ``(H, W, 1)`` grey or ``(H, W, 3)`` RGB, uint8
    only (a 16-bit depth image or a float image passed by mistake is refused
    rather than silently rescaled).
    """
    if not isinstance(image, np.ndarray):
        raise CorrespondenceError(
            f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise CorrespondenceError(
            f"{name}: expected uint8 pixels, got dtype {image.dtype} "
            "(convert 16-bit or float images to 8-bit RGB or grey first)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim in (2, 3) and (image.shape[0] < 16 or image.shape[1] < 16):
        raise CorrespondenceError(
            f"{name}: image of {image.shape[1]}x{image.shape[0]} pixels is empty "
            "or too small to track in (need at least 16x16)")
    if image.ndim == 2:
        gray = image
    elif image.ndim == 3 and image.shape[2] == 3:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    else:
        raise CorrespondenceError(
            f"{name}: expected shape (H, W) or (H, W, 3), got {image.shape}")
    return np.ascontiguousarray(gray)


def check_points(points: np.ndarray, shape: tuple[int, int],
                 name: str = "points") -> np.ndarray:
    """Validate ``(N, 2)`` pixel points lying inside an image of ``shape`` (H, W).

    Returns the points as a new float32 ``(N, 2)`` array. N may be 0.
    """
    try:
        pts = np.array(points, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as exc:
        raise CorrespondenceError(f"{name}: not numeric ({exc})") from exc
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise CorrespondenceError(
            f"{name}: expected shape (N, 2) pixels, got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise CorrespondenceError(f"{name}: contains NaN or infinite values")
    h, w = shape
    outside = ((pts[:, 0] < 0) | (pts[:, 0] > w - 1)
               | (pts[:, 1] < 0) | (pts[:, 1] > h - 1))
    if np.any(outside):
        idx = np.flatnonzero(outside)
        raise CorrespondenceError(
            f"{name}: {idx.size} point(s) outside the {w}x{h} image, e.g. "
            f"index {idx[0]} at ({pts[idx[0], 0]:.1f}, {pts[idx[0], 1]:.1f}); "
            "were they defined on an image of another resolution?")
    return pts


def check_same_size(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Refuse two grey images of different sizes (e.g. template vs live camera)."""
    if a.shape != b.shape:
        raise CorrespondenceError(
            f"{name_a} is {a.shape[1]}x{a.shape[0]} but {name_b} is "
            f"{b.shape[1]}x{b.shape[0]}: they must come from the same camera "
            "resolution (re-record the template or set the camera resolution)")
