"""The MuJoCo simulator alone.

Built from the graph declared once in atk_bringup/graph_tools/graph.py (GRAPHS["sim"]);
`atk-graph sim` starts the same processes without the launch package.
Arguments: `ros2 launch atk_bringup sim.launch.py --show-args`.
"""
from atk_bringup.graph_tools.graph import GRAPHS
from atk_bringup.graph_tools.launch_builder import build_launch_description


def generate_launch_description():
    return build_launch_description(GRAPHS["sim"])
