"""Driver node over real DDS with the stand-in robot injected at the ur_rtde boundary.

Also: the opt-in hardware test (``-m hardware``, needs ATK_UR_IP).
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

from atk_bringup.driver import driver_node, driver_params
from atk_fixtures.ros import wait_until
from atk_perception import kinematics as kin

WAIT_S = 10.0  # generous: the CI machine is shared


def test_help_needs_no_ros(capsys):
    assert driver_params.COMMAND.main(["ur_driver_node", "--help"]) == 0
    out = capsys.readouterr().out
    assert "robot_ip" in out and "watchdog_timeout" in out and "~/enable" in out


def test_param_checks_quote_bad_values():
    from atk_perception.node_params import ParameterError

    by_name = {p.name: p for p in driver_node.PARAMS}
    assert driver_node.ParameterError is ParameterError  # what main() reports as a startup error
    with pytest.raises(ParameterError, match=r"lookahead_time: 0\.5 is above the maximum 0\.2"):
        by_name["lookahead_time"].check(0.5)
    with pytest.raises(ParameterError, match="6 values, got 5"):
        by_name["max_velocity"].check([1.0] * 5)
    assert by_name["max_velocity"].check([1.0] * 6) == [1.0] * 6
    with pytest.raises(ParameterError, match=r"max_velocity: 4\.0 \(in \[1\.0, 4\.0, 1\.0, 1\.0, 1\.0, 1\.0\]\) "
                       r"is above the maximum 3\.14159"):
        by_name["max_velocity"].check([1.0, 4.0, 1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ParameterError, match="nan"):
        by_name["max_target_step"].check(float("nan"))
    with pytest.raises(ParameterError, match="robot_ip: must not be empty"):
        by_name["robot_ip"].check("")
    with pytest.raises(ParameterError, match="'fast' is not a number"):
        by_name["gain"].check("fast")
    with pytest.raises(ParameterError, match="1.5 is not an integer"):
        by_name["gripper_port"].check(1.5)
    params = {p.name: p.default for p in driver_node.PARAMS}
    params["workspace_min"], params["workspace_max"] = [0.0, 0.0, 1.0], [1.0, 1.0, 0.5]
    with pytest.raises(driver_node.ParameterError, match="workspace_min"):
        driver_node.build_configs(params)


def test_parameter_file_builds_the_library_configs():
    """The file's values (tests/test_parameter_files.py checks them against the
    declared parameters) make valid safety and servo configs."""
    import yaml
    from pathlib import Path

    path = Path(driver_node.__file__).resolve().parents[2] / "config" / "ur_driver.yaml"
    values = yaml.safe_load(path.read_text())["ur_driver"]["ros__parameters"]
    limits, servo, _ = driver_node.build_configs(values)
    assert servo.control_rate_hz == 500.0 and limits.watchdog_timeout == 0.5


def test_target_conversion():
    names = list(reversed(kin.JOINT_NAMES))
    q, why = driver_node.target_from_joint_state(names, [6, 5, 4, 3, 2, 1])
    np.testing.assert_array_equal(q, [1, 2, 3, 4, 5, 6])
    assert driver_node.target_from_joint_state([], [0.0] * 6)[0] is not None
    assert "lacks" in driver_node.target_from_joint_state(names[:5], [0.0] * 5)[1]
    assert "positions" in driver_node.target_from_joint_state(names, [0.0] * 5)[1]


@pytest.fixture
def ros_graph():
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import MultiThreadedExecutor

    from atk_bringup.driver.ur_interface import URBackend
    from atk_bringup.driver.ur_stand_in import StandInGripper, StandInRobot

    # The 250 Hz servo thread, the stand-in and both nodes' executor threads
    # share one Python process here (on the robot PC the driver has its own):
    # with the default 5 ms GIL switch interval the servo thread ran about 10
    # of its 250 cycles per second and the arm crept towards its target.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    context = rclpy.Context()
    rclpy.init(context=context)
    robot = StandInRobot(follow=1.0, realtime=True)
    robot.period_s = 1.0 / 250.0
    gripper = StandInGripper()
    from rclpy.parameter import Parameter
    node = driver_node.DriverNode(
        backend=URBackend(robot, robot, gripper), context=context,
        # watchdog_timeout 2 s: here the DDS round trip runs beside the 250 Hz
        # servo thread and the stand-in in one Python process, and target
        # callbacks were seen 0.5-1.7 s apart, tripping a 0.5 s watchdog again
        # and again. The watchdog's own timing (within two control periods) is
        # tested on ServoLoop with an injected clock in test_servo_loop.py.
        parameter_overrides=[Parameter("control_rate_hz", value=250.0),
                             Parameter("watchdog_timeout", value=2.0),
                             # The same DDS delays: a target's age on arrival
                             # includes them. A 60 s old target is still refused.
                             Parameter("max_target_age", value=5.0),
                             Parameter("joint_state_rate_hz", value=100.0),
                             Parameter("gripper_raw_open", value=0),
                             Parameter("gripper_raw_closed", value=255)])
    client = rclpy.create_node("driver_test_client", context=context)
    executor = MultiThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        yield node, client, robot, gripper
    finally:
        executor.shutdown()
        node.destroy_node()
        client.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(timeout=5.0)
        sys.setswitchinterval(switch)


def test_node_enable_publishes_and_follows(ros_graph):
    from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState
    from std_srvs.srv import SetBool
    from diagnostic_msgs.msg import DiagnosticArray

    from atk_msgs.msg import GripperCommand

    node, client, robot, gripper = ros_graph
    qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1, reliability=QoSReliabilityPolicy.RELIABLE)
    pub_target = client.create_publisher(JointState, "joint_target", qos)
    pub_grip = client.create_publisher(GripperCommand, "gripper_command", qos)
    latest: dict[str, JointState] = {}
    got_js = threading.Event()
    diags: list[DiagnosticArray] = []

    def on_js(msg):
        latest["js"] = msg
        got_js.set()

    client.create_subscription(JointState, "joint_states", on_js, qos_profile_sensor_data)
    client.create_subscription(DiagnosticArray, "diagnostics", diags.append, 10)
    enable = client.create_client(SetBool, "ur_driver/enable")
    assert enable.wait_for_service(timeout_sec=WAIT_S), "ur_driver/enable not available"
    assert got_js.wait(WAIT_S), "no joint_states"
    js = latest["js"]
    assert list(js.name) == [*kin.JOINT_NAMES, "gripper"]
    np.testing.assert_allclose(js.position[:6], kin.HOME_Q)

    wait_until(lambda: pub_target.get_subscription_count() > 0, WAIT_S, "driver subscribed to joint_target")
    target = kin.HOME_Q + np.array([0.05, -0.05, 0.05, 0.0, 0.05, 0.1])

    def send(q):
        msg = JointState()
        msg.header.stamp = client.get_clock().now().to_msg()
        msg.name = list(kin.JOINT_NAMES)
        msg.position = [float(v) for v in q]
        pub_target.publish(msg)

    # Disarmed: the target is ignored, the stand-in never sees servoJ.
    send(target)
    wait_until(lambda: node.servo_loop.status().refused_targets >= 1, WAIT_S, "refusal while disarmed")
    assert robot.servoj_calls == []

    fut = enable.call_async(SetBool.Request(data=True))
    wait_until(fut.done, WAIT_S, "enable response")
    assert fut.result().success, fut.result().message

    def reached():
        send(target)  # keeps the watchdog fed, as a policy would
        return np.max(np.abs(np.array(latest["js"].position[:6]) - target)) < 1e-3

    wait_until(reached, WAIT_S, "joint_states to reach the target")

    # NaN target: refused, the arm stays.
    refused = node.servo_loop.status().refused_targets
    send(np.full(6, np.nan))
    wait_until(lambda: node.servo_loop.status().refused_targets > refused, WAIT_S, "NaN refusal")
    np.testing.assert_allclose(robot.q, target, atol=1e-3)

    wait_until(lambda: pub_grip.get_subscription_count() > 0, WAIT_S, "driver subscribed to gripper_command")
    cmd = GripperCommand(position=1.0, speed=0.0, force=0.0)
    pub_grip.publish(cmd)
    assert gripper.moved.wait(WAIT_S), "gripper command not carried out"
    wait_until(lambda: latest["js"].position[6] == pytest.approx(1.0), WAIT_S, "gripper joint state at 1")

    # Stop sending: the watchdog stops the arm and diagnostics say so.
    assert robot.stop_event.wait(WAIT_S), "watchdog did not stop the arm"
    wait_until(lambda: any(s.level == s.WARN and "watchdog" in s.message
                          for d in diags for s in d.status), WAIT_S, "watchdog diagnostics")

    # Teach mode over the service: freedrive on, then off leaves it disarmed.
    teach = client.create_client(SetBool, "ur_driver/teach_mode")
    assert teach.wait_for_service(timeout_sec=WAIT_S), "ur_driver/teach_mode not available"
    fut = teach.call_async(SetBool.Request(data=True))
    wait_until(fut.done, WAIT_S, "teach_mode response")
    assert fut.result().success and robot.teach
    fut = teach.call_async(SetBool.Request(data=False))
    wait_until(fut.done, WAIT_S, "teach_mode off response")
    assert fut.result().success and not robot.teach
    assert node.servo_loop.state.value == "disarmed"


def _target_publisher(client):
    from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import JointState

    qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1, reliability=QoSReliabilityPolicy.RELIABLE)
    pub = client.create_publisher(JointState, "joint_target", qos)
    wait_until(lambda: pub.get_subscription_count() > 0, WAIT_S, "driver subscribed to joint_target")

    def send(q, names=None, age_s=0.0):
        from rclpy.duration import Duration

        msg = JointState()
        msg.header.stamp = (client.get_clock().now() - Duration(nanoseconds=int(age_s * 1e9))).to_msg()
        msg.name = list(kin.JOINT_NAMES) if names is None else list(names)
        msg.position = [float(v) for v in q]
        pub.publish(msg)

    return send


def _call(client, name: str, data: bool):
    from std_srvs.srv import SetBool

    cli = client.create_client(SetBool, name)
    assert cli.wait_for_service(timeout_sec=WAIT_S), f"{name} not available"
    fut = cli.call_async(SetBool.Request(data=data))
    wait_until(fut.done, WAIT_S, f"{name} response")
    return fut.result()


def _enabled(ros_graph):
    node, client, robot, _ = ros_graph
    send = _target_publisher(client)
    res = _call(client, "ur_driver/enable", True)
    assert res.success, res.message
    return node, client, robot, send


def test_node_stacked_targets_cannot_run_ahead_of_the_arm(ros_graph):
    """Issue 15 defect 1: ten +0.29 rad targets, each sent once the last was
    handled. Before: all accepted (2.9 rad), then "stay here" refused as a
    1.3 rad jump while the arm kept going. Now a target is limited against the
    commanded position, so the arm never runs ahead and "stay here" holds."""
    node, client, robot, send = _enabled(ros_graph)
    loop = node.servo_loop
    verdicts = []
    submit = loop.submit_target
    loop.submit_target = lambda q: verdicts.append(submit(q)) or verdicts[-1]  # observe, not replace
    start = np.array(robot.getActualQ())
    for i in range(1, 11):
        target = start.copy()
        target[0] += 0.29 * i
        send(target)
        wait_until(lambda: len(verdicts) == i, WAIT_S, f"target {i} handled")
    assert verdicts[0].accepted
    assert sum(v.accepted for v in verdicts) < 10, [v.reason for v in verdicts]
    here = np.array(robot.getActualQ())
    send(here)  # "stay here"
    wait_until(lambda: len(verdicts) == 11, WAIT_S, "'stay here' handled")
    assert verdicts[-1].accepted, verdicts[-1].reason

    def settled_here():
        send(here)  # repeated as a policy would, feeding the watchdog
        return (np.max(np.abs(np.array(robot.getActualQ()) - here)) < 1e-3
                and np.max(np.abs(robot.getActualQd())) < 1e-3)

    wait_until(settled_here, WAIT_S, "the arm to settle at the 'stay here' target")
    assert all(v.accepted for v in verdicts[10:]), [v.reason for v in verdicts[10:]]
    furthest = max(call[1][0] for call in list(robot.servoj_calls)) - start[0]
    assert furthest < 2 * 0.3, f"arm was commanded {furthest:.3f} rad ahead"


def test_node_nan_joint_reading_reported_once(ros_graph):
    """Issue 15 defect 2: a controller reporting NaN joints stopped the arm but
    logged an ERROR every control period (80 lines in 0.4 s). Now once."""
    from rcl_interfaces.msg import Log
    from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    node, client, robot, _ = _enabled(ros_graph)
    logs: list[str] = []
    qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1000, reliability=QoSReliabilityPolicy.RELIABLE)
    client.create_subscription(Log, "/rosout", lambda m: logs.append(m.msg) if m.name == "ur_driver" else None,
                               qos)
    js_count = [0]
    client.create_subscription(JointState, "joint_states", lambda m: js_count.__setitem__(0, js_count[0] + 1),
                               qos_profile_sensor_data)
    robot.joint_fault = True
    wait_until(lambda: node.servo_loop.state.value == "disconnected", WAIT_S, "DISCONNECTED after NaN joints")
    cycles = node.servo_loop.status().cycles
    wait_until(lambda: node.servo_loop.status().cycles > cycles + 200, WAIT_S, "200 more control periods")
    seen = js_count[0]
    # joint_states is published just before the node drains the loop's events
    # into the log: three more messages mean every event so far was logged.
    wait_until(lambda: js_count[0] >= seen + 3, WAIT_S, "three more joint_states")
    res = _call(client, "ur_driver/enable", False)  # logs a marker line after them
    assert res.success and "already stopped" in res.message
    wait_until(lambda: any("already stopped" in m for m in logs), WAIT_S, "the marker log line on /rosout")
    errors = [m for m in logs if "invalid joint position" in m]
    assert len(errors) == 1, f"{len(errors)} log lines about the NaN reading"
    assert len(robot.servo_stops) == 1


def test_node_refuses_joint_named_twice(ros_graph):
    """Issue 15 risk: a target naming a joint twice was accepted with the second value."""
    node, client, robot, send = _enabled(ros_graph)
    refused = node.servo_loop.status().refused_targets
    names = [*kin.JOINT_NAMES, kin.JOINT_NAMES[0]]
    send([*kin.HOME_Q, kin.HOME_Q[0] + 0.2], names=names)
    wait_until(lambda: node.servo_loop.status().refused_targets > refused, WAIT_S, "refusal of a duplicate name")
    assert "more than once" in node.servo_loop.status().last_message
    assert node.servo_loop.status().accepted_targets == 0


def test_node_refuses_target_far_outside_limits(ros_graph):
    """Issue 15 risk: a target 1e6 rad away was clamped into the limits and
    executed (with the arm near that limit the clamped target was a small step)."""
    near = kin.HOME_Q.copy()
    near[5] = 2 * np.pi - 0.05  # wrist 3 close to its +2 pi limit
    with ros_graph[2].lock:
        ros_graph[2].q = near.copy()
    node, client, robot, send = _enabled(ros_graph)
    refused = node.servo_loop.status().refused_targets
    q = near.copy()
    q[5] = 1e6
    send(q)
    wait_until(lambda: node.servo_loop.status().refused_targets > refused, WAIT_S, "refusal of a 1e6 rad target")
    st = node.servo_loop.status()
    assert st.clamped_targets == 0 and st.accepted_targets == 0 and "wrist_3_joint" in st.last_message
    np.testing.assert_allclose(st.q_command, near, atol=1e-9)


def test_node_refuses_stale_target(ros_graph):
    """Issue 15 risk: a target stamped 60 s in the past was executed (max_target_age)."""
    node, client, robot, send = _enabled(ros_graph)
    refused = node.servo_loop.status().refused_targets
    send(kin.HOME_Q + 0.05, age_s=60.0)
    wait_until(lambda: node.servo_loop.status().refused_targets > refused, WAIT_S, "refusal of a stale target")
    st = node.servo_loop.status()
    assert "old" in st.last_message and "max_target_age" in st.last_message
    assert st.accepted_targets == 0
    send(kin.HOME_Q + 0.05)  # a fresh one is used
    wait_until(lambda: node.servo_loop.status().accepted_targets == 1, WAIT_S, "fresh target accepted")


def test_node_enable_reconnects_after_connection_loss(ros_graph):
    """Issue 15 risk: after the connection was lost ~/enable was refused until
    the node restarted. Now ~/enable reconnects (and says why when it cannot)."""
    node, client, robot, _ = _enabled(ros_graph)
    robot.drop_connection(reachable=False)
    wait_until(lambda: node.servo_loop.state.value == "disconnected", WAIT_S, "DISCONNECTED")
    res = _call(client, "ur_driver/enable", True)
    assert not res.success and "reconnecting" in res.message and "Connection refused" in res.message
    robot.reachable = True
    assert node.servo_loop.state.value == "disconnected"  # nothing reconnects by itself
    res = _call(client, "ur_driver/enable", True)
    assert res.success, res.message
    assert node.servo_loop.state.value == "running" and robot.connected
    assert robot.reconnect_calls == 2


def test_bad_parameter_refused_with_message(ros_graph):
    from rclpy.parameter import Parameter

    from atk_bringup.driver.ur_interface import URBackend
    from atk_bringup.driver.ur_stand_in import StandInRobot

    node, client, _, _ = ros_graph
    robot = StandInRobot(realtime=False)
    with pytest.raises(driver_node.ParameterError, match="max_velocity"):
        driver_node.DriverNode(backend=URBackend(robot, robot, None), context=node.context,
                               parameter_overrides=[Parameter("max_velocity", value=[1.0] * 5)])


@pytest.mark.hardware
@pytest.mark.skipif("ATK_UR_IP" not in os.environ, reason="set ATK_UR_IP to a UR controller or URSim")
def test_real_controller_holds_position():
    """Against a real controller or URSim: connect, enable, hold still for 1 s, disable.

    The arm is only ever commanded to where it already is.
    """
    from atk_bringup.driver.safety import SafetyLimits
    from atk_bringup.driver.servo_loop import DriverState, ServoConfig, ServoLoop
    from atk_bringup.driver.ur_interface import connect_ur

    receive, control = connect_ur(os.environ["ATK_UR_IP"], 500.0)
    q_start = np.array(receive.getActualQ())
    lim = np.stack([q_start - 1.0, q_start + 1.0], axis=1).clip(-2 * np.pi, 2 * np.pi)
    loop = ServoLoop(receive, control, ServoConfig(), SafetyLimits(joint_limits=lim, watchdog_timeout=2.0,
                                                                   workspace_min=[-2, -2, -2],
                                                                   workspace_max=[2, 2, 2]))
    loop.start()
    try:
        ok, msg = loop.enable()
        assert ok, msg
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert loop.submit_target(q_start).accepted
            time.sleep(0.05)  # a 20 Hz "policy"
        assert loop.state == DriverState.RUNNING
        np.testing.assert_allclose(receive.getActualQ(), q_start, atol=2e-3)
        assert loop.status().overruns < 10
    finally:
        loop.disable()
        loop.shutdown()
        control.stopScript()
        control.disconnect()
        receive.disconnect()


def test_unreachable_controller_exits_with_operator_message():
    import subprocess
    import sys

    # Nothing listens on the RTDE port of localhost: connection refused at once.
    proc = subprocess.run([sys.executable, "-m", "atk_bringup.driver.driver_node", "--ros-args",
                           "-p", "robot_ip:=127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "could not connect to the UR controller at '127.0.0.1'" in proc.stderr
    assert "Remote Control" in proc.stderr


def test_robotiq_socket_client_speaks_the_urcap_protocol():
    """Our client against a local server that answers like the Robotiq URCap."""
    import socket

    from atk_bringup.driver.ur_interface import HardwareError, RobotiqSocketGripper

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    state = {"STA": 0, "POS": 0, "FLT": 0}
    received: list[str] = []

    def serve():
        conn, _ = server.accept()
        with conn, conn.makefile("rw", newline="\n") as f:
            for line in f:
                line = line.strip()
                received.append(line)
                words = line.split()
                if words[0] == "SET":
                    pairs = dict(zip(words[1::2], map(int, words[2::2])))
                    if pairs.get("ACT") == 1:
                        state["STA"] = 3
                    if "POS" in pairs and pairs.get("GTO") == 1:
                        state["POS"] = min(pairs["POS"], 228)  # fingers stop on an object
                    f.write("ack\n")
                elif words[0] == "GET":
                    f.write(f"{words[1]} {state[words[1]]}\n")
                f.flush()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    gripper = RobotiqSocketGripper("127.0.0.1", port, timeout_s=5.0)
    try:
        assert not gripper.is_active()
        gripper.activate(timeout_s=5.0)
        assert gripper.is_active()
        gripper.move(300, 128, -5)  # clipped to 0..255
        assert received[-1] == "SET POS 255 SPE 128 FOR 0 GTO 1"
        assert gripper.get_current_position() == 228
    finally:
        gripper.disconnect()
        server.close()
    thread.join(timeout=5.0)
    with pytest.raises(HardwareError, match="could not reach"):
        RobotiqSocketGripper("127.0.0.1", port, timeout_s=1.0)
