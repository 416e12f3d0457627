"""Benchmark of the h_C CPU backend: per-frame cost, transfer cost, drift, transfer error.

Prints (no pass/fail):
* mean / p95 / max cost of ``update`` for N = 8, 16, 64 points at 640x480
  and 1280x720 (re-anchoring frames included: the mean is the amortised cost);
* per ``reanchor_mode`` (inline, split, async) at 640x480, N = 16: mean /
  p99 / max of ``update``, free-running and paced at 30 fps (async: the
  background job then overlaps the frames as it does in the tracker node),
  the frames between a snapshot and its applied correction, and the drift;
* cost of ``transfer``;
* drift (median error after 100 frames, mean error over all frames) per
  perturbation, with re-anchoring and with plain LK (reanchor_period=0);
* transfer error per perturbation (template = first frame, target = last
  frame), and on the moved-object / moved-background scenes.

Timings depend on the machine and on what else runs on it: quote them with
the CPU model and load.

    python benchmarks/bench_perception.py [--frames 100] [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from tqdm import tqdm

from atk_perception.cpu_tracker import REANCHOR_MODES, CpuTracker, CpuTrackerConfig
from atk_fixtures.images import (PERTURBATIONS, make_sequence, moved_object_scene,
                                     moved_object_sequence)


def _track(tracker: CpuTracker, seq, fps: float = 0.0,
           delays: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame wall seconds (T-1,), process CPU seconds (T-1,) and errors (T-1, N).

    ``fps`` > 0 paces the frames (the frame period minus the update's cost is
    slept): a background re-anchoring then overlaps frames as in the node.
    ``delays`` collects, per applied re-anchoring, the frames from its snapshot.
    """
    tracker.reset(seq.frames[0], seq.points[0])
    wall, cpu, errs = [], [], []
    applied = 0
    next_t = time.perf_counter()
    for t in range(1, len(seq.frames)):
        if fps > 0:
            next_t += 1.0 / fps
            time.sleep(max(0.0, next_t - time.perf_counter()))
        t0, c0 = time.perf_counter(), time.process_time()
        r = tracker.update(seq.frames[t])
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        errs.append(np.linalg.norm(r.points - seq.points[t], axis=1))
        if delays is not None and tracker.reanchors_applied > applied:
            applied = tracker.reanchors_applied
            delays.append(tracker.last_anchor_delay_frames)
    tracker.close()
    return np.array(wall), np.array(cpu), np.array(errs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100, help="frames per sequence")
    ap.add_argument("--quick", action="store_true", help="fewer sizes (smoke run)")
    ap.add_argument("--fps", type=float, default=0.0,
                    help="pace of the drift and moved-object runs (0: free-running, right for the "
                         "default 'split' mode; an 'async' tracker free-running lags by as many "
                         "frames as LK runs during one re-anchoring)")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} (timings are noisy on a shared machine)")

    print("\n== update cost (ms per frame, free-running; mean includes re-anchoring every "
          f"{CpuTrackerConfig().reanchor_period} frames, reanchor_mode "
          f"{CpuTrackerConfig().reanchor_mode!r}; CPU includes its worker thread) ==")
    sizes = [(640, 480)] if args.quick else [(640, 480), (1280, 720)]
    for size in sizes:
        for n in (8, 16, 64):
            seq = make_sequence("rotation", min(args.frames, 60), size, n, seed=10)
            wall, cpu, _ = _track(CpuTracker(), seq)
            ms, cms = wall * 1000, cpu * 1000
            print(f"{size[0]}x{size[1]} N={n:3d}: wall mean {ms.mean():6.1f}  p95 "
                  f"{np.percentile(ms, 95):6.1f}  max {ms.max():6.1f} | CPU mean {cms.mean():6.1f}"
                  f"  max {cms.max():6.1f}")

    print(f"\n== update cost per reanchor_mode, 640x480, N=16, {args.frames} frames, rotation "
          "(ms per frame; delay = frames from snapshot to applied correction) ==")
    seq = make_sequence("rotation", args.frames, (640, 480), 16, seed=10)
    vis = seq.visible[1:]
    for mode in REANCHOR_MODES:
        for fps in (0.0, 30.0):
            delays: list = []
            wall, _, e = _track(CpuTracker(CpuTrackerConfig(reanchor_mode=mode)), seq, fps, delays)
            ms = wall * 1000
            pace = "free  " if fps == 0 else f"{fps:.0f} fps"
            print(f"{mode:6s} {pace}: mean {ms.mean():5.1f}  p99 {np.percentile(ms, 99):5.1f}  "
                  f"max {ms.max():5.1f} | re-anchorings {len(delays):2d}, delay median "
                  f"{np.median(delays) if delays else float('nan'):4.1f} max "
                  f"{max(delays) if delays else 0:2d} | drift final median "
                  f"{np.median(e[-1][vis[-1]]):5.2f} px, mean {e[vis].mean():5.2f} px")

    print("\n== transfer cost and error (template = first frame, target = last frame) ==")
    for size in sizes:
        for kind in PERTURBATIONS:
            # The last frame: the strongest perturbation (35 deg rotation,
            # 1.35x zoom, gain 0.55, ...), plus ~35 px of translation.
            seq = make_sequence(kind, args.frames, size, 16, seed=11)
            tracker = CpuTracker()
            t0, c0 = time.perf_counter(), time.process_time()
            out, conf = tracker.transfer(seq.frames[0], seq.points[0], seq.frames[-1])
            dt = (time.perf_counter() - t0) * 1000
            dc = (time.process_time() - c0) * 1000
            vis = seq.visible[-1]
            err = np.linalg.norm(out - seq.points[-1], axis=1)[vis]
            print(f"{size[0]}x{size[1]} {kind:12s}: {dt:6.1f} ms wall {dc:6.1f} ms CPU  median err {np.median(err):5.2f} px"
                  f"  max {err.max():6.2f} px  median conf {np.median(conf[vis]):.2f}")
    for label, mo, mb in (("object moved, table static", True, False),
                          ("table moved, object static on it", False, True),
                          ("both moved", True, True)):
        errs = []
        for seed in range(5):
            tpl, tgt, pts, true = moved_object_scene(seed=seed, move_object=mo, move_background=mb)
            out, _ = CpuTracker().transfer(tpl, pts, tgt)
            errs.append(np.linalg.norm(out - true, axis=1))
        e = np.concatenate(errs)
        print(f"640x480 {label:33s}: median err {np.median(e):5.2f} px  max {e.max():6.2f} px"
              f"  (5 scenes x 12 points)")

    print(f"\n== drift over {args.frames} frames, 640x480, N=16 (px; re-anchored run "
          f"{'paced at %g fps' % args.fps if args.fps > 0 else 'free-running'}) ==")
    print(f"{'perturbation':12s} | {'re-anchored: final median / mean all / CPU ms':42s} | "
          "plain LK: final median / mean all")
    for kind in tqdm(PERTURBATIONS, desc="drift", leave=False, disable=None):
        seq = make_sequence(kind, args.frames, (640, 480), 16, seed=12)
        vis = seq.visible[1:]
        _, t_a, e_a = _track(CpuTracker(), seq, args.fps)
        _, _, e_p = _track(CpuTracker(CpuTrackerConfig(reanchor_period=0)), seq)
        print(f"{kind:12s} | {np.median(e_a[-1][vis[-1]]):6.2f} / {e_a[vis].mean():6.2f} / "
              f"{1000 * t_a.mean():5.1f}{'':21s} | {np.median(e_p[-1][vis[-1]]):6.2f} / "
              f"{e_p[vis].mean():6.2f}")

    print("\n== tracking a small object that slides 70 px and turns 25 deg, 40 frames (px) ==")
    for label, mb in (("table static", False), ("table moving too", True)):
        seq = moved_object_sequence(40, (640, 480), seed=13, move_background=mb)
        for groups in (CpuTrackerConfig().group_max_models, 1):
            _, _, e = _track(CpuTracker(CpuTrackerConfig(group_max_models=groups)), seq, args.fps)
            print(f"{label:16s} group_max_models={groups}: object points final max {e[-1][:6].max():6.2f}"
                  f"  table points final max {e[-1][6:].max():6.2f}")


if __name__ == "__main__":
    main()

