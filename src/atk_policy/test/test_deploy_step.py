"""The deploy step (gate -> select_action -> action check -> hold), without ROS."""
from __future__ import annotations

import numpy as np
import pytest

from atk_policy.deploy_step import DeployStep, JointStateBuffer, check_action
from atk_policy.gating import GateConfig, GateState, KeypointInput, TrackerState

IDS = [3, 7, 11, 20]
SIZE = (64, 48)
HOME = np.array([0.0, -1.57, 1.57, -1.57, -1.57, 0.0, 0.0])


class StubPolicy:
    """select_action returns measured joints + ``offset``; counts calls and resets."""

    keypoint_ids = IDS
    image_size = SIZE

    def __init__(self, offset: float = 0.05) -> None:
        self.offset, self.calls, self.resets = offset, [], 0

    def select_action(self, keypoints: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        self.calls.append((keypoints.copy(), proprio.copy()))
        return proprio.astype(np.float64) + self.offset

    def reset(self) -> None:
        self.resets += 1


def _kp(stamp: float = 10.0, state: int = TrackerState.TRACKING, conf: float = 0.9,
        positions=None) -> KeypointInput:
    pos = np.tile([[10.0, 20.0]], (4, 1)) if positions is None else np.asarray(positions, float)
    return KeypointInput(stamp, state, np.asarray(IDS), pos, np.full(4, conf), np.ones(4, bool), SIZE)


def test_check_action_refuses_shape_nan_and_far_targets():
    assert check_action(np.zeros(6))[0] is None
    a, why = check_action([np.nan] * 7)
    assert a is None and "non-finite" in why
    a, why = check_action(HOME + 0.29, HOME, 0.3)
    assert a is not None and why == ""
    far = HOME.copy()
    far[2] += 16000.0
    a, why = check_action(far, HOME, 0.3)
    assert a is None and "joint 2" in why and "16000.000 rad" in why
    # the gripper (index 6) is not a joint step
    grip = HOME.copy()
    grip[6] = 1.0
    assert check_action(grip, HOME, 0.3)[0] is not None


def test_step_acts_on_good_input_with_the_frame_joint_state():
    policy = StubPolicy()
    step = DeployStep(policy, GateConfig())
    out = step.step(10.0, _kp(), HOME, 10.0)
    assert out.acted and out.decision.state == GateState.RUNNING
    np.testing.assert_allclose(out.action, HOME + 0.05, atol=1e-6)
    np.testing.assert_allclose(policy.calls[0][1], HOME.astype(np.float32))


def test_far_action_is_refused_not_published():
    """Issue 15: a policy output absurdly far from the measured joints is
    refused in the deploy step, before anything is published."""
    policy = StubPolicy(offset=0.5)
    out = DeployStep(policy, GateConfig(), max_joint_step_rad=0.3).step(10.0, _kp(), HOME, 10.0)
    assert not out.acted and out.decision.state == GateState.FAULT
    assert "action refused" in out.error and "max_joint_step_rad 0.300" in out.error


def test_step_limit_is_from_the_last_target_as_the_driver_checks():
    """Targets that each move 0.2 rad on from the last one are accepted though
    the arm lags behind (a chunk runs ahead of it), as the driver accepts them;
    after a hold the limit is from the measured joints again."""
    class Ahead(StubPolicy):
        def select_action(self, keypoints, proprio):
            self.calls.append(1)
            return HOME + 0.2 * len(self.calls)   # the arm stays at HOME

    step = DeployStep(Ahead(), GateConfig(), max_joint_step_rad=0.3)
    assert step.step(10.0, _kp(10.0), HOME, 10.0).acted            # 0.2 from the arm
    assert step.step(10.1, _kp(10.1), HOME, 10.1).acted            # 0.4 from the arm, 0.2 from the last target
    assert not step.step(10.2, _kp(10.2, state=TrackerState.LOST), HOME, 10.2).acted
    out = step.step(10.3, _kp(10.3), HOME, 10.3)                    # 0.6 from the arm, the last target forgotten
    assert not out.acted and "0.600 rad" in out.error


def test_hold_publishes_nothing_and_resets_the_policy_before_acting_again():
    policy = StubPolicy()
    step = DeployStep(policy, GateConfig())
    step.reset()
    assert policy.resets == 1
    assert step.step(10.0, _kp(10.0), HOME, 10.0).acted
    assert step.step(10.1, _kp(10.1), HOME, 10.1).acted and policy.resets == 1   # acting on: same chunk
    held = step.step(10.2, _kp(10.2, state=TrackerState.LOST), HOME, 10.2)
    assert not held.acted and held.decision.state == GateState.HOLD_NOT_TRACKING
    assert len(policy.calls) == 2   # the network is not even run while holding
    assert step.step(10.3, _kp(10.3), HOME, 10.3).acted and policy.resets == 2   # fresh chunk after the hold


def test_invalid_input_never_reaches_the_network():
    policy = StubPolicy()
    out = DeployStep(policy, GateConfig()).step(10.0, _kp(positions=[[1e6, 1e6]] * 4), HOME, 10.0)
    assert not out.acted and out.decision.state == GateState.FAULT and not policy.calls


def test_no_model_is_a_fault():
    out = DeployStep(None).step(10.0, _kp(), HOME, 10.0, fault="no model")
    assert not out.acted and out.decision.state == GateState.FAULT and out.decision.reason == "no model"


def test_inference_error_holds_and_is_reported():
    class Broken(StubPolicy):
        def select_action(self, keypoints, proprio):
            raise RuntimeError("CUDA out of memory")

    out = DeployStep(Broken()).step(10.0, _kp(), HOME, 10.0)
    assert not out.acted and out.error == "inference failed: RuntimeError: CUDA out of memory"


def test_max_joint_step_must_be_positive():
    with pytest.raises(ValueError, match="max_joint_step_rad"):
        DeployStep(StubPolicy(), max_joint_step_rad=0.0)


def test_joint_state_buffer_pairs_the_nearest_stamp():
    buf = JointStateBuffer(horizon_s=1.05)
    assert buf.nearest(5.0) is None
    for i in range(30):
        buf.add(i * 0.1, np.full(7, float(i)))
    stamp, q = buf.nearest(2.0)
    assert stamp == pytest.approx(2.0) and q[0] == 20.0
    stamp, q = buf.nearest(2.04)
    assert q[0] == 20.0
    assert buf.nearest(0.0)[1][0] == 19.0          # older than the horizon: gone
    assert buf.newest_stamp == pytest.approx(2.9)
    buf.add(0.5, np.zeros(7))                         # a restarted clock starts afresh
    assert buf.newest_stamp == 0.5 and buf.nearest(2.0)[0] == 0.5
