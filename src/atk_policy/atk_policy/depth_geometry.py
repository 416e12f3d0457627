"""Depth images as model inputs: metres, pixel rays, back-projection, crop, sampling.

ROS-free, numpy + OpenCV. Conventions as in atk_perception.reprojection:
camera frame x right, y down, z forward (OpenCV / ROS optical frame);
depth images are REP 118 uint16 millimetres, registered to the colour
camera, with 0 meaning "no reading"; K is the pinhole matrix of a
sensor_msgs/CameraInfo (pixel centres at integers), ``d`` its distortion
(plumb_bob / rational_polynomial, OpenCV order).

Back-projection of pixel (u, v) with depth z (metres, distance along the
optical axis, as depth cameras and MuJoCo report it)::

    (x', y') = undistort((u, v); K, d)      # (u - cx) / fx, (v - cy) / fy without distortion
    X = (x' z, y' z, z)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

#: CameraInfo distortion models OpenCV's undistortPoints implements.
SUPPORTED_DISTORTION = ("plumb_bob", "rational_polynomial", "")


class DepthInputError(ValueError):
    """Depth or intrinsics that cannot be used (wrong shape, unknown distortion); says what."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera of a depth image: k (3, 3) pixels, d distortion (OpenCV order), size (W, H)."""

    k: tuple[float, ...]
    width: int
    height: int
    d: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        k = np.asarray(self.k, np.float64).reshape(-1)
        if k.size != 9 or not np.all(np.isfinite(k)) or k[0] <= 0 or k[4] <= 0:
            raise DepthInputError(f"intrinsics: K must be 9 finite values with fx, fy > 0, got {list(self.k)}")
        if self.width < 1 or self.height < 1:
            raise DepthInputError(f"intrinsics: size must be >= 1 pixel, got {self.width}x{self.height}")
        if len(self.d) not in (0, 4, 5, 8, 12, 14) or not np.all(np.isfinite(self.d)):
            raise DepthInputError(f"intrinsics: distortion must be 0, 4, 5, 8, 12 or 14 finite OpenCV "
                                  f"coefficients, got {list(self.d)}")
        object.__setattr__(self, "k", tuple(float(v) for v in k))
        object.__setattr__(self, "d", tuple(float(v) for v in self.d))

    @property
    def matrix(self) -> np.ndarray:
        """K (3, 3) float64."""
        return np.asarray(self.k, np.float64).reshape(3, 3)

    @classmethod
    def from_camera_info(cls, info: Mapping[str, Any]) -> "Intrinsics":
        """From an Episode's ``meta["camera_info"]`` ({width, height, k, d, distortion_model})."""
        d = tuple(float(v) for v in info.get("d") or ())
        model = str(info.get("distortion_model") or "")
        if any(d) and model not in SUPPORTED_DISTORTION:
            raise DepthInputError(f"camera_info distortion model {model!r} is not supported for back-projection; "
                                  f"supported: {[m for m in SUPPORTED_DISTORTION if m]} (or no distortion)")
        return cls(tuple(info["k"]), int(info["width"]), int(info["height"]), d if any(d) else ())

    def to_dict(self) -> dict:
        return {"k": list(self.k), "d": list(self.d), "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Intrinsics":
        return cls(tuple(doc["k"]), int(doc["width"]), int(doc["height"]), tuple(doc.get("d") or ()))

    def rays(self) -> np.ndarray:
        """(H, W, 2) float32 normalised image coordinates (x', y') of every pixel centre (z = 1)."""
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        if not self.d:
            k = self.matrix
            return np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1]], -1).astype(np.float32)
        import cv2

        pix = np.stack([u, v], -1).reshape(-1, 1, 2)
        und = cv2.undistortPoints(pix, self.matrix, np.asarray(self.d, np.float64))
        return und.reshape(self.height, self.width, 2).astype(np.float32)


def depth_metres(depth_mm: np.ndarray) -> np.ndarray:
    """(H, W) uint16 mm -> (H, W) float32 metres; 0 stays 0 (no reading)."""
    d = np.asarray(depth_mm)
    if d.ndim != 2 or d.dtype != np.uint16 or d.size == 0:
        raise DepthInputError(f"depth must be an (H, W) uint16 image in millimetres, got {d.shape} {d.dtype}")
    return d.astype(np.float32) * np.float32(1e-3)


def backproject(depth_mm: np.ndarray, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel with a reading as a camera-frame point.

    depth_mm (H, W) uint16 mm; rays (H, W, 2) from :meth:`Intrinsics.rays`.
    Returns (points (P, 3) float32 metres, pixel index (P,) into the
    row-major image), P = pixels with depth > 0, in row-major order.
    """
    z = depth_metres(depth_mm)
    if rays.shape != z.shape + (2,):
        raise DepthInputError(f"depth is {z.shape[1]}x{z.shape[0]} but the intrinsics are for "
                              f"{rays.shape[1]}x{rays.shape[0]}: depth must be registered to that camera")
    idx = np.flatnonzero(z.reshape(-1) > 0)
    zz = z.reshape(-1)[idx]
    r = rays.reshape(-1, 2)[idx]
    return np.column_stack([r[:, 0] * zz, r[:, 1] * zz, zz]).astype(np.float32), idx


def crop_range(points: np.ndarray, near_m: float, far_m: float) -> np.ndarray:
    """Points (P, 3) whose depth z lies in [near_m, far_m] (the workspace crop, camera frame)."""
    z = points[:, 2]
    return points[(z >= near_m) & (z <= far_m)]


def sample_points(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of ``points`` (P, 3): without replacement when P >= n, else every point once and the
    rest drawn again (max-pooling ignores repeats); P = 0 gives n points at the camera origin
    (outside any crop: the encoder sees "nothing in the workspace"). Returns (n, 3) float32."""
    p = len(points)
    if p == 0:
        return np.zeros((n, 3), np.float32)
    if p >= n:
        idx = rng.choice(p, size=n, replace=False)
    else:
        idx = np.concatenate([rng.permutation(p), rng.integers(0, p, size=n - p)])
    return np.asarray(points[idx], np.float32)


def fit_plane(points: np.ndarray, inlier_m: float, rng: np.random.Generator,
              iterations: int = 200) -> tuple[np.ndarray, float, float]:
    """The dominant plane of ``points`` (P, 3) by RANSAC, refined by least squares on its inliers.

    Returns (normal (3,) unit, offset d, inlier share): n . X + d = 0 on the
    plane, oriented so that the camera (the origin) is on the positive side
    (d > 0), i.e. n . X + d is the height above the plane towards the camera.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    if len(pts) < 3:
        raise DepthInputError(f"a plane needs at least 3 points, got {len(pts)}")
    best, best_count = None, -1
    for _ in range(iterations):
        p0, p1, p2 = pts[rng.choice(len(pts), 3, replace=False)]
        n = np.cross(p1 - p0, p2 - p0)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n /= norm
        count = int(np.sum(np.abs(pts @ n - n @ p0) < inlier_m))
        if count > best_count:
            best, best_count = (n, -float(n @ p0)), count
    if best is None:
        raise DepthInputError("no plane: the points are collinear")
    n, d = best
    inliers = pts[np.abs(pts @ n + d) < inlier_m]
    centre = inliers.mean(0)
    n = np.linalg.svd(inliers - centre, full_matrices=False)[2][-1]
    d = -float(n @ centre)
    if d < 0:
        n, d = -n, -d
    return n, d, float(np.mean(np.abs(pts @ n + d) < inlier_m))
