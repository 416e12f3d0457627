"""Sim node over real DDS: reset service, images, camera info, joint states,
a joint target that moves the arm, the latched episode status, /clock, and
the expert mode."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from atk_fixtures.ros import OutputWatcher, wait_until
from atk_perception import kinematics as kin
from atk_bringup import sim_params

WAIT_S = 20.0  # generous: the CI machine is shared and EGL start-up is slow


def test_help_needs_no_ros(capsys):
    assert sim_params.COMMAND.main(["sim_node", "--help"]) == 0
    out = capsys.readouterr().out
    assert "reset_episode" in out and "realtime" in out and "expert" in out


def test_param_checks_quote_bad_values():
    from atk_perception.node_params import ParameterError

    by_name = {p.name: p for p in sim_params.PARAMS}
    with pytest.raises(ParameterError, match="'cook'"):
        by_name["task"].check("cook")
    with pytest.raises(ParameterError, match="DARK"):
        by_name["perturbations"].check(["RP", "DARK"])
    assert by_name["perturbations"].check([""]) == [""]
    assert by_name["perturbations"].check(["RP", "LIGHT"]) == ["RP", "LIGHT"]
    with pytest.raises(ParameterError, match=r"width: 8 is below the minimum 16"):
        by_name["width"].check(8)
    with pytest.raises(ParameterError, match="'yes'"):
        by_name["realtime"].check("yes")
    with pytest.raises(ParameterError, match="frame_id: must not be empty"):
        by_name["frame_id"].check("")
    with pytest.raises(ParameterError, match="'ten' is not a number"):
        by_name["control_hz"].check("ten")
    with pytest.raises(ParameterError, match="640.0 is not an integer"):
        by_name["width"].check(640.0)


@pytest.fixture
def graph(request):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    params = {"width": 160, "height": 120, "task": "clock_button", **getattr(request, "param", {})}
    overrides = [Parameter(name, value=value) for name, value in params.items()]
    context = rclpy.Context()
    rclpy.init(context=context)
    from atk_bringup.sim_node import SimNode

    node = SimNode(context=context, parameter_overrides=overrides)
    client = rclpy.create_node("sim_test_client", context=context)
    executor = MultiThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        yield node, client
    finally:
        executor.shutdown()
        node.destroy_node()
        client.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(timeout=5.0)


def _collect(client):
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from atk_msgs.msg import EpisodeStatus

    latest: dict[str, object] = {}
    events = {k: threading.Event() for k in ("rgb", "depth", "info", "js", "episode", "clock")}

    def keep(key):
        def cb(msg):
            latest[key] = msg
            events[key].set()
        return cb

    client.create_subscription(Image, "camera/color/image_raw", keep("rgb"), qos_profile_sensor_data)
    client.create_subscription(Image, "camera/depth/image_raw", keep("depth"), qos_profile_sensor_data)
    client.create_subscription(CameraInfo, "camera/color/camera_info", keep("info"), qos_profile_sensor_data)
    client.create_subscription(JointState, "joint_states", keep("js"), qos_profile_sensor_data)
    latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    client.create_subscription(EpisodeStatus, "sim/episode", keep("episode"), latched)
    client.create_subscription(Clock, "/clock", keep("clock"),
                               QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT))
    return latest, events


def test_backgrounds_parameter_is_checked_at_start(tmp_path):
    """The sim node's `backgrounds` (RB with the operator's photographs) is refused by name at
    construction when the folder holds no photographs or one cannot be read, and reaches the
    simulator when it holds readable ones."""
    rclpy = pytest.importorskip("rclpy")
    import cv2
    from rclpy.parameter import Parameter

    from atk_bringup.sim_node import SimNode
    from atk_perception.node_params import ParameterError

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ParameterError, match="no photographs"):
            SimNode(context=context, parameter_overrides=[Parameter("backgrounds", value=str(tmp_path))])
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "lab.png").write_bytes(b"not a png")   # listed at construction, read once by the simulator
        with pytest.raises(ParameterError, match="cannot read"):
            SimNode(context=context, parameter_overrides=[Parameter("backgrounds", value=str(broken)),
                                                          Parameter("width", value=160),
                                                          Parameter("height", value=120)])
        cv2.imwrite(str(tmp_path / "lab.jpg"), np.zeros((32, 32, 3), np.uint8))
        node = SimNode(context=context, parameter_overrides=[Parameter("backgrounds", value=str(tmp_path)),
                                                             Parameter("width", value=160),
                                                             Parameter("height", value=120)])
        try:
            assert node._cfg.backgrounds == str(tmp_path)
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_node_publishes_resets_and_follows_targets(graph):
    from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import JointState

    from atk_msgs.msg import GripperCommand
    from atk_msgs.srv import ResetEpisode

    node, client = graph
    latest, events = _collect(client)
    for key, ev in events.items():
        assert ev.wait(WAIT_S), f"nothing on {key}"
    rgb, depth, info, js = latest["rgb"], latest["depth"], latest["info"], latest["js"]
    assert (rgb.width, rgb.height, rgb.encoding) == (160, 120, "rgb8") and len(rgb.data) == 160 * 120 * 3
    assert depth.encoding == "16UC1" and len(depth.data) == 160 * 120 * 2
    depth_mm = np.frombuffer(bytes(depth.data), np.uint16)
    assert 300 < np.median(depth_mm) < 2000   # table about 0.5-1 m from the camera
    fy = 60.0 / np.tan(np.deg2rad(45.0) / 2)
    np.testing.assert_allclose(info.k, [fy, 0, 79.5, 0, fy, 59.5, 0, 0, 1])
    assert list(js.name) == [*kin.JOINT_NAMES, "gripper"]
    np.testing.assert_allclose(js.position[:6], kin.HOME_Q, atol=0.01)
    assert latest["episode"].task == "clock_button"

    # reset service: new task and seed, status follows; bad task refused
    reset = client.create_client(ResetEpisode, "sim/reset_episode")
    assert reset.wait_for_service(timeout_sec=WAIT_S), "sim/reset_episode not available"
    fut = reset.call_async(ResetEpisode.Request(task="sushi", seed=3, perturbations=["RP", "RB"]))
    wait_until(fut.done, WAIT_S, "reset response")
    assert fut.result().success, fut.result().message
    wait_until(lambda: latest["episode"].task == "sushi" and latest["episode"].seed == 3, WAIT_S,
              "sim/episode of the new episode")
    assert list(latest["episode"].perturbations) == ["RP", "RB"]
    fut = reset.call_async(ResetEpisode.Request(task="cook", seed=0))
    wait_until(fut.done, WAIT_S, "reset response to a bad task")
    assert not fut.result().success and "sushi" in fut.result().message

    # a joint target moves the arm there; a gripper command closes it
    qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1, reliability=QoSReliabilityPolicy.RELIABLE)
    pub = client.create_publisher(JointState, "joint_target", qos)
    pub_grip = client.create_publisher(GripperCommand, "gripper_command", qos)
    wait_until(lambda: pub.get_subscription_count() > 0 and pub_grip.get_subscription_count() > 0, WAIT_S,
              "sim subscribed to joint_target and gripper_command")
    target = kin.HOME_Q + np.array([0.2, -0.1, 0.1, 0.0, 0.1, 0.3])
    pub.publish(JointState(name=list(kin.JOINT_NAMES), position=[float(v) for v in target]))
    pub_grip.publish(GripperCommand(position=1.0, speed=0.5, force=0.5))
    wait_until(lambda: np.max(np.abs(np.array(latest["js"].position[:6]) - target)) < 0.01, WAIT_S,
              "joint_states to reach the target")
    wait_until(lambda: latest["js"].position[6] > 0.9, WAIT_S, "gripper closed")
    # /clock advances with the simulation
    t0 = latest["clock"].clock.sec + latest["clock"].clock.nanosec * 1e-9
    wait_until(lambda: latest["clock"].clock.sec + latest["clock"].clock.nanosec * 1e-9 > t0 + 0.25, WAIT_S,
              "/clock to advance")


@pytest.mark.parametrize("graph", [{"expert": True, "realtime": False, "publish_depth": False}],
                         indirect=True)
def test_expert_mode_succeeds_and_publishes_actions(graph):
    from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import JointState

    node, client = graph
    latest, events = _collect(client)
    targets: list[JointState] = []
    qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1, reliability=QoSReliabilityPolicy.RELIABLE)
    client.create_subscription(JointState, "joint_target", targets.append, qos)
    assert events["episode"].wait(WAIT_S), "no sim/episode"
    wait_until(lambda: "episode" in latest and latest["episode"].done, WAIT_S * 3, "the expert episode to end")
    assert latest["episode"].success, latest["episode"].message
    assert targets and list(targets[-1].name) == list(kin.JOINT_NAMES)


def test_stamps_of_accumulated_sim_time_never_go_back():
    """t built from 0.1 s steps (as the sim's clock is) gives monotonic stamps
    equal to t to the nanosecond; 2.9999999999999996 s is 3 s, not 2 s."""
    from atk_bringup.sim_node import stamp_parts

    t, last = 0.0, -1
    for _ in range(1000):
        t += 0.1
        sec, ns = stamp_parts(t)
        assert 0 <= ns < 1_000_000_000
        total = sec * 1_000_000_000 + ns
        assert total > last and abs(total - t * 1e9) < 2
        last = total
    assert stamp_parts(2.9999999999999996) == (3, 0)


STOP_WAIT_S = 20.0  # SIGINT -> exit: the stepper finishes its tick and closes the renderer


@pytest.mark.parametrize("sigints", [1, 2])
def test_clean_sigint_logs_no_error(sigints):
    """Ctrl-C while the simulator steps ends the process with code 0 and no error.

    The stepping thread used to publish once more after rclpy's signal handler
    had shut the context down ("simulation step failed: publisher's context is
    invalid" on every clean Ctrl-C under ros2 launch and atk-graph). Two
    SIGINTs are what a node gets under `ros2 launch` (the terminal's process
    group and launch itself); the second one used to abandon the stepper's
    join and crash the interpreter on exit (-11). 640x480 with depth: the
    renders that keep the stepper inside a publish when the signal comes."""
    import os
    import signal
    import subprocess

    pytest.importorskip("rclpy")
    from atk_bringup.graph_tools.graph import find_node_executable

    exe = find_node_executable("atk_bringup", "sim_node")
    proc = subprocess.Popen([exe, "--ros-args", "-p", "width:=640", "-p", "height:=480", "-p", "task:=sushi"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    watcher = OutputWatcher(proc, "simulating task")
    started, reader = watcher.seen, watcher.thread
    try:
        assert started.wait(60.0), "sim_node did not report 'simulating task' within 60 s:\n" + watcher.text
        # let it step (and publish) for a few control periods: the signal then
        # lands while the stepper is busy, as an operator's Ctrl-C does
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and proc.poll() is None:
            reader.join(timeout=0.05)  # bounded wait on the reader, not a synchronising sleep
        for _ in range(sigints):
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=STOP_WAIT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5.0)
    out = watcher.text
    assert code == 0, out
    assert "ERROR" not in out and "Traceback" not in out and "simulation step failed" not in out, out
