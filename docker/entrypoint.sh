#!/usr/bin/env bash
# Source ROS 2, the Python venv and the atk workspace, then run the command.
set -e
source "/opt/ros/${ROS_DISTRO}/setup.bash"
source /opt/atk_venv/bin/activate
source /opt/atk_ws/install/setup.bash
exec "$@"
