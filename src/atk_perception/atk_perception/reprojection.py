"""Viewpoint reprojection (paper, appendix A.2), ROS-free.

When the camera is moved away from where the policy was trained, keypoints
found by h_C in the moved camera's image are lifted to 3D with that camera's
depth and intrinsics, carried into the training camera's frame through both
cameras' extrinsics, and projected with the training camera's intrinsics:
the policy then sees keypoints as if the view had not changed.

Extrinsics come from one fixed ArUco marker seen by both cameras
(``estimate_marker_pose``, OpenCV's ``cv2.aruco.ArucoDetector``,
dictionary DICT_6X6_250 by default, ``cv2.solvePnP`` with IPPE_SQUARE).

Conventions:

* ``T_cam_marker``: (4, 4) float64 rigid transform taking marker-frame
  points to camera-frame points (X_cam = R X_marker + t), metres. The marker
  frame is OpenCV's: origin at the marker centre, x right, y up on the
  printed marker, z out of the marker towards the camera.
* Camera frame: OpenCV's (x right, y down, z forward); pixels (N, 2) as h_C
  gives them, in the convention of the intrinsics (OpenCV calibration:
  the top-left pixel's centre is (0, 0)).
* Depth images follow ROS REP 118: **uint16 is millimetres** (Azure Kinect
  16UC1), **float32/float64 is metres** (32FC1); 0, NaN or inf mean no depth.
  Depth must be registered to the colour image the keypoints come from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


class ReprojectionError(ValueError):
    """Bad input to the reprojection or no usable marker."""


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics (pixels) with optional OpenCV distortion coefficients."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: tuple[float, ...] = field(default_factory=tuple)
    """OpenCV order (k1, k2, p1, p2[, k3, ...]); empty for none (e.g. rectified images)."""

    def __post_init__(self) -> None:
        for name in ("fx", "fy"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"CameraIntrinsics.{name} = {getattr(self, name)!r}: must be > 0")
        for name in ("cx", "cy"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"CameraIntrinsics.{name} = {getattr(self, name)!r}: must be finite")
        for name in ("width", "height"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CameraIntrinsics.{name} = {getattr(self, name)!r}: must be >= 1")
        if len(self.distortion) not in (0, 4, 5, 8, 12, 14):
            raise ValueError(f"CameraIntrinsics.distortion has {len(self.distortion)} "
                             "coefficients: OpenCV takes 4, 5, 8, 12 or 14 (or none)")

    @property
    def matrix(self) -> np.ndarray:
        """K, (3, 3) float64."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], float)

    @property
    def dist_coeffs(self) -> np.ndarray:
        """(D,) float64 (zeros(5) when there is no distortion)."""
        return np.array(self.distortion if self.distortion else (0.0,) * 5, float)

    @classmethod
    def from_matrix(cls, k: np.ndarray, width: int, height: int,
                    distortion: tuple[float, ...] | np.ndarray = ()) -> "CameraIntrinsics":
        """From K (3, 3), e.g. a CameraInfo's ``k`` reshaped; ``distortion`` its ``d``."""
        k = np.asarray(k, float).reshape(3, 3)
        return cls(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]),
                   int(width), int(height), tuple(float(d) for d in np.ravel(distortion)))


def _check_transform(t: np.ndarray, name: str) -> np.ndarray:
    t = np.asarray(t, float)
    if t.shape != (4, 4) or not np.all(np.isfinite(t)):
        raise ReprojectionError(f"{name}: expected a finite (4, 4) transform, got shape {t.shape}")
    r = t[:3, :3]
    if (not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or abs(np.linalg.det(r) - 1) > 1e-4
            or not np.allclose(t[3], [0, 0, 0, 1])):
        raise ReprojectionError(f"{name}: not a rigid transform (rotation not orthonormal "
                                "or last row not [0, 0, 0, 1])")
    return t


def invert_transform(t: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform."""
    t = np.asarray(t, float)
    out = np.eye(4)
    out[:3, :3] = t[:3, :3].T
    out[:3, 3] = -t[:3, :3].T @ t[:3, 3]
    return out


def depth_in_metres(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth -> float64 metres, NaN where invalid (REP 118: uint16 mm, float m)."""
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2 or depth.size == 0:
        raise ReprojectionError(f"depth: expected an (H, W) image, got shape {depth.shape}")
    if depth.dtype == np.uint16:
        out = depth.astype(np.float64) * 1e-3
    elif depth.dtype in (np.float32, np.float64):
        out = depth.astype(np.float64)
    else:
        raise ReprojectionError(f"depth: dtype {depth.dtype} not supported; give uint16 "
                                "millimetres (16UC1) or float32 metres (32FC1)")
    out[~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def sample_depth(depth_m: np.ndarray, points: np.ndarray, radius: int = 2) -> np.ndarray:
    """Depth (N,) metres at ``points`` (N, 2): median of the valid pixels within ``radius``.

    The median over a small window bridges the holes depth cameras leave at
    edges; NaN where the window has no valid depth.
    """
    h, w = depth_m.shape
    out = np.full(len(points), np.nan)
    for i, (x, y) in enumerate(np.asarray(points, float)):
        xi, yi = int(round(x)), int(round(y))
        win = depth_m[max(0, yi - radius):min(h, yi + radius + 1),
                      max(0, xi - radius):min(w, xi + radius + 1)]
        valid = win[np.isfinite(win)]
        if valid.size:
            out[i] = float(np.median(valid))
    return out


def lift_points(points: np.ndarray, depth: np.ndarray,
                intrinsics: CameraIntrinsics, radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) + depth image -> camera-frame 3D points (N, 3) metres, valid (N,) bool.

    ``depth`` (H, W): uint16 millimetres or float metres, registered to the
    image of ``points``, of size ``intrinsics.width`` x ``intrinsics.height``.
    """
    pts = _check_pixels(points, intrinsics, "points")
    d = depth_in_metres(depth)
    if d.shape != (intrinsics.height, intrinsics.width):
        raise ReprojectionError(
            f"depth is {d.shape[1]}x{d.shape[0]} but the camera is "
            f"{intrinsics.width}x{intrinsics.height}: register depth to the colour image")
    z = sample_depth(d, pts, radius)
    if len(pts) == 0:
        return np.zeros((0, 3)), np.zeros(0, bool)
    norm = cv2.undistortPoints(pts.reshape(-1, 1, 2).astype(np.float64), intrinsics.matrix,
                               intrinsics.dist_coeffs).reshape(-1, 2)
    xyz = np.column_stack([norm * z[:, None], z])
    return xyz, np.isfinite(z)


def project_points(xyz: np.ndarray, intrinsics: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points (N, 3) -> pixels (N, 2) float32, in_front (N,) bool (z > 0)."""
    xyz = np.asarray(xyz, float).reshape(-1, 3)
    if len(xyz) == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, bool)
    in_front = np.isfinite(xyz).all(axis=1) & (xyz[:, 2] > 1e-6)
    safe = np.where(in_front[:, None], xyz, [0.0, 0.0, 1.0])
    px, _ = cv2.projectPoints(safe, np.zeros(3), np.zeros(3), intrinsics.matrix,
                              intrinsics.dist_coeffs)
    px = px.reshape(-1, 2).astype(np.float32)
    px[~in_front] = np.nan
    return px, in_front


def reproject_to_training_view(points: np.ndarray, depth: np.ndarray,
                               moved: CameraIntrinsics, T_moved_marker: np.ndarray,
                               training: CameraIntrinsics, T_training_marker: np.ndarray,
                               radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints seen by the moved camera -> where the training camera would see them.

    points: (N, 2) pixels in the moved camera's image; depth: that camera's
    registered depth (uint16 mm or float m). Returns (points (N, 2) float32
    pixels in the training image, NaN where invalid; valid (N,) bool: depth
    found and in front of the training camera). Points may land outside the
    training image (valid but out of view): the caller decides.
    """
    t_m = _check_transform(T_moved_marker, "T_moved_marker")
    t_t = _check_transform(T_training_marker, "T_training_marker")
    xyz, ok = lift_points(points, depth, moved, radius)
    t_train_moved = t_t @ invert_transform(t_m)
    xyz_t = xyz @ t_train_moved[:3, :3].T + t_train_moved[:3, 3]
    px, in_front = project_points(xyz_t, training)
    valid = ok & in_front
    px[~valid] = np.nan
    return px, valid


def _check_pixels(points: np.ndarray, intr: CameraIntrinsics, name: str) -> np.ndarray:
    pts = np.asarray(points, float)
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.all(np.isfinite(pts)):
        raise ReprojectionError(f"{name}: expected finite (N, 2) pixels, got shape {pts.shape}")
    outside = ((pts[:, 0] < 0) | (pts[:, 0] > intr.width - 1)
               | (pts[:, 1] < 0) | (pts[:, 1] > intr.height - 1))
    if np.any(outside):
        i = int(np.flatnonzero(outside)[0])
        raise ReprojectionError(f"{name}: point {i} at ({pts[i, 0]:.1f}, {pts[i, 1]:.1f}) is "
                                f"outside the {intr.width}x{intr.height} image")
    return pts


# ---------------------------------------------------------------- ArUco
@dataclass(frozen=True)
class MarkerPose:
    """A detected marker and its pose.

    T_cam_marker: (4, 4); corners: (4, 2) pixels (top-left, top-right,
    bottom-right, bottom-left of the printed marker); rms_px: corner
    reprojection error of the pose.
    """

    marker_id: int
    T_cam_marker: np.ndarray
    corners: np.ndarray
    rms_px: float


def _dictionary(name: str):
    if not hasattr(cv2, "aruco"):
        raise ReprojectionError("this OpenCV build has no aruco module "
                                "(use opencv-python(-headless) >= 4.7)")
    if not name.startswith("DICT_") or not hasattr(cv2.aruco, name):
        raise ReprojectionError(f"unknown ArUco dictionary {name!r} (e.g. 'DICT_6X6_250')")
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))


def detect_markers(image: np.ndarray, dictionary: str = "DICT_6X6_250") -> dict[int, np.ndarray]:
    """ArUco markers in ``image`` ((H, W) or (H, W, 3) uint8): {id: corners (4, 2) float32}."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        raise ReprojectionError(f"image: expected uint8 (H, W) or (H, W, 3), got "
                                f"{image.dtype} {image.shape}")
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    detector = cv2.aruco.ArucoDetector(_dictionary(dictionary), cv2.aruco.DetectorParameters())
    corners, ids, _ = detector.detectMarkers(gray)
    if ids is None:
        return {}
    return {int(i): c.reshape(4, 2).astype(np.float32) for i, c in zip(ids.ravel(), corners)}


def marker_object_points(marker_length_m: float) -> np.ndarray:
    """(4, 3) corners in the marker frame, in the order the detector returns them."""
    h = marker_length_m / 2.0
    return np.array([[-h, h, 0], [h, h, 0], [h, -h, 0], [-h, -h, 0]], float)


def estimate_marker_pose(image: np.ndarray, intrinsics: CameraIntrinsics,
                         marker_length_m: float, marker_id: int | None = None,
                         dictionary: str = "DICT_6X6_250") -> MarkerPose:
    """Pose of the fixed marker ``marker_id`` (the only one seen if None) in ``image``.

    ``marker_length_m``: side of the black square, metres. Raises
    ReprojectionError naming the ids it saw when the marker is not found.
    """
    if not marker_length_m > 0:
        raise ReprojectionError(f"marker_length_m = {marker_length_m!r}: must be > 0")
    found = detect_markers(image, dictionary)
    if marker_id is None:
        if len(found) != 1:
            raise ReprojectionError(
                f"expected exactly one {dictionary} marker, found ids {sorted(found)}; "
                "name the fixed marker's id")
        marker_id = next(iter(found))
    if marker_id not in found:
        raise ReprojectionError(f"marker {marker_id} ({dictionary}) not seen; ids seen: "
                                f"{sorted(found)} (is the marker in view and unoccluded?)")
    corners = found[marker_id]
    obj = marker_object_points(marker_length_m)
    ok, rvec, tvec = cv2.solvePnP(obj, corners.astype(np.float64), intrinsics.matrix,
                                  intrinsics.dist_coeffs, flags=cv2.SOLVEPNP_IPPE_SQUARE)
    if not ok:
        raise ReprojectionError(f"solvePnP failed for marker {marker_id}")
    proj, _ = cv2.projectPoints(obj, rvec, tvec, intrinsics.matrix, intrinsics.dist_coeffs)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(4, 2) - corners) ** 2, axis=1))))
    t = np.eye(4)
    t[:3, :3] = cv2.Rodrigues(rvec)[0]
    t[:3, 3] = tvec.ravel()
    return MarkerPose(int(marker_id), t, corners, rms)
