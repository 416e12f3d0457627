"""Run one simulated episode through the real deployment graph over DDS.

Starts ``atk-graph deploy sim:=true`` (the simulator, tracker and policy
nodes as separate processes, exactly what ``deploy.launch.py`` starts), waits
until every node is up, starts a fresh episode through ``sim/reset_episode``,
re-transfers the keypoints with ``tracker/reset``, and waits for
``sim/episode`` to report the episode done. Used by ``atk-demo`` and its test.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

#: Node start-up (model loading, DDS discovery) may take this long.
GRAPH_UP_TIMEOUT_S = 60.0
SERVICE_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 20.0


def run_graph_episode(*, model_dir: Path, task: str, seed: int, perturbations: Sequence[str],
                      width: int, height: int, timeout_s: float, log_dir: Path) -> dict:
    """Returns {"success", "steps", "message", "policy_states", "targets"}; raises
    TimeoutError naming what was awaited when the graph does not come up."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    from atk_msgs.msg import EpisodeStatus, PolicyStatus
    from atk_msgs.srv import ResetEpisode, ResetTracker

    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"graph_seed{seed}.log"
    cmd = ["atk-graph", "deploy", "sim:=true", f"model:={model_dir}", f"task:={task}", f"seed:={seed}",
           f"sim_width:={width}", f"sim_height:={height}", "log_level:=warn"]
    with open(log_path, "w") as log:
        graph = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 env=os.environ.copy())
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("atk_demo_episode", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    episodes: list[EpisodeStatus] = []
    states: list[PolicyStatus] = []
    targets: list[JointState] = []
    latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(EpisodeStatus, "sim/episode", episodes.append, latched)
    node.create_subscription(PolicyStatus, "policy/status", states.append, 10)
    node.create_subscription(JointState, "joint_target", targets.append, 10)
    reset_sim = node.create_client(ResetEpisode, "sim/reset_episode")
    reset_tracker = node.create_client(ResetTracker, "tracker/reset")

    def spin_until(pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if graph.poll() is not None:
                raise RuntimeError(f"the deploy graph exited ({graph.returncode}) while waiting for {what}; "
                                   f"see {log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; see {log_path}")
            executor.spin_once(timeout_sec=0.05)

    def call(client, request, what: str):
        spin_until(client.service_is_ready, SERVICE_TIMEOUT_S, f"the {what} service")
        future = client.call_async(request)
        spin_until(future.done, SERVICE_TIMEOUT_S, f"the {what} response")
        return future.result()

    try:
        spin_until(lambda: bool(states) and bool(episodes), GRAPH_UP_TIMEOUT_S,
                   "policy/status and sim/episode from the deploy graph")
        res = call(reset_sim, ResetEpisode.Request(task=task, seed=seed, perturbations=list(perturbations)),
                   "sim/reset_episode")
        if not res.success:
            raise RuntimeError(f"sim/reset_episode refused: {res.message}")
        res = call(reset_tracker, ResetTracker.Request(), "tracker/reset")
        if not res.success:
            raise RuntimeError(f"tracker/reset refused: {res.message}")
        n_states, n_targets = len(states), len(targets)
        spin_until(lambda: bool(episodes) and episodes[-1].seed == seed and episodes[-1].done
                   and episodes[-1].step > 0, timeout_s, f"episode seed {seed} to finish (sim/episode done)")
        last = episodes[-1]
        counts: dict[str, int] = {}
        names = {v: k for k, v in vars(PolicyStatus).items() if k.startswith("STATE_")}
        for s in states[n_states:]:
            counts[names.get(s.state, str(s.state))] = counts.get(names.get(s.state, str(s.state)), 0) + 1
        return {"success": bool(last.success), "steps": int(last.step), "message": last.message,
                "policy_states": counts, "targets": len(targets) - n_targets, "log": str(log_path)}
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        if graph.poll() is None:
            graph.send_signal(signal.SIGINT)
            try:
                graph.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(graph.pid, signal.SIGKILL)
                graph.wait()


if __name__ == "__main__":  # manual use: python -m atk_bringup.ros_episode MODEL_DIR [SEED]
    print(run_graph_episode(model_dir=Path(sys.argv[1]), task="sushi",
                            seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0, perturbations=("RP",),
                            width=320, height=240, timeout_s=120, log_dir=Path("/tmp/atk_ros_episode")))
