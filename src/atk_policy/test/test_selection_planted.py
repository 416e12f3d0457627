"""Acceptance: ATK finds planted task-relevant keypoints (issue 3).

C = 64 synthetic tracks; the expert action is a function of exactly 3 of
them plus the proprioception; 9 distractors are a relevant track plus an
independent smooth offset; the rest are independent. One alpha for all
seeds 0-4. Asserted: >= 4 seeds keep all 3 relevant keypoints with <= 6 in
total; in those seeds the selected set's validation error is <= 1.1x
FullSet's and <= 1.5x the true-3 set's; the median RandomSelect / selected
error ratio is >= 2.
"""
from __future__ import annotations

import numpy as np
import pytest

from atk_policy.baselines import random_select_ids
from atk_policy.config import ATKConfig, ModelConfig, TrainConfig
from atk_fixtures.episodes import planted_dataset
from atk_policy.train import TrackSet, run_atk, split_episodes, train_on_keypoints

# One value for every seed. The policy learns the expert's step relative to
# the joints (action_mode "delta"), which here is exactly the keypoint-driven
# term, so the action loss weighs keypoints more than with absolute targets
# and the sparsity weight that prunes the partially informative distractors
# is larger: with 3e-3 seed 0 kept 12 (all 3 relevant), with 1e-2 every seed
# kept the 3 relevant plus at most 2.
ALPHA = 1e-2


def _one_seed(seed: int) -> dict:
    d = planted_dataset(seed)          # 80 episodes x 30 steps, C = 64
    ts = TrackSet.from_tracked(d.episodes, d.image_size)
    cfg = ATKConfig(model=ModelConfig(hidden=(64, 64)),
                    train=TrainConfig(steps=1500, batch_size=256, alpha=ALPHA, seed=seed, eval_every=500,
                                      warmup_steps=50))
    res = run_atk(ts, d.canonical_xy, cfg, progress=False)
    tr, va = split_episodes(len(ts.names), cfg.train.val_fraction, seed)
    train, val = ts.subset_episodes(tr), ts.subset_episodes(va)
    true3 = train_on_keypoints("true3", train, val, d.relevant, d.canonical_xy, cfg, progress=False)
    rand_ids = random_select_ids(64, len(res.selected), seed)
    rand = train_on_keypoints("random", train, val, rand_ids, d.canonical_xy, cfg, progress=False)
    return {"seed": seed, "selected": sorted(res.selected.tolist()), "relevant": d.relevant.tolist(),
            "all_relevant": set(d.relevant.tolist()) <= set(res.selected.tolist()),
            "n": len(res.selected), "sel": res.final.fit.val_mse, "full": res.fullset.fit.val_mse,
            "true3": true3.fit.val_mse, "random": rand.fit.val_mse}


@pytest.mark.slow
def test_planted_relevance_recovered_over_seeds():
    rows = [_one_seed(s) for s in range(5)]
    table = "\n".join(f"seed {r['seed']}: selected {r['selected']} relevant {r['relevant']} "
                      f"val sel {r['sel']:.4f} full {r['full']:.4f} true3 {r['true3']:.4f} "
                      f"random {r['random']:.4f}" for r in rows)
    print(table)
    good = [r for r in rows if r["all_relevant"] and r["n"] <= 6]
    assert len(good) >= 4, table
    for r in good:
        assert r["sel"] <= 1.1 * r["full"], table
        assert r["sel"] <= 1.5 * r["true3"], table
    assert np.median([r["random"] / r["sel"] for r in rows]) >= 2.0, table
