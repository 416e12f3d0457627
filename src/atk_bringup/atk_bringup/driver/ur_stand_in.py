"""A stand-in for the UR controller and the Robotiq gripper, for TESTS ONLY.

It implements :class:`~atk_bringup.driver.ur_interface.ReceiveInterface`,
:class:`~atk_bringup.driver.ur_interface.ControlInterface` and
:class:`~atk_bringup.driver.ur_interface.GripperInterface` with a crude model (the
joints follow servoJ commands with a first-order lag) and records every call,
so tests can check what the driver sent across the hardware boundary. It
moves nothing; it is not a simulator (see the MuJoCo sim node for that).
"""
from __future__ import annotations

import datetime
import threading
import time

import numpy as np

from atk_perception import kinematics as kin


class StandInRobot:
    """Fake UR controller: receive and control interface in one object.

    q0: (6,) rad initial joint position. follow: fraction of the remaining
    error to a servoJ target the joints cover per servoJ call (1 = perfect
    tracking). realtime: initPeriod/waitPeriod really wait for the period
    (for the threaded loop); False makes waitPeriod return at once.
    """

    def __init__(self, q0: np.ndarray = kin.HOME_Q, follow: float = 0.5, realtime: bool = True) -> None:
        self.lock = threading.Lock()
        self.q = np.array(q0, dtype=np.float64)
        self.qd = np.zeros(kin.N_JOINTS)
        self.follow = follow
        self.realtime = realtime
        self.period_s = 0.002
        self.protective_stop = False
        self.emergency_stop = False
        self.connected = True
        # Like ur_rtde: once the connection is lost, isConnected() stays False
        # until reconnect() succeeds, which needs the controller reachable.
        self.reachable = True
        self.reconnect_calls = 0
        # A controller reporting NaN joint positions (a sensor or firmware fault).
        self.joint_fault = False
        self.teach = False
        self.servo_active = False
        self.servoj_calls: list[tuple[float, np.ndarray, float, float, float]] = []
        self.servo_stops: list[float] = []
        self.watchdog_min_frequency: float | None = None
        self.watchdog_kicks = 0
        self.servoj_event = threading.Event()
        self.stop_event = threading.Event()

    # --- test controls -------------------------------------------------------
    def trigger_protective_stop(self) -> None:
        with self.lock:
            self.protective_stop = True
            self.servo_active = False

    def clear_protective_stop(self) -> None:
        with self.lock:
            self.protective_stop = False

    def trigger_emergency_stop(self) -> None:
        with self.lock:
            self.emergency_stop = True
            self.servo_active = False

    def drop_connection(self, reachable: bool = False) -> None:
        """The network or the controller goes away; ``reachable`` says whether a
        reconnect() would succeed now."""
        with self.lock:
            self.connected = False
            self.reachable = reachable
            self.servo_active = False

    def move_by_hand(self, q: np.ndarray) -> None:
        """Freedrive: a person moves the arm (only in teach mode, as on the robot)."""
        with self.lock:
            if not self.teach:
                raise RuntimeError("the stand-in arm can only be moved by hand in teach mode")
            self.q = np.array(q, dtype=np.float64)

    # --- rtde_receive ---------------------------------------------------------
    def getActualQ(self) -> list[float]:
        with self.lock:
            if self.joint_fault:
                return [float("nan")] * kin.N_JOINTS
            return self.q.tolist()

    def getActualQd(self) -> list[float]:
        with self.lock:
            return self.qd.tolist()

    def getRobotMode(self) -> int:
        return 7  # RUNNING

    def getSafetyMode(self) -> int:
        with self.lock:
            if self.emergency_stop:
                return 7
            return 3 if self.protective_stop else 1

    def getSafetyStatusBits(self) -> int:
        with self.lock:
            return (1 << 0) | (int(self.protective_stop) << 2) | (int(self.emergency_stop) << 7)

    def isProtectiveStopped(self) -> bool:
        with self.lock:
            return self.protective_stop

    def isEmergencyStopped(self) -> bool:
        with self.lock:
            return self.emergency_stop

    def isConnected(self) -> bool:
        with self.lock:
            return self.connected

    def disconnect(self) -> None:
        with self.lock:
            self.connected = False

    def reconnect(self) -> bool:
        """ur_rtde raises RuntimeError when the controller cannot be reached."""
        with self.lock:
            self.reconnect_calls += 1
            if not self.reachable:
                raise RuntimeError("Connection refused (stand-in controller unreachable)")
            self.connected = True
            return True

    # --- rtde_control ---------------------------------------------------------
    def servoJ(self, q, speed, acceleration, time_s, lookahead_time, gain) -> bool:
        target = np.asarray(q, dtype=np.float64)
        with self.lock:
            self.servoj_calls.append((time.monotonic(), target.copy(), time_s, lookahead_time, gain))
            if self.protective_stop or self.emergency_stop or self.teach:
                return False
            self.servo_active = True
            new_q = self.q + self.follow * (target - self.q)
            self.qd = (new_q - self.q) / max(time_s, 1e-6)
            self.q = new_q
        self.servoj_event.set()
        return True

    def servoStop(self, a: float = 10.0) -> bool:
        with self.lock:
            self.servo_stops.append(time.monotonic())
            self.servo_active = False
            self.qd[:] = 0.0
        self.stop_event.set()
        return True

    def initPeriod(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=time.monotonic())

    def waitPeriod(self, t_cycle_start: datetime.timedelta) -> None:
        if not self.realtime:
            return
        remaining = t_cycle_start.total_seconds() + self.period_s - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def setWatchdog(self, min_frequency: float = 10.0) -> bool:
        self.watchdog_min_frequency = min_frequency
        return True

    def kickWatchdog(self) -> bool:
        self.watchdog_kicks += 1
        return True

    def teachMode(self) -> bool:
        with self.lock:
            if self.protective_stop or self.emergency_stop:
                return False
            self.teach = True
            self.servo_active = False
        return True

    def endTeachMode(self) -> bool:
        with self.lock:
            self.teach = False
        return True

    def stopScript(self) -> None:
        with self.lock:
            self.servo_active = False

    def reuploadScript(self) -> bool:
        return True


class StandInGripper:
    """Fake Robotiq gripper: raw position jumps to the request (0 open .. 255 closed)."""

    def __init__(self) -> None:
        self.active = False
        self.position = 0
        self.moves: list[tuple[int, int, int]] = []
        self.moved = threading.Event()

    def activate(self, timeout_s: float = 5.0) -> None:
        self.active = True

    def move(self, position: int, speed: int, force: int) -> None:
        if not self.active:
            raise RuntimeError("stand-in gripper not activated")
        self.moves.append((int(position), int(speed), int(force)))
        self.position = int(position)
        self.moved.set()

    def get_current_position(self) -> int:
        return self.position

    def is_active(self) -> bool:
        return self.active

    def disconnect(self) -> None:
        self.active = False
