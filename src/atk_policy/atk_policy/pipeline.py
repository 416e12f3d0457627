"""Training as a library call: from episodes to a keypoint-policy folder.

ROS-free. :func:`train` is what ``atk-train`` runs (``atk_policy.cli`` only
turns its arguments into the dataclasses below) and what ``atk-demo`` calls
for each training seed::

    from atk_policy.config import ATKConfig
    from atk_policy.pipeline import BaselineConfig, DataSource, train

    report = train(DataSource(inputs=["~/bags"]), ATKConfig(), BaselineConfig(names=("fullset",)),
                   Path("models/pick"))
    print(report.summary)

The steps, top to bottom: read episodes (bags, an episode cache, or episodes
in memory), choose the canonical image, sample candidates, propagate them
(Algorithm 1), train the mask + policy, select keypoints, retrain on the
selected ones, train the baselines, write the artifact, figures, summary and
``report.json``. Under torchrun every rank trains (DDP) and only rank 0
writes files; rank 0 propagates into the track cache while the others wait.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .config import ATKConfig

if TYPE_CHECKING:
    from .bags import BagConversionConfig
    from .dataset import Episode, SkippedEpisode

#: Baselines trained with the same trainer and reported beside ATK.
BASELINES = ("fullset", "random", "manual", "rgb", "depth", "pointcloud")
#: Those that see the camera's image or depth instead of keypoints: no propagation, no ATK model needed
#: (train_baselines trains them alone). depth and pointcloud need depth in every episode.
IMAGE_BASELINES = ("rgb", "depth", "pointcloud")
DEPTH_BASELINES = ("depth", "pointcloud")


class PipelineError(ValueError):
    """A training input an operator can fix (a missing image, an impossible split).

    ``field`` names the setting at fault as a dotted path into :func:`train`'s
    arguments (e.g. ``"source.canonical_episode"``); the message says
    ``{field}`` where that name goes, so a front end can print its own name
    for it (``atk-train`` prints the flag, ``--canonical-episode``).
    """

    def __init__(self, template: str, field: str | None = None) -> None:
        self.template = template
        self.field = field
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """The message with the field called by ``names[field]`` (default: the dotted path)."""
        if self.field is None:
            return self.template
        return self.template.replace("{field}", (names or {}).get(self.field, self.field))


def _bag_config() -> "BagConversionConfig":
    from .bags import BagConversionConfig

    return BagConversionConfig()


@dataclass
class DataSource:
    """Where the episodes come from, and which image is the canonical image I_can.

    Give ``inputs`` (rosbag2 bag folders, .mcap/.db3 files, folders holding
    bags searched recursively, or one episode cache folder) or ``episodes``
    (already in memory), not both.
    """

    inputs: Sequence[str | Path] = ()
    episodes: Sequence["Episode"] | None = None
    #: How bags become episodes (bags only).
    bags: "BagConversionConfig" = field(default_factory=_bag_config)
    #: Also write the episodes read from bags to this episode cache.
    save_cache: Path | None = None
    #: Episode (name, or index as int or digit string) whose frame is I_can.
    canonical_episode: str | int = 0
    canonical_frame: int = 0
    #: Use this PNG as I_can instead (same size as the episodes' frames).
    canonical_image: Path | None = None
    #: Grey/binary PNG of I_can's size: candidates only where it is nonzero.
    roi_mask: Path | None = None

    def __post_init__(self) -> None:
        self.inputs = tuple(self.inputs)
        if bool(self.inputs) == (self.episodes is not None):
            raise PipelineError("give exactly one of {field} (paths) and source.episodes (in memory)",
                                "source.inputs")
        if self.episodes is not None and not self.episodes:
            raise PipelineError("{field} is empty: no episodes to train on", "source.episodes")
        if not isinstance(self.canonical_frame, int) or self.canonical_frame < 0:
            raise PipelineError(f"{{field}} must be an int >= 0, got {self.canonical_frame!r}",
                                "source.canonical_frame")


@dataclass
class BaselineConfig:
    """Which baselines to train beside ATK (same trainer; reported in the summary)."""

    #: Any of BASELINES; () for none.
    names: tuple[str, ...] = ("fullset",)
    #: JSON of named points for "manual": {"points": [{"name": .., "xy": [x, y]}]}.
    manual_points: Path | None = None
    #: Optimiser steps and mini-batch of the RGB baseline (images cost ~1.5 ms
    #: each per step on a CPU core).
    rgb_steps: int = 600
    rgb_batch_size: int = 64
    #: The depth baseline: the RGB CNN on 2 channels, about RGB's cost: 600
    #: steps with input preparation 45.8 CPU-s against RGB's 53.5 (8 simulated
    #: demos, 627 frames at 320x240).
    depth_steps: int = 600
    depth_batch_size: int = 64
    #: The point-cloud baseline: a PointNet on 512 points costs more per sample
    #: than the small CNN (batch 64: 2.1x RGB's step); batch 32 keeps 600 steps
    #: at about RGB's cost (52.8 CPU-s with input preparation, same data).
    pointcloud_steps: int = 600
    pointcloud_batch_size: int = 32

    def __post_init__(self) -> None:
        self.names = tuple(self.names)
        unknown = sorted(set(self.names) - set(BASELINES))
        if unknown:
            raise PipelineError(f"{{field}}: unknown {unknown}; choose from {', '.join(BASELINES)}",
                                "baselines.names")
        if "manual" in self.names and not self.manual_points:
            raise PipelineError("the manual baseline needs {field} JSON", "baselines.manual_points")
        for name in ("rgb_steps", "rgb_batch_size", "depth_steps", "depth_batch_size", "pointcloud_steps",
                     "pointcloud_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise PipelineError(f"{{field}} must be an int >= 1, got {v!r}", f"baselines.{name}")


@dataclass
class EpisodesReport:
    """The episodes of the run."""

    used: int
    steps: int
    #: Read but not trained on: {"name", "reason"}.
    skipped: list[dict[str, str]]
    #: Every input in the order given: {"path", "status" (used|skipped), "reason", "frames"}.
    inputs: list[dict[str, Any]]
    image_size: tuple[int, int]       #: (W, H) pixels
    input_notes: list[str]


@dataclass
class CandidatesReport:
    num_candidates: int               #: C
    method: str
    canonical: str                    #: where I_can came from
    #: How many candidates each sampler found (texture method only).
    sources: dict[str, int] | None = None


@dataclass
class PropagationReport:
    seconds: float
    cache: str                        #: the track cache folder
    clipped_points: int               #: points h_C placed outside the image, clamped
    mean_confidence: float
    visible_fraction: float


@dataclass
class TrainingReport:
    seconds: float                    #: mask training, selection, final policy (and FullSet)
    mask_samples_per_s: float


@dataclass
class TrainReport:
    """What :func:`train` did; ``to_dict()`` is ``report.json``."""

    output: Path
    world_size: int
    episodes: EpisodesReport
    candidates: CandidatesReport
    propagation: PropagationReport
    training: TrainingReport
    #: ATKResult.report() without keep_probs: selected ids, their keep-probabilities, validation errors.
    selection: dict[str, Any]
    #: Validation error (normalised MSE) of each baseline trained.
    baselines_val_mse: dict[str, float]
    #: (C, 2) candidate pixels on I_can (not in report.json: candidates.json holds them).
    candidate_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    #: Whole run; None on torchrun ranks other than 0, which write no files.
    seconds_total: float | None = None
    #: The one-screen summary written to summary.txt (None where no files were written).
    summary: str | None = None

    @property
    def selected_ids(self) -> list[int]:
        return list(self.selection["selected_ids"])

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written as report.json."""
        e, c, p = self.episodes, self.candidates, self.propagation
        out: dict[str, Any] = {
            "output": str(self.output), "world_size": self.world_size,
            "episodes": {"used": e.used, "steps": e.steps, "skipped": e.skipped, "inputs": e.inputs,
                         "image_size": list(e.image_size), "input_notes": e.input_notes},
            "candidates": {"C": c.num_candidates, "method": c.method, "canonical": c.canonical,
                           **({"sources": c.sources} if c.sources is not None else {})},
            "propagation": {"seconds": p.seconds, "cache": p.cache, "clipped_points": p.clipped_points,
                            "mean_confidence": p.mean_confidence, "visible_fraction": p.visible_fraction},
            "training": {"seconds": self.training.seconds, "mask_samples_per_s": self.training.mask_samples_per_s},
            "selection": self.selection,
            "baselines_val_mse": self.baselines_val_mse,
        }
        if self.seconds_total is not None:
            out["seconds_total"] = self.seconds_total
        return out


# --------------------------------------------------------------------------- the run

def train(source: DataSource, config: ATKConfig, baselines: BaselineConfig, out: Path, *,
          track_cache: Path | None = None, resume: bool = False, progress: bool = True) -> TrainReport:
    """Select keypoints and train a keypoint policy on them (paper section 3.2, Algorithm 1).

    source: the episodes and the canonical image; config: everything stored in
    the artifact; baselines: which to train beside; out: the model folder
    (created only once the episodes are read and can be split; existing model
    files are overwritten). track_cache: cache of propagated tracks (default
    ``out/cache/tracks``); resume: continue the mask training from
    ``out/checkpoints/mask.ckpt``. Writes the files listed in ``atk-train
    --help``. Raises PipelineError (and the library's DatasetError,
    PropagationError, TrainingError, CandidateError, BaselineError,
    ArtifactError, BagError) on inputs it cannot train on.

    Under torchrun (WORLD_SIZE > 1) it joins the process group, trains on
    every rank, writes files on rank 0 only, waits for every rank at the end
    and leaves the group if it joined it.
    """
    from .train import init_distributed

    joined = not _distributed_initialized()
    world, rank = init_distributed(config.train.device)
    joined = joined and _distributed_initialized()
    try:
        report = _train(source, config, baselines, Path(out), world=world, rank=rank,
                        track_cache=track_cache, resume=resume, progress=progress and rank == 0)
        barrier()  # torchrun: every rank finishes before the group is torn down
        return report
    finally:
        if joined:
            shutdown_distributed()


def _train(source: DataSource, cfg: ATKConfig, baselines: BaselineConfig, out: Path, *, world: int, rank: int,
           track_cache: Path | None, resume: bool, progress: bool) -> TrainReport:
    from .artifact import save_policy, write_png_rgb
    from .baselines import load_manual_points, random_select_ids
    from .candidates import sample_candidates
    from .dataset import filter_episodes
    from .figures import draw_candidates, plot_curves
    from .propagation import propagate_dataset
    from .train import TrackSet, TrainingError, run_atk, split_episodes, train_on_keypoints

    t_start = time.perf_counter()
    main_rank = rank == 0

    # 1. episodes (checked before the output folder is made, so a refused run leaves none)
    episodes, notes, bag_entries = read_episodes(source, progress)
    episodes, skipped = filter_episodes(episodes, cfg.train.min_episode_length)
    try:
        split_episodes(len(episodes), cfg.train.val_fraction, cfg.train.seed)
    except TrainingError:
        raise PipelineError(f"{{field}} {cfg.train.val_fraction}: {len(episodes)} usable episode cannot be split "
                            f"into training and validation; give more episodes or pass {{field}} 0",
                            "config.train.val_fraction") from None
    check_depth_inputs(episodes, baselines.names)
    out.mkdir(parents=True, exist_ok=True)
    image_size = episodes[0].image_size
    ep_report = EpisodesReport(
        used=len(episodes), steps=int(sum(len(e) for e in episodes)),
        skipped=[{"name": s.name, "reason": s.reason} for s in skipped],
        inputs=input_entries(bag_entries, episodes, skipped), image_size=tuple(image_size), input_notes=notes)

    # 2. canonical image and candidates
    canonical, canon_from = canonical_image(source, episodes)
    canonical_d = canonical_depth(source, episodes) if cfg.propagation.table_search else None
    roi = _roi_mask(source.roi_mask)
    cands = sample_candidates(canonical, cfg.candidates, roi)
    if main_rank:
        (out / "candidates.json").write_text(json.dumps(
            {"canonical_from": canon_from, "image_size": list(image_size),
             "points": cands.points.tolist(), "source": cands.source, "info": cands.info}, indent=1))
    cand_report = CandidatesReport(len(cands.points), cfg.candidates.method, canon_from, cands.info.get("sources"))

    # 3. propagation (Algorithm 1). Under torchrun rank 0 propagates into the
    # cache while the others wait, then they read the same tracks from it.
    t0 = time.perf_counter()
    track_cache = track_cache or (out / "cache" / "tracks")

    def propagate(points: np.ndarray) -> list:
        if not main_rank:
            barrier()
        tracked = propagate_dataset(episodes, canonical, points, backend=cfg.propagation.backend,
                                    min_confidence=cfg.propagation.min_confidence, workers=cfg.propagation.workers,
                                    camera_extrinsics=cfg.propagation.camera_extrinsics or None,
                                    robot_occlusion=cfg.propagation.robot_occlusion, template_depth=canonical_d,
                                    cache_dir=track_cache, progress=progress)
        if main_rank:
            barrier()
        return tracked

    tracked = propagate(cands.points)
    prop_report = PropagationReport(
        seconds=time.perf_counter() - t0, cache=str(track_cache),
        clipped_points=int(sum(te.meta.get("clipped_points", 0) for te in tracked)),
        mean_confidence=float(np.mean([te.confidence.mean() for te in tracked])),
        visible_fraction=float(np.mean([te.visible.mean() for te in tracked])))
    tracks = TrackSet.from_tracked(tracked, image_size)

    # 4. ATK: mask + policy, selection, final policy. Under torchrun every rank
    # trains (DDP) and only rank 0 writes files.
    t0 = time.perf_counter()
    res = run_atk(tracks, cands.points, cfg, progress=progress, with_fullset="fullset" in baselines.names,
                  workdir=out / "checkpoints", resume=resume)
    sel = res.report()
    training_seconds = time.perf_counter() - t0
    if main_rank:
        others = np.delete(np.asarray(cands.points), np.asarray(res.selected, int), axis=0)
        save_policy(out, res.final.policy, canonical, config=cfg, selection=sel, support_xy=others,
                    template_depth=canonical_d,
                    extra={"canonical_from": canon_from,
                           "candidate_source": [cands.source[i] for i in res.selected]})

    # 5. baselines
    runs = {"mask+policy": res.mask_fit.history, "final": res.final.fit.history}
    base_err: dict[str, float] = {}
    if res.fullset is not None:
        base_err["fullset"] = res.fullset.fit.val_mse
        runs["fullset"] = res.fullset.fit.history
        if main_rank:
            save_policy(out / "baselines" / "fullset", res.fullset.policy, canonical, config=cfg,
                        template_depth=canonical_d)
    tr_ids, va_ids = split_episodes(len(tracks.names), cfg.train.val_fraction, cfg.train.seed)
    train_set, val_set = tracks.subset_episodes(tr_ids), (tracks.subset_episodes(va_ids) if va_ids else None)
    if "random" in baselines.names:
        ids = random_select_ids(tracks.num_keypoints, len(res.selected), cfg.train.seed)
        r = train_on_keypoints("random", train_set, val_set, ids, cands.points, cfg,
                               steps=cfg.selection.final_steps, progress=progress)
        base_err["random"] = r.fit.val_mse
        runs["random"] = r.fit.history
        if main_rank:
            save_policy(out / "baselines" / "random", r.policy, canonical, config=cfg,
                        template_depth=canonical_d)
    if "manual" in baselines.names:
        names, pts = load_manual_points(baselines.manual_points, image_size)
        mts = TrackSet.from_tracked(propagate(pts), image_size)
        r = train_on_keypoints("manual", mts.subset_episodes(tr_ids),
                               mts.subset_episodes(va_ids) if va_ids else None, range(len(pts)), pts, cfg,
                               steps=cfg.selection.final_steps, progress=progress, names=names)
        base_err["manual"] = r.fit.val_mse
        runs["manual"] = r.fit.history
        if main_rank:
            save_policy(out / "baselines" / "manual", r.policy, canonical, config=cfg,
                        template_depth=canonical_d)
    errs, histories = _train_image_baselines(baselines, episodes, tr_ids, va_ids, cfg, out, canonical,
                                             main_rank=main_rank, progress=progress)
    base_err.update(errs)
    runs.update(histories)

    report = TrainReport(
        output=out, world_size=world, episodes=ep_report, candidates=cand_report, propagation=prop_report,
        training=TrainingReport(training_seconds, res.mask_fit.samples_per_s),
        selection={k: v for k, v in sel.items() if k != "keep_probs"}, baselines_val_mse=base_err,
        candidate_points=np.asarray(cands.points))
    if not main_rank:
        return report

    # 6. figures and summary
    write_png_rgb(out / "candidates.png", draw_candidates(canonical, cands.points, res.keep_probs, res.selected))
    plot_curves(out / "curves.png", runs)
    report.seconds_total = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1, default=float))
    report.summary = summary_text(report.to_dict(), report.candidate_points)
    (out / "summary.txt").write_text(report.summary + "\n")
    return report


def train_baselines(source: DataSource, config: ATKConfig, baselines: BaselineConfig, out: Path, *,
                    progress: bool = True) -> dict[str, float]:
    """Train only the image baselines (IMAGE_BASELINES) named in ``baselines`` into ``out/baselines/<name>``,
    on the same episodes, split and settings as :func:`train` would: to add one to a model folder trained
    without it (atk-demo does, when a later run asks for more methods). Adds their validation errors to
    ``out/report.json`` when it exists and returns them. Single process (no torchrun).
    """
    others = [n for n in baselines.names if n not in IMAGE_BASELINES]
    if others:
        raise PipelineError(f"{{field}}: {others} need the ATK run (propagated tracks); train_baselines trains "
                            f"only {', '.join(IMAGE_BASELINES)}", "baselines.names")
    from .dataset import filter_episodes
    from .train import TrainingError, split_episodes

    episodes, _, _ = read_episodes(source, progress)
    episodes, _ = filter_episodes(episodes, config.train.min_episode_length)
    try:
        tr_ids, va_ids = split_episodes(len(episodes), config.train.val_fraction, config.train.seed)
    except TrainingError:
        raise PipelineError(f"{{field}} {config.train.val_fraction}: {len(episodes)} usable episode cannot be "
                            f"split into training and validation", "config.train.val_fraction") from None
    check_depth_inputs(episodes, baselines.names)
    canonical, _ = canonical_image(source, episodes)
    out = Path(out)
    errs, _ = _train_image_baselines(baselines, episodes, tr_ids, va_ids, config, out, canonical,
                                     main_rank=True, progress=progress)
    report = out / "report.json"
    if report.is_file() and errs:
        doc = json.loads(report.read_text())
        doc.setdefault("baselines_val_mse", {}).update(errs)
        report.write_text(json.dumps(doc, indent=1, default=float))
    return errs


# --------------------------------------------------------------------------- steps

def check_depth_inputs(episodes: Sequence["Episode"], names: Sequence[str]) -> None:
    """Refuse, before any training, depth baselines on episodes without depth (or, for pointcloud,
    without one camera's intrinsics); the PipelineError names the episodes and the cause."""
    from .depth_baseline import DepthDataError, require_depth
    from .depth_geometry import DepthInputError
    from .pointcloud_baseline import episode_intrinsics

    try:
        for name in DEPTH_BASELINES:
            if name in names:
                require_depth(episodes, {"depth": "Depth", "pointcloud": "Pointcloud"}[name])
        if "pointcloud" in names:
            episode_intrinsics(episodes)
    except (DepthDataError, DepthInputError) as exc:
        raise PipelineError(f"{exc}; or leave depth and pointcloud out of {{field}}", "baselines.names") from None


def _train_image_baselines(baselines: BaselineConfig, episodes: Sequence["Episode"], tr_ids: Sequence[int],
                           va_ids: Sequence[int], cfg: ATKConfig, out: Path, canonical: np.ndarray, *,
                           main_rank: bool, progress: bool) -> tuple[dict[str, float], dict[str, list]]:
    """The RGB, depth and point-cloud baselines asked for, each with its own steps and batch and the run's
    action space, chunks, seed and split; saved under out/baselines/<name> (rank 0).
    Returns (validation error, training history) by name."""
    from dataclasses import replace

    from .depth_baseline import save_depth_policy, train_depth
    from .pointcloud_baseline import save_pointcloud_policy, train_pointcloud
    from .rgb_baseline import save_rgb_policy, train_rgb

    trainers = {"rgb": (train_rgb, save_rgb_policy), "depth": (train_depth, save_depth_policy),
                "pointcloud": (train_pointcloud, save_pointcloud_policy)}
    errs: dict[str, float] = {}
    runs: dict[str, list] = {}
    for name in IMAGE_BASELINES:
        if name not in baselines.names:
            continue
        steps, batch = getattr(baselines, f"{name}_steps"), getattr(baselines, f"{name}_batch_size")
        tcfg = replace(cfg.train, steps=steps, batch_size=batch, alpha=0.0,
                       warmup_steps=min(cfg.train.warmup_steps, steps))
        trainer, save = trainers[name]
        pol, fr = trainer(episodes, tr_ids, va_ids, tcfg, progress=progress, action_mode=cfg.model.action_mode,
                          chunk=cfg.model.chunk)
        errs[name] = fr.val_mse
        runs[name] = fr.history
        if main_rank:
            save(out / "baselines" / name, pol, canonical)
    return errs, runs


def read_episodes(source: DataSource, progress: bool) -> tuple[list["Episode"], list[str], list[dict] | None]:
    """(episodes, notes, bag entries): one entry per bag or path given (None for a cache or episodes in memory)."""
    from .dataset import is_episode_cache, load_episode_cache, save_episode_cache

    if source.episodes is not None:
        return list(source.episodes), [f"{len(source.episodes)} episodes given in memory"], None
    inputs = list(source.inputs)
    if len(inputs) == 1 and is_episode_cache(inputs[0]):
        episodes = load_episode_cache(inputs[0])
        return episodes, [f"episode cache {inputs[0]}: {len(episodes)} episodes"], None
    for inp in inputs:
        if not Path(inp).exists():
            raise PipelineError(f"input {inp} does not exist")
        if is_episode_cache(inp):
            raise PipelineError(f"{inp} is an episode cache; give it as the only input")
    from . import bags

    episodes, report = bags.load_episodes(inputs, config=source.bags, progress=progress)
    notes = [report.summary()]
    if source.save_cache:
        save_episode_cache(episodes, source.save_cache, progress=progress)
        notes.append(f"episodes cached in {source.save_cache}")
    entries = [{"path": e.path, "status": e.status, "reason": e.reason, "frames": e.frames} for e in report.entries]
    return episodes, notes, entries


def input_entries(bag_entries: list[dict] | None, episodes: Sequence["Episode"],
                  skipped: Sequence["SkippedEpisode"]) -> list[dict]:
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


def canonical_image(source: DataSource, episodes: Sequence["Episode"]) -> tuple[np.ndarray, str]:
    """(I_can (H, W, 3) uint8 RGB, where it came from) as the source asks."""
    import cv2

    if source.canonical_image:
        bgr = cv2.imread(str(source.canonical_image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise PipelineError(f"{{field}} {source.canonical_image} is missing or not an image",
                                "source.canonical_image")
        img = np.ascontiguousarray(bgr[:, :, ::-1])
        w, h = episodes[0].image_size
        if img.shape[:2] != (h, w):
            raise PipelineError(f"{{field}} is {img.shape[1]}x{img.shape[0]}, episodes are {w}x{h}",
                                "source.canonical_image")
        return img, str(source.canonical_image)
    key = str(source.canonical_episode)
    by_name = {e.name: e for e in episodes}
    if key in by_name:
        ep = by_name[key]
    elif key.lstrip("-").isdigit() and -len(episodes) <= int(key) < len(episodes):
        ep = episodes[int(key)]
    else:
        raise PipelineError(f"{{field}} {key!r} is neither an episode name nor an index < {len(episodes)}; "
                            f"episodes: {', '.join(e.name for e in episodes[:10])}"
                            f"{' ...' if len(episodes) > 10 else ''}", "source.canonical_episode")
    frame = source.canonical_frame
    if not 0 <= frame < len(ep):
        raise PipelineError(f"{{field}} {frame} is outside episode {ep.name!r} ({len(ep)} frames)",
                            "source.canonical_frame")
    return np.asarray(ep.frames[frame]), f"episode {ep.name!r} frame {frame}"


def canonical_depth(source: DataSource, episodes: Sequence["Episode"]) -> np.ndarray | None:
    """The canonical frame's depth (H, W) float32 metres: from the episode's depth stream
    (``episode.depth``) for any frame, or, for its first frame, from the one depth image a recording
    may carry for it (``meta["depth_first"]``); None when the canonical image is a file or has none."""
    if source.canonical_image:
        return None
    key = str(source.canonical_episode)
    by_name = {e.name: e for e in episodes}
    ep = by_name.get(key) or (episodes[int(key)] if key.lstrip("-").isdigit() else None)
    if ep is None or not 0 <= source.canonical_frame < len(ep):
        return None
    w, h = ep.image_size
    if getattr(ep, "depth", None) is not None:
        depth = np.asarray(ep.depth[source.canonical_frame]).astype(np.float32) / np.float32(1000.0)
        return depth if depth.shape == (h, w) else None
    first = (ep.meta or {}).get("depth_first")
    if source.canonical_frame != 0 or not first or not (ep.meta or {}).get("bag"):
        return None
    from .bags.frames import read_depth

    depth = read_depth(ep.meta["bag"], first["topic"], int(first["log_ts"]))
    return depth if depth.shape == (h, w) else None


def _roi_mask(path: Path | None) -> np.ndarray | None:
    """(H, W) bool region of interest, or None."""
    if not path:
        return None
    import cv2

    roi = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if roi is None:
        raise PipelineError(f"{{field}} {path} is missing or not an image", "source.roi_mask")
    return roi > 0


def summary_text(report: dict, candidates: np.ndarray) -> str:
    """The one-screen summary of a report.json dict; candidates (C, 2) pixels name the selected positions."""
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
    names = {"fullset": "all C candidates", "random": "random N", "manual": "manual points", "rgb": "RGB CNN",
             "depth": "depth CNN", "pointcloud": "point cloud PointNet"}
    for k, v in report["baselines_val_mse"].items():
        lines.append(f"  {names.get(k, k):<22} {v:.4f}")
    lines.append(f"model folder: {report['output']} (load with atk_policy.artifact.load_policy); "
                 f"total {report['seconds_total']:.0f} s")
    lines.append("=" * 72)
    return "\n".join(lines)


# --------------------------------------------------------------------------- torchrun

def _distributed_initialized() -> bool:
    import sys

    if "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every torchrun rank (no-op in a single process); bounded by train.DIST_TIMEOUT_S."""
    if _distributed_initialized():
        import torch.distributed as dist

        dist.barrier()


def shutdown_distributed() -> None:
    """Destroy the torchrun process group if one was joined (an undestroyed one
    aborted a rank at exit in about 1 of 5 CPU runs)."""
    if _distributed_initialized():
        import torch.distributed as dist

        dist.destroy_process_group()
