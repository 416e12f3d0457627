"""Each target rule of the driver acts: clamps, NaN refusal, max step, workspace box."""
from __future__ import annotations

import numpy as np
import pytest

from atk_perception import kinematics as kin
from atk_bringup.driver.safety import SafetyLimits, check_target, in_workspace, step_towards


@pytest.fixture
def limits() -> SafetyLimits:
    return SafetyLimits()


def test_valid_target_accepted_unchanged(limits):
    q = kin.HOME_Q + 0.05
    v = check_target(q, kin.HOME_Q, limits)
    assert v.accepted and not v.clamped and v.reason == ""
    np.testing.assert_array_equal(v.q, q)


def test_joint_limit_clamps_with_margin(limits):
    ref = kin.HOME_Q.copy()
    ref[0] = 3.1
    q = ref.copy()
    q[0] = 3.3  # pan is limited to +-pi in the cell
    v = check_target(q, ref, limits)
    assert v.accepted and v.clamped, v.reason
    assert v.q[0] == pytest.approx(np.pi - limits.joint_limit_margin)
    assert "shoulder_pan_joint=3.300" in v.reason
    np.testing.assert_array_equal(v.q[1:], q[1:])


@pytest.mark.parametrize("bad", [
    [np.nan, 0, 0, 0, 0, 0], [0, 0, np.inf, 0, 0, 0], [0, 0, -np.inf, 0, 0, 0]])
def test_nan_and_inf_refused(limits, bad):
    v = check_target(np.asarray(bad) + kin.HOME_Q, kin.HOME_Q, limits)
    assert not v.accepted and v.q is None
    assert "NaN or inf" in v.reason


@pytest.mark.parametrize("bad", [[0.0] * 5, [0.0] * 7, "abc", None, [[0.0] * 6] * 2])
def test_wrong_shape_or_type_refused(limits, bad):
    v = check_target(bad, kin.HOME_Q, limits)
    assert not v.accepted and v.reason


def test_max_step_refused(limits):
    q = kin.HOME_Q.copy()
    q[4] += limits.max_target_step + 0.01
    v = check_target(q, kin.HOME_Q, limits)
    assert not v.accepted
    assert "wrist_2_joint" in v.reason and "max_target_step" in v.reason
    q[4] = kin.HOME_Q[4] + limits.max_target_step - 0.01
    assert check_target(q, kin.HOME_Q, limits).accepted


def test_workspace_box_refuses_tcp_below_table():
    limits = SafetyLimits(max_target_step=np.pi)
    # From home, bending the elbow further drops the TCP towards the table.
    q = kin.HOME_Q.copy()
    ok, p = in_workspace(q, limits)
    assert ok and p[2] > 0.3
    q_low = q.copy()
    q_low[1] += 0.75  # shoulder lift forward: TCP goes down
    inside, p_low = in_workspace(q_low, limits)
    assert p_low[2] < limits.workspace_min[2], p_low  # the test pose really is below the floor
    v = check_target(q_low, q, limits)
    assert not v.accepted and "outside the workspace box" in v.reason
    # Raising the floor below the home TCP still accepts home; above it refuses it.
    assert not check_target(q, q, SafetyLimits(workspace_min=[-1, -1, p[2] + 0.01])).accepted
    assert check_target(q, q, SafetyLimits(workspace_min=[-1, -1, p[2] - 0.01])).accepted


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_velocity=4.0), "max_velocity"),
    (dict(max_velocity=[1.0] * 5), "max_velocity"),
    (dict(max_acceleration=0.0), "max_acceleration"),
    (dict(max_target_step=float("nan")), "max_target_step"),
    (dict(joint_limits=np.array([[-7.0, 7.0]] * 6)), "joint_limits"),
    (dict(joint_limits=np.array([[1.0, -1.0]] * 6)), "joint_limits"),
    (dict(workspace_min=[0, 0, 1.0], workspace_max=[1, 1, 0.5]), "workspace_min"),
    (dict(watchdog_timeout=0.0), "watchdog_timeout"),
    (dict(tcp_offset=np.eye(3)), "tcp_offset"),
])
def test_bad_limits_refused_naming_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SafetyLimits(**kwargs)


def test_step_towards_respects_velocity_and_acceleration():
    limits = SafetyLimits(max_velocity=1.0, max_acceleration=3.0)
    dt = 0.002
    q, v = kin.HOME_Q.copy(), np.zeros(6)
    goal = kin.HOME_Q + np.array([0.5, -0.3, 0.2, 0.0, 0.05, -0.5])
    prev_v = v.copy()
    for _ in range(2000):
        q_next, v = step_towards(q, v, goal, dt, limits)
        assert np.all(np.abs(v) <= 1.0 + 1e-12)
        assert np.all(np.abs(v - prev_v) <= 3.0 * dt + 1e-12)
        # never overshoots a goal that stays put, beyond the discretisation
        # bound a * dt^2 (12 micro-rad here)
        overshoot = -(goal - q_next) * np.sign(goal - kin.HOME_Q)
        assert np.all(overshoot <= 3.0 * dt * dt)
        prev_v, q = v, q_next
    np.testing.assert_allclose(q, goal, atol=1e-9)
    np.testing.assert_allclose(v, 0.0, atol=1e-9)


def test_step_towards_time_matches_trapezoid():
    # 0.5 rad at 1 rad/s and 3 rad/s^2: 1/3 s ramp up and down, 1/6 s cruise
    # -> 0.833 s; the discrete limiter must be within a few periods of it.
    limits = SafetyLimits(max_velocity=1.0, max_acceleration=3.0)
    dt = 0.002
    q, v = np.zeros(6) + kin.HOME_Q, np.zeros(6)
    goal = q.copy()
    goal[0] += 0.5
    steps = 0
    while abs(goal[0] - q[0]) > 1e-9 and steps < 5000:
        q, v = step_towards(q, v, goal, dt, limits)
        steps += 1
    assert abs(steps * dt - (1 / 3 + 1 / 3 + 1 / 6)) < 0.02


def test_target_far_outside_limits_refused_not_clamped(limits):
    """1e6 rad is a fault: refused, never clamped and executed; a target just
    past the limit from near the limit is still clamped."""
    near = kin.HOME_Q.copy()
    near[5] = limits.joint_limits[5, 1] - 0.05  # the arm near its wrist 3 limit
    q = near.copy()
    q[5] = 1e6
    v = check_target(q, near, limits)
    assert not v.accepted and v.q is None and "wrist_3_joint" in v.reason
    q = near.copy()
    q[5] = limits.joint_limits[5, 1] + 0.05
    v = check_target(q, near, limits)
    assert v.accepted and v.clamped
    assert v.q[5] == pytest.approx(limits.joint_limits[5, 1] - limits.joint_limit_margin)


def test_target_age_limit():
    from atk_bringup.driver.safety import check_target_age

    limits = SafetyLimits(max_target_age=0.5)
    assert check_target_age(0.1, limits) == ""
    assert "60.000 s old" in check_target_age(60.0, limits)
    assert "future" in check_target_age(-2.0, limits)
    assert "old" in check_target_age(float("inf"), limits)
    assert check_target_age(60.0, SafetyLimits(max_target_age=0.0)) == ""  # 0: off
    with pytest.raises(ValueError, match="max_target_age"):
        SafetyLimits(max_target_age=-1.0)
