"""rosbag2 bags: read demonstrations into Episodes, write simulated ones.

ROS-free: everything goes through the ``rosbags`` library (no rclpy, no
``*_msgs`` imports), so a bag recorded by ``ros2 bag record`` on a robot, one
written by the project's recorder node and one written here from the
simulator are read by the same code, on machines with or without ROS.

Reading (:func:`load_episodes`)
    One bag (a rosbag2 folder with ``metadata.yaml``; mcap or sqlite3, split
    into several files or not) is one episode. The topics of
    docs/interfaces.md are looked up with or without a leading namespace
    (``/robot1/joint_states`` matches ``joint_states``). The timeline is the
    colour images' header stamps; joint states and commands are aligned to it
    (see :class:`BagConversionConfig`). Every bag given ends up in the
    :class:`ConversionReport`, used or skipped with the reason: nothing is
    dropped silently. Frames stay in the bag and are decoded when indexed
    (:class:`BagFrames`).

Label
    ``<bag>/episode.yaml`` beside ``metadata.yaml`` (rosbag2 ignores other
    files in the folder): ``success`` (true/false/null), ``note``, ``task``,
    ``seed``, ``perturbations``, ``source``, ``recorded_at``; see
    :class:`EpisodeLabel`.

Writing (:class:`EpisodeBagWriter`, :func:`write_episode_bag`)
    MCAP bags with the same topics, message types, type hashes and QoS
    metadata as a real recording, from numpy data (the simulated experts).
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
import yaml
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from atk_perception import kinematics as kin
from atk_policy.dataset import ACTION_DIM, PROPRIO_DIM, DatasetError, Episode

# --------------------------------------------------------------------------- constants

UR_JOINT_NAMES: tuple[str, ...] = kin.JOINT_NAMES
GRIPPER_JOINT = kin.GRIPPER_JOINT
LABEL_FILE = "episode.yaml"
#: rosbag2 metadata version written (kilted and jazzy write 9).
BAG_VERSION = 9

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
GRIPPER_COMMAND_TYPE = "atk_msgs/msg/GripperCommand"

#: Channels per pixel of the colour encodings the reader converts to RGB.
_COLOR_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class BagError(ValueError):
    """A bag cannot be read or used; the message names the bag and the cause."""


# --------------------------------------------------------------------------- typestore


def find_atk_msgs_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Folder holding atk_msgs' ``*.msg`` files, found without ament_index.

    Looked up in this order: ``explicit``; ``$ATK_MSGS_DIR``;
    ``<prefix>/share/atk_msgs/msg`` for each prefix of ``$AMENT_PREFIX_PATH``
    (where colcon installs them); the share folder next to the importable
    ``atk_msgs`` Python package (found with importlib, not imported); the
    source tree ``src/atk_msgs/msg`` next to this package. Raises BagError
    listing every place tried.
    """
    tried: list[str] = []

    def ok(p: Path) -> bool:
        tried.append(str(p))
        return p.is_dir() and any(p.glob("*.msg"))

    if explicit is not None:
        p = Path(explicit)
        if ok(p):
            return p
        raise BagError(f"atk_msgs message folder {str(p)!r} has no *.msg files")
    env = os.environ.get("ATK_MSGS_DIR")
    if env and ok(Path(env)):
        return Path(env)
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        p = Path(prefix) / "share" / "atk_msgs" / "msg"
        if ok(p):
            return p
    try:
        spec = importlib.util.find_spec("atk_msgs")
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        # <prefix>/lib/pythonX.Y/site-packages/atk_msgs -> <prefix>/share/atk_msgs/msg
        p = Path(loc).resolve().parents[3] / "share" / "atk_msgs" / "msg"
        if ok(p):
            return p
    here = Path(__file__).resolve()
    for parent in here.parents:
        p = parent / "atk_msgs" / "msg"
        if ok(p):
            return p
        p = parent / "src" / "atk_msgs" / "msg"
        if ok(p):
            return p
    raise BagError("cannot find the atk_msgs *.msg files; tried: " + ", ".join(tried)
                   + ". Build the workspace (colcon build) or set ATK_MSGS_DIR to src/atk_msgs/msg.")


_TYPESTORES: dict[str, Typestore] = {}
_TYPESTORE_LOCK = threading.Lock()


def make_typestore(distro: Literal["kilted", "jazzy"] = "kilted",
                   msgs_dir: str | os.PathLike | None = None) -> Typestore:
    """A rosbags typestore with the ROS 2 ``distro`` types plus atk_msgs.

    The same definitions give the same RIHS01 type hashes as the real ROS 2
    build, so bags written with it carry the hashes a real recording carries.
    Cached per (distro, folder).
    """
    stores = {"kilted": Stores.ROS2_KILTED, "jazzy": Stores.ROS2_JAZZY}
    if distro not in stores:
        raise ValueError(f"distro must be one of {sorted(stores)}, got {distro!r}")
    folder = find_atk_msgs_dir(msgs_dir)
    key = f"{distro}:{folder.resolve()}"
    with _TYPESTORE_LOCK:
        if key in _TYPESTORES:
            return _TYPESTORES[key]
        store = get_typestore(stores[distro])
        types: dict = {}
        for f in sorted(folder.glob("*.msg")):
            types.update(get_types_from_msg(f.read_text(), f"atk_msgs/msg/{f.stem}"))
        store.register(types)
        _TYPESTORES[key] = store
        return store


def _register_from_bag(store: Typestore, connection: Any) -> None:
    """Register a type the store lacks from the definition stored in the bag."""
    if connection.msgtype in store.types:
        return
    msgdef = connection.msgdef
    if not msgdef.data:
        raise BagError(f"type {connection.msgtype} of topic {connection.topic} is unknown and the "
                       f"bag does not carry its definition")
    if msgdef.format.name == "MSG":
        from rosbags.typesys import get_types_from_msg as parse
        types: dict = {}
        # A ros2msg schema holds the main definition, then each dependency after
        # a line of '=' and 'MSG: pkg/Name'.
        parts = msgdef.data.split("=" * 80 + "\n")
        types.update(parse(parts[0], connection.msgtype))
        for part in parts[1:]:
            head, _, body = part.partition("\n")
            if head.startswith("MSG: "):
                name = head[5:].strip()
                if "/msg/" not in name:
                    name = name.replace("/", "/msg/", 1)
                types.update(parse(body, name))
    else:
        from rosbags.typesys import get_types_from_idl
        types = get_types_from_idl(msgdef.data)
    store.register({k: v for k, v in types.items() if k not in store.types})


# --------------------------------------------------------------------------- bag inspection


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagInfo:
    """What a bag holds: ``topics`` in the order of its metadata."""

    path: Path
    storage: str
    files: tuple[str, ...]
    topics: tuple[TopicInfo, ...]
    start_ns: int
    duration_ns: int
    message_count: int
    ros_distro: str | None

    def describe_topics(self) -> str:
        """``/topic (std_msgs/msg/String, 10 msgs), ...`` for messages."""
        if not self.topics:
            return "no topics"
        return ", ".join(f"{t.name} ({t.msgtype}, {t.count} msgs)" for t in self.topics)


def _open_reader(path: Path) -> Reader:
    try:
        reader = Reader(path)
        reader.open()
    except (FileNotFoundError, ReaderError) as exc:
        raise BagError(f"{path}: not a readable rosbag2 bag: {exc}") from exc
    return reader


def _raw_messages(reader: Reader, topics: dict[str, str] | None, start: int | None = None,
                  stop: int | None = None) -> Iterator[tuple[Any, int, bytes]]:
    """Yield (connection, log time ns, CDR bytes) for ``topics`` {name: type} (None: all).

    Goes to each storage file directly: rosbags' own filter matches the QoS
    in metadata.yaml against the QoS stored in the file and yields nothing
    when they differ, which real rosbag2 recordings do (the talker bags in
    tests/data/rosbag2 are an example). Split bags are read file by file in
    the order metadata.yaml lists them.
    """
    def wanted(c: Any) -> bool:
        return topics is None or topics.get(c.topic) == c.msgtype

    storages = getattr(reader.storage, "storages", None)
    if storages is None:  # a single .mcap/.db3 file
        yield from reader.messages(connections=[c for c in reader.connections if wanted(c)],
                                   start=start, stop=stop)
        return
    per_message = reader.compression_mode == "message"
    if per_message:
        from rosbags.rosbag2.reader import zstd
    for storage in storages:
        conns = [c for c in storage.connections if wanted(c)]
        if not conns:
            continue
        for conn, ts, data in storage.messages(conns, start, stop):
            yield conn, ts, (zstd.decompress(data) if per_message else data)


def inspect_bag(path: str | os.PathLike) -> BagInfo:
    """Open a bag (folder with metadata.yaml, or a single .mcap/.db3) and list it."""
    p = Path(path)
    reader = _open_reader(p)
    try:
        storage_files = getattr(reader.storage, "storages", None)
        files = tuple(Path(s.path).name for s in storage_files) if storage_files is not None else (p.name,)
        storage = "mcap" if any(f.endswith(".mcap") for f in files) else (
            "sqlite3" if any(f.endswith(".db3") for f in files) else "unknown")
        topics = tuple(TopicInfo(c.topic, c.msgtype, int(c.msgcount)) for c in reader.connections)
        return BagInfo(p, storage, files, topics, int(reader.start_time) if reader.message_count else 0,
                       int(reader.duration), int(reader.message_count), reader.ros_distro)
    finally:
        reader.close()


def read_messages(path: str | os.PathLike, topics: Sequence[str] | None = None,
                  typestore: Typestore | None = None) -> Iterator[tuple[str, int, Any]]:
    """Yield ``(topic, log_time_ns, message)`` deserialised, in log-time order per file.

    Types missing from the typestore are taken from the definitions stored in
    the bag (MCAP schemas, newer sqlite3 bags).
    """
    store = typestore or make_typestore()
    p = Path(path)
    reader = _open_reader(p)
    try:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for c in conns:
            _register_from_bag(store, c)
        for conn, ts, data in _raw_messages(reader, {c.topic: c.msgtype for c in conns}):
            yield conn.topic, ts, store.deserialize_cdr(data, conn.msgtype)
    finally:
        reader.close()


def find_bags(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand ``paths`` into bags: a bag folder, a .mcap/.db3 file, or a folder of bags.

    Returns (bags, not_bags) where not_bags are (path, reason) for the report.
    """
    bags: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            bad.append((p, "does not exist"))
        elif p.is_file():
            if p.suffix in (".mcap", ".db3"):
                bags.append(p)
            else:
                bad.append((p, f"not a bag: a {p.suffix or 'plain'} file, expected a rosbag2 folder, "
                               ".mcap or .db3"))
        elif (p / "metadata.yaml").is_file():
            bags.append(p)
        else:
            found = sorted({m.parent for m in p.rglob("metadata.yaml")})
            if found:
                bags.extend(found)
            else:
                bad.append((p, "no rosbag2 bag in this folder (no metadata.yaml found under it)"))
    return bags, bad


# --------------------------------------------------------------------------- label


@dataclass
class EpisodeLabel:
    """``<bag>/episode.yaml``: the operator's (or simulator's) verdict on an episode.

    success: True/False, None when unknown; note: free text; task: e.g.
    "sushi"; seed: simulator seed or None; perturbations: e.g. ["RP", "RB"];
    source: "recorder", "ros2 bag record", "sim_expert", ...; recorded_at:
    ISO-8601 UTC; extra: any further keys found in the file (kept).
    """

    success: bool | None = None
    note: str = ""
    task: str = ""
    seed: int | None = None
    perturbations: list[str] = field(default_factory=list)
    source: str = ""
    recorded_at: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.success is not None and not isinstance(self.success, (bool, np.bool_)):
            raise ValueError(f"EpisodeLabel.success must be true, false or null, got {self.success!r}")
        if self.success is not None:
            self.success = bool(self.success)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))):
            raise ValueError(f"EpisodeLabel.seed must be an integer or null, got {self.seed!r}")
        if not isinstance(self.perturbations, (list, tuple)) or not all(
                isinstance(x, str) for x in self.perturbations):
            raise ValueError(f"EpisodeLabel.perturbations must be a list of strings, got {self.perturbations!r}")
        self.perturbations = list(self.perturbations)
        for name in ("note", "task", "source", "recorded_at"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"EpisodeLabel.{name} must be a string, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        d = {"success": self.success, "note": self.note, "task": self.task,
             "seed": None if self.seed is None else int(self.seed),
             "perturbations": list(self.perturbations), "source": self.source,
             "recorded_at": self.recorded_at}
        d.update(self.extra)
        return d


def write_label(bag_dir: str | os.PathLike, label: EpisodeLabel) -> Path:
    """Write ``<bag_dir>/episode.yaml`` (atomically: temp file then rename)."""
    path = Path(bag_dir) / LABEL_FILE
    if not label.recorded_at:
        label.recorded_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("# Episode label (atk-ros): success true/false/null, note, task, seed.\n"
                   + yaml.safe_dump(label.to_dict(), sort_keys=False))
    tmp.replace(path)
    return path


def read_label(bag: str | os.PathLike) -> EpisodeLabel | None:
    """The label beside a bag, or None when the bag has none.

    For a bag folder: ``<bag>/episode.yaml``; for a single .mcap/.db3 file:
    ``<file>.episode.yaml``. A malformed file raises BagError naming it.
    """
    p = Path(bag)
    path = p / LABEL_FILE if p.is_dir() else p.with_name(p.name + "." + LABEL_FILE)
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BagError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise BagError(f"{path}: expected a mapping (success: ..., note: ...), got {type(data).__name__}")
    known = {k: data.pop(k) for k in ("success", "note", "task", "seed", "perturbations", "source",
                                      "recorded_at") if k in data}
    for k in ("note", "task", "source", "recorded_at"):
        if k in known and known[k] is None:
            known[k] = ""
        elif k in known and not isinstance(known[k], str):
            known[k] = str(known[k])
    if known.get("perturbations") is None:
        known.pop("perturbations", None)
    try:
        return EpisodeLabel(**known, extra=data)
    except ValueError as exc:
        raise BagError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BagTopics:
    """Topic names (relative, as in docs/interfaces.md)."""

    image: str = "camera/color/image_raw"
    camera_info: str = "camera/color/camera_info"
    depth: str = "camera/depth/image_raw"
    joint_states: str = "joint_states"
    joint_target: str = "joint_target"
    gripper_command: str = "gripper_command"

    def __post_init__(self) -> None:
        for name in ("image", "camera_info", "depth", "joint_states", "joint_target", "gripper_command"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip("/") or " " in v:
                raise ValueError(f"BagTopics.{name} must be a topic name, got {v!r}")


@dataclass(frozen=True)
class BagConversionConfig:
    """How bags become episodes.

    Alignment: the timeline is the colour images' stamps. ``joint_state_alignment``
    and ``target_alignment`` are "linear" (interpolate between the samples
    before and after the image stamp, both within ``tolerance_s`` of it) or
    "nearest" (the closest sample within ``tolerance_s``). Gripper commands
    are usually sent on change only, so ``gripper_alignment`` "hold" takes
    the latest command at or before the stamp (or the first one when it comes
    within ``tolerance_s`` after); "nearest" works as above. An image stamp
    outside a stream's sample range takes the end sample if within tolerance.

    Frames that cannot be aligned are dropped and counted in the report: at
    the start/end (recording started before the arm's topics, stopped after)
    as trimmed, elsewhere as gaps; an episode with more gap frames than
    ``max_gap_fraction`` of its images, or fewer than ``min_frames`` left,
    is skipped.

    action_source: "commands" (joint_target + gripper_command, the simulated
    expert and teleoperation) or "future_joint_state" (kinesthetic teaching:
    the measured joints ``action_horizon_s`` ahead are the target, gripper
    included; no command topics needed).
    stamp_source: "header" (the messages' header stamps, as the contract
    defines them) or "receive" (the bag's log times, for publishers with
    unset or foreign-clock stamps).
    namespace: None accepts a unique match of each topic under any
    namespace; a string ("" for none, "robot1") selects that namespace.
    skip_failed: skip episodes labelled success: false; require_label: skip
    bags without episode.yaml.
    frame_cache_mb: budget of the process-wide cache of decoded frames (all
    episodes together); prefetch: frames read in one pass over the bag when a
    sequential pass misses (see BagFrames).
    """

    topics: BagTopics = field(default_factory=BagTopics)
    namespace: str | None = None
    joint_state_alignment: Literal["linear", "nearest"] = "linear"
    target_alignment: Literal["linear", "nearest"] = "nearest"
    gripper_alignment: Literal["hold", "nearest"] = "hold"
    tolerance_s: float = 0.05
    stamp_source: Literal["header", "receive"] = "header"
    action_source: Literal["commands", "future_joint_state"] = "commands"
    action_horizon_s: float = 0.1
    min_frames: int = 10
    max_gap_fraction: float = 0.1
    skip_failed: bool = True
    require_label: bool = False
    joint_names: tuple[str, ...] = UR_JOINT_NAMES
    gripper_joint: str = GRIPPER_JOINT
    frame_cache_mb: float = 256.0
    prefetch: int = 8
    distro: Literal["kilted", "jazzy"] = "kilted"

    def __post_init__(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise ValueError(f"BagConversionConfig.{name} must be one of {list(options)}, "
                                 f"got {getattr(self, name)!r}")

        if not isinstance(self.topics, BagTopics):
            raise ValueError(f"BagConversionConfig.topics must be a BagTopics, got {self.topics!r}")
        if self.namespace is not None and (not isinstance(self.namespace, str) or " " in self.namespace):
            raise ValueError(f"BagConversionConfig.namespace must be None or a namespace, got {self.namespace!r}")
        choice("joint_state_alignment", ("linear", "nearest"))
        choice("target_alignment", ("linear", "nearest"))
        choice("gripper_alignment", ("hold", "nearest"))
        choice("stamp_source", ("header", "receive"))
        choice("action_source", ("commands", "future_joint_state"))
        choice("distro", ("kilted", "jazzy"))
        if not (isinstance(self.tolerance_s, (int, float)) and 0 < self.tolerance_s <= 10):
            raise ValueError(f"BagConversionConfig.tolerance_s must be in (0, 10] s, got {self.tolerance_s!r}")
        if not (isinstance(self.action_horizon_s, (int, float)) and 0 < self.action_horizon_s <= 10):
            raise ValueError(f"BagConversionConfig.action_horizon_s must be in (0, 10] s, "
                             f"got {self.action_horizon_s!r}")
        if not (isinstance(self.min_frames, int) and self.min_frames >= 1):
            raise ValueError(f"BagConversionConfig.min_frames must be an integer >= 1, got {self.min_frames!r}")
        if not (isinstance(self.max_gap_fraction, (int, float)) and 0 <= self.max_gap_fraction <= 1):
            raise ValueError(f"BagConversionConfig.max_gap_fraction must be in [0, 1], "
                             f"got {self.max_gap_fraction!r}")
        if len(self.joint_names) != 6 or len(set(self.joint_names)) != 6:
            raise ValueError(f"BagConversionConfig.joint_names must be 6 distinct names, got {self.joint_names!r}")
        if not self.gripper_joint or self.gripper_joint in self.joint_names:
            raise ValueError(f"BagConversionConfig.gripper_joint must be a name not among the arm joints, "
                             f"got {self.gripper_joint!r}")
        if not (isinstance(self.frame_cache_mb, (int, float)) and 0 <= self.frame_cache_mb <= 1e6):
            raise ValueError(f"BagConversionConfig.frame_cache_mb must be in [0, 1e6] MB, "
                             f"got {self.frame_cache_mb!r}")
        if not (isinstance(self.prefetch, int) and 1 <= self.prefetch <= 256):
            raise ValueError(f"BagConversionConfig.prefetch must be an integer in [1, 256], "
                             f"got {self.prefetch!r}")


# --------------------------------------------------------------------------- report


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


# --------------------------------------------------------------------------- lazy frames


def _decode_image(msg: Any, msgtype: str) -> np.ndarray:
    """sensor_msgs Image/CompressedImage -> (H, W, 3) uint8 RGB."""
    if msgtype == COMPRESSED_IMAGE_TYPE:
        import cv2

        bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise BagError(f"cannot decode compressed image (format {msg.format!r})")
        return np.ascontiguousarray(bgr[:, :, ::-1])
    enc = msg.encoding.lower()
    ch = _COLOR_ENCODINGS.get(enc)
    if ch is None:
        raise BagError(f"image encoding {msg.encoding!r} is not supported; use one of {sorted(_COLOR_ENCODINGS)}")
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
        return reader if reader is not None else _open_reader(path)

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

    ``frames[t]`` is (H, W, 3) uint8 RGB. Holds the bag path and, per frame,
    the message's (log time ns, rank among messages with that log time);
    readers come from a small process-wide pool (:data:`READERS`), so
    hundreds of episodes never exhaust file handles, and the object pickles
    as that data, so worker processes can use it. Decoded frames go to the process-wide :data:`FRAME_CACHE`. A
    miss right after frame t-1 (a sequential pass) reads ``prefetch`` frames
    onward in one pass over the bag; any other miss reads just that frame.
    """

    def __init__(self, bag: str | os.PathLike, topic: str, msgtype: str,
                 keys: Sequence[tuple[int, int]], image_size: tuple[int, int],
                 prefetch: int = 8, distro: str = "kilted") -> None:
        self.bag = Path(bag)
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
        start, stop = self.keys[t][0], self.keys[last][0] + 1
        rank: dict[int, int] = {}
        found: np.ndarray | None = None
        self.reads += 1
        reader = READERS.checkout(self.bag)
        try:
            for conn, ts, data in _raw_messages(reader, {self.topic: self.msgtype}, start, stop):
                r = rank.get(ts, 0)
                rank[ts] = r + 1
                i = wanted.get((ts, r))
                if i is None:
                    continue
                w, h = self.image_size
                img = _decode_image(store.deserialize_cdr(data, conn.msgtype), conn.msgtype)
                if img.shape != (h, w, 3):
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


# --------------------------------------------------------------------------- alignment


def align(sample_t: np.ndarray, values: np.ndarray, query_t: np.ndarray, method: str,
          tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Align a sampled signal to query times.

    sample_t: (K,) seconds, increasing; values: (K, D); query_t: (T,).
    method: "linear", "nearest" or "hold" (see BagConversionConfig).
    Returns (out (T, D) float64, valid (T,) bool); invalid rows are NaN.
    """
    sample_t = np.asarray(sample_t, np.float64)
    values = np.asarray(values, np.float64).reshape(len(sample_t), -1)
    q = np.asarray(query_t, np.float64)
    out = np.full((len(q), values.shape[1]), np.nan)
    valid = np.zeros(len(q), bool)
    if len(sample_t) == 0:
        return out, valid
    # tiny slack so that stamps equal up to float rounding are accepted
    tol = tolerance + 1e-9
    k = len(sample_t)
    hi = np.searchsorted(sample_t, q, side="left")          # first sample >= q
    lo = np.searchsorted(sample_t, q, side="right") - 1     # last sample <= q
    lo_c, hi_c = np.clip(lo, 0, k - 1), np.clip(hi, 0, k - 1)
    d_lo = np.where(lo >= 0, q - sample_t[lo_c], np.inf)
    d_hi = np.where(hi < k, sample_t[hi_c] - q, np.inf)
    if method == "nearest":
        use_lo = d_lo <= d_hi
        idx = np.where(use_lo, lo_c, hi_c)
        valid = np.minimum(d_lo, d_hi) <= tol
        out[valid] = values[idx[valid]]
    elif method == "hold":
        before = lo >= 0
        out[before] = values[lo_c[before]]
        valid = before.copy()
        first = ~before & (d_hi <= tol)
        out[first] = values[hi_c[first]]
        valid |= first
    elif method == "linear":
        exact = d_lo == 0
        both = (lo >= 0) & (hi < k) & (d_lo <= tol) & (d_hi <= tol) & ~exact
        span = np.where(both, sample_t[hi_c] - sample_t[lo_c], 1.0)
        w = np.where(both, d_lo / np.where(span > 0, span, 1.0), 0.0)[:, None]
        out[both] = ((1 - w) * values[lo_c] + w * values[hi_c])[both]
        out[exact] = values[lo_c[exact]]
        # outside the sampled range: the end sample, within tolerance
        edge = ~both & ~exact & (((lo < 0) & (d_hi <= tol)) | ((hi >= k) & (d_lo <= tol)))
        out[edge] = values[np.where(lo[edge] < 0, hi_c[edge], lo_c[edge])]
        valid = both | exact | edge
    else:
        raise ValueError(f"alignment method must be linear, nearest or hold, got {method!r}")
    return out, valid


# --------------------------------------------------------------------------- reading one bag


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


def _series(stamps: list[int], values: list[np.ndarray], what: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sort by stamp, drop exact duplicate stamps (noted); return (t_s (K,), values (K, D))."""
    t = np.asarray(stamps, np.int64)
    v = np.asarray(values, np.float64).reshape(len(stamps), -1)
    order = np.argsort(t, kind="stable")
    if np.any(np.diff(t) < 0):
        notes.append(f"{what}: {int(np.sum(np.diff(t) < 0))} messages out of stamp order (sorted)")
    t, v = t[order], v[order]
    keep = np.ones(len(t), bool)
    keep[1:] = np.diff(t) > 0
    if not keep.all():
        notes.append(f"{what}: {int((~keep).sum())} messages with a repeated stamp (the first one kept)")
    return t[keep] * 1e-9, v[keep]


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
    nan_counts: dict[str, int] = {}
    arm = list(cfg.joint_names)
    js_names_seen: tuple[str, ...] | None = None
    rank: dict[int, int] = {}
    zero_stamps: dict[str, int] = {}

    reader = _open_reader(bag)
    try:
        wanted = {t.name: t.msgtype for t in chosen.values()}
        for c in reader.connections:
            if wanted.get(c.topic) == c.msgtype:
                _register_from_bag(store, c)
        for conn, log_ts, data in _raw_messages(reader, wanted):
            key = by_topic[conn.topic]
            msg = store.deserialize_cdr(data, conn.msgtype)
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
                if conn.msgtype == IMAGE_TYPE:
                    img_sizes.add((int(msg.width), int(msg.height)))
                    encodings.add(msg.encoding)
                else:
                    encodings.add(f"compressed:{msg.format}")
                    if not img_sizes:  # only decoding tells a compressed image's size
                        h_, w_ = _decode_image(msg, conn.msgtype).shape[:2]
                        img_sizes.add((w_, h_))
            elif key == "camera_info":
                caminfo = caminfo if caminfo is not None else msg
                caminfo_sizes.add((int(msg.width), int(msg.height)))
            elif key == "depth":
                depth_count += 1
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
    bad_enc = [e for e in encodings if not e.startswith("compressed:") and e.lower() not in _COLOR_ENCODINGS]
    if bad_enc:
        raise _Skip(f"{chosen['image'].name}: unsupported image encoding {bad_enc}; "
                    f"supported: {sorted(_COLOR_ENCODINGS)} or CompressedImage")
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
    js_s, js_vals = _series(js_t, js_v, chosen["joint_states"].name, notes)
    proprio, ok_p = align(js_s, js_vals, q, cfg.joint_state_alignment, tol)
    if cfg.action_source == "commands":
        tg_s, tg_vals = _series(tg_t, tg_v, chosen["joint_target"].name, notes)
        gc_s, gc_vals = _series(gc_t, gc_v, chosen["gripper_command"].name, notes)
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
    if caminfo is not None:
        meta["camera_info"] = {"width": int(caminfo.width), "height": int(caminfo.height),
                               "frame_id": caminfo.header.frame_id,
                               "distortion_model": caminfo.distortion_model,
                               "k": [float(x) for x in caminfo.k], "d": [float(x) for x in caminfo.d]}
    entry.frames = len(sel)
    try:
        return Episode(name=_episode_name(bag), frames=frames, stamps=q[sel], proprio=proprio[sel],
                       actions=actions[sel], success=entry.success, meta=meta)
    except DatasetError as exc:
        raise _Skip(str(exc)) from exc


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
            entry.status, entry.reason, entry.frames = "skipped", str(exc), 0
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


# --------------------------------------------------------------------------- writing


def _qos(reliable: bool, depth: int, transient: bool = False) -> Qos:
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth,
               QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if transient else QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


#: Offered QoS per topic as docs/interfaces.md gives it (what the publishers offer).
SENSOR_QOS = _qos(reliable=False, depth=5)
COMMAND_QOS = _qos(reliable=True, depth=1)


def _ns_topic(namespace: str, name: str) -> str:
    ns = namespace.strip("/")
    return "/" + (f"{ns}/" if ns else "") + name.strip("/")


def _enable_compression(writer: Writer, storage: str) -> None:
    """zstd chunk compression (MCAP's own, as `ros2 bag record --storage-preset-profile
    zstd_fast` writes it); sqlite3 bags compress each message instead."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode

    mode = CompressionMode.STORAGE if storage == "mcap" else CompressionMode.MESSAGE
    writer.set_compression(mode, CompressionFormat.ZSTD)


class EpisodeBagWriter:
    """Write one episode as a rosbag2 bag (MCAP unless told sqlite3), message by message.

    Topics (absolute, as ``ros2 bag record`` names them): ``/<ns>/camera/color/
    image_raw`` (rgb8), ``.../camera_info``, optional ``camera/depth/image_raw``
    (16UC1 mm), ``joint_states`` (6 UR joints + gripper), ``joint_target``
    (6 UR joints), ``gripper_command``. Stamps are seconds; the log time of
    each message is its stamp plus ``receive_delay_s`` (in simulation
    messages arrive when they are made). Use as a context manager or call
    :meth:`close` with the label.
    """

    def __init__(self, out_dir: str | os.PathLike, *, topics: BagTopics = BagTopics(),
                 namespace: str = "", camera_frame_id: str = "camera_color_optical_frame",
                 joint_names: Sequence[str] = UR_JOINT_NAMES, gripper_joint: str = GRIPPER_JOINT,
                 with_depth: bool = False, receive_delay_s: float = 0.0,
                 storage: Literal["mcap", "sqlite3"] = "mcap", compress: bool = False,
                 distro: Literal["kilted", "jazzy"] = "kilted") -> None:
        if len(joint_names) != 6:
            raise ValueError(f"joint_names must be the 6 UR joints, got {list(joint_names)}")
        if not (0 <= receive_delay_s < 10):
            raise ValueError(f"receive_delay_s must be in [0, 10) s, got {receive_delay_s!r}")
        self.path = Path(out_dir)
        self.store = make_typestore(distro)
        self.frame_id = camera_frame_id
        self.joint_names = list(joint_names)
        self.gripper_joint = gripper_joint
        self.delay_ns = int(round(receive_delay_s * 1e9))
        self._image_size: tuple[int, int] | None = None
        self.counts: dict[str, int] = {}
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
        try:
            self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=plugins[storage])
            if compress:
                _enable_compression(self._writer, storage)
            self._writer.open()
        except WriterError as exc:
            raise BagError(f"cannot create bag {self.path}: {exc}") from exc
        plan = [("image", topics.image, IMAGE_TYPE, SENSOR_QOS),
                ("camera_info", topics.camera_info, CAMERA_INFO_TYPE, SENSOR_QOS)]
        if with_depth:
            plan.append(("depth", topics.depth, IMAGE_TYPE, SENSOR_QOS))
        plan += [("joint_states", topics.joint_states, JOINT_STATE_TYPE, SENSOR_QOS),
                 ("joint_target", topics.joint_target, JOINT_STATE_TYPE, COMMAND_QOS),
                 ("gripper_command", topics.gripper_command, GRIPPER_COMMAND_TYPE, COMMAND_QOS)]
        self._conns = {}
        for key, name, msgtype, qos in plan:
            self._conns[key] = self._writer.add_connection(
                _ns_topic(namespace, name), msgtype, typestore=self.store, offered_qos_profiles=[qos])
            self.counts[key] = 0

    # -- message builders
    def _header(self, stamp_s: float, frame_id: str) -> Any:
        ns = int(round(float(stamp_s) * 1e9))
        if ns < 0:
            raise ValueError(f"stamp must be >= 0 s, got {stamp_s!r}")
        T = self.store.types
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000),
            frame_id=frame_id)

    def _write(self, key: str, stamp_s: float, msg: Any, msgtype: str) -> None:
        if key not in self._conns:
            raise BagError(f"this writer has no {key} topic (with_depth=False?)")
        log_ns = int(round(float(stamp_s) * 1e9)) + self.delay_ns
        self._writer.write(self._conns[key], log_ns, bytes(self.store.serialize_cdr(msg, msgtype)))
        self.counts[key] += 1

    def write_image(self, stamp_s: float, image: np.ndarray, camera_info: "CameraInfoData") -> None:
        """image: (H, W, 3) uint8 RGB; also writes the camera info with the same stamp."""
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        if self._image_size is None:
            self._image_size = (w, h)
        elif self._image_size != (w, h):
            raise ValueError(f"image size changed within the episode: {w}x{h} after "
                             f"{self._image_size[0]}x{self._image_size[1]}")
        if (camera_info.width, camera_info.height) != (w, h):
            raise ValueError(f"camera_info is {camera_info.width}x{camera_info.height}, image is {w}x{h}")
        T = self.store.types
        hdr = self._header(stamp_s, self.frame_id)
        msg = T[IMAGE_TYPE](header=hdr, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                            data=np.ascontiguousarray(img).reshape(-1))
        self._write("image", stamp_s, msg, IMAGE_TYPE)
        self._write("camera_info", stamp_s, camera_info.to_msg(self.store, hdr), CAMERA_INFO_TYPE)

    def write_depth(self, stamp_s: float, depth_mm: np.ndarray) -> None:
        """depth_mm: (H, W) uint16 millimetres, registered to the colour camera."""
        d = np.asarray(depth_mm)
        if d.ndim != 2 or d.dtype != np.uint16:
            raise ValueError(f"depth must be (H, W) uint16 mm, got {d.shape} {d.dtype}")
        h, w = d.shape
        T = self.store.types
        msg = T[IMAGE_TYPE](header=self._header(stamp_s, self.frame_id), height=h, width=w,
                            encoding="16UC1", is_bigendian=0, step=w * 2,
                            data=np.ascontiguousarray(d.astype("<u2")).view(np.uint8).reshape(-1))
        self._write("depth", stamp_s, msg, IMAGE_TYPE)

    def write_joint_state(self, stamp_s: float, positions: np.ndarray) -> None:
        """positions: (7,) = 6 UR joints (rad) + gripper (0 open .. 1 closed)."""
        p = np.asarray(positions, np.float64).reshape(-1)
        if p.shape != (PROPRIO_DIM,):
            raise ValueError(f"joint state must be (7,) = 6 joints + gripper, got {p.shape}")
        T = self.store.types
        msg = T[JOINT_STATE_TYPE](header=self._header(stamp_s, ""),
                                  name=self.joint_names + [self.gripper_joint], position=p,
                                  velocity=np.zeros(0), effort=np.zeros(0))
        self._write("joint_states", stamp_s, msg, JOINT_STATE_TYPE)

    def write_command(self, stamp_s: float, joint_target: np.ndarray, gripper: float,
                      gripper_speed: float = 1.0, gripper_force: float = 1.0) -> None:
        """joint_target: (6,) rad; gripper: 0 open .. 1 closed; stamp = the observation's stamp."""
        q = np.asarray(joint_target, np.float64).reshape(-1)
        if q.shape != (ACTION_DIM - 1,):
            raise ValueError(f"joint target must be (6,) rad, got {q.shape}")
        if not 0.0 <= float(gripper) <= 1.0:
            raise ValueError(f"gripper command must be in 0..1, got {gripper!r}")
        T = self.store.types
        hdr = self._header(stamp_s, "")
        self._write("joint_target", stamp_s,
                    T[JOINT_STATE_TYPE](header=hdr, name=list(self.joint_names), position=q,
                                        velocity=np.zeros(0), effort=np.zeros(0)), JOINT_STATE_TYPE)
        self._write("gripper_command", stamp_s,
                    T[GRIPPER_COMMAND_TYPE](header=hdr, position=float(gripper), speed=float(gripper_speed),
                                            force=float(gripper_force)), GRIPPER_COMMAND_TYPE)

    def close(self, label: EpisodeLabel | None = None) -> Path:
        """Finish the bag (metadata.yaml) and write the label beside it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None  # type: ignore[assignment]
            if label is not None:
                write_label(self.path, label)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None  # type: ignore[assignment]

    def __enter__(self) -> "EpisodeBagWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class CameraInfoData:
    """Pinhole intrinsics for sensor_msgs/CameraInfo: k (3, 3) pixels, d (5,) plumb_bob."""

    width: int
    height: int
    k: tuple[float, ...]
    d: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    distortion_model: str = "plumb_bob"

    def __post_init__(self) -> None:
        if not (self.width > 0 and self.height > 0):
            raise ValueError(f"CameraInfoData width/height must be > 0, got {self.width}x{self.height}")
        if len(np.asarray(self.k).reshape(-1)) != 9:
            raise ValueError(f"CameraInfoData.k must have 9 values (3x3), got {self.k!r}")

    @staticmethod
    def pinhole(width: int, height: int, fx: float, fy: float | None = None,
                cx: float | None = None, cy: float | None = None) -> "CameraInfoData":
        fy = fx if fy is None else fy
        cx = (width - 1) / 2 if cx is None else cx
        cy = (height - 1) / 2 if cy is None else cy
        return CameraInfoData(width, height, (fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0))

    def to_msg(self, store: Typestore, header: Any) -> Any:
        T = store.types
        k = np.asarray(self.k, np.float64).reshape(3, 3)
        p = np.zeros((3, 4))
        p[:, :3] = k
        return T[CAMERA_INFO_TYPE](
            header=header, height=self.height, width=self.width, distortion_model=self.distortion_model,
            d=np.asarray(self.d, np.float64), k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1),
            binning_x=0, binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                       do_rectify=False))


def write_episode_bag(out_dir: str | os.PathLike, *, stamps: np.ndarray, images: Sequence[np.ndarray],
                      camera_info: CameraInfoData, joint_states: np.ndarray, joint_targets: np.ndarray,
                      gripper_commands: np.ndarray, label: EpisodeLabel | None = None,
                      joint_state_stamps: np.ndarray | None = None,
                      command_stamps: np.ndarray | None = None,
                      depth: Sequence[np.ndarray] | None = None, namespace: str = "",
                      topics: BagTopics = BagTopics(), receive_delay_s: float = 0.0,
                      storage: Literal["mcap", "sqlite3"] = "mcap", compress: bool = False,
                      distro: Literal["kilted", "jazzy"] = "kilted") -> Path:
    """Write a simulated episode as a bag a real recording could not be told from.

    stamps: (T,) s image stamps; images: T arrays (H, W, 3) uint8 RGB (any
    sequence, e.g. a lazy one); camera_info: intrinsics; joint_states: (J, 7)
    measured joints + gripper at ``joint_state_stamps`` (J,) (default: the
    image stamps); joint_targets: (C, 6) rad and gripper_commands: (C,) 0..1
    at ``command_stamps`` (C,) (default: the image stamps, as the expert
    stamps a command with its observation's stamp); depth: optional T arrays
    (H, W) uint16 mm; compress: zstd (MCAP chunks, sqlite3 messages).
    Messages are written in time order. Returns the bag folder.
    """
    stamps = np.asarray(stamps, np.float64).reshape(-1)
    js = np.asarray(joint_states, np.float64)
    tg = np.asarray(joint_targets, np.float64)
    gc = np.asarray(gripper_commands, np.float64).reshape(-1)
    js_t = stamps if joint_state_stamps is None else np.asarray(joint_state_stamps, np.float64).reshape(-1)
    cm_t = stamps if command_stamps is None else np.asarray(command_stamps, np.float64).reshape(-1)
    if len(images) != len(stamps):
        raise ValueError(f"{len(images)} images but {len(stamps)} stamps")
    if depth is not None and len(depth) != len(stamps):
        raise ValueError(f"{len(depth)} depth images but {len(stamps)} stamps")
    if js.ndim != 2 or js.shape != (len(js_t), PROPRIO_DIM):
        raise ValueError(f"joint_states must be ({len(js_t)}, 7), got {js.shape}")
    if tg.ndim != 2 or tg.shape != (len(cm_t), 6):
        raise ValueError(f"joint_targets must be ({len(cm_t)}, 6), got {tg.shape}")
    if gc.shape != (len(cm_t),):
        raise ValueError(f"gripper_commands must be ({len(cm_t)},), got {gc.shape}")
    # (time, kind order, index): images before states before commands at equal time,
    # the order in which a simulator step produces them.
    events = sorted([(t, 0, i) for i, t in enumerate(stamps)] + [(t, 1, i) for i, t in enumerate(js_t)]
                    + [(t, 2, i) for i, t in enumerate(cm_t)])
    writer = EpisodeBagWriter(out_dir, topics=topics, namespace=namespace, with_depth=depth is not None,
                              receive_delay_s=receive_delay_s, storage=storage, compress=compress,
                              distro=distro)
    try:
        for t, kind, i in events:
            if kind == 0:
                writer.write_image(t, images[i], camera_info)
                if depth is not None:
                    writer.write_depth(t, depth[i])
            elif kind == 1:
                writer.write_joint_state(t, js[i])
            else:
                writer.write_command(t, tg[i], float(gc[i]))
    except BaseException:
        writer.abort()
        raise
    return writer.close(label)
