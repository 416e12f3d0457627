"""Deployed vs evaluated: the same ATK models on the same scenes through the
real ROS graph and through atk-demo's in-process evaluation (issue 17).

For each model, runs the RP scenes ``--first-scene`` .. + ``--scenes`` - 1

  graph:      ``atk-graph deploy sim:=true`` (sim, tracker and policy nodes
              over DDS), one graph per model, one episode per scene
              (``ros_episode.run_graph_episodes``, stall rule ``--stall-s``);
  in-process: atk-demo's own evaluation jobs (``demo._worker_episode``:
              ``KeypointAgent`` with the graph's timing modelled, the same
              stall rule), in ``--workers`` processes as atk-demo runs them;

and prints per model and pooled: successes / episodes with 95 % Wilson
intervals, the paired difference (graph - in-process) with a 95 % interval
over scenes, the scenes where they disagree, transfers per graph episode
(a re-transfer loop shows as many), the causes of re-transfers, and the
holds on both sides (graph: policy/status messages by state; in-process:
control steps without a new action by reason, dropped frames). Results are
appended to ``--out``/graph.jsonl and inprocess.jsonl as they come, so an
interrupted run resumes; ``--report-only`` prints the report of what is there.

    python benchmarks/bench_graph_parity.py --models runs/x/models/seed0 runs/x/models/seed1 \\
        [--scenes 20] [--out runs/graph_parity] [--workers 2]

Run it on an otherwise idle machine: both sides measure wall time (the graph
in real time, the in-process model with its tracker's wall time), so load
changes what either does. A graph episode costs 10-40 s, an in-process one
2-15 s of CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np


def _load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _model_size(model_dir: Path) -> tuple[int, int]:
    from atk_perception.keypoint_template import load_model_template

    h, w = load_model_template(model_dir).image.shape[:2]
    return w, h


def run_graph(models: list[Path], scenes: list[int], out: Path, stall_s: float, timeout_s: float,
              robot_occlusion: bool) -> None:
    from atk_bringup.experiment.evaluation import CONDITIONS
    from atk_bringup.experiment.demo import recorded_robot_occlusion, write_sim_extrinsics
    from atk_bringup.graph_tools.ros_episode import run_graph_episodes

    path = out / "graph.jsonl"
    done = {(r["model"], r["seed"]) for r in _load(path) if recorded_robot_occlusion(r) == robot_occlusion}
    with open(path, "a") as log:
        for model in models:
            todo = [s for s in scenes if (str(model), s) not in done]
            if not todo:
                continue
            w, h = _model_size(model)

            def record(r: dict, model: Path = model) -> None:
                r = {"model": str(model), "robot_occlusion": robot_occlusion, **r}
                log.write(json.dumps(r) + "\n")
                log.flush()
                print(f"[graph] {model.name} scene {r['seed']}: success={r['success']} steps={r['steps']} "
                      f"transfers={r['transfers']} {r['error']}", flush=True)

            t = time.perf_counter()
            run_graph_episodes(model_dir=model, task="sushi", seeds=todo, perturbations=CONDITIONS["RP"],
                               width=w, height=h, timeout_s=timeout_s, log_dir=out / "ros" / model.name,
                               stall_s=stall_s, on_result=record,
                               # the simulator's camera pose, as the in-process agent uses it (table search)
                               camera_extrinsics=write_sim_extrinsics(out / "camera_extrinsics.yaml"),
                               robot_occlusion=robot_occlusion)
            print(f"[graph] {model}: {len(todo)} episodes in {time.perf_counter() - t:.0f} s", flush=True)


def run_inprocess(models: list[Path], scenes: list[int], out: Path, stall_s: float, workers: int,
                  bags: Path | None, robot_occlusion: bool) -> None:
    from atk_bringup.experiment import demo

    path = out / "inprocess.jsonl"
    done = {(r["model"], r["seed"]) for r in _load(path) if demo.recorded_robot_occlusion(r) == robot_occlusion}
    jobs, owner = [], {}
    for i, model in enumerate(models):
        for s in scenes:
            if (str(model), s) not in done:
                # the job's train_seed field keys the worker's agent cache: one per model
                jobs.append(("ATK", "cpu", i, "RP", s, str(model), "sushi", stall_s,
                             str(bags or model), robot_occlusion))
                owner[(i, s)] = model
    if not jobs:
        return
    sizes = {_model_size(m) for m in models}
    if len(sizes) != 1:
        raise SystemExit(f"models of different resolutions {sorted(sizes)}: run them separately")
    w, h = sizes.pop()
    t = time.perf_counter()
    with open(path, "a") as log:
        def record(r: dict) -> None:
            r = {"model": str(owner[(r["train_seed"], r["seed"])]), **r}
            log.write(json.dumps(r) + "\n")
            log.flush()
            print(f"[in-process] {Path(r['model']).name} scene {r['seed']}: success={r['success']} "
                  f"steps={r['steps']} transfers={r.get('transfers')} {r['error']}", flush=True)

        if workers > 1:
            with mp.get_context("spawn").Pool(workers, demo._worker_init, (w, h, os.getpid())) as pool:
                for r in pool.imap_unordered(demo._worker_episode, jobs):
                    record(r)
        else:
            demo._worker_init(w, h)
            for job in jobs:
                record(demo._worker_episode(job))
    print(f"[in-process] {len(jobs)} episodes in {time.perf_counter() - t:.0f} s", flush=True)


def _paired(diffs: list[int]) -> str:
    """Mean paired difference with a 95 % normal interval over scenes."""
    if not diffs:
        return "n/a"
    d = np.asarray(diffs, float)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]"


def report(models: list[Path], scenes: list[int], out: Path, robot_occlusion: bool | None = None) -> str:
    """The table and counts; ``robot_occlusion`` True/False: only the results measured with that setting
    (None: all)."""
    from atk_bringup.experiment.demo import recorded_robot_occlusion
    from atk_bringup.experiment.evaluation import wilson_interval

    def mine(r: dict) -> bool:
        return robot_occlusion is None or recorded_robot_occlusion(r) == robot_occlusion

    graph = {(r["model"], r["seed"]): r for r in _load(out / "graph.jsonl") if mine(r)}
    inproc = {(r["model"], r["seed"]): r for r in _load(out / "inprocess.jsonl") if mine(r)}
    lines = ["| model | scenes | ROS graph | in-process | graph - in-process (95 %) | disagree (graph/in-process) |",
             "|---|---|---|---|---|---|"]

    def cell(rs: list[dict]) -> str:
        k, n = sum(r["success"] for r in rs), len(rs)
        lo, hi = wilson_interval(k, n)
        return f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]" if n else "n/a"

    pooled_g: list[dict] = []
    pooled_i: list[dict] = []
    for model in models + [None]:
        ms = [str(m) for m in (models if model is None else [model])]
        pairs = [(graph[(m, s)], inproc[(m, s)]) for m in ms for s in scenes
                 if (m, s) in graph and (m, s) in inproc]
        g = [p[0] for p in pairs]
        i = [p[1] for p in pairs]
        dis = [f"{Path(a['model']).name}:{a['seed']}({int(a['success'])}/{int(b['success'])})"
               for a, b in pairs if a["success"] != b["success"]]
        name = "all" if model is None else f"{model.parent.parent.name}/{model.name}"
        lines.append(f"| {name} | {len(pairs)} | {cell(g)} | {cell(i)} | "
                     f"{_paired([int(a['success']) - int(b['success']) for a, b in pairs])} | "
                     f"{', '.join(dis) or '-'} |")
        if model is None:
            pooled_g, pooled_i = g, i
    transfers = Counter(r.get("transfers") for r in pooled_g)
    causes = Counter(c for r in pooled_g for c in r.get("retransfer_causes", []))
    g_states = Counter()
    for r in pooled_g:
        g_states.update(r.get("policy_states", {}))
    stale_eps = sum(1 for r in pooled_g if r.get("policy_states", {}).get("STATE_HOLD_STALE"))
    stalled_g = sum(1 for r in pooled_g if r.get("error"))
    i_reasons = Counter()
    for r in pooled_i:
        i_reasons.update(r.get("hold_reasons", {}))
    i_transfers = Counter(r.get("transfers") for r in pooled_i)
    stalled_i = sum(1 for r in pooled_i if r.get("error"))
    dropped = sum(r.get("frames_dropped", 0) for r in pooled_i)
    steps_i = sum(r["steps"] for r in pooled_i)
    lines += [
        "",
        f"graph transfers per episode: {dict(sorted(transfers.items(), key=lambda kv: str(kv[0])))}; "
        f"in-process: {dict(sorted(i_transfers.items(), key=lambda kv: str(kv[0])))}",
        f"graph re-transfer causes: {dict(causes.most_common())}",
        f"graph policy/status messages by state: {dict(g_states.most_common())}; "
        f"episodes with a stale hold: {stale_eps}; ended by the stall rule: {stalled_g}",
        f"in-process steps without a new action, by reason: {dict(i_reasons.most_common())} "
        f"(of {steps_i} steps); frames dropped: {dropped}; ended by the stall rule: {stalled_i}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", type=Path, required=True, help="ATK model folders (atk-train output)")
    p.add_argument("--scenes", type=int, default=20, help="RP scenes per model (default: 20)")
    p.add_argument("--first-scene", type=int, default=10_000, help="first scene seed (default: 10000, atk-demo's)")
    p.add_argument("--out", type=Path, default=Path("runs/graph_parity"), help="results folder (resumed)")
    p.add_argument("--stall-s", type=float, default=5.0, help="stall rule, both sides (default: 5, atk-demo's)")
    p.add_argument("--timeout-s", type=float, default=120.0, help="wall-time limit of one graph episode")
    p.add_argument("--workers", type=int, default=2, help="in-process evaluation processes (default: 2, atk-demo's)")
    p.add_argument("--bags", type=Path, default=None,
                   help="the demos' bag folder (only the oracle needs it; default: none)")
    p.add_argument("--robot-occlusion", action=argparse.BooleanOptionalAction, default=False,
                   help="robot-aware occlusion on both sides, with the simulator's camera pose (default: off, "
                        "as atk-demo; results of both settings can share --out, each reported apart)")
    p.add_argument("--skip-graph", action="store_true")
    p.add_argument("--skip-inprocess", action="store_true")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    for m in args.models:
        if not (m / "model.json").is_file():
            p.error(f"{m} is not a model folder (no model.json)")
    if args.scenes < 1:
        p.error("--scenes must be >= 1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    args.out.mkdir(parents=True, exist_ok=True)
    models = [m.resolve() for m in args.models]
    scenes = [args.first_scene + i for i in range(args.scenes)]
    if not args.report_only:
        if not args.skip_graph:
            run_graph(models, scenes, args.out, args.stall_s, args.timeout_s, args.robot_occlusion)
        if not args.skip_inprocess:
            run_inprocess(models, scenes, args.out, args.stall_s, args.workers, args.bags, args.robot_occlusion)
    text = (f"robot-aware occlusion: {'on' if args.robot_occlusion else 'off'}\n"
            + report(models, scenes, args.out, args.robot_occlusion))
    (args.out / "report.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
