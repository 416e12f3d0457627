"""Deploy a trained ATK policy: camera (or simulator), tracker, policy node, UR driver.

Built from the graph declared once in atk_bringup/graph_tools/graph.py (GRAPHS["deploy"]);
`atk-graph deploy` starts the same processes without the launch package.
Arguments: `ros2 launch atk_bringup deploy.launch.py --show-args`.
"""
from atk_bringup.graph_tools.graph import GRAPHS
from atk_bringup.graph_tools.launch_builder import build_launch_description


def generate_launch_description():
    return build_launch_description(GRAPHS["deploy"])
