"""atk-train end to end on real-photo episodes, its --help, and its bad-input errors."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_policy.cli import build_parser, main
from atk_policy.dataset import save_episode_cache
from atk_fixtures.episodes import rendered_episodes

ROOT = Path(__file__).resolve().parents[3]
PHOTO = ROOT / "tests" / "data" / "images" / "rubberwhale1.png"
TALKER_BAG = ROOT / "tests" / "data" / "rosbag2" / "talker_mcap"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    photo = np.ascontiguousarray(cv2.imread(str(PHOTO))[:, :, ::-1])
    eps, _ = rendered_episodes(photo, seed=0, num_episodes=6, steps=16)
    d = tmp_path_factory.mktemp("cli") / "cache"
    save_episode_cache(eps, d, progress=False)
    return d


def test_help_explains_every_option(capsys):
    parser = build_parser()
    for action in parser._actions:
        text = (action.help or "").replace("(default: %(default)s)", "").strip()
        assert len(text) > 10, f"option {action.option_strings or action.dest} has no explanation"
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for action in parser._actions:
        for opt in action.option_strings:
            assert opt in out


def test_end_to_end_from_cache(cache, tmp_path, capsys):
    from atk_policy.artifact import load_policy, read_model_json
    from atk_policy.rgb_baseline import load_rgb_policy

    manual = tmp_path / "manual.json"
    manual.write_text(json.dumps({"image_size": [160, 120], "points": [{"name": "left", "xy": [40, 60]},
                                                                          {"name": "right", "xy": [120, 60]}]}))
    out = tmp_path / "model"
    rc = main([str(cache), "-o", str(out), "--candidates", "12", "--candidate-method", "grid", "--steps", "150",
               "--eval-every", "50", "--hidden", "32,32", "--batch-size", "64", "--top-n", "3",
               "--baselines", "fullset,random,manual,rgb", "--manual-points", str(manual), "--rgb-steps", "20",
               "--no-progress"])
    assert rc == 0
    for f in ("policy.safetensors", "model.json", "template.png", "candidates.png", "curves.png",
              "summary.txt", "report.json", "candidates.json"):
        assert (out / f).is_file(), f
    pol = load_policy(out)
    assert len(pol.keypoint_ids) == 3 and pol.image_size == (160, 120)
    doc = read_model_json(out)
    cands = np.asarray(json.loads((out / "candidates.json").read_text())["points"])
    np.testing.assert_allclose(pol.canonical_xy, cands[pol.keypoint_ids])
    assert doc["selection"]["selected_ids"] == pol.keypoint_ids
    a = pol.select_action(pol.canonical_xy, np.zeros(7))
    assert a.shape == (7,) and np.isfinite(a).all()
    img = cv2.imread(str(out / "candidates.png"))
    assert img.shape == (120, 160, 3)
    report = json.loads((out / "report.json").read_text())
    assert set(report["baselines_val_mse"]) == {"fullset", "random", "manual", "rgb"}
    assert all(np.isfinite(v) for v in report["baselines_val_mse"].values())
    assert load_policy(out / "baselines" / "manual").keypoint_names == ["left", "right"]
    rgb = load_rgb_policy(out / "baselines" / "rgb")
    assert rgb.select_action(np.zeros((120, 160, 3), np.uint8), np.zeros(7)).shape == (7,)
    text = capsys.readouterr().out
    assert "selected N=3 of 12" in text and "all C candidates" in text
    # A second run into the same folder (tracks now from its cache) replaces the model.
    rc = main([str(cache), "-o", str(out), "--candidates", "12", "--candidate-method", "grid", "--steps", "20",
               "--hidden", "8", "--top-n", "2", "--baselines", "none", "--no-progress"])
    assert rc == 0 and len(load_policy(out).keypoint_ids) == 2


@pytest.mark.parametrize("args, words", [
    (["{bag}"], ["talker_mcap", "/topic"]),
    (["{missing}"], ["does not exist"]),
    (["{cache}", "--candidates", "4", "--top-n", "5"], ["C must be >= N"]),
    (["{cache}", "--baselines", "manual"], ["--manual-points"]),
    (["{cache}", "--canonical-episode", "nope"], ["'nope'", "rendered_0_00"]),
    (["{cache}", "--min-episode-length", "100"], ["no usable episodes", "too short"]),
    (["{cache}", "--alpha", "-1"], ["'alpha'"]),
])
def test_bad_input_is_reported_by_name(cache, tmp_path, capsys, args, words):
    fill = {"bag": str(TALKER_BAG), "missing": str(tmp_path / "missing"), "cache": str(cache)}
    rc = main([a.format(**fill) for a in args] + ["-o", str(tmp_path / "m"), "--no-progress", "--steps", "5"])
    err = capsys.readouterr().err
    assert rc == 2, err
    for w in words:
        assert w in err, err


def test_from_bags_written_like_recordings(tmp_path, capsys):
    """atk-train reads rosbag2 bags (via atk_policy.bags) and can cache the episodes for later runs."""
    from atk_policy.artifact import load_policy
    from atk_policy.bags import CameraInfoData, write_episode_bag

    photo = np.ascontiguousarray(cv2.imread(str(PHOTO))[:, :, ::-1])
    eps, _ = rendered_episodes(photo, seed=1, num_episodes=3, steps=12)
    for ep in eps:
        write_episode_bag(tmp_path / "bags" / ep.name, stamps=ep.stamps + 100.0,
                          images=[ep.frames[t] for t in range(len(ep))],
                          camera_info=CameraInfoData.pinhole(160, 120, 30.0),
                          joint_states=ep.proprio, joint_targets=ep.actions[:, :6],
                          gripper_commands=ep.actions[:, 6])
    rc = main([str(tmp_path / "bags"), "-o", str(tmp_path / "m"), "--save-cache", str(tmp_path / "cache"),
               "--candidates", "6", "--steps", "10", "--hidden", "8", "--top-n", "2", "--baselines", "none",
               "--val-fraction", "0.34", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert len(load_policy(tmp_path / "m").keypoint_ids) == 2
    summary = (tmp_path / "m" / "summary.txt").read_text()
    assert "episodes: 3 used (36 steps, 160x120)" in summary
    rc = main([str(tmp_path / "cache"), "-o", str(tmp_path / "m2"), "--candidates", "6", "--steps", "10",
               "--hidden", "8", "--top-n", "2", "--baselines", "none", "--val-fraction", "0.34", "--no-progress"])
    assert rc == 0


def _write_bags(folder: Path, n: int, seed: int = 1, steps: int = 12) -> list[Path]:
    from atk_policy.bags import CameraInfoData, write_episode_bag

    photo = np.ascontiguousarray(cv2.imread(str(PHOTO))[:, :, ::-1])
    eps, _ = rendered_episodes(photo, seed=seed, num_episodes=n, steps=steps)
    paths = []
    for ep in eps:
        paths.append(write_episode_bag(folder / ep.name, stamps=ep.stamps + 100.0,
                                       images=[ep.frames[t] for t in range(len(ep))],
                                       camera_info=CameraInfoData.pinhole(160, 120, 30.0),
                                       joint_states=ep.proprio, joint_targets=ep.actions[:, :6],
                                       gripper_commands=ep.actions[:, 6]))
    return paths


def test_every_bag_given_is_in_the_printed_summary_with_its_reason(tmp_path, capsys):
    """One truncated bag among three: was "2 used, 0 skipped", the bad bag only in report.json (issue 15, 6)."""
    good_a, bad, good_b = _write_bags(tmp_path / "bags", 3)
    mcap = next(bad.glob("*.mcap"))
    with open(mcap, "r+b") as f:
        f.truncate(mcap.stat().st_size // 2)
    rc = main([str(good_a), str(bad), str(good_b), "-o", str(tmp_path / "m"), "--candidates", "6", "--steps", "10",
               "--hidden", "8", "--top-n", "2", "--baselines", "none", "--val-fraction", "0.5", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "episodes: 2 used (24 steps, 160x120), 1 skipped" in out
    assert f"used: {good_a.name} (12), {good_b.name} (12)" in out
    skipped = [line for line in out.splitlines() if "SKIPPED" in line]
    assert len(skipped) == 1 and str(bad) in skipped[0] and "not a readable rosbag2 bag" in skipped[0]
    assert f"{bad}: {bad}" not in skipped[0]  # the path once at the head, not "<bag>: <bag>: ..." (the reindex hint may name it again)
    inputs = json.loads((tmp_path / "m" / "report.json").read_text())["episodes"]["inputs"]
    assert [(Path(e["path"]).name, e["status"]) for e in inputs] == [
        (good_a.name, "used"), (bad.name, "skipped"), (good_b.name, "used")]


def test_an_episode_too_short_to_train_on_is_named_as_skipped(tmp_path, capsys):
    paths = _write_bags(tmp_path / "bags", 3, seed=2)
    short = _write_bags(tmp_path / "short", 1, seed=3, steps=11)[0]  # bags need >= 10 frames to be read
    rc = main([str(p) for p in paths] + [str(short), "-o", str(tmp_path / "m"), "--candidates", "6",
                                         "--steps", "10", "--hidden", "8", "--top-n", "2", "--baselines", "none",
                                         "--val-fraction", "0.34", "--min-episode-length", "12", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "3 used (36 steps, 160x120), 1 skipped" in out
    assert f"SKIPPED {short}: too short: 11 steps < min_length 12" in out


def test_a_split_that_cannot_be_made_names_the_flag_and_leaves_no_output_folder(tmp_path, capsys):
    (bag,) = _write_bags(tmp_path / "bags", 1)
    out = tmp_path / "m"
    rc = main([str(bag), "-o", str(out), "--candidates", "6", "--steps", "10", "--hidden", "8", "--top-n", "2",
               "--baselines", "none", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--val-fraction 0.2" in err and "--val-fraction 0" in err and "val_fraction" not in err
    assert not out.exists()
