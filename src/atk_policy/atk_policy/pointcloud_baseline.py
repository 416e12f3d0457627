"""Point-cloud baseline: a small PointNet on the back-projected depth + proprioception (no keypoints).

ROS-free. Each depth image (H, W) uint16 mm, registered to the colour
camera, is lifted to camera-frame points with the camera's intrinsics
(:mod:`atk_policy.depth_geometry`: K and distortion from the bags'
camera_info, stored in the artifact), then:

* workspace crop, in the camera frame (it needs only K, which every bag
  carries; a box in the robot's frame would also need the camera's
  extrinsics, which bags do not): keep points whose depth z (along the
  optical axis) lies in [near_m, far_m], default [0.25, 1.2] m, and that lie
  more than ``table_margin_m`` (5 mm) above the table. The table is the
  dominant plane of the training clouds (RANSAC on the first frame of up to
  ``PLANE_FRAMES`` training episodes, stored in the artifact; the camera
  stands still relative to it, as it does relative to the robot). The range
  alone dropped only the backdrop and the far table edge in the simulated
  cell (1.4% of the pixels), and left the table at 80% of the points: 3 of
  512 points fell on the nigiri. Without the table the objects and the arm
  are the cloud. ``table_margin_m`` None keeps the table (no plane fitted,
  or none found: fewer than ``MIN_PLANE_SHARE`` of the points on it);
* fixed size: ``num_points`` (default 512) points. Training stores a pool of
  ``pool_points`` (1024) random points per frame and draws ``num_points`` of
  them at random each step (augmentation); validation takes the pool's first
  ``num_points`` (itself a random draw, fixed); deployment draws from the
  whole crop with a fixed seed, so the same depth image gives the same
  action. Fewer points than needed are repeated (max-pooling ignores
  repeats); an empty crop gives points at the camera origin.

Points are centred on (0, 0, (near + far) / 2) and scaled by (far - near) / 2
before the encoder: a shared per-point MLP (``widths``, GELU) and a max-pool
over points (PointNet, Qi et al. 2017, without the input transforms). The
code joins the standardised proprioception and the RGB baseline's MLP head
predicts the action in the same action space, chunks and normalisation.
Artifact kind "atk-pointcloud-policy".

Shapes: points (B, P, 3) float metres, camera frame; proprio (B, 7); actions (B, 7).
Cost: 600 steps x 32 (the default) with input preparation took 52.8 CPU-s on
8 simulated sushi demos (320x240, 627 frames), the RGB baseline's 600 x 64
53.5 CPU-s; per step, a batch of 64 clouds costs about twice 64 images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .dataset import Episode
from .depth_baseline import DepthDataError, require_depth
from .depth_geometry import Intrinsics, backproject, crop_range, fit_plane, sample_points
from .model import ActionCodec, ChunkRunner, Normalisation, PolicyInputError

POINTCLOUD_KIND = "atk-pointcloud-policy"
#: Seed of deployment's draw of num_points from the crop (the same depth gives the same action).
DEPLOY_SEED = 0
#: Training episodes whose first frame the table plane is fitted to, and points drawn from each.
PLANE_FRAMES = 10
PLANE_POINTS_PER_FRAME = 5000
#: A plane holding fewer of those points is no table: the crop then keeps every point in range.
MIN_PLANE_SHARE = 0.3


@dataclass
class PointcloudConfig:
    """Size of the point-cloud baseline (see the module docstring)."""

    num_points: int = 512
    pool_points: int = 1024
    near_m: float = 0.25
    far_m: float = 1.2
    #: Points up to this far above the table plane (m) are dropped with it; None keeps the table.
    table_margin_m: float | None = 0.005
    widths: tuple[int, ...] = (64, 128, 128)
    hidden: int = 128

    def __post_init__(self) -> None:
        self.widths = tuple(int(v) for v in self.widths)
        if not (isinstance(self.num_points, int) and self.num_points >= 1):
            raise ValueError(f"config field 'num_points' must be an int >= 1, got {self.num_points!r}")
        if not (isinstance(self.pool_points, int) and self.pool_points >= self.num_points):
            raise ValueError(f"config field 'pool_points' must be an int >= num_points ({self.num_points}), "
                             f"got {self.pool_points!r}")
        if not (math.isfinite(self.near_m) and self.near_m >= 0):
            raise ValueError(f"config field 'near_m' must be >= 0 m, got {self.near_m!r}")
        if not (math.isfinite(self.far_m) and self.far_m > self.near_m):
            raise ValueError(f"config field 'far_m' must be > near_m ({self.near_m}), got {self.far_m!r}")
        if self.table_margin_m is not None and not (math.isfinite(self.table_margin_m)
                                                    and 0 < self.table_margin_m < 0.5):
            raise ValueError(f"config field 'table_margin_m' must be None or in (0, 0.5) m, "
                             f"got {self.table_margin_m!r}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"config field 'widths' must be positive widths, got {self.widths!r}")
        if self.hidden < 1:
            raise ValueError(f"config field 'hidden' must be >= 1, got {self.hidden!r}")

    def to_dict(self) -> dict:
        return {"num_points": self.num_points, "pool_points": self.pool_points, "near_m": self.near_m,
                "far_m": self.far_m, "table_margin_m": self.table_margin_m, "widths": list(self.widths),
                "hidden": self.hidden}


#: The table plane: (nx, ny, nz, d), n . X + d = height above the table (m, camera frame), or None.
Plane = tuple[float, float, float, float] | None


def workspace_cloud(depth_mm: np.ndarray, rays: np.ndarray, cfg: PointcloudConfig, plane: Plane) -> np.ndarray:
    """(H, W) uint16 mm + rays (H, W, 2) -> the workspace's camera-frame points (P, 3) float32 metres:
    depth in [near_m, far_m] and, with a plane, more than table_margin_m above it."""
    points, _ = backproject(depth_mm, rays)
    points = crop_range(points, cfg.near_m, cfg.far_m)
    if plane is not None and cfg.table_margin_m is not None:
        n = np.asarray(plane[:3], np.float32)
        points = points[points @ n + np.float32(plane[3]) > cfg.table_margin_m]
    return points


def table_plane(episodes: Sequence[Episode], cfg: PointcloudConfig, rays: np.ndarray, seed: int = 0) -> Plane:
    """The table: the dominant plane of the first frames of up to PLANE_FRAMES ``episodes`` (in range),
    or None when ``cfg.table_margin_m`` is None or no plane holds MIN_PLANE_SHARE of the points."""
    if cfg.table_margin_m is None:
        return None
    rng = np.random.default_rng(seed)
    clouds = []
    for ep in list(episodes)[:PLANE_FRAMES]:
        cloud = workspace_cloud(np.asarray(ep.depth[0]), rays, cfg, None)   # in range, table included
        if len(cloud):
            clouds.append(cloud[rng.choice(len(cloud), min(len(cloud), PLANE_POINTS_PER_FRAME), replace=False)])
    if not clouds or sum(len(c) for c in clouds) < 3:
        return None
    n, d, share = fit_plane(np.concatenate(clouds), cfg.table_margin_m, rng)
    if share < MIN_PLANE_SHARE:
        return None
    return (float(n[0]), float(n[1]), float(n[2]), float(d))


def episode_intrinsics(episodes: Sequence[Episode]) -> Intrinsics:
    """The one camera of ``episodes`` (from their camera_info); DepthDataError if any lacks it or differs."""
    found: dict[Intrinsics, list[str]] = {}
    for ep in episodes:
        info = ep.meta.get("camera_info")
        if not info:
            raise DepthDataError(f"episode {ep.name!r} has no camera intrinsics (no camera_info in its bag): the "
                                 f"Pointcloud baseline back-projects depth with them")
        found.setdefault(Intrinsics.from_camera_info(info), []).append(ep.name)
    if len(found) > 1:
        raise DepthDataError("the Pointcloud baseline needs one camera, but the episodes have "
                             f"{len(found)} different intrinsics: " + "; ".join(
                                 f"K={list(k.k)} in {names[0]} (+{len(names) - 1})" for k, names in found.items()))
    return next(iter(found))


@dataclass
class PointSet:
    """points (S, pool, 3) float16 metres (camera frame); proprio, actions (S, 7); episode (S,) into names."""

    points: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    episode: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode], cfg: PointcloudConfig, intrinsics: Intrinsics,
                      plane: Plane, seed: int = 0, progress: bool = True) -> "PointSet":
        """Every frame's workspace cloud, ``cfg.pool_points`` random points of it (seeded)."""
        from tqdm import tqdm

        require_depth(episodes, "Pointcloud")
        rays = intrinsics.rays()
        rng = np.random.default_rng(seed)
        pools, ep_idx = [], []
        for i, ep in enumerate(tqdm(episodes, desc="point clouds", unit="ep", disable=not progress)):
            for t in range(len(ep)):
                cloud = workspace_cloud(np.asarray(ep.depth[t]), rays, cfg, plane)
                pools.append(sample_points(cloud, cfg.pool_points, rng).astype(np.float16))
            ep_idx.append(np.full(len(ep), i))
        return cls(np.stack(pools), np.concatenate([e.proprio for e in episodes]),
                   np.concatenate([e.actions for e in episodes]), np.concatenate(ep_idx),
                   [e.name for e in episodes])

    def subset_episodes(self, ids: Sequence[int]) -> "PointSet":
        keep = np.isin(self.episode, np.asarray(ids))
        return replace(self, points=self.points[keep], proprio=self.proprio[keep],
                       actions=self.actions[keep], episode=self.episode[keep])


class PointcloudPolicy(nn.Module):
    """PointNet encoder + MLP head on (points, proprio). Trainer interface as KeypointPolicy."""

    input_keys = ("points", "proprio")
    eval_chunk = 256
    learn_mask = False

    def __init__(self, cfg: PointcloudConfig, norm: Normalisation, image_size: tuple[int, int],
                 intrinsics: Intrinsics, plane: Plane = None) -> None:
        """intrinsics: the camera's; plane: the table (table_plane) or None."""
        super().__init__()
        if plane is not None and (len(plane) != 4 or not np.all(np.isfinite(plane))
                                  or abs(np.linalg.norm(plane[:3]) - 1) > 1e-3):
            raise ValueError(f"the table plane must be (nx, ny, nz, d) with a unit normal, got {plane!r}")
        self.cfg, self.norm, self.intrinsics = cfg, norm, intrinsics
        self.plane: Plane = None if plane is None else tuple(float(v) for v in plane)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if (intrinsics.width, intrinsics.height) != self.image_size:
            raise ValueError(f"intrinsics are for {intrinsics.width}x{intrinsics.height}, the images are "
                             f"{self.image_size[0]}x{self.image_size[1]}")
        layers: list[nn.Module] = []
        c_in = 3
        for w in cfg.widths:
            layers += [nn.Linear(c_in, w), nn.GELU()]
            c_in = w
        self.point_mlp = nn.Sequential(*layers)
        self.space = norm.space()
        self.head = nn.Sequential(nn.Linear(c_in + self.space.proprio_dim, cfg.hidden), nn.GELU(),
                                  nn.Linear(cfg.hidden, self.space.output_dim))
        self.codec = ActionCodec(norm)
        self.runner = ChunkRunner(self.space)
        self._centre = (0.0, 0.0, 0.5 * (cfg.near_m + cfg.far_m))
        self._scale = 0.5 * (cfg.far_m - cfg.near_m)
        self._rays: np.ndarray | None = None   # (H, W, 2), made on the first select_action

    def param_groups(self, lr: float, mask_lr: float, weight_decay: float) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": lr, "weight_decay": weight_decay, "name": "policy"}]

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, P, 3) metres -> (B, widths[-1]): per-point MLP, max over points."""
        centre = torch.tensor(self._centre, dtype=torch.float32, device=points.device)
        x = (points.to(torch.float32) - centre) / self._scale
        return self.point_mlp(x).amax(dim=1)

    def _out(self, points: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.encode(points), self.codec.proprio(proprio)], 1))

    def prepare(self, data: PointSet, device: str) -> dict[str, torch.Tensor]:
        """Training tensors in this policy's action space (see KeypointPolicy.prepare)."""
        target = self.space.targets(data.proprio, data.actions, data.episode)
        return {"points": torch.as_tensor(data.points, device=device),
                "proprio": torch.as_tensor(self.space.features(data.proprio), device=device),
                "action": torch.as_tensor(target, device=device)}

    def forward(self, batch: dict[str, torch.Tensor], alpha: float = 0.0) -> tuple[torch.Tensor, dict]:
        """batch["points"] (B, pool, 3): a fresh random ``num_points`` of the pools (torch's RNG, seeded by
        fit). One draw of pool positions serves the whole batch: each pool is already a random draw of its
        own cloud, and a per-sample draw (argsort of B x pool) cost more than the network's step here."""
        pts = batch["points"]
        n = self.cfg.num_points
        if pts.shape[1] > n:
            pts = pts[:, torch.randperm(pts.shape[1], device=pts.device)[:n]]
        target = self.codec.encode(batch["action"])
        mse = ((self._out(pts, batch["proprio"]) - target) ** 2).mean()
        return mse, {"loss": mse.detach(), "mse": mse.detach()}

    @torch.no_grad()
    def predict(self, points: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """points (B, P, 3) metres (the first ``num_points`` are used), proprio (B, P) features
        -> targets (B, K*A)."""
        return self.codec.decode(self._out(points[:, :self.cfg.num_points], proprio))

    def reset(self) -> None:
        """Forget the steps left of the current action chunk."""
        self.runner.reset()

    def cloud(self, depth_mm: np.ndarray) -> np.ndarray:
        """The deployed input: (H, W) uint16 mm -> (num_points, 3) float32, deterministic."""
        d = np.asarray(depth_mm)
        w, h = self.image_size
        if d.shape != (h, w) or d.dtype != np.uint16:
            raise PolicyInputError(f"depth must be ({h}, {w}) uint16 mm, got {d.shape} {d.dtype}")
        if self._rays is None:
            self._rays = self.intrinsics.rays()
        return sample_points(workspace_cloud(d, self._rays, self.cfg, self.plane), self.cfg.num_points,
                             np.random.default_rng(DEPLOY_SEED))

    def select_action(self, depth_mm: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        """depth_mm (H, W) uint16 millimetres (0 = no reading), proprio (7,) -> action (7,) float32."""
        pr = np.asarray(proprio, np.float32).reshape(-1)
        if pr.shape != (7,) or not np.all(np.isfinite(pr)):
            raise PolicyInputError(f"proprio must be 7 finite values, got {pr.tolist()}")
        pts = self.cloud(depth_mm)

        def predict() -> np.ndarray:
            self.eval()
            return self.predict(torch.from_numpy(pts)[None],
                                torch.from_numpy(self.space.features(pr[None])))[0].numpy()

        return self.runner.step(pr, predict)


def train_pointcloud(episodes: Sequence[Episode], train_ids: Sequence[int], val_ids: Sequence[int],
                     train_cfg: TrainConfig, cfg: PointcloudConfig | None = None, progress: bool = True,
                     data: PointSet | None = None, action_mode: str = "delta",
                     chunk: int = 1) -> tuple[PointcloudPolicy, Any]:
    """Train the point-cloud baseline on the given episode split; returns (policy, FitResult)."""
    from .train import fit

    cfg = cfg or PointcloudConfig()
    require_depth(episodes, "Pointcloud")
    intrinsics = episode_intrinsics(episodes)
    plane = table_plane([episodes[i] for i in train_ids], cfg, intrinsics.rays(), seed=train_cfg.seed)
    if data is None:
        data = PointSet.from_episodes(episodes, cfg, intrinsics, plane, seed=train_cfg.seed, progress=progress)
    train, val = data.subset_episodes(train_ids), (data.subset_episodes(val_ids) if len(val_ids) else None)
    norm = Normalisation.from_data(train.proprio, train.actions, action_mode, chunk, train.episode)
    pol = PointcloudPolicy(cfg, norm, episodes[0].image_size, intrinsics, plane)
    res = fit(pol, train, val, train_cfg, desc="pointcloud", progress=progress)
    return pol, res


def save_pointcloud_policy(model_dir: str | Path, policy: PointcloudPolicy, template_image: np.ndarray,
                           extra: dict | None = None) -> Path:
    """Folder like the keypoint artifact, kind "atk-pointcloud-policy"; model.json holds the intrinsics."""
    from .artifact import save_baseline_policy

    return save_baseline_policy(
        model_dir, policy, POINTCLOUD_KIND, template_image, extra=extra,
        model={**policy.cfg.to_dict(), "intrinsics": policy.intrinsics.to_dict(),
               "table_plane": None if policy.plane is None else list(policy.plane)},
        observation={"depth": {"shape": ["H", "W"], "encoding": "16UC1", "unit": "mm, 0 = no reading",
                               "registered_to": "camera/color/image_raw",
                               "back_projection": "model.intrinsics; kept: z in [near_m, far_m], more "
                                                  "than table_margin_m above model.table_plane"},
                     "proprio": {"shape": [7]}})


def load_pointcloud_policy(model_dir: str | Path) -> PointcloudPolicy:
    """Load and validate a point-cloud baseline folder."""
    from .artifact import load_baseline_policy

    def build(doc: dict) -> PointcloudPolicy:
        m = dict(doc["model"])
        intr = Intrinsics.from_dict(m.pop("intrinsics"))
        plane = m.pop("table_plane")
        cfg = PointcloudConfig(**{k: (tuple(v) if k == "widths" else v) for k, v in m.items()})
        return PointcloudPolicy(cfg, Normalisation.from_dict(doc["normalisation"]), tuple(doc["image_size"]),
                                intr, None if plane is None else tuple(plane))

    return load_baseline_policy(model_dir, POINTCLOUD_KIND, build)
