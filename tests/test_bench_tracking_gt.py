"""benchmarks/bench_tracking_gt.py's first-frame mode: with the oracle h_C
(privileged simulator truth) every transferred keypoint is at its true
position, so the benchmark's truth and its reading of the tracker agree; a
keypoint table per keypoint is written to summary.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

SIZE = (320, 240)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A zero-weight policy whose template is the simulator's sushi seed-0 frame."""
    import cv2
    import torch

    from atk_bringup.sim.env import SimConfig, SimEnv
    from atk_policy.artifact import save_policy
    from atk_policy.config import ModelConfig
    from atk_policy.model import KeypointPolicy, Normalisation

    env = SimEnv(SimConfig(width=SIZE[0], height=SIZE[1], render_depth=False))
    try:
        frame = env.reset(task="sushi", seed=0, perturbations=("RP",)).rgb.copy()
    finally:
        env.close()
    pts = cv2.goodFeaturesToTrack(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 6, 0.01, 20).reshape(-1, 2)
    proprio = np.random.default_rng(0).normal(scale=0.1, size=(32, 7)).astype(np.float32)
    norm = Normalisation.from_data(proprio, proprio, binary_gripper=False)
    policy = KeypointPolicy(len(pts), SIZE, ModelConfig(hidden=(8,)), norm,
                            keypoint_ids=list(range(len(pts))), canonical_xy=pts)
    with torch.no_grad():
        for p in policy.parameters():
            if p.dtype.is_floating_point and p.ndim >= 1 and p.requires_grad:
                p.zero_()
    return save_policy(tmp_path_factory.mktemp("model") / "m", policy, frame)


def test_first_frame_mode_with_the_oracle_is_exact(model_dir, tmp_path, capsys):
    import bench_tracking_gt

    out = tmp_path / "gt"
    rc = bench_tracking_gt.main(["--model", str(model_dir), "--backend", "oracle", "--expert", "0",
                                 "--closed-loop", "0", "--first-frame", "3", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    per_kp = summary["phases"]["first-frame per keypoint"]
    assert len(per_kp) == 6 and all(v["n"] >= 1 for v in per_kp.values())
    assert max(v["median"] for v in per_kp.values()) < 0.5
    assert summary["phases"]["first-frame"]["transfer"]["over_8px"] == 0.0
    rows = (out / "tracking_gt.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 6   # one row per scene and keypoint: the first frame only
    assert "first-frame transfer per keypoint" in capsys.readouterr().out


def test_all_counts_zero_is_refused():
    import bench_tracking_gt

    with pytest.raises(SystemExit):
        bench_tracking_gt.parse_args(["--model", "m", "--expert", "0", "--closed-loop", "0"])
