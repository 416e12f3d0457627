"""Recovering a bag whose writer never closed it (recorder killed, power lost).

A killed writer leaves an MCAP file without its summary and footer and no
metadata.yaml, which no rosbag2 reader opens. The complete records at the
front of the file still hold everything written until then: the schemas,
the channels and the chunks flushed to disk (the rosbags writer flushes a
chunk every 1 MiB, so at most the last MiB is lost). :func:`reindex_bag`
reads those records one by one, stopping at the first incomplete or
damaged one, and writes them again as a complete bag in the same folder:
``<name>.mcap`` plus ``metadata.yaml``, the damaged file kept beside it as
``<name>.mcap.partial``. A label (``episode.yaml``, success unknown) is
written when the folder has none, saying that the bag was recovered.

An sqlite3 bag keeps what was committed before the writer stopped (the
recorder node commits every MiB of messages); the storage file is read
from a copy, so SQLite rolls an interrupted transaction back there, and
written again the same way.

Command line: ``python -m atk_policy.bags reindex BAG...``.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import sys
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from rosbags.interfaces import MessageDefinition, MessageDefinitionFormat
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.rosbag2 import storage_mcap as _storage_mcap
from rosbags.rosbag2.metadata import parse_qos

from .common import BAG_VERSION, LABEL_FILE, BagError
from .labels import EpisodeLabel, write_label
from .reader import open_reader
from .typestore import make_typestore, register_from_bag
from .writer import enable_compression

MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_DATA_END = 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F
#: A record longer than this is taken as damage, not data (rosbags chunks are ~1 MiB, images < 64 MiB).
MAX_RECORD_BYTES = 1 << 31
#: Placeholder type hash for a type whose definition cannot be hashed here.
UNKNOWN_HASH = "RIHS01_" + "0" * 64


@dataclass
class RecoveryReport:
    """What :func:`reindex_bag` found and wrote."""

    path: Path
    recovered: bool
    messages: dict[str, int] = field(default_factory=dict)
    source_bytes: int = 0
    used_bytes: int = 0
    stopped_because: str = ""
    kept: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not self.recovered:
            return f"{self.path}: {self.stopped_because}"
        per = ", ".join(f"{t} {n}" for t, n in self.messages.items()) or "no messages"
        lost = self.source_bytes - self.used_bytes
        tail = (f"{lost} of {self.source_bytes} bytes at the end were incomplete ({self.stopped_because})" if lost
                else f"all {self.source_bytes} bytes read")
        return (f"{self.path}: recovered {sum(self.messages.values())} messages ({per}); {tail}; "
                f"the original {'file is' if len(self.kept) == 1 else 'files are'} kept as {', '.join(self.kept)}")


@dataclass(frozen=True)
class _Schema:
    name: str
    encoding: str
    data: str


@dataclass(frozen=True)
class _Channel:
    topic: str
    schema_id: int
    encoding: str
    metadata: dict


class _Cut(Exception):
    """The rest of the file is incomplete or damaged; the message says how."""


class _Buf:
    """Little-endian reads from bytes; running past the end raises _Cut."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Cut("a record runs past the end of its data")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        try:
            return self.take(self.u32()).decode()
        except UnicodeDecodeError as exc:
            raise _Cut(f"a damaged string ({exc})") from exc

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)


def _records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, body) of each complete record in ``data``; raises _Cut at an incomplete one."""
    buf = _Buf(data)
    while buf.pos < len(data):
        if len(data) - buf.pos < 9:
            raise _Cut("the file ends inside a record header")
        op = buf.take(1)[0]
        length = buf.u64()
        if length > MAX_RECORD_BYTES:
            raise _Cut(f"a record claims {length} bytes")
        if buf.pos + length > len(data):
            raise _Cut(f"the file ends inside a record ({len(data) - buf.pos} of {length} bytes)")
        yield op, buf.take(length)


class _McapScan:
    """Schemas, channels and messages of an MCAP file read front to back without its summary."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.schemas: dict[int, _Schema] = {}
        self.channels: dict[int, _Channel] = {}
        self.compressions: set[str] = set()
        self.used_bytes = 0
        self.stopped_because = "the file ends without its summary"

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        """(channel id, log time ns, CDR bytes) of every message before the first damage."""
        data = self.path.read_bytes()
        if not data.startswith(MCAP_MAGIC):
            raise BagError(f"{self.path}: not an MCAP file (no MCAP magic at the start)")
        pos = len(MCAP_MAGIC)
        self.used_bytes = pos
        try:
            for op, body in _records(data[pos:]):
                if op in (_OP_DATA_END, _OP_FOOTER):
                    self.stopped_because = "none: the file is complete"
                    self.used_bytes = len(data)
                    return
                if op == _OP_CHUNK:
                    # messages of a chunk count only once the whole chunk is known good
                    yield from list(self._chunk(body))
                else:
                    yield from self._record(op, body)
                self.used_bytes += 9 + len(body)
        except _Cut as exc:
            self.stopped_because = str(exc)

    def _chunk(self, body: bytes) -> Iterator[tuple[int, int, bytes]]:
        buf = _Buf(body)
        buf.u64(), buf.u64()  # message start and end time
        size, crc = buf.u64(), buf.u32()
        compression = buf.string()
        records = buf.take(buf.u64())
        try:
            raw = _storage_mcap.decompress(records, compression, size, crc)
        except Exception as exc:  # zstd/lz4 errors, size or CRC mismatch: a damaged chunk
            raise _Cut(f"a damaged chunk ({type(exc).__name__}: {exc})") from exc
        self.compressions.add(compression)
        for op, rec in _records(raw):
            yield from self._record(op, rec)

    def _record(self, op: int, body: bytes) -> Iterator[tuple[int, int, bytes]]:
        buf = _Buf(body)
        if op == _OP_SCHEMA:
            sid, name, encoding = buf.u16(), buf.string(), buf.string()
            self.schemas[sid] = _Schema(name, encoding, buf.take(buf.u32()).decode(errors="replace"))
        elif op == _OP_CHANNEL:
            cid, sid, topic, encoding = buf.u16(), buf.u16(), buf.string(), buf.string()
            meta_buf = _Buf(buf.take(buf.u32()))
            meta = {}
            while meta_buf.pos < len(meta_buf.data):
                key = meta_buf.string()
                meta[key] = meta_buf.string()
            self.channels[cid] = _Channel(topic, sid, encoding, meta)
        elif op == _OP_MESSAGE:
            cid = buf.u16()
            buf.u32()  # sequence
            log_time = buf.u64()
            buf.u64()  # publish time
            if cid not in self.channels:
                raise _Cut(f"a message on channel {cid}, which no channel record declared")
            yield cid, log_time, buf.rest()


class _SqliteScan:
    """Topics and messages of a sqlite3 storage file whose writer never closed it.

    Read from a copy (with its rollback journal, if any), so that SQLite
    rolls an interrupted transaction back to the last commit there and the
    original file stays as it was.
    """

    def __init__(self, path: Path, workdir: Path) -> None:
        self.path = path
        self.copy = workdir / path.name
        shutil.copyfile(path, self.copy)
        for extra in ("-journal", "-wal"):
            side = path.with_name(path.name + extra)
            if side.exists():
                shutil.copyfile(side, self.copy.with_name(self.copy.name + extra))
        self.topics: dict[int, tuple[str, str, str, str, str]] = {}
        self.definitions: dict[str, tuple[str, str]] = {}
        self.stopped_because = "the bag was not closed (no metadata.yaml)"

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        try:
            con = sqlite3.connect(self.copy)
        except sqlite3.Error as exc:
            raise BagError(f"{self.path}: not an sqlite3 file ({exc})") from exc
        try:
            cols = [r[1] for r in con.execute("PRAGMA table_info(topics)")]
            if not cols:
                raise BagError(f"{self.path}: no topics table: nothing was committed before the writer stopped")
            hashes = "type_description_hash" if "type_description_hash" in cols else "''"
            for tid, name, typ, fmt, qos, digest in con.execute(
                    f"SELECT id, name, type, serialization_format, offered_qos_profiles, {hashes} FROM topics"):
                self.topics[int(tid)] = (name, typ, fmt, qos or "", digest or "")
            with suppress(sqlite3.Error):  # bags before rosbag2 version 8 have no definitions
                for typ, enc, text in con.execute(
                        "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions"):
                    self.definitions[typ] = (enc, text)
            for tid, ts, data in con.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
                if int(tid) in self.topics:
                    yield int(tid), int(ts), bytes(data)
        except sqlite3.DatabaseError as exc:
            raise BagError(f"{self.path}: damaged sqlite3 file ({exc})") from exc
        finally:
            con.close()


def needs_reindex(bag: str | os.PathLike) -> str | None:
    """Why ``bag`` (a folder) cannot be read as it is, or None when it can."""
    p = Path(bag)
    if not p.is_dir():
        raise BagError(f"{p}: expected a bag folder")
    if not (p / "metadata.yaml").is_file():
        return "no metadata.yaml"
    try:
        open_reader(p).close()
    except BagError as exc:
        return str(exc).removeprefix(f"{p}: ")
    return None


def reindex_bag(bag: str | os.PathLike, *, force: bool = False) -> RecoveryReport:
    """Rebuild a readable bag from the complete records of its MCAP file(s).

    Does nothing (``recovered`` False) for a bag that reads as it is, unless
    ``force``. Raises BagError when the folder holds no MCAP file, when an
    earlier recovery's ``.partial`` file is in the way, or when nothing could
    be read.
    """
    p = Path(bag)
    why = needs_reindex(p)
    if why is None and not force:
        return RecoveryReport(p, False, stopped_because="readable as it is; nothing to do")
    files = sorted(p.glob("*.mcap"))
    storage = "mcap"
    if not files:
        files, storage = sorted(p.glob("*.db3")), "sqlite3"
    if not files:
        raise BagError(f"{p}: no .mcap or .db3 file to recover from")
    for f in files:
        if f.with_name(f.name + ".partial").exists():
            raise BagError(f"{p}: {f.name}.partial exists from an earlier recovery; move it away first")
    store = make_typestore()
    tmp = p / ".reindex"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    out_dir = tmp / p.name
    report = RecoveryReport(p, True)
    try:
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(out_dir, version=BAG_VERSION, storage_plugin=plugin)
        scans: list[Any] = [_McapScan(f) if storage == "mcap" else _SqliteScan(f, tmp) for f in files]
        conns: dict[tuple[int, int], object] = {}
        by_topic: dict[tuple[str, str], object] = {}
        opened = False
        for i, scan in enumerate(scans):
            for cid, log_time, data in scan.messages():
                if not opened:
                    if "zstd" in getattr(scan, "compressions", ()):
                        enable_compression(writer, "mcap")
                    writer.open()
                    opened = True
                key = (i, cid)
                if key not in conns:
                    conns[key] = (_connection(writer, store, scan, cid, by_topic) if storage == "mcap"
                                  else _sqlite_connection(writer, store, scan, cid, by_topic))
                writer.write(conns[key], log_time, data)  # type: ignore[arg-type]
                topic = scan.channels[cid].topic if storage == "mcap" else scan.topics[cid][0]
                report.messages[topic] = report.messages.get(topic, 0) + 1
            report.source_bytes += scan.path.stat().st_size
            report.used_bytes += getattr(scan, "used_bytes", scan.path.stat().st_size)
        report.stopped_because = "; ".join(sorted({s.stopped_because for s in scans}))
        if not opened or not report.messages:
            raise BagError(f"{p}: no complete message found to recover ({report.stopped_because})")
        writer.close()
    except WriterError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BagError(f"{p}: cannot write the recovered bag: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in files:
        for side in (f, *(f.with_name(f.name + x) for x in ("-journal", "-wal", "-shm"))):
            if side.exists():
                side.rename(side.with_name(side.name + ".partial"))
                report.kept.append(side.name + ".partial")
    new_files = [f for f in out_dir.iterdir() if f.name != "metadata.yaml"]
    for f in new_files:
        f.rename(p / f.name.replace(out_dir.name, p.name, 1))
    # metadata.yaml names the file written; it was named after the folder, as here
    (out_dir / "metadata.yaml").replace(p / "metadata.yaml")
    shutil.rmtree(tmp, ignore_errors=True)
    if not (p / LABEL_FILE).is_file():
        write_label(p, EpisodeLabel(success=None, source="recorder (recovered)",
                                    note="recovered by 'python -m atk_policy.bags reindex' after the writer "
                                         "stopped without closing the bag; the end of the episode may be lost"))
    return report


def _connection(writer: Writer, store: Any, scan: _McapScan, cid: int, by_topic: dict) -> Any:
    """The writer's connection for channel ``cid`` of ``scan`` (one per topic and type across files)."""
    ch = scan.channels[cid]
    schema = scan.schemas.get(ch.schema_id)
    if schema is None:
        raise BagError(f"{scan.path}: channel {ch.topic} refers to schema {ch.schema_id}, which the file lacks")
    key = (ch.topic, schema.name)
    if key in by_topic:  # the same topic in the next file of a split bag
        return by_topic[key]
    qos = parse_qos(ch.metadata["offered_qos_profiles"]) if ch.metadata.get("offered_qos_profiles") else []
    rihs01 = ch.metadata.get("topic_type_hash") or ""
    if not rihs01:
        fmt = MessageDefinitionFormat.IDL if schema.encoding in ("ros2idl", "omgidl") else (
            MessageDefinitionFormat.MSG)
        stand_in = SimpleNamespace(topic=ch.topic, msgtype=schema.name, msgdef=MessageDefinition(fmt, schema.data))
        try:
            rihs01 = store.hash_rihs01(register_from_bag(store, stand_in))
        except Exception:  # a type this machine cannot hash; the bag reads the same without it
            rihs01 = UNKNOWN_HASH
    conn = writer.add_connection(ch.topic, schema.name, msgdef=schema.data, rihs01=rihs01,
                                 serialization_format=ch.encoding or "cdr", offered_qos_profiles=qos)
    by_topic[key] = conn
    return conn


def _sqlite_connection(writer: Writer, store: Any, scan: _SqliteScan, tid: int, by_topic: dict) -> Any:
    """The writer's connection for topic ``tid`` of an sqlite3 scan."""
    name, msgtype, fmt, qos_text, digest = scan.topics[tid]
    key = (name, msgtype)
    if key in by_topic:
        return by_topic[key]
    enc, text = scan.definitions.get(msgtype, ("", ""))
    if not text and msgtype in store.types:
        text, _ = store.generate_msgdef(msgtype, ros_version=2)
    rihs01 = digest
    if not rihs01:
        kind = MessageDefinitionFormat.IDL if enc in ("ros2idl", "omgidl") else MessageDefinitionFormat.MSG
        stand_in = SimpleNamespace(topic=name, msgtype=msgtype, msgdef=MessageDefinition(kind, text))
        try:
            rihs01 = store.hash_rihs01(register_from_bag(store, stand_in))
        except Exception:  # a type this machine cannot hash; the bag reads the same without it
            rihs01 = UNKNOWN_HASH
    try:
        qos = parse_qos(qos_text) if qos_text else []
    except Exception:  # QoS text of another rosbag2 version: the bag reads the same without it
        qos = []
    conn = writer.add_connection(name, msgtype, msgdef=text, rihs01=rihs01, serialization_format=fmt or "cdr",
                                 offered_qos_profiles=qos)
    by_topic[key] = conn
    return conn


def main_reindex(paths: list[str], force: bool = False) -> int:
    """``reindex`` on the command line: one line per bag; 0 when every bag is readable after it."""
    status = 0
    for raw in paths:
        try:
            print(reindex_bag(raw, force=force).describe())
        except BagError as exc:
            print(f"reindex: error: {exc}", file=sys.stderr)
            status = 2
    return status
