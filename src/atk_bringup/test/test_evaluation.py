"""The in-process evaluation runs the deployed pipeline: tracker state
machine + policy input gate. A policy whose keypoints transfer onto the scene
acts; one whose template shows something else holds for the whole episode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atk_bringup.experiment.evaluation import (CONDITIONS, CellStats, KeypointAgent, format_table, run_episode, table_csv,
                                    wilson_interval)
from atk_bringup.sim.env import SimConfig, SimEnv
from atk_perception.backends import make_correspondence
from atk_perception.keypoint_template import KeypointTemplate
from atk_policy.config import ModelConfig
from atk_policy.model import KeypointPolicy, Normalisation

SIZE = (320, 240)
STEPS = 6


@pytest.fixture(scope="module")
def env():
    e = SimEnv(SimConfig(width=SIZE[0], height=SIZE[1], render_depth=False))
    yield e
    e.close()


def _policy(points: np.ndarray) -> KeypointPolicy:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    norm = Normalisation.from_data(rng.normal(size=(32, 7)).astype(np.float32),
                                   rng.normal(scale=0.01, size=(32, 7)).astype(np.float32))
    return KeypointPolicy(len(points), SIZE, ModelConfig(hidden=(16,)), norm,
                          keypoint_ids=list(range(len(points))), canonical_xy=points)


def _agent(template_image: np.ndarray, points: np.ndarray) -> KeypointAgent:
    ids = tuple(range(len(points)))
    template = KeypointTemplate(template_image, points.astype(np.float32), ids, tuple(f"kp{i}" for i in ids))
    # timing="ideal": these tests are about the pipeline, not the latency model;
    # an untrained policy's targets may lie far from the arm: no step limit here.
    return KeypointAgent(_policy(points), make_correspondence("cpu"), template, timing="ideal",
                         max_joint_step_rad=10.0)


def _table_points(image: np.ndarray) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    pts = cv2.goodFeaturesToTrack(grey, 8, 0.01, 12)
    return pts.reshape(-1, 2)


def test_agent_acts_when_keypoints_transfer(env):
    obs = env.reset(task="sushi", seed=3, perturbations=("RP",))
    agent = _agent(obs.rgb, _table_points(obs.rgb))
    res = run_episode(env, agent, "sushi", 3, ("RP",), max_steps=STEPS)
    assert res.steps == STEPS
    assert agent.holds == 0, agent.last_reason
    assert agent.session.state == 1  # TRACKING


def test_agent_holds_when_template_shows_another_scene(env):
    noise = np.random.default_rng(1).integers(0, 255, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8)
    agent = _agent(noise, np.array([[50.0, 50.0], [150.0, 100.0], [250.0, 200.0]]))
    start = env.reset(task="sushi", seed=3, perturbations=("RP",)).joint_positions.copy()
    res = run_episode(env, agent, "sushi", 3, ("RP",), max_steps=STEPS)
    assert agent.holds == STEPS
    assert "not TRACKING" in agent.last_reason
    # holding commands the arm where it was: it did not move
    assert np.allclose(env.joint_positions()[:6], start[:6], atol=2e-3)
    assert not res.success


def test_a_chunked_policy_starts_a_new_chunk_after_a_hold(env, monkeypatch):
    """The agent drops the rest of an action chunk when the gate holds, as the
    policy node does: the steps planned before the hold are stale after it."""
    obs = env.reset(task="sushi", seed=3, perturbations=("RP",))
    agent = _agent(obs.rgb, _table_points(obs.rgb))
    resets = []
    real_reset = agent.policy.reset
    monkeypatch.setattr(agent.policy, "reset", lambda: (resets.append(1), real_reset()))
    agent.reset(obs)
    assert len(resets) == 1
    agent.act(env.step(agent.act(obs)))
    assert agent.holds == 0 and len(resets) == 1          # acting on: no reset
    real_process = agent.session.process

    def lost(image, stamp):                               # the tracker loses the keypoints once
        out = real_process(image, stamp)
        return type(out)(**{**out.__dict__, "state": 2})

    monkeypatch.setattr(agent.session, "process", lost)
    agent.act(env.step(agent._last_action))
    assert agent.holds == 1 and len(resets) == 1
    monkeypatch.setattr(agent.session, "process", real_process)
    agent.act(env.step(agent._last_action))
    assert agent.holds == 1 and len(resets) == 2          # resumed: a fresh chunk


def test_table_formats_mean_and_spread():
    table = {"ATK": {c: CellStats([0.8, 0.6]) for c in CONDITIONS}, "RGB": {"RP": CellStats([0.5])}}
    md = format_table(table, list(CONDITIONS))
    assert "| ATK | 0.70±0.10 | 0.70±0.10 | 0.70±0.10 | 0.70±0.10 |" in md
    assert "| RGB | 0.50±0.00 | n/a | n/a | n/a |" in md
    assert "ATK,RP,0.7000,0.1000,2,0.8000 0.6000" in table_csv(table, list(CONDITIONS))


def test_cells_count_episodes_with_a_wilson_interval():
    cell = CellStats()
    cell.add([True] * 3 + [False] * 7)
    cell.add([True] * 5 + [False] * 5)
    assert cell.successes == 8 and cell.episodes == 20
    lo, hi = cell.interval
    assert (round(lo, 3), round(hi, 3)) == (0.219, 0.613)   # Wilson 95% for 8/20
    assert wilson_interval(0, 10)[0] == 0.0 and 0.27 < wilson_interval(0, 10)[1] < 0.28
    md = format_table({"ATK": {"RP": cell}}, ["RP"])
    assert "| ATK | 0.40±0.10 (8/20; 0.22-0.61) |" in md
    assert ",8,20,0.2188,0.6134" in table_csv({"ATK": {"RP": cell}}, ["RP"])


def test_an_h_c_error_skips_the_frame_instead_of_ending_the_evaluation(env, monkeypatch):
    """As the tracker node does: an exception inside h_C reports the frame as
    bad (LOST for that frame, so the policy holds) and the episode goes on."""
    obs = env.reset(task="sushi", seed=3, perturbations=("RP",))
    agent = _agent(obs.rgb, _table_points(obs.rgb))
    agent.reset(obs)
    action = agent.act(obs)                      # the first frame's transfer

    def broken(image, stamp):
        raise ValueError("cannot convert float NaN to integer")

    monkeypatch.setattr(agent.session, "process", broken)
    agent.act(env.step(action))
    assert agent.holds == 1 and "tracker error ValueError" in agent.last_reason


def _timed_agent(obs, latencies: dict[int, float]):
    """A graph-timing agent whose tracker takes ``latencies[frame]`` seconds
    (0.01 otherwise) on a virtual clock, so the timing model is tested exactly."""
    now = [0.0]
    points = _table_points(obs.rgb)
    ids = tuple(range(len(points)))
    template = KeypointTemplate(obs.rgb, points.astype(np.float32), ids, tuple(f"kp{i}" for i in ids))
    agent = KeypointAgent(_policy(points), make_correspondence("cpu"), template, timing="graph",
                          max_joint_step_rad=10.0, clock=lambda: now[0])
    real_process = agent.session.process
    frames = [0]

    def process(image, stamp):
        out = real_process(image, stamp)
        now[0] += latencies.get(frames[0], 0.01)
        frames[0] += 1
        return out

    agent.session.process = process
    return agent


def _roll(env, agent, n: int) -> list[np.ndarray]:
    obs = env.reset(task="sushi", seed=3, perturbations=("RP",))
    agent.reset(obs)
    actions = []
    for _ in range(n):
        actions.append(agent.act(obs).copy())
        obs = env.step(actions[-1])
    return actions


def test_graph_timing_with_a_fast_tracker_acts_as_ideal_timing(env):
    obs = env.reset(task="sushi", seed=3, perturbations=("RP",))
    fast = _roll(env, _timed_agent(obs, {}), STEPS)
    ideal_agent = _agent(obs.rgb, _table_points(obs.rgb))
    ideal = _roll(env, ideal_agent, STEPS)
    np.testing.assert_allclose(np.array(fast), np.array(ideal), atol=1e-9)


def test_graph_timing_applies_a_late_action_late_and_drops_the_busy_frames(env):
    """Frame 2 (the transfer is frame 0) takes 0.25 s: its action is not ready
    for step 2 or 3 (held, LATE); frame 3 arrives while the tracker is busy and
    is dropped; frame 4 is taken at 0.25 s, and its action, the newest, is step 4's."""
    obs = env.reset(task="sushi", seed=3, perturbations=("RP",))
    agent = _timed_agent(obs, {2: 0.25})
    actions = _roll(env, agent, 5)
    assert agent.frames_dropped == 1 and agent.hold_reasons == {"LATE": 2}, agent.hold_reasons
    np.testing.assert_array_equal(actions[2], actions[1])   # held: the last target again
    np.testing.assert_array_equal(actions[3], actions[1])
    assert not np.array_equal(actions[4], actions[1])


def test_graph_timing_holds_stale_keypoints_after_a_long_transfer(env):
    """Frame 2 takes 3.05 s (a re-transfer on a loaded machine): frames 3-31
    arrive while the tracker is busy and are dropped; its keypoints reach the
    policy 3 s old, a stale hold at step 32, as in the graph. The next frame
    taken (32) takes 0.2 s: step 33 has no new action, frame 33 is dropped, and
    step 34 acts again."""
    obs = env.reset(task="sushi", seed=3, perturbations=("RP",))
    agent = _timed_agent(obs, {2: 3.05, 3: 0.2})   # tracker calls: 0 transfer, 1, 2, then the next taken
    actions = _roll(env, agent, 35)
    assert agent.frames_dropped == 30, agent.frames_dropped
    assert agent.hold_reasons == {"LATE": 31, "HOLD_STALE": 1}, agent.hold_reasons
    assert agent.holds == 32
    assert not np.array_equal(actions[34], actions[1])
