"""UR5e + Robotiq 2F driver node (``ur_driver_node``, node name ``ur_driver``).

Subscribes ``joint_target`` (sensor_msgs/JointState, the 6 UR joints by name;
an empty name list means the 6 positions are in the standard joint order) and
``gripper_command`` (atk_msgs/GripperCommand). Publishes ``joint_states``
(sensor_msgs/JointState: the 6 UR joints, rad, then ``gripper``, 0 open .. 1
closed) and ``diagnostics`` (diagnostic_msgs/DiagnosticArray). Services
``~/enable`` and ``~/teach_mode`` (std_srvs/SetBool).

The arm starts DISARMED: targets are ignored until ``~/enable`` is called
with true. A dedicated thread streams servoJ at control_rate_hz (500 Hz
e-Series, 125 Hz CB3), interpolating towards the newest accepted target
within the velocity and acceleration limits; every target passes the safety
rules (docs/robot.md): a joint named twice, NaN/inf and stale stamps
refused, max step from the commanded position and TCP workspace box
refused, joint limits clamped, watchdog stop when targets stop arriving,
protective/emergency stops and lost connections latched until ``~/enable``
(which reconnects). Gripper commands are
carried out whenever the gripper is active, also in teach mode.

Library: atk_bringup.driver.servo_loop, atk_bringup.driver.safety, atk_perception.kinematics;
hardware boundary: atk_bringup.driver.ur_interface; parameters: atk_bringup.driver.driver_params.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy, \
    qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool

from atk_bringup.driver.driver_params import COMMAND, NODE_NAME, PARAMS
from atk_bringup.driver.safety import SafetyLimits, check_target_age
from atk_bringup.driver.servo_loop import DriverState, GripperConfig, GripperWorker, ServoConfig, ServoLoop
from atk_bringup.driver.ur_interface import (ROBOT_MODES, SAFETY_MODES, HardwareError, RobotiqSocketGripper, URBackend,
                                      connect_ur)
from atk_msgs.msg import GripperCommand
from atk_perception import kinematics as kin
from atk_perception.node_params import ParameterError, declare, log_effective
from atk_perception.node_runner import run_node, wants_help

GRIPPER_JOINT = kin.GRIPPER_JOINT


def build_configs(params: dict[str, Any]):
    """Library configs from validated parameters; raises ParameterError naming the field."""
    tcp = np.eye(4)
    tcp[2, 3] = float(params["tcp_offset_z"])
    try:
        limits = SafetyLimits(
            joint_limits=np.stack([params["joint_limits_lower"], params["joint_limits_upper"]], axis=1),
            max_velocity=params["max_velocity"], max_acceleration=params["max_acceleration"],
            max_target_step=float(params["max_target_step"]),
            workspace_min=params["workspace_min"], workspace_max=params["workspace_max"],
            tcp_offset=tcp, watchdog_timeout=float(params["watchdog_timeout"]),
            max_target_age=float(params["max_target_age"]))
        servo = ServoConfig(control_rate_hz=float(params["control_rate_hz"]),
                            lookahead_time=float(params["lookahead_time"]), gain=float(params["gain"]),
                            stop_deceleration=float(params["stop_deceleration"]),
                            rtde_watchdog_min_frequency=float(params["rtde_watchdog_min_frequency"]))
        gripper = GripperConfig(speed=float(params["gripper_speed"]), force=float(params["gripper_force"]),
                                raw_open=int(params["gripper_raw_open"]),
                                raw_closed=int(params["gripper_raw_closed"]))
    except ValueError as exc:
        raise ParameterError(str(exc)) from None
    return limits, servo, gripper


def target_from_joint_state(names: Sequence[str], positions: Sequence[float]) -> tuple[Optional[np.ndarray], str]:
    """(6,) UR joint target in JOINT_NAMES order from a JointState's names/positions, or (None, why)."""
    if not names:
        if len(positions) != kin.N_JOINTS:
            return None, f"joint_target without names must have 6 positions, got {len(positions)}"
        return np.asarray(positions, dtype=np.float64), ""
    if len(names) != len(positions):
        return None, f"joint_target has {len(names)} names but {len(positions)} positions"
    twice = sorted({n for n in names if list(names).count(n) > 1})
    if twice:
        # Taking either value would be a guess about what the sender meant.
        return None, f"joint_target names joints more than once: {twice}"
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in kin.JOINT_NAMES if n not in index]
    if missing:
        return None, f"joint_target lacks joints {missing} (has {list(names)})"
    return np.array([positions[index[n]] for n in kin.JOINT_NAMES], dtype=np.float64), ""


# Commands: reliable so a target is never silently lost, depth 1 because
# only the newest target is worth executing (docs/interfaces.md).
COMMAND_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                         reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)
# Diagnostics: reliable with a short history so a monitor sees every transition.
DIAG_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                      reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)
#: diagnostics level of each driver state
LEVELS = {DriverState.RUNNING: DiagnosticStatus.OK, DriverState.DISARMED: DiagnosticStatus.OK,
          DriverState.TEACH: DiagnosticStatus.OK, DriverState.WATCHDOG_STOP: DiagnosticStatus.WARN,
          DriverState.PROTECTIVE_STOP: DiagnosticStatus.ERROR,
          DriverState.EMERGENCY_STOP: DiagnosticStatus.ERROR,
          DriverState.DISCONNECTED: DiagnosticStatus.ERROR}


class DriverNode(Node):
    """backend: inject the hardware boundary (tests: ur_stand_in); None connects to robot_ip."""

    def __init__(self, backend: Optional[URBackend] = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._params: dict[str, Any] = declare(self, PARAMS)
        limits, servo_cfg, gripper_cfg = build_configs(self._params)
        rate = self._params["control_rate_hz"]
        if rate not in (125.0, 500.0):
            self.get_logger().warning(f"control_rate_hz={rate!r} is neither 500 (e-Series) nor 125 (CB3)")
        log_effective(self, self._params)
        self._ip = self._params["robot_ip"]
        if backend is None:
            receive, control = connect_ur(self._ip, rate)
            gripper = None
            if self._params["gripper_enabled"]:
                gripper = RobotiqSocketGripper(self._ip, int(self._params["gripper_port"]))
            backend = URBackend(receive, control, gripper)
        self._backend = backend
        self._loop = ServoLoop(backend.receive, backend.control, servo_cfg, limits)
        self._loop.start()
        self._gripper: Optional[GripperWorker] = None
        self._gripper_fault = "" if self._params["gripper_enabled"] else "disabled by parameter"
        self._gripper_cmd = 0.0
        if self._params["gripper_enabled"] and backend.gripper is not None:
            try:
                worker = GripperWorker(backend.gripper, gripper_cfg)
                worker.start()
                self._gripper = worker
            except Exception as exc:  # the arm stays usable; the fault is in diagnostics
                self._gripper_fault = f"gripper activation failed: {exc}"
                self.get_logger().error(self._gripper_fault)
        elif self._params["gripper_enabled"]:
            self._gripper_fault = "no gripper interface"
        self._last_state = self._loop.state

        self._pub_js = self.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self._pub_diag = self.create_publisher(DiagnosticArray, "diagnostics", DIAG_QOS)
        self.create_subscription(JointState, "joint_target", self._on_target, COMMAND_QOS)
        self.create_subscription(GripperCommand, "gripper_command", self._on_gripper, COMMAND_QOS)
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_service(SetBool, "~/teach_mode", self._on_teach)
        # The loop runs in its own thread; these timers only copy its
        # snapshot into messages, so the executor never waits on hardware.
        self.create_timer(1.0 / self._params["joint_state_rate_hz"], self._publish_joint_state)
        self.create_timer(1.0 / self._params["diagnostics_rate_hz"], self._publish_diagnostics)
        self.get_logger().info(f"connected to {self._ip}; DISARMED: call ~/enable to arm motion")

    @property
    def servo_loop(self) -> ServoLoop:
        return self._loop

    # --- inputs --------------------------------------------------------------
    def _on_target(self, msg: JointState) -> None:
        q, why = target_from_joint_state(list(msg.name), list(msg.position))
        if q is None:
            self._loop.reject(why)
            self.get_logger().warning(f"joint_target refused: {why}", throttle_duration_sec=1.0)
            return
        age = (self.get_clock().now() - Time.from_msg(msg.header.stamp)).nanoseconds * 1e-9
        why = check_target_age(age, self._loop.limits)
        if why:
            self._loop.reject(why)
            self.get_logger().warning(f"joint_target refused: {why}", throttle_duration_sec=1.0)
            return
        verdict = self._loop.submit_target(q)
        if not verdict.accepted or verdict.clamped:
            self.get_logger().warning(verdict.reason, throttle_duration_sec=1.0)

    def _on_gripper(self, msg: GripperCommand) -> None:
        if self._gripper is None:
            self.get_logger().warning(f"gripper_command ignored: {self._gripper_fault}",
                                      throttle_duration_sec=2.0)
            return
        why = self._gripper.command(msg.position, msg.speed, msg.force)
        if why:
            self.get_logger().warning(why, throttle_duration_sec=1.0)
        if np.isfinite(msg.position):
            self._gripper_cmd = float(np.clip(msg.position, 0.0, 1.0))

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        ok, message = self._loop.enable() if request.data else self._loop.disable()
        response.success, response.message = ok, message
        self._log_result(ok, f"~/enable {request.data}: {message}")
        self._publish_diagnostics()
        return response

    def _on_teach(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        ok, message = self._loop.set_teach_mode(bool(request.data))
        response.success, response.message = ok, message
        self._log_result(ok, f"~/teach_mode {request.data}: {message}")
        self._publish_diagnostics()
        return response

    def _log_result(self, ok: bool, text: str) -> None:
        if ok:
            self.get_logger().info(text)
        else:
            self.get_logger().error(text)

    # --- outputs ---------------------------------------------------------------
    def _gripper_position(self) -> float:
        """Measured (0 open .. 1 closed); the last command while no reading exists."""
        if self._gripper is not None and np.isfinite(self._gripper.position):
            return self._gripper.position
        return self._gripper_cmd

    def _publish_joint_state(self) -> None:
        st = self._loop.status()
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.name = [*kin.JOINT_NAMES, GRIPPER_JOINT]
        msg.position = [*(float(v) for v in st.q_measured), self._gripper_position()]
        msg.velocity = [*(float(v) for v in st.qd_measured), 0.0]
        self._pub_js.publish(msg)
        self._drain_events()
        if st.state != self._last_state:
            self._last_state = st.state
            self._publish_diagnostics()

    def _drain_events(self) -> None:
        log = self.get_logger()
        # rclpy ties a severity to each call site, hence one call per level.
        for ev in self._loop.pop_events():
            if ev.level == "info":
                log.info(ev.message)
            elif ev.level == "warn":
                log.warning(ev.message)
            else:
                log.error(ev.message)

    def _publish_diagnostics(self) -> None:
        st = self._loop.status()
        arm = DiagnosticStatus(name="ur_driver: arm", hardware_id=str(self._ip))
        arm.level = LEVELS[st.state]
        if arm.level == DiagnosticStatus.OK and st.overruns:
            arm.level = DiagnosticStatus.WARN
        arm.message = f"{st.state.value}: {st.last_message}"
        values = {
            "state": st.state.value,
            "robot_mode": ROBOT_MODES.get(st.robot_mode, str(st.robot_mode)),
            "safety_mode": SAFETY_MODES.get(st.safety_mode, str(st.safety_mode)),
            "safety_status_bits": hex(st.safety_status_bits),
            "target_age_s": f"{st.target_age_s:.3f}",
            "cycles": str(st.cycles),
            "cycle_overruns": str(st.overruns),
            "max_cycle_ms": f"{st.max_cycle_s * 1e3:.2f}",
            "refused_targets": str(st.refused_targets),
            "clamped_targets": str(st.clamped_targets),
            "accepted_targets": str(st.accepted_targets),
        }
        arm.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        grip = DiagnosticStatus(name="ur_driver: gripper", hardware_id=str(self._ip))
        error = self._gripper.error if self._gripper is not None else self._gripper_fault
        if self._gripper is None and not self._params["gripper_enabled"]:
            grip.level, grip.message = DiagnosticStatus.OK, "disabled by parameter"
        elif error:
            grip.level, grip.message = DiagnosticStatus.ERROR, error
        else:
            grip.level, grip.message = DiagnosticStatus.OK, "active"
        grip.values = [KeyValue(key="position", value=f"{self._gripper_position():.3f}")]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [arm, grip]
        self._pub_diag.publish(msg)

    def destroy_node(self) -> None:
        try:
            self._loop.shutdown(timeout_s=2.0)
        finally:
            if self._gripper is not None:
                self._gripper.shutdown()
            for handle in (self._backend.control, self._backend.receive, self._backend.gripper):
                if handle is not None:
                    try:
                        handle.disconnect()
                    except Exception as exc:  # noqa: BLE001 - best effort on the way out
                        self.get_logger().warning(f"disconnect failed: {exc}")
            super().destroy_node()



def main(argv: Optional[Sequence[str]] = None) -> int:
    if not wants_help(list(sys.argv if argv is None else argv)):
        # The 500 Hz servo thread shares the GIL with the executor threads; with
        # Python's default 5 ms switch interval it was seen running ~10 of 250
        # cycles per second beside a busy executor. 0.5 ms lets it in on time.
        sys.setswitchinterval(0.0005)
    return run_node(NODE_NAME, argv, DriverNode, print_help=COMMAND.print_help,
                    startup_errors=(ParameterError, HardwareError), threads=1)


if __name__ == "__main__":
    sys.exit(main())
