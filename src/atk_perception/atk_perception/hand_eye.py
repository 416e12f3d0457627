"""Hand-eye calibration of a fixed camera (eye-to-hand), ROS-free.

A ChArUco board is held by the gripper; the camera watches it at K robot
poses. For pose i the robot reports ``base_T_gripper[i]`` (forward
kinematics of the measured joints) and the camera sees the board at
``camera_T_board[i]`` (:func:`detect_board`: ChArUco corners + PnP). Two
transforms are unknown and constant: the camera in the base frame ``X =
base_T_camera`` and the board on the gripper ``Y = gripper_T_board``:

    base_T_gripper[i] @ Y = X @ camera_T_board[i]        (A_i Y = X B_i)

:func:`solve_eye_to_hand` solves it in closed form (rotations by the
Kronecker-product null space of Shah, "Solving the robot-world/hand-eye
calibration problem using the Kronecker product", 2013, then both
translations by linear least squares) and refines X and Y by minimising the
board corners' reprojection error over all views (the PnP poses are least
accurate along the viewing ray; pixel residuals weigh that correctly). This
is the problem OpenCV's ``calibrateRobotWorldHandEye`` solves (also with
Shah's method); the opencv-python 5.0 wheel this workspace pins ships
neither it nor ``calibrateHandEye``, hence this implementation.

Shapes: transforms (4, 4) metres; K (3, 3); images (H, W) or (H, W, 3) uint8.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


class HandEyeError(ValueError):
    """Calibration input cannot be used (too few poses, degenerate motion, no board)."""


@dataclass(frozen=True)
class BoardConfig:
    """A ChArUco board: squares_x x squares_y chessboard squares with ArUco markers in the white ones."""

    squares_x: int = 5
    squares_y: int = 4
    square_m: float = 0.024
    marker_m: float = 0.018
    dictionary: str = "DICT_4X4_50"
    min_corners: int = 6
    """A view with fewer detected chessboard corners than this is not used."""

    def __post_init__(self) -> None:
        if self.squares_x < 3 or self.squares_y < 3:
            raise ValueError(f"BoardConfig.squares_x/squares_y = {self.squares_x}/{self.squares_y}: need >= 3 each")
        if not 0 < self.marker_m < self.square_m:
            raise ValueError(f"BoardConfig.marker_m = {self.marker_m!r}: must be in (0, square_m = {self.square_m})")
        if not hasattr(cv2.aruco, self.dictionary):
            raise ValueError(f"BoardConfig.dictionary = {self.dictionary!r}: not an OpenCV ArUco dictionary "
                             "(e.g. DICT_4X4_50, DICT_6X6_250)")
        if self.min_corners < 4:
            raise ValueError(f"BoardConfig.min_corners = {self.min_corners!r}: PnP needs >= 4")

    @property
    def size_m(self) -> tuple[float, float]:
        return self.squares_x * self.square_m, self.squares_y * self.square_m

    def board(self) -> "cv2.aruco.CharucoBoard":
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_m, self.marker_m, d)

    def image(self, px_per_square: int = 100) -> np.ndarray:
        """(H, W) uint8 image of the board without margin, to print or to texture a simulated board."""
        return self.board().generateImage((self.squares_x * px_per_square, self.squares_y * px_per_square),
                                          marginSize=0)


@dataclass(frozen=True)
class BoardView:
    """The board seen in one image: camera_T_board (4, 4); corners used; reprojection rms (px)."""

    camera_t_board: np.ndarray
    object_points: np.ndarray   # (M, 3) board frame, metres
    image_points: np.ndarray    # (M, 2) pixels
    rms_px: float


def _gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise HandEyeError(f"expected an (H, W) or (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def detect_markers(image: np.ndarray, dictionary: str = "DICT_6X6_250") -> tuple[np.ndarray, np.ndarray]:
    """ArUco markers in ``image``: ids (M,) int and corners (M, 4, 2) pixels (marker order, clockwise)."""
    if not hasattr(cv2.aruco, dictionary):
        raise HandEyeError(f"unknown ArUco dictionary {dictionary!r}")
    det = cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, dictionary)),
                                  cv2.aruco.DetectorParameters())
    corners, ids, _ = det.detectMarkers(_gray(image))
    if ids is None:
        return np.zeros(0, int), np.zeros((0, 4, 2), np.float32)
    return ids.ravel().astype(int), np.array([c.reshape(4, 2) for c in corners], np.float32)


def detect_board(image: np.ndarray, config: BoardConfig, k_matrix: np.ndarray,
                 dist: np.ndarray | None = None) -> BoardView | None:
    """The board's pose in the camera frame, or None when too few of its corners are seen."""
    board = config.board()
    det = cv2.aruco.CharucoDetector(board)
    ch_corners, ch_ids, _, _ = det.detectBoard(_gray(image))
    if ch_ids is None or len(ch_ids) < config.min_corners:
        return None
    obj, img = board.matchImagePoints(ch_corners, ch_ids)
    obj, img = obj.reshape(-1, 3).astype(np.float64), img.reshape(-1, 2).astype(np.float64)
    if len(obj) < config.min_corners or board.checkCharucoCornersCollinear(ch_ids):
        return None
    k = np.asarray(k_matrix, np.float64)
    d = np.zeros(5) if dist is None else np.asarray(dist, np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, img, k, d, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, k, d, rvec, tvec)
    proj, _ = cv2.projectPoints(obj, rvec, tvec, k, d)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))
    t = np.eye(4)
    t[:3, :3] = cv2.Rodrigues(rvec)[0]
    t[:3, 3] = tvec.ravel()
    return BoardView(t, obj, img, rms)


@dataclass(frozen=True)
class HandEyeResult:
    """base_T_camera and gripper_T_board (4, 4); per-pose residuals of A_i Y = X B_i
    (translation mm, rotation deg) and of the corners' reprojection (rms px)."""

    base_t_camera: np.ndarray
    gripper_t_board: np.ndarray
    residual_mm: np.ndarray
    residual_deg: np.ndarray
    reprojection_px: np.ndarray

    def summary(self) -> str:
        return (f"{len(self.residual_mm)} poses: residual translation median {np.median(self.residual_mm):.2f} mm "
                f"(max {self.residual_mm.max():.2f}), rotation median {np.median(self.residual_deg):.3f} deg "
                f"(max {self.residual_deg.max():.3f}), reprojection median {np.median(self.reprojection_px):.2f} px "
                f"(max {self.reprojection_px.max():.2f})")


def _project_so3(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        r = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    return r


def _closed_form(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shah's closed form of A_i Y = X B_i: (X, Y)."""
    n = len(a)
    rows = []
    for i in range(n):
        ra, rb = a[i, :3, :3], b[i, :3, :3]
        # R_A R_Y = R_X R_B  <=>  (I (x) R_A) vec(R_Y) - (R_B^T (x) I) vec(R_X) = 0 (column-major vec)
        rows.append(np.hstack([-np.kron(rb.T, np.eye(3)), np.kron(np.eye(3), ra)]))
    _, _, vt = np.linalg.svd(np.vstack(rows))
    v = vt[-1]
    rx, ry = v[:9].reshape(3, 3, order="F"), v[9:].reshape(3, 3, order="F")
    scale = np.cbrt(np.linalg.det(rx))
    if abs(scale) < 1e-9:
        raise HandEyeError("the robot poses do not determine the camera's rotation: rotate the board "
                           "about at least two different axes between poses")
    rx, ry = _project_so3(rx / scale), _project_so3(ry / scale)
    # R_A t_Y + t_A = R_X t_B + t_X  ->  [R_A  -I] [t_Y; t_X] = R_X t_B - t_A
    lhs = np.vstack([np.hstack([a[i, :3, :3], -np.eye(3)]) for i in range(n)])
    rhs = np.concatenate([rx @ b[i, :3, 3] - a[i, :3, 3] for i in range(n)])
    sol, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
    x, y = np.eye(4), np.eye(4)
    x[:3, :3], x[:3, 3] = rx, sol[3:]
    y[:3, :3], y[:3, 3] = ry, sol[:3]
    return x, y


def _pose(p: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = cv2.Rodrigues(p[:3])[0]
    t[:3, 3] = p[3:]
    return t


def _params(t: np.ndarray) -> np.ndarray:
    return np.concatenate([cv2.Rodrigues(t[:3, :3])[0].ravel(), t[:3, 3]])


def solve_eye_to_hand(base_t_gripper: np.ndarray, views: list[BoardView], k_matrix: np.ndarray,
                      dist: np.ndarray | None = None, refine: bool = True) -> HandEyeResult:
    """Camera pose in the robot base frame from K >= 3 board views (see the module docstring).

    base_t_gripper: (K, 4, 4) tool poses by forward kinematics; views: the board seen at each.
    """
    a = np.asarray(base_t_gripper, np.float64)
    if a.ndim != 3 or a.shape[1:] != (4, 4) or len(a) != len(views):
        raise HandEyeError(f"need one (4, 4) robot pose per board view, got {a.shape} for {len(views)} views")
    if len(views) < 3:
        raise HandEyeError(f"{len(views)} usable views: need at least 3 (10-20 recommended), with the board "
                           "turned about different axes")
    b = np.array([v.camera_t_board for v in views])
    x, y = _closed_form(a, b)
    k = np.asarray(k_matrix, np.float64)
    d = np.zeros(5) if dist is None else np.asarray(dist, np.float64)
    if refine:
        from scipy.optimize import least_squares

        def residuals(p: np.ndarray) -> np.ndarray:
            cam_t_base = np.linalg.inv(_pose(p[:6]))
            g_t_b = _pose(p[6:])
            out = []
            for ai, v in zip(a, views):
                c_t_b = cam_t_base @ ai @ g_t_b
                proj, _ = cv2.projectPoints(v.object_points, cv2.Rodrigues(c_t_b[:3, :3])[0], c_t_b[:3, 3], k, d)
                out.append((proj.reshape(-1, 2) - v.image_points).ravel())
            return np.concatenate(out)

        sol = least_squares(residuals, np.concatenate([_params(x), _params(y)]), method="lm")
        x, y = _pose(sol.x[:6]), _pose(sol.x[6:])
    res_mm, res_deg, rep = [], [], []
    cam_t_base = np.linalg.inv(x)
    for ai, v in zip(a, views):
        lhs, rhs = ai @ y, x @ v.camera_t_board
        res_mm.append(1e3 * np.linalg.norm(lhs[:3, 3] - rhs[:3, 3]))
        cos = (np.trace(lhs[:3, :3].T @ rhs[:3, :3]) - 1) / 2
        res_deg.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
        c_t_b = cam_t_base @ ai @ y
        proj, _ = cv2.projectPoints(v.object_points, cv2.Rodrigues(c_t_b[:3, :3])[0], c_t_b[:3, 3], k, d)
        rep.append(float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - v.image_points) ** 2, axis=1)))))
    return HandEyeResult(x, y, np.array(res_mm), np.array(res_deg), np.array(rep))


def pose_error(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(translation error m, rotation error deg) between two (4, 4) poses."""
    dt = float(np.linalg.norm(estimate[:3, 3] - truth[:3, 3]))
    cos = (np.trace(estimate[:3, :3].T @ truth[:3, :3]) - 1) / 2
    return dt, float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
