"""Opening a bag, listing what it holds, and reading its messages."""
from __future__ import annotations

import os
import sqlite3
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import yaml
from rosbags.interfaces import MessageDefinition, MessageDefinitionFormat
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.rosbag2 import storage_mcap as _storage_mcap
from rosbags.typesys.store import Typestore

from .common import BagError
from .typestore import make_typestore, normalize_msgtype, register_from_bag, service_of_event


class BagWarning(UserWarning):
    """A topic of a bag was skipped because its messages cannot be decoded."""


def _tolerant_get_msgdef(schema: Any) -> MessageDefinition:
    """rosbags' MCAP schema reading, accepting every schema encoding.

    rosbag2 writes the encoding "unknown" for a service whose .srv file has
    no message dependencies (std_srvs/srv/Trigger, ...) and for names it
    cannot resolve; rosbags maps only ros2msg/ros2idl/"" and raises a
    KeyError on opening the whole bag. Unknown encodings keep their text
    with format NONE, and the topic is decoded (or skipped) on its own.
    """
    if schema is not None and schema.encoding not in ("ros2msg", "ros2idl", "omgidl", ""):
        return MessageDefinition(MessageDefinitionFormat.NONE, schema.data)
    return _ROSBAGS_GET_MSGDEF(schema)


_ROSBAGS_GET_MSGDEF = _storage_mcap.get_msgdef
if getattr(_storage_mcap.get_msgdef, "__name__", "") != "_tolerant_get_msgdef":
    _storage_mcap.get_msgdef = _tolerant_get_msgdef


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


REINDEX_HINT = "recover it with: python -m atk_policy.bags reindex"


def _cut_off(folder: Path) -> str | None:
    """Why a folder without metadata.yaml that holds storage files is not a bag yet, or None."""
    files = sorted(f.name for f in folder.iterdir() if f.suffix in (".mcap", ".db3"))
    if not files or (folder / "metadata.yaml").is_file():
        return None
    return (f"holds {', '.join(files)} but no metadata.yaml: a recording whose writer was stopped without "
            f"closing the bag (recorder killed?); {REINDEX_HINT} {folder}")


def open_reader(path: Path) -> Reader:
    if path.is_dir() and (why := _cut_off(path)):
        raise BagError(f"{path}: {why}")
    try:
        reader = Reader(path)
        reader.open()
    except (FileNotFoundError, ReaderError) as exc:
        hint = (f"; if its writer was stopped before closing it, {REINDEX_HINT} {path}"
                if path.is_dir() and any(path.glob("*.mcap")) else "")
        raise BagError(f"{path}: not a readable rosbag2 bag: {exc}{hint}") from exc
    except KeyError as exc:
        # rosbags' sqlite3 storage knows only the ros2msg and ros2idl encodings
        # of message_definitions; rosbag2 writes "" or "unknown" for a type
        # whose definition it could not find when recording.
        raise BagError(f"{path}: the bag stores a message definition with encoding {exc}, which the rosbags "
                       f"library cannot open; convert the bag to MCAP (ros2 bag convert) to read it") from exc
    return reader


def raw_messages(reader: Reader, topics: dict[str, str] | None, start: int | None = None,
                  stop: int | None = None) -> Iterator[tuple[Any, int, bytes]]:
    """Yield (connection, log time ns, CDR bytes) for ``topics`` {name: type} (None: all).

    Goes to each storage file directly: rosbags' own filter matches the QoS
    in metadata.yaml against the QoS stored in the file and yields nothing
    when they differ, which real rosbag2 recordings do (the talker bags in
    tests/data/rosbag2 are an example). Split bags are read file by file in
    the order metadata.yaml lists them.
    """
    def wanted(c: Any) -> bool:
        return topics is None or normalize_msgtype(topics.get(c.topic, "")) == normalize_msgtype(c.msgtype)

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


def _bag_files(reader: Reader, path: Path) -> tuple[str, ...]:
    """The storage files as metadata.yaml names them (not the decompressed
    temporary copies of a file-compressed bag)."""
    if getattr(reader.storage, "storages", None) is None:
        return (path.name,)
    try:
        meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        return tuple(Path(f).name for f in meta["relative_file_paths"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):  # opened by rosbags, so not expected
        return tuple(Path(s.path).name for s in reader.storage.storages)


def _counted(reader: Reader) -> tuple[dict[int, int], int, int] | None:
    """(messages per connection id, first and last log time) counted in the storage
    files, when metadata.yaml says the bag is empty (a rebuilt or hand-made
    metadata.yaml can say 0 while the files hold messages); None when
    metadata.yaml gives counts."""
    if reader.message_count:
        return None
    counts: dict[int, int] = {}
    first, last = 2**63 - 1, -1
    for conn, ts, _ in raw_messages(reader, None):
        counts[conn.id] = counts.get(conn.id, 0) + 1
        first, last = min(first, ts), max(last, ts)
    return counts, first, last


def inspect_bag(path: str | os.PathLike) -> BagInfo:
    """Open a bag (folder with metadata.yaml, or a single .mcap/.db3) and list it.

    Type names are given in the ``pkg/msg/Type`` form (old-style ``pkg/Type``
    names are converted). When metadata.yaml counts no messages, the counts,
    start and duration come from the storage files.
    """
    p = Path(path)
    reader = open_reader(p)
    try:
        files = _bag_files(reader, p)
        storage = "mcap" if any(f.endswith((".mcap", ".mcap.zstd")) for f in files) else (
            "sqlite3" if any(f.endswith((".db3", ".db3.zstd")) for f in files) else "unknown")
        counted = _counted(reader)
        topics = tuple(TopicInfo(c.topic, normalize_msgtype(c.msgtype),
                                 int(c.msgcount) if counted is None else counted[0].get(c.id, 0))
                       for c in reader.connections)
        if counted is None:
            start, duration, total = (int(reader.start_time) if reader.message_count else 0,
                                      int(reader.duration), int(reader.message_count))
        elif counted[0]:
            counts, first, last = counted
            start, duration, total = first, last - first + 1, sum(counts.values())
        else:
            start, duration, total = 0, 0, 0
        return BagInfo(p, storage, files, topics, start, duration, total, reader.ros_distro)
    finally:
        reader.close()


def _sqlite_definitions(reader: Reader) -> dict[str, str]:
    """message_definitions of the bag's sqlite3 files, {type name: text}.

    rosbag2 files a service event topic's definition under the service type
    (``pkg/srv/Name``) while the topic has type ``pkg/srv/Name_Event``, so
    rosbags does not find it; this reads the table directly (read-only).
    """
    out: dict[str, str] = {}
    storages = getattr(reader.storage, "storages", None)
    paths = [Path(s.path) for s in storages] if storages is not None else [Path(reader.path)]
    for path in paths:
        if path.suffix != ".db3":
            continue
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = con.execute("SELECT topic_type, encoded_message_definition FROM message_definitions")
                out.update({name: text for name, text in rows if text})
            finally:
                con.close()
        except sqlite3.Error:  # no such table: bags before rosbag2 version 8
            continue
    return out


def read_messages(path: str | os.PathLike, topics: Sequence[str] | None = None,
                  typestore: Typestore | None = None,
                  skipped: dict[str, str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """Yield ``(topic, log_time_ns, message)`` deserialised, in log-time order per file.

    Types missing from the typestore are taken from the definitions stored in
    the bag (MCAP schemas, newer sqlite3 bags), topic by topic when its first
    message is read; service event topics (``/<service>/_service_event``,
    type ``pkg/srv/Name_Event``, recorded by rosbag2 since Jazzy) are decoded
    from the service's definition. A topic whose type cannot be made known,
    or whose messages do not deserialise, is skipped and reported: in
    ``skipped`` ({topic: reason}) when given, else as a :class:`BagWarning`.
    The other topics are read.
    """
    store = typestore or make_typestore()
    p = Path(path)
    reader = open_reader(p)
    report = skipped if skipped is not None else {}
    try:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        resolved: dict[int, str | None] = {}
        sqlite_defs: dict[str, str] | None = None
        for conn, ts, data in raw_messages(reader, {c.topic: c.msgtype for c in conns}):
            name = resolved.get(conn.id, "")
            if name == "":
                definition = None
                service = service_of_event(normalize_msgtype(conn.msgtype))
                if service and not conn.msgdef.data:
                    sqlite_defs = _sqlite_definitions(reader) if sqlite_defs is None else sqlite_defs
                    definition = sqlite_defs.get(service) or sqlite_defs.get(conn.msgtype)
                try:
                    name = register_from_bag(store, conn, definition)
                except BagError as exc:
                    name = None
                    _skip(report, skipped is None, conn.topic, str(exc))
                resolved[conn.id] = name
            if name is None:
                continue
            try:
                msg = store.deserialize_cdr(data, name)
            except Exception as exc:  # a message that does not match its definition
                resolved[conn.id] = None
                _skip(report, skipped is None, conn.topic,
                      f"a message of type {conn.msgtype} does not deserialise ({type(exc).__name__}: {exc})")
                continue
            yield conn.topic, ts, msg
    finally:
        reader.close()


def _skip(report: dict[str, str], warn: bool, topic: str, reason: str) -> None:
    report[topic] = reason
    if warn:
        warnings.warn(f"skipping topic {topic}: {reason}", BagWarning, stacklevel=3)


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
            # folders a killed writer left: storage files, no metadata.yaml; named, not dropped
            cut = sorted({f.parent for f in (*p.rglob("*.mcap"), *p.rglob("*.db3"))
                          if not any(f.parent == b or b in f.parents for b in found)})
            bad.extend((c, why) for c in cut if (why := _cut_off(c)))
            if found:
                bags.extend(found)
            elif not cut:
                bad.append((p, "no rosbag2 bag in this folder (no metadata.yaml found under it)"))
    return bags, bad
