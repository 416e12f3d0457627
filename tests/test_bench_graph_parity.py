"""benchmarks/bench_graph_parity.py's report: pairs graph and in-process
episodes by model and scene, and counts what issue 17 asks to be counted."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_graph_parity", ROOT / "benchmarks" / "bench_graph_parity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_pairs_by_model_and_scene(bench, tmp_path):
    a, b = tmp_path / "runA" / "models" / "seed0", tmp_path / "runA" / "models" / "seed1"
    graph = [
        {"model": str(a), "seed": 1, "success": True, "steps": 70, "transfers": 1, "error": "",
         "retransfer_causes": [], "policy_states": {"STATE_RUNNING": 69}},
        {"model": str(a), "seed": 2, "success": False, "steps": 40, "transfers": 3, "error": "held for 5.0 s",
         "retransfer_causes": ["frames resumed after # s: keypoints transferred again"],
         "policy_states": {"STATE_RUNNING": 10, "STATE_HOLD_STALE": 50}},
        {"model": str(b), "seed": 1, "success": False, "steps": 300, "transfers": 1, "error": "",
         "retransfer_causes": [], "policy_states": {"STATE_RUNNING": 300}},
        # a scene the in-process side has not run yet: not paired
        {"model": str(b), "seed": 2, "success": True, "steps": 80, "transfers": 1, "error": "",
         "retransfer_causes": [], "policy_states": {"STATE_RUNNING": 80}},
    ]
    inproc = [
        {"model": str(a), "seed": 1, "success": True, "steps": 71, "transfers": 1, "error": "",
         "hold_reasons": {}, "frames_dropped": 0},
        {"model": str(a), "seed": 2, "success": True, "steps": 90, "transfers": 1, "error": "",
         "hold_reasons": {"LATE": 4}, "frames_dropped": 2},
        {"model": str(b), "seed": 1, "success": False, "steps": 300, "transfers": 2, "error": "",
         "hold_reasons": {"HOLD_LOW_CONFIDENCE": 3}, "frames_dropped": 1},
    ]
    _write(tmp_path / "graph.jsonl", graph)
    _write(tmp_path / "inprocess.jsonl", inproc)
    text = bench.report([a, b], [1, 2], tmp_path)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "1/2 = 0.50" in rows["runA/seed0"] and "2/2 = 1.00" in rows["runA/seed0"]
    assert "seed0:2(0/1)" in rows["runA/seed0"]          # graph failed, in-process succeeded
    assert rows["runA/seed1"].split("|")[2].strip() == "1"  # one paired scene
    assert "1/3 = 0.33" in rows["all"] and "2/3 = 0.67" in rows["all"]
    assert "-0.33" in rows["all"]                          # paired difference
    assert "{1: 2, 3: 1}" in text                          # graph transfers per episode
    assert "'STATE_HOLD_STALE': 50" in text and "episodes with a stale hold: 1; ended by the stall rule: 1" in text
    assert "'LATE': 4" in text and "frames dropped: 3" in text


def test_report_keeps_the_robot_occlusion_settings_apart(bench, tmp_path):
    a = tmp_path / "runB" / "models" / "seed0"
    base = {"model": str(a), "seed": 1, "steps": 70, "transfers": 1, "error": ""}
    _write(tmp_path / "graph.jsonl", [{**base, "success": False},                     # before the field: off
                                      {**base, "success": True, "robot_occlusion": True}])
    _write(tmp_path / "inprocess.jsonl", [{**base, "success": False, "robot_occlusion": False},
                                          {**base, "success": True, "robot_occlusion": True}])
    on = bench.report([a], [1], tmp_path, robot_occlusion=True)
    off = bench.report([a], [1], tmp_path, robot_occlusion=False)
    row = {t: next(x for x in text.splitlines() if x.startswith("| all")) for t, text in (("on", on), ("off", off))}
    assert row["on"].count("1/1 = 1.00") == 2 and row["off"].count("0/1 = 0.00") == 2
