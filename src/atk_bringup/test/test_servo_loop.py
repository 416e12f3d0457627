"""Servo loop against the stand-in robot: each stop rule acts, nothing jumps.

Most tests step the loop by hand with an injected clock (deterministic, no
threads); one test runs the real loop thread.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from atk_perception import kinematics as kin
from atk_bringup.driver.safety import SafetyLimits
from atk_bringup.driver.servo_loop import (
    DriverState,
    GripperConfig,
    GripperWorker,
    ServoConfig,
    ServoLoop,
)
from atk_bringup.driver.ur_interface import ControlInterface, GripperInterface, ReceiveInterface
from atk_bringup.driver.ur_stand_in import StandInGripper, StandInRobot

RATE = 500.0
DT = 1.0 / RATE


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_loop(robot=None, **limit_kwargs):
    robot = robot or StandInRobot(follow=1.0, realtime=False)
    clock = FakeClock()
    limits = SafetyLimits(**limit_kwargs)
    loop = ServoLoop(robot, robot, ServoConfig(control_rate_hz=RATE), limits, clock=clock)
    return loop, robot, clock


def run(loop, clock, n):
    for _ in range(n):
        loop.cycle()
        clock.t += DT


def test_stand_in_satisfies_the_boundary_protocols():
    robot = StandInRobot()
    assert isinstance(robot, ReceiveInterface) and isinstance(robot, ControlInterface)
    assert isinstance(StandInGripper(), GripperInterface)


def test_starts_disarmed_and_ignores_targets():
    loop, robot, clock = make_loop()
    assert loop.state == DriverState.DISARMED
    v = loop.submit_target(kin.HOME_Q + 0.05)
    assert not v.accepted and "disarmed" in v.reason
    run(loop, clock, 20)
    assert robot.servoj_calls == []
    np.testing.assert_array_equal(robot.q, kin.HOME_Q)


def test_enable_holds_then_follows_with_velocity_limit():
    loop, robot, clock = make_loop(max_velocity=1.0, max_acceleration=3.0)
    ok, msg = loop.enable()
    assert ok, msg
    run(loop, clock, 10)
    np.testing.assert_allclose(robot.servoj_calls[-1][1], kin.HOME_Q)  # holds where it is
    target = kin.HOME_Q + np.array([0.2, -0.1, 0.1, 0.0, 0.0, -0.2])
    assert loop.submit_target(target).accepted
    cmds = []
    for _ in range(400):  # 0.8 s, keeping the watchdog fed at 25 Hz
        if len(cmds) % 20 == 0:
            loop.submit_target(target)
        loop.cycle()
        clock.t += DT
        cmds.append(robot.servoj_calls[-1][1])
    cmds = np.array(cmds)
    assert np.max(np.abs(np.diff(cmds, axis=0))) <= 1.0 * DT + 1e-12  # velocity limit
    np.testing.assert_allclose(robot.q, target, atol=1e-6)
    _, _, time_s, lookahead, gain = robot.servoj_calls[-1]
    assert (time_s, lookahead, gain) == (DT, 0.1, 300.0)
    assert robot.watchdog_kicks >= 400


def test_watchdog_stops_within_two_periods():
    loop, robot, clock = make_loop(watchdog_timeout=0.1)
    loop.enable()
    loop.submit_target(kin.HOME_Q + 0.01)
    t_target = clock.t
    for _ in range(200):
        loop.cycle()
        if robot.servo_stops:
            break
        clock.t += DT
    assert robot.servo_stops, "watchdog never stopped the arm"
    late = clock.t - (t_target + 0.1)
    assert 0.0 < late <= 2 * DT, late
    assert loop.state == DriverState.WATCHDOG_STOP
    n_calls = len(robot.servoj_calls)
    run(loop, clock, 20)
    assert len(robot.servoj_calls) == n_calls  # nothing streamed while stopped


def test_watchdog_also_fires_when_no_target_ever_arrives():
    loop, robot, clock = make_loop(watchdog_timeout=0.05)
    loop.enable()
    run(loop, clock, int(0.05 / DT) + 3)
    assert loop.state == DriverState.WATCHDOG_STOP and len(robot.servo_stops) == 1


def test_resume_after_watchdog_reanchors_at_measured_position():
    loop, robot, clock = make_loop(watchdog_timeout=0.2)
    robot.follow = 0.005  # the arm lags far behind the commands
    loop.enable()
    far = kin.HOME_Q + 0.25
    loop.submit_target(far)
    run(loop, clock, 110)
    assert loop.state == DriverState.WATCHDOG_STOP
    q_meas = robot.q.copy()
    last_cmd = robot.servoj_calls[-1][1]
    assert np.max(np.abs(last_cmd - q_meas)) > 0.01  # command and arm really differ
    # A target far from where the arm is (the old target) is refused: max step
    # is measured from the arm, not from the stale command.
    v = loop.submit_target(far + 0.1)
    assert not v.accepted and "jumps" in v.reason
    assert loop.submit_target(q_meas + 0.01).accepted
    assert loop.state == DriverState.RUNNING
    loop.cycle()
    first = robot.servoj_calls[-1][1]
    assert np.max(np.abs(first - q_meas)) <= 1.0 * DT + 1e-12


def test_protective_stop_is_latched_until_enable_and_no_jump():
    loop, robot, clock = make_loop()
    loop.enable()
    loop.submit_target(kin.HOME_Q + 0.2)
    run(loop, clock, 50)
    robot.trigger_protective_stop()
    run(loop, clock, 2)
    assert loop.state == DriverState.PROTECTIVE_STOP
    assert "PROTECTIVE STOP" in loop.status().last_message
    n_calls = len(robot.servoj_calls)
    assert not loop.submit_target(kin.HOME_Q + 0.2).accepted
    ok, msg = loop.enable()
    assert not ok and "protective stop" in msg
    robot.clear_protective_stop()  # operator clears it on the pendant
    for _ in range(50):  # the loop must not resume on its own
        loop.cycle()
        loop.submit_target(kin.HOME_Q + 0.2)
        clock.t += DT
    assert loop.state == DriverState.PROTECTIVE_STOP
    assert len(robot.servoj_calls) == n_calls
    q_meas = robot.q.copy()
    ok, msg = loop.enable()
    assert ok, msg
    loop.cycle()
    np.testing.assert_allclose(robot.servoj_calls[-1][1], q_meas)  # holds, old target forgotten


def test_emergency_stop_refuses_enable_while_active():
    loop, robot, clock = make_loop()
    loop.enable()
    robot.trigger_emergency_stop()
    loop.cycle()
    assert loop.state == DriverState.EMERGENCY_STOP
    ok, msg = loop.enable()
    assert not ok and "emergency" in msg
    events = loop.pop_events()
    assert any(e.level == "error" and "EMERGENCY" in e.message for e in events)


def test_teach_mode_then_enable_does_not_jump_to_old_target():
    loop, robot, clock = make_loop()
    loop.enable()
    loop.submit_target(kin.HOME_Q + 0.1)
    run(loop, clock, 20)
    ok, _ = loop.set_teach_mode(True)
    assert ok and robot.teach and loop.state == DriverState.TEACH
    assert not loop.enable()[0]  # cannot arm while in freedrive
    moved = kin.HOME_Q + np.array([0.4, -0.3, 0.2, 0.1, 0.0, 0.5])
    robot.move_by_hand(moved)
    run(loop, clock, 5)
    np.testing.assert_allclose(loop.status().q_measured, moved)  # recorded while teaching
    assert loop.set_teach_mode(False)[0] and loop.state == DriverState.DISARMED
    assert loop.enable()[0]
    loop.cycle()
    np.testing.assert_allclose(robot.servoj_calls[-1][1], moved)


def test_enable_refused_outside_joint_limits():
    q = kin.HOME_Q.copy()
    q[1] = 0.3  # shoulder lift above the cell limit of 0
    loop, robot, clock = make_loop(robot=StandInRobot(q0=q, realtime=False))
    ok, msg = loop.enable()
    assert not ok and "shoulder_lift_joint=0.300" in msg


def test_lost_connection_stops_and_enable_reconnects():
    loop, robot, clock = make_loop()
    loop.enable()
    run(loop, clock, 3)
    robot.drop_connection(reachable=False)
    loop.cycle()
    assert loop.state == DriverState.DISCONNECTED and len(robot.servo_stops) == 1
    ok, msg = loop.enable()
    assert not ok and "reconnecting the receive interface failed" in msg and "Connection refused" in msg
    robot.reachable = True
    run(loop, clock, 5)
    assert loop.state == DriverState.DISCONNECTED  # nothing reconnects by itself
    assert robot.reconnect_calls == 1
    ok, msg = loop.enable()
    assert ok, msg
    assert loop.state == DriverState.RUNNING and robot.connected and robot.reconnect_calls == 2


def test_nan_joint_reading_stops_once():
    loop, robot, clock = make_loop()
    loop.enable()
    run(loop, clock, 3)
    loop.pop_events()
    robot.joint_fault = True
    run(loop, clock, 500)  # one second of a controller reporting NaN
    assert loop.state == DriverState.DISCONNECTED and len(robot.servo_stops) == 1
    events = loop.pop_events()
    assert [e.level for e in events] == ["error"], [e.message for e in events]
    assert "invalid joint position" in events[0].message


def test_stacked_targets_cannot_run_ahead_of_the_arm():
    """Ten +0.29 rad targets 10 ms apart: only the first is within reach of the
    commanded position; a target at the arm is then accepted."""
    loop, robot, clock = make_loop()
    loop.enable()
    verdicts = []
    for i in range(1, 11):
        target = kin.HOME_Q.copy()
        target[0] += 0.29 * i
        verdicts.append(loop.submit_target(target).accepted)
        run(loop, clock, 5)
    assert verdicts == [True] + [False] * 9
    here = np.array(robot.getActualQ())
    assert 0.0 < here[0] - kin.HOME_Q[0] < 0.29
    assert loop.submit_target(here).accepted
    run(loop, clock, 1000)
    assert np.max(np.abs(np.array(robot.getActualQ()) - here)) < 0.05  # stops, returns to "here"


def test_bad_config_refused():
    with pytest.raises(ValueError, match="control_rate_hz"):
        ServoConfig(control_rate_hz=1000.0)
    with pytest.raises(ValueError, match="lookahead_time"):
        ServoConfig(lookahead_time=0.5)
    with pytest.raises(ValueError, match="gain"):
        ServoConfig(gain=50.0)
    with pytest.raises(ValueError, match="speed"):
        GripperConfig(speed=0.0)


def test_thread_runs_follows_and_watchdog_stops():
    robot = StandInRobot(follow=1.0, realtime=True)
    robot.period_s = 1.0 / 250.0
    loop = ServoLoop(robot, robot, ServoConfig(control_rate_hz=250.0),
                     # 1 s: the 0.16 s move must end before the watchdog
                     # stops it even when the shared CPU slows the thread
                     # down (0.2 s failed about one run in six).
                     SafetyLimits(watchdog_timeout=1.0))
    loop.start()
    try:
        assert robot.watchdog_min_frequency == 10.0
        assert loop.enable()[0]
        target = kin.HOME_Q + 0.02
        assert loop.submit_target(target).accepted
        assert robot.stop_event.wait(timeout=5.0), "watchdog stop not seen within 5 s"
        # step_towards's documented overshoot bound a * dt^2 (5e-5 rad here).
        np.testing.assert_allclose(robot.q, target, atol=3.0 * (1 / 250.0) ** 2)
        assert loop.state == DriverState.WATCHDOG_STOP
        assert loop.status().cycles > 10
    finally:
        loop.shutdown(timeout_s=2.0)


def test_gripper_worker_sends_newest_command_and_normalises():
    gripper = StandInGripper()
    worker = GripperWorker(gripper, GripperConfig(speed=0.5, force=0.3, poll_period_s=0.01))
    worker.start()
    try:
        assert "NaN" in worker.command(float("nan"))
        assert worker.command(1.0, speed=1.0, force=0.0) == ""
        assert gripper.moved.wait(timeout=2.0)
        # speed capped at 0.5, force 0 -> configured 0.3
        assert gripper.moves[-1] == (255, round(0.5 * 255), round(0.3 * 255))
        assert "clamped" in worker.command(1.7)
    finally:
        worker.shutdown()
    assert gripper.position == 255


def test_repeated_loop_error_is_reported_once():
    robot = StandInRobot(follow=1.0, realtime=True)
    robot.period_s = 1.0 / 250.0
    calls = {"n": 0}
    broken = threading.Event()

    def failing_qd():
        calls["n"] += 1
        if calls["n"] > 20:
            broken.set()
        raise RuntimeError("RTDE read failed")

    loop = ServoLoop(robot, robot, ServoConfig(control_rate_hz=250.0), SafetyLimits())
    robot.getActualQd = failing_qd
    loop.start()
    try:
        assert broken.wait(timeout=5.0), "loop did not keep running after an error"
    finally:
        loop.shutdown(timeout_s=2.0)
    assert loop.state == DriverState.DISARMED  # shutdown
    errors = [e for e in loop.pop_events() if "RTDE read failed" in e.message]
    assert len(errors) == 1
