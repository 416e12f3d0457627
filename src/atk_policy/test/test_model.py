"""Mask sampler, gradients, sparsity, heads and the deployment interface."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atk_policy.config import ModelConfig, TrainConfig
from atk_policy.model import KeypointPolicy, Normalisation, PolicyInputError, sample_concrete_mask
from atk_fixtures.episodes import planted_dataset
from atk_policy.train import TrackSet, fit, lr_multiplier, make_policy, select_ids, TrainingError


def _norm() -> Normalisation:
    return Normalisation(np.zeros(7), np.ones(7), np.zeros(7), np.ones(7))


def _batch(b: int, c: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"keypoints": torch.rand(b, c, 2, generator=g) * torch.tensor([640.0, 480.0]),
            "proprio": torch.randn(b, 7, generator=g), "action": torch.randn(b, 7, generator=g)}


def test_concrete_mask_is_hard_forward_soft_backward():
    logits = torch.tensor([-3.0, 0.0, 3.0], requires_grad=True)
    torch.manual_seed(0)
    mask, soft = sample_concrete_mask(logits, 4000, tau=0.5)
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    # Keep frequency follows sigmoid(logit).
    freq = mask.detach().mean(0).numpy()
    np.testing.assert_allclose(freq, torch.sigmoid(logits).detach().numpy(), atol=0.03)
    (mask * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.all(logits.grad > 0)


def test_mask_logits_get_gradients_from_action_loss_and_l1():
    torch.manual_seed(0)
    pol = KeypointPolicy(8, (640, 480), ModelConfig(hidden=(16,)), _norm(), learn_mask=True)
    pol.train()
    batch = _batch(64, 8)
    loss, logs = pol(batch, alpha=0.0)
    loss.backward()
    g_action = pol.mask_logits.grad.clone()
    assert torch.count_nonzero(g_action) == 8  # straight-through: every logit sees the action loss
    pol.zero_grad()
    # The L1 term alone: d/dlogit alpha * sum(sigmoid) = alpha * p (1 - p) = 0.25 alpha at p = 0.5.
    _, _ = pol(batch, alpha=0.0)
    l1 = torch.sigmoid(pol.mask_logits).sum() * 0.1
    l1.backward()
    np.testing.assert_allclose(pol.mask_logits.grad.numpy(), 0.025, rtol=1e-5)
    assert {"loss", "mse", "l1", "kept"} <= set(logs)


@pytest.fixture(scope="module")
def planted():
    d = planted_dataset(0, num_episodes=24, steps=30)
    return d, TrackSet.from_tracked(d.episodes, d.image_size)


@pytest.mark.parametrize("alpha, check", [(0.0, lambda k: k >= 0.9 * 64), (0.1, lambda k: k <= 0.1 * 64)])
def test_sparsity_weight_controls_kept_fraction(planted, alpha, check):
    d, ts = planted
    norm = Normalisation.from_data(ts.proprio, ts.actions)
    pol = make_policy(ts, range(64), d.canonical_xy, ModelConfig(hidden=(64, 64)), norm, learn_mask=True)
    fit(pol, ts, None, TrainConfig(steps=600, batch_size=256, alpha=alpha, eval_every=600, warmup_steps=20),
        progress=False)
    kept = int((pol.keep_probs() > 0.5).sum())
    assert check(kept), f"alpha={alpha}: kept {kept} of 64"


@pytest.mark.parametrize("head", ["mlp_mse", "mlp_gaussian"])
def test_heads_fit_a_keypoint_function(head):
    """Both heads learn action = f(keypoint) well below the mean-predictor error."""
    g = torch.Generator().manual_seed(1)
    kp = torch.rand(2048, 2, 2, generator=g) * torch.tensor([640.0, 480.0])
    act = torch.zeros(2048, 7)
    act[:, :6] = torch.sin(kp[:, 0, :1] / 200.0) + kp[:, 1, 1:] / 480.0
    pr = torch.randn(2048, 7, generator=g)
    from atk_policy.train import TrackSet as TS

    ts = TS(kp.numpy(), pr.numpy(), act.numpy(), np.zeros(2048, int), ["x"], (640, 480))
    norm = Normalisation.from_data(ts.proprio, ts.actions)
    pol = KeypointPolicy(2, (640, 480), ModelConfig(head=head, hidden=(64, 64)), norm)
    res = fit(pol, ts, ts, TrainConfig(steps=800, batch_size=256, eval_every=800), progress=False)
    assert res.val_mse < 0.05, res.val_mse
    loss, logs = pol(pol.prepare(ts, "cpu"))
    assert ("nll" in logs) == (head == "mlp_gaussian")


@pytest.mark.parametrize("noise_px", [0.0, 2.0])
def test_keypoint_noise_augments_training_batches_only(noise_px):
    """keypoint_noise_px perturbs the keypoints the network trains on (std as
    configured), never the stored data or the validation pass."""
    g = torch.Generator().manual_seed(3)
    kp = (torch.rand(256, 3, 2, generator=g) * torch.tensor([640.0, 480.0])).numpy()
    ts = TrackSet(kp.copy(), np.random.default_rng(0).normal(size=(256, 7)).astype(np.float32),
                  np.random.default_rng(1).normal(size=(256, 7)).astype(np.float32), np.zeros(256, int),
                  ["x"], (640, 480))
    seen: list[tuple[str, torch.Tensor]] = []

    class Recording(KeypointPolicy):
        def forward(self, batch, alpha=0.0):
            seen.append(("train", batch["keypoints"].detach().clone()))
            return super().forward(batch, alpha)

        def predict(self, keypoints, proprio):
            seen.append(("val", keypoints.detach().clone()))
            return super().predict(keypoints, proprio)

    pol = Recording(3, (640, 480), ModelConfig(hidden=(16,)), Normalisation.from_data(ts.proprio, ts.actions))
    fit(pol, ts, ts, TrainConfig(steps=20, batch_size=256, eval_every=10, warmup_steps=0,
                                 keypoint_noise_px=noise_px), progress=False)
    base = torch.as_tensor(kp)
    rows = {tuple(r.flatten().tolist()) for r in base}  # batches sample rows with replacement

    def residual(x: torch.Tensor) -> torch.Tensor:  # distance of each sample to its nearest data row
        d = torch.cdist(x.flatten(1), base.flatten(1))
        return x.flatten(1) - base.flatten(1)[d.argmin(1)]

    train = torch.cat([x for k, x in seen if k == "train"])
    val = torch.cat([x for k, x in seen if k == "val"])
    assert torch.equal(torch.as_tensor(ts.keypoints), base)           # data untouched
    assert all(tuple(r.flatten().tolist()) in rows for r in val)     # validation sees the data
    std = float(residual(train).std())
    assert abs(std - noise_px) < 0.1 * max(noise_px, 1.0), (noise_px, std)
    with pytest.raises(ValueError, match="keypoint_noise_px"):
        TrainConfig(keypoint_noise_px=-1.0)


def test_select_action_validates_and_matches_predict():
    pol = KeypointPolicy(3, (640, 480), ModelConfig(hidden=(16,)), _norm()).eval()
    kp, pr = np.array([[10, 20], [300, 200], [600, 400]], np.float32), np.arange(7, dtype=np.float32) / 7
    a = pol.select_action(kp, pr)
    assert a.shape == (7,) and a.dtype == np.float32
    # select_action = the predicted step, made a command from the measured joints
    step = pol.predict(torch.from_numpy(kp)[None], torch.from_numpy(pr)[None])[0].numpy()
    b = np.concatenate([step[:6] + pr[:6], [1.0 if step[6] > 0.5 else 0.0]])
    np.testing.assert_allclose(a, b, rtol=1e-6)
    pol.reset()
    with pytest.raises(PolicyInputError, match=r"\(3, 2\)"):
        pol.select_action(kp[:2], pr)
    with pytest.raises(PolicyInputError, match="7 values"):
        pol.select_action(kp, pr[:6])
    kp[1, 0] = np.nan
    with pytest.raises(PolicyInputError, match=r"rows \[1\]"):
        pol.select_action(kp, pr)


def test_keypoints_normalised_by_image_size():
    pol = KeypointPolicy(1, (640, 480), ModelConfig(hidden=(4,)), _norm())
    out = pol.normalise_keypoints(torch.tensor([[[0.0, 0.0], [320.0, 240.0], [640.0, 480.0]]]))
    np.testing.assert_allclose(out[0].numpy(), [[-1, -1], [0, 0], [1, 1]])


def test_schedule_and_selection():
    assert lr_multiplier(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(99, 100, 10, 0.1) == pytest.approx(0.1, abs=1e-3)
    p = np.array([0.1, 0.9, 0.6, 0.4, 0.95])
    assert select_ids(p, 0.5).tolist() == [4, 1, 2]
    assert select_ids(p, 0.5, top_n=2).tolist() == [4, 1]
    with pytest.raises(TrainingError, match="top_n = 6.*C = 5"):
        select_ids(p, 0.5, top_n=6)
    with pytest.raises(TrainingError, match="lower alpha"):
        select_ids(p, 0.99)


def test_config_errors_name_the_field():
    from atk_policy.config import ATKConfig, CandidateConfig, SelectionConfig, from_dict

    with pytest.raises(ValueError, match="'alpha'"):
        TrainConfig(alpha=-1)
    with pytest.raises(ValueError, match="'init_keep_prob'"):
        ModelConfig(init_keep_prob=1.0)
    with pytest.raises(ValueError, match="C must be >= N"):
        ATKConfig(candidates=CandidateConfig(num_candidates=8), selection=SelectionConfig(top_n=9))
    with pytest.raises(ValueError, match="unknown config field.*'lrr'"):
        from_dict(TrainConfig, {"lrr": 1})
    cfg = ATKConfig()
    assert ATKConfig.from_dict(cfg.to_dict()) == cfg


def test_checkpoint_resume_reproduces_uninterrupted_run(planted, tmp_path):
    d, ts = planted
    norm = Normalisation.from_data(ts.proprio, ts.actions)
    cfg = TrainConfig(steps=120, batch_size=64, eval_every=50, warmup_steps=10, alpha=3e-3)

    def new():
        torch.manual_seed(0)
        return make_policy(ts, range(64), d.canonical_xy, ModelConfig(hidden=(16,)), norm, learn_mask=True)

    ref = new()
    fit(ref, ts, None, cfg, progress=False)

    class Crash(Exception):
        pass

    def crash_at_51(rec):
        if rec["step"] == 51:
            raise Crash

    ck = tmp_path / "mask.ckpt"
    with pytest.raises(Crash):
        fit(new(), ts, None, cfg, progress=False, checkpoint=ck, on_eval=crash_at_51)
    resumed = new()
    res = fit(resumed, ts, None, cfg, progress=False, checkpoint=ck, resume=True)
    assert [h["step"] for h in res.history] == [1, 51, 101, 120]
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    with pytest.raises(TrainingError, match="120 steps"):
        fit(new(), ts, None, TrainConfig(steps=200, eval_every=50), progress=False, checkpoint=ck, resume=True)


@pytest.mark.parametrize("head", ["mlp_mse", "mlp_gaussian"])
def test_slice_keypoints_reproduces_the_masked_model(head):
    """The sliced mask-free policy on the kept ids predicts exactly what the masked model does."""
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    norm = Normalisation(rng.normal(size=7), rng.uniform(0.5, 2, 7), rng.normal(size=7), rng.uniform(0.5, 2, 7))
    pol = KeypointPolicy(10, (640, 480), ModelConfig(head=head, hidden=(16, 8)), norm, learn_mask=True,
                         canonical_xy=rng.uniform(0, 400, (10, 2)))
    with torch.no_grad():
        pol.mask_logits.copy_(torch.tensor([3.0, -3, -3, 2, -3, -3, -3, 4, -3, -3]))
    kept = [7, 0, 3]
    sliced = pol.slice_keypoints(kept)
    assert not sliced.learn_mask and sliced.keypoint_ids == kept
    np.testing.assert_array_equal(sliced.canonical_xy, pol.canonical_xy[kept])
    b = _batch(32, 10)
    want = pol.eval().predict(b["keypoints"], b["proprio"])
    got = sliced.eval().predict(b["keypoints"][:, kept], b["proprio"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
