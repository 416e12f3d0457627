"""Training: mask + policy (ATK selection), then the final policy on the selected keypoints.

ROS-free. Reads top to bottom like nanoGPT's train.py: seed, data, model,
optimiser, loop (lr warmup then cosine decay, Gumbel temperature annealing,
gradient clipping, evaluation under no_grad every ``eval_every`` steps,
a checkpoint that holds everything needed to resume).

Data: :class:`TrackSet` holds the propagated tracks of many episodes
(keypoints (S, C, 2) pixels, proprio (S, 7), actions (S, 7), S samples) and
is split into train / validation by episode.

Validation error ("val_mse") is the mean squared error of the predicted
action in normalised units (each action dimension divided by its training
standard deviation), so joints and gripper weigh alike; 1.0 is as bad as
predicting the mean action.

Multi-process: under ``torchrun --nproc_per_node=K`` (environment variable
WORLD_SIZE > 1) :func:`fit` initialises torch.distributed (NCCL on CUDA,
gloo on CPU), wraps the model in DistributedDataParallel, draws different
mini-batches per rank and evaluates / checkpoints on rank 0 only. The
single-process path is what the tests exercise.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .config import ATKConfig, ModelConfig, TrainConfig
from .model import KeypointPolicy, Normalisation

CHECKPOINT_VERSION = 1


class TrainingError(ValueError):
    """Training cannot proceed (bad data, nothing selected, ...); says why."""


# --------------------------------------------------------------------------- data

@dataclass
class TrackSet:
    """Samples of several episodes; every array is aligned on the sample axis S.

    keypoints (S, C, 2) float32 pixels; proprio (S, 7); actions (S, 7)
    float32; episode (S,) int index into ``names``.
    """

    keypoints: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    episode: np.ndarray
    names: list[str]
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[1])

    @classmethod
    def from_tracked(cls, tracked: Sequence, image_size: tuple[int, int]) -> "TrackSet":
        """Concatenate propagation.TrackedEpisode objects (already validated)."""
        if not tracked:
            raise TrainingError("no tracked episodes to train on")
        c = tracked[0].tracks.shape[1]
        for te in tracked:
            if te.tracks.shape[1] != c:
                raise TrainingError(f"episode {te.name!r} has {te.tracks.shape[1]} keypoints, "
                                    f"episode {tracked[0].name!r} has {c}")
        return cls(keypoints=np.concatenate([te.tracks for te in tracked]).astype(np.float32),
                   proprio=np.concatenate([te.proprio for te in tracked]).astype(np.float32),
                   actions=np.concatenate([te.actions for te in tracked]).astype(np.float32),
                   episode=np.concatenate([np.full(len(te.tracks), i) for i, te in enumerate(tracked)]),
                   names=[te.name for te in tracked], image_size=tuple(image_size))

    def subset_episodes(self, episode_ids: Sequence[int]) -> "TrackSet":
        keep = np.isin(self.episode, np.asarray(episode_ids))
        return replace(self, keypoints=self.keypoints[keep], proprio=self.proprio[keep],
                       actions=self.actions[keep], episode=self.episode[keep])

    def select_keypoints(self, ids: Sequence[int]) -> "TrackSet":
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_keypoints):
            raise TrainingError(f"keypoint ids {ids.tolist()} out of range 0..{self.num_keypoints - 1}")
        return replace(self, keypoints=self.keypoints[:, ids])

    def tensors(self, device: str) -> dict[str, torch.Tensor]:
        return {"keypoints": torch.as_tensor(self.keypoints, device=device),
                "proprio": torch.as_tensor(self.proprio, device=device),
                "action": torch.as_tensor(self.actions, device=device)}


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of episode indices into (train, val); val is empty when val_fraction is 0."""
    if num_episodes < 1:
        raise TrainingError("no episodes to split")
    if val_fraction <= 0:
        return list(range(num_episodes)), []
    if num_episodes < 2:
        raise TrainingError(f"{num_episodes} episode cannot be split for validation; record more episodes "
                            f"or set val_fraction to 0")
    n_val = min(num_episodes - 1, max(1, round(val_fraction * num_episodes)))
    perm = np.random.default_rng(seed).permutation(num_episodes)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


# --------------------------------------------------------------------------- loop

@dataclass
class FitResult:
    """What one training run produced. history: one dict per evaluation."""

    history: list[dict] = field(default_factory=list)
    val_mse: float = float("nan")
    train_mse: float = float("nan")
    seconds: float = 0.0
    samples_per_s: float = 0.0
    steps: int = 0
    best_step: int | None = None   #: step whose weights were kept (TrainConfig.keep_best)


def lr_multiplier(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def tau_at(step: int, total: int, cfg: ModelConfig) -> float:
    """Exponential annealing of the Gumbel temperature from tau_start to tau_end."""
    frac = step / max(1, total - 1)
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: dict[str, torch.Tensor], chunk: int = 8192) -> float:
    """Mean squared normalised action error of ``model`` (deterministic mask) on ``data``."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    keys = getattr(model, "input_keys", ("keypoints", "proprio"))
    chunk = getattr(model, "eval_chunk", chunk)
    for i in range(0, data["action"].shape[0], chunk):
        act = data["action"][i:i + chunk]
        pred = model.predict(*(data[k][i:i + chunk] for k in keys))
        err = ((pred - act) / model.codec.action_std) ** 2
        total += float(err.sum())
        n += err.numel()
    model.train(was)
    return total / max(1, n)


#: How long a rank waits for the others (e.g. for rank 0's propagation) before failing.
DIST_TIMEOUT_S = 3600.0


def _dist_info() -> tuple[int, int, bool]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank, world > 1


def init_distributed(device: str, timeout_s: float = DIST_TIMEOUT_S) -> tuple[int, int]:
    """Join the torchrun process group when WORLD_SIZE > 1; returns (world, rank).

    NCCL for CUDA devices, gloo on CPU. ``timeout_s`` bounds every collective
    wait (a rank that never arrives fails the others with a timeout error).
    """
    import datetime

    world, rank, distributed = _dist_info()
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout_s))
    return world, rank


def fit(model: torch.nn.Module, train: TrackSet, val: TrackSet | None, cfg: TrainConfig, *,
        steps: int | None = None, desc: str = "train", progress: bool = True,
        checkpoint: str | Path | None = None, resume: bool = False,
        on_eval: Callable[[dict], None] | None = None) -> FitResult:
    """Train ``model`` in place with Adam; returns the evaluation history.

    model: a KeypointPolicy, or any module with the same trainer interface
    (``forward(batch, alpha) -> (loss, logs)``, ``predict(*inputs)``,
    ``param_groups``, ``codec`` (ActionCodec), ``input_keys``; see rgb_baseline).
    train / val: anything with ``__len__`` and ``tensors(device) -> dict``.

    checkpoint: file written at every evaluation (model, optimiser, step, rng,
    history); with ``resume`` an existing one is continued from its step.
    """
    from tqdm import tqdm

    steps = cfg.steps if steps is None else int(steps)
    world, rank, distributed = _dist_info()
    device = cfg.device
    if distributed:
        init_distributed(device)
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    if cfg.num_threads > 0 and not device.startswith("cuda"):
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed + rank)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 7919 * rank)
    model.to(device).train()
    # the model's action space decides what the network sees and predicts
    prep = model.prepare if hasattr(model, "prepare") else (lambda d, dev: d.tensors(dev))
    train_t = prep(train, device)
    val_t = prep(val, device) if val is not None and len(val) else None
    n_train = len(train)
    if n_train == 0:
        raise TrainingError("the training split is empty")

    groups = model.param_groups(cfg.lr, cfg.mask_lr, cfg.weight_decay)
    opt = torch.optim.Adam(groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    net: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device] if device.startswith("cuda") else None)

    result = FitResult()
    start = 0
    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path and resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck.get("version") != CHECKPOINT_VERSION or ck.get("total_steps") != steps:
            raise TrainingError(f"checkpoint {ckpt_path} is for {ck.get('total_steps')} steps / version "
                                f"{ck.get('version')}, this run wants {steps} / {CHECKPOINT_VERSION}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])
        start = int(ck["step"])
        result.history = [dict(h) for h in ck["history"]]

    best, bad_evals = math.inf, 0
    keep_best = cfg.keep_best and val_t is not None and not getattr(model, "learn_mask", False)
    best_val, best_state, best_step = math.inf, None, None
    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), desc=desc, unit="step", disable=not progress or rank != 0,
               leave=False, mininterval=0.5)
    step = start
    for step in bar:
        mult = lr_multiplier(step, steps, cfg.warmup_steps, cfg.min_lr_ratio)
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * mult
        if getattr(model, "learn_mask", False):
            model.tau = tau_at(step, steps, model.cfg)

        idx = torch.randint(n_train, (min(cfg.batch_size, n_train),), generator=gen).to(device)
        batch = {k: v[idx] for k, v in train_t.items()}
        if cfg.keypoint_noise_px > 0 and "keypoints" in batch:
            kp = batch["keypoints"]  # (B, C, 2) px
            batch["keypoints"] = kp + cfg.keypoint_noise_px * torch.randn(
                kp.shape, generator=gen, dtype=kp.dtype).to(device)
        loss, logs = net(batch, cfg.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

        last = step == steps - 1
        if step % cfg.eval_every == 0 or last:
            stop = torch.zeros(1)
            if rank == 0:
                rec = {"step": step + 1, "time_s": time.perf_counter() - t0, "tau": getattr(model, "tau", None),
                       "lr": base_lrs[0] * mult, "loss": float(logs["loss"]),
                       "train_mse": float(logs["mse"]) if "mse" in logs else float("nan")}
                if getattr(model, "learn_mask", False):
                    rec["kept"] = int(logs["kept"])
                    rec["keep_prob_sum"] = float(logs["l1"])
                rec["val_mse"] = evaluate(model, val_t) if val_t is not None else float("nan")
                if keep_best and rec["val_mse"] < best_val:
                    best_val, best_step = rec["val_mse"], step + 1
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                result.history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", val=f"{rec['val_mse']:.4f}",
                                **({"kept": rec["kept"]} if "kept" in rec else {}))
                if ckpt_path is not None:
                    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = ckpt_path.with_suffix(".tmp")
                    torch.save({"version": CHECKPOINT_VERSION, "total_steps": steps, "step": step + 1,
                                "model": model.state_dict(), "optimizer": opt.state_dict(),
                                "rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
                                "history": result.history}, tmp)
                    os.replace(tmp, ckpt_path)  # a run killed while saving keeps the previous checkpoint
                if on_eval:
                    on_eval(rec)
                if cfg.early_stop_patience and val_t is not None:
                    if rec["val_mse"] < best * 0.99:
                        best, bad_evals = rec["val_mse"], 0
                    else:
                        bad_evals += 1
                    if bad_evals >= cfg.early_stop_patience:
                        stop[0] = 1
            if distributed:
                import torch.distributed as dist

                dist.broadcast(stop, src=0)
            if stop[0] > 0:
                break
    bar.close()
    if keep_best and best_state is not None and distributed:
        # Rank 0 chose the weights; every rank must end with the same ones.
        import torch.distributed as dist

        for v in best_state.values():
            dist.broadcast(v, src=0)
    elif keep_best and distributed:
        import torch.distributed as dist

        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for v in best_state.values():
            dist.broadcast(v, src=0)
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
        result.best_step = best_step
    result.seconds = time.perf_counter() - t0
    result.steps = step + 1
    result.samples_per_s = (result.steps - start) * min(cfg.batch_size, n_train) * world / max(result.seconds, 1e-9)
    model.eval()
    result.val_mse = evaluate(model, val_t) if val_t is not None else float("nan")
    result.train_mse = evaluate(model, train_t)
    return result


# --------------------------------------------------------------------------- selection

def select_ids(keep_probs: np.ndarray, threshold: float, top_n: int | None = None,
               min_keep: int = 1) -> np.ndarray:
    """Candidate ids to keep, by descending keep-probability.

    keep_probs: (C,). With ``top_n`` the N most probable; otherwise all above
    ``threshold``. Fewer than ``min_keep`` is an error (alpha too large).
    """
    p = np.asarray(keep_probs, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    if top_n is not None:
        if top_n > p.size:
            raise TrainingError(f"top_n = {top_n} keypoints requested but only C = {p.size} candidates exist")
        ids = order[:top_n]
    else:
        ids = order[p[order] > threshold]
    if ids.size < min_keep:
        raise TrainingError(
            f"only {ids.size} keypoint(s) have keep-probability > {threshold} (max {p.max():.3f}); "
            f"lower alpha, train longer, or pass top_n")
    return ids.astype(np.int64)


def make_policy(data: TrackSet, ids: Sequence[int], canonical_xy: np.ndarray, cfg: ModelConfig,
                norm: Normalisation, learn_mask: bool, names: Sequence[str] | None = None) -> KeypointPolicy:
    ids = [int(i) for i in ids]
    return KeypointPolicy(len(ids), data.image_size, cfg, norm, learn_mask=learn_mask, keypoint_ids=ids,
                          keypoint_names=names if names is not None else [f"kp{i}" for i in ids],
                          canonical_xy=np.asarray(canonical_xy, np.float32)[ids])


@dataclass
class PolicyRun:
    """A policy trained on a fixed keypoint subset (final policy or a baseline)."""

    name: str
    policy: KeypointPolicy
    ids: list[int]
    fit: FitResult


def train_on_keypoints(name: str, train: TrackSet, val: TrackSet | None, ids: Sequence[int],
                       canonical_xy: np.ndarray, cfg: ATKConfig, *, steps: int | None = None,
                       progress: bool = True, names: Sequence[str] | None = None,
                       checkpoint: str | Path | None = None, init: KeypointPolicy | None = None) -> PolicyRun:
    """Train a mask-free policy on the candidate ``ids`` only (final policy / baselines).

    init: start from this policy (e.g. ``mask_model.slice_keypoints(ids)``)
    instead of fresh weights.
    """
    tr, va = train.select_keypoints(ids), (val.select_keypoints(ids) if val is not None else None)
    if init is not None:
        if init.learn_mask or init.num_keypoints != len(ids):
            raise TrainingError(f"init policy has {init.num_keypoints} keypoints / mask {init.learn_mask}, "
                                f"expected {len(ids)} without a mask")
        pol = init
    else:
        norm = Normalisation.from_data(train.proprio, train.actions, cfg.model.action_mode, cfg.model.chunk,
                                       train.episode, cfg.model.binary_gripper)
        torch.manual_seed(cfg.train.seed)  # initial weights depend on the seed only, not on earlier runs
        pol = make_policy(tr, range(len(ids)), np.asarray(canonical_xy)[list(ids)], cfg.model, norm,
                          learn_mask=False, names=names)
    pol.keypoint_ids = [int(i) for i in ids]
    if names is None:
        pol.keypoint_names = [f"kp{int(i)}" for i in ids]
    res = fit(pol, tr, va, cfg.train, steps=steps, desc=name, progress=progress, checkpoint=checkpoint)
    return PolicyRun(name, pol, [int(i) for i in ids], res)


@dataclass
class ATKResult:
    """Output of :func:`run_atk`. keep_probs (C,); selected ids by descending probability."""

    mask_model: KeypointPolicy
    mask_fit: FitResult
    keep_probs: np.ndarray
    selected: np.ndarray
    final: PolicyRun
    fullset: PolicyRun | None
    train_episodes: list[str]
    val_episodes: list[str]

    def report(self) -> dict:
        """JSON-ready summary stored in the artifact's "selection" field."""
        out = {
            "selected_ids": [int(i) for i in self.selected],
            "selected_keep_probs": [float(self.keep_probs[i]) for i in self.selected],
            "keep_probs": [float(p) for p in self.keep_probs],
            "num_candidates": int(self.keep_probs.size),
            "val_mse_selected": self.final.fit.val_mse,
            "val_mse_mask_model": self.mask_fit.val_mse,
            "train_episodes": self.train_episodes,
            "val_episodes": self.val_episodes,
        }
        if self.fullset is not None:
            out["val_mse_all_candidates"] = self.fullset.fit.val_mse
        return out


def run_atk(tracks: TrackSet, canonical_xy: np.ndarray, cfg: ATKConfig, *, progress: bool = True,
            with_fullset: bool = True, workdir: str | Path | None = None, resume: bool = False) -> ATKResult:
    """ATK: train mask + policy on all C candidates, select, retrain on the N selected.

    tracks: all episodes, C = tracks.num_keypoints candidates; canonical_xy
    (C, 2) pixels on I_can. with_fullset also trains the FullSet baseline
    (all C, no mask) to report the validation error with all candidates.
    """
    c = tracks.num_keypoints
    if np.asarray(canonical_xy).shape != (c, 2):
        raise TrainingError(f"canonical_xy has shape {np.asarray(canonical_xy).shape}, tracks have {c} keypoints")
    top_n = cfg.selection.top_n
    if top_n is not None and top_n > c:
        raise TrainingError(f"N = {top_n} keypoints requested from only C = {c} candidates; C must be >= N")
    tr_ids, va_ids = split_episodes(len(tracks.names), cfg.train.val_fraction, cfg.train.seed)
    train, val = tracks.subset_episodes(tr_ids), tracks.subset_episodes(va_ids) if va_ids else None
    norm = Normalisation.from_data(train.proprio, train.actions, cfg.model.action_mode, cfg.model.chunk,
                                   train.episode, cfg.model.binary_gripper)
    ck = (lambda n: Path(workdir) / f"{n}.ckpt") if workdir else (lambda n: None)

    torch.manual_seed(cfg.train.seed)  # initial weights depend on the seed only, not on earlier runs
    mask_model = make_policy(train, range(c), canonical_xy, cfg.model, norm, learn_mask=True)
    mask_fit = fit(mask_model, train, val, cfg.train, desc="mask+policy", progress=progress,
                   checkpoint=ck("mask"), resume=resume)
    probs = mask_model.keep_probs()
    selected = select_ids(probs, cfg.model.keep_threshold, top_n, cfg.selection.min_keep)
    init = mask_model.slice_keypoints(selected) if cfg.selection.warm_start else None
    final = train_on_keypoints("final", train, val, selected, canonical_xy, cfg,
                               steps=cfg.selection.final_steps, progress=progress, init=init)
    fullset = (train_on_keypoints("fullset", train, val, range(c), canonical_xy, cfg,
                                  steps=cfg.selection.final_steps, progress=progress)
               if with_fullset else None)
    return ATKResult(mask_model, mask_fit, probs, selected, final, fullset,
                     [tracks.names[i] for i in tr_ids], [tracks.names[i] for i in va_ids])
