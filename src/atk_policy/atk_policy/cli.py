"""``atk-train``: from demonstration bags (or an episode cache) to a keypoint-policy folder.

ROS-free front end (no rclpy) of :func:`atk_policy.pipeline.train`: this
module only turns the command line into that call's dataclasses and prints
its errors and summary. Run ``atk-train --help`` for every option.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .config import ATKConfig
from .pipeline import BaselineConfig, DataSource, PipelineError, TrainReport, train

EPILOG = """\
outputs (in --output, which becomes the model folder the policy node loads):
  policy.safetensors, model.json, template.png   the artifact (see atk_policy.artifact)
  candidates.json     the C candidate pixels on the canonical image and how each was found
  candidates.png      canonical image: candidates (grey, radius ~ keep-probability),
                      selected keypoints (green, labelled with their id)
  curves.png          training curves (loss, validation error, kept keypoints)
  summary.txt         the one-screen summary printed at the end
  report.json         every figure of the summary, machine-readable
  baselines/<name>/   artifacts of the baselines asked for with --baselines (rgb, depth, pointcloud:
                      load with atk_policy.rgb_baseline / depth_baseline / pointcloud_baseline)
  checkpoints/        resumable checkpoint of the mask training (--resume)
  cache/tracks/       propagated tracks, keyed by a hash of their inputs

examples:
  atk-train ~/bags/pick_*/ -o models/pick
  atk-train ~/bags -o models/pick --alpha 0.005 --top-n 6 --baselines fullset,random,rgb
  atk-train ~/bags -o models/pick --baselines rgb,depth,pointcloud   # depth ones: bags with camera/depth/image_raw
  atk-train --save-cache data/pick_cache ~/bags -o models/pick   # next time: atk-train data/pick_cache ...
"""


class CliError(Exception):
    """An input problem reported to the user without a traceback."""


def _ids(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    from .config import CANDIDATE_METHODS, HEADS, ModelConfig, TrainConfig

    mc, tc, bc = ModelConfig(), TrainConfig(), BaselineConfig(names=())
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
                        "are predicted from the joint states instead of tracked, and, when the canonical frame "
                        "has depth in its bag, the CPU h_C transfers the objects on the table in 3D (table "
                        "search), as on the deployed tracker (needs camera_info in the bags). Default: off")
    g.add_argument("--no-robot-occlusion", dest="robot_occlusion", action="store_false",
                   help="with --camera-extrinsics: do not predict the points the robot covers")
    g.add_argument("--no-table-search", dest="table_search", action="store_false",
                   help="with --camera-extrinsics: do not give h_C the canonical frame's depth")
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
                   help="comma list of fullset, random, manual, rgb, depth, pointcloud, or 'none'; depth (the RGB "
                        "CNN on the depth image) and pointcloud (a PointNet on the depth back-projected with "
                        "camera_info's K, cropped to 0.25-1.2 m and above the table) need depth in every bag "
                        "(default: %(default)s)")
    g.add_argument("--manual-points", type=Path, metavar="JSON",
                   help="points for the manual baseline: {\"points\": [{\"name\": .., \"xy\": [x, y]}]}")
    g.add_argument("--rgb-steps", type=int, default=600,
                   help="steps of the RGB baseline (default: %(default)s; with the default batch about a minute "
                        "on one CPU core)")
    g.add_argument("--rgb-batch-size", type=int, default=64,
                   help="mini-batch of the RGB baseline; images cost ~1.5 ms each per step on a CPU core "
                        "(default: %(default)s)")
    g.add_argument("--depth-steps", type=int, default=bc.depth_steps,
                   help="steps of the depth baseline (default: %(default)s; about the RGB baseline's cost)")
    g.add_argument("--depth-batch-size", type=int, default=bc.depth_batch_size,
                   help="mini-batch of the depth baseline (default: %(default)s)")
    g.add_argument("--pointcloud-steps", type=int, default=bc.pointcloud_steps,
                   help="steps of the point-cloud baseline (default: %(default)s; with the default batch about "
                        "the RGB baseline's cost)")
    g.add_argument("--pointcloud-batch-size", type=int, default=bc.pointcloud_batch_size,
                   help="mini-batch of the point-cloud baseline; a 512-point cloud costs about twice an RGB "
                        "image per step (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


#: Names of train()'s settings as atk-train's flags, for PipelineError messages.
FLAGS = {
    "source.canonical_episode": "--canonical-episode",
    "source.canonical_frame": "--canonical-frame", "source.canonical_image": "--canonical-image",
    "source.roi_mask": "--roi-mask", "config.train.val_fraction": "--val-fraction",
    "baselines.names": "--baselines", "baselines.manual_points": "--manual-points",
    "baselines.rgb_steps": "--rgb-steps", "baselines.rgb_batch_size": "--rgb-batch-size",
    "baselines.depth_steps": "--depth-steps", "baselines.depth_batch_size": "--depth-batch-size",
    "baselines.pointcloud_steps": "--pointcloud-steps", "baselines.pointcloud_batch_size": "--pointcloud-batch-size",
}


def config_from_args(args: argparse.Namespace) -> tuple[DataSource, ATKConfig, BaselineConfig]:
    """The arguments of :func:`atk_policy.pipeline.train` that ``args`` stand for."""
    from .bags import BagConversionConfig
    from .config import CandidateConfig, ModelConfig, PropagationConfig, SelectionConfig, TrainConfig

    try:
        hidden = tuple(int(v) for v in _ids(args.hidden))
    except ValueError:
        raise CliError(f"--hidden must be comma-separated integers, got {args.hidden!r}") from None
    baselines = BaselineConfig(names=tuple(b for b in _ids(args.baselines) if b != "none"),
                               manual_points=args.manual_points, rgb_steps=args.rgb_steps,
                               rgb_batch_size=args.rgb_batch_size, depth_steps=args.depth_steps,
                               depth_batch_size=args.depth_batch_size, pointcloud_steps=args.pointcloud_steps,
                               pointcloud_batch_size=args.pointcloud_batch_size)
    try:
        cfg = ATKConfig(
            candidates=CandidateConfig(num_candidates=args.candidates, method=args.candidate_method,
                                       seed=args.candidate_seed),
            propagation=PropagationConfig(backend=args.backend, workers=args.workers,
                                          min_confidence=args.min_confidence,
                                          camera_extrinsics=str(args.camera_extrinsics or ""),
                                          robot_occlusion=args.robot_occlusion, table_search=args.table_search),
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
    source = DataSource(inputs=tuple(args.inputs), save_cache=args.save_cache,
                        bags=BagConversionConfig(action_source=args.action_source,
                                                 action_horizon_s=args.action_horizon,
                                                 skip_failed=not args.include_failed),
                        canonical_episode=args.canonical_episode, canonical_frame=args.canonical_frame,
                        canonical_image=args.canonical_image, roi_mask=args.roi_mask)
    return source, cfg, baselines


def run(args: argparse.Namespace) -> TrainReport:
    """Train as ``args`` say; prints the summary (rank 0)."""
    source, cfg, baselines = config_from_args(args)
    report = train(source, cfg, baselines, args.output, track_cache=args.track_cache, resume=args.resume,
                   progress=not args.no_progress)
    if report.summary is not None:
        print(report.summary)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .artifact import ArtifactError
    from .bags import BagError
    from .baselines import BaselineError
    from .candidates import CandidateError
    from .dataset import DatasetError
    from .depth_baseline import DepthDataError
    from .depth_geometry import DepthInputError
    from .propagation import PropagationError
    from .train import TrainingError

    try:
        run(args)
    except PipelineError as exc:
        print(f"atk-train: error: {exc.render(FLAGS)}", file=sys.stderr)
        return 2
    except (CliError, DatasetError, PropagationError, TrainingError, CandidateError, BaselineError,
            ArtifactError, BagError, DepthDataError, DepthInputError) as exc:
        print(f"atk-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
