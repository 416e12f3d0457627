"""atk_policy.pipeline.train as a library call: episodes in memory, no argv, no CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_policy.config import ATKConfig, CandidateConfig, ModelConfig, SelectionConfig, TrainConfig
from atk_policy.pipeline import BaselineConfig, DataSource, PipelineError, TrainReport, train
from atk_fixtures.episodes import rendered_episodes

PHOTO = Path(__file__).resolve().parents[3] / "tests" / "data" / "images" / "rubberwhale1.png"


@pytest.fixture(scope="module")
def episodes() -> list:
    photo = np.ascontiguousarray(cv2.imread(str(PHOTO))[:, :, ::-1])
    eps, _ = rendered_episodes(photo, seed=4, num_episodes=5, steps=12)
    return eps


def small_config(**train) -> ATKConfig:
    return ATKConfig(candidates=CandidateConfig(num_candidates=8, method="grid"),
                     model=ModelConfig(hidden=(16,)),
                     train=TrainConfig(steps=30, eval_every=10, batch_size=32, warmup_steps=5, **train),
                     selection=SelectionConfig(top_n=2))


def test_trains_from_episodes_in_memory_and_reports_what_it_wrote(episodes, tmp_path, capsys):
    from atk_policy.artifact import load_policy

    out = tmp_path / "model"
    report = train(DataSource(episodes=episodes, canonical_episode=episodes[1].name, canonical_frame=3),
                   small_config(), BaselineConfig(names=("random",)), out, progress=False)
    assert isinstance(report, TrainReport)
    assert capsys.readouterr().out == ""  # the library prints nothing; atk-train prints report.summary
    assert report.episodes.used == 5 and report.episodes.steps == 60
    assert report.episodes.input_notes == ["5 episodes given in memory"]
    assert report.candidates.num_candidates == 8
    assert report.candidates.canonical == f"episode {episodes[1].name!r} frame 3"
    assert len(report.selected_ids) == 2 and report.candidate_points.shape == (8, 2)
    assert set(report.baselines_val_mse) == {"random"}
    assert report.seconds_total is not None and report.seconds_total > 0
    assert load_policy(out).keypoint_ids == report.selected_ids
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report.to_dict()))
    assert (out / "summary.txt").read_text() == report.summary + "\n"
    assert "selected N=2 of 8" in report.summary and "random N" in report.summary
    for f in ("candidates.png", "curves.png", "candidates.json", "baselines/random/model.json"):
        assert (out / f).is_file(), f
    assert not (out / "baselines" / "fullset").exists()


def test_an_impossible_split_names_the_field_and_leaves_no_folder(episodes, tmp_path):
    out = tmp_path / "model"
    with pytest.raises(PipelineError) as exc:
        train(DataSource(episodes=episodes[:1]), small_config(), BaselineConfig(names=()), out, progress=False)
    assert exc.value.field == "config.train.val_fraction"
    assert "config.train.val_fraction 0.2: 1 usable episode" in str(exc.value)
    assert exc.value.render({"config.train.val_fraction": "--val-fraction"}).endswith("pass --val-fraction 0")
    assert not out.exists()


def test_an_unknown_canonical_episode_lists_the_episodes(episodes, tmp_path):
    with pytest.raises(PipelineError) as exc:
        train(DataSource(episodes=episodes, canonical_episode="nope"), small_config(), BaselineConfig(names=()),
              tmp_path / "m", progress=False)
    assert exc.value.field == "source.canonical_episode"
    assert "'nope'" in str(exc.value) and episodes[0].name in str(exc.value)


@pytest.mark.parametrize("kwargs, field", [
    ({"names": ("fullset", "nope")}, "baselines.names"),
    ({"names": ("manual",)}, "baselines.manual_points"),
    ({"rgb_steps": 0}, "baselines.rgb_steps"),
])
def test_baseline_config_refuses_bad_fields_by_name(kwargs, field):
    with pytest.raises(ValueError) as exc:
        BaselineConfig(**kwargs)
    assert isinstance(exc.value, PipelineError) and exc.value.field == field and field in str(exc.value)


def test_a_source_is_paths_or_episodes_not_both(episodes):
    with pytest.raises(PipelineError, match="exactly one"):
        DataSource()
    with pytest.raises(PipelineError, match="exactly one"):
        DataSource(inputs=["bags"], episodes=episodes)
    with pytest.raises(PipelineError, match="source.canonical_frame"):
        DataSource(inputs=["bags"], canonical_frame=-1)
