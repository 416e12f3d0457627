"""atk-demo trains through atk_policy.pipeline.train with the settings an operator's atk-train command gives."""
from __future__ import annotations

from pathlib import Path

import pytest

from atk_bringup.experiment.demo import DemoConfig, training_inputs
from atk_policy import cli


@pytest.mark.parametrize("changes, flags", [
    ({}, []),
    ({"h_c": "oracle"}, []),
    ({"top_n": 4, "steps": 50, "methods": ("ATK", "RGB"), "candidates": 16, "chunk": 1, "action_mode": "delta",
      "keypoint_noise_px": 1.5, "propagation_workers": 1, "rgb_steps": 30, "train_robot_occlusion": True},
     ["--top-n", "4"]),
    ({"methods": ("ATK", "ManualSelect"), "width": 640, "height": 480}, []),
    ({"methods": ("ATK", "RGB", "Depth", "Pointcloud"), "depth_steps": 40, "pointcloud_steps": 50}, []),
])
def test_the_demo_trains_as_atk_train_would(tmp_path, changes, flags):
    cfg = DemoConfig(out=tmp_path, **changes)
    source, config, baselines, track_cache = training_inputs(cfg, seed=3)
    names = [b for b, m in (("fullset", "FullSet"), ("random", "RandomSelect"), ("manual", "ManualSelect"),
                            ("rgb", "RGB"), ("depth", "Depth"), ("pointcloud", "Pointcloud")) if m in cfg.methods]
    # The command line atk-demo ran before it called the library (its argv, kept as the reference).
    argv = [str(tmp_path / "bags"), "-o", str(tmp_path / "m"), "--canonical-episode", "demo_000",
            "--candidates", str(cfg.candidates), "--steps", str(cfg.steps), "--seed", "3",
            "--track-cache", str(tmp_path / "cache" / "tracks"), "--baselines", ",".join(names),
            "--rgb-steps", str(cfg.rgb_steps), "--depth-steps", str(cfg.depth_steps),
            "--pointcloud-steps", str(cfg.pointcloud_steps), "--action-mode", cfg.action_mode,
            "--chunk", str(cfg.chunk),
            "--keypoint-noise", str(cfg.keypoint_noise_px), "--workers", str(cfg.propagation_workers),
            "--backend", cfg.h_c] + flags
    if cfg.h_c != "oracle":   # the simulator's camera pose: the table search, and robot occlusion if asked
        argv += ["--camera-extrinsics", str(tmp_path / "camera_extrinsics.yaml")]
    if not cfg.train_robot_occlusion:   # propagation: off unless asked (the evaluation's is on)
        argv += ["--no-robot-occlusion"]
    if "ManualSelect" in cfg.methods:
        argv += ["--manual-points", str(tmp_path / "manual_keypoints.json")]
    args = cli.build_parser().parse_args(argv)
    want_source, want_config, want_baselines = cli.config_from_args(args)
    assert config == want_config
    assert baselines == want_baselines
    assert source == want_source
    assert track_cache == Path(args.track_cache)
    assert (tmp_path / "camera_extrinsics.yaml").is_file() == (cfg.h_c != "oracle")
