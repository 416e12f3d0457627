"""Timing of the deploy graph (issue 17), over real DDS: `atk-graph deploy
sim:=true` with the simulator, the tracker and the policy as processes.

- The episode's clock waits for the tracker and the policy: the world stands
  still (every joint state carries the episode's first stamp) until the
  policy's first target, which was computed from that first frame.
- The policy acts on the newest keypoints with the joint state of the same
  frame: every target is stamped with a frame's stamp, and its value is that
  frame's joint state plus the model's constant step. With the old 10 Hz
  timer on /clock it acted on the previous frame's keypoints (stamp one step
  back) and mostly with the newer joint state.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source env.sh")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import (QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy,  # noqa: E402
                       qos_profile_sensor_data)
from sensor_msgs.msg import JointState  # noqa: E402

from atk_msgs.msg import EpisodeStatus  # noqa: E402
from atk_msgs.srv import ResetEpisode  # noqa: E402

pytestmark = pytest.mark.slow

SIZE = (320, 240)
STEP_RAD = 0.01            # the test model's constant step on joint 0 (rad per control step)
FIRST_TARGET_TIMEOUT_S = 120.0   # graph start-up (model loading, DDS) + the first transfer on a loaded machine
RUN_TIMEOUT_S = 30.0
N_FRAMES = 25


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A policy whose output is the measured joints plus STEP_RAD on joint 0,
    whatever the keypoints (all weights zero; delta action mode), on the
    simulator's first frame of sushi seed 0 as its template."""
    import cv2
    import torch

    from atk_bringup.sim.env import SimConfig, SimEnv
    from atk_policy.artifact import save_policy
    from atk_policy.config import ModelConfig
    from atk_policy.model import KeypointPolicy, Normalisation

    env = SimEnv(SimConfig(width=SIZE[0], height=SIZE[1], render_depth=False))
    try:
        frame = env.reset(task="sushi", seed=0, perturbations=()).rgb.copy()
    finally:
        env.close()
    pts = cv2.goodFeaturesToTrack(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 8, 0.01, 20).reshape(-1, 2)
    rng = np.random.default_rng(0)
    proprio = rng.normal(scale=0.1, size=(64, 7))
    step = np.zeros(7)
    step[0] = STEP_RAD
    norm = Normalisation.from_data(proprio.astype(np.float32), (proprio + step).astype(np.float32),
                                   binary_gripper=False)
    policy = KeypointPolicy(len(pts), SIZE, ModelConfig(hidden=(16,)), norm,
                            keypoint_ids=list(range(len(pts))), canonical_xy=pts)
    with torch.no_grad():
        for p in policy.parameters():
            if p.dtype.is_floating_point and p.ndim >= 1 and p.requires_grad:
                p.zero_()
    return save_policy(tmp_path_factory.mktemp("model") / "const_step", policy, frame)


def test_world_waits_for_the_first_target_and_policy_pairs_the_frame(model_dir, tmp_path):
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("graph_timing_test", context=context)
    lock = threading.Condition()
    joint_states: list[tuple[float, np.ndarray]] = []
    # (stamp, position, len(joint_states) when it arrived)
    targets: list[tuple[float, np.ndarray, int]] = []
    episodes: list[EpisodeStatus] = []

    def stamp_s(msg) -> float:
        return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9

    def on_js(msg: JointState) -> None:
        with lock:
            joint_states.append((stamp_s(msg), np.array(msg.position)))
            lock.notify_all()

    def on_target(msg: JointState) -> None:
        with lock:
            targets.append((stamp_s(msg), np.array(msg.position), len(joint_states)))
            lock.notify_all()

    def on_episode(msg: EpisodeStatus) -> None:
        with lock:
            episodes.append(msg)
            lock.notify_all()

    node.create_subscription(JointState, "joint_states", on_js, qos_profile_sensor_data)
    node.create_subscription(JointState, "joint_target", on_target,
                             QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE))
    node.create_subscription(EpisodeStatus, "sim/episode", on_episode,
                             QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                                        durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))
    reset = node.create_client(ResetEpisode, "sim/reset_episode")
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    log = tmp_path / "graph.log"
    graph = subprocess.Popen(["atk-graph", "deploy", "sim:=true", f"model:={model_dir}", "task:=sushi", "seed:=0",
                              f"sim_width:={SIZE[0]}", f"sim_height:={SIZE[1]}", "log_level:=warn"],
                             stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        # The graph is up once a target and a joint state have reached this node. The start-up
        # episode's first frames may pass before DDS discovery has matched this node to the
        # simulator (best effort, volatile), so the claims are checked on a fresh episode.
        with lock:
            assert lock.wait_for(lambda: (bool(targets) and bool(joint_states)) or graph.poll() is not None,
                                 FIRST_TARGET_TIMEOUT_S), \
                f"no joint_target within {FIRST_TARGET_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
            assert graph.poll() is None, log.read_text()[-3000:]
            n_episodes = len(episodes)
            last_old = max(t for t, _ in joint_states)   # the new episode's stamps come after this
        assert reset.wait_for_service(timeout_sec=30.0), "sim/reset_episode is not offered"
        done = threading.Event()
        future = reset.call_async(ResetEpisode.Request(task="sushi", seed=0))
        future.add_done_callback(lambda _f: done.set())
        assert done.wait(30.0) and future.result().success, "sim/reset_episode failed"
        with lock:
            assert lock.wait_for(lambda: any(e.step == 0 and stamp_s(e) > last_old for e in episodes[n_episodes:]), 30.0), \
                "no sim/episode for the new episode"
            t0 = stamp_s(next(e for e in episodes[n_episodes:] if e.step == 0 and stamp_s(e) > last_old))
            assert lock.wait_for(lambda: any(t >= t0 - 1e-6 for t, _, _ in targets) or graph.poll() is not None,
                                 FIRST_TARGET_TIMEOUT_S), "no joint_target for the new episode"
            first_target = next(tg for tg in targets if tg[0] >= t0 - 1e-6)
            before = [(t, q) for t, q in joint_states[:first_target[2]] if t >= t0 - 1e-6]
        assert before, "no joint state of the new episode arrived before its first target"
        # The world stood still until the first target: one stamp, one pose.
        assert {t for t, _ in before} == {t0}, sorted({t for t, _ in before})[:5]
        assert first_target[0] == pytest.approx(t0, abs=1e-6), "the first target is not from the first frame"
        with lock:
            assert lock.wait_for(lambda: sum(t >= t0 - 1e-6 for t, _, _ in targets) > N_FRAMES
                                 or graph.poll() is not None, RUN_TIMEOUT_S), \
                f"only {len(targets)} targets in {RUN_TIMEOUT_S} s"
            js_by_stamp = {round(t, 6): q for t, q in joint_states if t >= t0 - 1e-6}
            got = [(t, q) for t, q, _ in targets if t >= t0 - 1e-6]
        frames = sorted(js_by_stamp)
        paired = moving = 0
        for t, target in got:
            q = js_by_stamp.get(round(t, 6))
            if q is None:
                continue   # the joint state of that frame was lost (best effort): nothing to compare
            paired += 1
            # target = that frame's joint state + the constant step
            np.testing.assert_allclose(target[:6], q[:6] + [STEP_RAD, 0, 0, 0, 0, 0], atol=2e-4,
                                       err_msg=f"target stamped {t:.2f} is not from that frame's joint state")
            i = frames.index(round(t, 6))
            if i > 0 and abs(js_by_stamp[frames[i - 1]][0] - q[0]) > 1e-3:
                moving += 1   # the previous frame's joint state would have given another target
        assert paired >= N_FRAMES * 0.8, f"only {paired} of {len(got)} targets paired with a joint state"
        assert moving >= N_FRAMES // 2, "the arm did not move: the pairing test proves nothing"
        # every frame after the start is acted on (stamps one control period apart)
        stamps = np.array(sorted({round(t, 6) for t, _ in got}))
        gaps = np.diff(stamps)
        assert np.mean(np.isclose(gaps, 0.1, atol=1e-3)) > 0.8, gaps.tolist()
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(timeout=5)
        if graph.poll() is None:
            graph.send_signal(signal.SIGINT)
            try:
                graph.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(graph.pid, signal.SIGKILL)
                graph.wait()
