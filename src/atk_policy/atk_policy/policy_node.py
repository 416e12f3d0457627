"""Policy node (``policy_node``, node name ``policy``): keypoints -> joint targets.

Subscribes ``keypoints`` (atk_msgs/KeypointArray) and ``joint_states``
(sensor_msgs/JointState); publishes ``joint_target`` (sensor_msgs/JointState,
the 6 UR joints, header.stamp = the source image stamp of the keypoints it
was computed from), ``gripper_command`` (atk_msgs/GripperCommand, same
stamp) and ``policy/status`` (atk_msgs/PolicyStatus, at status_rate_hz,
also while holding).

Before each action the input gate (:mod:`atk_policy.gating`) decides; in any
state but RUNNING the node publishes nothing on joint_target or
gripper_command (the driver then keeps the arm where it is) and the status
says why. When input is good again it resets the policy and resumes.

``trigger`` (parameter): ``timer`` (default) acts at ``control_rate_hz`` on the
newest input, the fixed control period the policy was trained with (the
action is the target for the next control step, so acting faster than that
rate would move the arm faster than in the demonstrations); ``keypoints``
acts as soon as each keypoint array arrives, for the lowest latency (the
action rate is then the tracker's frame rate: use it when the model was
trained at that rate, and for the latency benchmark).

Library: atk_policy.artifact (model), atk_policy.gating (holding rules).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np

from atk_perception import kinematics as kin
from atk_perception.node_params import ParameterError, ParamSpec, format_help
from atk_perception.node_runner import run_node
from atk_policy.gating import GateConfig, GateDecision, GateState, InputGate, KeypointInput

UR_JOINTS = kin.JOINT_NAMES
GRIPPER_JOINT = kin.GRIPPER_JOINT
TRIGGERS = ("timer", "keypoints")


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model_dir", "", "Folder of the trained policy (model.json + policy.safetensors). Empty: the node "
              "reports FAULT until restarted with a model."),
    ParamSpec("trigger", "timer", "timer: act at control_rate_hz on the newest input (the trained control rate); "
              "keypoints: act on each new keypoint array at once (lowest latency).", choices=TRIGGERS),
    ParamSpec("control_rate_hz", 10.0, "Control rate of trigger=timer (Hz).", min=0.5, max=100.0),
    ParamSpec("status_rate_hz", 10.0, "Rate of policy/status (Hz), also while holding.", min=0.5, max=100.0),
    ParamSpec("keypoint_timeout_s", 0.25, "Hold when the newest keypoints' source image stamp is older than this "
              "(s).", min=0.001, max=10.0, runtime=True),
    ParamSpec("joint_state_timeout_s", 0.25, "Hold when the newest joint state is older than this (s).",
              min=0.001, max=10.0, runtime=True),
    ParamSpec("confidence_threshold", 0.5, "A keypoint below this confidence (or not visible) counts as low.",
              min=0.0, max=1.0, runtime=True),
    ParamSpec("max_low_confidence", 2, "Hold when more keypoints than this are low ...", min=0, max=1000,
              runtime=True),
    ParamSpec("max_low_confidence_fraction", 0.5, "... and more than this fraction of them (0.5: a majority, the "
              "line at which the tracker calls a frame bad) ...", min=0.0, max=1.0, runtime=True),
    ParamSpec("low_confidence_grace_s", 2.0, "... for longer than this (s): the arm covering keypoints while it "
              "grasps or places must not freeze it there.", min=0.0, max=60.0, runtime=True),
    ParamSpec("torch_threads", 1, "Threads torch may use for inference. One sample through a small network gains "
              "nothing from more, and on a small machine the extra threads spin and take CPU from the tracker "
              "(benchmarks/bench_latency.py, 2 cores: p99 21 ms with 1, 44-52 ms with torch's default).",
              min=1, max=64),
    ParamSpec("gripper_speed", 0.5, "Speed sent with each gripper command, 0..1.", min=0.0, max=1.0, runtime=True),
    ParamSpec("gripper_force", 0.5, "Force sent with each gripper command, 0..1.", min=0.0, max=1.0, runtime=True),
)


def print_help() -> None:
    print(format_help("policy_node", __doc__.strip(), PARAMS,
                      "Parameters marked 'changeable at run time' can be set while the node runs (ros2 param "
                      "set /policy NAME VALUE); the others are read-only after start.\n"
                      "Parameter file: --ros-args --params-file policy.yaml (atk_bringup/config)."))


def proprio_from_joint_state(names: Sequence[str], positions: Sequence[float]) -> tuple[Optional[np.ndarray], str]:
    """(7,) = 6 UR joint positions (rad) + gripper (0..1), or (None, why)."""
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in (*UR_JOINTS, GRIPPER_JOINT) if n not in index]
    if missing:
        return None, f"joint_states lacks joints {missing} (has {list(names)})"
    if len(positions) != len(names):
        return None, f"joint_states has {len(names)} names but {len(positions)} positions"
    return np.array([positions[index[n]] for n in (*UR_JOINTS, GRIPPER_JOINT)], dtype=np.float64), ""


def check_action(action: Any) -> tuple[Optional[np.ndarray], str]:
    """(7,) finite action, or (None, why)."""
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (7,):
        return None, f"model returned an action of shape {np.shape(action)}, expected (7,)"
    if not np.all(np.isfinite(a)):
        return None, f"model returned a non-finite action {a.tolist()}"
    return a, ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_node("policy", argv, lambda: _define_node()(), print_help=print_help,
                    startup_errors=(ParameterError,), threads=1)


# The Node subclass is defined on import of rclpy only (see _define_node), so
# that `policy_node --help` and the ROS-free helpers above import without ROS.
def _define_node() -> type:
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.node import Node
    from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy, \
        qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    from atk_msgs.msg import GripperCommand, KeypointArray, PolicyStatus
    from atk_perception.node_params import declare, log_effective

    # Commands: reliable so a target is never silently lost on the way to the
    # driver, depth 1 because only the newest target is worth executing.
    command_qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                             reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)
    # Status: reliable, a short history so a slow operator tool sees transitions.
    status_qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                            reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)

    def stamp_s(stamp) -> float:
        return stamp.sec + stamp.nanosec * 1e-9

    class _PolicyNode(Node):
        def __init__(self, load_policy: Optional[Callable[[str], Any]] = None) -> None:
            super().__init__("policy")
            self._params: dict[str, Any] = declare(self, PARAMS)
            self._gate = InputGate(self._gate_config(self._params))
            self.add_on_set_parameters_callback(self._on_set_parameters)
            log_effective(self, self._params)

            self._model_fault: Optional[str] = None
            self._policy = None
            model_dir = self._params["model_dir"]
            if not model_dir:
                self._model_fault = "no model: set parameter model_dir (launch argument model:=DIR)"
            else:
                try:
                    if load_policy is None:
                        import torch  # noqa: PLC0415

                        torch.set_num_threads(int(self._params["torch_threads"]))
                        from atk_policy.artifact import load_policy as _load
                    else:
                        _load = load_policy
                    self._policy = _load(model_dir)
                except Exception as exc:  # any load failure is a FAULT the operator must see, not a crash
                    self._model_fault = f"cannot load model {model_dir!r}: {exc}"
            if self._model_fault:
                self.get_logger().error(self._model_fault)
                self._expected_ids = None
                self._expected_size = None
            else:
                self._expected_ids = [int(i) for i in self._policy.keypoint_ids]
                self._expected_size = tuple(int(v) for v in self._policy.image_size)
                self.get_logger().info(f"loaded model {model_dir!r}: keypoint ids {self._expected_ids}, image "
                                       f"{self._expected_size[0]}x{self._expected_size[1]}")

            self._keypoints: Optional[KeypointInput] = None
            self._kp_stamp = None
            self._keypoints_new = False
            self._js_stamp: Optional[float] = None
            self._proprio: Optional[np.ndarray] = None
            self._js_fault: Optional[str] = None
            self._step_fault: Optional[str] = None
            self._was_running = False
            self._steps = 0
            self._decision = GateDecision(GateState.HOLD_STALE, "starting", -1.0)

            self._pub_target = self.create_publisher(JointState, "joint_target", command_qos)
            self._pub_gripper = self.create_publisher(GripperCommand, "gripper_command", command_qos)
            self._pub_status = self.create_publisher(PolicyStatus, "policy/status", status_qos)
            # Sensor-data QoS (best effort, keep last 5) as the publishers use:
            # only the newest keypoints/joint state matter, and a late one is
            # worse than a lost one.
            self.create_subscription(KeypointArray, "keypoints", self._on_keypoints, qos_profile_sensor_data)
            self.create_subscription(JointState, "joint_states", self._on_joint_state, qos_profile_sensor_data)
            # One single-threaded executor runs callbacks one at a time, so the
            # newest-input fields need no lock; inference (a small MLP, ~1 ms)
            # is short enough not to starve the subscriptions.
            if self._params["trigger"] == "timer":
                self.create_timer(1.0 / self._params["control_rate_hz"], self._control_step)
            self.create_timer(1.0 / self._params["status_rate_hz"], self._publish_status)

        @staticmethod
        def _gate_config(params: dict[str, Any]) -> GateConfig:
            return GateConfig(keypoint_timeout_s=float(params["keypoint_timeout_s"]),
                              joint_state_timeout_s=float(params["joint_state_timeout_s"]),
                              confidence_threshold=float(params["confidence_threshold"]),
                              max_low_confidence_fraction=float(params["max_low_confidence_fraction"]),
                              low_confidence_grace_s=float(params["low_confidence_grace_s"]),
                              max_low_confidence=int(params["max_low_confidence"]))

        def _on_set_parameters(self, params) -> SetParametersResult:
            updated = dict(self._params)
            by_name = {p.name: p for p in PARAMS}
            for prm in params:
                spec = by_name.get(prm.name)
                if spec is None:
                    continue  # not ours (use_sim_time etc.)
                try:
                    updated[prm.name] = spec.check(prm.value)
                except ParameterError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
            try:
                gate = self._gate_config(updated)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            self._params, self._gate.config = updated, gate
            return SetParametersResult(successful=True)

        # --- message conversion ------------------------------------------
        def _on_keypoints(self, msg: KeypointArray) -> None:
            kps = msg.keypoints
            try:
                self._keypoints = KeypointInput(
                    stamp_s=stamp_s(msg.header.stamp), tracker_state=int(msg.state),
                    ids=np.array([k.id for k in kps], dtype=np.int64),
                    positions=np.array([[k.x, k.y] for k in kps], dtype=np.float64).reshape(-1, 2),
                    confidence=np.array([k.confidence for k in kps], dtype=np.float64),
                    visible=np.array([k.visible for k in kps], dtype=bool),
                    image_size=(int(msg.image_width), int(msg.image_height)), tracker_message=msg.message)
            except ValueError as exc:
                self.get_logger().error(f"malformed keypoint array ignored: {exc}")
                return
            self._kp_stamp = msg.header.stamp
            self._keypoints_new = True
            if self._params["trigger"] == "keypoints":
                self._control_step()

        def _on_joint_state(self, msg: JointState) -> None:
            proprio, why = proprio_from_joint_state(list(msg.name), list(msg.position))
            self._js_fault = why or None
            if proprio is not None:
                self._proprio = proprio
                self._js_stamp = stamp_s(msg.header.stamp)

        # --- control -----------------------------------------------------
        def _evaluate(self) -> GateDecision:
            fault = self._model_fault or self._js_fault or self._step_fault
            return self._gate.evaluate(self.get_clock().now().nanoseconds * 1e-9, self._keypoints,
                                       self._js_stamp, self._expected_ids, self._expected_size, fault)

        def _control_step(self) -> None:
            self._step_fault = None  # an inference error is retried on the next step
            decision = self._evaluate()
            if decision.running and (self._params["trigger"] == "timer" or self._keypoints_new):
                if not self._was_running:
                    self._policy.reset()  # no context carried over a hold
                kp = self._keypoints
                try:
                    action, why = check_action(self._policy.select_action(kp.positions.astype(np.float32),
                                                                          self._proprio.astype(np.float32)))
                except Exception as exc:  # an inference error holds the arm and is reported, never raised
                    action, why = None, f"inference failed: {type(exc).__name__}: {exc}"
                if action is None:
                    self._step_fault = why
                    decision = GateDecision(GateState.FAULT, why, decision.input_age_s)
                    self.get_logger().error(why, throttle_duration_sec=2.0)
                else:
                    self._publish_action(action, self._kp_stamp)
            self._keypoints_new = False
            self._log_transition(decision)
            self._decision = decision
            self._was_running = decision.running

        def _publish_action(self, action: np.ndarray, stamp) -> None:
            """stamp: builtin_interfaces/Time of the keypoints' source image, copied exactly."""
            target = JointState()
            target.header.stamp = stamp
            target.name = list(UR_JOINTS)
            target.position = [float(v) for v in action[:6]]
            grip = GripperCommand()
            grip.header.stamp = stamp
            grip.position = float(np.clip(action[6], 0.0, 1.0))
            grip.speed = float(self._params["gripper_speed"])
            grip.force = float(self._params["gripper_force"])
            self._pub_target.publish(target)
            self._pub_gripper.publish(grip)
            self._steps += 1

        def _log_transition(self, decision: GateDecision) -> None:
            if decision.state != self._decision.state:
                text = f"{self._decision.state.name} -> {decision.state.name}: {decision.reason}"
                # Two call sites: rclpy refuses one call site logging at two severities.
                if decision.running:
                    self.get_logger().info(text)
                else:
                    self.get_logger().warning(text)

        def _publish_status(self) -> None:
            # Re-evaluated here, so staleness shows even when nothing arrives
            # (with trigger=keypoints no control step would notice).
            decision = self._evaluate()
            if not decision.running:
                self._log_transition(decision)
                self._decision = decision
                self._was_running = False  # reset the policy when it resumes
            msg = PolicyStatus()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.state = int(decision.state)
            msg.input_age_s = float(decision.input_age_s)
            msg.low_confidence_count = int(decision.low_confidence_count)
            msg.steps = self._steps
            msg.reason = decision.reason
            self._pub_status.publish(msg)

    return _PolicyNode


def __getattr__(name: str):  # PolicyNode is built lazily so that importing this module needs no ROS
    if name == "PolicyNode":
        cls = _define_node()
        globals()["PolicyNode"] = cls
        return cls
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
