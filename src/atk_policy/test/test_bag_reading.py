"""Reading bags that hold more than the robot's topics (issue 16, items 5 and 6).

The bags are written here with rosbags' writers in the layout rosbag2
itself uses, so no recording is fetched or committed:

- a service event topic is ``/<service>/_service_event`` with type
  ``<pkg>/srv/<Name>_Event`` (rosbag2 records these since Jazzy); its MCAP
  schema holds the .srv text, preceded since Kilted by a line of 80 '=' and
  ``SRV: <pkg>/srv/<Name>`` and followed by its dependencies; rosbag2 writes
  the schema encoding ``unknown`` when the .srv has no message dependency;
- in sqlite3 bags rosbag2 files that definition in ``message_definitions``
  under the service type ``<pkg>/srv/<Name>``, not under the topic's type;
- old bags and some tools name types ``pkg/Type`` without ``/msg/``.

The event messages are serialised with a type store built here from plain
.msg text (``info``, ``request[]``, ``response[]``), independently of the
reader's own construction of the event type.
"""
from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from atk_policy.bags import BagError, BagWarning, inspect_bag, read_messages

DELIM = "=" * 80 + "\n"
HEADER_MSG = "builtin_interfaces/Time stamp\nstring frame_id\n"
TIME_MSG = "int32 sec\nuint32 nanosec\n"
# A service with a message dependency (ros2msg encoding), as rosbag2 (Kilted) writes its schema.
ADD_SRV = "std_msgs/Header header\nint64 a\nint64 b\n---\nint64 sum\n"
ADD_SCHEMA = (DELIM + "SRV: demo_srvs/srv/AddTwo\n" + ADD_SRV + "\n" + DELIM + "MSG: std_msgs/Header\n"
              + HEADER_MSG + "\n" + DELIM + "MSG: builtin_interfaces/Time\n" + TIME_MSG)
# A service without dependencies, with the bare .srv text of the first Jazzy recordings.
TRIGGER_SRV = "---\nbool success\nstring message\n"
RIHS = "RIHS01_" + "0" * 64


def _open_writer(path: Path, storage: str) -> Writer:
    w = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    w.open()
    return w


def _serialiser():
    """A store with stand-in message types whose CDR layout is the service events'."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    types.update(get_types_from_msg("std_msgs/Header header\nint64 a\nint64 b\n", "demo_test/msg/AddReq"))
    types.update(get_types_from_msg("int64 sum\n", "demo_test/msg/AddResp"))
    types.update(get_types_from_msg("service_msgs/ServiceEventInfo info\ndemo_test/AddReq[] request\n"
                                    "demo_test/AddResp[] response\n", "demo_test/msg/AddEvent"))
    types.update(get_types_from_msg("bool structure_needs_at_least_one_member\n", "demo_test/msg/TrigReq"))
    types.update(get_types_from_msg("bool success\nstring message\n", "demo_test/msg/TrigResp"))
    types.update(get_types_from_msg("service_msgs/ServiceEventInfo info\ndemo_test/TrigReq[] request\n"
                                    "demo_test/TrigResp[] response\n", "demo_test/msg/TrigEvent"))
    store.register(types)
    return store


def _event(store, name, kind, seq, request=None, response=None):
    T = store.types
    info = T["service_msgs/msg/ServiceEventInfo"](
        event_type=kind, stamp=T["builtin_interfaces/msg/Time"](sec=seq, nanosec=0),
        client_gid=__import__("numpy").arange(16, dtype="uint8"), sequence_number=seq)
    msg = T[f"demo_test/msg/{name}Event"](info=info, request=[] if request is None else [request],
                                          response=[] if response is None else [response])
    return bytes(store.serialize_cdr(msg, f"demo_test/msg/{name}Event"))


def _write_service_bag(path: Path, storage: str) -> None:
    """/chatter (String, 3 msgs), /add/_service_event (2 events), /trigger/_service_event (2 events)."""
    s = _serialiser()
    T = s.types
    w = _open_writer(path, storage)
    chatter = w.add_connection("/chatter", "std_msgs/msg/String", typestore=s)
    add = w.add_connection("/add/_service_event", "demo_srvs/srv/AddTwo_Event", msgdef=ADD_SCHEMA, rihs01=RIHS)
    trig = w.add_connection("/trigger/_service_event", "std_srvs/srv/Trigger_Event", msgdef=TRIGGER_SRV,
                            rihs01=RIHS)
    hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=7, nanosec=5), frame_id="f")
    req = T["demo_test/msg/AddReq"](header=hdr, a=40, b=2)
    t = 1_000
    for i in range(3):
        w.write(chatter, t + i, bytes(s.serialize_cdr(T["std_msgs/msg/String"](data=f"hello {i}"),
                                                      "std_msgs/msg/String")))
    w.write(add, t + 10, _event(s, "Add", 0, 1, request=req))            # REQUEST_SENT
    w.write(add, t + 11, _event(s, "Add", 3, 1, response=T["demo_test/msg/AddResp"](sum=42)))
    w.write(trig, t + 12, _event(s, "Trig", 1, 2, request=T["demo_test/msg/TrigReq"](
        structure_needs_at_least_one_member=False)))
    w.write(trig, t + 13, _event(s, "Trig", 2, 2, response=T["demo_test/msg/TrigResp"](success=True,
                                                                                       message="done")))
    w.close()
    if storage == "sqlite3":
        # rosbag2 files a service's definition under the service type, not the event type.
        db = next(path.glob("*.db3"))
        con = sqlite3.connect(db)
        con.execute("UPDATE message_definitions SET topic_type = substr(topic_type, 1, length(topic_type) - 6) "
                    "WHERE topic_type LIKE '%/srv/%\\_Event' ESCAPE '\\'")
        con.commit()
        con.close()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_service_event_topics_are_read_with_every_other_topic(tmp_path, storage):
    bag = tmp_path / "services"
    _write_service_bag(bag, storage)
    skipped: dict[str, str] = {}
    msgs = list(read_messages(bag, skipped=skipped))
    assert skipped == {}
    by_topic: dict[str, list] = {}
    for topic, _, m in msgs:
        by_topic.setdefault(topic, []).append(m)
    assert [m.data for m in by_topic["/chatter"]] == ["hello 0", "hello 1", "hello 2"]
    sent, done = by_topic["/add/_service_event"]
    assert sent.__msgtype__ == "demo_srvs/srv/AddTwo_Event"
    assert (sent.info.event_type, sent.info.sequence_number) == (0, 1)
    assert list(sent.info.client_gid) == list(range(16))
    assert len(sent.response) == 0 and (sent.request[0].a, sent.request[0].b) == (40, 2)
    assert (sent.request[0].header.stamp.sec, sent.request[0].header.frame_id) == (7, "f")
    assert len(done.request) == 0 and done.response[0].sum == 42
    t_req, t_resp = by_topic["/trigger/_service_event"]
    assert t_req.info.event_type == 1 and len(t_req.request) == 1
    assert (t_resp.response[0].success, t_resp.response[0].message) == (True, "done")


def test_a_service_schema_with_encoding_unknown_is_read(tmp_path):
    """rosbag2 writes encoding 'unknown' for a .srv without dependencies; rosbags alone cannot open such a bag."""
    bag = tmp_path / "unknown_encoding"
    _write_service_bag(bag, "mcap")
    mcap = next(bag.glob("*.mcap"))
    raw = mcap.read_bytes()
    # The Trigger schema (same length: the file's offsets stay valid; rosbags writes no CRCs).
    marker = b"std_srvs/srv/Trigger_Event" + (7).to_bytes(4, "little") + b"ros2msg"
    assert raw.count(marker) == 2  # in the chunk and in the summary
    mcap.write_bytes(raw.replace(marker, marker[:-7] + b"unknown"))
    skipped: dict[str, str] = {}
    topics = [t for t, _, _ in read_messages(bag, skipped=skipped)]
    assert skipped == {}
    assert topics.count("/trigger/_service_event") == 2 and topics.count("/chatter") == 3


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_topic_that_cannot_be_decoded_is_skipped_and_reported_not_fatal(tmp_path, storage):
    s = get_typestore(Stores.ROS2_KILTED)
    bag = tmp_path / "mixed"
    w = _open_writer(bag, storage)
    good = w.add_connection("/chatter", "std_msgs/msg/String", typestore=s)
    nodef = w.add_connection("/mystery", "vendor_msgs/msg/Secret", msgdef="", rihs01=RIHS)
    broken = w.add_connection("/broken", "vendor_msgs/msg/Broken", msgdef="int32[ x\n", rihs01=RIHS)
    for i in range(2):
        w.write(good, 10 + i, bytes(s.serialize_cdr(s.types["std_msgs/msg/String"](data=str(i)),
                                                    "std_msgs/msg/String")))
        w.write(nodef, 20 + i, b"\x00\x01\x00\x00\x05\x00\x00\x00")
        w.write(broken, 30 + i, b"\x00\x01\x00\x00\x05\x00\x00\x00")
    w.close()
    skipped: dict[str, str] = {}
    got = [(t, m.data) for t, _, m in read_messages(bag, skipped=skipped)]
    assert got == [("/chatter", "0"), ("/chatter", "1")]
    assert set(skipped) == {"/mystery", "/broken"}
    assert "vendor_msgs/msg/Secret" in skipped["/mystery"] and "definition" in skipped["/mystery"]
    assert "vendor_msgs/msg/Broken" in skipped["/broken"] and "cannot be parsed" in skipped["/broken"]
    # without a dict to fill, each skipped topic is a warning, and reading goes on
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(list(read_messages(bag))) == 2
    assert sorted(str(c.message).split(":")[0] for c in caught if c.category is BagWarning) == [
        "skipping topic /broken", "skipping topic /mystery"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_old_style_type_names_are_read(tmp_path, storage):
    """``std_msgs/String`` (no /msg/) was a raw KeyError."""
    s = get_typestore(Stores.ROS2_KILTED)
    bag = tmp_path / "old_names"
    w = _open_writer(bag, storage)
    c = w.add_connection("/chatter", "std_msgs/String", msgdef="string data\n", rihs01=RIHS)
    v = w.add_connection("/vendor", "vendor_msgs/Thing", msgdef="int32 x\nstd_msgs/String s\n" + DELIM
                         + "MSG: std_msgs/String\nstring data\n", rihs01=RIHS)
    w.write(c, 1, bytes(s.serialize_cdr(s.types["std_msgs/msg/String"](data="old"), "std_msgs/msg/String")))
    w.write(v, 2, b"\x00\x01\x00\x00" + (7).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"abc\x00")
    w.close()
    msgs = list(read_messages(bag, skipped=(skipped := {})))
    assert skipped == {}
    assert [(t, m.__msgtype__) for t, _, m in msgs] == [("/chatter", "std_msgs/msg/String"),
                                                       ("/vendor", "vendor_msgs/msg/Thing")]
    assert msgs[0][2].data == "old" and (msgs[1][2].x, msgs[1][2].s.data) == (7, "abc")
    assert [(t.name, t.msgtype) for t in inspect_bag(bag).topics] == [
        ("/chatter", "std_msgs/msg/String"), ("/vendor", "vendor_msgs/msg/Thing")]


def test_an_unreadable_sqlite3_definition_encoding_is_a_bag_error_not_a_key_error(tmp_path):
    s = get_typestore(Stores.ROS2_KILTED)
    bag = tmp_path / "empty_encoding"
    w = Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3)
    w.open()
    w.add_connection("/chatter", "std_msgs/msg/String", typestore=s)
    w.close()
    con = sqlite3.connect(next(bag.glob("*.db3")))
    # what rosbag2 writes for a type whose definition it did not find
    con.execute("UPDATE message_definitions SET encoding = '', encoded_message_definition = ''")
    con.commit()
    con.close()
    with pytest.raises(BagError, match="encoding ''.*ros2 bag convert"):
        inspect_bag(bag)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_file_compressed_bag_lists_its_own_files_not_temporary_copies(tmp_path, storage):
    from rosbags.rosbag2 import CompressionFormat, CompressionMode

    s = get_typestore(Stores.ROS2_KILTED)
    bag = tmp_path / "packed"
    w = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    w.set_compression(CompressionMode.FILE, CompressionFormat.ZSTD)
    w.open()
    c = w.add_connection("/chatter", "std_msgs/msg/String", typestore=s)
    w.write(c, 1, bytes(s.serialize_cdr(s.types["std_msgs/msg/String"](data="x"), "std_msgs/msg/String")))
    w.close()
    info = inspect_bag(bag)
    on_disk = sorted(p.name for p in bag.iterdir() if p.name != "metadata.yaml")
    assert list(info.files) == on_disk == [f"packed.{'mcap' if storage == 'mcap' else 'db3'}.zstd"]
    assert info.storage == storage
    assert [m.data for _, _, m in read_messages(bag)] == ["x"]


def test_a_robot_bag_with_old_style_type_names_trains_like_any_other(tmp_path):
    """sensor_msgs/Image, sensor_msgs/JointState, atk_msgs/GripperCommand (no /msg/) are the documented types."""
    import numpy as np

    from atk_policy.bags import (CameraInfoData, load_episodes, make_typestore, open_reader, raw_messages,
                                 write_episode_bag)

    rng = np.random.default_rng(4)
    T, W, H = 12, 16, 12
    images = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    joints = np.c_[rng.normal(size=(T, 6)), np.zeros(T)]
    write_episode_bag(tmp_path / "new", stamps=50.0 + np.arange(T) / 10, images=images,
                      camera_info=CameraInfoData.pinhole(W, H, 20.0), joint_states=joints,
                      joint_targets=rng.normal(size=(T, 6)), gripper_commands=np.zeros(T))
    store = make_typestore()
    old = Writer(tmp_path / "old", version=9, storage_plugin=StoragePlugin.MCAP)
    old.open()
    conns = {}
    reader = open_reader(tmp_path / "new")
    try:
        for c in reader.connections:
            msgdef, _ = store.generate_msgdef(c.msgtype, ros_version=2)
            conns[c.id] = old.add_connection(c.topic, c.msgtype.replace("/msg/", "/"), msgdef=msgdef,
                                             rihs01=store.hash_rihs01(c.msgtype))
        for c, ts, data in raw_messages(reader, None):
            old.write(conns[c.id], ts, data)
    finally:
        reader.close()
    old.close()
    assert {c.msgtype for c in conns.values()} >= {"sensor_msgs/Image", "sensor_msgs/JointState",
                                                    "atk_msgs/GripperCommand"}
    (ep,), report = load_episodes(tmp_path / "old")
    assert len(ep) == T, report.summary()
    np.testing.assert_allclose(ep.proprio, joints)
    np.testing.assert_array_equal(ep.frames[T - 1], images[T - 1])
