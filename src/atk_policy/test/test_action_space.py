"""Action spaces (joint delta / absolute / Cartesian tcp), chunking and the gripper threshold."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atk_perception import kinematics as kin
from atk_policy.action_space import ActionSpace
from atk_policy.config import ModelConfig
from atk_policy.model import KeypointPolicy, Normalisation


def _poses(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n measured configurations near home (7,) and targets one small step away."""
    rng = np.random.default_rng(seed)
    q = np.concatenate([kin.HOME_Q + rng.uniform(-0.4, 0.4, (n, 6)), rng.uniform(0, 1, (n, 1))], 1)
    tgt = np.concatenate([q[:, :6] + rng.uniform(-0.03, 0.03, (n, 6)), rng.integers(0, 2, (n, 1))], 1)
    return q.astype(np.float32), tgt.astype(np.float32)


def test_tcp_labels_are_tool_steps_and_commands_reach_the_target():
    sp = ActionSpace("tcp")
    q, tgt = _poses(20)
    lab = sp.labels(q, tgt)
    assert lab.shape == (20, 5) and sp.features(q).shape == (20, 6)
    for i in range(20):
        t0, t1 = kin.fk(q[i, :6], kin.ROBOTIQ_2F85_TCP), kin.fk(tgt[i, :6], kin.ROBOTIQ_2F85_TCP)
        np.testing.assert_allclose(lab[i, :3], t1[:3, 3] - t0[:3, 3], atol=1e-5)
        cmd = sp.command(q[i], lab[i])
        # the commanded joints put the tool where the target did (position exactly, yaw about z)
        tc = kin.fk(cmd[:6], kin.ROBOTIQ_2F85_TCP)
        np.testing.assert_allclose(tc[:3, 3], t1[:3, 3], atol=1e-3)
        assert cmd[6] == (1.0 if tgt[i, 6] > 0.5 else 0.0)


def test_joint_modes_and_the_gripper_threshold():
    q, tgt = _poses(5, seed=1)
    d = ActionSpace("delta")
    np.testing.assert_allclose(d.labels(q, tgt)[:, :6], tgt[:, :6] - q[:, :6], atol=1e-6)
    np.testing.assert_allclose(d.command(q[0], d.labels(q, tgt)[0])[:6], tgt[0, :6], atol=1e-6)
    a = ActionSpace("absolute", binary_gripper=False)
    lab = a.labels(q, tgt)
    lab[0, 6] = 0.3
    assert a.command(q[0], lab[0])[6] == pytest.approx(0.3)
    assert ActionSpace("absolute").command(q[0], lab[0])[6] == 0.0
    with pytest.raises(ValueError, match="action_mode"):
        ActionSpace("cartesian")
    with pytest.raises(ValueError, match="chunk"):
        ActionSpace("tcp", chunk=0)


def test_chunks_stay_inside_their_episode():
    sp = ActionSpace("absolute", chunk=3)
    lab = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)   # row t = 7t .. 7t+6
    ep = np.array([0, 0, 0, 1, 1])
    ch = sp.chunk(lab, ep).reshape(5, 3, 7)[:, :, 0] / 7
    np.testing.assert_array_equal(ch, [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 4], [4, 4, 4]])


def test_a_chunked_policy_predicts_every_k_calls_and_reset_starts_over(monkeypatch):
    q, tgt = _poses(40, seed=2)
    norm = Normalisation.from_data(q, tgt, "tcp", chunk=3, episode=np.zeros(40, int))
    assert norm.action_mean.shape == (15,) and norm.proprio_mean.shape == (6,)
    pol = KeypointPolicy(2, (320, 240), ModelConfig(hidden=(16,), action_mode="tcp", chunk=3), norm).eval()
    assert Normalisation.from_dict(norm.to_dict()).chunk == 3
    calls = []
    real = pol.predict

    def counting(kp, pr):
        calls.append(pr.shape)
        return real(kp, pr)

    monkeypatch.setattr(pol, "predict", counting)
    kp = np.array([[100, 100], [200, 150]], np.float32)
    for _ in range(7):
        a = pol.select_action(kp, q[0])
        assert a.shape == (7,) and np.all(np.isfinite(a)) and a[6] in (0.0, 1.0)
    assert len(calls) == 3 and calls[0] == torch.Size([1, 6])   # calls 1, 4, 7
    pol.reset()
    pol.select_action(kp, q[0])
    assert len(calls) == 4
