"""Algorithm 1, "propagate & label": candidates from I_can through every episode.

ROS-free. For each episode: ``h_C.transfer`` maps the C candidates from the
canonical image onto the episode's first frame (one confidence per point),
then ``h_C.reset`` / ``h_C.update`` track them frame to frame. Output per
episode: :class:`TrackedEpisode` with tracks (T, C, 2) pixels, visible
(T, C) bool, confidence (T, C) float32, plus the episode's proprio/actions.

h_C is resolved by name through ``atk_perception.backends.make_correspondence``
("cpu": LK + SIFT re-anchoring; "cotracker" where installed; "oracle":
privileged, simulation-only ground truth from the bags' sidecars), or given
as a picklable zero-argument callable.

This is the slow step: a tqdm bar per episode, results cached as
``<cache_dir>/<key>.npz`` where the key is a sha256 of everything that
decides the result (template pixels, candidates, backend, threshold, the
episode's data and frames), and episodes run in ``workers`` processes when
asked. Points that h_C places outside the image are clamped to its border
and marked not visible; the count is kept in ``TrackedEpisode.meta`` and
shown in the CLI summary (never silent).

With ``camera_extrinsics`` (the camera pose in the robot base frame, a file
from ``atk-calibrate``) and the bags' camera intrinsics, h_C is wrapped in
:class:`atk_perception.robot_occlusion.RobotAwareTracker` and fed each
frame's joint state (the episode's proprio): the points the robot covers are
predicted, as the tracker node does when deployed, so the policy trains on
what it will see. An episode without intrinsics is tracked as before and
says so in ``TrackedEpisode.meta["robot_occlusion"]``.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .dataset import Episode
from .worker_process import exit_with_parent

TRACK_CACHE_VERSION = 1
#: Tracks this far outside the image (pixels) are an error, not rounding.
OUT_OF_IMAGE_TOLERANCE_PX = 1.0


class PropagationError(ValueError):
    """Bad tracks or inputs to propagation; names the episode, step and candidate."""


@dataclass
class TrackedEpisode:
    """An episode labelled with candidate tracks.

    tracks (T, C, 2) float32 pixels; visible (T, C) bool; confidence (T, C)
    float32 in [0, 1]; proprio, actions (T, 7) float32.
    """

    name: str
    tracks: np.ndarray
    visible: np.ndarray
    confidence: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    image_size: tuple[int, int]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.name
        self.tracks = np.asarray(self.tracks, dtype=np.float32)
        if self.tracks.ndim != 3 or self.tracks.shape[2] != 2 or self.tracks.shape[0] == 0:
            raise PropagationError(f"episode {n!r}: tracks must be (T, C, 2) with T >= 1, got {self.tracks.shape}")
        t_len, c = self.tracks.shape[:2]
        self.visible = np.asarray(self.visible, dtype=bool)
        self.confidence = np.asarray(self.confidence, dtype=np.float32)
        self.proprio = np.asarray(self.proprio, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        for fname, arr, shape in (("visible", self.visible, (t_len, c)), ("confidence", self.confidence, (t_len, c)),
                                  ("proprio", self.proprio, (t_len, 7)), ("actions", self.actions, (t_len, 7))):
            if arr.shape != shape:
                raise PropagationError(f"episode {n!r}: field {fname!r} must be {shape}, got {arr.shape}")
        bad = ~np.isfinite(self.tracks).all(axis=2)
        if bad.any():
            t, k = np.argwhere(bad)[0]
            raise PropagationError(f"episode {n!r}: {int(bad.sum())} NaN/inf track points "
                                   f"(first: step {t}, candidate {k})")
        w, h = self.image_size
        tol = OUT_OF_IMAGE_TOLERANCE_PX
        out = ((self.tracks[..., 0] < -tol) | (self.tracks[..., 0] > w + tol)
               | (self.tracks[..., 1] < -tol) | (self.tracks[..., 1] > h + tol))
        if out.any():
            t, k = np.argwhere(out)[0]
            raise PropagationError(
                f"episode {n!r}: {int(out.sum())} track points lie outside the {w}x{h} image "
                f"(first: step {t}, candidate {k} at {self.tracks[t, k].tolist()})")
        for fname, arr in (("proprio", self.proprio), ("actions", self.actions)):
            if not np.all(np.isfinite(arr)):
                raise PropagationError(f"episode {n!r}: field {fname!r} has non-finite values")

    def __len__(self) -> int:
        return int(self.tracks.shape[0])

    def save(self, path: str | Path) -> None:
        np.savez(path, tracks=self.tracks, visible=self.visible, confidence=self.confidence,
                 proprio=self.proprio, actions=self.actions, image_size=np.asarray(self.image_size),
                 name=np.asarray(self.name), clipped=np.asarray(int(self.meta.get("clipped_points", 0))),
                 version=np.asarray(TRACK_CACHE_VERSION))

    @classmethod
    def load(cls, path: str | Path) -> "TrackedEpisode":
        with np.load(path) as z:
            if int(z["version"]) != TRACK_CACHE_VERSION:
                raise PropagationError(f"{path}: track cache version {int(z['version'])}, "
                                       f"expected {TRACK_CACHE_VERSION}")
            return cls(name=str(z["name"]), tracks=z["tracks"], visible=z["visible"], confidence=z["confidence"],
                       proprio=z["proprio"], actions=z["actions"], image_size=tuple(int(v) for v in z["image_size"]),
                       meta={"clipped_points": int(z["clipped"])})


# --------------------------------------------------------------------------- h_C

HCFactory = Callable[[], Any]


def make_correspondence(backend: str | HCFactory) -> Any:
    """An h_C instance from a backend name (atk_perception.backends) or a zero-argument factory."""
    if callable(backend):
        return backend()
    from atk_perception.backends import make_correspondence as make

    try:
        return make(backend)
    except ValueError as exc:
        raise PropagationError(f"h_C backend: {exc}") from exc


def _backend_id(backend: str | HCFactory) -> str:
    if isinstance(backend, str):
        return backend
    return f"{getattr(backend, '__module__', '?')}.{getattr(backend, '__qualname__', repr(backend))}"


# --------------------------------------------------------------------------- one episode

def episode_intrinsics(episode: Episode) -> np.ndarray | None:
    """(3, 3) K from the episode's camera_info (bags), or None when it has none."""
    info = (episode.meta or {}).get("camera_info") or {}
    k = info.get("k")
    if k is None or len(k) != 9:
        return None
    k = np.asarray(k, np.float64).reshape(3, 3)
    return k if np.all(np.isfinite(k)) and k[0, 0] > 0 and k[1, 1] > 0 else None


def propagate_episode(episode: Episode, template_image: np.ndarray, candidates: np.ndarray,
                      hc: Any, min_confidence: float = 0.0, progress: bool = False,
                      base_t_camera: np.ndarray | None = None, robot_occlusion: bool = True,
                      template_depth: np.ndarray | None = None) -> TrackedEpisode:
    """Algorithm 1 for one episode with the h_C instance ``hc``.

    template_image (H, W, 3) uint8 RGB = I_can; candidates (C, 2) pixels on it;
    base_t_camera (4, 4): camera pose in the robot base frame, or None: with
    ``robot_occlusion``, robot-aware occlusion; with ``template_depth`` (H, W)
    metres of I_can, h_C's table search (objects on the table searched in 3D,
    atk_perception.table_search), as the tracker node does with the model's
    template depth and an extrinsics file. Both need the episode's camera_info.
    """
    from tqdm import tqdm

    w, h = episode.image_size
    if template_image.shape[:2] != (h, w):
        raise PropagationError(
            f"episode {episode.name!r}: frames are {w}x{h} but the canonical image is "
            f"{template_image.shape[1]}x{template_image.shape[0]}")
    t_len, c = len(episode), len(candidates)
    tracks = np.zeros((t_len, c, 2), np.float32)
    vis = np.zeros((t_len, c), bool)
    conf = np.zeros((t_len, c), np.float32)
    frame0 = episode.frames[0]
    bind = getattr(hc, "bind_episode", None)
    if bind is not None:
        # privileged backends (the simulation-only oracle) read the episode's
        # recorded ground truth, found through its metadata (the bag's folder)
        bind(episode.meta)
    robot_note = "off"
    table_note = "off"
    robot = None
    k = episode_intrinsics(episode) if base_t_camera is not None else None
    if base_t_camera is not None and template_depth is not None:
        if k is None:
            table_note = "off: the episode has no camera_info (intrinsics unknown)"
        elif getattr(hc, "set_template_geometry", None) is None:
            table_note = "off: this h_C has no table search"
        else:
            from atk_perception.table_search import TemplateGeometry

            used = hc.set_template_geometry(template_image, TemplateGeometry(
                np.asarray(template_depth, np.float32), k, np.asarray(base_t_camera, np.float64)))
            table_note = "on" if used else "off: disabled in the h_C's configuration"
    if base_t_camera is not None and robot_occlusion:
        if k is None:
            robot_note = "off: the episode has no camera_info (intrinsics unknown)"
        else:
            from atk_perception.robot_occlusion import CameraModel, RobotAwareTracker

            hc = robot = RobotAwareTracker(hc, CameraModel(k, np.asarray(base_t_camera, np.float64)))
            robot_note = "on"
            robot.set_robot_state(np.asarray(episode.proprio[0], np.float64))
    pts, cf = hc.transfer(template_image, candidates.astype(np.float32), frame0)
    pts, cf = np.asarray(pts, np.float32), np.asarray(cf, np.float32)
    tracks[0], conf[0], vis[0] = pts, cf, cf >= min_confidence
    clipped = 0

    def clamp(t: int) -> int:
        p = tracks[t]
        bad = ~np.isfinite(p).all(1)
        if bad.any():
            k = int(np.argmax(bad))
            raise PropagationError(f"episode {episode.name!r}: h_C returned NaN for candidate {k} at step {t}")
        out = (p[:, 0] < 0) | (p[:, 0] > w - 1) | (p[:, 1] < 0) | (p[:, 1] > h - 1)
        if out.any():
            p[:, 0] = np.clip(p[:, 0], 0, w - 1)
            p[:, 1] = np.clip(p[:, 1], 0, h - 1)
            vis[t, out] = False
        return int(out.sum())

    clipped += clamp(0)
    hc.reset(frame0, tracks[0])
    for t in tqdm(range(1, t_len), desc=f"track {episode.name}", unit="frame", leave=False,
                  disable=not progress, mininterval=0.5):
        if robot is not None:
            robot.set_robot_state(np.asarray(episode.proprio[t], np.float64))
        r = hc.update(episode.frames[t])
        tracks[t] = r.points
        conf[t] = r.confidence
        vis[t] = np.asarray(r.visible, bool) & (conf[t] >= min_confidence)
        clipped += clamp(t)
    return TrackedEpisode(episode.name, tracks, vis, conf, episode.proprio, episode.actions,
                          (w, h), meta={"clipped_points": clipped, "robot_occlusion": robot_note,
                                                                  "table_search": table_note})


# --------------------------------------------------------------------------- dataset

def _frames_digest(episode: Episode) -> str:
    fr = episode.frames
    fp = getattr(fr, "fingerprint", None)
    h = hashlib.sha256()
    if callable(fp):
        h.update(str(fp()).encode())
        return h.hexdigest()
    folder = getattr(fr, "folder", None)
    if folder is not None and hasattr(fr, "path"):
        # PngFrames: file names, sizes and modification times identify the content
        # without decoding every frame.
        for t in range(len(fr)):
            st = os.stat(fr.path(t))
            h.update(f"{fr.path(t)}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()
    for t in range(len(fr)):
        h.update(np.ascontiguousarray(fr[t]).tobytes())
    return h.hexdigest()


def cache_key(episode: Episode, template_image: np.ndarray, candidates: np.ndarray,
              backend: str | HCFactory, min_confidence: float,
              base_t_camera: np.ndarray | None = None, robot_occlusion: bool = True,
              template_depth: np.ndarray | None = None) -> str:
    """sha256 of every input that decides the tracks of ``episode``."""
    h = hashlib.sha256()
    h.update(f"v{TRACK_CACHE_VERSION}|{_backend_id(backend)}|{min_confidence!r}|{episode.name}|".encode())
    if base_t_camera is not None and robot_occlusion:
        from atk_perception.robot_occlusion import RobotOcclusionConfig

        h.update(b"robot-aware|" + np.ascontiguousarray(base_t_camera, np.float64).tobytes())
        h.update(repr(RobotOcclusionConfig()).encode())
    if base_t_camera is not None and template_depth is not None:
        from atk_perception.table_search import TableSearchParams

        h.update(b"table-search|" + np.ascontiguousarray(base_t_camera, np.float64).tobytes())
        h.update(np.ascontiguousarray(template_depth, np.float32).tobytes())
        h.update(repr(TableSearchParams()).encode())
    h.update(str(template_image.shape).encode())
    h.update(np.ascontiguousarray(template_image).tobytes())
    h.update(np.ascontiguousarray(candidates, dtype=np.float32).tobytes())
    for arr in (episode.stamps, episode.proprio, episode.actions):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(_frames_digest(episode).encode())
    return h.hexdigest()


def _worker(args: tuple) -> TrackedEpisode:
    episode, template_image, candidates, backend, min_conf, base_t_camera, robot_occlusion, template_depth = args
    return propagate_episode(episode, template_image, candidates, make_correspondence(backend), min_conf,
                             base_t_camera=base_t_camera, robot_occlusion=robot_occlusion,
                             template_depth=template_depth)


def propagate_dataset(episodes: Sequence[Episode], template_image: np.ndarray, candidates: np.ndarray, *,
                      backend: str | HCFactory = "cpu", min_confidence: float = 0.0, workers: int = 1,
                      cache_dir: str | Path | None = None, progress: bool = True,
                      camera_extrinsics: str | Path | None = None, robot_occlusion: bool = True,
                      template_depth: np.ndarray | None = None) -> list[TrackedEpisode]:
    """Algorithm 1 over a dataset; returns TrackedEpisodes in the order of ``episodes``.

    workers > 1 runs episodes in that many processes (spawned, so h_C
    backends need no fork-safety); episodes and ``backend`` must then be
    picklable. Cached episodes are loaded instead of recomputed.
    camera_extrinsics: atk-calibrate's file (camera pose in the robot base
    frame) for robot-aware occlusion (``robot_occlusion``) and, with the
    canonical frame's ``template_depth`` (H, W) metres, h_C's table search;
    None: both off.
    """
    from tqdm import tqdm

    base_t_camera = None
    if camera_extrinsics:
        from atk_perception.robot_mask import RobotMaskError, load_extrinsics

        try:
            base_t_camera = load_extrinsics(camera_extrinsics)
        except RobotMaskError as exc:
            raise PropagationError(f"camera extrinsics: {exc}") from exc

    candidates = np.asarray(candidates, np.float32)
    if candidates.ndim != 2 or candidates.shape[1] != 2 or len(candidates) == 0:
        raise PropagationError(f"candidates must be (C, 2) with C >= 1, got {candidates.shape}")
    th, tw = template_image.shape[:2]
    if (candidates[:, 0] < 0).any() or (candidates[:, 0] > tw - 1).any() or (candidates[:, 1] < 0).any() \
            or (candidates[:, 1] > th - 1).any():
        raise PropagationError(f"some candidates lie outside the {tw}x{th} canonical image")
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    results: list[TrackedEpisode | None] = [None] * len(episodes)
    todo: list[tuple[int, str | None]] = []
    for i, ep in enumerate(episodes):
        key = (cache_key(ep, template_image, candidates, backend, min_confidence, base_t_camera, robot_occlusion,
                         template_depth) if cache else None)
        if key and (cache / f"{key}.npz").is_file():
            results[i] = TrackedEpisode.load(cache / f"{key}.npz")
        else:
            todo.append((i, key))
    bar = tqdm(total=len(episodes), initial=len(episodes) - len(todo), desc="propagating", unit="ep",
               disable=not progress)

    def done(i: int, key: str | None, te: TrackedEpisode) -> None:
        results[i] = te
        if key:
            tmp = cache / f"{key}.tmp.npz"
            te.save(tmp)
            os.replace(tmp, cache / f"{key}.npz")  # atomic: a killed run leaves no half file
        bar.update(1)

    if workers <= 1 or len(todo) <= 1:
        for i, key in todo:
            done(i, key, propagate_episode(episodes[i], template_image, candidates,
                                           make_correspondence(backend), min_confidence, progress=progress,
                                           base_t_camera=base_t_camera, robot_occlusion=robot_occlusion,
                                           template_depth=template_depth))
    else:
        # workers end with this process (a killed run must not leave them propagating)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            futs = {pool.submit(_worker, (episodes[i], template_image, candidates, backend, min_confidence,
                                          base_t_camera, robot_occlusion, template_depth)):
                    (i, key) for i, key in todo}
            from concurrent.futures import as_completed

            for f in as_completed(futs):
                i, key = futs[f]
                done(i, key, f.result())
    bar.close()
    return [r for r in results if r is not None]
