"""Colour (and depth) frames decoded from the bag when indexed, with a
process-wide byte-budgeted cache and a small pool of open readers."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rosbags.rosbag2 import Reader

from .common import COLOR_ENCODINGS, COMPRESSED_IMAGE_TYPE, DEPTH_ENCODINGS, BagError
from .reader import open_reader, raw_messages
from .typestore import make_typestore


def decode_image(msg: Any, msgtype: str) -> np.ndarray:
    """sensor_msgs Image/CompressedImage -> (H, W, 3) uint8 RGB."""
    if msgtype == COMPRESSED_IMAGE_TYPE:
        import cv2

        bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise BagError(f"cannot decode compressed image (format {msg.format!r})")
        return np.ascontiguousarray(bgr[:, :, ::-1])
    enc = msg.encoding.lower()
    ch = COLOR_ENCODINGS.get(enc)
    if ch is None:
        raise BagError(f"image encoding {msg.encoding!r} is not supported; use one of {sorted(COLOR_ENCODINGS)}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if step < w * ch or data.size < h * step:
        raise BagError(f"image {w}x{h} {enc}: step {step} and {data.size} bytes do not fit")
    px = data[: h * step].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if enc == "rgb8":
        out = px
    elif enc == "bgr8":
        out = px[:, :, ::-1]
    elif enc == "rgba8":
        out = px[:, :, :3]
    elif enc == "bgra8":
        out = px[:, :, 2::-1]
    else:  # mono8
        out = np.repeat(px, 3, axis=2)
    return np.ascontiguousarray(out)


def decode_depth(msg: Any) -> np.ndarray:
    """sensor_msgs Image with a depth encoding -> (H, W) uint16 millimetres, 0 = no reading.

    REP 118: 16UC1 / mono16 are millimetres, 32FC1 metres (NaN, inf, <= 0 and
    anything beyond the uint16 range become 0).
    """
    from atk_perception.image_conversion import ImageConversionError, fields_to_array

    enc = msg.encoding
    if enc not in DEPTH_ENCODINGS:
        raise BagError(f"depth encoding {enc!r} is not supported; use one of {sorted(DEPTH_ENCODINGS)}")
    try:
        arr = fields_to_array(enc, msg.height, msg.width, msg.step, np.asarray(msg.data, np.uint8),
                              is_bigendian=bool(msg.is_bigendian))
    except ImageConversionError as exc:
        raise BagError(f"depth image: {exc}") from exc
    if arr.dtype == np.uint16:
        return arr
    mm = np.where(np.isfinite(arr) & (arr > 0), np.round(arr.astype(np.float64) * 1000.0), 0.0)
    return np.where(mm <= 65535, mm, 0).astype(np.uint16)


def read_depth(bag: str | os.PathLike, topic: str, log_ts: int, distro: str = "kilted") -> np.ndarray:
    """The depth image (H, W) float32 metres logged on ``topic`` at ``log_ts`` ns in ``bag``."""
    from .common import IMAGE_TYPE

    store = make_typestore(distro)  # type: ignore[arg-type]
    reader = open_reader(Path(bag))
    try:
        for _conn, ts, data in raw_messages(reader, {topic: IMAGE_TYPE}, log_ts, log_ts + 1):
            if ts == log_ts:
                return decode_depth(store.deserialize_cdr(data, IMAGE_TYPE)).astype(np.float32) / np.float32(1000.0)
    finally:
        reader.close()
    raise BagError(f"{bag}: no depth image on {topic} at log time {log_ts} ns; was the bag modified?")


class _FrameCache:
    """Decoded frames of every BagFrames in the process, least recently used evicted.

    One byte budget for all episodes, so a training set of hundreds of bags
    holds at most ``budget`` bytes of decoded images whatever the access order.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self.used = 0
        self._items: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            img = self._items.get(key)
            if img is not None:
                self._items.move_to_end(key)
            return img

    def put(self, key: tuple[int, int], img: np.ndarray) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= old.nbytes
            self._items[key] = img
            self.used += img.nbytes
            while self.used > self.budget and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self.used -= dropped.nbytes

    def set_budget(self, budget_bytes: int) -> None:
        with self._lock:
            self.budget = int(budget_bytes)
            while self.used > self.budget and self._items:
                _, dropped = self._items.popitem(last=False)
                self.used -= dropped.nbytes


FRAME_CACHE = _FrameCache(256 * 2**20)


class _ReaderPool:
    """A few open bag readers, reused across frame reads (opening an MCAP bag
    parses its whole chunk index, which costs more than decoding a frame).

    At most ``max_open`` stay open (least recently used closed), so hundreds
    of episodes never exhaust file handles. A reader is checked out for
    exclusive use. After a fork the child forgets its parent's readers
    (shared file offsets would corrupt both).
    """

    def __init__(self, max_open: int = 8) -> None:
        self.max_open = max_open
        self._open: OrderedDict[Path, Reader] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def checkout(self, path: Path) -> Reader:
        with self._lock:
            if self._pid != os.getpid():
                self._open, self._pid = OrderedDict(), os.getpid()
            reader = self._open.pop(path, None)
        return reader if reader is not None else open_reader(path)

    def checkin(self, path: Path, reader: Reader) -> None:
        with self._lock:
            if self._pid != os.getpid():
                return
            old = self._open.pop(path, None)
            self._open[path] = reader
            excess = [self._open.popitem(last=False)[1] for _ in range(max(0, len(self._open) - self.max_open))]
        for r in ([old] if old is not None else []) + excess:
            r.close()


READERS = _ReaderPool()
_frame_tokens = iter(range(1, 2**62))
_token_lock = threading.Lock()


def _new_token() -> int:
    with _token_lock:
        return next(_frame_tokens)


class BagFrames:
    """Colour frames of one episode, decoded from the bag when indexed.

    ``frames[t]`` is (H, W, 3) uint8 RGB; with ``depth=True`` the frames of a
    depth topic, (H, W) uint16 millimetres (0 = no reading). Holds the bag path and, per frame,
    the message's (log time ns, rank among messages with that log time);
    readers come from a small process-wide pool (:data:`READERS`), so
    hundreds of episodes never exhaust file handles, and the object pickles
    as that data, so worker processes can use it. Decoded frames go to the process-wide :data:`FRAME_CACHE`. A
    miss right after frame t-1 (a sequential pass) reads ``prefetch`` frames
    onward in one pass over the bag; any other miss reads just that frame.
    """

    def __init__(self, bag: str | os.PathLike, topic: str, msgtype: str,
                 keys: Sequence[tuple[int, int]], image_size: tuple[int, int],
                 prefetch: int = 8, distro: str = "kilted", depth: bool = False) -> None:
        self.bag = Path(bag)
        self.depth = bool(depth)
        self.topic = topic
        self.msgtype = msgtype
        self.keys = [(int(a), int(b)) for a, b in keys]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.prefetch = int(prefetch)
        self.distro = distro
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._token = _new_token()
        self._last = -1
        self.reads = 0  # passes over the bag, for tests and benchmarks

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_lock", "_token", "_last"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("depth", False)
        self._init_runtime()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, t: int) -> np.ndarray:
        n = len(self.keys)
        t = int(t)
        if t < 0:
            t += n
        if not 0 <= t < n:
            raise IndexError(f"frame index {t} out of range for {n} frames")
        with self._lock:
            img = FRAME_CACHE.get((self._token, t))
            if img is None:
                img = self._fill(t, self.prefetch if t == self._last + 1 else 1)
            self._last = t
            return img

    def _fill(self, t: int, count: int) -> np.ndarray:
        last = min(t + count, len(self.keys)) - 1
        wanted = {self.keys[i]: i for i in range(t, last + 1)}
        store = make_typestore(self.distro)  # type: ignore[arg-type]
        # Frames are in header-stamp order; their log times need not be (stamps
        # running backwards, frames recorded out of order), so the pass covers
        # every log time of the frames wanted.
        log_times = [self.keys[i][0] for i in range(t, last + 1)]
        start, stop = min(log_times), max(log_times) + 1
        rank: dict[int, int] = {}
        found: np.ndarray | None = None
        self.reads += 1
        reader = READERS.checkout(self.bag)
        try:
            for conn, ts, data in raw_messages(reader, {self.topic: self.msgtype}, start, stop):
                r = rank.get(ts, 0)
                rank[ts] = r + 1
                i = wanted.get((ts, r))
                if i is None:
                    continue
                w, h = self.image_size
                msg = store.deserialize_cdr(data, self.msgtype)
                img = decode_depth(msg) if self.depth else decode_image(msg, self.msgtype)
                if img.shape[:2] != (h, w):
                    raise BagError(f"{self.bag}: frame {i} on {self.topic} is {img.shape[1]}x{img.shape[0]}, "
                                   f"the episode's frames are {w}x{h}")
                if i == t:
                    found = img
                else:
                    FRAME_CACHE.put((self._token, i), img)
        except BaseException:
            reader.close()
            raise
        READERS.checkin(self.bag, reader)
        if found is None:
            raise BagError(f"{self.bag}: frame {t} (log time {self.keys[t][0]} ns) on {self.topic} "
                           f"was not found on re-reading; was the bag modified?")
        # Frame t goes in last, as the most recently used.
        FRAME_CACHE.put((self._token, t), found)
        return found
