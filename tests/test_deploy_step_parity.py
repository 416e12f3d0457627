"""What is evaluated is what is deployed (issues 14 and 15): the policy node,
over real DDS, and the evaluation's agent get the same keypoints and joint
state; they must act alike (the same action, or the same hold with the same
reason), including a refused action, a hold, and the bad input of issue 15
(keypoints far outside the image, confidence outside [0, 1], image size 0x0).
"""
from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source env.sh")

from atk_msgs.msg import Keypoint, KeypointArray, PolicyStatus  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from atk_fixtures.ros import PolicyProbe, policy_node_command  # noqa: E402

from atk_bringup.experiment.evaluation import KeypointAgent  # noqa: E402
from atk_perception.backends import make_correspondence  # noqa: E402
from atk_perception.keypoint_template import load_model_template  # noqa: E402
from atk_policy.artifact import load_policy  # noqa: E402
from atk_policy.gating import GateConfig, KeypointInput, TrackerState  # noqa: E402
from atk_policy.policy_node import GRIPPER_JOINT, UR_JOINTS  # noqa: E402

STARTUP_TIMEOUT_S = 40.0   # torch import + model load + DDS discovery on a loaded 2-core machine
CASE_TIMEOUT_S = 15.0      # one input must show as a target or a status within this, over ATTEMPTS sends
ATTEMPTS = 3
HOME = [0.0, -1.57, 1.57, -1.57, -1.57, 0.0, 0.0]
POINTS = [[10.0, 12.0], [30.0, 20.0], [50.0, 40.0], [20.0, 30.0]]




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small untrained keypoint policy, saved through the real artifact API,
    that steps ~0.01 rad (a trained policy's size of step)."""
    import torch

    from atk_policy.artifact import save_policy
    from atk_policy.config import ModelConfig
    from atk_policy.model import KeypointPolicy, Normalisation

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    proprio = rng.normal(size=(32, 7))
    norm = Normalisation.from_data(proprio.astype(np.float32),
                                   (proprio + rng.normal(scale=0.01, size=(32, 7))).astype(np.float32))
    policy = KeypointPolicy(4, (64, 48), ModelConfig(hidden=(16,)), norm, keypoint_ids=[3, 7, 11, 20])
    return save_policy(tmp_path_factory.mktemp("model") / "atk_test", policy, np.zeros((48, 64, 3), np.uint8))


class Rig(PolicyProbe):
    def __init__(self) -> None:
        super().__init__("deploy_parity_test")
        self.targets: list[JointState] = []
        self.kp_pub = self.node.create_publisher(KeypointArray, "keypoints", qos_profile_sensor_data)
        self.js_pub = self.node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        reliable = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)
        self.node.create_subscription(JointState, "joint_target", self.store(self.targets), reliable)
        self.node.create_subscription(PolicyStatus, "policy/status", self.store(self.statuses), reliable)
        self.params = self.node.create_client(SetParameters, "/policy/set_parameters")
        self.start()

    def now(self):
        return self.node.get_clock().now().to_msg()

    def publish(self, stamp, kp: KeypointInput, proprio) -> None:
        js = JointState()
        js.header.stamp = stamp
        js.name = [*UR_JOINTS, GRIPPER_JOINT]
        js.position = [float(v) for v in proprio]
        msg = KeypointArray()
        msg.header.stamp = stamp
        msg.state = int(kp.tracker_state)
        msg.image_width, msg.image_height = kp.image_size
        for i, (x, y), c in zip(kp.ids, kp.positions, kp.confidence):
            msg.keypoints.append(Keypoint(id=int(i), name=f"kp{i}", x=float(x), y=float(y), confidence=float(c),
                                          visible=True))
        self.js_pub.publish(js)   # the joint state first, as the simulator publishes them
        self.kp_pub.publish(msg)

    def set_param(self, name: str, value: float) -> None:
        self.wait_for("/policy/set_parameters", self.params.service_is_ready, CASE_TIMEOUT_S)
        req = SetParameters.Request(parameters=[Parameter(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_DOUBLE, double_value=value))])
        future = self.params.call_async(req)
        self.wait_for(f"set_parameters {name}", future.done, CASE_TIMEOUT_S)
        assert future.result().results[0].successful, future.result().results[0].reason


def _kp(stamp_s: float, state=TrackerState.TRACKING, positions=POINTS, conf=0.9, size=(64, 48)) -> KeypointInput:
    return KeypointInput(stamp_s, int(state), np.array([3, 7, 11, 20]), np.asarray(positions, float),
                         np.full(4, conf), np.ones(4, bool), size)


def test_node_and_evaluation_take_the_same_step(model_dir):
    # Timeouts of 2 s on both sides: a loaded machine may take that long to
    # pass one message on, and the point here is the step, not staleness.
    gate = GateConfig(keypoint_timeout_s=2.0, joint_state_timeout_s=2.0, low_confidence_grace_s=0.0)
    agent = KeypointAgent(load_policy(model_dir), make_correspondence("cpu"), load_model_template(model_dir),
                          gate_config=gate)
    evaluation_step = agent.step   # what KeypointAgent.act calls for every frame
    evaluation_step.reset()
    rig = Rig()
    proc = subprocess.Popen(policy_node_command(f'model_dir:="{model_dir}"', "low_confidence_grace_s:=0.0",
                                            "keypoint_timeout_s:=2.0", "joint_state_timeout_s:=2.0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        rig.wait_for("the policy node's status and subscriptions", lambda: bool(rig.statuses)
                     and rig.kp_pub.get_subscription_count() > 0 and rig.js_pub.get_subscription_count() > 0,
                     STARTUP_TIMEOUT_S)
        proprio = np.array(HOME)

        def node_acts(kp_at) -> np.ndarray:
            for attempt in range(ATTEMPTS):   # best effort may lose a message: again, with a new stamp
                stamp = rig.now()
                t = stamp.sec + stamp.nanosec * 1e-9
                kp = kp_at(t)
                rig.publish(stamp, kp, proprio)
                try:
                    rig.wait_for(f"a joint_target stamped {t:.3f}", lambda: any(
                        (m.header.stamp.sec, m.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
                        for m in rig.targets), CASE_TIMEOUT_S / ATTEMPTS)
                    break
                except AssertionError:
                    if attempt == ATTEMPTS - 1:
                        raise
            target = next(m for m in rig.targets
                          if (m.header.stamp.sec, m.header.stamp.nanosec) == (stamp.sec, stamp.nanosec))
            out = evaluation_step.step(t, kp, proprio, t)
            assert out.acted, out.decision.reason
            np.testing.assert_allclose(target.position, out.action[:6], atol=1e-5)
            return out.action

        def node_holds(kp_at, reason_part: str) -> None:
            for attempt in range(ATTEMPTS):   # best effort may lose a message: again, with a new stamp
                stamp = rig.now()
                t = stamp.sec + stamp.nanosec * 1e-9
                kp = kp_at(t)
                out = evaluation_step.step(t, kp, proprio, t)
                assert not out.acted and reason_part in out.decision.reason, out.decision.reason
                n = len(rig.statuses)
                rig.publish(stamp, kp, proprio)
                try:
                    rig.wait_for(f"policy/status with '{reason_part}'", lambda: any(
                        s.reason == out.decision.reason and s.state == int(out.decision.state)
                        for s in rig.statuses[n:]), CASE_TIMEOUT_S / ATTEMPTS)
                    break
                except AssertionError:
                    if attempt == ATTEMPTS - 1:
                        raise
            assert not any((m.header.stamp.sec, m.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
                           for m in rig.targets), f"the node published a target from held input ({reason_part})"

        node_acts(_kp)
        node_holds(lambda t: _kp(t, state=TrackerState.LOST), "not TRACKING")
        node_acts(_kp)   # resumes (both reset the policy after the hold)
        # issue 15's bad input: never acted on, in both
        node_holds(lambda t: _kp(t, positions=[[1e6, 1e6]] * 4), "outside the 64x48 image")
        node_holds(lambda t: _kp(t, positions=[[-500.0, -500.0]] * 4), "outside the 64x48 image")
        node_holds(lambda t: _kp(t, conf=5.0), "outside [0, 1]")
        node_holds(lambda t: _kp(t, size=(0, 0)), "no image size (0x0)")
        # a refused action: the same step limit in both, tightened until this model's steps exceed it
        rig.set_param("max_joint_step_rad", 0.001)
        evaluation_step.max_joint_step_rad = 0.001
        node_holds(_kp, "action refused")
    finally:
        proc.send_signal(2)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        rig.close()
    assert proc.returncode == 0, out
