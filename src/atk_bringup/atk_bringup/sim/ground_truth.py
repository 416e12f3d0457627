"""Ground truth for image keypoints in the simulation (ROS-free, privileged).

A point picked on a frame (a candidate on the canonical frame, a keypoint
on a live frame) is *anchored* to what it lies on: the body the camera ray
through that pixel hits first and the hit point in that body's frame
(:class:`Anchors`). Static bodies (table, walls, plate) never move, so
their anchors are static world points; free objects and the robot's links
carry theirs along. For any later frame, :meth:`SceneGroundTruth.observe`
gives each anchor's true pixel position and its true visibility
(:class:`Visibility`): behind the camera, outside the image, or hidden by
another surface (the robot, the gripper, another object, the object
itself turned away), by a depth test with a tolerance.

Two ways to read "what the camera sees at a pixel", which agree (tested):

* **raycast** (default): ``mujoco.mj_multiRay`` from the camera centre
  through the exact sub-pixel position, over the geom groups the renderer
  draws. Needs no renderer, costs microseconds a point, so the oracle h_C
  and the tracking benchmark use it.
* **rendered**: the frame's rendered depth (metres) and segmentation
  (body ids), looked up at the nearest pixel centre, as a depth camera
  would report them (:meth:`anchor_rendered`, ``observe(depth_m=...)``).

Recorded episodes carry their ground truth in a small sidecar written next
to each bag (:class:`EpisodeRecorder`, :data:`SIDECAR`): task, scene seed,
perturbations, camera size, and per frame the physical state (qpos, mocap
poses) and a SHA-1 of the RGB frame. :class:`SimGroundTruthSource`
rebuilds any recorded frame from it (or reads the live simulator), which is
what the ``oracle`` h_C backend of ``atk_perception`` calls (injected
through the ``atk_perception.ground_truth`` entry point, so perception
never imports this package).

Pixel convention: that of ``SimEnv.intrinsics`` (OpenCV, pixel centres at
integer coordinates).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

#: File name of the ground-truth sidecar inside a recorded episode's bag folder.
SIDECAR = "ground_truth.npz"
SIDECAR_VERSION = 1
#: Distance assigned to a ray that hits nothing (it leaves the scene): a far static point.
MISS_DISTANCE_M = 50.0


class GroundTruthError(ValueError):
    """Ground truth cannot be given (unknown frame, mismatched scene, bad input)."""


class Visibility(IntEnum):
    VISIBLE = 0
    BEHIND = 1      # behind the camera (or closer than its near plane)
    OUTSIDE = 2     # projects outside the image
    OCCLUDED = 3    # another surface is closer along the ray


@dataclass(frozen=True)
class GroundTruthConfig:
    """Tolerances of the visibility test (validated)."""

    #: A point is hidden when the scene surface along its ray is closer than
    #: the point by more than ``abs_tolerance_m + rel_tolerance * distance``.
    #: 5 mm + 0.5 %: well above the rendered depth's 1 mm quantisation and a
    #: half-pixel's depth change on the slanted table, well below the ~2 cm
    #: between a finger pad and the nigiri it covers.
    abs_tolerance_m: float = 0.005
    rel_tolerance: float = 0.005
    #: Points closer than this along the optical axis count as behind the camera.
    near_m: float = 0.02
    #: Geom groups the renderer draws (mujoco.MjvOption's default: 0, 1, 2).
    geom_groups: tuple[int, ...] = (1, 1, 1, 0, 0, 0)

    def __post_init__(self) -> None:
        for name in ("abs_tolerance_m", "rel_tolerance", "near_m"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                raise ValueError(f"GroundTruthConfig.{name} must be a finite number >= 0, got {v!r}")
        if len(self.geom_groups) != 6 or any(g not in (0, 1) for g in self.geom_groups):
            raise ValueError(f"GroundTruthConfig.geom_groups must be six 0/1 flags, got {self.geom_groups!r}")


@dataclass(frozen=True)
class Anchors:
    """Points attached to bodies: body (N,) int body ids; local (N, 3) metres in that body's frame."""

    body: np.ndarray
    local: np.ndarray

    def __len__(self) -> int:
        return int(self.body.shape[0])


@dataclass(frozen=True)
class GroundTruthView:
    """The truth about N anchors in one frame.

    points: (N, 2) float64 pixels (meaningless where status is BEHIND);
    depth: (N,) float64 metres along the optical axis; status: (N,) int8
    :class:`Visibility`; occluder: (N,) int body id of the hiding surface
    (-1 unless OCCLUDED).
    """

    points: np.ndarray
    depth: np.ndarray
    status: np.ndarray
    occluder: np.ndarray

    @property
    def visible(self) -> np.ndarray:
        """(N,) bool."""
        return self.status == Visibility.VISIBLE


def frame_digest(image: np.ndarray) -> str:
    """SHA-1 of an (H, W, 3) uint8 frame's bytes and shape: the key of a recorded frame."""
    img = np.ascontiguousarray(image)
    h = hashlib.sha1(str(img.shape).encode())
    h.update(img.tobytes())
    return h.hexdigest()


class SceneGroundTruth:
    """Anchoring and projection against one MuJoCo scene state (``model``, ``data``).

    ``camera`` is the camera id, ``width`` x ``height`` the image; the
    intrinsics follow ``SimEnv.intrinsics``. ``data`` is read as it is at
    each call (call ``mj_forward`` after changing the state).
    """

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, camera: int, width: int, height: int,
                 config: GroundTruthConfig | None = None) -> None:
        self.model, self.data, self.camera = model, data, int(camera)
        self.width, self.height = int(width), int(height)
        self.config = config or GroundTruthConfig()
        fovy = float(model.cam_fovy[self.camera])
        f = 0.5 * self.height / np.tan(np.deg2rad(fovy) / 2)
        self.K = np.array([[f, 0.0, (self.width - 1) / 2], [0.0, f, (self.height - 1) / 2], [0.0, 0.0, 1.0]])
        self._groups = np.asarray(self.config.geom_groups, np.uint8)

    @classmethod
    def from_env(cls, env, config: GroundTruthConfig | None = None) -> "SceneGroundTruth":
        """Ground truth of a live ``SimEnv`` (reads its state at each call)."""
        c = env.config
        return cls(env.model, env.data, env.state.index.camera, c.width, c.height, config)

    # -- camera ---------------------------------------------------------------
    def camera_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(R (3, 3), t (3,)): world <- camera optical frame (x right, y down, z forward)."""
        r = self.data.cam_xmat[self.camera].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
        return r, self.data.cam_xpos[self.camera].copy()

    def project(self, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """world (N, 3) -> (pixels (N, 2), depth along the optical axis (N,))."""
        r, t = self.camera_pose()
        cam = (np.asarray(world, np.float64) - t) @ r
        z = cam[:, 2]
        safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
        uv = cam[:, :2] / safe[:, None] * self.K[0, 0] + self.K[:2, 2]
        return uv, z

    def _rays(self, points: np.ndarray) -> np.ndarray:
        """Unit world directions (N, 3) of the camera rays through pixels (N, 2)."""
        r, _ = self.camera_pose()
        d = np.column_stack([(points - self.K[:2, 2]) / self.K[0, 0], np.ones(len(points))])
        d = d @ r.T
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def raycast(self, directions: np.ndarray, cutoff: float = MISS_DISTANCE_M) -> tuple[np.ndarray, np.ndarray]:
        """First surface along unit ``directions`` (N, 3) from the camera centre:
        (distance (N,) metres, -1 for none; body id (N,), -1 for none)."""
        n = len(directions)
        dist = np.zeros(n, np.float64)
        geom = np.zeros(n, np.int32)
        if n:
            _, origin = self.camera_pose()
            mujoco.mj_multiRay(self.model, self.data, origin, np.ascontiguousarray(directions, np.float64).reshape(-1),
                               self._groups, 1, -1, geom, dist, None, n, cutoff)
        body = np.where(geom >= 0, self.model.geom_bodyid[np.clip(geom, 0, None)], -1)
        return dist, body.astype(np.int64)

    # -- anchoring --------------------------------------------------------------
    def _check_points(self, points: Any) -> np.ndarray:
        p = np.asarray(points, np.float64)
        if p.ndim != 2 or p.shape[1] != 2 or not np.all(np.isfinite(p)):
            raise GroundTruthError(f"points must be a finite (N, 2) array of pixels, got shape {p.shape}")
        return p

    def _attach(self, body: np.ndarray, world: np.ndarray) -> Anchors:
        body = np.where(body < 0, 0, body)  # nothing hit: a static world point far along the ray
        pos = self.data.xpos[body]
        rot = self.data.xmat[body].reshape(-1, 3, 3)
        local = np.einsum("nji,nj->ni", rot, world - pos)
        return Anchors(body.astype(np.int64), local)

    def anchor(self, points: Any) -> Anchors:
        """Anchor pixels (N, 2) of the current frame by casting their camera rays."""
        p = self._check_points(points)
        dirs = self._rays(p)
        dist, body = self.raycast(dirs)
        dist = np.where(dist < 0, MISS_DISTANCE_M, dist)
        _, origin = self.camera_pose()
        return self._attach(body, origin + dirs * dist[:, None])

    def anchor_rendered(self, points: Any, depth_m: np.ndarray, segmentation: np.ndarray) -> Anchors:
        """Anchor pixels (N, 2) from the frame's rendered depth (H, W) metres
        (0 = no reading) and body segmentation (H, W) (-1 = nothing), read at the nearest pixel."""
        p = self._check_points(points)
        depth_m, segmentation = np.asarray(depth_m, np.float64), np.asarray(segmentation)
        if depth_m.shape != (self.height, self.width) or segmentation.shape != depth_m.shape:
            raise GroundTruthError(f"depth {depth_m.shape} and segmentation {segmentation.shape} must be "
                                   f"{(self.height, self.width)}")
        u = np.clip(np.rint(p[:, 0]).astype(int), 0, self.width - 1)
        v = np.clip(np.rint(p[:, 1]).astype(int), 0, self.height - 1)
        z = depth_m[v, u]
        body = segmentation[v, u].astype(np.int64)
        miss = (z <= 0) | (body < 0)
        r, t = self.camera_pose()
        cam = np.column_stack([(p - self.K[:2, 2]) / self.K[0, 0], np.ones(len(p))])
        far = MISS_DISTANCE_M / np.linalg.norm(cam, axis=1)
        cam = cam * np.where(miss, far, z)[:, None]
        return self._attach(np.where(miss, -1, body), cam @ r.T + t)

    # -- later frames -----------------------------------------------------------
    def world_points(self, anchors: Anchors) -> np.ndarray:
        """(N, 3) world positions of ``anchors`` in the current state."""
        b = anchors.body
        rot = self.data.xmat[b].reshape(-1, 3, 3)
        return self.data.xpos[b] + np.einsum("nij,nj->ni", rot, anchors.local)

    def observe(self, anchors: Anchors, depth_m: np.ndarray | None = None,
                segmentation: np.ndarray | None = None) -> GroundTruthView:
        """True pixel positions and visibility of ``anchors`` in the current state.

        Without ``depth_m`` the scene surface along each point's ray is found by
        raycasting; with it (rendered depth (H, W) metres, 0 = no reading), by
        the depth at the point's nearest pixel (``segmentation`` then names the
        occluder).
        """
        world = self.world_points(anchors)
        uv, z = self.project(world)
        n = len(anchors)
        status = np.full(n, int(Visibility.VISIBLE), np.int8)
        occluder = np.full(n, -1, np.int64)
        behind = z <= self.config.near_m
        outside = ~behind & ((uv[:, 0] < -0.5) | (uv[:, 0] > self.width - 0.5)
                             | (uv[:, 1] < -0.5) | (uv[:, 1] > self.height - 0.5))
        status[behind] = Visibility.BEHIND
        status[outside] = Visibility.OUTSIDE
        test = np.flatnonzero(~behind & ~outside)
        if len(test):
            _, origin = self.camera_pose()
            if depth_m is None:
                vec = world[test] - origin
                rng = np.linalg.norm(vec, axis=1)
                hit, body = self.raycast(vec / rng[:, None], cutoff=float(rng.max()) + 1.0)
                tol = self.config.abs_tolerance_m + self.config.rel_tolerance * rng
                hidden = (hit >= 0) & (hit < rng - tol)
            else:
                d = np.asarray(depth_m, np.float64)
                if d.shape != (self.height, self.width):
                    raise GroundTruthError(f"depth must be {(self.height, self.width)}, got {d.shape}")
                u = np.clip(np.rint(uv[test, 0]).astype(int), 0, self.width - 1)
                v = np.clip(np.rint(uv[test, 1]).astype(int), 0, self.height - 1)
                zr = d[v, u]
                tol = self.config.abs_tolerance_m + self.config.rel_tolerance * z[test]
                hidden = (zr > 0) & (zr < z[test] - tol)
                body = (np.asarray(segmentation)[v, u].astype(np.int64) if segmentation is not None
                        else np.full(len(test), -1, np.int64))
            status[test[hidden]] = Visibility.OCCLUDED
            occluder[test[hidden]] = body[hidden]
        return GroundTruthView(uv, z, status, occluder)


# --------------------------------------------------------------------------- recorded episodes

class EpisodeRecorder:
    """Collects the ground-truth sidecar of one recorded episode: call
    :meth:`add` with each written observation while the env is in the state
    it shows, then :meth:`save` into the bag folder."""

    def __init__(self, env) -> None:
        self.env = env
        self.task, self.seed, self.perturbations = env.task, int(env.seed), list(env.perturbations)
        self._qpos: list[np.ndarray] = []
        self._mocap_pos: list[np.ndarray] = []
        self._mocap_quat: list[np.ndarray] = []
        self._digest: list[str] = []
        self._time: list[float] = []

    def add(self, rgb: np.ndarray) -> None:
        d = self.env.data
        self._qpos.append(d.qpos.copy())
        self._mocap_pos.append(d.mocap_pos.copy())
        self._mocap_quat.append(d.mocap_quat.copy())
        self._digest.append(frame_digest(rgb))
        self._time.append(float(d.time))

    def save(self, folder: str | Path) -> Path:
        c = self.env.config
        path = Path(folder) / SIDECAR
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp, version=np.asarray(SIDECAR_VERSION),
            info=np.asarray(json.dumps({"task": self.task, "seed": self.seed, "perturbations": self.perturbations,
                                        "width": int(c.width), "height": int(c.height),
                                        "nq": int(self.env.model.nq), "nbody": int(self.env.model.nbody)})),
            qpos=np.asarray(self._qpos), mocap_pos=np.asarray(self._mocap_pos),
            mocap_quat=np.asarray(self._mocap_quat), digest=np.asarray(self._digest), time=np.asarray(self._time))
        tmp.replace(path)
        return path


@dataclass
class RecordedEpisode:
    """A loaded sidecar: info (task, seed, perturbations, width, height), per-frame arrays."""

    path: Path
    info: dict
    qpos: np.ndarray
    mocap_pos: np.ndarray
    mocap_quat: np.ndarray
    digest: np.ndarray

    @classmethod
    def load(cls, path: str | Path) -> "RecordedEpisode":
        path = Path(path)
        try:
            with np.load(path) as z:
                if int(z["version"]) != SIDECAR_VERSION:
                    raise GroundTruthError(f"{path}: sidecar version {int(z['version'])}, expected {SIDECAR_VERSION}")
                return cls(path, json.loads(str(z["info"])), z["qpos"], z["mocap_pos"], z["mocap_quat"],
                           z["digest"].astype(str))
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, GroundTruthError):
                raise
            raise GroundTruthError(f"{path}: not a readable ground-truth sidecar ({exc})") from exc


class SimGroundTruthSource:
    """Ground truth for frames of recorded episodes (sidecars under ``folders``,
    one level deep: ``<folder>/<bag>/ground_truth.npz``) and, when ``live_env``
    is given, for that SimEnv's current frame (``env.last_observation``).

    It implements ``atk_perception.oracle_backend.GroundTruthSource``:
    ``anchor(image, points)`` and ``locate(anchors, image)``, and
    ``bind_episode(meta)`` (adds the folder of ``meta["bag"]``).
    A frame is recognised by the SHA-1 of its pixels; one that is neither
    recorded nor the live frame is refused (GroundTruthError).
    """

    def __init__(self, folders=(), live_env=None, config: GroundTruthConfig | None = None) -> None:
        self.config = config or GroundTruthConfig()
        self.live_env = live_env
        self._folders: list[Path] = []
        self._index: dict[str, tuple[Path, int]] = {}
        self._episodes: dict[Path, RecordedEpisode] = {}
        self._replay = None            # SimEnv without rendering, for recorded scenes
        self._replay_key: tuple | None = None
        for f in folders:
            self.add_folder(f)

    def add_folder(self, folder: str | Path) -> None:
        folder = Path(folder)
        if folder in self._folders:
            return
        self._folders.append(folder)
        for sidecar in sorted(folder.glob(f"*/{SIDECAR}")):
            self._index_episode(sidecar)

    def _index_episode(self, sidecar: Path, rec: "RecordedEpisode | None" = None) -> None:
        rec = rec or RecordedEpisode.load(sidecar)
        self._episodes[sidecar] = rec
        for t, key in enumerate(rec.digest):
            self._index.setdefault(str(key), (sidecar, t))

    def add_reset_frame(self, task: str, seed: int, perturbations, width: int, height: int) -> str:
        """Make the first frame of ``env.reset(task, seed, perturbations)`` a known
        frame (rendered once here): the canonical frame of bags recorded before
        sidecars existed is such a frame (demo_000: seed 0 under RP). Returns its digest."""
        from .env import SimConfig, SimEnv

        perturbations = tuple(perturbations)
        with SimEnv(SimConfig(width=int(width), height=int(height), render_depth=False)) as env:
            obs = env.reset(task=task, seed=int(seed), perturbations=perturbations)
            d, m = env.data, env.model
            info = {"task": task, "seed": int(seed), "perturbations": list(perturbations), "width": int(width),
                    "height": int(height), "nq": int(m.nq), "nbody": int(m.nbody)}
            key = frame_digest(obs.rgb)
            rec = RecordedEpisode(Path(f"<reset {task} seed {seed} {'+'.join(perturbations)}>"), info,
                                  d.qpos[None].copy(), d.mocap_pos[None].copy(), d.mocap_quat[None].copy(),
                                  np.asarray([key]))
        self._index_episode(rec.path, rec)
        return key

    def bind_episode(self, meta: dict) -> None:
        """Propagation hook: the episode's bag folder's siblings become known frames."""
        bag = meta.get("bag") if isinstance(meta, dict) else None
        if not bag:
            raise GroundTruthError("the oracle h_C needs episodes read from bags (meta['bag'] is missing)")
        bag = Path(bag)
        if not (bag / SIDECAR).is_file():
            raise GroundTruthError(f"{bag} has no {SIDECAR}: the oracle h_C needs simulated episodes recorded "
                                   "with their ground truth (atk-demo writes it; re-record older bags)")
        self.add_folder(bag.parent)
        if bag / SIDECAR not in self._episodes:
            self._index_episode(bag / SIDECAR)

    # -- scene for a frame ------------------------------------------------------
    def _is_live(self, image: np.ndarray) -> bool:
        env = self.live_env
        if env is None:
            return False
        last = getattr(env, "last_observation", None)
        return last is not None and last.rgb.shape == image.shape and np.array_equal(last.rgb, image)

    def scene(self, image: np.ndarray) -> SceneGroundTruth:
        """The scene state that ``image`` shows, as a SceneGroundTruth."""
        img = np.asarray(image)
        if self._is_live(img):
            return SceneGroundTruth.from_env(self.live_env, self.config)
        hit = self._index.get(frame_digest(img))
        if hit is None:
            raise GroundTruthError(
                f"oracle h_C: this {img.shape[1]}x{img.shape[0]} frame is neither the simulator's current frame "
                f"nor a recorded frame with ground truth (searched {len(self._episodes)} sidecars in "
                f"{[str(f) for f in self._folders]}); the oracle is simulation-only")
        sidecar, t = hit
        return self._replay_scene(self._episodes[sidecar], t)

    def _replay_scene(self, rec: RecordedEpisode, t: int) -> SceneGroundTruth:
        from .env import SimConfig, SimEnv

        info = rec.info
        if self._replay is None or (self._replay.config.width, self._replay.config.height) != (info["width"],
                                                                                               info["height"]):
            self._replay = SimEnv(SimConfig(width=info["width"], height=info["height"], render=False))
            self._replay_key = None
        env = self._replay
        key = (info["task"], info["seed"], tuple(info["perturbations"]))
        if self._replay_key != key:
            env.reset(task=info["task"], seed=info["seed"], perturbations=tuple(info["perturbations"]))
            self._replay_key = key
            if env.model.nq != info["nq"] or env.model.nbody != info["nbody"]:
                raise GroundTruthError(f"{rec.path}: recorded with another scene model (nq {info['nq']}, "
                                       f"nbody {info['nbody']}; now {env.model.nq}, {env.model.nbody})")
        m, d = env.model, env.data
        d.qpos[:] = rec.qpos[t]
        d.mocap_pos[:] = rec.mocap_pos[t]
        d.mocap_quat[:] = rec.mocap_quat[t]
        mujoco.mj_forward(m, d)
        return SceneGroundTruth.from_env(env, self.config)

    # -- the oracle's interface ---------------------------------------------------
    def anchor(self, image: np.ndarray, points: np.ndarray) -> Anchors:
        """Anchor pixels (N, 2) of the frame ``image``."""
        return self.scene(image).anchor(points)

    def view(self, anchors: Anchors, image: np.ndarray) -> GroundTruthView:
        return self.scene(image).observe(anchors)

    def locate(self, anchors: Anchors, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(points (N, 2) float64 pixels, visible (N,) bool) of ``anchors`` in the frame ``image``."""
        v = self.view(anchors, image)
        return v.points, v.visible


def make_source() -> SimGroundTruthSource:
    """Entry point ``atk_perception.ground_truth: sim``: a source that learns
    its recorded episodes through ``bind_episode`` (propagation from bags)."""
    return SimGroundTruthSource()
