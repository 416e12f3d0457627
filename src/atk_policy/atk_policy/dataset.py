"""Demonstration episodes: frames, proprioception and expert actions.

ROS-free. An :class:`Episode` is one demonstration of ``T`` steps:

* ``frames``: a :class:`FrameSource`, ``T`` RGB images ``(H, W, 3)`` uint8,
  loaded lazily (only propagation and the RGB baseline look at pixels);
* ``stamps``: ``(T,)`` float64 seconds (image stamps), strictly increasing;
* ``proprio``: ``(T, 7)`` float32 = 6 measured UR joint positions (rad, in
  the order of docs/interfaces.md) + gripper (0 open .. 1 closed);
* ``actions``: ``(T, 7)`` float32 = the expert action at step t: 6 target
  joint positions (rad) for the next control step + gripper command (0..1).
* ``depth`` (optional): a :class:`FrameSource` of ``T`` depth images
  ``(H, W)`` uint16 millimetres registered to ``frames`` (0 = no reading),
  for the depth baselines; bags with a depth topic give it.
  In simulation these are the expert's commanded targets; from kinesthetic
  demonstrations the bag reader uses the measured joints a fixed horizon
  ahead (see docs/training.md).

Frame sources here: :class:`ArrayFrames` and :class:`ArrayDepth` (in
memory) and :class:`PngFrames` (one PNG per frame in a folder, decoded on
access; 16-bit PNGs for depth), used by the compact on-disk cache written by
:func:`save_episode_cache` and read by :func:`load_episode_cache`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

PROPRIO_DIM = 7
ACTION_DIM = 7
#: Gripper values may overshoot [0, 1] a little (sensor noise, rounding);
#: beyond this margin the data is in another unit and must be refused.
GRIPPER_TOLERANCE = 0.05
CACHE_FORMAT_VERSION = 1
CACHE_INDEX = "episodes.json"


class DatasetError(ValueError):
    """Bad episode data; the message names the episode and the field."""


@runtime_checkable
class FrameSource(Protocol):
    """``T`` lazily loaded RGB frames of one size.

    ``source[t]`` is ``(H, W, 3)`` uint8 RGB; ``image_size`` is ``(W, H)``.
    Implementations should be picklable (propagation may run episodes in
    worker processes), i.e. hold paths rather than open file handles.
    """

    image_size: tuple[int, int]

    def __len__(self) -> int: ...

    def __getitem__(self, t: int) -> np.ndarray: ...


class ArrayFrames:
    """Frames held in memory: ``frames`` (T, H, W, 3) uint8 RGB."""

    def __init__(self, frames: np.ndarray | Sequence[np.ndarray]) -> None:
        arr = np.asarray(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise DatasetError(f"ArrayFrames: frames must be (T, H, W, 3), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise DatasetError(f"ArrayFrames: frames must be uint8 RGB, got dtype {arr.dtype}")
        self._frames = arr
        self.image_size = (int(arr.shape[2]), int(arr.shape[1]))

    def __len__(self) -> int:
        return int(self._frames.shape[0])

    def __getitem__(self, t: int) -> np.ndarray:
        return self._frames[_check_index(t, len(self))]


class ArrayDepth:
    """Depth images held in memory: ``depth_mm`` (T, H, W) uint16 millimetres, 0 = no reading."""

    def __init__(self, depth_mm: np.ndarray | Sequence[np.ndarray]) -> None:
        arr = np.asarray(depth_mm)
        if arr.ndim != 3 or arr.dtype != np.uint16:
            raise DatasetError(f"ArrayDepth: depth must be (T, H, W) uint16 mm, got {arr.shape} {arr.dtype}")
        self._depth = arr
        self.image_size = (int(arr.shape[2]), int(arr.shape[1]))

    def __len__(self) -> int:
        return int(self._depth.shape[0])

    def __getitem__(self, t: int) -> np.ndarray:
        return self._depth[_check_index(t, len(self))]


class PngFrames:
    """Frames stored as ``<folder>/<index:06d>.png``, decoded on access.

    PNG is lossless, so tracks computed from the cache equal those computed
    from the original frames. ``depth=True``: 16-bit PNGs, (H, W) uint16 mm.
    """

    def __init__(self, folder: str | Path, num_frames: int, image_size: tuple[int, int],
                 depth: bool = False) -> None:
        self.folder = Path(folder)
        self.num_frames = int(num_frames)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.depth = bool(depth)

    def path(self, t: int) -> Path:
        return self.folder / f"{t:06d}.png"

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, t: int) -> np.ndarray:
        import cv2  # local: keeps `import atk_policy.dataset` light

        t = _check_index(t, len(self))
        p = self.path(t)
        if self.depth:
            d = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            w, h = self.image_size
            if d is None or d.dtype != np.uint16 or d.shape != (h, w):
                raise DatasetError(f"cached depth {p} is missing, unreadable or not a {w}x{h} 16-bit image")
            return d
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"cached frame {p} is missing or unreadable")
        w, h = self.image_size
        if bgr.shape[:2] != (h, w):
            raise DatasetError(
                f"cached frame {p} is {bgr.shape[1]}x{bgr.shape[0]}, expected {w}x{h}")
        return np.ascontiguousarray(bgr[:, :, ::-1])


def _check_index(t: int, n: int) -> int:
    t = int(t)
    if t < 0:
        t += n
    if not 0 <= t < n:
        raise IndexError(f"frame index {t} out of range for {n} frames")
    return t


def _as_matrix(name: str, fieldname: str, value: object, cols: int, dtype: type) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.shape[1] != cols:
        raise DatasetError(
            f"episode {name!r}: field {fieldname!r} must have shape (T, {cols}), got {arr.shape}"
            + (" (mismatched action/proprioception dimension)" if arr.ndim == 2 else ""))
    arr = arr.astype(dtype, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise DatasetError(
            f"episode {name!r}: field {fieldname!r} has {int(bad.sum())} non-finite values "
            f"(first at step {t}, column {j})")
    return arr


@dataclass
class Episode:
    """One demonstration; see the module docstring for units and shapes.

    frames: FrameSource of T images; stamps (T,) float64 s; proprio (T, 7)
    float32; actions (T, 7) float32; success: the operator's label if known.
    """

    name: str
    frames: FrameSource
    stamps: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    success: bool | None = None
    meta: dict = field(default_factory=dict)
    #: Optional depth registered to ``frames``: T images (H, W) uint16 mm (see the module docstring).
    depth: FrameSource | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DatasetError(f"episode name must be a non-empty string, got {self.name!r}")
        n = self.name
        if not isinstance(self.frames, FrameSource):
            raise DatasetError(
                f"episode {n!r}: field 'frames' must be a FrameSource "
                f"(len, [t], image_size), got {type(self.frames).__name__}")
        size = tuple(self.frames.image_size)
        if len(size) != 2 or min(size) <= 0:
            raise DatasetError(f"episode {n!r}: field 'frames.image_size' must be (W, H) > 0, got {size}")
        stamps = np.asarray(self.stamps, dtype=np.float64)
        if stamps.ndim != 1:
            raise DatasetError(f"episode {n!r}: field 'stamps' must have shape (T,), got {stamps.shape}")
        t_len = stamps.shape[0]
        if t_len == 0:
            raise DatasetError(f"episode {n!r} is empty (0 steps)")
        if not np.all(np.isfinite(stamps)):
            raise DatasetError(f"episode {n!r}: field 'stamps' has non-finite values")
        if t_len > 1 and not np.all(np.diff(stamps) > 0):
            k = int(np.argmax(np.diff(stamps) <= 0))
            raise DatasetError(
                f"episode {n!r}: field 'stamps' must be strictly increasing "
                f"(step {k + 1}: {stamps[k + 1]:.6f} after {stamps[k]:.6f})")
        self.stamps = stamps
        self.proprio = _as_matrix(n, "proprio", self.proprio, PROPRIO_DIM, np.float32)
        self.actions = _as_matrix(n, "actions", self.actions, ACTION_DIM, np.float32)
        for fname, arr in (("proprio", self.proprio), ("actions", self.actions)):
            if arr.shape[0] != t_len:
                raise DatasetError(
                    f"episode {n!r}: field {fname!r} has {arr.shape[0]} steps but 'stamps' has {t_len}")
            g = arr[:, 6]
            if g.min() < -GRIPPER_TOLERANCE or g.max() > 1 + GRIPPER_TOLERANCE:
                raise DatasetError(
                    f"episode {n!r}: field {fname!r} gripper column must be in 0..1 "
                    f"(0 open, 1 closed), found range [{g.min():.3f}, {g.max():.3f}]")
        if len(self.frames) != t_len:
            raise DatasetError(
                f"episode {n!r}: field 'frames' has {len(self.frames)} frames but 'stamps' has {t_len}")
        if self.success is not None and not isinstance(self.success, (bool, np.bool_)):
            raise DatasetError(f"episode {n!r}: field 'success' must be bool or None, got {self.success!r}")
        if not isinstance(self.meta, dict):
            raise DatasetError(f"episode {n!r}: field 'meta' must be a dict, got {type(self.meta).__name__}")
        if self.depth is not None:
            if not isinstance(self.depth, FrameSource):
                raise DatasetError(f"episode {n!r}: field 'depth' must be a FrameSource or None, "
                                   f"got {type(self.depth).__name__}")
            if len(self.depth) != t_len or tuple(self.depth.image_size) != size:
                raise DatasetError(
                    f"episode {n!r}: field 'depth' has {len(self.depth)} images of {tuple(self.depth.image_size)}, "
                    f"the frames {t_len} of {size}: depth must be registered to the colour frames")

    def __len__(self) -> int:
        return int(self.stamps.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(W, H) of the frames."""
        w, h = self.frames.image_size
        return int(w), int(h)


@dataclass(frozen=True)
class SkippedEpisode:
    """An episode left out of training and why (reported, never silent)."""

    name: str
    reason: str


def filter_episodes(episodes: Iterable[Episode], min_length: int,
                    image_size: tuple[int, int] | None = None
                    ) -> tuple[list[Episode], list[SkippedEpisode]]:
    """Split episodes into usable ones and skipped ones (with the reason).

    An episode is skipped when it has fewer than ``min_length`` steps, or
    when its frames are not ``image_size`` (default: the first episode's).
    Raises DatasetError when nothing is left, listing every reason.
    """
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1, got {min_length}")
    kept: list[Episode] = []
    skipped: list[SkippedEpisode] = []
    names: set[str] = set()
    for ep in episodes:
        if ep.name in names:
            raise DatasetError(f"two episodes are named {ep.name!r}; episode names must be unique")
        names.add(ep.name)
        if len(ep) < min_length:
            skipped.append(SkippedEpisode(ep.name, f"too short: {len(ep)} steps < min_length {min_length}"))
            continue
        if image_size is None:
            image_size = ep.image_size
        if ep.image_size != tuple(image_size):
            skipped.append(SkippedEpisode(
                ep.name, f"image size {ep.image_size[0]}x{ep.image_size[1]} differs from "
                         f"{image_size[0]}x{image_size[1]}"))
            continue
        kept.append(ep)
    if not kept:
        detail = "; ".join(f"{s.name}: {s.reason}" for s in skipped) or "no episodes given"
        raise DatasetError(f"no usable episodes ({detail})")
    return kept, skipped


# --------------------------------------------------------------------------- cache

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _folder_name(name: str) -> str:
    safe = _SAFE.sub("_", name).strip(".") or "episode"
    return safe


def save_episode_cache(episodes: Iterable[Episode], cache_dir: str | Path,
                       progress: bool = True) -> Path:
    """Write episodes to ``cache_dir`` (created; must not hold another cache).

    Layout: ``episodes.json`` (format version, episode list), and per episode
    a folder with ``data.npz`` (stamps, proprio, actions), ``frames/`` with
    one PNG per frame and, for episodes with depth, ``depth/`` with one 16-bit
    PNG (mm) per frame. Returns the cache folder.
    """
    import cv2
    from tqdm import tqdm

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    if (cache / CACHE_INDEX).exists():
        raise DatasetError(f"{cache} already holds an episode cache; choose an empty folder")
    entries = []
    used: set[str] = set()
    episodes = list(episodes)
    for ep in tqdm(episodes, desc="caching episodes", unit="ep", disable=not progress):
        folder = _folder_name(ep.name)
        base, k = folder, 1
        while folder in used:
            folder, k = f"{base}_{k}", k + 1
        used.add(folder)
        d = cache / folder
        (d / "frames").mkdir(parents=True, exist_ok=True)
        np.savez(d / "data.npz", stamps=ep.stamps, proprio=ep.proprio, actions=ep.actions)
        w, h = ep.image_size
        for t in range(len(ep)):
            img = np.asarray(ep.frames[t])
            if img.shape != (h, w, 3) or img.dtype != np.uint8:
                raise DatasetError(
                    f"episode {ep.name!r}: frame {t} is {img.shape} {img.dtype}, expected ({h}, {w}, 3) uint8")
            if not cv2.imwrite(str(d / "frames" / f"{t:06d}.png"), np.ascontiguousarray(img[:, :, ::-1])):
                raise DatasetError(f"could not write frame {t} of episode {ep.name!r} under {d}")
        if ep.depth is not None:
            (d / "depth").mkdir(exist_ok=True)
            for t in range(len(ep)):
                dm = np.asarray(ep.depth[t])
                if dm.shape != (h, w) or dm.dtype != np.uint16:
                    raise DatasetError(f"episode {ep.name!r}: depth {t} is {dm.shape} {dm.dtype}, "
                                       f"expected ({h}, {w}) uint16 mm")
                if not cv2.imwrite(str(d / "depth" / f"{t:06d}.png"), dm):
                    raise DatasetError(f"could not write depth {t} of episode {ep.name!r} under {d}")
        try:
            json.dumps(ep.meta)
        except TypeError as exc:
            raise DatasetError(f"episode {ep.name!r}: field 'meta' is not JSON-serialisable: {exc}") from exc
        entries.append({"name": ep.name, "folder": folder, "num_steps": len(ep),
                        "image_size": [w, h], "success": None if ep.success is None else bool(ep.success),
                        "meta": ep.meta, "depth": ep.depth is not None})
    index = {"format_version": CACHE_FORMAT_VERSION, "kind": "atk-episode-cache", "episodes": entries}
    (cache / CACHE_INDEX).write_text(json.dumps(index, indent=1))
    return cache


def is_episode_cache(path: str | Path) -> bool:
    """True when ``path`` is a folder written by :func:`save_episode_cache`."""
    return (Path(path) / CACHE_INDEX).is_file()


def load_episode_cache(cache_dir: str | Path) -> list[Episode]:
    """Read a cache written by :func:`save_episode_cache`; frames stay on disk."""
    cache = Path(cache_dir)
    index_path = cache / CACHE_INDEX
    if not index_path.is_file():
        raise DatasetError(f"{cache} is not an episode cache (no {CACHE_INDEX})")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{index_path} is not valid JSON: {exc}") from exc
    if index.get("format_version") != CACHE_FORMAT_VERSION or index.get("kind") != "atk-episode-cache":
        raise DatasetError(
            f"{index_path}: format_version {index.get('format_version')!r} kind {index.get('kind')!r}, "
            f"this code reads format_version {CACHE_FORMAT_VERSION} kind 'atk-episode-cache'")
    episodes = []
    for e in index["episodes"]:
        d = cache / e["folder"]
        try:
            with np.load(d / "data.npz") as z:
                stamps, proprio, actions = z["stamps"], z["proprio"], z["actions"]
        except (OSError, KeyError) as exc:
            raise DatasetError(f"episode {e['name']!r}: cannot read {d / 'data.npz'}: {exc}") from exc
        frames = PngFrames(d / "frames", int(e["num_steps"]), tuple(e["image_size"]))
        depth = (PngFrames(d / "depth", int(e["num_steps"]), tuple(e["image_size"]), depth=True)
                 if e.get("depth") else None)
        episodes.append(Episode(name=e["name"], frames=frames, stamps=stamps, proprio=proprio,
                                actions=actions, success=e.get("success"), meta=e.get("meta") or {},
                                depth=depth))
    return episodes
