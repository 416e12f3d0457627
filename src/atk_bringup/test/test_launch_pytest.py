"""deploy.launch.py under the real launch package (launch_pytest): the simulated graph comes up.

Runs where ``launch``, ``launch_ros`` and ``launch_pytest`` are installed (a
ROS 2 install); skipped elsewhere, e.g. on a pip-only install from PyPI
wheels, where test_launch_structure.py checks the same launch files against
graph.py without launch.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

launch_pytest = pytest.importorskip(
    "launch_pytest", reason="launch_pytest is not installed (pip-only ROS 2 has no launch); "
    "test_launch_structure.py checks the launch files against graph.py instead")
launch = pytest.importorskip("launch", reason="launch is not installed")
pytest.importorskip("launch_ros", reason="launch_ros is not installed")


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

from atk_fixtures.models import save_untrained_policy  # noqa: E402

LAUNCH_FILE = Path(__file__).resolve().parent.parent / "launch" / "deploy.launch.py"
UP_TIMEOUT_S = 120.0  # simulator start (model compile, EGL) + tracker transfer on a loaded machine


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    return save_untrained_policy(tmp_path_factory.mktemp("launch") / "model", (640, 480),
                                 canonical_xy=rng.uniform((100, 100), (540, 380), (4, 2)),
                                 template=rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))


@launch_pytest.fixture
def deploy_sim(model_dir):
    return launch.LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                                 launch_arguments={"sim": "true", "model": str(model_dir)}.items()),
        launch_pytest.actions.ReadyToTest(),
    ])


@pytest.mark.slow
@pytest.mark.launch(fixture=deploy_sim)
def test_deploy_in_sim_publishes_keypoints_and_policy_status():
    from atk_msgs.msg import KeypointArray, PolicyStatus
    from rclpy.qos import qos_profile_sensor_data

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("launch_pytest_probe", context=context)
    got = {"keypoints": threading.Event(), "status": threading.Event()}
    node.create_subscription(KeypointArray, "keypoints", lambda m: got["keypoints"].set(), qos_profile_sensor_data)
    node.create_subscription(PolicyStatus, "policy/status", lambda m: got["status"].set(), 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        assert got["status"].wait(UP_TIMEOUT_S), "no policy/status from the launched policy node"
        assert got["keypoints"].wait(UP_TIMEOUT_S), "no keypoints from the launched tracker"
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        thread.join(timeout=5)
