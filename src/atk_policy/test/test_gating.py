"""The policy node's input gate, without ROS."""
from __future__ import annotations

import numpy as np
import pytest

from atk_policy.gating import (GateConfig, GateState, KeypointInput, TrackerState, evaluate_gate,
                               low_confidence_mask)

IDS = [3, 7, 11, 20]


def _kp(stamp: float = 10.0, state: int = TrackerState.TRACKING, ids=IDS, conf=None, visible=None,
        size=(640, 480), positions=None, message: str = "") -> KeypointInput:
    n = len(ids)
    rng = np.random.default_rng(0)
    return KeypointInput(
        stamp_s=stamp, tracker_state=state, ids=np.asarray(ids),
        positions=rng.uniform(0, 400, (n, 2)) if positions is None else np.asarray(positions, float),
        confidence=np.full(n, 0.9) if conf is None else np.asarray(conf, float),
        visible=np.ones(n, bool) if visible is None else np.asarray(visible, bool),
        image_size=size, tracker_message=message)


CFG = GateConfig(keypoint_timeout_s=0.2, joint_state_timeout_s=0.1, confidence_threshold=0.5,
                 max_low_confidence=1,
                 max_low_confidence_fraction=0.0)  # the count rule alone (the fraction has its own test)


def test_good_input_runs_and_reports_age():
    d = evaluate_gate(CFG, 10.05, _kp(10.0), 10.04, IDS, (640, 480))
    assert d.state == GateState.RUNNING and d.running
    assert d.input_age_s == pytest.approx(0.05)
    assert d.low_confidence_count == 0


def test_missing_and_stale_keypoints_hold():
    d = evaluate_gate(CFG, 10.0, None, 10.0, IDS)
    assert d.state == GateState.HOLD_STALE and "no keypoints" in d.reason and d.input_age_s == -1.0
    d = evaluate_gate(CFG, 10.25, _kp(10.0), 10.25, IDS)
    assert d.state == GateState.HOLD_STALE and "0.250 s old" in d.reason
    # exactly at the timeout still runs; just past it holds
    assert evaluate_gate(CFG, 10.2, _kp(10.0), 10.2, IDS).running
    assert not evaluate_gate(CFG, 10.2001, _kp(10.0), 10.2, IDS).running


def test_future_stamp_is_a_clock_problem():
    d = evaluate_gate(CFG, 10.0, _kp(11.0), 10.0, IDS)
    assert d.state == GateState.HOLD_STALE and "future" in d.reason and "use_sim_time" in d.reason


def test_stale_or_missing_joint_state_holds():
    d = evaluate_gate(CFG, 10.05, _kp(10.0), None, IDS)
    assert d.state == GateState.HOLD_STALE and "joint state" in d.reason
    d = evaluate_gate(CFG, 10.05, _kp(10.0), 9.9, IDS)
    assert d.state == GateState.HOLD_STALE and "0.150 s old" in d.reason


@pytest.mark.parametrize("state,name", [(TrackerState.LOST, "LOST"), (TrackerState.INITIALISING, "INITIALISING"),
                                        (9, "unknown state 9")])
def test_not_tracking_holds(state, name):
    d = evaluate_gate(CFG, 10.0, _kp(10.0, state=state, message="template not found"), 10.0, IDS)
    assert d.state == GateState.HOLD_NOT_TRACKING
    assert name in d.reason and "template not found" in d.reason


def test_staleness_is_checked_before_tracker_state():
    d = evaluate_gate(CFG, 11.0, _kp(10.0, state=TrackerState.LOST), 11.0, IDS)
    assert d.state == GateState.HOLD_STALE


def test_a_hidden_keypoint_predicted_from_the_robot_is_not_low():
    # a point on the carried object: not visible, position from the tool pose (confidence 0.8)
    kp = _kp(conf=[0.9, 0.8, 0.74, 0.9], visible=[True, False, False, True])
    assert low_confidence_mask(kp, 0.5, 0.75).tolist() == [False, False, True, False]
    assert low_confidence_mask(kp, 0.5).tolist() == [False, True, True, False]
    d = evaluate_gate(CFG, 10.0, kp, 10.0, IDS)
    assert d.low_confidence_count == 1 and d.low_confidence_ids == (11,)
    with pytest.raises(ValueError, match="predicted_min_confidence"):
        GateConfig(predicted_min_confidence=0.3)


def test_low_confidence_counts_threshold_visibility_and_nan():
    kp = _kp(conf=[0.9, 0.49, 0.5, 0.7], visible=[True, True, True, False])
    assert low_confidence_mask(kp, 0.5).tolist() == [False, True, False, True]
    d = evaluate_gate(CFG, 10.0, kp, 10.0, IDS)
    assert d.state == GateState.HOLD_LOW_CONFIDENCE
    assert d.low_confidence_count == 2 and d.low_confidence_ids == (7, 20)
    assert "ids [7, 20]" in d.reason and "at most 1" in d.reason
    # one low keypoint is tolerated (max_low_confidence=1) and reported
    d = evaluate_gate(CFG, 10.0, _kp(conf=[0.9, 0.1, 0.9, 0.9]), 10.0, IDS)
    assert d.running and d.low_confidence_count == 1 and "7" in d.reason
    # a non-finite position is invalid input, never fed to the network (issue 15)
    pos = np.full((4, 2), 5.0)
    pos[0, 1] = np.nan
    kp = _kp(conf=[0.9, 0.9, 0.9, 0.9], positions=pos)
    d = evaluate_gate(CFG, 10.0, kp, 10.0, IDS)
    assert d.state == GateState.FAULT and "not finite" in d.reason and "id 3" in d.reason


def test_id_mismatch_is_a_fault():
    d = evaluate_gate(CFG, 10.0, _kp(ids=[7, 3, 11, 20]), 10.0, IDS)
    assert d.state == GateState.FAULT and "different order" in d.reason
    d = evaluate_gate(CFG, 10.0, _kp(ids=[3, 7, 12]), 10.0, IDS)
    assert d.state == GateState.FAULT and "missing [11, 20]" in d.reason and "unexpected [12]" in d.reason


def test_image_size_mismatch_or_unreported_size_is_a_fault():
    d = evaluate_gate(CFG, 10.0, _kp(size=(1280, 720)), 10.0, IDS, (640, 480))
    assert d.state == GateState.FAULT and "1280x720" in d.reason and "640x480" in d.reason
    assert "sim_width:=640 sim_height:=480" in d.reason  # the launch arguments that fix it (issue 16)
    assert evaluate_gate(CFG, 10.0, _kp(size=(640, 480)), 10.0, IDS, (640, 480)).running
    # issue 15: a 0x0 size used to skip the check
    d = evaluate_gate(CFG, 10.0, _kp(size=(0, 0)), 10.0, IDS, (640, 480))
    assert d.state == GateState.FAULT and "no image size (0x0)" in d.reason


@pytest.mark.parametrize("where", [(1e6, 1e6), (-500.0, -500.0), (5.0, 481.0 + 240.0), (-320.5, 5.0)])
def test_keypoints_far_outside_the_image_are_invalid_input(where):
    """Issue 15: points at (1e6, 1e6) or (-500, -500) with confidence 0.9 were
    acted on (joint targets 16,000 rad away). Outside the image by more than
    image_margin_fraction (0.5) of its size -> FAULT, whatever the confidence."""
    pos = np.full((4, 2), 5.0)
    pos[2] = where
    d = evaluate_gate(CFG, 10.0, _kp(positions=pos), 10.0, IDS, (640, 480))
    assert d.state == GateState.FAULT and "outside the 640x480 image" in d.reason and "id 11" in d.reason


def test_keypoints_a_little_outside_the_image_are_valid():
    pos = np.array([[-300.0, 5.0], [939.0, 5.0], [5.0, -239.0], [5.0, 719.0]])  # within half an image
    assert evaluate_gate(CFG, 10.0, _kp(positions=pos), 10.0, IDS, (640, 480)).running


@pytest.mark.parametrize("bad", [5.0, -0.1, float("nan"), float("inf")])
def test_confidence_outside_0_1_is_invalid_input(bad):
    """Issue 15: confidence 5.0 counted as confident."""
    d = evaluate_gate(CFG, 10.0, _kp(conf=[0.9, bad, 0.9, 0.9]), 10.0, IDS)
    assert d.state == GateState.FAULT and "outside [0, 1]" in d.reason and "id 7" in d.reason


def test_caller_fault_wins():
    d = evaluate_gate(CFG, 10.0, _kp(), 10.0, IDS, fault="model failed to load")
    assert d.state == GateState.FAULT and d.reason == "model failed to load"


@pytest.mark.parametrize("kwargs,field", [
    (dict(keypoint_timeout_s=0.0), "keypoint_timeout_s"),
    (dict(joint_state_timeout_s=float("nan")), "joint_state_timeout_s"),
    (dict(confidence_threshold=1.5), "confidence_threshold"),
    (dict(max_low_confidence=-1), "max_low_confidence"),
    (dict(max_low_confidence=1.5), "max_low_confidence"),
])
def test_config_refuses_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GateConfig(**kwargs)


def test_keypoint_input_checks_shapes():
    with pytest.raises(ValueError, match="positions"):
        KeypointInput(0.0, 1, np.arange(3), np.zeros((2, 2)), np.ones(3), np.ones(3, bool))


def test_input_gate_grace_acts_through_a_brief_occlusion_then_holds():
    """Too many low keypoints hold only after low_confidence_grace_s; a
    recovery in between restarts the clock; other holds are never delayed."""
    from atk_policy.gating import InputGate

    gate = InputGate(GateConfig(max_low_confidence=0, max_low_confidence_fraction=0.0, low_confidence_grace_s=1.0))
    ok = KeypointInput(0.0, 1, np.array([1, 2]), np.array([[1.0, 1.0], [2.0, 2.0]]), np.array([0.9, 0.9]),
                       np.array([True, True]), (10, 10))

    def at(t, conf):
        kp = KeypointInput(t, 1, ok.ids, ok.positions, np.asarray(conf), ok.visible, (10, 10))
        return gate.evaluate(t, kp, t)

    assert at(0.0, [0.9, 0.9]).running
    d = at(0.1, [0.1, 0.9])
    assert d.running and "acting on for 1.0 s more" in d.reason and d.low_confidence_count == 1
    assert at(0.9, [0.1, 0.9]).running
    assert at(1.15, [0.1, 0.9]).state == GateState.HOLD_LOW_CONFIDENCE
    assert at(1.2, [0.9, 0.9]).running                      # recovered: clock cleared
    assert at(1.3, [0.1, 0.1]).running                      # a new occlusion gets its own grace
    stale = gate.evaluate(5.0, ok, 5.0)                    # keypoints 5 s old: no grace for staleness
    assert stale.state == GateState.HOLD_STALE
    with pytest.raises(ValueError, match="low_confidence_grace_s"):
        GateConfig(low_confidence_grace_s=-1.0)


def test_low_confidence_rule_scales_with_the_number_of_keypoints():
    """3 low of 5 holds; 3 low of 64 does not (fraction 0.4 allows 25); 26 do; the default 0.5 lets 3 of 6 act."""
    cfg = GateConfig(max_low_confidence=2, max_low_confidence_fraction=0.4)

    def decide(n, n_low):
        conf = np.r_[np.full(n_low, 0.1), np.full(n - n_low, 0.9)]
        kp = KeypointInput(0.0, 1, np.arange(n), np.ones((n, 2)), conf, np.ones(n, bool), (10, 10))
        return evaluate_gate(cfg, 0.0, kp, 0.0).state

    assert decide(5, 2) == GateState.RUNNING and decide(5, 3) == GateState.HOLD_LOW_CONFIDENCE
    assert decide(64, 3) == GateState.RUNNING and decide(64, 25) == GateState.RUNNING
    assert decide(64, 26) == GateState.HOLD_LOW_CONFIDENCE
    cfg = GateConfig()
    assert decide(6, 3) == GateState.RUNNING and decide(6, 4) == GateState.HOLD_LOW_CONFIDENCE
    assert decide(5, 3) == GateState.HOLD_LOW_CONFIDENCE
    with pytest.raises(ValueError, match="max_low_confidence_fraction"):
        GateConfig(max_low_confidence_fraction=1.5)


def test_keypoints_the_robot_covers_do_not_hold_the_policy():
    """Keypoints the tracker reports covered by the robot itself (predicted,
    low confidence, not visible) are not low: a hold froze the arm over them.
    Uncovered low ones still hold; hold_on_robot_covered restores the old rule;
    a covered point with a non-finite position is still refused."""
    n = 6
    conf = np.r_[np.full(4, 0.3), np.full(2, 0.9)]
    visible = np.r_[np.zeros(4, bool), np.ones(2, bool)]

    def decide(covered, cfg=GateConfig(), positions=None):
        kp = KeypointInput(0.0, 1, np.arange(n), np.ones((n, 2)) if positions is None else positions, conf,
                           visible, (10, 10), robot_covered=None if covered is None else np.asarray(covered))
        return evaluate_gate(cfg, 0.0, kp, 0.0)

    assert decide(None).state == GateState.HOLD_LOW_CONFIDENCE           # 4 low of 6
    d = decide(np.arange(n) < 4)
    assert d.state == GateState.RUNNING and d.low_confidence_count == 0
    d = decide(np.arange(n) < 1)                                          # one covered, three low
    assert d.running and d.low_confidence_count == 3
    assert decide(np.arange(n) < 0).state == GateState.HOLD_LOW_CONFIDENCE
    assert decide(np.arange(n) < 4, GateConfig(hold_on_robot_covered=True)).state == GateState.HOLD_LOW_CONFIDENCE
    pos = np.ones((n, 2))
    pos[0] = np.nan
    assert decide(np.arange(n) < 4, positions=pos).state == GateState.FAULT
    with pytest.raises(ValueError, match="robot_covered"):
        KeypointInput(0.0, 1, np.arange(n), np.ones((n, 2)), conf, visible, (10, 10), robot_covered=np.ones(2, bool))
