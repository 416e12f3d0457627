"""atk-demo's command line: refused values name the choices; --task all gives each task its own folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from atk_bringup.experiment import demo
from atk_bringup.sim.tasks import TASKS


def test_unknown_task_is_refused_with_the_choices(capsys):
    assert demo.main(["--task", "sushii", "--out", "/nonexistent/never-created"]) == 2
    err = capsys.readouterr().err
    assert "--task must be one of sushi, glass_lid, clock_button, clock_hand (or all), got 'sushii'" in err
    assert not Path("/nonexistent/never-created").exists()


def test_task_all_runs_every_task_in_its_own_folder(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(demo, "run", lambda cfg: ran.append((cfg.task, cfg.out)) or 0)
    assert demo.main(["--task", "all", "--out", str(tmp_path), "--quick"]) == 0
    assert ran == [(t, tmp_path / t) for t in TASKS]
    assert len(ran) == 4


def test_one_task_keeps_the_given_folder(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(demo, "run", lambda cfg: ran.append((cfg.task, cfg.out, cfg.train_seeds)) or 0)
    assert demo.main(["--task", "glass_lid", "--out", str(tmp_path)]) == 0
    assert ran == [("glass_lid", tmp_path, (0,))]   # default: one training seed


def test_a_failing_task_stops_task_all(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(demo, "run", lambda cfg: ran.append(cfg.task) or (3 if cfg.task == "glass_lid" else 0))
    assert demo.main(["--task", "all", "--out", str(tmp_path)]) == 3
    assert ran == ["sushi", "glass_lid"]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "a"], "--seeds must be comma-separated integers"),
    (["--size", "320"], "--size must look like 320x240"),
    (["--chunk", "0"], "--chunk must be a positive integer"),
    (["--h-c", "cpu", "--eval-episodes", "2", "--ros-episodes", "3"], "--ros-episodes (3) must be at most"),
])
def test_bad_values_are_refused(argv, message, capsys, tmp_path):
    assert demo.main(argv + ["--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


def test_backgrounds_folder_is_checked_and_passed_on(tmp_path, monkeypatch, capsys):
    assert demo.main(["--backgrounds", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "--backgrounds must be a folder of photographs" in capsys.readouterr().err
    ran = []
    monkeypatch.setattr(demo, "run", lambda cfg: ran.append(cfg) or 0)
    assert demo.main(["--backgrounds", str(tmp_path), "--out", str(tmp_path / "x")]) == 0
    assert ran[0].backgrounds == str(tmp_path.resolve())
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "lab.png"), np.zeros((64, 64, 3), np.uint8))
    env = demo.make_env(ran[0])   # the run's simulator gets them
    try:
        assert len(env.photos) == 1
    finally:
        env.close()


def test_defaults_are_sized_for_twenty_minutes(tmp_path, monkeypatch):
    """The default run (measured 21 min with 10 and with 6 scenes, one seed) evaluates 4 scenes, one
    training seed, 3 of them also through the ROS graph; --full is the paper-sized run."""
    ran = []
    monkeypatch.setattr(demo, "run", lambda cfg: ran.append(cfg) or 0)
    assert demo.main(["--out", str(tmp_path)]) == 0
    assert demo.main(["--out", str(tmp_path), "--full"]) == 0
    default, full = ran
    assert (default.eval_episodes, default.train_seeds, default.ros_episodes, default.demos) == (4, (0,), 3, 60)
    assert default.methods == demo.DEFAULT_METHODS and "ManualSelect" not in default.methods
    assert default.chunk == 4 and default.action_mode == "tcp"
    assert (full.eval_episodes, full.train_seeds, full.ros_episodes, full.demos) == (20, (0, 1, 2), 20, 100)


@pytest.mark.parametrize("argv, deploy, train", [
    ([], False, False),
    (["--robot-occlusion"], True, False),
    (["--train-robot-occlusion"], False, True),
])
def test_robot_occlusion_at_deployment_and_in_training_are_separate_switches(tmp_path, monkeypatch, argv, deploy,
                                                                              train):
    ran = []
    monkeypatch.setattr(demo, "run", lambda cfg: ran.append(cfg) or 0)
    assert demo.main(argv + ["--out", str(tmp_path)]) == 0
    assert (ran[0].robot_occlusion, ran[0].train_robot_occlusion) == (deploy, train)
    source, config, _, _ = demo.training_inputs(ran[0], seed=0)
    assert config.propagation.robot_occlusion == train


def test_evaluation_resume_does_not_count_episodes_of_the_other_robot_occlusion_setting(tmp_path, monkeypatch):
    """A run resumed with the other setting evaluates the tracked keypoint rows again (the oracle and
    image rows do not depend on it); the file keeps both."""
    cfg = demo.DemoConfig(out=tmp_path, eval_episodes=1, ros_episodes=0, methods=("ATK", "RGB"), eval_workers=1,
                          robot_occlusion=True)
    (tmp_path / "eval").mkdir()
    old = [{"method": m, "h_c": h, "train_seed": 0, "condition": c, "seed": 10000, "success": True}
           for m, h in demo.evaluation_rows(cfg) for c in demo.CONDITIONS]   # no field: an earlier run, off
    (tmp_path / "eval" / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    jobs = []

    def fake_episode(job):
        jobs.append(job)
        method, h_c, ts, cond, seed, *_, aware = job
        return {"method": method, "h_c": h_c, "train_seed": ts, "condition": cond, "seed": seed,
                "success": False, "robot_occlusion": aware}

    monkeypatch.setattr(demo, "_worker_init", lambda *a, **k: None)
    monkeypatch.setattr(demo, "_worker_episode", fake_episode)
    table = demo.evaluate(cfg, {0: tmp_path / "m"})
    assert sorted({(j[0], j[1]) for j in jobs}) == [("ATK", "cpu")]
    assert all(j[-1] for j in jobs) and len(jobs) == len(demo.CONDITIONS)
    assert table[demo.row_name("ATK", "cpu")]["RP"].successes == 0
    assert table[demo.row_name("ATK", "oracle")]["RP"].successes == 1
    assert table["RGB"]["RP"].successes == 1
    assert len((tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()) == len(old) + len(jobs)
