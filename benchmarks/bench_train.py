"""Benchmark of ATK training and propagation (prints figures; not a test).

    python benchmarks/bench_train.py [--quick] [--device cpu|cuda] [--threads 1]

1. Training on 50 episodes x 150 steps x 64 candidates (the planted
   synthetic dataset of atk_fixtures.episodes (tests/fixtures), default ATKConfig: MLP 256x256,
   batch 512, 3000 steps, lr 1e-3, mask lr 1e-2, alpha 3e-3): seconds of
   mask training, seconds to convergence (first evaluation from which the
   kept set no longer changes and the validation error stays within 10% of
   its final value), samples per second, whether the 3 planted keypoints
   were kept, and the final policy's time. Target: under 60 s.
2. Propagation (Algorithm 1 with the CPU h_C) on a real video
   (tests/data/images/tree.avi, 320x240): frames per second for several
   candidate counts.

Timings depend on what else runs on the machine; run it alone to compare.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def bench_training(device: str, threads: int, steps: int) -> None:
    from atk_policy.config import ATKConfig, TrainConfig
    from atk_fixtures.episodes import planted_dataset
    from atk_policy.train import TrackSet, fit, make_policy, select_ids, split_episodes, train_on_keypoints
    from atk_policy.model import Normalisation

    d = planted_dataset(0, num_episodes=50, steps=150, num_candidates=64)
    ts = TrackSet.from_tracked(d.episodes, d.image_size)
    cfg = ATKConfig(train=TrainConfig(steps=steps, eval_every=100, device=device, num_threads=threads))
    tr, va = split_episodes(len(ts.names), cfg.train.val_fraction, 0)
    train, val = ts.subset_episodes(tr), ts.subset_episodes(va)
    norm = Normalisation.from_data(train.proprio, train.actions)
    pol = make_policy(train, range(64), d.canonical_xy, cfg.model, norm, learn_mask=True)
    res = fit(pol, train, val, cfg.train, desc="mask+policy")
    hist = res.history
    final_kept, final_val = hist[-1]["kept"], hist[-1]["val_mse"]
    conv = hist[-1]
    for i in range(len(hist)):
        tail = hist[i:]
        if all(h["kept"] == final_kept for h in tail) and all(h["val_mse"] <= 1.1 * final_val for h in tail):
            conv = hist[i]
            break
    sel = select_ids(pol.keep_probs(), cfg.model.keep_threshold)
    t0 = time.perf_counter()
    final = train_on_keypoints("final", train, val, sel, d.canonical_xy, cfg, init=pol.slice_keypoints(sel))
    t_final = time.perf_counter() - t0
    print(f"training: {len(train)} train samples ({len(tr)} episodes), {len(val)} val, C=64, "
          f"device {device}, torch threads {threads}")
    print(f"  mask+policy: {res.seconds:.1f} s for {res.steps} steps, {res.samples_per_s:,.0f} samples/s")
    print(f"  converged at step {conv['step']} after {conv['time_s']:.1f} s "
          f"(kept {final_kept}, val_mse {final_val:.4f})")
    print(f"  selected {sorted(sel.tolist())}, planted {d.relevant.tolist()}: "
          f"{'all kept' if set(d.relevant) <= set(sel.tolist()) else 'MISSED some'}")
    print(f"  final policy on {len(sel)} keypoints: {t_final:.1f} s, val_mse {final.fit.val_mse:.4f}")
    print(f"  target < 60 s to convergence: {'met' if conv['time_s'] < 60 else 'NOT met'}")


def bench_propagation(counts: list[int], frames: int) -> None:
    import cv2

    from atk_policy.candidates import sample_candidates
    from atk_policy.config import CandidateConfig
    from atk_policy.dataset import ArrayFrames, Episode
    from atk_policy.propagation import propagate_dataset

    cap = cv2.VideoCapture(str(ROOT / "tests" / "data" / "images" / "tree.avi"))
    imgs = []
    while len(imgs) < frames + 1:
        ok, f = cap.read()
        if not ok:
            break
        imgs.append(np.ascontiguousarray(f[:, :, ::-1]))
    template, video = imgs[0], np.stack(imgs[1:])
    t = len(video)
    ep = Episode("tree", ArrayFrames(video), np.arange(t) / 30.0, np.zeros((t, 7)), np.zeros((t, 7)))
    print(f"propagation: real video {video.shape[2]}x{video.shape[1]}, {t} frames, CPU h_C (transfer + track)")
    for c in counts:
        cands = sample_candidates(template, CandidateConfig(num_candidates=c, method="texture")).points
        t0 = time.perf_counter()
        out = propagate_dataset([ep], template, cands, backend="cpu", progress=False)[0]
        dt = time.perf_counter() - t0
        print(f"  C={c:4d}: {t / dt:6.1f} frames/s ({dt:.2f} s), visible {100 * out.visible.mean():.0f}%, "
              f"mean confidence {out.confidence.mean():.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps/frames (smoke run)")
    ap.add_argument("--device", default="cpu", help="torch device for training (default: cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    ap.add_argument("--skip-propagation", action="store_true", help="training figures only")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other work skews timings)")
    bench_training(args.device, args.threads, 500 if args.quick else 3000)
    if not args.skip_propagation:
        bench_propagation([16, 64, 256], 30 if args.quick else 100)


if __name__ == "__main__":
    main()
