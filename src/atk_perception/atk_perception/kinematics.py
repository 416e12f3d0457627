"""UR5e kinematics: the one source of truth for the policy's Cartesian action space, the driver, simulator, experts and the tracker's robot mask.

ROS-free (numpy only). Conventions:

* Frames follow Universal Robots' published standard Denavit-Hartenberg
  parameters. The base frame is the controller's ``base`` frame (the frame of
  ur_rtde's ``getActualTCPPose``), which is ROS ``base_link`` rotated by pi
  about z. Frame 6 is ``tool0`` (the flange).
* Link transform ``i``: ``Rz(q_i) @ Tz(d_i) @ Tx(a_i) @ Rx(alpha_i)``.
* Joint vectors ``q`` are ``(6,)`` radians in :data:`JOINT_NAMES` order.
* Homogeneous transforms are ``(4, 4)`` float64 arrays, metres.

Check values (from the DH table, reproducible by hand): at ``q = 0`` tool0
sits at ``(a2 + a3, -(d4 + d6), d1 - d5) = (-0.8172, -0.2329, 0.0628)`` m.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
)
N_JOINTS = 6
#: The gripper's entry in ``sensor_msgs/JointState`` (driver, simulator, bags,
#: policy): 0 open .. 1 closed. The one definition, beside the arm's names.
GRIPPER_JOINT = "gripper"

# UR5e standard DH parameters (Universal Robots, "DH parameters for
# calculations of kinematics and dynamics", UR5e row), metres / radians.
DH_D = np.array([0.1625, 0.0, 0.0, 0.1333, 0.0997, 0.0996])
DH_A = np.array([0.0, -0.425, -0.3922, 0.0, 0.0, 0.0])
DH_ALPHA = np.array([np.pi / 2, 0.0, 0.0, np.pi / 2, -np.pi / 2, 0.0])

# Hardware position limits of every UR5e joint (datasheet: +-360 deg).
UR5E_JOINT_LIMITS = np.array([[-2 * np.pi, 2 * np.pi]] * N_JOINTS)  # (6, 2) rad
# Default limits for our table-top cell, tighter than the hardware:
# * pan +-pi: the cable never winds more than half a turn either way;
# * shoulder lift [-pi, 0]: the upper arm stays above the mounting plane
#   (0 = horizontal pointing along -x, -pi/2 = straight up);
# * elbow +-pi: beyond that the forearm hits the upper arm (ur_description
#   limits the elbow the same way);
# * wrists +-2pi (hardware) so tool orientations stay reachable.
CELL_JOINT_LIMITS = np.array([
    [-np.pi, np.pi],
    [-np.pi, 0.0],
    [-np.pi, np.pi],
    [-2 * np.pi, 2 * np.pi],
    [-2 * np.pi, 2 * np.pi],
    [-2 * np.pi, 2 * np.pi],
])  # (6, 2) rad

# UR5e datasheet: base, shoulder, elbow, wrist 1-3 all +-180 deg/s (the UR5e,
# unlike the UR10e/UR16e, has the same speed on the big joints);
# ur_description's ur5e joint_limits.yaml uses pi rad/s for all six too.
UR5E_VELOCITY_LIMITS = np.full(N_JOINTS, np.pi)  # (6,) rad/s

# A "ready" pose: upper arm up, forearm horizontal, tool pointing down
# (tool0 z = -base z). Used as a default start configuration.
HOME_Q = np.array([0.0, -np.pi / 2, np.pi / 2, -np.pi / 2, -np.pi / 2, 0.0])

# Robotiq 2F-85 mounted on tool0 with its standard coupling: tool0 -> centre
# between the fingertip pads, along tool0's z. APPROXIMATE: the body plus
# coupling is roughly 0.14-0.16 m long to the pads depending on the coupling
# and on the finger opening (the fingers rise a few mm as they close, see
# Robotiq's 2F-85 manual, section 6.1). 0.150 m is the pinch point we use in
# simulation; on the real cell measure it (teach pendant TCP wizard) and pass
# the measured offset. The driver uses it only for the TCP workspace box.
ROBOTIQ_2F85_TCP_Z = 0.150  # m
ROBOTIQ_2F85_TCP = np.eye(4)
ROBOTIQ_2F85_TCP[2, 3] = ROBOTIQ_2F85_TCP_Z
ROBOTIQ_2F85_TCP.setflags(write=False)

# --- The arm and gripper as simple solids -------------------------------------
# One description shared by the simulator's MJCF (sim/model.py builds its
# primitive geoms from it) and the tracker's robot mask (robot_mask.py renders
# its silhouette from it), so what the mask covers is what the simulator draws.
# Link k (k = 0..5) is drawn in the frame fk_all(q)[k] @ Rz(q[k]) (the body
# that joint k+1 turns): a joint cylinder about its z axis (radius r, half
# length 1.1 r) and, where the DH offset (a_k, 0, d_k) is non-zero, a capsule
# of radius 0.75 r from the origin to that offset. The radii are a little
# below the real UR5e's (joint housings 45-75 mm): on the real cell the mask's
# pixel margin covers the difference.
UR5E_LINK_RADII = np.array([0.06, 0.055, 0.045, 0.04, 0.04, 0.038])  # (6,) m
UR5E_BASE_CYLINDER = (0.075, 0.04, 0.04)  # radius, half length, centre height above the base frame, m
# Robotiq 2F-85-like gripper in the tool0 frame (z along the tool): a coupling
# disc and the housing, then per finger a knuckle and a pad. Each finger moves
# along tool0 x: its origin lies at +-FINGER_TRAVEL * (1 - g) for the gripper
# reading g (0 open .. 1 closed); stroke 85 mm = 2 x 42.5 mm. Pads 22 mm wide
# (y) and 37 mm long (z), centred on the pinch point (ROBOTIQ_2F85_TCP_Z).
ROBOTIQ_2F85_FINGER_TRAVEL = 0.0425  # m per finger
ROBOTIQ_2F85_COUPLING = (0.0375, 0.006, 0.006)  # disc radius, half length, centre z, m
ROBOTIQ_2F85_HOUSING_HALF = np.array([0.045, 0.03, 0.044])  # box half extents, m
ROBOTIQ_2F85_HOUSING_Z = 0.056  # box centre on tool0 z, m
ROBOTIQ_2F85_KNUCKLE_HALF = np.array([0.008, 0.012, 0.018])
ROBOTIQ_2F85_KNUCKLE_OFFSET = np.array([0.012, 0.0, 0.118])  # from the finger origin, x mirrored per finger
ROBOTIQ_2F85_PAD_HALF = np.array([0.004, 0.011, 0.0185])  # x (thickness), y (width), z (length)

for _a in (DH_D, DH_A, DH_ALPHA, UR5E_JOINT_LIMITS, CELL_JOINT_LIMITS, UR5E_VELOCITY_LIMITS,
           HOME_Q, UR5E_LINK_RADII, ROBOTIQ_2F85_HOUSING_HALF, ROBOTIQ_2F85_KNUCKLE_HALF,
           ROBOTIQ_2F85_KNUCKLE_OFFSET, ROBOTIQ_2F85_PAD_HALF):
    _a.setflags(write=False)


# Floor of the squared damping: keeps J J^T + lambda^2 I invertible at an
# exact singularity.
_MIN_DAMPING2 = 1e-8


class KinematicsError(ValueError):
    """A kinematics call got input it cannot use (wrong shape, NaN, ...)."""


def _as_q(q: np.ndarray, name: str = "q") -> np.ndarray:
    arr = np.asarray(q, dtype=np.float64)
    if arr.shape != (N_JOINTS,):
        raise KinematicsError(f"{name} must have shape (6,), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise KinematicsError(f"{name} contains NaN or inf: {arr.tolist()}")
    return arr


def _as_tf(t: np.ndarray | None, name: str) -> np.ndarray | None:
    if t is None:
        return None
    arr = np.asarray(t, dtype=np.float64)
    if arr.shape != (4, 4):
        raise KinematicsError(f"{name} must be a (4, 4) homogeneous transform, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise KinematicsError(f"{name} contains NaN or inf")
    return arr


def dh_transform(theta: float, d: float, a: float, alpha: float) -> np.ndarray:
    """One standard DH link transform ``Rz(theta) Tz(d) Tx(a) Rx(alpha)``: (4, 4)."""
    ct, st = np.cos(theta), np.sin(theta)
    ca, sa = np.cos(alpha), np.sin(alpha)
    return np.array([
        [ct, -st * ca, st * sa, a * ct],
        [st, ct * ca, -ct * sa, a * st],
        [0.0, sa, ca, d],
        [0.0, 0.0, 0.0, 1.0],
    ])


def fk_all(q: np.ndarray) -> np.ndarray:
    """Frames of every link in the base frame.

    q: (6,) rad. Returns (7, 4, 4): index 0 is the base (identity), index i the
    frame after joint i (DH frame i), index 6 is tool0. Joint i+1 rotates
    about the z axis of frame i.
    """
    q = _as_q(q)
    frames = np.empty((N_JOINTS + 1, 4, 4))
    frames[0] = np.eye(4)
    for i in range(N_JOINTS):
        frames[i + 1] = frames[i] @ dh_transform(q[i], DH_D[i], DH_A[i], DH_ALPHA[i])
    return frames


def fk(q: np.ndarray, tcp_offset: np.ndarray | None = None) -> np.ndarray:
    """Pose of tool0 (or of the TCP when ``tcp_offset`` is given) in the base frame.

    q: (6,) rad; tcp_offset: (4, 4) tool0 -> TCP or None. Returns (4, 4).
    """
    tcp = _as_tf(tcp_offset, "tcp_offset")
    t = fk_all(q)[-1]
    return t if tcp is None else t @ tcp


def jacobian(q: np.ndarray, tcp_offset: np.ndarray | None = None) -> np.ndarray:
    """Geometric Jacobian of tool0 (or the TCP) in the base frame.

    q: (6,) rad. Returns (6, 6): rows 0-2 linear velocity (m/s per rad/s),
    rows 3-5 angular velocity (rad/s per rad/s), both in base coordinates.
    """
    tcp = _as_tf(tcp_offset, "tcp_offset")
    frames = fk_all(q)
    end = frames[-1] if tcp is None else frames[-1] @ tcp
    p_e = end[:3, 3]
    jac = np.empty((6, N_JOINTS))
    for i in range(N_JOINTS):
        z = frames[i][:3, 2]
        jac[:3, i] = np.cross(z, p_e - frames[i][:3, 3])
        jac[3:, i] = z
    return jac


def rotation_error(r_target: np.ndarray, r_current: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, (3,), base frame) taking ``r_current`` to ``r_target``.

    r_target, r_current: (3, 3). Robust near 0 and pi.
    """
    r = r_target @ r_current.T
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    vee = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-6:
        return 0.5 * vee
    if np.pi - angle < 1e-4:
        # Near pi the antisymmetric part vanishes; take the axis from the
        # symmetric part (column of R + I with the largest norm).
        m = (r + np.eye(3)) / 2.0
        k = int(np.argmax(np.diag(m)))
        axis = m[:, k] / np.sqrt(max(m[k, k], 1e-12))
        axis /= np.linalg.norm(axis)
        # Pick the sign consistent with the (tiny) antisymmetric part.
        if np.dot(axis, vee) < 0:
            axis = -axis
        return axis * angle
    return vee * (angle / (2.0 * np.sin(angle)))


@dataclass(frozen=True)
class IKResult:
    """Outcome of :func:`ik_dls`.

    q: (6,) rad, the best configuration found (within the limits);
    converged: both tolerances met; pos_err: m; rot_err: rad; iters: used.
    """

    q: np.ndarray
    converged: bool
    pos_err: float
    rot_err: float
    iters: int


def ik_dls(
    target: np.ndarray,
    q0: np.ndarray,
    *,
    tcp_offset: np.ndarray | None = None,
    max_iters: int = 200,
    tol_pos: float = 1e-4,
    tol_rot: float = 1e-3,
    damping: float = 0.05,
    joint_limits: np.ndarray | None = None,
    max_step: float = 0.3,
    rot_weight: float = 0.3,
) -> IKResult:
    """Damped-least-squares inverse kinematics from a seed configuration.

    target: (4, 4) desired tool0 (or TCP, with ``tcp_offset`` (4, 4)) pose in
    the base frame; q0: (6,) rad seed, clipped into ``joint_limits`` first;
    joint_limits: (6, 2) rad [lower, upper], default :data:`UR5E_JOINT_LIMITS`.
    Each iteration solves ``dq = J^T (J J^T + lambda^2 I)^-1 e``, with
    ``lambda^2 = min(damping^2, |e|^2 + 1e-8)`` and the
    rotation rows weighted by ``rot_weight`` (m per rad, so that a 1 m and a
    1 rad error count alike only when rot_weight = 1), caps ``|dq|_inf`` at
    ``max_step`` rad and clips q into the limits, so the solution always
    respects the limits. An unreachable target returns ``converged=False`` and
    the closest configuration found, never raises.
    """
    tgt = _as_tf(target, "target")
    tcp = _as_tf(tcp_offset, "tcp_offset")
    lim = UR5E_JOINT_LIMITS if joint_limits is None else np.asarray(joint_limits, dtype=np.float64)
    if lim.shape != (N_JOINTS, 2) or not np.all(lim[:, 0] < lim[:, 1]):
        raise KinematicsError(f"joint_limits must be (6, 2) with lower < upper, got {lim.tolist()}")
    for name, val in (("max_iters", max_iters), ("tol_pos", tol_pos), ("tol_rot", tol_rot),
                      ("damping", damping), ("max_step", max_step), ("rot_weight", rot_weight)):
        if not np.isfinite(val) or val <= 0:
            raise KinematicsError(f"{name} must be a positive finite number, got {val!r}")
    q = np.clip(_as_q(q0, "q0"), lim[:, 0], lim[:, 1])
    w = np.array([1.0, 1.0, 1.0, rot_weight, rot_weight, rot_weight])

    best_q, best_cost, best = q.copy(), np.inf, (np.inf, np.inf)
    iters = 0
    for iters in range(max_iters + 1):
        frames = fk_all(q)
        cur = frames[-1] if tcp is None else frames[-1] @ tcp
        e_pos = tgt[:3, 3] - cur[:3, 3]
        e_rot = rotation_error(tgt[:3, :3], cur[:3, :3])
        pos_err, rot_err = float(np.linalg.norm(e_pos)), float(np.linalg.norm(e_rot))
        cost = pos_err + rot_weight * rot_err
        if cost < best_cost:
            best_q, best_cost, best = q.copy(), cost, (pos_err, rot_err)
        if pos_err <= tol_pos and rot_err <= tol_rot:
            return IKResult(q.copy(), True, pos_err, rot_err, iters)
        if iters == max_iters:
            break
        jac = jacobian(q, tcp) * w[:, None]
        err = np.concatenate([e_pos, e_rot]) * w
        # Error-dependent damping (Sugihara's Levenberg-Marquardt choice):
        # full damping far from the target keeps steps tame near
        # singularities; close to it the damping fades so convergence stays
        # fast even where J is nearly singular.
        lam2 = min(damping ** 2, float(err @ err) + _MIN_DAMPING2)
        dq = jac.T @ np.linalg.solve(jac @ jac.T + lam2 * np.eye(6), err)
        peak = float(np.max(np.abs(dq)))
        if peak > max_step:
            dq *= max_step / peak
        q = np.clip(q + dq, lim[:, 0], lim[:, 1])
    return IKResult(best_q, False, best[0], best[1], iters)


def within_limits(q: np.ndarray, joint_limits: np.ndarray | None = None) -> bool:
    """True when every joint of q (6,) lies in joint_limits (6, 2) (default hardware)."""
    lim = UR5E_JOINT_LIMITS if joint_limits is None else np.asarray(joint_limits)
    q = _as_q(q)
    return bool(np.all(q >= lim[:, 0]) and np.all(q <= lim[:, 1]))


def joint_state_vector(names, positions) -> tuple[np.ndarray | None, str]:
    """(7,) = the six UR joints (rad, :data:`JOINT_NAMES` order) + gripper (0..1) from a
    JointState's ``names``/``positions`` in any order, or (None, why) when one is missing."""
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in (*JOINT_NAMES, GRIPPER_JOINT) if n not in index]
    if missing:
        return None, f"joint_states lacks joints {missing} (has {list(names)})"
    if len(positions) != len(names):
        return None, f"joint_states has {len(names)} names but {len(positions)} positions"
    return np.array([positions[index[n]] for n in (*JOINT_NAMES, GRIPPER_JOINT)], dtype=np.float64), ""

