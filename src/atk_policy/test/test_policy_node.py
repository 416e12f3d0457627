"""The policy node over real DDS: holds on stale / lost / low-confidence / wrong-id input, acts on good input.

The node runs as its installed console script (a separate process) with a
small model written by atk_policy.artifact.save_policy; this test publishes
keypoints and joint states and watches joint_target, gripper_command and
policy/status.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source env.sh")

from atk_msgs.msg import GripperCommand, Keypoint, KeypointArray, PolicyStatus  # noqa: E402
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from atk_fixtures.ros import PolicyProbe, policy_node_command  # noqa: E402

from atk_policy.policy_node import GRIPPER_JOINT, UR_JOINTS  # noqa: E402

IDS = [3, 7, 11, 20]
IMAGE_SIZE = (64, 48)
STARTUP_TIMEOUT_S = 30.0   # torch import + model load + DDS discovery on a loaded 2-core machine
STATE_TIMEOUT_S = 10.0     # a state change must show in policy/status within this
RUNNING, HOLD_STALE, HOLD_NOT_TRACKING, HOLD_LOW_CONFIDENCE, FAULT = range(5)


def make_test_model(model_dir: Path) -> Path:
    """A small untrained keypoint policy saved through the real artifact API."""
    import torch

    from atk_policy.artifact import save_policy
    from atk_policy.config import ModelConfig
    from atk_policy.model import KeypointPolicy, Normalisation

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    proprio = rng.normal(size=(32, 7))
    # Small steps (~0.01 rad), as a trained policy makes: the node refuses
    # targets further than max_joint_step_rad from the measured joints.
    norm = Normalisation.from_data(proprio.astype(np.float32),
                                   (proprio + rng.normal(scale=0.01, size=(32, 7))).astype(np.float32))
    policy = KeypointPolicy(len(IDS), IMAGE_SIZE, ModelConfig(hidden=(16,)), norm, keypoint_ids=IDS)
    return save_policy(model_dir, policy, np.zeros((IMAGE_SIZE[1], IMAGE_SIZE[0], 3), np.uint8))




class Harness(PolicyProbe):
    """Publishes keypoints (30 Hz) and joint states (50 Hz); records what the policy node publishes."""

    def __init__(self) -> None:
        super().__init__("policy_node_test")
        self.targets: list[JointState] = []
        self.grippers: list[GripperCommand] = []
        self.good_stamps: set[tuple[int, int]] = set()
        # What the keypoint timer publishes; changed by the test.
        self.scenario = dict(publish=True, state=KeypointArray.STATE_TRACKING, conf=0.9, age_s=0.0, ids=IDS,
                             covered=False)
        self.kp_pub = self.node.create_publisher(KeypointArray, "keypoints", qos_profile_sensor_data)
        self.js_pub = self.node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        reliable = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)
        self.node.create_subscription(JointState, "joint_target", self.store(self.targets), reliable)
        self.node.create_subscription(GripperCommand, "gripper_command", self.store(self.grippers), reliable)
        self.node.create_subscription(PolicyStatus, "policy/status", self.store(self.statuses), reliable)
        self.node.create_timer(1 / 30, self._publish_keypoints)
        self.node.create_timer(1 / 50, self._publish_joint_state)
        self.start()

    def _publish_keypoints(self) -> None:
        s = dict(self.scenario)
        if not s["publish"]:
            return
        now = self.node.get_clock().now()
        stamp = (now - rclpy.duration.Duration(seconds=s["age_s"])).to_msg()
        msg = KeypointArray()
        msg.header.stamp = stamp
        msg.header.frame_id = "camera_color_optical_frame"
        msg.state = s["state"]
        msg.image_width, msg.image_height = IMAGE_SIZE
        rng = np.random.default_rng(stamp.nanosec)
        for i in s["ids"]:
            msg.keypoints.append(Keypoint(id=i, name=f"kp{i}", x=float(rng.uniform(0, 64)),
                                          y=float(rng.uniform(0, 48)), confidence=s["conf"],
                                          visible=not s["covered"], robot_covered=s["covered"]))
        good = (s["state"] == KeypointArray.STATE_TRACKING and (s["conf"] >= 0.5 or s["covered"])
                and s["age_s"] < 0.1
                and list(s["ids"]) == IDS)
        if good:
            self.good_stamps.add((stamp.sec, stamp.nanosec))
        self.kp_pub.publish(msg)

    def _publish_joint_state(self) -> None:
        msg = JointState()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.name = [*UR_JOINTS, GRIPPER_JOINT]
        msg.position = [0.0, -1.57, 1.57, -1.57, -1.57, 0.0, 0.0]
        self.js_pub.publish(msg)

    def wait_state(self, state: int, timeout_s: float = STATE_TIMEOUT_S) -> PolicyStatus:
        start = len(self.statuses)
        self.wait_for(f"policy/status state {state}",
                      lambda: any(s.state == state for s in self.statuses[start:]), timeout_s)
        with self.cond:
            return next(s for s in self.statuses[start:] if s.state == state)

    def wait_statuses(self, n: int) -> list[PolicyStatus]:
        start = len(self.statuses)
        self.wait_for(f"{n} more statuses", lambda: len(self.statuses) >= start + n, STATE_TIMEOUT_S)
        with self.cond:
            return self.statuses[start:start + n]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("model") / "atk_test")


@pytest.fixture
def harness():
    h = Harness()
    yield h
    h.close()


def _start(*params: str) -> subprocess.Popen:
    return subprocess.Popen(policy_node_command(*params), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(2)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"policy_node did not exit within 15 s of SIGINT:\n{out}")
    assert proc.returncode == 0, f"policy_node exited {proc.returncode}:\n{out}"
    return out


def test_holds_on_bad_input_and_resumes(model_dir, harness):
    h = harness
    # grace 0: low confidence holds at once (the grace has its own test below)
    proc = _start(f'model_dir:="{model_dir}"', "max_low_confidence:=1", "keypoint_timeout_s:=0.3",
                  "low_confidence_grace_s:=0.0")
    try:
        # good input -> targets stamped with the keypoints' source stamp
        h.wait_state(RUNNING, STARTUP_TIMEOUT_S)
        h.wait_for("a joint_target", lambda: len(h.targets) > 0 and len(h.grippers) > 0, STATE_TIMEOUT_S)
        t = h.targets[-1]
        assert list(t.name) == list(UR_JOINTS) and len(t.position) == 6
        assert np.all(np.isfinite(t.position))
        assert (t.header.stamp.sec, t.header.stamp.nanosec) in h.good_stamps
        g = h.grippers[-1]
        assert (g.header.stamp.sec, g.header.stamp.nanosec) in h.good_stamps and 0.0 <= g.position <= 1.0

        def hold(expected: int, reason_part: str, **scenario) -> None:
            h.scenario.update(scenario)
            st = h.wait_state(expected)
            assert reason_part in st.reason, st.reason
            # Several control periods while holding: the stamp check at the end
            # proves none of them produced a target from this input.
            assert all(s.state == expected for s in h.wait_statuses(3))

        hold(HOLD_NOT_TRACKING, "LOST", state=KeypointArray.STATE_LOST)
        hold(HOLD_LOW_CONFIDENCE, "ids [3, 7, 11, 20]", state=KeypointArray.STATE_TRACKING, conf=0.2)
        # the same keypoints reported covered by the robot itself (robot-aware occlusion): it acts
        h.scenario.update(covered=True)
        h.wait_state(RUNNING)
        h.scenario.update(covered=False)
        hold(HOLD_STALE, "old", conf=0.9, age_s=1.0)
        hold(HOLD_STALE, "old", age_s=0.0, publish=False)  # tracker stopped
        hold(FAULT, "different order", publish=True, ids=[7, 3, 11, 20])
        status = h.statuses[-1]
        assert status.input_age_s >= 0.0

        # good input again -> resumes with new targets
        n_before = len(h.targets)
        resume_after = time.time()
        h.scenario.update(ids=IDS)
        h.wait_state(RUNNING)
        h.wait_for("targets after resuming", lambda: any(
            m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 > resume_after for m in h.targets[n_before:]),
            STATE_TIMEOUT_S)
        steps = h.wait_statuses(1)[0].steps
        assert steps >= len(h.targets) - 1  # counts what it published (one may still be in flight)
    finally:
        out = _stop(proc)
    bad = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in h.targets
           if (m.header.stamp.sec, m.header.stamp.nanosec) not in h.good_stamps]
    assert not bad, f"joint_target published from held input (stamps {bad[:3]})\n{out}"
    assert "effective parameters" in out and "HOLD_NOT_TRACKING" in out


def test_low_confidence_is_acted_through_for_the_grace_then_held(model_dir, harness):
    h = harness
    proc = _start(f'model_dir:="{model_dir}"', "max_low_confidence:=1", "low_confidence_grace_s:=1.5")
    try:
        h.wait_state(RUNNING, STARTUP_TIMEOUT_S)
        h.scenario.update(conf=0.2)
        h.wait_for("a RUNNING status inside the grace", lambda: any(
            st.state == RUNNING and "acting on for" in st.reason for st in h.statuses), STATE_TIMEOUT_S)
        st = h.wait_state(HOLD_LOW_CONFIDENCE)
        assert "ids [3, 7, 11, 20]" in st.reason
        h.scenario.update(conf=0.9)
        h.wait_state(RUNNING)
    finally:
        _stop(proc)


def test_without_model_reports_fault_and_publishes_nothing(harness, tmp_path):
    proc = _start(f'model_dir:="{tmp_path / "missing"}"')
    try:
        st = harness.wait_state(FAULT, STARTUP_TIMEOUT_S)
        assert "cannot load model" in st.reason and "missing" in st.reason
        harness.wait_statuses(3)
        assert harness.targets == []
    finally:
        _stop(proc)


def test_holding_rules_change_at_run_time_within_their_checks(harness):
    """Parameters marked runtime are set while the node runs (ros2 param set);
    a bad value is refused quoting it, the others stay read-only."""
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    proc = _start('model_dir:=""')
    try:
        harness.wait_state(FAULT, STARTUP_TIMEOUT_S)
        client = AsyncParameterClient(harness.node, "policy")
        assert client.wait_for_services(timeout_sec=STATE_TIMEOUT_S)

        def set_one(name: str, value):
            fut = client.set_parameters([Parameter(name, value=value)])
            harness.wait_for(f"set {name}", fut.done, STATE_TIMEOUT_S)
            return fut.result().results[0]

        assert set_one("keypoint_timeout_s", 0.5).successful
        assert set_one("max_low_confidence", 4).successful
        refused = set_one("confidence_threshold", "high")
        assert not refused.successful and "'high'" in refused.reason and "confidence_threshold" in refused.reason
        refused = set_one("keypoint_timeout_s", 20.0)
        assert not refused.successful and "20.0" in refused.reason
        assert not set_one("control_rate_hz", 20.0).successful  # read-only after start
        fut = client.get_parameters(["keypoint_timeout_s", "max_low_confidence", "confidence_threshold"])
        harness.wait_for("get parameters", fut.done, STATE_TIMEOUT_S)
        values = fut.result().values
        assert (values[0].double_value, values[1].integer_value, values[2].double_value) == (0.5, 4, 0.5)
    finally:
        _stop(proc)


def test_bad_parameter_is_refused_with_its_value():
    proc = subprocess.run(policy_node_command("control_rate_hz:=1000.0"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "control_rate_hz" in proc.stderr and "1000" in proc.stderr


def test_help_answers_without_ros():
    env = {k: v for k, v in os.environ.items() if k not in ("ROS_DOMAIN_ID",)}
    proc = subprocess.run([policy_node_command()[0], "--help"], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 0
    for name in ("model_dir", "trigger", "keypoint_timeout_s", "max_low_confidence"):
        assert name in proc.stdout
