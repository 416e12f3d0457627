"""Keypoint tracking against simulator ground truth, per task phase.

For a trained ATK model (its template and selected keypoints), runs h_C
(default: the CPU tracker with the tracker node's defaults; robot-aware
occlusion with --robot-occlusion, off as in atk-demo) inside the tracking
session and policy input gate as
deployed (atk-demo's ``keypoint_agent``), at the model's resolution (the
deployment one), along

  (a) N expert episodes: the scripted expert acts, the tracker watches;
  (b) N closed-loop episodes: the model acts on what the tracker reports;

and compares every reported keypoint with the truth from
``atk_bringup.sim.ground_truth`` (the template's keypoints anchored on the
canonical frame, moved with their bodies, visibility by a depth test).

Phases, from the gripper and the task state: approach (gripper open, never
closed yet), grasp (closed, object not lifted 1 cm), carry (closed, object
lifted), release+ (open again after closing, and everything after).
Frame 0 (the transfer from the template) is reported on its own.

Per episode kind and phase it prints, over keypoints whose true position
lies in the image: the error median / p90 / p99 (px), the share > 8 px off,
the confident-miss rate (> 8 px off while visible at a confidence the
policy's gate accepts, GateConfig.confidence_threshold), and precision and
recall of the reported 'not visible' against the truth (occluded, outside
or behind). Writes one CSV row per frame and keypoint and a PNG of one
episode's error over time with the phases shaded.

    python benchmarks/bench_tracking_gt.py --model runs/x/models/seed0 \\
        [--expert 20] [--closed-loop 20] [--backend cpu] [--out runs/tracking_gt]

The 'oracle' backend (privileged, simulation-only) must give 0 px: a check
of this benchmark itself.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

PHASES = ("transfer", "approach", "grasp", "carry", "release+")
#: Object whose lift separates grasp from carry, per task (None: no carry phase).
TASK_OBJECT = {"sushi": "sushi", "glass_lid": None, "clock_button": None, "clock_hand": None}
MISS_PX = 8.0
#: Gripper closure (0 open .. 1 closed, measured) above which it counts as closed.
CLOSED = 0.05
LIFT_M = 0.01


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_tracking_gt.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True,
                   help="trained ATK model folder (model.json + template.png): template, keypoints, policy")
    p.add_argument("--task", default="sushi", help="simulated task (default: sushi)")
    p.add_argument("--backend", default="cpu",
                   help="h_C backend: cpu (default, the tracker node's defaults), cotracker, or oracle "
                        "(PRIVILEGED, SIMULATION-ONLY ground truth: 0 px by construction, a self-check)")
    p.add_argument("--robot-occlusion", action="store_true",
                   help="robot-aware occlusion around h_C, with the simulated camera's exact pose (default: off, "
                        "as atk-demo; not used by the oracle)")
    p.add_argument("--expert", type=int, default=20, help="expert episodes (default: 20)")
    p.add_argument("--closed-loop", type=int, default=20, help="closed-loop episodes of the model (default: 20)")
    p.add_argument("--first-frame", type=int, default=0,
                   help="scenes on which only the first frame's transfer from the template is measured, "
                        "with a per-keypoint table (cheap: no episode runs; default: 0)")
    p.add_argument("--perturbations", default="RP", help="comma-separated conditions (default: RP)")
    p.add_argument("--seed", type=int, default=30_000,
                   help="first scene seed; episode i uses seed+i in both kinds (default: 30000, apart from "
                        "atk-demo's demos 0.. and evaluation 10000..)")
    p.add_argument("--bags", type=Path, default=None,
                   help="the model's demonstration bags (to find the canonical frame's ground truth); "
                        "default: none, the canonical frame is demo_000's (seed 0 under RP)")
    p.add_argument("--stall-s", type=float, default=5.0,
                   help="a closed-loop episode ends after the policy held this long in a row (default: 5)")
    p.add_argument("--after-success-s", type=float, default=1.0,
                   help="expert episodes go on this long after success, as the recorded demos do (default: 1)")
    p.add_argument("--plot-episode", default="closed-loop:0",
                   help="episode for the error-over-time plot, KIND:INDEX (default: closed-loop:0)")
    p.add_argument("--out", type=Path, default=Path("runs/tracking_gt"),
                   help="folder for tracking_gt.csv, summary.json and error_over_time.png "
                        "(default: runs/tracking_gt)")
    args = p.parse_args(argv)
    if min(args.expert, args.closed_loop, args.first_frame) < 0 or \
            args.expert + args.closed_loop + args.first_frame == 0:
        p.error("--expert, --closed-loop and --first-frame must be >= 0, and not all 0")
    return args


class Phases:
    """Phase of each control step from the gripper closure and the object's height."""

    def __init__(self, env, task: str) -> None:
        name = TASK_OBJECT.get(task)
        self.body = env.model.body(name).id if name else None
        self.z0 = float(env.data.xpos[self.body][2]) if self.body is not None else 0.0
        self.closed_once = False

    def __call__(self, env, obs) -> str:
        closed = float(obs.joint_positions[6]) > CLOSED
        if self.closed_once and not closed:
            return "release+"
        if not closed:
            return "release+" if self.closed_once else "approach"
        self.closed_once = True
        lifted = self.body is not None and float(env.data.xpos[self.body][2]) > self.z0 + LIFT_M
        return "carry" if lifted else "grasp"


def run_episode(env, agent, kind: str, task: str, seed: int, perturbations, anchors, args, gate_threshold):
    """One episode; returns rows (dicts) of per-keypoint records and whether it succeeded."""
    from atk_bringup.experiment.evaluation import HoldStreak
    from atk_bringup.sim.ground_truth import SceneGroundTruth, Visibility

    outputs = []
    process = agent.session.process

    def spy(*a, **k):
        out = process(*a, **k)
        outputs.append(out)
        return out

    agent.session.process = spy
    obs = env.reset(task=task, seed=seed, perturbations=perturbations)
    truth = SceneGroundTruth.from_env(env)
    phases = Phases(env, task)
    agent.reset(obs)
    streak = HoldStreak(agent, int(round(args.stall_s * env.config.control_hz)) if args.stall_s else None)
    post = int(round(args.after_success_s * env.config.control_hz)) if kind == "expert" else 0
    rows, t, extra = [], 0, 0
    while True:
        if env.done:
            if kind != "expert" or not env.success() or extra >= post:
                break
            extra += 1
        n_before = len(outputs)
        action = streak.act(obs)
        out = outputs[-1] if len(outputs) > n_before or t == 0 else None
        view = truth.observe(anchors)
        phase = "transfer" if t == 0 else phases(env, obs)
        if out is not None:
            for k in range(len(anchors)):
                ex, ey = (float(v) for v in out.points[k])
                gx, gy = (float(v) for v in view.points[k])
                status = int(view.status[k])
                in_image = status in (Visibility.VISIBLE, Visibility.OCCLUDED)
                rows.append({
                    "kind": kind, "seed": seed, "t": t, "phase": phase, "keypoint": k,
                    "tracker_state": int(out.state), "x": ex, "y": ey, "confidence": float(out.confidence[k]),
                    "reported_visible": int(bool(out.visible[k])),
                    "accepted": int(bool(out.visible[k]) and float(out.confidence[k]) >= gate_threshold
                                    and np.isfinite([ex, ey]).all()),
                    "gt_x": gx, "gt_y": gy, "gt_status": Visibility(status).name.lower(),
                    "occluder": int(view.occluder[k]),
                    "error_px": float(np.hypot(ex - gx, ey - gy)) if in_image else float("nan")})
        if streak.stalled or kind == "first-frame":
            break
        if kind == "expert":
            action = env.expert_action()
        if not np.all(np.isfinite(action)):
            break
        obs = env.step(action)
        t += 1
    agent.session.process = process
    return rows, bool(env.success())


def summarise(rows: list[dict]) -> dict:
    err = np.array([r["error_px"] for r in rows], float)
    inside = np.isfinite(err)
    e = err[inside]
    acc = np.array([r["accepted"] for r in rows], bool)
    vis_true = np.array([r["gt_status"] == "visible" for r in rows], bool)
    rep_hidden = ~np.array([r["reported_visible"] for r in rows], bool)
    true_hidden = ~vis_true
    tp = int((rep_hidden & true_hidden).sum())
    out = {"n": int(len(rows)), "n_in_image": int(inside.sum()),
           "median": float(np.median(e)) if len(e) else float("nan"),
           "p90": float(np.percentile(e, 90)) if len(e) else float("nan"),
           "p99": float(np.percentile(e, 99)) if len(e) else float("nan"),
           "over_8px": float(np.mean(e > MISS_PX)) if len(e) else float("nan"),
           "confident_miss": float(np.mean((err > MISS_PX) & acc & inside)) if len(rows) else float("nan"),
           "hidden_precision": tp / int(rep_hidden.sum()) if rep_hidden.any() else float("nan"),
           "hidden_recall": tp / int(true_hidden.sum()) if true_hidden.any() else float("nan"),
           "true_hidden_share": float(true_hidden.mean()) if len(rows) else float("nan")}
    return out


def print_table(summary: dict) -> None:
    head = (f"{'kind':<12}{'phase':<10}{'n':>7}{'median':>8}{'p90':>8}{'p99':>8}{'>8px':>7}"
            f"{'conf.miss':>10}{'hid.prec':>9}{'hid.rec':>8}{'hidden':>7}")
    print(head)
    print("-" * len(head))
    for kind, phases in summary.items():
        for phase, s in phases.items():
            print(f"{kind:<12}{phase:<10}{s['n']:>7}{s['median']:>8.1f}{s['p90']:>8.1f}{s['p99']:>8.1f}"
                  f"{s['over_8px']:>7.2f}{s['confident_miss']:>10.3f}{s['hidden_precision']:>9.2f}"
                  f"{s['hidden_recall']:>8.2f}{s['true_hidden_share']:>7.2f}")


def print_first_frames(rows: list[dict], gate_threshold: float) -> dict:
    """Per keypoint over the first-frame transfers: share > MISS_PX off, median error, median
    confidence, confident misses (> MISS_PX off, accepted by the gate). Returns the figures."""
    out = {}
    print(f"\nfirst-frame transfer per keypoint ({len({r['seed'] for r in rows})} scenes; 'conf.miss': > "
          f"{MISS_PX:g} px off and accepted at confidence >= {gate_threshold})")
    print(f"{'keypoint':>8}{'n':>5}{'median':>8}{'p90':>8}{'>8px':>7}{'conf.med':>9}{'conf.miss':>10}")
    for k in sorted({r["keypoint"] for r in rows}):
        rk = [r for r in rows if r["keypoint"] == k and np.isfinite(r["error_px"])]
        if not rk:
            continue
        e = np.array([r["error_px"] for r in rk])
        c = np.array([r["confidence"] for r in rk])
        acc = np.array([r["accepted"] for r in rk], bool)
        out[k] = {"n": len(rk), "median": float(np.median(e)), "p90": float(np.percentile(e, 90)),
                  "over_8px": float(np.mean(e > MISS_PX)), "confidence_median": float(np.median(c)),
                  "confident_miss": float(np.mean((e > MISS_PX) & acc))}
        f = out[k]
        print(f"{k:>8}{f['n']:>5}{f['median']:>8.1f}{f['p90']:>8.1f}{f['over_8px']:>7.2f}"
              f"{f['confidence_median']:>9.2f}{f['confident_miss']:>10.2f}")
    return out


def plot_episode(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = np.array([r["t"] for r in rows])
    t_max = int(ts.max()) + 1
    n_kp = int(max(r["keypoint"] for r in rows)) + 1
    err = np.full((t_max, n_kp), np.nan)
    hidden = np.zeros((t_max, n_kp), bool)
    phase_at = {}
    for r in rows:
        err[r["t"], r["keypoint"]] = r["error_px"]
        hidden[r["t"], r["keypoint"]] = r["gt_status"] != "visible"
        phase_at[r["t"]] = r["phase"]
    colours = {"transfer": "#dddddd", "approach": "#e8f1fb", "grasp": "#fdebd3", "carry": "#fbd9d9",
               "release+": "#e3f5e1"}
    fig, ax = plt.subplots(figsize=(10, 4))
    start = 0
    for t in range(1, t_max + 1):
        if t == t_max or phase_at.get(t) != phase_at.get(start):
            ph = phase_at.get(start, "")
            ax.axvspan(start - 0.5, t - 0.5, color=colours.get(ph, "white"), lw=0)
            ax.text((start + t) / 2, 0.98, ph, transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=8)
            start = t
    for k in range(n_kp):
        line, = ax.plot(np.arange(t_max), err[:, k], lw=1, label=f"kp {k}")
        h = hidden[:, k]
        ax.plot(np.arange(t_max)[h], err[h, k], "x", ms=3, color=line.get_color())
    ax.axhline(MISS_PX, color="k", ls="--", lw=0.8)
    ax.set_xlabel("control step (10 Hz)")
    ax.set_ylabel("error vs ground truth (px)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_title(title + "  (x: truly hidden; dashed: 8 px)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from atk_bringup.experiment.demo import keypoint_agent, sim_camera
    from atk_bringup.sim.env import SimConfig, SimEnv
    from atk_bringup.sim.ground_truth import SimGroundTruthSource
    from atk_perception.keypoint_template import load_model_template
    from atk_policy.gating import GateConfig

    template = load_model_template(args.model)
    w, h = template.size
    perturbations = tuple(p.strip().upper() for p in args.perturbations.split(",") if p.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    env = SimEnv(SimConfig(width=w, height=h, render_depth=False))
    source = SimGroundTruthSource(folders=[args.bags] if args.bags else (), live_env=env)
    source.add_reset_frame(args.task, 0, ("RP",), w, h)
    try:
        anchors = source.anchor(template.image, template.points)
    except ValueError as exc:
        print(f"bench_tracking_gt: {exc}\n(the template must be a simulated frame: give the model's --bags)",
              file=sys.stderr)
        return 2
    camera = sim_camera(w, h) if args.robot_occlusion and args.backend != "oracle" else None
    agent = keypoint_agent(args.model, args.backend, env, args.bags, args.task, camera=camera)
    gate_threshold = GateConfig().confidence_threshold
    print(f"model {args.model}: {len(template.points)} keypoints, {w}x{h}, h_C {args.backend!r}"
          + ("  [PRIVILEGED, SIMULATION-ONLY]" if args.backend == "oracle" else "")
          + (", robot-aware occlusion" if camera is not None else "")
          + f", task {args.task}, {'+'.join(perturbations)}, gate threshold {gate_threshold}")
    jobs = ([("expert", i) for i in range(args.expert)] + [("closed-loop", i) for i in range(args.closed_loop)]
            + [("first-frame", i) for i in range(args.first_frame)])
    rows: list[dict] = []
    per_episode: dict[tuple[str, int], list[dict]] = {}
    success = {"expert": [], "closed-loop": [], "first-frame": []}
    t0 = time.perf_counter()
    with open(args.out / "tracking_gt.csv", "w", newline="") as fh:
        writer = None
        for kind, i in tqdm(jobs, desc="episodes", unit="ep"):
            ep_rows, ok = run_episode(env, agent, kind, args.task, args.seed + i, perturbations, anchors, args,
                                      gate_threshold)
            success[kind].append(ok)
            per_episode[(kind, i)] = ep_rows
            rows += ep_rows
            if ep_rows:
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(ep_rows[0]))
                    writer.writeheader()
                writer.writerows(ep_rows)
    env.close()
    summary = {kind: {ph: summarise([r for r in rows if r["kind"] == kind and r["phase"] == ph])
                      for ph in PHASES if any(r["kind"] == kind and r["phase"] == ph for r in rows)}
               for kind in ("expert", "closed-loop", "first-frame") if any(r["kind"] == kind for r in rows)}
    for kind in [k for k in summary if k != "first-frame"]:
        summary[kind]["all but t=0"] = summarise([r for r in rows if r["kind"] == kind and r["phase"] != "transfer"])
    print(f"\n{len(jobs)} episodes in {time.perf_counter() - t0:.0f} s; success: "
          + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in success.items() if v and k != "first-frame"))
    print(f"errors over keypoints whose true position is in the image; 'conf.miss': > {MISS_PX:g} px off while "
          "visible at a confidence the gate accepts; 'hid.prec/rec': reported not-visible vs truly hidden; "
          "'hidden': share truly hidden\n")
    print_table(summary)
    first = [r for r in rows if r["kind"] == "first-frame"]
    if first:
        summary["first-frame per keypoint"] = print_first_frames(first, gate_threshold)
    (args.out / "summary.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "success": success, "phases": summary}, indent=1))
    kind, _, idx = args.plot_episode.partition(":")
    key = (kind, int(idx or 0))
    if key in per_episode and per_episode[key]:
        plot_episode(per_episode[key], args.out / "error_over_time.png",
                     f"{args.task} {kind} episode {key[1]} (seed {args.seed + key[1]}), h_C {args.backend}, "
                     f"success {success[kind][key[1]]}")
        print(f"\nplot: {args.out / 'error_over_time.png'}")
    print(f"rows: {args.out / 'tracking_gt.csv'}; summary: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
