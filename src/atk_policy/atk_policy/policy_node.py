"""Policy node (``policy_node``, node name ``policy``): keypoints -> joint targets.

Subscribes ``keypoints`` (atk_msgs/KeypointArray) and ``joint_states``
(sensor_msgs/JointState); publishes ``joint_target`` (sensor_msgs/JointState,
the 6 UR joints, header.stamp = the source image stamp of the keypoints it
was computed from), ``gripper_command`` (atk_msgs/GripperCommand, same
stamp) and ``policy/status`` (atk_msgs/PolicyStatus, at status_rate_hz,
also while holding).

Each control step is :class:`atk_policy.deploy_step.DeployStep`, the same
step the evaluation runs: the input gate (:mod:`atk_policy.gating`) decides,
the policy acts, and its action is checked (finite, within
``max_joint_step_rad`` of the measured joints). In any state but RUNNING, and
when an action is refused, the node publishes nothing on joint_target or
gripper_command (the driver then keeps the arm at its last target) and the
status says why. When input is good again it resets the policy and resumes.

The policy acts on the newest keypoints with the joint state of the same
camera frame (the nearest stamp, :class:`~atk_policy.deploy_step.JointStateBuffer`):
the pairs it was trained on.

``trigger`` (parameter): ``keypoints`` (default) acts as soon as a keypoint
array arrives, on at most ``control_rate_hz`` arrays per second of source
stamps (an array less than 3/4 of a control period after the last one acted
on is skipped): the action is the target for the next control step, so
acting faster than the trained rate would move the arm faster than in the
demonstrations. The latency is then the tracker's and the policy's own.
``timer`` acts at ``control_rate_hz`` on whatever input is newest; under
``use_sim_time`` its timer fires on ``/clock``, i.e. as a frame is published
and before its keypoints exist, so it acts on the previous frame's keypoints:
one control step late (issue 17: 1001 of 1006 steps, and a third fewer
successes).

Library: atk_policy.artifact (model), atk_policy.deploy_step (the step),
atk_policy.gating (holding rules). Parameters: atk_policy.policy_params.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy, \
    qos_profile_sensor_data
from sensor_msgs.msg import JointState

from atk_msgs.msg import GripperCommand, KeypointArray, PolicyStatus
from atk_perception import kinematics as kin
from atk_perception.node_params import ParameterError, config_from_params, declare, log_effective
from atk_perception.node_runner import run_node
from atk_policy.deploy_step import DeployStep, JointStateBuffer
from atk_policy.deploy_step import check_action  # noqa: F401 (kept importable from here)
from atk_policy.gating import GateConfig, GateDecision, GateState, KeypointInput
from atk_policy.policy_params import COMMAND, NODE_NAME, PARAMS

UR_JOINTS = kin.JOINT_NAMES
GRIPPER_JOINT = kin.GRIPPER_JOINT
#: trigger=keypoints skips an array whose source stamp is less than this many
#: control periods after the last one acted on (a 30 fps camera and a 10 Hz
#: policy: every third frame; 10 Hz frames: every frame despite jitter).
MIN_PERIOD_FRACTION = 0.75
#: A keypoint array waits for a joint state this close to its stamp (s), or newer.
JOINT_STATE_SYNC_S = 0.002


def proprio_from_joint_state(names: Sequence[str], positions: Sequence[float]) -> tuple[Optional[np.ndarray], str]:
    """(7,) = 6 UR joint positions (rad) + gripper (0..1), or (None, why)."""
    return kin.joint_state_vector(names, positions)


# Commands: reliable so a target is never silently lost on the way to the
# driver, depth 1 because only the newest target is worth executing.
COMMAND_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                         reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)
# Status: reliable, a short history so a slow operator tool sees transitions.
STATUS_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                        reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)



def stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class PolicyNode(Node):
    """ROS shell around :class:`~atk_policy.deploy_step.DeployStep`."""

    def __init__(self, load_policy: Optional[Callable[[str], Any]] = None) -> None:
        super().__init__(NODE_NAME)
        self._params: dict[str, Any] = declare(self, PARAMS)
        gate_config = self._gate_config(self._params)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        log_effective(self, self._params)

        self._model_fault: Optional[str] = None
        policy = None
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
                policy = _load(model_dir)
            except Exception as exc:  # any load failure is a FAULT the operator must see, not a crash
                self._model_fault = f"cannot load model {model_dir!r}: {exc}"
        self._step = DeployStep(None if self._model_fault else policy, gate_config,
                                float(self._params["max_joint_step_rad"]))
        if self._model_fault:
            self.get_logger().error(self._model_fault)
        else:
            size = self._step.expected_size
            self.get_logger().info(f"loaded model {model_dir!r}: keypoint ids {self._step.expected_ids}, "
                                   f"image {size[0]}x{size[1]}")

        self._keypoints: Optional[KeypointInput] = None
        self._kp_stamp = None
        self._pending = None   # trigger=keypoints: (KeypointInput, header stamp) not yet acted on
        self._acted_stamp: Optional[float] = None        # source stamp of the last array acted on
        self._joint_states = JointStateBuffer()
        self._js_fault: Optional[str] = None
        self._step_fault: Optional[str] = None
        self._steps = 0
        self._decision = GateDecision(GateState.HOLD_STALE, "starting", -1.0)

        self._pub_target = self.create_publisher(JointState, "joint_target", COMMAND_QOS)
        self._pub_gripper = self.create_publisher(GripperCommand, "gripper_command", COMMAND_QOS)
        self._pub_status = self.create_publisher(PolicyStatus, "policy/status", STATUS_QOS)
        # Sensor-data QoS (best effort, keep last 5) as the publishers use:
        # only the newest keypoints/joint state matter, and a late one is
        # worse than a lost one.
        self.create_subscription(KeypointArray, "keypoints", self._on_keypoints, qos_profile_sensor_data)
        self.create_subscription(JointState, "joint_states", self._on_joint_state, qos_profile_sensor_data)
        # One single-threaded executor runs callbacks one at a time, so the
        # newest-input fields need no lock; inference (a small MLP, ~1 ms)
        # is short enough not to starve the subscriptions.
        if self._params["trigger"] == "timer":
            self.create_timer(1.0 / self._params["control_rate_hz"], self._timer_step)
        self.create_timer(1.0 / self._params["status_rate_hz"], self._publish_status)

    @staticmethod
    def _gate_config(params: dict[str, Any]) -> GateConfig:
        return config_from_params(GateConfig, params)

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
        self._params, self._step.config = updated, gate
        self._step.max_joint_step_rad = float(updated["max_joint_step_rad"])
        return SetParametersResult(successful=True)

    # --- message conversion ------------------------------------------
    def _on_keypoints(self, msg: KeypointArray) -> None:
        kps = msg.keypoints
        try:
            kp = KeypointInput(
                stamp_s=stamp_s(msg.header.stamp), tracker_state=int(msg.state),
                ids=np.array([k.id for k in kps], dtype=np.int64),
                positions=np.array([[k.x, k.y] for k in kps], dtype=np.float64).reshape(-1, 2),
                confidence=np.array([k.confidence for k in kps], dtype=np.float64),
                visible=np.array([k.visible for k in kps], dtype=bool),
                image_size=(int(msg.image_width), int(msg.image_height)), tracker_message=msg.message,
                robot_covered=np.array([k.robot_covered for k in kps], dtype=bool))
        except ValueError as exc:
            self.get_logger().error(f"malformed keypoint array ignored: {exc}")
            return
        self._keypoints, self._kp_stamp = kp, msg.header.stamp
        if self._params["trigger"] != "keypoints":
            return
        period = 1.0 / self._params["control_rate_hz"]
        if (self._acted_stamp is not None and kp.stamp_s >= self._acted_stamp
                and kp.stamp_s - self._acted_stamp < MIN_PERIOD_FRACTION * period):
            return  # within the control period of the last action (a faster camera)
        self._pending = (kp, msg.header.stamp)
        self._try_pending()

    def _on_joint_state(self, msg: JointState) -> None:
        proprio, why = proprio_from_joint_state(list(msg.name), list(msg.position))
        self._js_fault = why or None
        if proprio is not None:
            self._joint_states.add(stamp_s(msg.header.stamp), proprio)
            if self._pending is not None:
                self._try_pending()

    # --- control -----------------------------------------------------
    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _frame_joint_state(self, kp: Optional[KeypointInput]) -> tuple[Optional[float], Optional[np.ndarray]]:
        """The joint state of the keypoints' camera frame (nearest stamp),
        or the newest when there are no keypoints."""
        if kp is None:
            newest = self._joint_states.newest_stamp
            return (None, None) if newest is None else self._joint_states.nearest(newest)
        found = self._joint_states.nearest(kp.stamp_s)
        return (None, None) if found is None else found

    def _try_pending(self) -> None:
        """trigger=keypoints: act on the pending array once the joint state
        of its frame is here (the simulator publishes both with one stamp,
        but they travel on two topics)."""
        kp, stamp = self._pending
        newest = self._joint_states.newest_stamp
        if newest is not None and newest < kp.stamp_s - JOINT_STATE_SYNC_S:
            # Not here yet; acted on when it arrives. A frame whose joint
            # state never comes is superseded by the next array, and the
            # status reports the joint state as stale.
            return
        self._pending = None
        self._control_step(kp, stamp)

    def _timer_step(self) -> None:
        self._control_step(self._keypoints, self._kp_stamp)

    def _control_step(self, kp: Optional[KeypointInput], stamp) -> None:
        self._step_fault = None  # an inference error or refused action is retried on the next step
        js_stamp, proprio = self._frame_joint_state(kp)
        fault = self._model_fault or self._js_fault
        outcome = self._step.step(self._now_s(), kp, proprio, js_stamp, fault)
        decision = outcome.decision
        if outcome.acted:
            self._acted_stamp = kp.stamp_s
            self._publish_action(outcome.action, stamp)
        elif outcome.error:
            self._step_fault = outcome.error
            self.get_logger().error(outcome.error, throttle_duration_sec=2.0)
        self._log_transition(decision)
        self._decision = decision

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
        # (with trigger=keypoints no control step would notice). A hold
        # seen here also resets the policy before it acts again.
        js_stamp, _ = self._frame_joint_state(self._keypoints)
        decision = self._step.evaluate(self._now_s(), self._keypoints, js_stamp,
                                       self._model_fault or self._js_fault or self._step_fault)
        if not decision.running:
            self._log_transition(decision)
            self._decision = decision
        msg = PolicyStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.state = int(decision.state)
        msg.input_age_s = float(decision.input_age_s)
        msg.low_confidence_count = int(decision.low_confidence_count)
        msg.steps = self._steps
        msg.reason = decision.reason
        self._pub_status.publish(msg)



def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_node(NODE_NAME, argv, PolicyNode, print_help=COMMAND.print_help,
                    startup_errors=(ParameterError,), threads=1)


if __name__ == "__main__":
    sys.exit(main())
