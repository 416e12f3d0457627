"""A ChArUco board on the simulated gripper, for hand-eye calibration (ROS-free).

The cell of :mod:`atk_bringup.sim.model` (same camera, same arm) plus a
visual-only board that follows the tool: a mocap body placed at
``world_T_tool0 @ tool0_T_board`` after each pose, textured with the board's
image. :func:`calibration_poses` finds joint configurations (by IK) that show
the board to the camera from different angles; :func:`render_views` renders
them. The truth to compare a calibration with is
:func:`atk_bringup.sim.model.base_t_camera`.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import cv2  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from atk_perception import kinematics as kin  # noqa: E402
from atk_perception.hand_eye import BoardConfig  # noqa: E402
from atk_bringup.sim import model as sim_model  # noqa: E402

#: Board pose on the tool: centred on tool0's z axis, 45 mm beyond the fingertips, facing along the tool.
TOOL0_T_BOARD = np.eye(4)
TOOL0_T_BOARD[2, 3] = kin.ROBOTIQ_2F85_TCP_Z + 0.065


def _quat(r: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(r).reshape(-1))
    return q


class BoardScene:
    """The cell with a board on the gripper; renders the camera's view at a joint configuration."""

    def __init__(self, board: BoardConfig, width: int, height: int, tool0_t_board: np.ndarray = TOOL0_T_BOARD):
        self.board, self.width, self.height = board, width, height
        self.tool0_t_board = np.asarray(tool0_t_board, np.float64)
        img = board.image(120)
        hx, hy = board.size_m[0] / 2, board.size_m[1] / 2
        # a thin white frame around the board (as printed on a card), so the outer markers have a quiet zone
        border = 0.006
        world = (f'<body name="calib_board" mocap="true" pos="0 0 -3">'
                 f'<geom name="calib_card" type="box" size="{hx + border} {hy + border} 0.001" pos="0 0 -0.0012" '
                 f'rgba="1 1 1 1" contype="0" conaffinity="0" group="2"/>'
                 f'<geom name="calib_board" type="plane" size="{hx} {hy} 0.001" material="calib_board" '
                 f'contype="0" conaffinity="0" group="2"/></body>')
        assets = ('<texture name="calib_board" type="2d" file="calib_board.png"/>'
                  '<material name="calib_board" texture="calib_board" texrepeat="1 1" texuniform="false" '
                  'specular="0" shininess="0"/>')
        rgb = np.repeat(img[..., None], 3, axis=2)
        xml, files = sim_model.build_mjcf(
            sim_model.TaskAssets(world, assets, {"calib_board.png": rgb}), width, height)
        self.model = mujoco.MjModel.from_xml_string(xml, files)
        self.data = mujoco.MjData(self.model)
        self._qadr = [self.model.jnt_qposadr[self.model.joint(n).id] for n in kin.JOINT_NAMES]
        self._mocap = self.model.body_mocapid[self.model.body("calib_board").id]
        self._renderer = mujoco.Renderer(self.model, height, width)
        self.camera = self.model.camera("cam").id
        self.k = sim_model.camera_intrinsics(width, height)

    def board_in_base(self, q: np.ndarray) -> np.ndarray:
        """(4, 4) base_T_board at joints q (6,)."""
        return kin.fk(q) @ self.tool0_t_board

    def render(self, q: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the cell with the arm at q (6,) and the board on its tool."""
        d = self.data
        d.qpos[:] = 0
        d.qpos[self._qadr] = q
        world_t_board = sim_model.base_transform() @ self.board_in_base(q)
        d.mocap_pos[self._mocap] = world_t_board[:3, 3]
        d.mocap_quat[self._mocap] = _quat(world_t_board[:3, :3])
        mujoco.mj_forward(self.model, d)
        self._renderer.update_scene(d, camera=self.camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        self._renderer.close()


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(axis, np.float64) * angle)[0]


def calibration_poses(scene: BoardScene, n: int, seed: int = 0, max_tries: int = 400) -> np.ndarray:
    """(n, 6) joint configurations that show the whole board to the camera, tilted up to 30 deg
    about varied axes and turned about its normal (the rotations hand-eye calibration needs)."""
    rng = np.random.default_rng(seed)
    base_t_cam = sim_model.base_t_camera()
    cam = base_t_cam[:3, 3]
    centre_world = np.array([0.52, 0.0, 0.22])
    centre = (np.linalg.inv(sim_model.base_transform()) @ np.append(centre_world, 1.0))[:3]
    q_seed = kin.HOME_Q.copy()
    poses: list[np.ndarray] = []
    hx, hy = scene.board.size_m[0] / 2, scene.board.size_m[1] / 2
    corners = np.array([[sx * hx, sy * hy, 0.0, 1.0] for sx in (-1, 1) for sy in (-1, 1)])
    cam_t_base = np.linalg.inv(base_t_cam)
    for _ in range(max_tries):
        if len(poses) == n:
            break
        p = centre + rng.uniform([-0.08, -0.12, -0.06], [0.08, 0.12, 0.08])
        z = cam - p
        z /= np.linalg.norm(z)
        axis = rng.normal(size=3)
        axis -= axis.dot(z) * z
        z = _rot(axis / np.linalg.norm(axis), np.deg2rad(rng.uniform(5, 30))) @ z
        x = np.cross([0.0, 0.0, 1.0], z)
        x /= np.linalg.norm(x)
        r = np.stack([x, np.cross(z, x), z], 1) @ _rot([0, 0, 1], rng.uniform(-np.pi / 3, np.pi / 3))
        board = np.eye(4)
        board[:3, :3], board[:3, 3] = r, p
        target = board @ np.linalg.inv(scene.tool0_t_board)
        res = kin.ik_dls(target, q_seed, joint_limits=kin.CELL_JOINT_LIMITS)
        if not res.converged:
            continue
        b = scene.board_in_base(res.q)
        uvz = (cam_t_base @ b @ corners.T)[:3]
        uv = scene.k @ (uvz / uvz[2])
        inside = (uvz[2] > 0.1) & (uv[0] > 10) & (uv[0] < scene.width - 10) & (uv[1] > 10) & (uv[1] < scene.height - 10)
        facing = b[:3, 2].dot(cam - b[:3, 3]) > 0.5 * np.linalg.norm(cam - b[:3, 3])
        if inside.all() and facing:
            poses.append(res.q.copy())
    if len(poses) < n:
        raise RuntimeError(f"found only {len(poses)} of {n} calibration poses showing the board; "
                           "widen the search or lower n")
    return np.array(poses)
