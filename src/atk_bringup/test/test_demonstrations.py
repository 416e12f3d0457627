"""Simulated expert demonstrations written as bags read back like real recordings."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="mujoco not installed: source env.sh")

from atk_bringup.experiment.demonstrations import record_expert_episode  # noqa: E402
from atk_bringup.sim.env import SimConfig, SimEnv  # noqa: E402
from atk_policy.bags import BagConversionConfig, inspect_bag, load_episodes  # noqa: E402


@pytest.fixture(scope="module")
def env():
    e = SimEnv(SimConfig(width=64, height=48, render_depth=False))
    yield e
    e.close()


def test_expert_episode_bag_has_the_real_topics_and_round_trips(env, tmp_path):
    res = record_expert_episode(env, tmp_path / "sushi_0", task="sushi", seed=0, stamp_offset_s=100.0)
    assert res.steps > 10
    info = inspect_bag(res.path)
    assert {t.name: t.msgtype for t in info.topics} == {
        "/camera/color/image_raw": "sensor_msgs/msg/Image",
        "/camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
        "/joint_states": "sensor_msgs/msg/JointState",
        "/joint_target": "sensor_msgs/msg/JointState",
        "/gripper_command": "atk_msgs/msg/GripperCommand",
        "/camera/depth/image_raw": "sensor_msgs/msg/Image"}
    # depth for the first frame only (the canonical frame's, for h_C's table search)
    assert all(t.count == (1 if "depth" in t.name else res.steps) for t in info.topics)

    cfg = BagConversionConfig(skip_failed=False)
    (ep,), report = load_episodes(res.path, config=cfg)
    assert len(ep) == res.steps and report.used[0].notes == []
    assert ep.success is res.success and ep.meta["label"]["source"] == "sim_expert"
    assert ep.meta["label"]["seed"] == 0 and ep.meta["label"]["task"] == "sushi"
    np.testing.assert_allclose(np.diff(ep.stamps), 1.0 / env.config.control_hz, atol=1e-6)
    assert ep.stamps[0] == pytest.approx(100.0)
    # replay the same seeded episode: frames, joint states and expert actions match the bag
    obs = env.reset(task="sushi", seed=0)
    for t in range(4):
        a = env.expert_action()
        np.testing.assert_array_equal(ep.frames[t], obs.rgb)
        np.testing.assert_allclose(ep.proprio[t], obs.joint_positions, atol=1e-6)
        np.testing.assert_allclose(ep.actions[t, :6], a[:6], atol=1e-6)
        obs = env.step(a)
    k = np.asarray(ep.meta["camera_info"]["k"]).reshape(3, 3)
    np.testing.assert_allclose(k, env.intrinsics)
    from atk_policy.bags.frames import read_depth

    env.reset(task="sushi", seed=0)
    first = ep.meta["depth_first"]
    np.testing.assert_allclose(read_depth(res.path, first["topic"], first["log_ts"]),
                               env.render_depth_mm() / 1000.0, atol=1e-6)


def test_max_steps_cuts_the_episode(env, tmp_path):
    res = record_expert_episode(env, tmp_path / "short", task="sushi", seed=1, perturbations=("RP",),
                                max_steps=12)
    assert res.steps == 12
    (ep,), _ = load_episodes(res.path, config=BagConversionConfig(skip_failed=False))
    assert len(ep) == 12 and ep.meta["label"]["perturbations"] == ["RP"]


def test_after_success_the_expert_releases_on_record(env, tmp_path):
    """Demos go on for after_success_s past success: the released nigiri and
    the open gripper command are in the data for more than one step."""
    short = record_expert_episode(env, tmp_path / "a", task="sushi", seed=2, after_success_s=0.0)
    long = record_expert_episode(env, tmp_path / "b", task="sushi", seed=2, after_success_s=1.0)
    assert short.success and long.success
    assert long.steps == short.steps + int(round(1.0 * env.config.control_hz))
    (ep,), _ = load_episodes(long.path, config=BagConversionConfig(skip_failed=False))
    assert np.all(ep.actions[short.steps - 1:, 6] == 0.0)       # open from the release on
    assert ep.proprio[-1, 6] < 0.2                                 # and the gripper did open
    with pytest.raises(ValueError, match="after_success_s"):
        record_expert_episode(env, tmp_path / "c", task="sushi", seed=2, after_success_s=-1.0)


class _HoldsAfter:
    """A learner that follows the expert for ``n`` steps, then holds (as the
    deployed agent does when its tracker loses the keypoints): it counts
    ``holds`` and repeats its last command."""

    def __init__(self, env, n: int) -> None:
        self.env, self.n, self.holds, self.steps, self.last = env, n, 0, 0, None

    def reset(self, obs) -> None:
        self.holds, self.steps, self.last = 0, 0, None

    def act(self, obs):
        self.steps += 1
        if self.steps <= self.n:
            self.last = np.asarray(self.env.expert_action(), np.float64)
        else:
            self.holds += 1
        return self.last


def test_dagger_rollout_stops_when_the_learner_holds(env, tmp_path):
    from atk_bringup.experiment.demonstrations import record_relabelled_episode

    res = record_relabelled_episode(env, _HoldsAfter(env, 5), tmp_path / "held", task="sushi", seed=2,
                                    perturbations=("RP",), stall_steps=8)
    # 5 acting steps, then 7 held steps are recorded; the 8th held step ends the rollout
    assert res.steps == 12 and not res.success
    (ep,), _ = load_episodes(res.path, config=BagConversionConfig(skip_failed=False))
    assert len(ep) == 12 and ep.meta["label"]["source"] == "dagger"
    # without the limit the same learner runs to the task's time limit
    full = record_relabelled_episode(env, _HoldsAfter(env, 5), tmp_path / "held_full", task="sushi", seed=2,
                                     perturbations=("RP",), max_steps=40)
    assert full.steps == 40
    with pytest.raises(ValueError, match="stall_steps"):
        record_relabelled_episode(env, _HoldsAfter(env, 5), tmp_path / "bad", task="sushi", seed=2,
                                  stall_steps=0)
