"""RGB baseline: a small CNN on the raw image + proprioception (no keypoints).

ROS-free. The paper compares ATK against image-based policies; this is the
from-scratch, CPU-sized version: frames are resized to ``input_size``
(default 96 x 72), a 3-layer strided CNN with global average pooling encodes
them, the code is concatenated with the standardised proprioception and an
MLP predicts the normalised action (MSE). It plugs into :func:`train.fit`
(same trainer interface as KeypointPolicy) and has its own artifact
(kind "atk-rgb-policy", same folder layout and validation as the keypoint
policy's).

Shapes: images (B, 3, h, w) uint8 at input size; proprio (B, 7); actions (B, 7).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .dataset import Episode
from .model import ActionCodec, ChunkRunner, Normalisation, PolicyInputError

RGB_KIND = "atk-rgb-policy"


@dataclass
class RGBConfig:
    """Size of the RGB baseline. input_size is (w, h) of the resized frames."""

    input_size: tuple[int, int] = (96, 72)
    channels: tuple[int, ...] = (16, 32, 32)
    hidden: int = 128

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)
        self.channels = tuple(int(v) for v in self.channels)
        if len(self.input_size) != 2 or min(self.input_size) < 16:
            raise ValueError(f"config field 'input_size' must be (w, h) >= 16, got {self.input_size!r}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"config field 'channels' must be positive widths, got {self.channels!r}")
        if self.hidden < 1:
            raise ValueError(f"config field 'hidden' must be >= 1, got {self.hidden!r}")


def resize_frame(frame: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, h, w) uint8 at ``input_size`` = (w, h)."""
    import cv2

    small = cv2.resize(np.asarray(frame), input_size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small.transpose(2, 0, 1))


@dataclass
class ImageSet:
    """images (S, C, h, w): uint8 RGB (C = 3) for this baseline, float16 depth + validity (C = 2) for
    depth_baseline; proprio, actions (S, 7); episode (S,) index into names."""

    images: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    episode: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode], input_size: tuple[int, int],
                      progress: bool = True) -> "ImageSet":
        from tqdm import tqdm

        imgs, ep_idx = [], []
        for i, ep in enumerate(tqdm(episodes, desc="resizing frames", unit="ep", disable=not progress)):
            imgs.extend(resize_frame(ep.frames[t], input_size) for t in range(len(ep)))
            ep_idx.append(np.full(len(ep), i))
        return cls(np.stack(imgs), np.concatenate([e.proprio for e in episodes]),
                   np.concatenate([e.actions for e in episodes]), np.concatenate(ep_idx),
                   [e.name for e in episodes])

    def subset_episodes(self, ids: Sequence[int]) -> "ImageSet":
        keep = np.isin(self.episode, np.asarray(ids))
        return replace(self, images=self.images[keep], proprio=self.proprio[keep],
                       actions=self.actions[keep], episode=self.episode[keep])

    def tensors(self, device: str) -> dict[str, torch.Tensor]:
        return {"image": torch.as_tensor(self.images, device=device),
                "proprio": torch.as_tensor(self.proprio, device=device),
                "action": torch.as_tensor(self.actions, device=device)}


def conv_encoder(in_channels: int, channels: Sequence[int]) -> nn.Sequential:
    """(B, in_channels, h, w) -> (B, channels[-1]): strided convolutions (5x5 then 3x3, stride 2) with
    GELU, global average pooling. Shared by the RGB and depth baselines."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for k, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, c, 5 if k == 0 else 3, stride=2, padding=2 if k == 0 else 1), nn.GELU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class RGBPolicy(nn.Module):
    """CNN + MLP on (image, proprio). Trainer interface as KeypointPolicy."""

    input_keys = ("image", "proprio")
    eval_chunk = 512   # images are large: evaluate in small chunks
    learn_mask = False
    in_channels = 3

    def __init__(self, cfg: RGBConfig, norm: Normalisation, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.cfg, self.norm = cfg, norm
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.encoder = conv_encoder(self.in_channels, cfg.channels)
        c_in = cfg.channels[-1]
        self.space = norm.space()
        self.head = nn.Sequential(nn.Linear(c_in + self.space.proprio_dim, cfg.hidden), nn.GELU(),
                                  nn.Linear(cfg.hidden, self.space.output_dim))
        self.codec = ActionCodec(norm)
        self.runner = ChunkRunner(self.space)

    def param_groups(self, lr: float, mask_lr: float, weight_decay: float) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": lr, "weight_decay": weight_decay, "name": "policy"}]

    def _scale(self, image: torch.Tensor) -> torch.Tensor:
        """Network input from the stored image: uint8 RGB -> [-1, 1]."""
        return image.to(torch.float32) / 127.5 - 1.0

    def _out(self, image: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        z = self.encoder(self._scale(image))
        return self.head(torch.cat([z, self.codec.proprio(proprio)], 1))

    def prepare(self, data: ImageSet, device: str) -> dict[str, torch.Tensor]:
        """Training tensors in this policy's action space (see KeypointPolicy.prepare)."""
        target = self.space.targets(data.proprio, data.actions, data.episode)
        return {"image": torch.as_tensor(data.images, device=device),
                "proprio": torch.as_tensor(self.space.features(data.proprio), device=device),
                "action": torch.as_tensor(target, device=device)}

    def forward(self, batch: dict[str, torch.Tensor], alpha: float = 0.0) -> tuple[torch.Tensor, dict]:
        target = self.codec.encode(batch["action"])
        mse = ((self._out(batch["image"], batch["proprio"]) - target) ** 2).mean()
        return mse, {"loss": mse.detach(), "mse": mse.detach()}

    @torch.no_grad()
    def predict(self, image: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """image (B, 3, h, w) uint8 at input size, proprio (B, P) features -> targets (B, K*A)."""
        return self.codec.decode(self._out(image, proprio))

    def reset(self) -> None:
        """Forget the steps left of the current action chunk."""
        self.runner.reset()

    def select_action(self, image: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        """image (H, W, 3) uint8 RGB camera frame, proprio (7,) -> action (7,) float32."""
        img = np.asarray(image)
        w, h = self.image_size
        if img.shape != (h, w, 3) or img.dtype != np.uint8:
            raise PolicyInputError(f"image must be ({h}, {w}, 3) uint8 RGB, got {img.shape} {img.dtype}")
        pr = np.asarray(proprio, np.float32).reshape(-1)
        if pr.shape != (7,) or not np.all(np.isfinite(pr)):
            raise PolicyInputError(f"proprio must be 7 finite values, got {pr.tolist()}")
        def predict() -> np.ndarray:
            self.eval()
            x = torch.from_numpy(resize_frame(img, self.cfg.input_size))[None]
            return self.predict(x, torch.from_numpy(self.space.features(pr[None])))[0].numpy()

        return self.runner.step(pr, predict)


def train_rgb(episodes: Sequence[Episode], train_ids: Sequence[int], val_ids: Sequence[int],
              train_cfg: TrainConfig, cfg: RGBConfig | None = None, progress: bool = True,
              images: ImageSet | None = None, action_mode: str = "delta",
              chunk: int = 1) -> tuple[RGBPolicy, Any]:
    """Train the RGB baseline on the given episode split; returns (policy, FitResult)."""
    from .train import fit

    cfg = cfg or RGBConfig()
    data = images or ImageSet.from_episodes(episodes, cfg.input_size, progress)
    train, val = data.subset_episodes(train_ids), (data.subset_episodes(val_ids) if len(val_ids) else None)
    norm = Normalisation.from_data(train.proprio, train.actions, action_mode, chunk, train.episode)
    pol = RGBPolicy(cfg, norm, episodes[0].image_size)
    res = fit(pol, train, val, train_cfg, desc="rgb", progress=progress)
    return pol, res


def save_rgb_policy(model_dir: str | Path, policy: RGBPolicy, template_image: np.ndarray,
                    extra: dict | None = None) -> Path:
    """Folder like the keypoint artifact, kind "atk-rgb-policy"."""
    from safetensors.torch import save_file

    from .artifact import (ACTION_LAYOUT, FORMAT_VERSION, TEMPLATE_FILE, WEIGHTS_FILE, _utc_now,
                           sha256_file, write_model_json, write_png_rgb)

    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_png_rgb(d / TEMPLATE_FILE, template_image)
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(tensors, str(d / WEIGHTS_FILE))
    doc = {"format_version": FORMAT_VERSION, "kind": RGB_KIND, "created_utc": _utc_now(),
           "image_size": list(policy.image_size), "template_image": TEMPLATE_FILE,
           "template_sha256": sha256_file(d / TEMPLATE_FILE),
           "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(d / WEIGHTS_FILE),
                       "tensors": {k: list(v.shape) for k, v in tensors.items()}},
           "model": {"input_size": list(policy.cfg.input_size), "channels": list(policy.cfg.channels),
                     "hidden": policy.cfg.hidden},
           "normalisation": policy.norm.to_dict(),
           "observation": {"image": {"shape": ["H", "W", 3], "encoding": "rgb8"},
                           "proprio": {"shape": [7]}},
           "action": ACTION_LAYOUT, "extra": extra or {}}
    write_model_json(d, doc)
    return d


def load_rgb_policy(model_dir: str | Path) -> RGBPolicy:
    """Load and validate an RGB baseline folder."""
    from .artifact import ArtifactError, load_state, read_model_json

    d = Path(model_dir)
    doc = read_model_json(d, kind=RGB_KIND)
    try:
        m = doc["model"]
        cfg = RGBConfig(input_size=tuple(m["input_size"]), channels=tuple(m["channels"]), hidden=m["hidden"])
        norm = Normalisation.from_dict(doc["normalisation"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{d / 'model.json'}: bad model description: {exc}") from exc
    pol = RGBPolicy(cfg, norm, tuple(doc["image_size"]))
    state = load_state(d, doc)
    try:
        pol.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{d}: weights do not fit the model in model.json: {exc}") from exc
    return pol.eval()
