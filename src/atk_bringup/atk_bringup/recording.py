"""One rosbag2 bag per episode from serialised messages (ROS-free).

The recorder node hands over CDR bytes exactly as they came off DDS
(``raw=True`` subscriptions); :class:`EpisodeRecorder` writes them unchanged
through ``rosbags`` into rosbag2 bags (MCAP by default, metadata.yaml
included), one folder per episode, and writes the success label
(``episode.yaml``, see :mod:`atk_policy.bags`) beside the bag when the
episode ends. No rclpy here, so the bookkeeping is tested with plain pytest.
"""
from __future__ import annotations

import datetime as _dt
import re
import threading
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

    def describe(self) -> str:
        total = sum(self.counts.values())
        per = ", ".join(f"{t} {n}" for t, n in self.counts.items())
        return f"wrote {total} messages in {self.duration_s:.1f} s to {self.path} ({per})"


@dataclass
class _Open:
    writer: Writer
    path: Path
    connections: dict[str, object]
    counts: dict[str, int]
    first_ns: int | None = None
    last_ns: int | None = None


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
            return path

    def write(self, topic: str, log_time_ns: int, data: bytes) -> bool:
        """Write one serialised message; False when no episode is open."""
        with self._lock:
            o = self._open
            if o is None:
                self.dropped_outside += 1
                return False
            o.writer.write(o.connections[topic], int(log_time_ns), data)
            o.counts[topic] += 1
            o.first_ns = log_time_ns if o.first_ns is None else min(o.first_ns, log_time_ns)
            o.last_ns = log_time_ns if o.last_ns is None else max(o.last_ns, log_time_ns)
            return True

    def end(self, label: EpisodeLabel | None) -> EpisodeSummary:
        """Close the bag (metadata.yaml written) and write the label beside it."""
        with self._lock:
            o = self._open
            if o is None:
                raise RecorderError("no episode is being recorded; call start_episode first")
            self._open = None
            o.writer.close()
            if label is not None:
                write_label(o.path, label)
            dur = 0.0 if o.first_ns is None else (o.last_ns - o.first_ns) * 1e-9  # type: ignore[operator]
            return EpisodeSummary(o.path, dict(o.counts), self.dropped_outside, dur, label)
