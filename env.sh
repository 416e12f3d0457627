# Source this file from bash to use the workspace from a shell:
#     source env.sh
# It activates .venv (ROS 2 from PyPI) when present, sources the colcon
# workspace, and sets what the console scripts and tests need.
# With a real ROS 2 install instead (/opt/ros/<distro>), build with
#     source /opt/ros/kilted/setup.bash && colcon build --symlink-install
# and this file sources that install first, then the workspace.

_atk_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"

if [ -x "$_atk_root/.venv/bin/python" ]; then
  # shellcheck disable=SC1091
  source "$_atk_root/.venv/bin/activate"
  # The PyPI ROS 2 wheels install their share/ament_index into the venv.
  export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
elif [ -z "${ROS_DISTRO:-}" ]; then
  for _d in kilted jazzy rolling; do
    if [ -f "/opt/ros/$_d/setup.bash" ]; then
      # shellcheck disable=SC1090
      source "/opt/ros/$_d/setup.bash"; break
    fi
  done
fi

if [ -f "$_atk_root/install/local_setup.bash" ]; then
  # shellcheck disable=SC1091
  source "$_atk_root/install/local_setup.bash"
else
  echo "[atk env] workspace not built yet: run scripts/setup.sh" >&2
fi

# ament_python console scripts live in install/<pkg>/lib/<pkg> (where
# `ros2 run` looks); put them on PATH too so `atk-train` etc. just work.
for _p in atk_perception atk_policy atk_bringup; do
  case ":$PATH:" in *":$_atk_root/install/$_p/lib/$_p:"*) ;; *)
    export PATH="$_atk_root/install/$_p/lib/$_p:$PATH" ;; esac
done

# rclpy writes logs under $ROS_HOME (default ~/.ros) and needs one of them.
if [ -z "${HOME:-}" ] && [ -z "${ROS_HOME:-}" ]; then
  export ROS_HOME="$_atk_root/.ros"
fi
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# Shared-memory segment large enough for 1280x720 rgb8 frames: without it,
# best-effort images over 512 KB are lost (see config/fastdds_shm.xml).
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_atk_root/src/atk_bringup/config/fastdds_shm.xml}"
export ATK_ROOT="$_atk_root"
# Test fixtures shared by the tests and the benchmarks (atk_fixtures; pytest.ini
# names the same folder). Not part of any installed package.
case ":${PYTHONPATH:-}:" in *":$_atk_root/tests/fixtures:"*) ;; *)
  export PYTHONPATH="$_atk_root/tests/fixtures${PYTHONPATH:+:$PYTHONPATH}" ;; esac
unset _atk_root _d _p
