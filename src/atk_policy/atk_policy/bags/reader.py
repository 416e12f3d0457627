"""Opening a bag, listing what it holds, and reading its messages."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from rosbags.rosbag2 import Reader, ReaderError
from rosbags.typesys.store import Typestore

from .common import BagError
from .typestore import make_typestore, register_from_bag


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


def open_reader(path: Path) -> Reader:
    try:
        reader = Reader(path)
        reader.open()
    except (FileNotFoundError, ReaderError) as exc:
        raise BagError(f"{path}: not a readable rosbag2 bag: {exc}") from exc
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
    reader = open_reader(p)
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
    reader = open_reader(p)
    try:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for c in conns:
            register_from_bag(store, c)
        for conn, ts, data in raw_messages(reader, {c.topic: c.msgtype for c in conns}):
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
