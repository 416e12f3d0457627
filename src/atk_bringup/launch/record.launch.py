"""Record demonstrations to rosbag2 bags: camera (or simulator), driver, recorder node or ros2 bag record.

Built from the graph declared once in atk_bringup/graph_tools/graph.py (GRAPHS["record"]);
`atk-graph record` starts the same processes without the launch package.
Arguments: `ros2 launch atk_bringup record.launch.py --show-args`.
"""
from atk_bringup.graph_tools.graph import GRAPHS
from atk_bringup.graph_tools.launch_builder import build_launch_description


def generate_launch_description():
    return build_launch_description(GRAPHS["record"])
