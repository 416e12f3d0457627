"""Keypoint mask and keypoint policy (paper section 3.2, appendix A.1).

ROS-free. Shapes: B batch, C keypoints (candidates while selecting, the N
selected ones at deployment), 7 = proprioception / action dimensions.

* :class:`Normalisation`: mean/std of proprioception and actions; the
  network sees standardised values, keypoints are mapped to [-1, 1] by the
  image size (x / W, y / H).
* The mask: one learnable logit per candidate (C independent Bernoulli
  variables). Training samples a binary-concrete (two-class Gumbel-softmax)
  relaxation at temperature tau, uses the hard 0/1 sample in the forward pass
  and the soft one for gradients (straight-through). Masked keypoints are
  zeroed and a 0/1 indicator per keypoint is fed alongside, so a masked point
  is distinguishable from a real point at the image centre.
* Heads: an MLP on (mask * keypoints, indicator, proprioception) with a
  deterministic (MSE) or a Gaussian (NLL) output, behind :class:`PolicyHead`
  so a diffusion head can be added later.
* :class:`KeypointPolicy`: ``forward(batch) -> (loss, logs)`` for training,
  ``select_action(keypoints, proprio)`` and ``reset()`` for deployment (no
  mask at deployment: a policy trained on the N selected keypoints only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .action_space import ACTION_MODES as _ACTION_MODES, ActionSpace
from .dataset import ACTION_DIM, PROPRIO_DIM

#: Standard deviations below this are treated as this (a constant joint
#: would otherwise divide by zero and blow up its normalised value).
MIN_STD = 1e-3


class PolicyInputError(ValueError):
    """Bad observation given to select_action (shape, NaN); says which."""


#: How actions are represented to the network: see atk_policy.action_space.
#: "delta" (joint targets relative to the measured joints) was the first
#: default: with "absolute" targets the next target is almost the current
#: joint position, which proprioception alone predicts, so the sparsity
#: penalty pruned every keypoint on the simulated sushi demonstrations (0 of
#: 64 kept). "tcp" (Cartesian steps of the tool) is what atk-demo trains.
ACTION_MODES = _ACTION_MODES


@dataclass
class Normalisation:
    """Action representation and the statistics that standardise the
    network's robot-state features (P,) and its targets (K * A,) (see
    atk_policy.action_space). float32 arrays."""

    proprio_mean: np.ndarray
    proprio_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    action_mode: str = "delta"
    chunk: int = 1
    binary_gripper: bool = True

    def __post_init__(self) -> None:
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"normalisation field 'action_mode' must be one of {ACTION_MODES}, "
                             f"got {self.action_mode!r}")
        space = self.space()
        dims = {"proprio_mean": space.proprio_dim, "proprio_std": space.proprio_dim,
                "action_mean": space.output_dim, "action_std": space.output_dim}
        for name, n in dims.items():
            v = np.asarray(getattr(self, name), dtype=np.float32).reshape(-1)
            if v.shape != (n,) or not np.all(np.isfinite(v)):
                raise ValueError(f"normalisation field {name!r} must be {n} finite numbers for action_mode "
                                 f"{self.action_mode!r} and chunk {self.chunk}, got {v}")
            if name.endswith("std") and np.any(v <= 0):
                raise ValueError(f"normalisation field {name!r} must be > 0, got {v}")
            setattr(self, name, v)

    def space(self) -> ActionSpace:
        return ActionSpace(self.action_mode, self.chunk, self.binary_gripper)

    @classmethod
    def from_data(cls, proprio: np.ndarray, actions: np.ndarray, action_mode: str = "delta",
                  chunk: int = 1, episode: np.ndarray | None = None,
                  binary_gripper: bool = True) -> "Normalisation":
        """proprio, actions: (S, 7) training samples in robot units; episode (S,)
        their episode index (needed for chunk > 1)."""
        space = ActionSpace(action_mode, chunk, binary_gripper)
        feats = space.features(proprio)
        ep = np.zeros(len(feats), np.int64) if episode is None else np.asarray(episode)
        lab = space.targets(proprio, actions, ep)
        return cls(feats.mean(0), np.maximum(feats.std(0), MIN_STD),
                   lab.mean(0), np.maximum(lab.std(0), MIN_STD), action_mode, int(chunk), bool(binary_gripper))

    def to_dict(self) -> dict:
        d: dict = {k: [float(x) for x in getattr(self, k)]
                   for k in ("proprio_mean", "proprio_std", "action_mean", "action_std")}
        d["action_mode"] = self.action_mode
        d["chunk"] = int(self.chunk)
        d["binary_gripper"] = bool(self.binary_gripper)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        keys = {"proprio_mean", "proprio_std", "action_mean", "action_std", "action_mode"}
        optional = {"chunk", "binary_gripper"}
        if not keys <= set(d) or not set(d) <= keys | optional:
            raise ValueError(f"normalisation must have the keys {sorted(keys)} (and optionally "
                             f"{sorted(optional)}), got {sorted(d)}")
        return cls(**d)


class ActionCodec(nn.Module):
    """Standardise features and targets for the network and back (torch side of Normalisation).

    proprio: features (B, P) -> standardised; encode: targets (B, K*A) ->
    standardised; decode: network output (B, K*A) -> targets (B, K*A).
    """

    def __init__(self, norm: Normalisation) -> None:
        super().__init__()
        # Not persistent: the statistics live in model.json (human-readable).
        for name in ("proprio_mean", "proprio_std", "action_mean", "action_std"):
            self.register_buffer(name, torch.as_tensor(getattr(norm, name)), persistent=False)

    def proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        return (proprio - self.proprio_mean) / self.proprio_std

    def encode(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.action_mean) / self.action_std

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.action_std + self.action_mean


class ChunkRunner:
    """Deployment side of action chunking: predict K steps, execute them one
    per call (each converted to a command from the joints measured at that
    call), predict again when they are used up. ``reset`` drops what is left."""

    def __init__(self, space: ActionSpace) -> None:
        self.space = space
        self._queue: list[np.ndarray] = []

    def reset(self) -> None:
        self._queue = []

    @property
    def pending(self) -> int:
        return len(self._queue)

    def step(self, proprio: np.ndarray, predict) -> np.ndarray:
        """predict: () -> (K * A,) targets, called when the queue is empty."""
        if not self._queue:
            out = np.asarray(predict(), np.float64).reshape(self.space.chunk_steps, self.space.action_dim)
            self._queue = list(out)
        return self.space.command(proprio, self._queue.pop(0))


# --------------------------------------------------------------------------- mask

def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class _StraightThrough(torch.autograd.Function):
    """Forward: exact 0/1 (soft > 0.5); backward: the gradient passes to ``soft`` unchanged.

    (``hard + soft - soft.detach()`` would give the same gradient but values
    like 0.99999994 from float rounding, so a "zeroed" keypoint would leak.)
    """

    @staticmethod
    def forward(ctx, soft: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def sample_concrete_mask(logits: torch.Tensor, batch: int, tau: float,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through binary-concrete sample.

    logits: (C,). Returns (mask (B, C): hard 0/1 values whose gradient is the
    soft sample's, soft (B, C) in (0, 1)).
    """
    u = torch.rand((batch, logits.shape[0]), generator=generator, device=logits.device)
    u = u.clamp(1e-6, 1 - 1e-6)
    noise = torch.log(u) - torch.log1p(-u)          # logistic = difference of two Gumbels
    soft = torch.sigmoid((logits + noise) / tau)
    return _StraightThrough.apply(soft), soft


# --------------------------------------------------------------------------- heads

class PolicyHead(nn.Module):
    """Maps features (B, F) to an action distribution over normalised actions (B, 7).

    Subclasses implement ``loss(features, target) -> (loss, logs)`` and
    ``predict(features) -> (B, 7)`` (the mean / mode).
    """

    def loss(self, features: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.GELU()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class MLPHead(PolicyHead):
    """Deterministic MLP, trained with MSE on normalised actions."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int = ACTION_DIM) -> None:
        super().__init__()
        self.net = _mlp(in_dim, hidden, out_dim)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def loss(self, features: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        mse = ((self.net(features) - target) ** 2).mean()
        return mse, {"mse": mse.detach()}


class GaussianMLPHead(PolicyHead):
    """Diagonal Gaussian MLP, trained with the negative log-likelihood."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int = ACTION_DIM,
                 min_log_std: float = -3.0, max_log_std: float = 2.0) -> None:
        super().__init__()
        self.net = _mlp(in_dim, hidden, 2 * out_dim)
        self.out_dim = out_dim
        self.min_log_std, self.max_log_std = min_log_std, max_log_std

    def _params(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(features)
        mean, log_std = out[:, :self.out_dim], out[:, self.out_dim:]
        return mean, log_std.clamp(self.min_log_std, self.max_log_std)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self._params(features)[0]

    def loss(self, features: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        mean, log_std = self._params(features)
        nll = (0.5 * ((target - mean) * torch.exp(-log_std)) ** 2 + log_std).mean() + 0.5 * math.log(2 * math.pi)
        mse = ((mean - target) ** 2).mean()
        return nll, {"nll": nll.detach(), "mse": mse.detach()}


def make_head(cfg: ModelConfig, in_dim: int, out_dim: int = ACTION_DIM) -> PolicyHead:
    if cfg.head == "mlp_mse":
        return MLPHead(in_dim, cfg.hidden, out_dim)
    if cfg.head == "mlp_gaussian":
        return GaussianMLPHead(in_dim, cfg.hidden, out_dim, min_log_std=cfg.min_log_std,
                               max_log_std=cfg.max_log_std)
    raise ValueError(f"unknown head {cfg.head!r}")


# --------------------------------------------------------------------------- policy

class KeypointPolicy(nn.Module):
    """Policy on C tracked keypoints + proprioception, optionally with a learned mask.

    Training: ``forward(batch, tau)`` with batch = {"keypoints": (B, C, 2)
    pixels, "proprio": (B, 7), "action": (B, 7)} returns (loss, logs); the
    loss is the head's action loss + alpha * sum of keep-probabilities (when
    the mask is learned). Deployment: ``select_action``.
    """

    def __init__(self, num_keypoints: int, image_size: tuple[int, int], cfg: ModelConfig,
                 norm: Normalisation, learn_mask: bool = False,
                 keypoint_ids: Sequence[int] | None = None,
                 keypoint_names: Sequence[str] | None = None,
                 canonical_xy: np.ndarray | None = None) -> None:
        super().__init__()
        if num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
        w, h = int(image_size[0]), int(image_size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"image_size must be (W, H) > 0, got {image_size}")
        self.num_keypoints = int(num_keypoints)
        self.image_size = (w, h)
        self.cfg = cfg
        self.norm = norm
        self.learn_mask = bool(learn_mask)
        self.use_indicator = self.learn_mask and cfg.mask_indicator
        self.keypoint_ids = [int(i) for i in (keypoint_ids if keypoint_ids is not None
                                               else range(num_keypoints))]
        self.keypoint_names = [str(n) for n in (keypoint_names if keypoint_names is not None
                                                 else [f"kp{i}" for i in self.keypoint_ids])]
        self.canonical_xy = (np.zeros((num_keypoints, 2), np.float32) if canonical_xy is None
                             else np.asarray(canonical_xy, np.float32).reshape(num_keypoints, 2))
        if len(self.keypoint_ids) != num_keypoints or len(self.keypoint_names) != num_keypoints:
            raise ValueError(f"{num_keypoints} keypoints but {len(self.keypoint_ids)} ids and "
                             f"{len(self.keypoint_names)} names")
        if self.learn_mask:
            self.mask_logits = nn.Parameter(torch.full((num_keypoints,), logit(cfg.init_keep_prob)))
        self.space = norm.space()
        in_dim = 2 * num_keypoints + (num_keypoints if self.use_indicator else 0) + self.space.proprio_dim
        self.head = make_head(cfg, in_dim, self.space.output_dim)
        self.codec = ActionCodec(norm)
        self.runner = ChunkRunner(self.space)
        self.register_buffer("_scale", torch.tensor([2.0 / w, 2.0 / h]), persistent=False)
        self.tau = cfg.tau_start

    # ---- parameters
    def param_groups(self, lr: float, mask_lr: float, weight_decay: float) -> list[dict]:
        """Adam groups: the mask logits get their own (larger) lr and no decay."""
        groups = [{"params": list(self.head.parameters()), "lr": lr, "weight_decay": weight_decay,
                   "name": "policy"}]
        if self.learn_mask:
            groups.append({"params": [self.mask_logits], "lr": mask_lr, "weight_decay": 0.0, "name": "mask"})
        return groups

    def keep_probs(self) -> np.ndarray:
        """(C,) float32 keep-probabilities (all ones without a learned mask)."""
        if not self.learn_mask:
            return np.ones(self.num_keypoints, np.float32)
        return torch.sigmoid(self.mask_logits.detach()).cpu().numpy().astype(np.float32)

    # ---- features
    def normalise_keypoints(self, keypoints: torch.Tensor) -> torch.Tensor:
        """(B, C, 2) pixels -> (B, C, 2) in [-1, 1] (image centre = 0)."""
        return keypoints * self._scale - 1.0

    def _features(self, keypoints: torch.Tensor, proprio: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
        kp = self.normalise_keypoints(keypoints)
        parts = []
        if mask is not None:
            kp = kp * mask.unsqueeze(-1)
        parts.append(kp.flatten(1))
        if self.use_indicator and mask is not None:
            parts.append(mask)
        parts.append(self.codec.proprio(proprio))
        return torch.cat(parts, dim=1)

    def _eval_mask(self, batch: int) -> torch.Tensor | None:
        """Deterministic mask (B, C): kept where keep-probability > keep_threshold."""
        if not self.learn_mask:
            return None
        keep = (torch.sigmoid(self.mask_logits) > self.cfg.keep_threshold).to(self.mask_logits.dtype)
        return keep.expand(batch, -1)

    def _mask(self, batch: int) -> torch.Tensor | None:
        if self.learn_mask and self.training:
            return sample_concrete_mask(self.mask_logits, batch, self.tau)[0]
        return self._eval_mask(batch)

    # ---- training
    def prepare(self, data, device: str) -> dict[str, torch.Tensor]:
        """Training tensors of a train.TrackSet in this policy's action space:
        keypoints (S, C, 2) px, proprio = features (S, P), action = targets (S, K*A)."""
        feats = self.space.features(data.proprio)
        target = self.space.targets(data.proprio, data.actions, data.episode)
        return {"keypoints": torch.as_tensor(data.keypoints, device=device),
                "proprio": torch.as_tensor(feats, device=device),
                "action": torch.as_tensor(target, device=device)}

    def forward(self, batch: dict[str, torch.Tensor], alpha: float = 0.0) -> tuple[torch.Tensor, dict]:
        """batch (see ``prepare``): keypoints (B, C, 2) px, proprio (B, P)
        features, action (B, K*A) targets. Returns (loss, logs)."""
        kp, proprio, action = batch["keypoints"], batch["proprio"], batch["action"]
        mask = self._mask(kp.shape[0])
        feats = self._features(kp, proprio, mask)
        target = self.codec.encode(action)
        loss, logs = self.head.loss(feats, target)
        if self.learn_mask:
            probs = torch.sigmoid(self.mask_logits)
            l1 = probs.sum()
            loss = loss + alpha * l1
            logs["l1"] = l1.detach()
            logs["kept"] = (probs > self.cfg.keep_threshold).sum().detach().to(torch.float32)
        logs["loss"] = loss.detach()
        return loss, logs

    @torch.no_grad()
    def predict(self, keypoints: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """keypoints (B, C, 2) px, proprio (B, P) features -> targets (B, K*A) (see ``prepare``)."""
        mask = self._eval_mask(keypoints.shape[0])
        out = self.head.predict(self._features(keypoints, proprio, mask))
        return self.codec.decode(out)

    # ---- selection
    @torch.no_grad()
    def slice_keypoints(self, ids: Sequence[int]) -> "KeypointPolicy":
        """A mask-free policy on candidates ``ids`` that computes what this model computes.

        With a learned mask and ``ids`` = the deterministically kept set, the
        result gives exactly this model's eval predictions on those keypoints:
        the first layer keeps the columns of the selected coordinates and
        folds their indicator columns (always 1) into its bias; columns of
        dropped keypoints (input 0, indicator 0) go. Used to warm-start the
        final policy.
        """
        ids = [int(i) for i in ids]
        c, n = self.num_keypoints, len(ids)
        new = KeypointPolicy(n, self.image_size, self.cfg, self.norm, learn_mask=False,
                             keypoint_ids=[self.keypoint_ids[i] for i in ids],
                             keypoint_names=[self.keypoint_names[i] for i in ids],
                             canonical_xy=self.canonical_xy[ids])
        src, dst = self.head.net, new.head.net
        for k, (a, b) in enumerate(zip(src, dst)):
            if k == 0:
                w = a.weight
                p = self.space.proprio_dim
                cols = [2 * i + j for i in ids for j in (0, 1)] + list(range(w.shape[1] - p, w.shape[1]))
                b.weight.copy_(w[:, cols])
                bias = a.bias.clone()
                if self.use_indicator:
                    bias += w[:, [2 * c + i for i in ids]].sum(dim=1)
                b.bias.copy_(bias)
            elif isinstance(a, nn.Linear):
                b.load_state_dict(a.state_dict())
        return new

    # ---- deployment
    def reset(self) -> None:
        """Forget per-episode state: the steps left of the current action chunk."""
        self.runner.reset()

    def select_action(self, keypoints: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        """keypoints (N, 2) float pixels (the artifact's keypoint order), proprio (7,)
        measured joints + gripper -> action (7,) float32: joint targets + gripper
        command. With chunks of K > 1 steps the network runs every K calls and
        the calls between execute its remaining steps (``reset`` starts over)."""
        kp = np.asarray(keypoints, dtype=np.float32)
        pr = np.asarray(proprio, dtype=np.float32).reshape(-1)
        if kp.shape != (self.num_keypoints, 2):
            raise PolicyInputError(f"keypoints must have shape ({self.num_keypoints}, 2), got {kp.shape}")
        if pr.shape != (PROPRIO_DIM,):
            raise PolicyInputError(f"proprio must have {PROPRIO_DIM} values (6 joints + gripper), got {pr.shape}")
        if not np.all(np.isfinite(kp)):
            raise PolicyInputError(f"keypoints contain non-finite values at rows "
                                   f"{np.where(~np.isfinite(kp).all(1))[0].tolist()}")
        if not np.all(np.isfinite(pr)):
            raise PolicyInputError(f"proprio contains non-finite values: {pr.tolist()}")
        def predict() -> np.ndarray:
            was_training = self.training
            self.eval()
            dev = self._scale.device
            feats = torch.from_numpy(self.space.features(pr[None]))
            out = self.predict(torch.from_numpy(kp)[None].to(dev), feats.to(dev))
            if was_training:
                self.train()
            return out[0].cpu().numpy()

        return self.runner.step(pr, predict)
