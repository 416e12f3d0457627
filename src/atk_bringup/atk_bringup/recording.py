"""One rosbag2 bag per episode from serialised messages (ROS-free).

The recorder node hands over CDR bytes exactly as they came off DDS
(``raw=True`` subscriptions); :class:`EpisodeRecorder` writes them unchanged
through ``rosbags`` into rosbag2 bags (MCAP by default, metadata.yaml
included), one folder per episode, and writes the success label
(``episode.yaml``, see :mod:`atk_policy.bags`) beside the bag when the
episode ends. No rclpy here, so the bookkeeping is tested with plain pytest.

Write errors (disk full, a file-size limit, I/O error) end the episode
instead of the process: the bag is cut back to its last complete MCAP chunk
(chunks are about 1 MiB; sqlite3 bags are committed every MiB likewise) and
closed there, so everything before stays readable with a true
metadata.yaml, the label records the error, and the next
:meth:`EpisodeRecorder.end` raises :class:`EpisodeWriteError` with the bag's
path. See docs/recording.md.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import sqlite3
import threading
from collections import defaultdict
from contextlib import suppress
from io import BytesIO
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from rosbags.interfaces import Qos
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

from atk_policy.bags import (BAG_VERSION, COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, EpisodeLabel, enable_compression,
                             make_typestore, write_label)

#: Types of the topics in docs/interfaces.md, by relative name.
KNOWN_TOPIC_TYPES: dict[str, str] = {
    "camera/color/image_raw": "sensor_msgs/msg/Image",
    "camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
    "camera/depth/image_raw": "sensor_msgs/msg/Image",
    "joint_states": "sensor_msgs/msg/JointState",
    "joint_target": "sensor_msgs/msg/JointState",
    "gripper_command": "atk_msgs/msg/GripperCommand",
    "keypoints": "atk_msgs/msg/KeypointArray",
    "keypoints/overlay": "sensor_msgs/msg/Image",
    "policy/status": "atk_msgs/msg/PolicyStatus",
    "sim/episode": "atk_msgs/msg/EpisodeStatus",
    "diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
}

#: How each kind of topic is published (docs/interfaces.md), which decides
#: how the recorder subscribes and which QoS the bag states when no publisher
#: can be asked: "sensor" best effort, "command" reliable, "latched" reliable
#: transient local.
TOPIC_QOS_KIND: dict[str, str] = {
    "camera/color/image_raw": "sensor", "camera/color/camera_info": "sensor",
    "camera/depth/image_raw": "sensor", "joint_states": "sensor", "keypoints": "sensor",
    "keypoints/overlay": "sensor", "joint_target": "command", "gripper_command": "command",
    "policy/status": "command", "diagnostics": "command", "sim/episode": "latched",
}

_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*/msg/[A-Z][A-Za-z0-9]*$")
_TOPIC_RE = re.compile(r"^/?[A-Za-z~][A-Za-z0-9_/~{}]*$")


class RecorderError(ValueError):
    """A recording request that cannot be honoured; the message says why."""


class EpisodeWriteError(RecorderError):
    """The episode ended early because its bag could not be written.

    ``summary``: what was kept (path, messages per topic, ``error``).
    """

    def __init__(self, message: str, summary: "EpisodeSummary") -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class TopicSpec:
    """A topic to record: relative ``name``, ROS ``msgtype``, QoS ``kind``."""

    name: str
    msgtype: str
    kind: Literal["sensor", "command", "latched"]


def parse_topics(entries: Sequence[str]) -> list[TopicSpec]:
    """Topic parameter entries -> specs.

    An entry is a topic of docs/interfaces.md (``joint_states``) or
    ``name:pkg/msg/Type[:sensor|command|latched]`` for any other topic.
    Raises RecorderError quoting the bad entry.
    """
    specs: list[TopicSpec] = []
    seen: set[str] = set()
    for raw in entries:
        parts = str(raw).split(":")
        name = parts[0].strip()
        if not name or not _TOPIC_RE.match(name):
            raise RecorderError(f"topic entry {raw!r}: {name!r} is not a topic name")
        if len(parts) == 1:
            if name.strip("/") not in KNOWN_TOPIC_TYPES:
                raise RecorderError(
                    f"topic entry {raw!r}: unknown topic; give its type as 'name:pkg/msg/Type' or use one of "
                    f"{', '.join(KNOWN_TOPIC_TYPES)}")
            key = name.strip("/")
            spec = TopicSpec(name, KNOWN_TOPIC_TYPES[key], TOPIC_QOS_KIND[key])  # type: ignore[arg-type]
        elif len(parts) in (2, 3):
            msgtype = parts[1].strip()
            if not _TYPE_RE.match(msgtype):
                raise RecorderError(f"topic entry {raw!r}: {msgtype!r} is not a message type like "
                                    f"'sensor_msgs/msg/Image'")
            kind = parts[2].strip() if len(parts) == 3 else TOPIC_QOS_KIND.get(name.strip("/"), "command")
            if kind not in ("sensor", "command", "latched"):
                raise RecorderError(f"topic entry {raw!r}: QoS kind {kind!r} is not sensor, command or latched")
            spec = TopicSpec(name, msgtype, kind)  # type: ignore[arg-type]
        else:
            raise RecorderError(f"topic entry {raw!r}: expected 'name' or 'name:pkg/msg/Type[:kind]'")
        if spec.name in seen:
            raise RecorderError(f"topic entry {raw!r}: topic {spec.name!r} is listed twice")
        seen.add(spec.name)
        specs.append(spec)
    if not specs:
        raise RecorderError("no topics to record")
    return specs


def default_qos(kind: str) -> Qos:
    """The QoS docs/interfaces.md gives the publishers of a topic kind."""
    if kind == "sensor":
        return SENSOR_QOS
    if kind == "latched":
        return LATCHED_QOS
    return COMMAND_QOS


@dataclass
class EpisodeSummary:
    """What one finished episode wrote."""

    path: Path
    counts: dict[str, int]
    dropped_outside: int
    duration_s: float
    label: EpisodeLabel | None = None
    error: str = ""  # why the episode ended early ('' when it ended normally)

    def describe(self) -> str:
        total = sum(self.counts.values())
        per = ", ".join(f"{t} {n}" for t, n in self.counts.items())
        text = f"wrote {total} messages in {self.duration_s:.1f} s to {self.path} ({per})"
        return f"{self.error}; kept: {text}" if self.error else text


@dataclass
class _Open:
    writer: Writer
    path: Path
    connections: dict[str, object]
    counts: dict[str, int]
    first_ns: int | None = None
    last_ns: int | None = None
    # State at the end of the last complete MCAP chunk (sqlite3: the last
    # commit): what a write error cuts the bag back to.
    # (file offset, chunks, counts, first_ns, last_ns)
    committed: tuple = (0, 0, {}, None, None)
    uncommitted_bytes: int = 0


@dataclass
class EpisodeRecorder:
    """Writes episodes as rosbag2 bags under ``output_dir``: one folder per episode.

    Thread-safe: messages may arrive from executor threads while a service
    or key press starts or ends the episode. Messages outside an episode are
    counted and discarded.
    """

    output_dir: Path
    topics: list[tuple[str, str]]  # (absolute topic name, msgtype)
    prefix: str = "episode"
    storage: Literal["mcap", "sqlite3"] = "mcap"
    compress: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _open: _Open | None = field(default=None, repr=False)
    _index: int = 0
    dropped_outside: int = 0
    _failed: EpisodeSummary | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.storage not in ("mcap", "sqlite3"):
            raise RecorderError(f"storage must be mcap or sqlite3, got {self.storage!r}")
        if not re.match(r"^[A-Za-z0-9_.-]+$", self.prefix):
            raise RecorderError(f"bag prefix {self.prefix!r} may only hold letters, digits, '_', '.', '-'")
        self._store = make_typestore()

    @property
    def recording(self) -> bool:
        return self._open is not None

    @property
    def current_path(self) -> Path | None:
        o = self._open
        return None if o is None else o.path

    def counts(self) -> dict[str, int]:
        """Messages written per topic in the current episode (empty when idle)."""
        with self._lock:
            return dict(self._open.counts) if self._open else {}

    def _next_path(self) -> Path:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        while True:
            self._index += 1
            path = self.output_dir / f"{self.prefix}_{stamp}_{self._index:03d}"
            if not path.exists():
                return path

    def start(self, qos: dict[str, Sequence[Qos]] | None = None) -> Path:
        """Open a new bag; ``qos`` gives the publishers' offered QoS per topic."""
        with self._lock:
            if self._open is not None:
                raise RecorderError(f"already recording {self._open.path}; end that episode first")
            self._failed = None
            try:
                self.output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RecorderError(f"cannot create the output folder {self.output_dir}: {exc}") from exc
            path = self._next_path()
            plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
            try:
                writer = Writer(path, version=BAG_VERSION, storage_plugin=plugin)
                if self.compress:
                    enable_compression(writer, self.storage)
                writer.open()
                conns = {}
                for topic, msgtype in self.topics:
                    profiles = list((qos or {}).get(topic, ()))
                    conns[topic] = writer.add_connection(topic, msgtype, typestore=self._store,
                                                         offered_qos_profiles=profiles)
            except (WriterError, KeyError, OSError) as exc:
                raise RecorderError(f"cannot open bag {path}: {exc}") from exc
            self._open = _Open(writer, path, conns, {t: 0 for t, _ in self.topics})
            if self._is_sqlite(self._open):
                writer.storage.conn.commit()  # the topic tables, before any message
            self._open.committed = self._mark(self._open)
            return path

    @property
    def failed(self) -> EpisodeSummary | None:
        """The episode that a write error ended, until end() or start() is called."""
        return self._failed

    def write(self, topic: str, log_time_ns: int, data: bytes) -> bool:
        """Write one serialised message; False when no episode is open (also
        after a write error ended it: see :attr:`failed`)."""
        with self._lock:
            o = self._open
            if o is None:
                self.dropped_outside += 1
                return False
            chunks = self._chunk_count(o)
            try:
                o.writer.write(o.connections[topic], int(log_time_ns), data)
            except (OSError, sqlite3.Error) as exc:
                self._fail(o, exc)
                return False
            o.counts[topic] += 1
            o.first_ns = log_time_ns if o.first_ns is None else min(o.first_ns, log_time_ns)
            o.last_ns = log_time_ns if o.last_ns is None else max(o.last_ns, log_time_ns)
            o.uncommitted_bytes += len(data)
            sqlite_due = self._is_sqlite(o) and o.uncommitted_bytes > self.COMMIT_BYTES
            if sqlite_due or self._chunk_count(o) != chunks:  # a chunk was completed
                try:
                    if sqlite_due:
                        o.writer.storage.conn.commit()
                    else:
                        o.writer.storage.bio.flush()  # on disk, not in a buffer, before it counts as kept
                except (OSError, sqlite3.Error) as exc:
                    self._fail(o, exc)
                    return False
                o.committed = self._mark(o)
                o.uncommitted_bytes = 0
            return True

    # -- write errors (lock held) -----------------------------------------------------------------
    # These reach into rosbags' MCAP writer (pinned 0.11.9 in requirements.txt;
    # test_recorder_node checks the result with the reader): it has no API to
    # close a bag after a failed write, and its close() would write a summary
    # claiming messages the file lost.
    #: sqlite3 bags are committed after this many message bytes (MCAP's chunk size).
    COMMIT_BYTES = 1 << 20

    @staticmethod
    def _is_sqlite(o: _Open) -> bool:
        return hasattr(o.writer.storage, "conn")

    @staticmethod
    def _chunk_count(o: _Open) -> int:
        return len(getattr(o.writer.storage, "chunks", ()))

    @staticmethod
    def _mark(o: _Open) -> tuple:
        storage = o.writer.storage
        bio = getattr(storage, "bio", None)
        offset = bio.tell() if bio is not None and hasattr(storage, "chunks") else 0
        return (offset, len(getattr(storage, "chunks", ())), dict(o.counts), o.first_ns, o.last_ns)

    def _fail(self, o: _Open, exc: BaseException) -> None:
        """End episode ``o`` after a write error, keeping what the file holds."""
        self._open = None
        error = f"write error, episode ended early: {exc}"
        counts, first, last = dict(o.counts), o.first_ns, o.last_ns
        kept = True
        try:
            if hasattr(o.writer.storage, "chunks"):
                counts, first, last = self._cut_to_last_chunk(o)
            elif self._is_sqlite(o):
                o.writer.storage.conn.rollback()
                _, _, counts, first, last = o.committed
                self._restore_counts(o, counts, first, last)
            o.writer.close()
        except (OSError, sqlite3.Error, ValueError) as close_exc:
            kept = False
            with suppress(Exception):
                o.writer.abort()
            error += (f"; the bag could not be closed either ({close_exc}): it has no index, free disk "
                      "space and run the bag recovery on it")
        if kept:
            with suppress(OSError, ValueError):  # a full disk may refuse the label too
                write_label(o.path, EpisodeLabel(success=None, note=error[:500], source="recorder"))
        dur = 0.0 if first is None else (last - first) * 1e-9
        self._failed = EpisodeSummary(o.path, counts, self.dropped_outside, dur, None, error)

    def _cut_to_last_chunk(self, o: _Open) -> tuple[dict[str, int], int | None, int | None]:
        """Truncate the MCAP file to its last complete chunk and make the
        writer's bookkeeping match, so that close() writes a true summary."""
        from rosbags.rosbag2.storage_mcap import PendingChunk

        storage, writer = o.writer.storage, o.writer
        offset, n_chunks, counts, first, last = o.committed
        old = storage.bio
        fresh = open(old.name, "r+b")  # noqa: SIM115 - handed to the storage, closed by its close()
        fresh.truncate(offset)
        fresh.seek(offset)
        # The old handle still holds the bytes that failed; point its file
        # descriptor at /dev/null so closing it cannot write them anywhere.
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, old.fileno())
        finally:
            os.close(null)
        with suppress(OSError, ValueError):
            old.close()
        storage.bio = fresh
        storage.chunks = storage.chunks[:n_chunks]
        storage.chunk = PendingChunk(2**63 - 1, 0, BytesIO(), defaultdict(list))
        by_id = {o.connections[t].id: n for t, n in counts.items()}
        storage.channel_stats = {cid: by_id.get(cid, 0) for cid in storage.channel_stats}
        self._restore_counts(o, counts, first, last)
        storage.message_start_time, storage.message_end_time = writer.min_timestamp, writer.max_timestamp
        return counts, first, last

    @staticmethod
    def _restore_counts(o: _Open, counts: dict[str, int], first: int | None, last: int | None) -> None:
        """The metadata.yaml counts and times rosbags writes: those of the kept messages."""
        writer = o.writer
        by_id = {o.connections[t].id: n for t, n in counts.items()}
        writer.counts = {cid: by_id.get(cid, 0) for cid in writer.counts}
        writer.min_timestamp = first if first is not None else 2**63 - 1
        writer.max_timestamp = last if last is not None else 0

    def end(self, label: EpisodeLabel | None) -> EpisodeSummary:
        """Close the bag (metadata.yaml written) and write the label beside it.

        Raises EpisodeWriteError when a write error already ended the episode
        (its label then says so; ``label`` is not written over it).
        """
        with self._lock:
            o = self._open
            if o is None and self._failed is not None:
                failed, self._failed = self._failed, None
                raise EpisodeWriteError(f"{failed.describe()}", failed)
            if o is None:
                raise RecorderError("no episode is being recorded; call start_episode first")
            self._open = None
            o.writer.close()
            if label is not None:
                write_label(o.path, label)
            dur = 0.0 if o.first_ns is None else (o.last_ns - o.first_ns) * 1e-9  # type: ignore[operator]
            return EpisodeSummary(o.path, dict(o.counts), self.dropped_outside, dur, label)
