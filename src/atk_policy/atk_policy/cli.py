"""``atk-train``: from demonstration bags (or an episode cache) to a keypoint-policy folder.

ROS-free front end of the library (no rclpy): read episodes, choose the
canonical image, sample candidates, propagate them (Algorithm 1), train the
mask + policy, select keypoints, retrain on the selected ones, write the
artifact, figures and a summary. Run ``atk-train --help`` for every option.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

EPILOG = """\
outputs (in --output, which becomes the model folder the policy node loads):
  policy.safetensors, model.json, template.png   the artifact (see atk_policy.artifact)
  candidates.json     the C candidate pixels on the canonical image and how each was found
  candidates.png      canonical image: candidates (grey, radius ~ keep-probability),
                      selected keypoints (green, labelled with their id)
  curves.png          training curves (loss, validation error, kept keypoints)
  summary.txt         the one-screen summary printed at the end
  report.json         every figure of the summary, machine-readable
  baselines/<name>/   artifacts of the baselines asked for with --baselines
  checkpoints/        resumable checkpoint of the mask training (--resume)
  cache/tracks/       propagated tracks, keyed by a hash of their inputs

examples:
  atk-train ~/bags/pick_*/ -o models/pick
  atk-train ~/bags -o models/pick --alpha 0.005 --top-n 6 --baselines fullset,random,rgb
  atk-train --save-cache data/pick_cache ~/bags -o models/pick   # next time: atk-train data/pick_cache ...
"""


class CliError(Exception):
    """An input problem reported to the user without a traceback."""


def _ids(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    from .config import CANDIDATE_METHODS, HEADS, ModelConfig, TrainConfig

    mc, tc = ModelConfig(), TrainConfig()
    p = argparse.ArgumentParser(
        prog="atk-train", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="ATK: select task-relevant keypoints from demonstrations and train a keypoint policy "
                    "on them (paper section 3.2, Algorithm 1).")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="rosbag2 bag folders, .mcap/.db3 files, folders holding bags (searched "
                        "recursively), or one episode cache folder written by --save-cache")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="output model folder (created; existing model files are overwritten)")
    g = p.add_argument_group("data")
    g.add_argument("--save-cache", type=Path, metavar="DIR",
                   help="also write the episodes read from bags to this episode cache (PNG frames + npz), "
                        "which later runs can read instead of the bags")
    g.add_argument("--action-source", choices=("commands", "future_joint_state"), default="commands",
                   help="bags only: 'commands' = joint_target + gripper_command topics are the expert actions "
                        "(simulation, teleoperation); 'future_joint_state' = measured joints a horizon ahead "
                        "(kinesthetic teaching) (default: %(default)s)")
    g.add_argument("--action-horizon", type=float, default=0.1, metavar="S",
                   help="with --action-source future_joint_state: horizon in seconds (default: %(default)s)")
    g.add_argument("--include-failed", action="store_true",
                   help="bags only: also use episodes labelled success: false (default: skipped)")
    g.add_argument("--min-episode-length", type=int, default=tc.min_episode_length, metavar="T",
                   help="episodes with fewer steps are skipped and listed (default: %(default)s)")
    g = p.add_argument_group("canonical image and candidates")
    g.add_argument("--canonical-episode", default="0", metavar="NAME|INDEX",
                   help="episode whose frame is the canonical image I_can (default: the first)")
    g.add_argument("--canonical-frame", type=int, default=0, metavar="T",
                   help="frame index within that episode (default: %(default)s)")
    g.add_argument("--canonical-image", type=Path, metavar="PNG",
                   help="use this image as I_can instead (same size as the episodes' frames)")
    g.add_argument("--candidates", type=int, default=64, metavar="C",
                   help="number of candidate keypoints C (default: %(default)s)")
    g.add_argument("--candidate-method", choices=CANDIDATE_METHODS, default="texture",
                   help="grid, random, or texture (corners, then SIFT, then random fill) (default: %(default)s)")
    g.add_argument("--candidate-seed", type=int, default=0,
                   help="seed of the random candidates and of the texture sampler's random fill (default: %(default)s)")
    g.add_argument("--roi-mask", type=Path, metavar="PNG",
                   help="grey/binary image of I_can's size; candidates only where it is nonzero")
    g = p.add_argument_group("propagation (h_C)")
    g.add_argument("--backend", default="cpu",
                   help="correspondence backend name for atk_perception (default: %(default)s)")
    g.add_argument("--workers", type=int, default=1,
                   help="episodes propagated in parallel processes (default: %(default)s)")
    g.add_argument("--min-confidence", type=float, default=0.0,
                   help="points with lower h_C confidence count as not visible (default: %(default)s)")
    g.add_argument("--camera-extrinsics", type=Path, metavar="YAML",
                   help="camera pose in the robot base frame (atk-calibrate's file): points the robot covers "
                        "are predicted from the joint states instead of tracked, as on the deployed tracker "
                        "(needs camera_info in the bags). Default: off")
    g.add_argument("--track-cache", type=Path, metavar="DIR",
                   help="cache of propagated tracks (default: OUTPUT/cache/tracks)")
    g = p.add_argument_group("training (defaults: table 6 of the paper scaled for small datasets)")
    g.add_argument("--steps", type=int, default=tc.steps, help="optimiser steps of mask training (default: %(default)s)")
    g.add_argument("--final-steps", type=int, default=None,
                   help="steps of the final policy and baselines (default: --steps)")
    g.add_argument("--batch-size", type=int, default=tc.batch_size,
                   help="samples per optimiser step (table 6 uses 2048-4096 on large datasets) (default: %(default)s)")
    g.add_argument("--lr", type=float, default=tc.lr, help="Adam learning rate of the policy (default: %(default)s)")
    g.add_argument("--mask-lr", type=float, default=tc.mask_lr,
                   help="Adam learning rate of the mask logits (default: %(default)s)")
    g.add_argument("--alpha", type=float, default=tc.alpha,
                   help="sparsity weight on the sum of keep-probabilities (default: %(default)s)")
    g.add_argument("--init-keep-prob", type=float, default=mc.init_keep_prob,
                   help="initial keep-probability of every candidate (default: %(default)s)")
    g.add_argument("--tau", type=float, nargs=2, default=(mc.tau_start, mc.tau_end), metavar=("START", "END"),
                   help="Gumbel temperature, annealed exponentially (default: %(default)s)")
    g.add_argument("--action-mode", choices=("delta", "absolute", "tcp"), default=mc.action_mode,
                   help="'delta': joint targets are learned relative to the measured joints (the step "
                        "the expert takes); 'absolute': raw targets; 'tcp': Cartesian steps of the "
                        "tool (UR5e + 2F-85 kinematics), converted to joint targets by IK "
                        "(default: %(default)s)")
    g.add_argument("--chunk", type=int, default=mc.chunk, metavar="K",
                   help="action chunking: predict K control steps at once, execute them one per "
                        "step (default: %(default)s)")
    g.add_argument("--no-binary-gripper", action="store_true",
                   help="publish the regressed gripper command as is instead of 0/1")
    g.add_argument("--head", choices=HEADS, default=mc.head,
                   help="policy head: deterministic MSE or Gaussian NLL (default: %(default)s)")
    g.add_argument("--hidden", default=",".join(map(str, mc.hidden)), metavar="W,W",
                   help="MLP hidden layer widths (default: %(default)s)")
    g.add_argument("--keypoint-noise", type=float, default=tc.keypoint_noise_px, metavar="PX",
                   help="std (px) of Gaussian noise added to training keypoints each step "
                        "(augmentation; default: %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=tc.warmup_steps,
                   help="steps of linear learning-rate warmup before the cosine decay (default: %(default)s)")
    g.add_argument("--eval-every", type=int, default=tc.eval_every,
                   help="steps between validation evaluations, curve points and checkpoints (default: %(default)s)")
    g.add_argument("--val-fraction", type=float, default=tc.val_fraction,
                   help="share of episodes held out for validation (default: %(default)s)")
    g.add_argument("--seed", type=int, default=tc.seed,
                   help="seed of the train/validation split, weights, batches, masks and RandomSelect "
                        "(default: %(default)s)")
    g.add_argument("--device", default=tc.device, help="torch device, e.g. cpu or cuda (default: %(default)s)")
    g.add_argument("--threads", type=int, default=tc.num_threads,
                   help="torch CPU threads for training, 0 = torch default (default: %(default)s; the small "
                        "MLPs train fastest on one thread)")
    g.add_argument("--resume", action="store_true",
                   help="continue the mask training from OUTPUT/checkpoints/mask.ckpt if present")
    g = p.add_argument_group("selection")
    g.add_argument("--top-n", type=int, default=None, metavar="N",
                   help="keep the N most probable keypoints (default: all above --threshold)")
    g.add_argument("--threshold", type=float, default=mc.keep_threshold,
                   help="keep-probability above which a keypoint is kept (default: %(default)s)")
    g = p.add_argument_group("baselines (same trainer; reported in the summary)")
    g.add_argument("--baselines", default="fullset", metavar="LIST",
                   help="comma list of fullset, random, manual, rgb, or 'none' (default: %(default)s)")
    g.add_argument("--manual-points", type=Path, metavar="JSON",
                   help="points for the manual baseline: {\"points\": [{\"name\": .., \"xy\": [x, y]}]}")
    g.add_argument("--rgb-steps", type=int, default=600,
                   help="steps of the RGB baseline (default: %(default)s; with the default batch about a minute "
                        "on one CPU core)")
    g.add_argument("--rgb-batch-size", type=int, default=64,
                   help="mini-batch of the RGB baseline; images cost ~1.5 ms each per step on a CPU core "
                        "(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _read_episodes(args: argparse.Namespace, progress: bool) -> tuple[list, list[str], list[dict] | None]:
    """(episodes, notes, bag entries): one entry per bag or path given (None for an episode cache)."""
    from .dataset import is_episode_cache, load_episode_cache, save_episode_cache

    notes: list[str] = []
    if len(args.inputs) == 1 and is_episode_cache(args.inputs[0]):
        episodes = load_episode_cache(args.inputs[0])
        notes.append(f"episode cache {args.inputs[0]}: {len(episodes)} episodes")
        return episodes, notes, None
    for inp in args.inputs:
        if not Path(inp).exists():
            raise CliError(f"input {inp} does not exist")
        if is_episode_cache(inp):
            raise CliError(f"{inp} is an episode cache; give it as the only input")
    from . import bags

    cfg = bags.BagConversionConfig(action_source=args.action_source, action_horizon_s=args.action_horizon,
                                   skip_failed=not args.include_failed)
    episodes, report = bags.load_episodes(args.inputs, config=cfg, progress=progress)
    notes.append(report.summary())
    if args.save_cache:
        save_episode_cache(episodes, args.save_cache, progress=progress)
        notes.append(f"episodes cached in {args.save_cache}")
    entries = [{"path": e.path, "status": e.status, "reason": e.reason, "frames": e.frames} for e in report.entries]
    return episodes, notes, entries


def input_entries(bag_entries: list[dict] | None, episodes: list, skipped: list) -> list[dict]:
    """Every input of the run, used or skipped with the reason, in the order given.

    bag_entries: the bag report (None for an episode cache); episodes: those
    kept for training; skipped: SkippedEpisode of the episodes that were read
    but are not trained on (too short, another image size).
    """
    dropped = {s.name: s.reason for s in skipped}
    if bag_entries is None:
        return ([{"path": e.name, "status": "used", "reason": "", "frames": len(e)} for e in episodes]
                + [{"path": name, "status": "skipped", "reason": why, "frames": 0} for name, why in dropped.items()])
    by_bag: dict[str, str] = {}
    for e in episodes:
        by_bag[str(e.meta.get("bag", e.name))] = ""
    out = []
    for entry in bag_entries:
        entry = dict(entry)
        name = Path(entry["path"]).stem if Path(entry["path"]).is_file() else Path(entry["path"]).name
        if entry["status"] == "used" and entry["path"] not in by_bag:
            # read, then left out of training; the reason is keyed by episode name
            why = next((r for n, r in dropped.items() if n == name or n.startswith(name + "_")), "not used")
            entry.update(status="skipped", reason=why)
        out.append(entry)
    return out


def _barrier() -> None:
    """Wait for every torchrun rank (no-op in a single process); bounded by train.DIST_TIMEOUT_S."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _canonical(args: argparse.Namespace, episodes: list) -> tuple[np.ndarray, str]:
    import cv2

    if args.canonical_image:
        bgr = cv2.imread(str(args.canonical_image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CliError(f"--canonical-image {args.canonical_image} is missing or not an image")
        img = np.ascontiguousarray(bgr[:, :, ::-1])
        w, h = episodes[0].image_size
        if img.shape[:2] != (h, w):
            raise CliError(f"--canonical-image is {img.shape[1]}x{img.shape[0]}, episodes are {w}x{h}")
        return img, str(args.canonical_image)
    key = args.canonical_episode
    by_name = {e.name: e for e in episodes}
    if key in by_name:
        ep = by_name[key]
    elif key.lstrip("-").isdigit() and -len(episodes) <= int(key) < len(episodes):
        ep = episodes[int(key)]
    else:
        raise CliError(f"--canonical-episode {key!r} is neither an episode name nor an index < {len(episodes)}; "
                       f"episodes: {', '.join(e.name for e in episodes[:10])}{' ...' if len(episodes) > 10 else ''}")
    if not 0 <= args.canonical_frame < len(ep):
        raise CliError(f"--canonical-frame {args.canonical_frame} is outside episode {ep.name!r} "
                       f"({len(ep)} frames)")
    return np.asarray(ep.frames[args.canonical_frame]), f"episode {ep.name!r} frame {args.canonical_frame}"


def draw_candidates(image: np.ndarray, candidates: np.ndarray, keep_probs: np.ndarray,
                    selected: Sequence[int]) -> np.ndarray:
    """Canonical image with candidates (grey, radius by keep-probability) and selected (green, id)."""
    import cv2

    out = np.ascontiguousarray(image[:, :, ::-1].copy())  # BGR for OpenCV drawing
    scale = max(1.0, image.shape[1] / 640)
    for i, (x, y) in enumerate(candidates):
        r = int(round((2 + 10 * float(keep_probs[i])) * scale))
        cv2.circle(out, (int(round(x)), int(round(y))), r, (200, 200, 200), max(1, int(scale)), cv2.LINE_AA)
    for i in selected:
        x, y = candidates[i]
        r = int(round((2 + 10 * float(keep_probs[i])) * scale))
        c = (int(round(x)), int(round(y)))
        cv2.circle(out, c, r, (0, 200, 0), max(2, int(2 * scale)), cv2.LINE_AA)
        cv2.putText(out, str(int(i)), (c[0] + r + 2, c[1] - r), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale,
                    (0, 255, 0), max(1, int(scale)), cv2.LINE_AA)
    return np.ascontiguousarray(out[:, :, ::-1])


def plot_curves(path: Path, runs: dict[str, list[dict]]) -> None:
    """Training curves: loss and validation error per run, kept keypoints of the mask run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, hist in runs.items():
        if not hist:
            continue
        steps = [h["step"] for h in hist]
        axes[0].plot(steps, [h["loss"] for h in hist], label=name)
        axes[1].plot(steps, [h["val_mse"] for h in hist], label=name)
        if "kept" in hist[0]:
            axes[2].plot(steps, [h["kept"] for h in hist], label=name)
    axes[0].set_title("training loss")
    axes[1].set_title("validation error (normalised MSE)")
    axes[2].set_title("kept keypoints (p > threshold)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    import cv2

    from .artifact import save_policy, write_png_rgb
    from .baselines import load_manual_points, random_select_ids
    from .candidates import sample_candidates
    from .config import (ATKConfig, CandidateConfig, ModelConfig, PropagationConfig, SelectionConfig,
                         TrainConfig)
    from .dataset import filter_episodes
    from .propagation import propagate_dataset
    from .train import TrackSet, TrainingError, run_atk, split_episodes, train_on_keypoints

    progress = not args.no_progress
    t_start = time.perf_counter()
    try:
        hidden = tuple(int(v) for v in _ids(args.hidden))
    except ValueError:
        raise CliError(f"--hidden must be comma-separated integers, got {args.hidden!r}") from None
    baselines = [b for b in _ids(args.baselines) if b != "none"]
    unknown = sorted(set(baselines) - {"fullset", "random", "manual", "rgb"})
    if unknown:
        raise CliError(f"--baselines: unknown {unknown}; choose from fullset, random, manual, rgb, none")
    if "manual" in baselines and not args.manual_points:
        raise CliError("--baselines manual needs --manual-points JSON")
    try:
        cfg = ATKConfig(
            candidates=CandidateConfig(num_candidates=args.candidates, method=args.candidate_method,
                                       seed=args.candidate_seed),
            propagation=PropagationConfig(backend=args.backend, workers=args.workers,
                                          min_confidence=args.min_confidence,
                                          camera_extrinsics=str(args.camera_extrinsics or "")),
            model=ModelConfig(head=args.head, action_mode=args.action_mode, chunk=args.chunk,
                              binary_gripper=not args.no_binary_gripper, hidden=hidden,
                              init_keep_prob=args.init_keep_prob,
                              tau_start=args.tau[0], tau_end=args.tau[1], keep_threshold=args.threshold),
            train=TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, mask_lr=args.mask_lr,
                              alpha=args.alpha, warmup_steps=min(args.warmup_steps, args.steps),
                              eval_every=args.eval_every, val_fraction=args.val_fraction, seed=args.seed,
                              device=args.device, num_threads=args.threads,
                              min_episode_length=args.min_episode_length,
                              keypoint_noise_px=args.keypoint_noise),
            selection=SelectionConfig(top_n=args.top_n, final_steps=args.final_steps))
    except ValueError as exc:
        raise CliError(str(exc)) from None

    from .train import init_distributed

    world, rank = init_distributed(cfg.train.device)
    progress = progress and rank == 0
    out: Path = args.output
    report: dict = {"output": str(out), "world_size": world}

    # 1. episodes (checked before the output folder is made, so a refused run leaves none)
    episodes, notes, bag_entries = _read_episodes(args, progress)
    episodes, skipped = filter_episodes(episodes, cfg.train.min_episode_length)
    try:
        split_episodes(len(episodes), cfg.train.val_fraction, cfg.train.seed)
    except TrainingError:
        raise CliError(f"--val-fraction {cfg.train.val_fraction}: {len(episodes)} usable episode cannot be split "
                       f"into training and validation; give more episodes or pass --val-fraction 0") from None
    out.mkdir(parents=True, exist_ok=True)
    inputs = input_entries(bag_entries, episodes, skipped)
    report["episodes"] = {"used": len(episodes), "steps": int(sum(len(e) for e in episodes)),
                          "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
                          "inputs": inputs, "image_size": list(episodes[0].image_size), "input_notes": notes}

    # 2. canonical image and candidates
    canonical, canon_from = _canonical(args, episodes)
    roi = None
    if args.roi_mask:
        roi = cv2.imread(str(args.roi_mask), cv2.IMREAD_GRAYSCALE)
        if roi is None:
            raise CliError(f"--roi-mask {args.roi_mask} is missing or not an image")
        roi = roi > 0
    cands = sample_candidates(canonical, cfg.candidates, roi)
    if rank == 0:
        (out / "candidates.json").write_text(json.dumps(
            {"canonical_from": canon_from, "image_size": list(episodes[0].image_size),
             "points": cands.points.tolist(), "source": cands.source, "info": cands.info}, indent=1))
    report["candidates"] = {"C": len(cands.points), "method": cfg.candidates.method, "canonical": canon_from,
                            **{k: v for k, v in cands.info.items() if k == "sources"}}

    # 3. propagation (Algorithm 1). Under torchrun rank 0 propagates into the
    # cache while the others wait, then they read the same tracks from it.
    t0 = time.perf_counter()
    track_cache = args.track_cache or (out / "cache" / "tracks")
    if rank != 0:
        _barrier()
    tracked = propagate_dataset(episodes, canonical, cands.points, backend=cfg.propagation.backend,
                                min_confidence=cfg.propagation.min_confidence, workers=cfg.propagation.workers,
                                camera_extrinsics=cfg.propagation.camera_extrinsics or None,
                                cache_dir=track_cache, progress=progress and rank == 0)
    if rank == 0:
        _barrier()
    report["propagation"] = {
        "seconds": time.perf_counter() - t0, "cache": str(track_cache),
        "clipped_points": int(sum(te.meta.get("clipped_points", 0) for te in tracked)),
        "mean_confidence": float(np.mean([te.confidence.mean() for te in tracked])),
        "visible_fraction": float(np.mean([te.visible.mean() for te in tracked]))}
    tracks = TrackSet.from_tracked(tracked, episodes[0].image_size)

    # 4. ATK: mask + policy, selection, final policy. Under torchrun every rank
    # trains (DDP) and only rank 0 writes files.
    main_rank = rank == 0
    t0 = time.perf_counter()
    res = run_atk(tracks, cands.points, cfg, progress=progress, with_fullset="fullset" in baselines,
                  workdir=out / "checkpoints", resume=args.resume)
    sel = res.report()
    report["training"] = {"seconds": time.perf_counter() - t0,
                          "mask_samples_per_s": res.mask_fit.samples_per_s}
    report["selection"] = {k: v for k, v in sel.items() if k != "keep_probs"}
    if main_rank:
        others = np.delete(np.asarray(cands.points), np.asarray(res.selected, int), axis=0)
        save_policy(out, res.final.policy, canonical, config=cfg, selection=sel, support_xy=others,
                    extra={"canonical_from": canon_from,
                           "candidate_source": [cands.source[i] for i in res.selected]})

    # 5. baselines
    runs = {"mask+policy": res.mask_fit.history, "final": res.final.fit.history}
    base_err: dict[str, float] = {}
    if res.fullset is not None:
        base_err["fullset"] = res.fullset.fit.val_mse
        runs["fullset"] = res.fullset.fit.history
        if main_rank:
            save_policy(out / "baselines" / "fullset", res.fullset.policy, canonical, config=cfg)
    tr_ids, va_ids = split_episodes(len(tracks.names), cfg.train.val_fraction, cfg.train.seed)
    train_set, val_set = tracks.subset_episodes(tr_ids), (tracks.subset_episodes(va_ids) if va_ids else None)
    n_sel = len(res.selected)
    if "random" in baselines:
        ids = random_select_ids(tracks.num_keypoints, n_sel, cfg.train.seed)
        r = train_on_keypoints("random", train_set, val_set, ids, cands.points, cfg,
                               steps=cfg.selection.final_steps, progress=progress)
        base_err["random"] = r.fit.val_mse
        runs["random"] = r.fit.history
        if main_rank:
            save_policy(out / "baselines" / "random", r.policy, canonical, config=cfg)
    if "manual" in baselines:
        names, pts = load_manual_points(args.manual_points, episodes[0].image_size)
        if not main_rank:
            _barrier()
        man = propagate_dataset(episodes, canonical, pts, backend=cfg.propagation.backend,
                                min_confidence=cfg.propagation.min_confidence, workers=cfg.propagation.workers,
                                camera_extrinsics=cfg.propagation.camera_extrinsics or None,
                                cache_dir=track_cache, progress=progress)
        if main_rank:
            _barrier()
        mts = TrackSet.from_tracked(man, episodes[0].image_size)
        r = train_on_keypoints("manual", mts.subset_episodes(tr_ids),
                               mts.subset_episodes(va_ids) if va_ids else None, range(len(pts)), pts, cfg,
                               steps=cfg.selection.final_steps, progress=progress, names=names)
        base_err["manual"] = r.fit.val_mse
        runs["manual"] = r.fit.history
        if main_rank:
            save_policy(out / "baselines" / "manual", r.policy, canonical, config=cfg)
    if "rgb" in baselines:
        from dataclasses import replace

        from .rgb_baseline import save_rgb_policy, train_rgb

        rgb_train = replace(cfg.train, steps=args.rgb_steps, batch_size=args.rgb_batch_size, alpha=0.0,
                            warmup_steps=min(cfg.train.warmup_steps, args.rgb_steps))
        pol, fr = train_rgb(episodes, tr_ids, va_ids, rgb_train, progress=progress,
                            action_mode=cfg.model.action_mode, chunk=cfg.model.chunk)
        base_err["rgb"] = fr.val_mse
        runs["rgb"] = fr.history
        if main_rank:
            save_rgb_policy(out / "baselines" / "rgb", pol, canonical)
    report["baselines_val_mse"] = base_err
    if not main_rank:
        return report

    # 6. figures and summary
    write_png_rgb(out / "candidates.png", draw_candidates(canonical, cands.points, res.keep_probs, res.selected))
    plot_curves(out / "curves.png", runs)
    report["seconds_total"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    text = summary_text(report, res, cands.points)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    return report


def summary_text(report: dict, res, candidates: np.ndarray) -> str:
    ep, pr, sel = report["episodes"], report["propagation"], report["selection"]
    inputs = ep.get("inputs") or [{"path": s["name"], "status": "skipped", "reason": s["reason"]}
                                  for s in ep["skipped"]]
    dropped = [e for e in inputs if e["status"] != "used"]
    lines = [
        "=" * 72,
        f"ATK training summary -> {report['output']}",
        f"episodes: {ep['used']} used ({ep['steps']} steps, {ep['image_size'][0]}x{ep['image_size'][1]}), "
        f"{len(dropped)} skipped",
    ]
    # Every input is named: the used ones compactly, each skipped one with its reason.
    used = [f"{Path(e['path']).name} ({e['frames']})" for e in inputs if e["status"] == "used"]
    line = "  used:"
    for u in used:
        if len(line) + len(u) + 2 > 100:
            lines.append(line.rstrip(","))
            line = "       "
        line += f" {u},"
    if used:
        lines.append(line.rstrip(","))
    lines += [f"  SKIPPED {e['path']}: {e['reason']}" for e in dropped]
    c = report["candidates"]
    lines.append(f"candidates: C={c['C']} ({c['method']}{', ' + str(c['sources']) if 'sources' in c else ''}) "
                 f"on {c['canonical']}")
    lines.append(f"propagation: {pr['seconds']:.1f} s, mean confidence {pr['mean_confidence']:.2f}, "
                 f"visible {100 * pr['visible_fraction']:.0f}%, {pr['clipped_points']} points clamped to the image")
    lines.append(f"training: {report['training']['seconds']:.1f} s "
                 f"({report['training']['mask_samples_per_s']:.0f} samples/s in mask training)")
    lines.append(f"selected N={len(sel['selected_ids'])} of {sel['num_candidates']}:")
    for i, p in list(zip(sel["selected_ids"], sel["selected_keep_probs"]))[:12]:
        lines.append(f"  id {i:3d}  p={p:.3f}  at ({candidates[i][0]:.0f}, {candidates[i][1]:.0f}) px")
    if len(sel["selected_ids"]) > 12:
        lines.append(f"  ... {len(sel['selected_ids']) - 12} more (model.json)")
    lines.append("validation action error (normalised MSE, lower is better):")
    lines.append(f"  selected N keypoints   {sel['val_mse_selected']:.4f}")
    names = {"fullset": "all C candidates", "random": "random N", "manual": "manual points", "rgb": "RGB CNN"}
    for k, v in report["baselines_val_mse"].items():
        lines.append(f"  {names.get(k, k):<22} {v:.4f}")
    lines.append(f"model folder: {report['output']} (load with atk_policy.artifact.load_policy); "
                 f"total {report['seconds_total']:.0f} s")
    lines.append("=" * 72)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .artifact import ArtifactError
    from .baselines import BaselineError
    from .candidates import CandidateError
    from .dataset import DatasetError
    from .propagation import PropagationError
    from .train import TrainingError

    known: tuple[type[BaseException], ...] = (CliError, DatasetError, PropagationError, TrainingError,
                                              CandidateError, BaselineError, ArtifactError)
    try:
        from .bags import BagError

        known = known + (BagError,)
    except ImportError:
        pass
    try:
        run(args)
        _barrier()  # torchrun: every rank finishes before the group is torn down
    except known as exc:
        print(f"atk-train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _shutdown_distributed()
    return 0


def _shutdown_distributed() -> None:
    """Destroy the torchrun process group if one was joined (an undestroyed one
    aborted a rank at exit in about 1 of 5 CPU runs)."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
