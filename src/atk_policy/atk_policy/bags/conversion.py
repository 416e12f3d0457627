"""One bag -> one Episode, and the report of every bag given."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
from rosbags.typesys.store import Typestore

from atk_policy.dataset import DatasetError, Episode

from .alignment import align, stamp_series
from .common import (CAMERA_INFO_TYPE, COLOR_ENCODINGS, COMPRESSED_IMAGE_TYPE, DEPTH_ENCODINGS, GRIPPER_COMMAND_TYPE,
                     IMAGE_TYPE, JOINT_STATE_TYPE, LABEL_FILE, BagError)
from .config import BagConversionConfig, BagTopics
from .frames import FRAME_CACHE, BagFrames, decode_image
from .labels import read_label
from .reader import TopicInfo, find_bags, inspect_bag, open_reader, raw_messages
from .typestore import make_typestore, normalize_msgtype, register_from_bag


@dataclass
class BagEntry:
    """What happened to one bag (or one path that was not a bag)."""

    path: str
    status: Literal["used", "skipped"]
    reason: str = ""
    topics_found: str = ""
    images: int = 0
    frames: int = 0
    trimmed_start: int = 0
    trimmed_end: int = 0
    gaps: int = 0
    success: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ConversionReport:
    """Every bag given to :func:`load_episodes`, used or skipped, and why."""

    entries: list[BagEntry] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def used(self) -> list[BagEntry]:
        return [e for e in self.entries if e.status == "used"]

    @property
    def skipped(self) -> list[BagEntry]:
        return [e for e in self.entries if e.status == "skipped"]

    def to_dict(self) -> dict:
        return {"config": self.config,
                "used": len(self.used), "skipped": len(self.skipped),
                "entries": [e.__dict__ for e in self.entries]}

    def summary(self) -> str:
        """Human-readable report, one line per bag plus its notes."""
        lines = [f"bag conversion: {len(self.used)} used, {len(self.skipped)} skipped "
                 f"({sum(e.frames for e in self.used)} frames)"]
        for e in self.entries:
            if e.status == "used":
                lines.append(f"  used     {e.path}: {e.frames}/{e.images} frames "
                             f"(trimmed {e.trimmed_start} at start, {e.trimmed_end} at end, {e.gaps} in gaps), "
                             f"success={e.success}")
            else:
                lines.append(f"  SKIPPED  {e.path}: {e.reason}")
            lines.extend(f"           - {n}" for n in e.notes)
        return "\n".join(lines)


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _match_topics(bag_topics: Sequence[TopicInfo], name: str, namespace: str | None) -> list[TopicInfo]:
    """Bag topics that are ``name`` under some namespace (or ``namespace``)."""
    rel = name.strip("/")
    found = []
    for t in bag_topics:
        bare = t.name.strip("/")
        if bare == rel:
            ns = ""
        elif bare.endswith("/" + rel):
            ns = bare[: -len(rel) - 1]
        else:
            continue
        if namespace is None or ns == namespace.strip("/"):
            found.append(t)
    return found


class _Skip(Exception):
    """Internal: this bag is skipped, with the message as reason."""


def _convert_bag(bag: Path, cfg: BagConversionConfig, store: Typestore,
                 entry: BagEntry) -> Episode:
    info = inspect_bag(bag)
    entry.topics_found = info.describe_topics()
    names = cfg.topics
    required = {"image": names.image, "joint_states": names.joint_states}
    if cfg.action_source == "commands":
        required.update(joint_target=names.joint_target, gripper_command=names.gripper_command)
    optional = {"camera_info": names.camera_info, "depth": names.depth}
    expected = {"image": (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE), "joint_states": (JOINT_STATE_TYPE,),
                "joint_target": (JOINT_STATE_TYPE,), "gripper_command": (GRIPPER_COMMAND_TYPE,),
                "camera_info": (CAMERA_INFO_TYPE,), "depth": (IMAGE_TYPE,)}
    chosen: dict[str, TopicInfo] = {}
    missing, problems = [], []
    for key, name in {**required, **optional}.items():
        cands = _match_topics(info.topics, name, cfg.namespace)
        typed = [c for c in cands if c.msgtype in expected[key]]
        if len(typed) > 1:
            problems.append(f"{name} is ambiguous ({', '.join(c.name for c in typed)}); "
                            f"set the namespace to choose one")
        elif typed:
            if typed[0].count == 0 and key in required:
                problems.append(f"{typed[0].name} has no messages")
            chosen[key] = typed[0]
        elif key in required:
            if cands:
                problems.append(f"{cands[0].name} has type {cands[0].msgtype}, expected "
                                f"{' or '.join(expected[key])}")
            else:
                missing.append(name)
    if missing or problems:
        ns = "" if cfg.namespace is None else f" in namespace {cfg.namespace!r}"
        msg = []
        if missing:
            msg.append(f"missing topics {', '.join(missing)}{ns}")
        msg.extend(problems)
        raise _Skip("; ".join(msg) + f". Topics found: {info.describe_topics()}")

    use_header = cfg.stamp_source == "header"
    by_topic = {t.name: k for k, t in chosen.items()}
    img_keys: list[tuple[int, int]] = []
    img_stamps: list[int] = []
    img_sizes: set[tuple[int, int]] = set()
    encodings: set[str] = set()
    js_t: list[int] = []
    js_v: list[np.ndarray] = []
    tg_t: list[int] = []
    tg_v: list[np.ndarray] = []
    gc_t: list[int] = []
    gc_v: list[np.ndarray] = []
    caminfo: Any = None
    caminfo_sizes: set[tuple[int, int]] = set()
    depth_count = 0
    depth_at: list[tuple[int, int]] = []   # (stamp ns, log time ns) of each depth image
    depth_keys: list[tuple[int, int]] = []
    depth_stamps: list[int] = []
    depth_sizes: set[tuple[int, int]] = set()
    depth_encodings: set[str] = set()
    depth_rank: dict[int, int] = {}
    nan_counts: dict[str, int] = {}
    arm = list(cfg.joint_names)
    js_names_seen: tuple[str, ...] | None = None
    rank: dict[int, int] = {}
    zero_stamps: dict[str, int] = {}

    reader = open_reader(bag)
    try:
        wanted = {t.name: t.msgtype for t in chosen.values()}
        # Only the topics used are made known to the type store, so a topic
        # of a type that cannot be decoded elsewhere in the bag does not matter.
        type_names = {c.id: register_from_bag(store, c) for c in reader.connections
                      if normalize_msgtype(c.msgtype) == wanted.get(c.topic)}
        for conn, log_ts, data in raw_messages(reader, wanted):
            key = by_topic[conn.topic]
            msgtype = type_names[conn.id]
            msg = store.deserialize_cdr(data, msgtype)
            if use_header and hasattr(msg, "header"):
                stamp = _stamp_ns(msg.header)
                if stamp == 0:
                    zero_stamps[key] = zero_stamps.get(key, 0) + 1
            else:
                stamp = log_ts
            if key == "image":
                r = rank.get(log_ts, 0)
                rank[log_ts] = r + 1
                img_keys.append((log_ts, r))
                img_stamps.append(stamp)
                if msgtype == IMAGE_TYPE:
                    img_sizes.add((int(msg.width), int(msg.height)))
                    encodings.add(msg.encoding)
                else:
                    encodings.add(f"compressed:{msg.format}")
                    if not img_sizes:  # only decoding tells a compressed image's size
                        h_, w_ = decode_image(msg, msgtype).shape[:2]
                        img_sizes.add((w_, h_))
            elif key == "camera_info":
                caminfo = caminfo if caminfo is not None else msg
                caminfo_sizes.add((int(msg.width), int(msg.height)))
            elif key == "depth":
                depth_count += 1
                depth_at.append((stamp, log_ts))
                r = depth_rank.get(log_ts, 0)
                depth_rank[log_ts] = r + 1
                depth_keys.append((log_ts, r))
                depth_stamps.append(stamp)
                depth_sizes.add((int(msg.width), int(msg.height)))
                depth_encodings.add(msg.encoding)
            elif key in ("joint_states", "joint_target"):
                names_ = list(msg.name)
                pos = np.asarray(msg.position, np.float64)
                if names_ and len(names_) != len(pos):
                    raise _Skip(f"{conn.topic}: a message has {len(names_)} names but {len(pos)} positions")
                want = arm + [cfg.gripper_joint] if key == "joint_states" else arm
                if names_:
                    index = {n: i for i, n in enumerate(names_)}
                    lack = [n for n in want if n not in index]
                    if lack:
                        raise _Skip(f"{conn.topic}: messages lack joints {lack}; they name {names_}")
                    row = pos[[index[n] for n in want]]
                    if key == "joint_states":
                        js_names_seen = tuple(names_)
                elif len(pos) == len(want):
                    row = pos  # unnamed positions in the documented order
                else:
                    raise _Skip(f"{conn.topic}: unnamed message with {len(pos)} positions, "
                                f"expected {len(want)} ({want})")
                if not np.all(np.isfinite(row)):
                    nan_counts[conn.topic] = nan_counts.get(conn.topic, 0) + 1
                (js_t if key == "joint_states" else tg_t).append(stamp)
                (js_v if key == "joint_states" else tg_v).append(row)
            elif key == "gripper_command":
                v = float(msg.position)
                if not math.isfinite(v):
                    nan_counts[conn.topic] = nan_counts.get(conn.topic, 0) + 1
                gc_t.append(stamp)
                gc_v.append(np.array([v]))
    finally:
        reader.close()

    notes = entry.notes
    entry.images = len(img_keys)
    for key, n in zero_stamps.items():
        if n < 2:  # one stamp of 0 is a simulation's t = 0
            continue
        notes.append(f"{chosen[key].name}: {n} messages with a zero header stamp "
                     f"(set stamp_source='receive' if the publisher leaves stamps unset)")
    if nan_counts:
        raise _Skip("non-finite values (NaN/inf) in " + ", ".join(
            f"{t} ({n} messages)" for t, n in nan_counts.items()))
    if not img_keys:
        raise _Skip(f"{chosen['image'].name} has no messages")
    if len(img_sizes) > 1:
        raise _Skip(f"{chosen['image'].name}: image size changes within the episode: {sorted(img_sizes)}")
    bad_enc = [e for e in encodings if not e.startswith("compressed:") and e.lower() not in COLOR_ENCODINGS]
    if bad_enc:
        raise _Skip(f"{chosen['image'].name}: unsupported image encoding {bad_enc}; "
                    f"supported: {sorted(COLOR_ENCODINGS)} or CompressedImage")
    image_size = next(iter(img_sizes))
    if caminfo is not None:
        if caminfo_sizes != {image_size}:
            raise _Skip(f"{chosen['camera_info'].name} reports size {sorted(caminfo_sizes)}, "
                        f"the images are {image_size[0]}x{image_size[1]} (mismatched dimensions)")
    else:
        notes.append(f"no {names.camera_info} in the bag: camera intrinsics unknown")
    if not js_t:
        raise _Skip(f"{chosen['joint_states'].name} has no messages")

    # ------------------------------------------------------------ alignment
    img_t_ns = np.asarray(img_stamps, np.int64)
    order = np.argsort(img_t_ns, kind="stable")
    if np.any(np.diff(img_t_ns) < 0):
        notes.append(f"{chosen['image'].name}: {int(np.sum(np.diff(img_t_ns) < 0))} images out of "
                     f"stamp order (sorted by stamp)")
    img_t_ns = img_t_ns[order]
    keys_sorted = [img_keys[i] for i in order]
    dup = np.zeros(len(img_t_ns), bool)
    dup[1:] = np.diff(img_t_ns) == 0
    q = img_t_ns * 1e-9
    tol = float(cfg.tolerance_s)
    js_s, js_vals = stamp_series(js_t, js_v, chosen["joint_states"].name, notes)
    proprio, ok_p = align(js_s, js_vals, q, cfg.joint_state_alignment, tol)
    if cfg.action_source == "commands":
        tg_s, tg_vals = stamp_series(tg_t, tg_v, chosen["joint_target"].name, notes)
        gc_s, gc_vals = stamp_series(gc_t, gc_v, chosen["gripper_command"].name, notes)
        targets, ok_t = align(tg_s, tg_vals, q, cfg.target_alignment, tol)
        grip, ok_g = align(gc_s, gc_vals, q, cfg.gripper_alignment, tol)
        actions = np.concatenate([targets, grip], axis=1)
        ok_a = ok_t & ok_g
    else:
        actions, ok_a = align(js_s, js_vals, q + cfg.action_horizon_s, cfg.joint_state_alignment, tol)
    ok = ok_p & ok_a & ~dup
    if dup.any():
        notes.append(f"{chosen['image'].name}: {int(dup.sum())} images repeat the previous image's stamp (dropped)")
    if not ok.any():
        js_range = f"{js_s[0]:.3f}..{js_s[-1]:.3f}s" if len(js_s) else "none"
        raise _Skip(f"no image could be aligned within tolerance {tol} s: images "
                    f"{q[0]:.3f}..{q[-1]:.3f}s, joint states {js_range}"
                    + ("" if cfg.action_source != "commands" else
                       f", {len(tg_t)} joint targets, {len(gc_t)} gripper commands"))
    first, last = int(np.argmax(ok)), len(ok) - 1 - int(np.argmax(ok[::-1]))
    entry.trimmed_start, entry.trimmed_end = first, len(ok) - 1 - last
    entry.gaps = int((~ok[first:last + 1]).sum())
    why = []
    if (~ok_p).any():
        why.append(f"{int((~ok_p).sum())} without joint states")
    if (~ok_a).any():
        why.append(f"{int((~ok_a).sum())} without " + (
            "joint target/gripper command" if cfg.action_source == "commands"
            else f"joint states {cfg.action_horizon_s} s ahead"))
    if why:
        notes.append(f"unaligned images (tolerance {tol} s): " + ", ".join(why))
    if entry.gaps > cfg.max_gap_fraction * len(ok):
        raise _Skip(f"{entry.gaps} of {len(ok)} images inside the episode could not be aligned within "
                    f"{tol} s (max_gap_fraction {cfg.max_gap_fraction}): dropped messages or a stalled publisher")
    sel = np.flatnonzero(ok)
    if len(sel) < cfg.min_frames:
        raise _Skip(f"too short: {len(sel)} aligned frames < min_frames {cfg.min_frames}")
    g = actions[sel, 6]
    if cfg.action_source == "commands" and (g.min() < -0.05 or g.max() > 1.05):
        raise _Skip(f"gripper command outside 0..1: range [{g.min():.3f}, {g.max():.3f}]")

    label = read_label(bag)
    if label is None:
        if cfg.require_label:
            raise _Skip(f"no {LABEL_FILE} beside the bag and require_label is set")
        notes.append(f"no {LABEL_FILE}: success unknown")
    entry.success = None if label is None else label.success
    if label is not None and label.success is False and cfg.skip_failed:
        raise _Skip(f"labelled a failure in {LABEL_FILE} (success: false"
                    + (f", note: {label.note!r}" if label.note else "") + "); skip_failed is set")

    frames = BagFrames(bag, chosen["image"].name, chosen["image"].msgtype,
                       [keys_sorted[i] for i in sel], image_size,
                       prefetch=cfg.prefetch, distro=cfg.distro)
    meta: dict = {
        "bag": str(bag), "storage": info.storage, "files": list(info.files),
        "topics": {k: t.name for k, t in chosen.items()},
        "image_encoding": sorted(encodings)[0], "stamp_source": cfg.stamp_source,
        "action_source": cfg.action_source, "joint_state_names": list(js_names_seen or ()),
        "label": None if label is None else label.to_dict(),
        "depth_messages": depth_count,
    }
    if depth_at:
        # the depth image of the first frame (the canonical frame's, when this episode gives it)
        t0 = int(img_t_ns[sel[0]])
        d_stamp, d_log = min(depth_at, key=lambda d: abs(d[0] - t0))
        if abs(d_stamp - t0) <= tol * 1e9:
            meta["depth_first"] = {"topic": chosen["depth"].name, "log_ts": int(d_log), "stamp_ns": int(d_stamp)}
    if caminfo is not None:
        meta["camera_info"] = {"width": int(caminfo.width), "height": int(caminfo.height),
                               "frame_id": caminfo.header.frame_id,
                               "distortion_model": caminfo.distortion_model,
                               "k": [float(x) for x in caminfo.k], "d": [float(x) for x in caminfo.d]}
    depth = None
    if len(depth_keys) > 1:   # one depth image is the first frame's (depth_first), not a depth stream
        depth = _depth_frames(bag, cfg, chosen["depth"], depth_keys, depth_stamps, depth_sizes, depth_encodings,
                              image_size, q[sel], notes)
    meta["depth"] = depth is not None
    entry.frames = len(sel)
    try:
        return Episode(name=_episode_name(bag), frames=frames, stamps=q[sel], proprio=proprio[sel],
                       actions=actions[sel], success=entry.success, meta=meta, depth=depth)
    except DatasetError as exc:
        raise _Skip(str(exc)) from exc


def _depth_frames(bag: Path, cfg: BagConversionConfig, topic: TopicInfo, keys: list[tuple[int, int]],
                  stamps_ns: list[int], sizes: set[tuple[int, int]], encodings: set[str],
                  image_size: tuple[int, int], frame_t: np.ndarray, notes: list[str]) -> BagFrames | None:
    """The depth image of every used colour frame (nearest stamp within ``cfg.tolerance_s``), or None
    with a note saying why the episode's depth is not used. frame_t: (T,) s of the used colour frames."""
    bad_enc = sorted(e for e in encodings if e not in DEPTH_ENCODINGS)
    if bad_enc:
        notes.append(f"{topic.name}: depth encoding {bad_enc} not supported ({list(DEPTH_ENCODINGS)}); depth not used")
        return None
    if sizes != {image_size}:
        notes.append(f"{topic.name}: depth images are {sorted(sizes)}, the colour images "
                     f"{image_size[0]}x{image_size[1]}: depth must be registered to colour; depth not used")
        return None
    t = np.asarray(stamps_ns, np.int64) * 1e-9
    order = np.argsort(t, kind="stable")
    t = t[order]
    # nearest depth stamp of every colour frame
    right = np.clip(np.searchsorted(t, frame_t), 0, len(t) - 1)
    left = np.clip(right - 1, 0, len(t) - 1)
    pick = np.where(np.abs(t[left] - frame_t) <= np.abs(t[right] - frame_t), left, right)
    off = np.abs(t[pick] - frame_t)
    missing = int(np.sum(off > cfg.tolerance_s))
    if missing:
        notes.append(f"{topic.name}: {missing} of {len(frame_t)} frames have no depth image within "
                     f"{cfg.tolerance_s} s; depth not used")
        return None
    return BagFrames(bag, topic.name, topic.msgtype, [keys[order[i]] for i in pick], image_size,
                     prefetch=cfg.prefetch, distro=cfg.distro, depth=True)


def _episode_name(bag: Path) -> str:
    return bag.stem if bag.is_file() else bag.name


def load_episodes(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                  config: BagConversionConfig | None = None,
                  progress: bool = False) -> tuple[list[Episode], ConversionReport]:
    """Convert bags to episodes: one bag = one episode.

    paths: bag folders, .mcap/.db3 files, or folders holding bags (searched
    recursively). Returns (episodes in path order, report). Every path ends
    up in the report. Raises BagError when no episode could be used, with
    each bag's reason and the topics it found.
    """
    cfg = config or BagConversionConfig()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    bags, not_bags = find_bags(paths)
    store = make_typestore(cfg.distro)
    FRAME_CACHE.set_budget(int(cfg.frame_cache_mb * 2**20))
    report = ConversionReport(config={k: (v.__dict__ if isinstance(v, BagTopics) else v)
                                      for k, v in cfg.__dict__.items()})
    for p, why in not_bags:
        report.entries.append(BagEntry(str(p), "skipped", why))
    episodes: list[Episode] = []
    names: dict[str, int] = {}
    it: Iterable[Path] = bags
    if progress:
        from tqdm import tqdm

        it = tqdm(bags, desc="reading bags", unit="bag")
    for bag in it:
        entry = BagEntry(str(bag), "used")
        report.entries.append(entry)
        try:
            ep = _convert_bag(bag, cfg, store, entry)
        except (_Skip, BagError) as exc:
            # The entry names the bag; a BagError's own "<bag>: " prefix would name it twice.
            reason = str(exc)
            entry.status, entry.reason, entry.frames = "skipped", reason.removeprefix(f"{bag}: "), 0
            continue
        if ep.name in names:  # same folder name in two places
            names[ep.name] += 1
            ep.name = f"{ep.name}_{names[ep.name]}"
        else:
            names[ep.name] = 0
        episodes.append(ep)
    if not episodes:
        raise BagError("no usable episode in the bags given:\n" + report.summary())
    return episodes, report
