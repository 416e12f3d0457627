"""The hardware boundary of the UR5e driver: what it needs from ur_rtde and the gripper.

The Protocols below name exactly the ur_rtde 1.6 Python methods the driver
calls (checked against the installed ``rtde_control`` / ``rtde_receive``
modules), so the real ur_rtde objects satisfy them as they are and a test
stand-in (:mod:`atk_bringup.driver.ur_stand_in`) replaces them at exactly this
boundary. ``rtde_control`` / ``rtde_receive`` are imported only when a real
connection is made.

The Robotiq 2F gripper is driven through the Robotiq URCap's socket server on
the controller (TCP port 63352, ASCII ``SET``/``GET`` commands); our own
small client is :class:`RobotiqSocketGripper`.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

# Controller robot modes (RTDE "robot_mode") and safety modes ("safety_mode"),
# from the UR RTDE guide; used only to word diagnostics.
ROBOT_MODES = {
    -1: "NO_CONTROLLER", 0: "DISCONNECTED", 1: "CONFIRM_SAFETY", 2: "BOOTING",
    3: "POWER_OFF", 4: "POWER_ON", 5: "IDLE", 6: "BACKDRIVE", 7: "RUNNING",
    8: "UPDATING_FIRMWARE",
}
SAFETY_MODES = {
    1: "NORMAL", 2: "REDUCED", 3: "PROTECTIVE_STOP", 4: "RECOVERY",
    5: "SAFEGUARD_STOP", 6: "SYSTEM_EMERGENCY_STOP", 7: "ROBOT_EMERGENCY_STOP",
    8: "VIOLATION", 9: "FAULT", 10: "VALIDATE_JOINT_ID", 11: "UNDEFINED_SAFETY_MODE",
    12: "AUTOMATIC_MODE_SAFEGUARD_STOP", 13: "SYSTEM_THREE_POSITION_ENABLING_STOP",
}


@runtime_checkable
class ReceiveInterface(Protocol):
    """Subset of ``rtde_receive.RTDEReceiveInterface`` the driver reads."""

    def getActualQ(self) -> list[float]: ...  # (6,) rad
    def getActualQd(self) -> list[float]: ...  # (6,) rad/s
    def getRobotMode(self) -> int: ...
    def getSafetyMode(self) -> int: ...
    def getSafetyStatusBits(self) -> int: ...
    def isProtectiveStopped(self) -> bool: ...
    def isEmergencyStopped(self) -> bool: ...
    def isConnected(self) -> bool: ...
    def reconnect(self) -> bool: ...
    def disconnect(self) -> None: ...


@runtime_checkable
class ControlInterface(Protocol):
    """Subset of ``rtde_control.RTDEControlInterface`` the driver commands."""

    def servoJ(self, q: list[float], speed: float, acceleration: float, time: float,
               lookahead_time: float, gain: float) -> bool: ...
    def servoStop(self, a: float = 10.0) -> bool: ...
    def initPeriod(self) -> Any: ...
    def waitPeriod(self, t_cycle_start: Any) -> None: ...
    def setWatchdog(self, min_frequency: float = 10.0) -> bool: ...
    def kickWatchdog(self) -> bool: ...
    def teachMode(self) -> bool: ...
    def endTeachMode(self) -> bool: ...
    def stopScript(self) -> None: ...
    def reuploadScript(self) -> bool: ...
    def isConnected(self) -> bool: ...
    def reconnect(self) -> bool: ...
    def disconnect(self) -> None: ...


@runtime_checkable
class GripperInterface(Protocol):
    """A parallel gripper with raw positions 0 (open) .. 255 (closed)."""

    def activate(self, timeout_s: float) -> None: ...
    def move(self, position: int, speed: int, force: int) -> None: ...
    def get_current_position(self) -> int: ...
    def is_active(self) -> bool: ...
    def disconnect(self) -> None: ...


@dataclass
class URBackend:
    """The three hardware handles the driver uses."""

    receive: ReceiveInterface
    control: ControlInterface
    gripper: GripperInterface | None


class HardwareError(RuntimeError):
    """The robot or gripper could not be reached or refused a command."""


def connect_ur(robot_ip: str, control_rate_hz: float) -> tuple[ReceiveInterface, ControlInterface]:
    """Open RTDE receive and control connections to the controller at ``robot_ip``.

    ``control_rate_hz``: 500 for e-Series, 125 for CB3. Raises HardwareError
    with what to check when the controller cannot be reached.
    """
    try:
        import rtde_control  # noqa: PLC0415 - hardware only, imported lazily
        import rtde_receive  # noqa: PLC0415
    except ImportError as exc:
        raise HardwareError(f"ur_rtde is not installed ({exc}); pip install ur-rtde") from exc
    try:
        receive = rtde_receive.RTDEReceiveInterface(robot_ip, control_rate_hz)
        control = rtde_control.RTDEControlInterface(robot_ip, control_rate_hz)
    except RuntimeError as exc:
        raise HardwareError(
            f"could not connect to the UR controller at {robot_ip!r}: {exc}. Check the network, "
            "that the robot is powered on with brakes released, in Remote Control mode, and "
            "that no other program holds the RTDE connection") from exc
    return receive, control


class RobotiqSocketGripper:
    """Robotiq 2F-85/140 through the Robotiq URCap socket server (port 63352).

    Protocol: one ASCII line per request. ``SET VAR value [VAR value ...]``
    is answered with ``ack``; ``GET VAR`` with ``VAR value``. Variables used:
    ACT (activate), GTO (go to), POS (position request / actual, 0 open ..
    255 closed), SPE (speed 0..255), FOR (force 0..255), STA (3 = active),
    FLT (fault code).
    """

    ACTIVE_STATUS = 3

    def __init__(self, host: str, port: int = 63352, timeout_s: float = 2.0) -> None:
        self._lock = threading.Lock()
        self._timeout_s = timeout_s
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise HardwareError(
                f"could not reach the Robotiq URCap socket at {host}:{port}: {exc}. "
                "Is the Robotiq Grippers URCap installed and the gripper connected?") from exc

    def _request(self, line: str) -> str:
        with self._lock:
            try:
                self._sock.sendall((line + "\n").encode("ascii"))
                data = b""
                while not data.endswith(b"\n"):
                    chunk = self._sock.recv(1024)
                    if not chunk:
                        raise HardwareError("Robotiq URCap socket closed the connection")
                    data += chunk
            except socket.timeout as exc:
                raise HardwareError(f"no reply from the gripper within {self._timeout_s} s to "
                                    f"{line!r}") from exc
        return data.decode("ascii", errors="replace").strip()

    def _set(self, **values: int) -> None:
        reply = self._request("SET " + " ".join(f"{k} {int(v)}" for k, v in values.items()))
        if reply != "ack":
            raise HardwareError(f"gripper refused SET {values}: reply {reply!r}")

    def _get(self, var: str) -> int:
        reply = self._request(f"GET {var}")
        parts = reply.split()
        if len(parts) != 2 or parts[0] != var:
            raise HardwareError(f"unexpected gripper reply to GET {var}: {reply!r}")
        try:
            return int(parts[1])
        except ValueError as exc:
            raise HardwareError(f"unexpected gripper reply to GET {var}: {reply!r}") from exc

    def is_active(self) -> bool:
        return self._get("STA") == self.ACTIVE_STATUS

    def activate(self, timeout_s: float = 5.0) -> None:
        """Activate (the gripper opens and closes fully once); waits at most timeout_s."""
        if self.is_active():
            return
        self._set(ACT=0)
        self._set(ACT=1)
        deadline = time.monotonic() + timeout_s
        while not self.is_active():
            if time.monotonic() > deadline:
                raise HardwareError(f"gripper activation did not finish within {timeout_s} s "
                                    f"(fault code {self._get('FLT')})")
            time.sleep(0.05)  # polling the gripper's status register, not synchronisation

    def move(self, position: int, speed: int, force: int) -> None:
        """Request raw position/speed/force, each clipped to 0..255."""
        clip = lambda v: max(0, min(255, int(v)))  # noqa: E731
        self._set(POS=clip(position), SPE=clip(speed), FOR=clip(force), GTO=1)

    def get_current_position(self) -> int:
        return self._get("POS")

    def disconnect(self) -> None:
        with self._lock:
            self._sock.close()
