"""Where the robot is in the image: its silhouette from joint states, ROS-free.

The UR5e and its 2F-85 gripper are the simple solids of
:mod:`atk_perception.kinematics` (joint cylinders, link capsules, gripper
boxes), posed by forward kinematics for the measured joints and gripper
opening, and projected through a pinhole camera whose pose in the robot base
frame comes from hand-eye calibration (``atk-calibrate``) or, in simulation,
from the simulator. Each solid is convex, so its image is the convex hull of
its projected outline points; the union of the hulls, grown by a margin in
pixels, is the mask.

Frames and shapes:

* ``q``: (7,) = 6 UR joints (rad, ``kinematics.JOINT_NAMES`` order) + gripper
  reading (0 open .. 1 closed);
* ``K``: (3, 3) pinhole intrinsics, OpenCV convention (pixel centres at
  integers), no distortion (rectified images);
* ``base_T_camera``: (4, 4) pose of the camera optical frame (x right, y
  down, z forward) in the robot base frame (the controller's ``base``, the
  kinematics' frame 0), metres;
* masks: (H, W) bool, True where the robot (plus margin) is.

Extrinsics files (written by ``atk-calibrate``, read by the tracker node):
YAML with ``base_T_camera`` as 4 rows of 4 numbers, the image size and the
calibration residuals; see :func:`save_extrinsics`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from atk_perception import kinematics as kin

EXTRINSICS_FORMAT = "atk-camera-extrinsics-1"


class RobotMaskError(ValueError):
    """Unusable input to the robot mask (bad shape, non-finite pose, unreadable extrinsics file)."""


@dataclass(frozen=True)
class Solid:
    """One convex solid in the base frame.

    kind: "box" (``centre`` (3,), ``axes`` (3, 3) columns = half-extent
    vectors), "capsule" (segment ``a``-``b`` (3,) each, ``radius``) or
    "cylinder" (axis ``a``-``b``, ``radius``).
    """

    kind: str
    a: np.ndarray
    b: np.ndarray
    radius: float = 0.0
    axes: np.ndarray | None = None


def _rz(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    t = np.eye(4)
    t[:2, :2] = [[c, -s], [s, c]]
    return t


def _apply(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return t[:3, :3] @ np.asarray(p, np.float64) + t[:3, 3]


def _box(t: np.ndarray, centre: np.ndarray, half: np.ndarray) -> Solid:
    return Solid("box", _apply(t, centre), _apply(t, centre), axes=t[:3, :3] * np.asarray(half)[None, :])


def _check_q(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, np.float64)
    if q.shape != (7,) or not np.all(np.isfinite(q)):
        raise RobotMaskError(f"joint state must be (7,) finite = 6 UR joints (rad) + gripper (0..1), "
                             f"got shape {q.shape}")
    return q


def tool_pose(q: np.ndarray) -> np.ndarray:
    """(4, 4) tool0 in the base frame for the (7,) joint state (the gripper reading is ignored)."""
    return kin.fk(_check_q(q)[:6])


def robot_solids(q: np.ndarray) -> list[Solid]:
    """The arm and gripper as convex solids in the base frame for the (7,) joint state ``q``."""
    q = _check_q(q)
    frames = kin.fk_all(q[:6])
    solids: list[Solid] = []
    br, bhl, bz = kin.UR5E_BASE_CYLINDER
    solids.append(Solid("cylinder", np.array([0, 0, bz - bhl]), np.array([0, 0, bz + bhl]), br))
    for k in range(kin.N_JOINTS):
        body = frames[k] @ _rz(q[k])
        r = float(kin.UR5E_LINK_RADII[k])
        solids.append(Solid("cylinder", _apply(body, [0, 0, -1.1 * r]), _apply(body, [0, 0, 1.1 * r]), r))
        seg = np.array([kin.DH_A[k], 0.0, kin.DH_D[k]])
        if np.linalg.norm(seg) > 1e-6:
            solids.append(Solid("capsule", _apply(body, [0, 0, 0]), _apply(body, seg), 0.75 * r))
    tool = frames[kin.N_JOINTS]
    cr, chl, cz = kin.ROBOTIQ_2F85_COUPLING
    solids.append(Solid("cylinder", _apply(tool, [0, 0, cz - chl]), _apply(tool, [0, 0, cz + chl]), cr))
    solids.append(_box(tool, np.array([0, 0, kin.ROBOTIQ_2F85_HOUSING_Z]), kin.ROBOTIQ_2F85_HOUSING_HALF))
    g = float(np.clip(q[6], 0.0, 1.0))
    for sign in (1.0, -1.0):
        x0 = sign * kin.ROBOTIQ_2F85_FINGER_TRAVEL * (1.0 - g)
        knuckle = kin.ROBOTIQ_2F85_KNUCKLE_OFFSET * [sign, 1.0, 1.0] + [x0, 0.0, 0.0]
        solids.append(_box(tool, knuckle, kin.ROBOTIQ_2F85_KNUCKLE_HALF))
        pad = np.array([x0 + sign * kin.ROBOTIQ_2F85_PAD_HALF[0], 0.0, kin.ROBOTIQ_2F85_TCP_Z])
        solids.append(_box(tool, pad, kin.ROBOTIQ_2F85_PAD_HALF))
    return solids


# Outline samples per solid: enough that the hull of the samples of a round
# solid misses at most ~1 - cos(pi / n) of its radius (2 % at n = 16).
_RING = 16
_SPHERE = 48


def _unit_sphere(n: int) -> np.ndarray:
    """(n, 3) points spread over the unit sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


_SPHERE_PTS = _unit_sphere(_SPHERE)
_BOX_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)


def _outline(s: Solid) -> np.ndarray:
    """(M, 3) points whose convex hull is (about) the solid."""
    if s.kind == "box":
        return s.a[None, :] + _BOX_CORNERS @ s.axes.T
    if s.kind == "capsule":
        return np.concatenate([s.a + s.radius * _SPHERE_PTS, s.b + s.radius * _SPHERE_PTS])
    axis = s.b - s.a
    axis = axis / max(np.linalg.norm(axis), 1e-12)
    u = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    ang = np.linspace(0, 2 * np.pi, _RING, endpoint=False)
    ring = s.radius * (np.cos(ang)[:, None] * u + np.sin(ang)[:, None] * v)
    return np.concatenate([s.a + ring, s.b + ring])


def check_camera(k_matrix: np.ndarray, base_t_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated (K (3, 3), camera_T_base (4, 4)) from K and base_T_camera."""
    k = np.asarray(k_matrix, np.float64)
    if k.shape != (3, 3) or not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise RobotMaskError(f"camera intrinsics must be a finite (3, 3) K with positive focal lengths, got {k!r}")
    t = np.asarray(base_t_camera, np.float64)
    if t.shape != (4, 4) or not np.all(np.isfinite(t)):
        raise RobotMaskError(f"base_T_camera must be a finite (4, 4) transform, got shape {t.shape}")
    r = t[:3, :3]
    if abs(np.linalg.det(r) - 1.0) > 1e-3 or np.abs(r @ r.T - np.eye(3)).max() > 1e-3:
        raise RobotMaskError("base_T_camera's rotation is not orthonormal: check the extrinsics file")
    return k, np.linalg.inv(t)


def project(k_matrix: np.ndarray, camera_t_base: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (M, 2) and camera depths z (M,) of base-frame points (M, 3)."""
    p = np.asarray(points, np.float64) @ camera_t_base[:3, :3].T + camera_t_base[:3, 3]
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (p[:, :2] / z[:, None]) @ k_matrix[:2, :2].T + k_matrix[:2, 2]
    return uv, z


def lift(k_matrix: np.ndarray, base_t_camera: np.ndarray, uv: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
    """Base-frame points (M, 3) of pixels (M, 2) at camera depths z (M,) metres."""
    uv = np.asarray(uv, np.float64)
    x = (uv[:, 0] - k_matrix[0, 2]) / k_matrix[0, 0]
    y = (uv[:, 1] - k_matrix[1, 2]) / k_matrix[1, 1]
    p = np.stack([x, y, np.ones_like(x)], 1) * np.asarray(depth_m, np.float64)[:, None]
    return p @ base_t_camera[:3, :3].T + base_t_camera[:3, 3]


def lift_to_plane(k_matrix: np.ndarray, base_t_camera: np.ndarray, uv: np.ndarray,
                  plane_z_m: float) -> np.ndarray:
    """Base-frame points (M, 3) where the pixels' rays (M, 2) meet the plane z = ``plane_z_m``.

    A ray parallel to the plane or meeting it behind the camera gives NaN.
    """
    uv = np.asarray(uv, np.float64)
    rays = np.stack([(uv[:, 0] - k_matrix[0, 2]) / k_matrix[0, 0],
                     (uv[:, 1] - k_matrix[1, 2]) / k_matrix[1, 1], np.ones(len(uv))], 1)
    d = rays @ base_t_camera[:3, :3].T
    o = base_t_camera[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (plane_z_m - o[2]) / d[:, 2]
    s = np.where(np.isfinite(s) & (s > 0), s, np.nan)
    return o + s[:, None] * d


def render_mask(q: np.ndarray, k_matrix: np.ndarray, base_t_camera: np.ndarray,
                size: tuple[int, int], margin_px: float = 0.0, near_m: float = 0.02) -> np.ndarray:
    """(H, W) bool silhouette of the robot at joint state ``q`` (7,), grown by ``margin_px``.

    size: (width, height) of the image. Outline points nearer than
    ``near_m`` to the camera (or behind it) are left out of their solid's hull.
    """
    w, h = int(size[0]), int(size[1])
    if w < 1 or h < 1:
        raise RobotMaskError(f"image size must be positive (width, height), got {size!r}")
    if not (np.isfinite(margin_px) and margin_px >= 0):
        raise RobotMaskError(f"margin_px must be >= 0, got {margin_px!r}")
    k, cam_t_base = check_camera(k_matrix, base_t_camera)
    mask = np.zeros((h, w), np.uint8)
    shift = 4  # sub-pixel vertices: 1/16 px
    lim = 4.0 * max(w, h)  # hull vertices far outside are clipped (fillConvexPoly needs int32)
    for s in robot_solids(q):
        uv, z = project(k, cam_t_base, _outline(s))
        keep = z > near_m
        if keep.sum() < 3:
            continue
        pts = np.clip(uv[keep], -lim, lim)
        hull = cv2.convexHull(np.round(pts * (1 << shift)).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=shift)
    if margin_px > 0:
        r = int(math.ceil(margin_px))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        mask = cv2.dilate(mask, kernel)
    return mask.astype(bool)


def points_in_mask(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N,) bool: the points (N, 2) pixels fall on True pixels of ``mask`` (outside the image: False)."""
    pts = np.asarray(points, np.float64)
    h, w = mask.shape
    finite = np.all(np.isfinite(pts), axis=1) if len(pts) else np.zeros(0, bool)
    safe = np.clip(np.nan_to_num(pts.reshape(-1, 2), nan=-1.0), -1.0, 1e9)
    xi, yi = np.round(safe[:, 0]).astype(np.int64), np.round(safe[:, 1]).astype(np.int64)
    inside = finite & (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    out = np.zeros(len(pts), bool)
    out[inside] = mask[yi[inside], xi[inside]]
    return out


# --------------------------------------------------------------------------- extrinsics file

def save_extrinsics(path: str | Path, base_t_camera: np.ndarray, image_size: tuple[int, int] | None = None,
                    k_matrix: np.ndarray | None = None, info: dict[str, Any] | None = None) -> None:
    """Write the camera pose in the robot base frame as YAML (see module docstring)."""
    import yaml

    t = np.asarray(base_t_camera, np.float64)
    check_camera(np.eye(3) if k_matrix is None else k_matrix, t)
    doc: dict[str, Any] = {"format": EXTRINSICS_FORMAT,
                           "frames": "base_T_camera: camera optical frame (x right, y down, z forward) "
                                     "in the UR controller's base frame, metres",
                           "base_T_camera": [[float(v) for v in row] for row in t]}
    if image_size is not None:
        doc["image_size"] = [int(image_size[0]), int(image_size[1])]
    if k_matrix is not None:
        doc["camera_matrix"] = [[float(v) for v in row] for row in np.asarray(k_matrix, np.float64)]
    if info:
        doc["calibration"] = info
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))


def load_extrinsics(path: str | Path) -> np.ndarray:
    """base_T_camera (4, 4) from a file written by :func:`save_extrinsics`."""
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RobotMaskError(f"cannot read camera extrinsics {str(p)!r}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != EXTRINSICS_FORMAT or "base_T_camera" not in doc:
        raise RobotMaskError(f"{str(p)!r} is not a camera extrinsics file (format {EXTRINSICS_FORMAT!r} "
                             "with base_T_camera); write one with atk-calibrate")
    try:
        t = np.array(doc["base_T_camera"], np.float64)
    except (TypeError, ValueError) as exc:
        raise RobotMaskError(f"{str(p)!r}: base_T_camera is not a 4x4 matrix of numbers") from exc
    check_camera(np.eye(3), t)
    return t
