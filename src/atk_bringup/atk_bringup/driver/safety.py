"""Safety rules of the UR5e driver, ROS-free.

Every joint target the driver receives passes :func:`check_target` before the
servo loop may use it, and every command the loop streams is produced by
:func:`step_towards`, which enforces the velocity and acceleration limits.
Nothing here uses ``assert``: the rules must hold under ``python -O``.

Shapes: joint vectors are ``(6,)`` radians in ``kinematics.JOINT_NAMES`` order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from atk_perception import kinematics as kin


def _vec6(value, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape == ():
        arr = np.full(kin.N_JOINTS, float(arr))
    if arr.shape != (kin.N_JOINTS,):
        raise ValueError(f"SafetyLimits.{name} must be a scalar or 6 values, got shape {arr.shape}")
    return arr


@dataclass
class SafetyLimits:
    """Limits the driver enforces whatever the policy sends.

    joint_limits: (6, 2) rad [lower, upper], within the UR5e's +-2pi.
    max_velocity: (6,) rad/s (scalar broadcast), at most the UR5e's pi rad/s.
    max_acceleration: (6,) rad/s^2 (scalar broadcast).
    max_target_step: rad, largest allowed distance on any joint between a
        new target (as sent, before clamping) and the position the driver is
        commanding now (the measured position for the first target after
        enable / a stop); a larger jump is refused. Measuring from the
        commanded position, not from the last accepted target, keeps a
        stream of small steps from running ahead of the arm, and always
        accepts a target near the arm.
    workspace_min / workspace_max: (3,) m, box in the robot base frame that
        the TCP (tool0 @ tcp_offset) must stay inside; a target outside is refused.
    tcp_offset: (4, 4) tool0 -> TCP used for the workspace check.
    watchdog_timeout: s without a fresh target after which the arm stops.
    max_target_age: s, a target whose header stamp is older than this (or
        this far in the future: clocks out of sync) is refused; 0 turns the
        check off (for publishers without synchronised clocks).
    joint_limit_margin: rad kept clear of joint_limits when clamping, so a
        clamped target is never exactly at the limit.
    """

    joint_limits: np.ndarray = field(default_factory=lambda: kin.CELL_JOINT_LIMITS.copy())
    # 1 rad/s is a cautious speed for policy-driven motion near people; the
    # hardware allows pi.
    max_velocity: np.ndarray = field(default_factory=lambda: np.full(kin.N_JOINTS, 1.0))
    max_acceleration: np.ndarray = field(default_factory=lambda: np.full(kin.N_JOINTS, 3.0))
    # A 10 Hz policy at max_velocity moves 0.1 rad per target; 0.3 rad leaves
    # margin for 30 Hz -> 10 Hz jitter while refusing a glitching policy.
    max_target_step: float = 0.3
    # Cell default: base on the table top (z = 0); the TCP stays 15 mm above
    # it and inside the arm's 0.85 m reach.
    workspace_min: np.ndarray = field(default_factory=lambda: np.array([-0.85, -0.85, 0.015]))
    workspace_max: np.ndarray = field(default_factory=lambda: np.array([0.85, 0.85, 1.0]))
    tcp_offset: np.ndarray = field(default_factory=lambda: kin.ROBOTIQ_2F85_TCP.copy())
    # The policy runs at 10-30 Hz: 0.5 s is five missed targets at 10 Hz.
    watchdog_timeout: float = 0.5
    # A target older than the watchdog timeout is as stale as no target.
    max_target_age: float = 0.5
    joint_limit_margin: float = 0.01

    def __post_init__(self) -> None:
        self.joint_limits = np.asarray(self.joint_limits, dtype=np.float64)
        if self.joint_limits.shape != (kin.N_JOINTS, 2) or not np.all(np.isfinite(self.joint_limits)):
            raise ValueError(f"SafetyLimits.joint_limits must be 6 finite [lower, upper] pairs, "
                             f"got {self.joint_limits.tolist()}")
        if not np.all(self.joint_limits[:, 0] < self.joint_limits[:, 1]):
            raise ValueError(f"SafetyLimits.joint_limits: lower must be below upper, got "
                             f"{self.joint_limits.tolist()}")
        hw = kin.UR5E_JOINT_LIMITS
        if np.any(self.joint_limits[:, 0] < hw[:, 0]) or np.any(self.joint_limits[:, 1] > hw[:, 1]):
            raise ValueError(f"SafetyLimits.joint_limits exceed the UR5e's +-2pi: "
                             f"{self.joint_limits.tolist()}")
        self.max_velocity = _vec6(self.max_velocity, "max_velocity")
        if not np.all((self.max_velocity > 0) & (self.max_velocity <= kin.UR5E_VELOCITY_LIMITS)):
            raise ValueError(f"SafetyLimits.max_velocity must be in (0, pi] rad/s per joint, got "
                             f"{self.max_velocity.tolist()}")
        self.max_acceleration = _vec6(self.max_acceleration, "max_acceleration")
        if not np.all((self.max_acceleration > 0) & np.isfinite(self.max_acceleration)):
            raise ValueError(f"SafetyLimits.max_acceleration must be positive and finite, got "
                             f"{self.max_acceleration.tolist()}")
        if not (np.isfinite(self.max_target_step) and 0 < self.max_target_step <= np.pi):
            raise ValueError(f"SafetyLimits.max_target_step must be in (0, pi] rad, got "
                             f"{self.max_target_step!r}")
        self.workspace_min = np.asarray(self.workspace_min, dtype=np.float64)
        self.workspace_max = np.asarray(self.workspace_max, dtype=np.float64)
        for name in ("workspace_min", "workspace_max"):
            val = getattr(self, name)
            if val.shape != (3,) or not np.all(np.isfinite(val)):
                raise ValueError(f"SafetyLimits.{name} must be 3 finite numbers (m), got {val.tolist()}")
        if not np.all(self.workspace_min < self.workspace_max):
            raise ValueError(f"SafetyLimits.workspace_min must be below workspace_max per axis, got "
                             f"{self.workspace_min.tolist()} / {self.workspace_max.tolist()}")
        self.tcp_offset = np.asarray(self.tcp_offset, dtype=np.float64)
        if self.tcp_offset.shape != (4, 4) or not np.all(np.isfinite(self.tcp_offset)):
            raise ValueError("SafetyLimits.tcp_offset must be a finite (4, 4) transform")
        if not (np.isfinite(self.watchdog_timeout) and 0 < self.watchdog_timeout <= 10.0):
            raise ValueError(f"SafetyLimits.watchdog_timeout must be in (0, 10] s, got "
                             f"{self.watchdog_timeout!r}")
        if not (np.isfinite(self.max_target_age) and 0 <= self.max_target_age <= 60.0):
            raise ValueError(f"SafetyLimits.max_target_age must be in [0, 60] s (0: off), got "
                             f"{self.max_target_age!r}")
        span = float(np.min(self.joint_limits[:, 1] - self.joint_limits[:, 0]))
        if not (np.isfinite(self.joint_limit_margin) and 0 <= self.joint_limit_margin < span / 2):
            raise ValueError(f"SafetyLimits.joint_limit_margin must be in [0, {span / 2:.3f}) rad, got "
                             f"{self.joint_limit_margin!r}")


@dataclass(frozen=True)
class TargetCheck:
    """Verdict on one joint target.

    accepted: the loop may use ``q``; q: (6,) rad, possibly clamped (None when
    refused); clamped: some joint was moved into the limits; reason: empty
    when accepted unchanged, else a sentence for the operator.
    """

    accepted: bool
    q: np.ndarray | None
    clamped: bool
    reason: str


def _refuse(reason: str) -> TargetCheck:
    return TargetCheck(False, None, False, reason)


def tcp_position(q: np.ndarray, limits: SafetyLimits) -> np.ndarray:
    """TCP position (3,) m in the base frame for q (6,) rad."""
    return kin.fk(q, limits.tcp_offset)[:3, 3]


def in_workspace(q: np.ndarray, limits: SafetyLimits) -> tuple[bool, np.ndarray]:
    """Whether the TCP at q (6,) lies in the workspace box; also its position (3,)."""
    p = tcp_position(q, limits)
    return bool(np.all(p >= limits.workspace_min) and np.all(p <= limits.workspace_max)), p


def check_target(q_target, reference: np.ndarray, limits: SafetyLimits) -> TargetCheck:
    """Apply the target rules in order; never raises for bad target values.

    q_target: anything array-like, expected (6,) rad; reference: (6,) rad, the
    position the driver is commanding now (the measured position when it is
    not moving the arm).
    Rules: shape -> finite (NaN/inf refused) -> max step of the target as
    sent from ``reference`` (refused: a target far outside the joint limits
    is a fault, not something to clamp and execute) -> joint limits
    (clamped with ``joint_limit_margin``) -> TCP workspace box (refused).
    """
    try:
        q = np.array(q_target, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        return _refuse(f"target is not numeric: {exc}")
    if q.shape != (kin.N_JOINTS,):
        return _refuse(f"target has {q.size} joint values, expected 6")
    if not np.all(np.isfinite(q)):
        return _refuse(f"target contains NaN or inf: {np.round(q, 4).tolist()}")
    step = np.abs(q - np.asarray(reference, dtype=np.float64))
    worst = int(np.argmax(step))
    if step[worst] > limits.max_target_step:
        return _refuse(f"target jumps {step[worst]:.3f} rad on {kin.JOINT_NAMES[worst]} from the "
                       f"commanded position (max_target_step {limits.max_target_step:.3f} rad)")
    lo = limits.joint_limits[:, 0] + limits.joint_limit_margin
    hi = limits.joint_limits[:, 1] - limits.joint_limit_margin
    clipped = np.clip(q, lo, hi)
    clamped = bool(np.any(clipped != q))
    reason = ""
    if clamped:
        bad = [f"{kin.JOINT_NAMES[i]}={q[i]:.3f}" for i in np.flatnonzero(clipped != q)]
        reason = f"clamped into joint limits: {', '.join(bad)}"
    inside, p = in_workspace(clipped, limits)
    if not inside:
        return _refuse(f"TCP at {np.round(p, 3).tolist()} m is outside the workspace box "
                       f"{limits.workspace_min.tolist()}..{limits.workspace_max.tolist()}")
    return TargetCheck(True, clipped, clamped, reason)


def check_target_age(age_s: float, limits: SafetyLimits) -> str:
    """'' when a target ``age_s`` seconds old (receive time - header stamp) may
    be used, else why not. A negative age is a stamp from the future."""
    if limits.max_target_age <= 0:
        return ""
    if not np.isfinite(age_s) or age_s > limits.max_target_age:
        return (f"target is {age_s:.3f} s old (max_target_age {limits.max_target_age} s): stale, or "
                "its header.stamp is unset")
    if age_s < -limits.max_target_age:
        return (f"target is stamped {-age_s:.3f} s in the future (max_target_age "
                f"{limits.max_target_age} s): are the clocks of the two computers synchronised?")
    return ""


def step_towards(q: np.ndarray, v: np.ndarray, goal: np.ndarray, dt: float,
                 limits: SafetyLimits) -> tuple[np.ndarray, np.ndarray]:
    """One interpolation step of the commanded joint state towards ``goal``.

    q, v, goal: (6,) rad, rad/s; dt: s. Returns (q_next, v_next), (6,) each.
    Per joint: speed at most ``max_velocity``, change of speed at most
    ``max_acceleration * dt``, and slow enough to stop at the goal with the
    acceleration limit (discrete form of v <= sqrt(2 a d)), so the arm
    arrives without overshoot (beyond a discretisation bound of a * dt^2,
    micro-radians) when the goal stays put. Joints are limited independently: for
    the small steps between policy targets the joint-space path stays close to
    a straight line. The result is clipped into the joint limits.
    """
    a_dt = limits.max_acceleration * dt
    d = goal - q
    dist = np.abs(d)
    # Discrete braking speed: the speed from which constant deceleration a
    # covers exactly dist in whole steps of dt.
    v_brake = a_dt * (np.sqrt(0.25 + 2.0 * dist / np.maximum(a_dt * dt, 1e-12)) - 0.5)
    v_des = np.sign(d) * np.minimum.reduce([limits.max_velocity, v_brake, dist / dt])
    v_next = np.clip(v_des, v - a_dt, v + a_dt)
    q_next = q + v_next * dt
    q_next = np.clip(q_next, limits.joint_limits[:, 0], limits.joint_limits[:, 1])
    return q_next, v_next
