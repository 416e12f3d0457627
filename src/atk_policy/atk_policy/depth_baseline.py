"""Depth baseline: the RGB baseline's CNN on the depth image + proprioception (no keypoints).

ROS-free. The same network, trainer, action space, chunking and
normalisation as :mod:`atk_policy.rgb_baseline`; only the picture differs.
Each depth image (H, W) uint16 mm (REP 118, registered to the colour
camera, 0 = no reading) becomes two channels at ``input_size`` (default
96 x 72, resized with area averaging):

* depth: metres clipped to [near_m, far_m]; a pixel without a reading
  counts as ``far_m`` (a missing return is usually too far, too dark or too
  shiny: background, not an obstacle). The network sees it minus the
  training set's mean depth image, over the std around it (both buffers of
  the weights file): the fixed camera's static scene (table, backdrop)
  becomes ~0 and what moves (arm, objects) stands out. Scaled to [-1, 1]
  over the whole range instead, a 5-30 cm box on 5% of the image moved the
  pooled CNN features by ~1e-3 and the test set's box height was not
  learned in 300 steps (normalised errors 1.0); standardised with one global
  mean and std, not over a tilted table (0.56); with the mean image,
  0.014-0.016. The pooled CNN localises poorly (as the RGB baseline's
  must): the joints driven by the box's image position kept errors of
  0.47-0.70 there, where the point-cloud baseline reached 0.004-0.09;
* validity: the share of pixels with a reading in each cell, scaled to [-1, 1],
  so the network can tell "far" from "unknown" (a real Kinect leaves holes at
  edges and on glass; the simulator leaves none inside 5 m).

Defaults [0.2, 2.0] m cover the simulated cell (workspace 0.47-1.55 m from
the camera) and a tripod Kinect over a table. Artifact kind
"atk-depth-policy" (same folder layout and checks as the keypoint policy's).

Shapes: depth inputs (B, 2, h, w) float16 at input size (metres, validity 0..1); proprio (B, 7);
actions (B, 7).
Cost: as the RGB baseline (same CNN; the first layer sees 2 channels
instead of 3). Measured on 8 simulated sushi demos (320x240, 627 frames),
600 steps x 64 with input preparation, one torch thread: 45.8 CPU-s against
RGB's 53.5 (the shared 2-core machine gave the process a tenth of a core, so
wall times were 3-10x these).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .config import TrainConfig
from .dataset import Episode
from .depth_geometry import depth_metres
from .model import Normalisation, PolicyInputError
from .rgb_baseline import ImageSet, RGBPolicy

DEPTH_KIND = "atk-depth-policy"


class DepthDataError(ValueError):
    """Episodes that cannot train a depth baseline (no depth, other camera); says which and why."""


@dataclass
class DepthConfig:
    """Size of the depth baseline. input_size is (w, h) of the resized depth; near_m / far_m the clip range."""

    input_size: tuple[int, int] = (96, 72)
    channels: tuple[int, ...] = (16, 32, 32)
    hidden: int = 128
    near_m: float = 0.2
    far_m: float = 2.0

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)
        self.channels = tuple(int(v) for v in self.channels)
        if len(self.input_size) != 2 or min(self.input_size) < 16:
            raise ValueError(f"config field 'input_size' must be (w, h) >= 16, got {self.input_size!r}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"config field 'channels' must be positive widths, got {self.channels!r}")
        if self.hidden < 1:
            raise ValueError(f"config field 'hidden' must be >= 1, got {self.hidden!r}")
        if not (math.isfinite(self.near_m) and self.near_m >= 0):
            raise ValueError(f"config field 'near_m' must be >= 0 m, got {self.near_m!r}")
        if not (math.isfinite(self.far_m) and self.far_m > self.near_m):
            raise ValueError(f"config field 'far_m' must be > near_m ({self.near_m}), got {self.far_m!r}")

    def to_dict(self) -> dict:
        return {"input_size": list(self.input_size), "channels": list(self.channels), "hidden": self.hidden,
                "near_m": self.near_m, "far_m": self.far_m}


#: Floor of the depth std used to standardise the input (m): a flat, unchanging scene stays finite.
MIN_DEPTH_STD_M = 1e-3


def depth_image(depth_mm: np.ndarray, cfg: DepthConfig) -> np.ndarray:
    """(H, W) uint16 mm -> (2, h, w) float16 at ``cfg.input_size``: depth in metres clipped to
    [near_m, far_m] (no reading: far_m), share of pixels with a reading (0..1); see the module docstring."""
    import cv2

    z = depth_metres(depth_mm)
    valid = z > 0
    z = np.where(valid, np.clip(z, cfg.near_m, cfg.far_m), np.float32(cfg.far_m))
    small = cv2.resize(z, cfg.input_size, interpolation=cv2.INTER_AREA)
    seen = cv2.resize(valid.astype(np.float32), cfg.input_size, interpolation=cv2.INTER_AREA)
    return np.stack([small, seen]).astype(np.float16)


def depth_statistics(data: ImageSet) -> tuple[np.ndarray, float]:
    """Per-pixel mean (h, w) float32 metres of the depth channel of ``data``'s inputs, and the std (m) of
    the depth around it (floored at MIN_DEPTH_STD_M)."""
    z = data.images[:, 0].astype(np.float64)
    mean = z.mean(0)
    return mean.astype(np.float32), max(float(np.sqrt(((z - mean) ** 2).mean())), MIN_DEPTH_STD_M)


def require_depth(episodes: Sequence[Episode], what: str) -> None:
    """Raise DepthDataError naming the episodes without depth (``what``: the method that needs it)."""
    missing = [e.name for e in episodes if e.depth is None]
    if missing:
        raise DepthDataError(
            f"the {what} baseline needs depth registered to the colour camera in every episode, but "
            f"{len(missing)} of {len(episodes)} have none ({', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}): record the camera/depth/image_raw topic "
            f"(atk-demo does when a depth method is asked for); an episode cache keeps depth only if its "
            f"episodes had it")


def depth_set(episodes: Sequence[Episode], cfg: DepthConfig, progress: bool = True) -> ImageSet:
    """Every frame's depth input (S, 2, h, w) float16 with proprio, actions and episode index (S,)."""
    from tqdm import tqdm

    require_depth(episodes, "Depth")
    imgs, ep_idx = [], []
    for i, ep in enumerate(tqdm(episodes, desc="depth inputs", unit="ep", disable=not progress)):
        imgs.extend(depth_image(np.asarray(ep.depth[t]), cfg) for t in range(len(ep)))
        ep_idx.append(np.full(len(ep), i))
    return ImageSet(np.stack(imgs), np.concatenate([e.proprio for e in episodes]),
                    np.concatenate([e.actions for e in episodes]), np.concatenate(ep_idx),
                    [e.name for e in episodes])


class DepthPolicy(RGBPolicy):
    """The RGB baseline's CNN + MLP on (depth input, proprio). Trainer interface as KeypointPolicy."""

    in_channels = 2

    def __init__(self, cfg: DepthConfig, norm: Normalisation, image_size: tuple[int, int],
                 depth_mean: np.ndarray | None = None, depth_std: float = 1.0) -> None:
        """depth_mean (h, w) m, depth_std m: the training inputs' statistics (depth_statistics); they are
        buffers of the weights file. None: zeros and 1 (to be loaded)."""
        super().__init__(cfg, norm, image_size)  # type: ignore[arg-type]  # same fields the CNN reads
        w, h = cfg.input_size
        mean = torch.zeros(h, w) if depth_mean is None else torch.as_tensor(np.asarray(depth_mean, np.float32))
        if tuple(mean.shape) != (h, w):
            raise ValueError(f"depth_mean must be ({h}, {w}) (input_size), got {tuple(mean.shape)}")
        if not (math.isfinite(depth_std) and depth_std >= MIN_DEPTH_STD_M):
            raise ValueError(f"depth_std must be finite and >= {MIN_DEPTH_STD_M} m, got {depth_std!r}")
        self.register_buffer("depth_mean", mean)
        self.register_buffer("depth_std", torch.tensor(float(depth_std)))

    def _scale(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w) depth_image inputs -> depth minus the training mean image over the std,
        validity in [-1, 1]."""
        x = image.to(torch.float32)
        return torch.stack([(x[:, 0] - self.depth_mean) / self.depth_std, x[:, 1] * 2.0 - 1.0], 1)

    @torch.no_grad()
    def predict(self, image: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """image (B, 2, h, w) depth inputs, proprio (B, P) features -> targets (B, K*A)."""
        return self.codec.decode(self._out(image, proprio))

    def select_action(self, depth_mm: np.ndarray, proprio: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """depth_mm (H, W) uint16 millimetres (0 = no reading), proprio (7,) -> action (7,) float32."""
        d = np.asarray(depth_mm)
        w, h = self.image_size
        if d.shape != (h, w) or d.dtype != np.uint16:
            raise PolicyInputError(f"depth must be ({h}, {w}) uint16 mm, got {d.shape} {d.dtype}")
        pr = np.asarray(proprio, np.float32).reshape(-1)
        if pr.shape != (7,) or not np.all(np.isfinite(pr)):
            raise PolicyInputError(f"proprio must be 7 finite values, got {pr.tolist()}")

        def predict() -> np.ndarray:
            self.eval()
            x = torch.from_numpy(depth_image(d, self.cfg))[None]
            return self.predict(x, torch.from_numpy(self.space.features(pr[None])))[0].numpy()

        return self.runner.step(pr, predict)


def train_depth(episodes: Sequence[Episode], train_ids: Sequence[int], val_ids: Sequence[int],
                train_cfg: TrainConfig, cfg: DepthConfig | None = None, progress: bool = True,
                data: ImageSet | None = None, action_mode: str = "delta",
                chunk: int = 1) -> tuple[DepthPolicy, Any]:
    """Train the depth baseline on the given episode split; returns (policy, FitResult)."""
    from .train import fit

    cfg = cfg or DepthConfig()
    data = data or depth_set(episodes, cfg, progress)
    train, val = data.subset_episodes(train_ids), (data.subset_episodes(val_ids) if len(val_ids) else None)
    norm = Normalisation.from_data(train.proprio, train.actions, action_mode, chunk, train.episode)
    pol = DepthPolicy(cfg, norm, episodes[0].image_size, *depth_statistics(train))
    res = fit(pol, train, val, train_cfg, desc="depth", progress=progress)
    return pol, res


def save_depth_policy(model_dir: str | Path, policy: DepthPolicy, template_image: np.ndarray,
                      extra: dict | None = None) -> Path:
    """Folder like the keypoint artifact, kind "atk-depth-policy"."""
    from .artifact import save_baseline_policy

    return save_baseline_policy(
        model_dir, policy, DEPTH_KIND, template_image, extra=extra,
        model=policy.cfg.to_dict(),
        observation={"depth": {"shape": ["H", "W"], "encoding": "16UC1", "unit": "mm, 0 = no reading",
                               "registered_to": "camera/color/image_raw"},
                     "proprio": {"shape": [7]}})


def load_depth_policy(model_dir: str | Path) -> DepthPolicy:
    """Load and validate a depth baseline folder."""
    from .artifact import load_baseline_policy

    def build(doc: dict) -> DepthPolicy:
        m = doc["model"]
        cfg = DepthConfig(input_size=tuple(m["input_size"]), channels=tuple(m["channels"]), hidden=m["hidden"],
                          near_m=m["near_m"], far_m=m["far_m"])
        return DepthPolicy(cfg, Normalisation.from_dict(doc["normalisation"]), tuple(doc["image_size"]))

    return load_baseline_policy(model_dir, DEPTH_KIND, build)
