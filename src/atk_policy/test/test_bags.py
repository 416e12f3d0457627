"""Bag reading and writing (atk_policy.bags), without ROS.

Real rosbag2 recordings from tests/data/rosbag2 are read (topics listed,
messages deserialised) and refused as training data with a message naming
the topics they hold; simulated episodes go through write_episode_bag and
come back through load_episodes unchanged.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from atk_policy import bags
from atk_policy.bags import (BagConversionConfig, BagError, BagTopics, CameraInfoData, EpisodeBagWriter,
                             EpisodeLabel, align, inspect_bag, load_episodes, read_messages,
                             write_episode_bag)

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "rosbag2"
W, H = 32, 24


def _episode_data(seed: int, T: int = 30, rate: float = 10.0, t0: float = 1000.0):
    rng = np.random.default_rng(seed)
    stamps = t0 + np.arange(T) / rate
    images = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    joints = np.c_[rng.normal(size=(T, 6)), np.linspace(0.0, 1.0, T)]
    targets = rng.normal(size=(T, 6))
    grip = (np.arange(T) >= T // 2).astype(float)
    return stamps, images, joints, targets, grip


def _write(path: Path, seed: int = 0, label: EpisodeLabel | None = None, **kw) -> tuple:
    stamps, images, joints, targets, grip = _episode_data(seed, **{k: kw.pop(k) for k in ("T",) if k in kw})
    write_episode_bag(path, stamps=stamps, images=images, camera_info=CameraInfoData.pinhole(W, H, 30.0),
                      joint_states=joints, joint_targets=targets, gripper_commands=grip, label=label, **kw)
    return stamps, images, joints, targets, grip


# --------------------------------------------------------------------------- real recordings


def test_real_mcap_and_sqlite3_talker_bags_are_read():
    for name, storage in (("talker_mcap", "mcap"), ("talker_sqlite3", "sqlite3")):
        info = inspect_bag(DATA / name)
        assert info.storage == storage
        assert [(t.name, t.msgtype, t.count) for t in info.topics] == [
            ("/topic", "std_msgs/msg/String", 10), ("/rosout", "rcl_interfaces/msg/Log", 10),
            ("/parameter_events", "rcl_interfaces/msg/ParameterEvent", 0)]
        texts = [m.data for topic, _, m in read_messages(DATA / name, ["/topic"])]
        assert texts == [f"Hello, world! {i}" for i in range(10)]
        logs = list(read_messages(DATA / name, ["/rosout"]))
        assert len(logs) == 10 and all(t == "/rosout" for t, _, _ in logs)


def test_real_split_bag_is_read_across_all_files():
    info = inspect_bag(DATA / "wbag_mcap")
    assert info.files == tuple(f"wbag_{i}.mcap" for i in range(5))
    counts: dict[str, int] = {}
    for topic, ts, msg in read_messages(DATA / "wbag_mcap"):
        counts[topic] = counts.get(topic, 0) + 1
        assert isinstance(msg.data, str)
    # every message of every file: the counts metadata.yaml gives per topic
    assert counts == {t.name: t.count for t in info.topics}
    assert sum(counts.values()) == info.message_count == 6074


def test_real_bag_types_missing_from_the_typestore_come_from_the_bag():
    msgs = {topic: m for topic, _, m in read_messages(DATA / "cdr_test_mcap")}
    assert msgs["/test_topic"].__msgtype__ == "test_msgs/msg/BasicTypes"
    assert msgs["/array_topic"].string_values == ["Complex Hello1", "Complex Hello2", "Complex Hello3"]


@pytest.mark.parametrize("name", ["talker_mcap", "talker_sqlite3", "wbag_mcap", "cdr_test_mcap"])
def test_real_bags_without_robot_topics_are_refused_naming_what_they_hold(name):
    info = inspect_bag(DATA / name)
    with pytest.raises(BagError) as err:
        load_episodes(DATA / name)
    msg = str(err.value)
    assert "missing topics camera/color/image_raw, joint_states, joint_target, gripper_command" in msg
    for topic in info.topics:
        assert f"{topic.name} ({topic.msgtype}" in msg


def test_a_refused_bag_is_reported_next_to_a_used_one(tmp_path):
    _write(tmp_path / "demo", label=EpisodeLabel(success=True))
    eps, report = load_episodes([tmp_path / "demo", DATA / "talker_mcap", tmp_path / "nothing_here"])
    assert [e.name for e in eps] == ["demo"]
    assert [(Path(e.path).name, e.status) for e in report.entries] == [
        ("nothing_here", "skipped"), ("demo", "used"), ("talker_mcap", "skipped")]
    talker = report.entries[2]
    assert "/topic (std_msgs/msg/String, 10 msgs)" in talker.reason
    assert "does not exist" in report.entries[0].reason
    assert "talker_mcap" in report.summary() and "SKIPPED" in report.summary()


# --------------------------------------------------------------------------- round trip


def test_write_then_load_round_trip_keeps_content(tmp_path):
    label = EpisodeLabel(success=True, note="clean grasp", task="sushi", seed=7, perturbations=["RP"],
                         source="sim_expert")
    stamps, images, joints, targets, grip = _write(tmp_path / "ep", seed=1, label=label)
    info = inspect_bag(tmp_path / "ep")
    assert info.storage == "mcap"
    assert {t.name: t.msgtype for t in info.topics} == {
        "/camera/color/image_raw": "sensor_msgs/msg/Image",
        "/camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
        "/joint_states": "sensor_msgs/msg/JointState",
        "/joint_target": "sensor_msgs/msg/JointState",
        "/gripper_command": "atk_msgs/msg/GripperCommand"}
    meta = yaml.safe_load((tmp_path / "ep" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    qos = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"][0]["reliability"]
           for t in meta["topics_with_message_count"]}
    assert qos["/camera/color/image_raw"] == "best_effort" and qos["/joint_target"] == "reliable"

    (ep,), report = load_episodes(tmp_path / "ep")
    assert ep.name == "ep" and ep.success is True and len(ep) == len(stamps)
    np.testing.assert_allclose(ep.stamps, stamps, atol=1e-9)
    np.testing.assert_allclose(ep.proprio, joints, atol=1e-6)
    np.testing.assert_allclose(ep.actions[:, :6], targets, atol=1e-6)
    np.testing.assert_array_equal(ep.actions[:, 6], grip)
    assert ep.frames.image_size == (W, H)
    for t in (0, 13, len(stamps) - 1):
        np.testing.assert_array_equal(ep.frames[t], images[t])
    assert ep.meta["label"]["note"] == "clean grasp" and ep.meta["label"]["seed"] == 7
    assert ep.meta["camera_info"]["k"][0] == 30.0
    assert report.used[0].frames == len(stamps) and report.skipped == []


def test_frames_are_decoded_lazily_and_read_in_prefetched_passes(tmp_path):
    _, images, *_ = _write(tmp_path / "ep", seed=2, T=20)
    (ep,), _ = load_episodes(tmp_path / "ep", config=BagConversionConfig(prefetch=4))
    assert ep.frames.reads == 0  # loading decoded no frame
    for t in range(20):
        np.testing.assert_array_equal(ep.frames[t], images[t])
    assert ep.frames.reads == 5  # a sequential pass: 20 frames / prefetch 4
    np.testing.assert_array_equal(ep.frames[-1], images[-1])
    assert ep.frames.reads == 5  # still cached
    clone = pickle.loads(pickle.dumps(ep.frames))  # a worker process's copy: own cache entries
    for k, t in enumerate((3, 11, 7)):  # random access reads only the frame asked for
        np.testing.assert_array_equal(clone[t], images[t])
        assert clone.reads == k + 1
    with pytest.raises(IndexError):
        ep.frames[20]


def test_the_frame_cache_keeps_to_its_byte_budget(tmp_path):
    _, images, *_ = _write(tmp_path / "ep", seed=2, T=20)
    frame_bytes = images[0].nbytes
    try:
        (ep,), _ = load_episodes(tmp_path / "ep", config=BagConversionConfig(
            prefetch=4, frame_cache_mb=6 * frame_bytes / 2**20))
        for t in range(20):
            np.testing.assert_array_equal(ep.frames[t], images[t])
        assert bags.FRAME_CACHE.used <= 6 * frame_bytes
        reads = ep.frames.reads
        ep.frames[0]  # evicted long ago: read again
        assert ep.frames.reads == reads + 1
        ep.frames[19]  # among the newest six: cached
        assert ep.frames.reads == reads + 1
    finally:
        bags.FRAME_CACHE.set_budget(int(BagConversionConfig().frame_cache_mb * 2**20))


def test_sqlite3_episode_bag_round_trip(tmp_path):
    stamps, images, joints, targets, grip = _write(tmp_path / "ep", seed=3, storage="sqlite3")
    assert inspect_bag(tmp_path / "ep").storage == "sqlite3"
    (ep,), _ = load_episodes(tmp_path / "ep")
    np.testing.assert_allclose(ep.actions[:, :6], targets, atol=1e-6)
    np.testing.assert_array_equal(ep.frames[5], images[5])


def test_split_episode_bag_is_read_across_files(tmp_path):
    stamps, images, joints, targets, grip = _episode_data(4, T=24)
    ci = CameraInfoData.pinhole(W, H, 30.0)
    parts = []
    for k, sl in enumerate((slice(0, 12), slice(12, 24))):
        p = tmp_path / f"part{k}"
        write_episode_bag(p, stamps=stamps[sl], images=images[sl], camera_info=ci, joint_states=joints[sl],
                          joint_targets=targets[sl], gripper_commands=grip[sl])
        parts.append(p)
    # Assemble one bag split in two files, as `ros2 bag record --max-bag-size` does.
    bag = tmp_path / "split"
    bag.mkdir()
    metas = [yaml.safe_load((p / "metadata.yaml").read_text())["rosbag2_bagfile_information"] for p in parts]
    for k, p in enumerate(parts):
        shutil.copy(p / f"part{k}.mcap", bag / f"split_{k}.mcap")
    m = metas[0]
    m["relative_file_paths"] = ["split_0.mcap", "split_1.mcap"]
    m["files"] = [dict(metas[k]["files"][0], path=f"split_{k}.mcap") for k in range(2)]
    m["message_count"] = sum(x["message_count"] for x in metas)
    for i, topic in enumerate(m["topics_with_message_count"]):
        topic["message_count"] += metas[1]["topics_with_message_count"][i]["message_count"]
    (bag / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": m}))

    (ep,), _ = load_episodes(bag, config=BagConversionConfig(prefetch=5))
    assert inspect_bag(bag).files == ("split_0.mcap", "split_1.mcap")
    assert len(ep) == 24
    np.testing.assert_allclose(ep.proprio, joints, atol=1e-6)
    for t in range(9, 16):  # a prefetch window across the file boundary
        np.testing.assert_array_equal(ep.frames[t], images[t])


# --------------------------------------------------------------------------- alignment


def test_align_linear_nearest_hold_numbers():
    t = np.array([0.0, 0.1, 0.2, 0.4])
    v = np.array([[0.0], [1.0], [2.0], [4.0]])
    q = np.array([-0.03, 0.05, 0.1, 0.3, 0.43, 0.6])
    out, ok = align(t, v, q, "linear", tolerance=0.05)
    # 0.3 is 0.1 from both neighbours: beyond tolerance; -0.03/0.43 take the end samples
    np.testing.assert_array_equal(ok, [True, True, True, False, True, False])
    np.testing.assert_allclose(out[ok, 0], [0.0, 0.5, 1.0, 4.0])
    out, ok = align(t, v, q, "linear", tolerance=0.1)
    np.testing.assert_allclose(out[3, 0], 3.0)
    out, ok = align(t, v, q, "nearest", tolerance=0.04)
    np.testing.assert_array_equal(ok, [True, False, True, False, True, False])
    np.testing.assert_allclose(out[[0, 2, 4], 0], [0.0, 1.0, 4.0])
    out, ok = align(t, v, q, "hold", tolerance=0.01)
    np.testing.assert_array_equal(ok, [False, True, True, True, True, True])
    np.testing.assert_allclose(out[1:, 0], [0.0, 1.0, 2.0, 4.0, 4.0])


def test_joint_states_at_another_rate_are_interpolated_within_tolerance(tmp_path):
    T = 30
    stamps, images, _, targets, grip = _episode_data(5, T=T)
    # joint states at 3x the image rate, offset by 1/60 s and starting 0.5 s late
    js_t = stamps[0] + 0.5 + 1 / 60 + np.arange(3 * T) / 30.0
    js_t = js_t[js_t < stamps[-1] + 0.05]
    slope = np.linspace(0.1, 0.6, 7)
    slope[6] = 0.2
    js = (js_t - stamps[0])[:, None] * slope[None, :]
    write_episode_bag(tmp_path / "ep", stamps=stamps, images=images, camera_info=CameraInfoData.pinhole(W, H, 30.0),
                      joint_states=js, joint_state_stamps=js_t, joint_targets=targets, gripper_commands=grip)
    (ep,), report = load_episodes(tmp_path / "ep", config=BagConversionConfig(tolerance_s=0.02))
    entry = report.used[0]
    # images before the first joint state (0.5 + 1/60 s late, tolerance 0.02 s) are trimmed
    assert entry.trimmed_start == 5 and entry.trimmed_end == 0 and entry.gaps == 0
    assert len(ep) == T - 5
    # frame 5 lies 1/60 s before the first joint state: within tolerance, it takes that sample
    np.testing.assert_allclose(ep.proprio[0], js[0], atol=1e-6)
    np.testing.assert_allclose(ep.proprio[1:], (ep.stamps[1:] - stamps[0])[:, None] * slope, atol=1e-5)
    np.testing.assert_array_equal(ep.frames[0], images[5])
    assert any("without joint states" in n for n in entry.notes)
    # nearest: off by the 1/60 s offset, i.e. the joint state before or after
    (ep_n,), _ = load_episodes(tmp_path / "ep", config=BagConversionConfig(
        tolerance_s=0.02, joint_state_alignment="nearest"))
    err = np.abs(ep_n.proprio[:, 0] - (ep_n.stamps - stamps[0]) * slope[0])
    np.testing.assert_allclose(err, slope[0] / 60, atol=1e-5)
    # tolerance below the 1/60 s offset: nothing aligns, the bag is skipped and says why
    with pytest.raises(BagError, match="no image could be aligned within tolerance 0.01"):
        load_episodes(tmp_path / "ep", config=BagConversionConfig(tolerance_s=0.01,
                                                                   joint_state_alignment="nearest"))


def test_a_gap_in_joint_states_is_counted_and_too_many_gaps_skip(tmp_path):
    T = 40
    stamps, images, joints, targets, grip = _episode_data(6, T=T)
    keep = np.ones(T, bool)
    keep[10:13] = False  # three frames without joint states in the middle
    write_episode_bag(tmp_path / "ep", stamps=stamps, images=images, camera_info=CameraInfoData.pinhole(W, H, 30.0),
                      joint_states=joints[keep], joint_state_stamps=stamps[keep], joint_targets=targets,
                      gripper_commands=grip)
    (ep,), report = load_episodes(tmp_path / "ep", config=BagConversionConfig(tolerance_s=0.04))
    assert report.used[0].gaps == 3 and len(ep) == T - 3
    np.testing.assert_allclose(ep.proprio, joints[keep], atol=1e-6)
    with pytest.raises(BagError, match="3 of 40 images inside the episode could not be aligned"):
        load_episodes(tmp_path / "ep", config=BagConversionConfig(tolerance_s=0.04, max_gap_fraction=0.05))


def test_gripper_commands_sent_on_change_are_held(tmp_path):
    T = 20
    stamps, images, joints, targets, _ = _episode_data(7, T=T)
    # joint targets every frame, gripper commands only twice (on change)
    with EpisodeBagWriter(tmp_path / "ep") as w:
        ci = CameraInfoData.pinhole(W, H, 30.0)
        for t in range(T):
            w.write_image(stamps[t], images[t], ci)
            w.write_joint_state(stamps[t], joints[t])
            w.write_command(stamps[t], targets[t], 0.0 if t < 8 else 1.0)
    (ep,), _ = load_episodes(tmp_path / "ep")
    np.testing.assert_array_equal(ep.actions[:, 6], (np.arange(T) >= 8).astype(np.float32))


def test_future_joint_state_actions_for_kinesthetic_demos(tmp_path):
    T = 30
    stamps, images, joints, _, _ = _episode_data(8, T=T)
    with EpisodeBagWriter(tmp_path / "ep") as w:  # no command topics at all
        ci = CameraInfoData.pinhole(W, H, 30.0)
        for t in range(T):
            w.write_image(stamps[t], images[t], ci)
            w.write_joint_state(stamps[t], joints[t])
    with pytest.raises(BagError, match="/joint_target has no messages; /gripper_command has no messages"):
        load_episodes(tmp_path / "ep")
    cfg = BagConversionConfig(action_source="future_joint_state", action_horizon_s=0.2,
                              joint_state_alignment="nearest", tolerance_s=0.01)
    (ep,), report = load_episodes(tmp_path / "ep", config=cfg)
    assert len(ep) == T - 2 and report.used[0].trimmed_end == 2
    np.testing.assert_allclose(ep.actions, joints[2:], atol=1e-6)
    np.testing.assert_allclose(ep.proprio, joints[:-2], atol=1e-6)


# --------------------------------------------------------------------------- validation


def test_namespaced_topics_are_found_and_ambiguity_is_refused(tmp_path):
    stamps, images, joints, targets, _ = _write(tmp_path / "a" / "ep", seed=9, namespace="robot1")
    (ep,), _ = load_episodes(tmp_path / "a")
    assert ep.meta["topics"]["image"] == "/robot1/camera/color/image_raw"
    np.testing.assert_allclose(ep.proprio, joints, atol=1e-6)
    with pytest.raises(BagError, match="missing topics .* in namespace 'robot2'"):
        load_episodes(tmp_path / "a", config=BagConversionConfig(namespace="robot2"))

    # two robots in one bag: joint states of /robot1 and /robot2
    with EpisodeBagWriter(tmp_path / "b" / "two", namespace="robot1") as w:
        extra = w._writer.add_connection("/robot2/joint_states", bags.JOINT_STATE_TYPE, typestore=w.store)
        ci = CameraInfoData.pinhole(W, H, 30.0)
        for t in range(12):
            w.write_image(stamps[t], images[t], ci)
            w.write_joint_state(stamps[t], joints[t])
            w.write_command(stamps[t], targets[t], 0.0)
            w._writer.write(extra, int(stamps[t] * 1e9), _joint_state_cdr(w, stamps[t]))
    with pytest.raises(BagError, match=r"joint_states is ambiguous \(/robot1/joint_states, /robot2/joint_states\)"):
        load_episodes(tmp_path / "b")
    (ep,), _ = load_episodes(tmp_path / "b", config=BagConversionConfig(namespace="robot1"))
    assert len(ep) == 12


def _joint_state_cdr(w: EpisodeBagWriter, stamp: float) -> bytes:
    T = w.store.types
    msg = T[bags.JOINT_STATE_TYPE](header=w._header(stamp, ""), name=list(bags.UR_JOINT_NAMES) + ["gripper"],
                                   position=np.zeros(7), velocity=np.zeros(0), effort=np.zeros(0))
    return bytes(w.store.serialize_cdr(msg, bags.JOINT_STATE_TYPE))


def test_nan_short_failed_and_unlabelled_episodes_are_reported(tmp_path):
    stamps, images, joints, targets, grip = _episode_data(10, T=30)
    ci = CameraInfoData.pinhole(W, H, 30.0)
    bad = joints.copy()
    bad[4, 2] = np.nan
    write_episode_bag(tmp_path / "nan", stamps=stamps, images=images, camera_info=ci, joint_states=bad,
                      joint_targets=targets, gripper_commands=grip)
    write_episode_bag(tmp_path / "short", stamps=stamps[:5], images=images[:5], camera_info=ci,
                      joint_states=joints[:5], joint_targets=targets[:5], gripper_commands=grip[:5])
    write_episode_bag(tmp_path / "failed", stamps=stamps, images=images, camera_info=ci, joint_states=joints,
                      joint_targets=targets, gripper_commands=grip,
                      label=EpisodeLabel(success=False, note="dropped the sushi"))
    write_episode_bag(tmp_path / "nolabel", stamps=stamps, images=images, camera_info=ci, joint_states=joints,
                      joint_targets=targets, gripper_commands=grip)
    eps, report = load_episodes(tmp_path)
    reasons = {Path(e.path).name: (e.status, e.reason, e.notes) for e in report.entries}
    assert [e.name for e in eps] == ["nolabel"]
    assert reasons["nan"][0] == "skipped" and "non-finite values (NaN/inf) in /joint_states (1 messages)" in reasons["nan"][1]
    assert "too short: 5 aligned frames < min_frames 10" in reasons["short"][1]
    assert "labelled a failure" in reasons["failed"][1] and "dropped the sushi" in reasons["failed"][1]
    assert any("no episode.yaml" in n for n in reasons["nolabel"][2]) and eps[0].success is None
    eps, _ = load_episodes(tmp_path, config=BagConversionConfig(skip_failed=False, require_label=True))
    assert [(e.name, e.success) for e in eps] == [("failed", False)]


def test_mismatched_camera_info_and_joint_names_are_refused(tmp_path):
    stamps, images, joints, targets, grip = _episode_data(11, T=12)
    with EpisodeBagWriter(tmp_path / "caminfo") as w:
        for t in range(12):
            # camera info claims 64x48 for 32x24 images: write it around the writer's check
            w.write_image(stamps[t], images[t], CameraInfoData.pinhole(W, H, 30.0))
            w._write("camera_info", stamps[t], CameraInfoData.pinhole(64, 48, 30.0).to_msg(
                w.store, w._header(stamps[t], "cam")), bags.CAMERA_INFO_TYPE)
            w.write_joint_state(stamps[t], joints[t])
            w.write_command(stamps[t], targets[t], 0.0)
    with pytest.raises(BagError, match=r"reports size \[\(32, 24\), \(64, 48\)\], the images are 32x24"):
        load_episodes(tmp_path / "caminfo")
    with EpisodeBagWriter(tmp_path / "names", joint_names=[f"j{i}" for i in range(6)]) as w:
        for t in range(12):
            w.write_image(stamps[t], images[t], CameraInfoData.pinhole(W, H, 30.0))
            w.write_joint_state(stamps[t], joints[t])
            w.write_command(stamps[t], targets[t], 0.0)
    with pytest.raises(BagError, match="messages lack joints .*shoulder_pan_joint.*they name .*'j0'"):
        load_episodes(tmp_path / "names")


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="tolerance_s"):
        BagConversionConfig(tolerance_s=0.0)
    with pytest.raises(ValueError, match="joint_state_alignment"):
        BagConversionConfig(joint_state_alignment="cubic")
    with pytest.raises(ValueError, match="prefetch"):
        BagConversionConfig(prefetch=0)
    with pytest.raises(ValueError, match="BagTopics.image"):
        BagTopics(image="")
    with pytest.raises(ValueError, match="EpisodeLabel.success"):
        EpisodeLabel(success="yes")


def _rosidl_hash(msgtype: str) -> str | None:
    """The RIHS01 hash rosidl generated for ``msgtype`` in an installed share folder."""
    import json
    import os

    pkg, _, name = msgtype.split("/")
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        f = Path(prefix) / "share" / pkg / "msg" / f"{name}.json"
        if f.is_file():
            return json.loads(f.read_text())["type_hashes"][0]["hash_string"]
    return None


def test_written_bags_carry_the_type_hashes_rosidl_generates(tmp_path):
    _write(tmp_path / "ep")
    meta = yaml.safe_load((tmp_path / "ep" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    hashes = {t["topic_metadata"]["type"]: t["topic_metadata"]["type_description_hash"]
              for t in meta["topics_with_message_count"]}
    checked = 0
    for msgtype, written in hashes.items():
        expected = _rosidl_hash(msgtype)
        if expected is not None:
            assert written == expected, msgtype
            checked += 1
    if checked == 0:
        pytest.skip("no rosidl-generated type descriptions on AMENT_PREFIX_PATH (source env.sh)")
    assert checked == len(hashes)  # the workspace has them all: sensor_msgs and atk_msgs


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_compressed_bags_round_trip(tmp_path, storage):
    stamps, images, joints, targets, grip = _episode_data(12, T=15)
    images[:] = images[0] // 8 * 8  # a compressible scene
    ci = CameraInfoData.pinhole(W, H, 30.0)
    kw = dict(stamps=stamps, images=images, camera_info=ci, joint_states=joints, joint_targets=targets,
              gripper_commands=grip, storage=storage)
    write_episode_bag(tmp_path / "plain", **kw)
    write_episode_bag(tmp_path / "zstd", compress=True, **kw)
    size = {k: sum(f.stat().st_size for f in (tmp_path / k).iterdir()) for k in ("plain", "zstd")}
    assert size["zstd"] < size["plain"]
    (ep,), _ = load_episodes(tmp_path / "zstd")
    np.testing.assert_array_equal(ep.frames[7], images[7])
    np.testing.assert_allclose(ep.proprio, joints, atol=1e-6)
