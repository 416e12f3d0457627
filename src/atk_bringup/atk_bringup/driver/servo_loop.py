"""The driver's real-time servo loop and gripper worker, ROS-free.

:class:`ServoLoop` runs one control period per :meth:`ServoLoop.cycle` in a
dedicated thread (500 Hz on e-Series, 125 Hz on CB3). Each period it reads the
robot, detects protective / emergency stops and lost connections, kicks the
RTDE watchdog and, while armed, moves the commanded joint position one
velocity- and acceleration-limited step (:func:`safety.step_towards`) towards
the newest accepted target and streams it with ``servoJ``.

State machine (:class:`DriverState`)::

    DISARMED --enable--> RUNNING --no target for watchdog_timeout--> WATCHDOG_STOP
    WATCHDOG_STOP --fresh accepted target--> RUNNING (re-anchored)
    any --protective stop--> PROTECTIVE_STOP --enable (after clearing on pendant)--> RUNNING
    any --emergency stop--> EMERGENCY_STOP --enable (after releasing)--> RUNNING
    any --connection lost--> DISCONNECTED --enable (reconnects first)--> RUNNING
    DISARMED/RUNNING/WATCHDOG_STOP --teach on--> TEACH --teach off--> DISARMED

Stops are latched: nothing resumes motion after a protective or emergency
stop except an explicit :meth:`ServoLoop.enable`. Whenever motion (re)starts
the interpolator re-anchors at the measured joint position with zero
velocity and forgets older targets, so the arm never jumps to an old target.

Thread safety: one lock guards the state and every call into the control
interface (ur_rtde's RTDEControlInterface is not meant for concurrent
callers); ROS callbacks call enable/disable/submit_target from other threads.
"""
from __future__ import annotations

import collections
import enum
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from atk_perception import kinematics as kin
from atk_bringup.driver.safety import SafetyLimits, TargetCheck, check_target, step_towards
from atk_bringup.driver.ur_interface import (
    SAFETY_MODES,
    ControlInterface,
    GripperInterface,
    ReceiveInterface,
)


class DriverState(enum.Enum):
    DISARMED = "disarmed"
    RUNNING = "running"
    WATCHDOG_STOP = "watchdog_stop"
    PROTECTIVE_STOP = "protective_stop"
    EMERGENCY_STOP = "emergency_stop"
    DISCONNECTED = "disconnected"
    TEACH = "teach"


_LATCHED = (DriverState.PROTECTIVE_STOP, DriverState.EMERGENCY_STOP, DriverState.DISCONNECTED)


@dataclass
class ServoConfig:
    """Servo loop settings.

    control_rate_hz: 500 (e-Series) or 125 (CB3); other values in [1, 500]
        are accepted for tests and simulation.
    lookahead_time: s, servoJ lookahead (ur_rtde range 0.03..0.2); larger is
        smoother but lags more.
    gain: servoJ proportional gain (ur_rtde range 100..2000).
    stop_deceleration: rad/s^2 passed to servoStop when the loop stops.
    rtde_watchdog_min_frequency: Hz; the controller's script stops the arm
        when this loop kicks the RTDE watchdog less often (a dead driver).
    """

    control_rate_hz: float = 500.0
    lookahead_time: float = 0.1
    gain: float = 300.0
    stop_deceleration: float = 2.0
    rtde_watchdog_min_frequency: float = 10.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.control_rate_hz) and 1.0 <= self.control_rate_hz <= 500.0):
            raise ValueError(f"ServoConfig.control_rate_hz must be in [1, 500] Hz (500 e-Series, "
                             f"125 CB3), got {self.control_rate_hz!r}")
        if not (0.03 <= self.lookahead_time <= 0.2):
            raise ValueError(f"ServoConfig.lookahead_time must be in [0.03, 0.2] s, got "
                             f"{self.lookahead_time!r}")
        if not (100.0 <= self.gain <= 2000.0):
            raise ValueError(f"ServoConfig.gain must be in [100, 2000], got {self.gain!r}")
        if not (np.isfinite(self.stop_deceleration) and 0.1 <= self.stop_deceleration <= 40.0):
            raise ValueError(f"ServoConfig.stop_deceleration must be in [0.1, 40] rad/s^2, got "
                             f"{self.stop_deceleration!r}")
        if not (np.isfinite(self.rtde_watchdog_min_frequency)
                and 1.0 <= self.rtde_watchdog_min_frequency <= self.control_rate_hz):
            raise ValueError(f"ServoConfig.rtde_watchdog_min_frequency must be in [1, control_rate_hz] "
                             f"Hz, got {self.rtde_watchdog_min_frequency!r}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz


@dataclass(frozen=True)
class LoopStatus:
    """Snapshot for publishing. Arrays are (6,) rad or rad/s."""

    state: DriverState
    q_measured: np.ndarray
    qd_measured: np.ndarray
    q_command: np.ndarray
    robot_mode: int
    safety_mode: int
    safety_status_bits: int
    target_age_s: float  # inf when there is no target
    cycles: int
    overruns: int  # cycles that took longer than 1.5 periods
    max_cycle_s: float
    refused_targets: int
    clamped_targets: int
    accepted_targets: int
    last_message: str


@dataclass(frozen=True)
class LoopEvent:
    """Something the operator should see. level: 'info' | 'warn' | 'error'."""

    stamp: float
    level: str
    message: str


class ServoLoop:
    """Interpolating servoJ streamer with the driver's safety rules.

    receive, control: the hardware boundary (ur_rtde or a stand-in);
    clock: monotonic seconds, injectable so tests can step time exactly.
    """

    def __init__(self, receive: ReceiveInterface, control: ControlInterface,
                 config: ServoConfig, limits: SafetyLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rx = receive
        self._ctl = control
        self.config = config
        self.limits = limits
        self._clock = clock
        self._lock = threading.RLock()
        self._state = DriverState.DISARMED
        q = self._read_q()
        self._q_meas = q if q is not None else np.zeros(kin.N_JOINTS)
        self._qd_meas = np.zeros(kin.N_JOINTS)
        self._q_cmd = self._q_meas.copy()
        self._v_cmd = np.zeros(kin.N_JOINTS)
        self._target: np.ndarray | None = None
        self._target_time = -np.inf
        self._watch_since = -np.inf
        self._robot_mode = -1
        self._safety_mode = 0
        self._safety_bits = 0
        self._cycles = 0
        self._overruns = 0
        self._max_cycle = 0.0
        self._refused = 0
        self._clamped = 0
        self._accepted = 0
        self._last_message = "started disarmed"
        self._events: collections.deque[LoopEvent] = collections.deque(maxlen=100)
        self._thread: threading.Thread | None = None
        self._stop_thread = threading.Event()

    # --- life cycle -------------------------------------------------------------
    def start(self) -> None:
        """Set the RTDE watchdog and start the loop thread (disarmed)."""
        with self._lock:
            self._ctl.setWatchdog(self.config.rtde_watchdog_min_frequency)
        self._stop_thread.clear()
        self._thread = threading.Thread(target=self._run, name="ur_servo_loop", daemon=True)
        self._thread.start()

    def shutdown(self, timeout_s: float = 1.0) -> None:
        """Stop motion smoothly and end the loop thread; waits at most timeout_s for it."""
        with self._lock:
            if self._state == DriverState.RUNNING:
                self._ctl.servoStop(self.config.stop_deceleration)
            self._set_state(DriverState.DISARMED, "info", "driver shutting down")
        self._stop_thread.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"servo loop thread did not end within {timeout_s} s")

    def _run(self) -> None:
        period = self.config.period_s
        while not self._stop_thread.is_set():
            t_start = self._ctl.initPeriod()
            t0 = time.perf_counter()
            try:
                self.cycle()
            except Exception as exc:  # noqa: BLE001 - the loop must report, never die silently
                with self._lock:
                    # Report once; a fault that repeats every period must not flood the log.
                    if self._state != DriverState.DISCONNECTED:
                        self._safe_stop(DriverState.DISCONNECTED,
                                        f"servo loop error: {exc!r}; fix the cause, then call ~/enable")
            elapsed = time.perf_counter() - t0
            with self._lock:
                self._max_cycle = max(self._max_cycle, elapsed)
                if elapsed > 1.5 * period:
                    self._overruns += 1
            self._ctl.waitPeriod(t_start)

    # --- helpers (call with the lock held) ----------------------------------------
    def _read_q(self) -> np.ndarray | None:
        q = np.asarray(self._rx.getActualQ(), dtype=np.float64)
        if q.shape != (kin.N_JOINTS,) or not np.all(np.isfinite(q)):
            return None
        return q

    def _event(self, level: str, message: str) -> None:
        self._last_message = message
        self._events.append(LoopEvent(self._clock(), level, message))

    def _set_state(self, state: DriverState, level: str, message: str) -> None:
        self._state = state
        self._event(level, message)

    def _safe_stop(self, state: DriverState, message: str) -> None:
        if self._state == DriverState.RUNNING:
            try:
                self._ctl.servoStop(self.config.stop_deceleration)
            except Exception as exc:  # noqa: BLE001 - report and keep the stop state
                message += f" (servoStop failed: {exc!r})"
        self._target = None
        self._v_cmd[:] = 0.0
        self._set_state(state, "error" if state in _LATCHED else "warn", message)

    def _anchor(self) -> None:
        """Re-anchor the interpolator at the measured position, forgetting old targets."""
        self._q_cmd = self._q_meas.copy()
        self._v_cmd = np.zeros(kin.N_JOINTS)
        self._target = None

    # --- one control period ---------------------------------------------------------
    def cycle(self) -> None:
        """Do one control period's work (the thread calls this at control_rate_hz)."""
        with self._lock:
            now = self._clock()
            self._cycles += 1
            if not (self._rx.isConnected() and self._ctl.isConnected()):
                if self._state != DriverState.DISCONNECTED:
                    self._safe_stop(DriverState.DISCONNECTED,
                                    "lost the RTDE connection to the controller; check the "
                                    "network and the robot, then call ~/enable")
                return
            q = self._read_q()
            if q is None:
                # Report once: the reading repeats every period (500 Hz) until fixed.
                if self._state != DriverState.DISCONNECTED:
                    self._safe_stop(DriverState.DISCONNECTED,
                                    "controller sent an invalid joint position (NaN, inf or not 6 "
                                    "values); check the robot, then call ~/enable")
                return
            self._q_meas = q
            self._qd_meas = np.asarray(self._rx.getActualQd(), dtype=np.float64)
            self._robot_mode = int(self._rx.getRobotMode())
            self._safety_mode = int(self._rx.getSafetyMode())
            self._safety_bits = int(self._rx.getSafetyStatusBits())
            if self._rx.isEmergencyStopped():
                if self._state != DriverState.EMERGENCY_STOP:
                    self._safe_stop(DriverState.EMERGENCY_STOP,
                                    "EMERGENCY STOP on the robot; release it and restart the arm "
                                    "on the pendant, then call ~/enable")
                return
            if self._rx.isProtectiveStopped():
                if self._state != DriverState.PROTECTIVE_STOP:
                    self._safe_stop(DriverState.PROTECTIVE_STOP,
                                    "PROTECTIVE STOP on the robot (safety mode "
                                    f"{SAFETY_MODES.get(self._safety_mode, self._safety_mode)}); "
                                    "clear it on the pendant, then call ~/enable")
                return
            self._ctl.kickWatchdog()
            if self._state != DriverState.RUNNING:
                return
            if now - self._watch_since > self.limits.watchdog_timeout:
                self._safe_stop(DriverState.WATCHDOG_STOP,
                                f"no fresh joint target for {now - self._watch_since:.3f} s "
                                f"(watchdog_timeout {self.limits.watchdog_timeout} s): stopped; "
                                "motion resumes with the next valid target")
                return
            goal = self._target if self._target is not None else self._q_cmd
            self._q_cmd, self._v_cmd = step_towards(self._q_cmd, self._v_cmd, goal,
                                                    self.config.period_s, self.limits)
            # speed/acceleration arguments are unused by servoJ on the controller.
            ok = self._ctl.servoJ(self._q_cmd.tolist(), 0.5, 0.5, self.config.period_s,
                                  self.config.lookahead_time, self.config.gain)
            if not ok:
                self._event("warn", "servoJ was not accepted by the controller")

    # --- commands from other threads ------------------------------------------------
    def enable(self) -> tuple[bool, str]:
        """Arm motion: re-anchor at the measured position and hold there until a target."""
        with self._lock:
            if self._state == DriverState.RUNNING:
                return True, "already enabled"
            if self._state == DriverState.TEACH:
                return False, "in teach mode: end teach mode first (~/teach_mode false)"
            if self._rx.isEmergencyStopped():
                return False, "emergency stop is active: release it and restart the arm first"
            if self._rx.isProtectiveStopped():
                return False, "protective stop is active: clear it on the pendant first"
            if not (self._rx.isConnected() and self._ctl.isConnected()):
                why = self._reconnect()
                if why:
                    return False, why
            q = self._read_q()
            if q is None:
                return False, "controller sent an invalid joint position"
            lim = self.limits.joint_limits
            outside = np.flatnonzero((q < lim[:, 0]) | (q > lim[:, 1]))
            if outside.size:
                names = ", ".join(f"{kin.JOINT_NAMES[i]}={q[i]:.3f}" for i in outside)
                return False, (f"arm is outside the configured joint limits ({names}); move it "
                               "back in teach mode before enabling")
            if self._state in _LATCHED:
                # After a stop the controller's servo script has ended; upload it again.
                if not self._ctl.reuploadScript():
                    return False, "could not restart the control script on the controller"
                self._ctl.setWatchdog(self.config.rtde_watchdog_min_frequency)
            self._q_meas = q
            self._anchor()
            self._watch_since = self._clock()
            self._set_state(DriverState.RUNNING, "info",
                            f"enabled: holding at measured position {np.round(q, 3).tolist()}")
            return True, "enabled"

    def _reconnect(self) -> str:
        """Reopen lost RTDE connections (lock held); '' on success, else why not.

        ur_rtde never reconnects by itself: after a cable or controller glitch
        isConnected() stays False until reconnect() is called. Only an
        explicit ~/enable does it, so nothing moves until the operator asks.
        """
        for name, handle in (("receive", self._rx), ("control", self._ctl)):
            if handle.isConnected():
                continue
            try:
                ok = handle.reconnect()
            except Exception as exc:  # noqa: BLE001 - ur_rtde raises RuntimeError on network errors
                ok, detail = False, f": {exc}"
            else:
                detail = ""
            if not ok or not handle.isConnected():
                return (f"no RTDE connection to the controller and reconnecting the {name} interface "
                        f"failed{detail}; check the network and that the robot is in Remote Control "
                        "mode, then call ~/enable again")
        self._event("info", "reconnected to the controller")
        return ""

    def disable(self) -> tuple[bool, str]:
        """Disarm: stop smoothly and ignore targets until enabled again."""
        with self._lock:
            if self._state in _LATCHED:
                return True, f"already stopped ({self._state.value})"
            if self._state == DriverState.TEACH:
                return False, "in teach mode: end teach mode first"
            if self._state == DriverState.RUNNING:
                self._ctl.servoStop(self.config.stop_deceleration)
            self._target = None
            self._set_state(DriverState.DISARMED, "info", "disabled")
            return True, "disabled"

    def set_teach_mode(self, on: bool) -> tuple[bool, str]:
        """Freedrive on (disarms first) or off (ends disarmed; enable to move again)."""
        with self._lock:
            if on:
                if self._state == DriverState.TEACH:
                    return True, "already in teach mode"
                if self._state in _LATCHED:
                    return False, f"robot is in {self._state.value}: clear it and enable first"
                if self._state == DriverState.RUNNING:
                    self._ctl.servoStop(self.config.stop_deceleration)
                self._target = None
                if not self._ctl.teachMode():
                    self._set_state(DriverState.DISARMED, "warn", "controller refused teach mode")
                    return False, "controller refused teach mode"
                self._set_state(DriverState.TEACH, "info", "teach mode on: move the arm by hand")
                return True, "teach mode on"
            if self._state != DriverState.TEACH:
                return True, "not in teach mode"
            self._ctl.endTeachMode()
            self._set_state(DriverState.DISARMED, "info", "teach mode off: disarmed, call ~/enable")
            return True, "teach mode off (disarmed)"

    def reject(self, reason: str) -> TargetCheck:
        """Count a target refused before it reached the loop (bad names, stale stamp)."""
        with self._lock:
            self._refused += 1
            self._event("warn", f"target refused: {reason}")
            return TargetCheck(False, None, False, reason)

    def submit_target(self, q_target) -> TargetCheck:
        """Check a new joint target (anything array-like, expected (6,) rad) and use it if valid.

        The max step is measured from the commanded position (where the arm
        is being sent now), or from the measured position when resuming.
        """
        with self._lock:
            if self._state not in (DriverState.RUNNING, DriverState.WATCHDOG_STOP):
                self._refused += 1
                hint = {DriverState.DISARMED: "driver is disarmed: call ~/enable",
                        DriverState.TEACH: "driver is in teach mode"}.get(
                    self._state, f"driver is in {self._state.value}: clear it, then call ~/enable")
                return TargetCheck(False, None, False, f"target ignored: {hint}")
            resuming = self._state == DriverState.WATCHDOG_STOP
            reference = self._q_meas if resuming else self._q_cmd
            verdict = check_target(q_target, reference, self.limits)
            if not verdict.accepted:
                self._refused += 1
                self._event("warn", f"target refused: {verdict.reason}")
                return verdict
            self._accepted += 1
            if verdict.clamped:
                self._clamped += 1
            if resuming:
                self._anchor()
                self._set_state(DriverState.RUNNING, "info", "fresh target after watchdog stop: resuming")
            self._target = verdict.q
            self._watch_since = self._clock()
            return verdict

    # --- reading ----------------------------------------------------------------------
    @property
    def state(self) -> DriverState:
        with self._lock:
            return self._state

    def status(self) -> LoopStatus:
        with self._lock:
            age = self._clock() - self._watch_since if self._target is not None else np.inf
            return LoopStatus(self._state, self._q_meas.copy(), self._qd_meas.copy(),
                              self._q_cmd.copy(), self._robot_mode, self._safety_mode,
                              self._safety_bits, float(age), self._cycles, self._overruns,
                              self._max_cycle, self._refused, self._clamped, self._accepted,
                              self._last_message)

    def pop_events(self) -> list[LoopEvent]:
        with self._lock:
            events = list(self._events)
            self._events.clear()
            return events


@dataclass
class GripperConfig:
    """Robotiq settings. speed/force: normalised caps in (0, 1]; a command's
    speed or force of 0 means 'use the cap'. raw_open/raw_closed: raw encoder
    positions read back at fully open / closed (the 2F-85 reads about 3 and
    230 after activation), used to normalise the measured position.
    poll_period_s: how often the position is read back."""

    speed: float = 0.5
    force: float = 0.3
    raw_open: int = 3
    raw_closed: int = 230
    poll_period_s: float = 0.05
    activate_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("speed", "force"):
            val = getattr(self, name)
            if not (np.isfinite(val) and 0.0 < val <= 1.0):
                raise ValueError(f"GripperConfig.{name} must be in (0, 1], got {val!r}")
        if not (0 <= self.raw_open < self.raw_closed <= 255):
            raise ValueError(f"GripperConfig.raw_open/raw_closed must satisfy 0 <= open < closed <= 255, "
                             f"got {self.raw_open!r}/{self.raw_closed!r}")
        if not (0.005 <= self.poll_period_s <= 1.0):
            raise ValueError(f"GripperConfig.poll_period_s must be in [0.005, 1] s, got "
                             f"{self.poll_period_s!r}")


class GripperWorker:
    """Sends the newest gripper command and polls the position in its own thread.

    Socket I/O to the gripper blocks for milliseconds, so it never runs in a
    ROS callback or in the servo loop.
    """

    def __init__(self, gripper: GripperInterface, config: GripperConfig) -> None:
        self._gripper = gripper
        self.config = config
        self._lock = threading.Lock()
        self._pending: tuple[int, int, int] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._position = float("nan")
        self._error = ""
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._gripper.activate(self.config.activate_timeout_s)
        self._thread = threading.Thread(target=self._run, name="gripper_worker", daemon=True)
        self._thread.start()

    def shutdown(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def command(self, position: float, speed: float = 0.0, force: float = 0.0) -> str:
        """Queue a normalised command (0 open .. 1 closed); returns '' or why it was refused."""
        vals = np.array([position, speed, force], dtype=np.float64)
        if not np.all(np.isfinite(vals)):
            return f"gripper command contains NaN or inf: {vals.tolist()}"
        pos = float(np.clip(position, 0.0, 1.0))
        spd = self.config.speed if speed <= 0 else min(float(speed), self.config.speed)
        frc = self.config.force if force <= 0 else min(float(force), self.config.force)
        raw = (round(pos * 255), round(spd * 255), round(frc * 255))
        with self._lock:
            self._pending = raw
        self._wake.set()
        return "" if pos == position else f"gripper position {position} clamped to {pos}"

    @property
    def position(self) -> float:
        """Measured opening, normalised 0 open .. 1 closed (NaN before the first read)."""
        with self._lock:
            return self._position

    @property
    def error(self) -> str:
        with self._lock:
            return self._error

    def _run(self) -> None:
        span = self.config.raw_closed - self.config.raw_open
        while not self._stop.is_set():
            self._wake.wait(self.config.poll_period_s)
            self._wake.clear()
            with self._lock:
                pending, self._pending = self._pending, None
            try:
                if pending is not None:
                    self._gripper.move(*pending)
                raw = self._gripper.get_current_position()
                pos = float(np.clip((raw - self.config.raw_open) / span, 0.0, 1.0))
                with self._lock:
                    self._position, self._error = pos, ""
            except Exception as exc:  # noqa: BLE001 - reported in diagnostics, retried next poll
                with self._lock:
                    self._error = f"gripper: {exc}"
