"""Run one simulated episode through the real deployment graph over DDS.

Starts ``atk-graph deploy sim:=true`` (the simulator, tracker and policy
nodes as separate processes, exactly what ``deploy.launch.py`` starts), waits
until every node is up, starts a fresh episode through ``sim/reset_episode``
and waits for ``sim/episode`` to report the episode done. Used by
``atk-demo`` and its test.

No ``tracker/reset`` is needed: a new episode's stamps start
``episode_gap_s`` after the last one's, so the tracker transfers onto the new
scene's first frame (its frame-gap rule), and the simulator holds the world
still until the policy's first target (docs/deployment.md, "Latency"). A
tracker reset sent after the simulator's reset raced with it: the first
transfer could run on a frame from before the reset (issue 17).

The stall rule of the in-process evaluation applies here too: an episode in
which the policy has held (any state but RUNNING in ``policy/status``) for
``stall_s`` seconds of simulated time in a row fails.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

#: Node start-up (model loading, DDS discovery) may take this long.
GRAPH_UP_TIMEOUT_S = 60.0
SERVICE_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 20.0


def _reason_kind(reason: str) -> str:
    """A hold reason without its numbers, to count alike reasons together."""
    return re.sub(r"-?\d+(\.\d+)?", "#", reason)[:100]


class StallWatch:
    """The in-process stall rule over ``policy/status``: ``error`` is set once
    the policy has held (any state but RUNNING) for ``stall_s`` seconds of
    simulated time in a row since ``t0`` (0: never)."""

    def __init__(self, t0: float, stall_s: float) -> None:
        self.t0, self.stall_s = t0, stall_s
        self.running_at = t0   # sim time of the last RUNNING status (or the start)
        self.error = ""
        self._seen = 0

    def feed(self, statuses: Sequence) -> None:
        """statuses: every PolicyStatus received so far (new ones are read)."""
        for s in statuses[self._seen:]:
            t = s.header.stamp.sec + s.header.stamp.nanosec * 1e-9
            if t < self.t0 or self.error:
                continue
            if s.state == 0:  # PolicyStatus.STATE_RUNNING
                self.running_at = t
            elif self.stall_s and t - self.running_at >= self.stall_s:
                self.error = f"held for {t - self.running_at:.1f} s: {s.reason}"
        self._seen = len(statuses)


def run_graph_episode(*, model_dir: Path, task: str, seed: int, perturbations: Sequence[str],
                      width: int, height: int, timeout_s: float, log_dir: Path,
                      stall_s: float = 5.0, camera_extrinsics: Path | None = None,
                      robot_occlusion: bool = True) -> dict:
    """One episode in a graph of its own: :func:`run_graph_episodes` with one seed."""
    return run_graph_episodes(model_dir=model_dir, task=task, seeds=[seed], perturbations=perturbations,
                              width=width, height=height, timeout_s=timeout_s, log_dir=log_dir,
                              stall_s=stall_s, camera_extrinsics=camera_extrinsics,
                              robot_occlusion=robot_occlusion)[0]


def run_graph_episodes(*, model_dir: Path, task: str, seeds: Sequence[int], perturbations: Sequence[str],
                       width: int, height: int, timeout_s: float, log_dir: Path, stall_s: float = 5.0,
                       on_result: Callable[[dict], None] | None = None,
                       camera_extrinsics: Path | None = None, robot_occlusion: bool = True) -> list[dict]:
    """Starts the deploy graph once and runs one episode per seed in it, as an
    operator resets the scene between trials (start-up costs ~30 s; an episode
    at most 30 s). ``timeout_s``: wall-time limit of one episode.

    Each result: {"seed", "success", "steps", "message", "error", "policy_states"
    (status messages per state, after the episode's clock started),
    "hold_reasons" (state: reason with numbers masked -> count), "targets",
    "transfers" (the tracker's transfers in the episode, the first frame's
    included), "retransfer_causes", "log"}; ``on_result`` gets each as it
    comes. Raises TimeoutError naming what was awaited when the graph does not
    come up."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    from atk_msgs.msg import EpisodeStatus, KeypointArray, PolicyStatus
    from atk_msgs.srv import ResetEpisode

    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"graph_seed{seeds[0]}.log"
    cmd = ["atk-graph", "deploy", "sim:=true", f"model:={model_dir}", f"task:={task}", f"seed:={seeds[0]}",
           f"sim_width:={width}", f"sim_height:={height}", "log_level:=warn"]
    if camera_extrinsics is not None:  # the tracker's camera pose: table search, robot-aware occlusion
        cmd += [f"camera_extrinsics:={camera_extrinsics}", f"robot_occlusion:={str(robot_occlusion).lower()}"]
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
    tracker_notes: list[KeypointArray] = []
    node.create_subscription(KeypointArray, "keypoints",
                             lambda m: tracker_notes.append(m) if m.message else None, qos_profile_sensor_data)
    reset_sim = node.create_client(ResetEpisode, "sim/reset_episode")

    def stamp_s(stamp) -> float:
        return stamp.sec + stamp.nanosec * 1e-9

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

    def one_episode(seed: int) -> dict:
        n_before = len(episodes)   # an earlier episode may have had this seed too
        res = call(reset_sim, ResetEpisode.Request(task=task, seed=seed, perturbations=list(perturbations)),
                   "sim/reset_episode")
        if not res.success:
            raise RuntimeError(f"sim/reset_episode refused: {res.message}")
        spin_until(lambda: any(e.seed == seed and e.step == 0 for e in episodes[n_before:]), SERVICE_TIMEOUT_S,
                   f"sim/episode of the new episode (seed {seed})")
        start = next(e for e in episodes[n_before:] if e.seed == seed and e.step == 0)
        t0 = stamp_s(start.header.stamp)
        n_targets, n_states, n_notes = len(targets), len(states), len(tracker_notes)
        stall = StallWatch(t0, stall_s)

        def finished() -> bool:
            stall.feed(states)
            last = episodes[-1]
            return bool(stall.error) or (len(episodes) > n_before and last.seed == seed and last.done
                                         and last.step > 0)

        spin_until(finished, timeout_s, f"episode seed {seed} to finish (sim/episode done)")
        last = episodes[-1]
        counts: dict[str, int] = {}
        reasons: dict[str, int] = {}
        names = {v: k for k, v in vars(PolicyStatus).items() if k.startswith("STATE_")}
        for s in states[n_states:]:
            if stamp_s(s.header.stamp) <= t0 + 1e-6:
                continue   # before the episode's clock started (the sim waits at t0 for the first target)
            name = names.get(s.state, str(s.state))
            counts[name] = counts.get(name, 0) + 1
            if s.state != PolicyStatus.STATE_RUNNING:
                key = f"{name}: {_reason_kind(s.reason)}"
                reasons[key] = reasons.get(key, 0) + 1
        notes = [m.message for m in tracker_notes[n_notes:] if stamp_s(m.header.stamp) >= t0]
        transfers = sum(("keypoints transferred from the template" in n or "transfer found only" in n)
                        for n in notes)
        causes = [_reason_kind(part) for n in notes for part in n.split("; ")
                  if "transferred again" in part or "tracking lost" in part]
        return {"seed": seed, "success": bool(last.success) and not stall.error, "steps": int(last.step),
                "message": last.message, "error": stall.error, "policy_states": counts,
                "hold_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                "targets": len(targets) - n_targets, "transfers": transfers, "retransfer_causes": causes,
                "log": str(log_path)}

    results: list[dict] = []
    try:
        spin_until(lambda: bool(states) and bool(episodes), GRAPH_UP_TIMEOUT_S,
                   "policy/status and sim/episode from the deploy graph")
        for seed in seeds:
            results.append(one_episode(seed))
            if on_result is not None:
                on_result(results[-1])
        return results
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


if __name__ == "__main__":  # manual use: python -m atk_bringup.graph_tools.ros_episode MODEL_DIR [SEED]
    print(run_graph_episode(model_dir=Path(sys.argv[1]), task="sushi",
                            seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0, perturbations=("RP",),
                            width=320, height=240, timeout_s=120, log_dir=Path("/tmp/atk_ros_episode")))
