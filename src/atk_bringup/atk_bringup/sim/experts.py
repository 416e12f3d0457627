"""Privileged scripted experts, one per task, queryable from any state (DAgger).

An expert reads the current physical state (object poses, finger opening,
finger contacts, joint positions) and decides what to do now: its phase is
recomputed from that state at every call, never stored, so it gives a
sensible action from wherever a learner has driven the scene (a dropped
object is re-grasped, a missed grasp re-tried).

Motion: the expert picks a target tool-centre-point pose for the current
phase, moves towards it by at most `max_speed * dt` (and `max_rot_speed *
dt`) in a straight Cartesian line, and converts that waypoint to joint
targets with :func:`atk_perception.kinematics.ik_dls`, seeded with the measured
joints. The returned action is `(7,)`: 6 joint targets (rad) + gripper
command (0 open .. 1 closed).
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from atk_perception import kinematics as kin
from atk_bringup.sim import model as sim_model
from atk_bringup.sim.model import ModelIndex
from atk_bringup.sim.tasks import ClockButtonTask, ClockHandTask, GlassLidTask, SushiTask, Task, body_yaw, \
    in_contact


@dataclass
class SimState:
    """Everything a privileged expert may look at (the env's live objects)."""

    model: mujoco.MjModel
    data: mujoco.MjData
    index: ModelIndex
    task: Task
    succeeded: bool      # latched task success in this episode
    control_dt: float    # s per action


@dataclass(frozen=True)
class ExpertConfig:
    """Motion limits of the scripted experts."""

    max_speed: float = 0.25       # m/s of the TCP
    max_rot_speed: float = 1.5    # rad/s of the TCP
    at_tol: float = 0.006         # m: "at the waypoint"
    yaw_tol: float = 0.08         # rad
    #: Sushi: turn the gripper to grasp across the nigiri's width (True), or
    #: grasp it at the tool's home yaw whatever its orientation (False, the
    #: default). The 2F-85 opens 85 mm and the nigiri's diagonal is 74 mm, so a
    #: fixed-yaw grasp takes it at any orientation (40/40 seeded episodes); an
    #: aligned grasp asks the policy to infer the grasp direction's sign from
    #: two keypoints 14 px apart, which an MLP did not learn from 100 demos.
    align_sushi_grasp: bool = False
    #: Sushi: TCP within this of the grasp point (m, horizontal and vertical)
    #: counts as there. The fixed-yaw grasp tolerates a centimetre; at 6 mm
    #: the expert bobbed up and down over the nigiri, which a learner copies.
    sushi_grasp_tol: float = 0.012

    def __post_init__(self) -> None:
        for name in ("max_speed", "max_rot_speed", "at_tol", "yaw_tol", "sushi_grasp_tol"):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"ExpertConfig.{name} must be a positive number, got {v!r}")


_T_WB = sim_model.base_transform()
_T_BW = np.linalg.inv(_T_WB)


def down_rotation(yaw: float) -> np.ndarray:
    """World rotation (3, 3) of a tool pointing down with its x axis (finger closing) at yaw."""
    x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.column_stack([x, np.cross(z, x), z])


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


class ScriptedExpert:
    """Base class: Cartesian waypoint following through the IK."""

    def __init__(self, config: ExpertConfig | None = None) -> None:
        self.config = config or ExpertConfig()

    # -- state helpers -----------------------------------------------------
    @staticmethod
    def joints(state: SimState) -> np.ndarray:
        return state.data.qpos[state.index.arm_qpos].copy()

    @staticmethod
    def gripper(state: SimState) -> float:
        """Measured opening, 0 open .. 1 closed."""
        return float(state.data.qpos[state.index.finger_qpos[0]] / sim_model.FINGER_TRAVEL)

    @staticmethod
    def tcp(state: SimState) -> tuple[np.ndarray, np.ndarray]:
        """Measured TCP position (3,) and rotation (3, 3), world frame."""
        i = state.index.tcp_site
        return state.data.site_xpos[i].copy(), state.data.site_xmat[i].reshape(3, 3).copy()

    def grasped(self, state: SimState, geoms) -> bool:
        """Both finger pads touch the given geoms."""
        m, d, idx = state.model, state.data, state.index
        return (in_contact(m, d, [idx.pad_geoms[0]], geoms)
                and in_contact(m, d, [idx.pad_geoms[1]], geoms))

    def closest_yaw(self, state: SimState, yaw: float, period: float = np.pi) -> float:
        """yaw + k * period nearest the tool's current yaw (avoids wrist wind-up)."""
        _, r = self.tcp(state)
        cur = np.arctan2(r[1, 0], r[0, 0])
        k = np.round((cur - yaw) / period)
        return float(yaw + k * period)

    # -- motion --------------------------------------------------------------
    def move(self, state: SimState, pos: np.ndarray, yaw: float, grip: float) -> np.ndarray:
        """Action (7,) stepping the TCP towards (pos (3,), tool-down at yaw)."""
        cfg = self.config
        dt = state.control_dt
        p, r = self.tcp(state)
        delta = np.asarray(pos, float) - p
        dist = np.linalg.norm(delta)
        step = cfg.max_speed * dt
        p_next = p + (delta if dist <= step else delta * step / dist)
        r_tgt = down_rotation(yaw)
        rv = kin.rotation_error(r_tgt, r)
        ang = np.linalg.norm(rv)
        rstep = cfg.max_rot_speed * dt
        if ang > rstep:
            r_next = _rotvec_to_mat(rv * rstep / ang) @ r
        else:
            r_next = r_tgt
        t_w = np.eye(4)
        t_w[:3, :3], t_w[:3, 3] = r_next, p_next
        q = self.joints(state)
        res = kin.ik_dls(_T_BW @ t_w, q, tcp_offset=kin.ROBOTIQ_2F85_TCP,
                         joint_limits=kin.CELL_JOINT_LIMITS, max_iters=60, tol_pos=2e-4, tol_rot=2e-3)
        return np.concatenate([res.q, [float(np.clip(grip, 0.0, 1.0))]])

    def reachable(self, pos: np.ndarray, yaw: float, q_seed: np.ndarray) -> bool:
        """Whether the IK reaches a tool-down pose at pos (3,) world with this yaw."""
        t_w = np.eye(4)
        t_w[:3, :3], t_w[:3, 3] = down_rotation(yaw), pos
        res = kin.ik_dls(_T_BW @ t_w, q_seed, tcp_offset=kin.ROBOTIQ_2F85_TCP,
                         joint_limits=kin.CELL_JOINT_LIMITS, max_iters=300)
        return res.converged

    def check_reachable(self, state: SimState) -> str:
        """Empty string when the task's key poses are reachable, else a message."""
        msgs = []
        for label, pos, yaw in self.key_poses(state):
            if not self.reachable(pos, yaw, kin.HOME_Q):
                msgs.append(f"{label} at {np.round(pos, 3).tolist()} m is out of the arm's reach")
        return "; ".join(msgs)

    # -- per task ------------------------------------------------------------
    def key_poses(self, state: SimState) -> list[tuple[str, np.ndarray, float]]:
        raise NotImplementedError

    def action(self, state: SimState) -> np.ndarray:
        """The expert's action (7,) for the current physical state."""
        raise NotImplementedError


def _rotvec_to_mat(rv: np.ndarray) -> np.ndarray:
    ang = np.linalg.norm(rv)
    if ang < 1e-12:
        return np.eye(3)
    k = rv / ang
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(ang) * kx + (1 - np.cos(ang)) * kx @ kx


class PickPlaceExpert(ScriptedExpert):
    """Sushi: grasp across the nigiri's width, carry to the plate, release."""

    pre_height = 0.10     # above the grasp height
    carry_z = 0.15        # TCP height while carrying
    grasp_above = 0.010   # TCP above the sushi's body origin when grasping
    release_above = 0.006  # sushi origin above its resting height on the plate when released

    #: Tool yaw of the fixed-yaw grasp: the home pose's (fingers closing along world -y/+y).
    fixed_grasp_yaw = -np.pi / 2

    def grasp_yaw(self, state) -> float:
        """Tool yaw for grasping the nigiri (see ExpertConfig.align_sushi_grasp)."""
        if self.config.align_sushi_grasp:
            return body_yaw(state.data, state.task.sushi) + np.pi / 2
        return self.fixed_grasp_yaw

    def key_poses(self, state):
        t: SushiTask = state.task
        d = state.data
        s, p = d.xpos[t.sushi], d.xpos[t.plate]
        yaw = self.grasp_yaw(state)
        return [("sushi grasp", s + [0, 0, self.grasp_above], yaw),
                ("plate place", np.array([p[0], p[1], 0.06]), yaw)]

    def action(self, state):
        t: SushiTask = state.task
        m, d = state.model, state.data
        tcp, _ = self.tcp(state)
        g = self.gripper(state)
        s = d.xpos[t.sushi].copy()
        plate = d.xpos[t.plate].copy()
        yaw = self.closest_yaw(state, self.grasp_yaw(state))
        _, r = self.tcp(state)
        cur_yaw = float(np.arctan2(r[1, 0], r[0, 0]))
        if state.succeeded or t.success(m, d):
            return self.move(state, [tcp[0], tcp[1], self.carry_z], cur_yaw, 0.0)
        if self.grasped(state, t.sushi_geoms):
            off = tcp - s   # sushi in hand: move the TCP so the sushi lands on the plate
            d_xy = np.linalg.norm(s[:2] - plate[:2])
            if d_xy > 0.012:
                if tcp[2] < self.carry_z - 0.03 and d_xy > 0.04:
                    return self.move(state, [tcp[0], tcp[1], self.carry_z], cur_yaw, 1.0)
                return self.move(state, [plate[0] + off[0], plate[1] + off[1], self.carry_z], cur_yaw, 1.0)
            rest_z = plate[2] + t.PLATE_H + t.RICE[2]
            target_z = rest_z + self.release_above
            if s[2] < target_z + 0.004:
                return self.move(state, [plate[0] + off[0], plate[1] + off[1], target_z + off[2]], cur_yaw, 0.0)
            return self.move(state, [plate[0] + off[0], plate[1] + off[1], target_z + off[2]], cur_yaw, 1.0)
        # not holding it: approach, descend, close (or re-open after a miss)
        tol = self.config.sushi_grasp_tol
        grasp = s + [0.0, 0.0, self.grasp_above]
        pre = grasp + [0.0, 0.0, self.pre_height]
        xy_err = np.linalg.norm(tcp[:2] - grasp[:2])
        yaw_err = abs(_wrap(cur_yaw - yaw))
        at_grasp = xy_err < tol and abs(tcp[2] - grasp[2]) < tol
        if at_grasp:
            if g > 0.9:   # closed on nothing: open and back off
                return self.move(state, pre, yaw, 0.0)
            return self.move(state, grasp, yaw, 1.0)
        if xy_err > tol or yaw_err > self.config.yaw_tol:
            if tcp[2] < grasp[2] + 0.05 and xy_err > 0.02:
                return self.move(state, [tcp[0], tcp[1], pre[2]], cur_yaw, 0.0)   # up first
            return self.move(state, pre, yaw, 0.0)
        if g > 0.1:   # aligned above it but not open yet: wait
            return self.move(state, [grasp[0], grasp[1], max(tcp[2], pre[2] - 0.05)], yaw, 0.0)
        return self.move(state, grasp, yaw, 0.0)


class LidExpert(ScriptedExpert):
    """Glass lid: grasp the knob from above, lift straight up."""

    pre_height = 0.08
    lift_extra = 0.06  # lift this much beyond the success height

    def knob(self, state) -> np.ndarray:
        t: GlassLidTask = state.task
        d = state.data
        r = d.xmat[t.lid].reshape(3, 3)
        return d.xpos[t.lid] + r @ [0.0, 0.0, t.knob_top_offset()]

    def key_poses(self, state):
        k = self.knob(state)
        return [("lid knob grasp", k, 0.0), ("lid lift", k + [0, 0, 0.15], 0.0)]

    def action(self, state):
        t: GlassLidTask = state.task
        tcp, r = self.tcp(state)
        cur_yaw = float(np.arctan2(r[1, 0], r[0, 0]))
        g = self.gripper(state)
        k = self.knob(state)
        if self.grasped(state, [t.knob_geom]):
            lift_z = t.rest_z + t.lift_height + self.lift_extra + t.knob_top_offset()
            return self.move(state, [k[0], k[1], lift_z], cur_yaw, 1.0)
        pre = k + [0.0, 0.0, self.pre_height]
        xy_err = np.linalg.norm(tcp[:2] - k[:2])
        at_grasp = xy_err < self.config.at_tol and abs(tcp[2] - k[2]) < self.config.at_tol
        if at_grasp:
            if g > 0.9:
                return self.move(state, pre, cur_yaw, 0.0)
            return self.move(state, k, cur_yaw, 1.0)
        if xy_err > self.config.at_tol:
            if tcp[2] < k[2] + 0.04 and xy_err > 0.02:
                return self.move(state, [tcp[0], tcp[1], pre[2]], cur_yaw, 0.0)
            return self.move(state, pre, cur_yaw, 0.0)
        if g > 0.1:
            return self.move(state, [k[0], k[1], max(tcp[2], pre[2] - 0.04)], cur_yaw, 0.0)
        return self.move(state, k, cur_yaw, 0.0)


class ButtonExpert(ScriptedExpert):
    """Clock button: close the fingers, come down on the button, press and hold it.

    Once the button is down the expert keeps pressing: it does not back off.
    The button springs back when released, so after a back-off the scene
    looks as it did before the press, and the demonstrations' frames over the
    button said "go down" before the press and "go up" after it for the same
    keypoints and joints: the policy learned their average and hovered 7 mm
    above the press (0 of 100 episodes). Held, every frame over the button
    says "down".
    """

    pre_height = 0.06
    press_extra = 0.003  # push this far beyond the full travel (the joint limit stops it)

    def button_top(self, state) -> np.ndarray:
        t: ClockButtonTask = state.task
        d = state.data
        return d.xpos[t.clock] + [0.0, 0.0, t.button_top_offset]

    def key_poses(self, state):
        b = self.button_top(state)
        return [("button press", b + [0, 0, sim_model.PAD_HALF[2]], 0.0)]

    def action(self, state):
        t: ClockButtonTask = state.task
        tcp, r = self.tcp(state)
        g = self.gripper(state)
        b = self.button_top(state)
        yaw = self.closest_yaw(state, body_yaw(state.data, t.clock))
        cur_yaw = float(np.arctan2(r[1, 0], r[0, 0]))
        pad = sim_model.PAD_HALF[2]   # TCP = pad centre; the pad bottoms touch first
        pre = b + [0.0, 0.0, pad + self.pre_height]
        press = b + [0.0, 0.0, pad - t.TRAVEL - self.press_extra]
        if state.succeeded or t.success(state.model, state.data):
            return self.move(state, press, cur_yaw, 1.0)   # hold the button down (class doc)
        xy_err = np.linalg.norm(tcp[:2] - b[:2])
        if xy_err > self.config.at_tol or abs(_wrap(cur_yaw - yaw)) > self.config.yaw_tol:
            if tcp[2] < pre[2] - 0.02 and xy_err > 0.02:
                return self.move(state, [tcp[0], tcp[1], pre[2]], cur_yaw, 1.0)
            return self.move(state, pre, yaw, 1.0)
        if g < 0.9:
            return self.move(state, [b[0], b[1], max(tcp[2], pre[2] - 0.03)], yaw, 1.0)
        return self.move(state, press, yaw, 1.0)


class HandTurnExpert(ScriptedExpert):
    """Clock hand: closed fingers come down beside the hand and push it round to the mark.

    The fingertip block (pads closed, 16 x 22 mm) sits on a circle of radius
    `push_radius` behind the hand in the turning direction (the shorter way
    to the mark) and moves along that circle.
    """

    push_radius = 0.042
    pre_height = 0.05
    clearance = 0.003        # pad bottoms above the dial while pushing
    approach_angle = 0.55    # rad behind the hand when coming down
    arc_step = 0.15          # rad of circle per control step while pushing

    def _geometry(self, state):
        t: ClockHandTask = state.task
        d = state.data
        c = d.xpos[t.clock].copy()
        yaw_c = body_yaw(d, t.clock)
        push_z = c[2] + t.DIAL_HH + self.clearance + sim_model.PAD_HALF[2]
        # contact offset: half the pad block (x, tangential) + half the hand width
        contact = (sim_model.PAD_HALF[0] * 2 + t.HAND[1] + 0.001) / self.push_radius
        return t, c, yaw_c, push_z, contact

    def _point(self, c, yaw_c, ang, z):
        a = yaw_c + ang
        return np.array([c[0] + self.push_radius * np.cos(a), c[1] + self.push_radius * np.sin(a), z])

    def _tool_yaw(self, state, yaw_c, ang):
        return self.closest_yaw(state, yaw_c + ang + np.pi / 2)   # fingers' x along the tangent

    def key_poses(self, state):
        t, c, yaw_c, push_z, _ = self._geometry(state)
        return [("clock hand push", self._point(c, yaw_c, 0.0, push_z), yaw_c + np.pi / 2)]

    def action(self, state):
        t, c, yaw_c, push_z, contact = self._geometry(state)
        tcp, r = self.tcp(state)
        cur_yaw = float(np.arctan2(r[1, 0], r[0, 0]))
        q = t.hand_angle(state.data)
        pre_z = push_z + self.pre_height
        if state.succeeded or t.success(state.model, state.data):
            return self.move(state, [tcp[0], tcp[1], pre_z], cur_yaw, 1.0)
        s = -np.sign(q)          # turning direction: the shorter way to the mark
        rel = tcp[:2] - c[:2]
        psi = _wrap(float(np.arctan2(rel[1], rel[0])) - yaw_c)   # pusher angle on the dial
        rho = float(np.linalg.norm(rel))
        behind = s * _wrap(q - psi)   # > 0 when the hand is ahead of the pusher
        low = tcp[2] < push_z + 0.006
        if self.gripper(state) < 0.9 and not low:
            return self.move(state, [tcp[0], tcp[1], max(tcp[2], pre_z)], cur_yaw, 1.0)
        if low and abs(rho - self.push_radius) < 0.012 and 0.0 < behind < 0.9:
            # engaged: walk round the circle towards where the hand reaches the mark
            final = -s * contact
            step = float(np.clip(final - psi, -self.arc_step, self.arc_step))
            nxt = psi + step
            return self.move(state, self._point(c, yaw_c, nxt, push_z), self._tool_yaw(state, yaw_c, nxt), 1.0)
        start = q - s * self.approach_angle
        above = self._point(c, yaw_c, start, pre_z)
        yaw = self._tool_yaw(state, yaw_c, start)
        if low:   # low but not behind the hand: back up first
            return self.move(state, [tcp[0], tcp[1], pre_z], cur_yaw, 1.0)
        if np.linalg.norm(tcp[:2] - above[:2]) > self.config.at_tol or abs(_wrap(cur_yaw - yaw)) > self.config.yaw_tol:
            return self.move(state, above, yaw, 1.0)
        return self.move(state, self._point(c, yaw_c, start, push_z), yaw, 1.0)


EXPERTS: dict[str, type[ScriptedExpert]] = {
    "sushi": PickPlaceExpert, "glass_lid": LidExpert, "clock_button": ButtonExpert,
    "clock_hand": HandTurnExpert}


def make_expert(task: str, config: ExpertConfig | None = None) -> ScriptedExpert:
    """The scripted expert of a task; unknown names raise ValueError listing them."""
    if task not in EXPERTS:
        raise ValueError(f"no expert for task {task!r}; choose one of {sorted(EXPERTS)}")
    return EXPERTS[task](config)
