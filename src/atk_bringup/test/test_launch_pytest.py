"""deploy.launch.py under the real launch package (launch_pytest): the simulated graph with a model.

The deploy graph comes up with a model the tracker can follow (its template
is the simulator's own first frame of task sushi seed 0, its keypoints
corners there): every node starts, keypoints and joint targets flow, and
when a required node dies the launch stops the others (on_exit, graph.py's
exit policy).

Runs where ``launch``, ``launch_ros`` and ``launch_pytest`` are installed (a
ROS 2 install); skipped elsewhere, e.g. on a pip-only install from PyPI
wheels, where test_launch_structure.py checks the same launch files against
graph.py without launch.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

launch_pytest = pytest.importorskip(
    "launch_pytest", reason="launch_pytest is not installed (pip-only ROS 2 has no launch); "
    "test_launch_structure.py checks the launch files against graph.py instead")
launch = pytest.importorskip("launch", reason="launch is not installed")
pytest.importorskip("launch_ros", reason="launch_ros is not installed")
pytest.importorskip("psutil", reason="psutil (a dependency of launch) is not installed")


def _launch_pytest_collects_here() -> bool:
    """launch_pytest <= 3.7.1 reads a fixture attribute that pytest 8.4 removed (collection then errors)."""
    import inspect

    import launch_pytest.plugin

    version = tuple(int(v) for v in pytest.__version__.split(".")[:2] if v.isdigit())
    return not (version >= (8, 4) and "_pytestfixturefunction" in inspect.getsource(launch_pytest.plugin))


if not _launch_pytest_collects_here():
    pytest.skip(f"this launch_pytest cannot collect tests under pytest {pytest.__version__} (it needs < 8.4)",
                allow_module_level=True)

import rclpy  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

LAUNCH_FILE = Path(__file__).resolve().parent.parent / "launch" / "deploy.launch.py"
UP_TIMEOUT_S = 180.0   # simulator start (model compile, EGL) + tracker transfer on a loaded machine
STOP_TIMEOUT_S = 30.0  # the launch's SIGINT -> SIGTERM (5 s) -> SIGKILL escalation fits in here
NODES = ("sim_node", "tracker_node", "policy_node")


def _model(model_dir: Path) -> Path:
    """A policy over 6 corners of the simulator's first sushi frame (seed 0, 320x240): the
    template is that frame, so the tracker's transfer finds them; the weights are random."""
    import cv2
    import torch

    from atk_bringup.sim.env import SimConfig, SimEnv
    from atk_policy.artifact import save_policy
    from atk_policy.config import ModelConfig
    from atk_policy.model import KeypointPolicy, Normalisation

    env = SimEnv(SimConfig(width=320, height=240, render_depth=False))
    try:
        rgb = env.reset(task="sushi", seed=0).rgb
    finally:
        env.close()
    corners = cv2.goodFeaturesToTrack(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 30, 0.01, 10).reshape(-1, 2)
    from atk_perception import kinematics as kin

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # Statistics of a robot that stays near the home pose the simulator starts in: the random
    # network's joint steps are then milliradians, within the policy's max_joint_step_rad (a random
    # model with unit statistics asked for 0.85 rad and was refused: FAULT, never RUNNING).
    proprio = (np.concatenate([kin.HOME_Q, [0.0]]) + 0.01 * rng.normal(size=(16, 7))).astype(np.float32)
    actions = (proprio + 1e-3 * rng.normal(size=(16, 7))).astype(np.float32)
    norm = Normalisation.from_data(proprio, actions)
    policy = KeypointPolicy(6, (320, 240), ModelConfig(hidden=(8,)), norm, canonical_xy=corners[:6])
    return save_policy(model_dir, policy, rgb, support_xy=corners[6:])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _model(tmp_path_factory.mktemp("launch") / "model")


@launch_pytest.fixture
def deploy_sim(model_dir):
    # sim_width/sim_height are left at auto: the simulator renders at the model's 320x240
    return launch.LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                                 launch_arguments={"sim": "true", "model": str(model_dir)}.items()),
        launch_pytest.actions.ReadyToTest(),
    ])


def _launched_nodes() -> dict[str, int]:
    """pid of each deploy node the launch (in this process) started and that still runs."""
    import psutil

    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        for name in NODES:
            if name in cmd and child.status() != psutil.STATUS_ZOMBIE:
                found[name] = child.pid
    return found


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)  # polling processes with a deadline, not synchronising on time


@pytest.mark.slow
@pytest.mark.launch(fixture=deploy_sim)
def test_deploy_in_sim_with_a_model_tracks_and_acts():
    from atk_msgs.msg import KeypointArray, PolicyStatus
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    _wait(lambda: set(_launched_nodes()) == set(NODES), UP_TIMEOUT_S, f"the nodes {NODES} to start")
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("launch_pytest_probe", context=context)
    got = {"keypoints": threading.Event(), "tracking": threading.Event(), "running": threading.Event(),
           "joint_target": threading.Event()}

    def on_keypoints(msg: KeypointArray) -> None:
        got["keypoints"].set()
        if msg.state == KeypointArray.STATE_TRACKING:
            got["tracking"].set()

    def on_status(msg: PolicyStatus) -> None:
        if msg.state == PolicyStatus.STATE_RUNNING:
            got["running"].set()

    node.create_subscription(KeypointArray, "keypoints", on_keypoints, qos_profile_sensor_data)
    node.create_subscription(PolicyStatus, "policy/status", on_status, 10)
    node.create_subscription(JointState, "joint_target", lambda m: got["joint_target"].set(), 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        for what in ("keypoints", "tracking", "running", "joint_target"):
            assert got[what].wait(UP_TIMEOUT_S), f"no {what} from the launched graph within {UP_TIMEOUT_S} s"
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        thread.join(timeout=5)


@pytest.mark.slow
@pytest.mark.launch(fixture=deploy_sim)
def test_a_dead_required_node_stops_the_graph():
    """Killing the tracker (a required node) makes the launch stop the simulator and the policy."""
    nodes = _wait(lambda: (lambda n: n if set(n) == set(NODES) else None)(_launched_nodes()), UP_TIMEOUT_S,
                  f"the nodes {NODES} to start")
    os.kill(nodes["tracker_node"], signal.SIGKILL)
    _wait(lambda: not _launched_nodes(), STOP_TIMEOUT_S, "the launch to stop sim_node and policy_node after the "
          "tracker died")
