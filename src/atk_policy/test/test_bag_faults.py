"""Bags a careful operator or a hostile file could hand the reader (issue 15).

Frames whose log times do not rise with their header stamps, metadata that
counts no messages although the file holds them, and bags cut off by a
killed recorder.
"""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from atk_policy import bags
from atk_policy.bags import (BagConversionConfig, CameraInfoData, EpisodeBagWriter, EpisodeLabel, inspect_bag,
                             load_episodes, write_episode_bag)

W, H = 32, 24


def _write_with_log_times(path, stamps, log_times, seed=0):
    """An episode whose image i has header stamp stamps[i] and log time log_times[i] (s).

    Joint states and commands are logged at their stamps. Returns the images.
    """
    rng = np.random.default_rng(seed)
    T = len(stamps)
    images = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    with EpisodeBagWriter(path) as w:
        Ty = w.store.types
        ci = CameraInfoData.pinhole(W, H, 30.0)
        for i in np.argsort(log_times, kind="stable"):
            msg = Ty[bags.IMAGE_TYPE](header=w._header(stamps[i], "cam"), height=H, width=W, encoding="rgb8",
                                      is_bigendian=0, step=W * 3, data=images[i].reshape(-1))
            log_ns = int(round(log_times[i] * 1e9))
            w._writer.write(w._conns["image"], log_ns, bytes(w.store.serialize_cdr(msg, bags.IMAGE_TYPE)))
            w._writer.write(w._conns["camera_info"], log_ns, bytes(w.store.serialize_cdr(
                ci.to_msg(w.store, w._header(stamps[i], "cam")), bags.CAMERA_INFO_TYPE)))
        for s in sorted(stamps):
            w.write_joint_state(s, np.r_[rng.normal(size=6), 0.0])
            w.write_command(s, rng.normal(size=6), 0.0)
    return images


@pytest.mark.parametrize("case", ["stamps_backwards", "recorded_out_of_order"])
@pytest.mark.parametrize("access", ["sequential", "random"])
def test_every_frame_reads_back_when_log_times_do_not_follow_the_stamps(tmp_path, case, access):
    T = 30
    stamps = 1000.0 + np.arange(T) / 10
    if case == "stamps_backwards":  # a publisher whose clock runs backwards: last stamp logged first
        log_times = 2000.0 + (T - 1 - np.arange(T)) / 10
    else:  # frames logged in a shuffled order (a reordering transport, a merged bag)
        log_times = 2000.0 + np.random.default_rng(3).permutation(T) / 10
    images = _write_with_log_times(tmp_path / "ep", stamps, log_times)
    (ep,), report = load_episodes(tmp_path / "ep", config=BagConversionConfig(prefetch=8))
    assert len(ep) == T
    np.testing.assert_allclose(ep.stamps, stamps)
    order = range(T) if access == "sequential" else np.random.default_rng(1).permutation(T)
    for t in order:
        np.testing.assert_array_equal(ep.frames[int(t)], images[int(t)], err_msg=f"frame {t}")


def test_metadata_counting_no_messages_does_not_hide_the_messages(tmp_path):
    """A metadata.yaml with counts of 0 (hand-edited, or rebuilt by a tool) used to read as an empty bag."""
    rng = np.random.default_rng(0)
    T = 20
    stamps = 1000.0 + np.arange(T) / 10
    write_episode_bag(tmp_path / "ep", stamps=stamps, images=rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
                      camera_info=CameraInfoData.pinhole(W, H, 30.0),
                      joint_states=np.c_[rng.normal(size=(T, 6)), np.zeros(T)],
                      joint_targets=rng.normal(size=(T, 6)), gripper_commands=np.zeros(T),
                      label=EpisodeLabel(success=True))
    meta_path = tmp_path / "ep" / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    info = meta["rosbag2_bagfile_information"]
    info["message_count"] = 0
    info["duration"]["nanoseconds"] = 0
    for t in info["topics_with_message_count"]:
        t["message_count"] = 0
    for f in info.get("files", []):
        f["message_count"] = 0
    meta_path.write_text(yaml.safe_dump(meta))
    bag = inspect_bag(tmp_path / "ep")
    assert bag.message_count == 5 * T
    assert {t.name: t.count for t in bag.topics}["/camera/color/image_raw"] == T
    assert bag.start_ns == int(1000 * 1e9) and bag.duration_ns == int(round(1.9 * 1e9)) + 1
    (ep,), _ = load_episodes(tmp_path / "ep")
    assert len(ep) == T


def _killed_bag(path, T=60):
    """An episode whose writer never closed the bag (no summary, no metadata.yaml)."""
    rng = np.random.default_rng(5)
    stamps = 1000.0 + np.arange(T) / 10
    images = rng.integers(0, 256, (T, 120, 160, 3), dtype=np.uint8)
    joints = np.c_[rng.normal(size=(T, 6)), np.zeros(T)]
    w = EpisodeBagWriter(path)
    ci = CameraInfoData.pinhole(160, 120, 100.0)
    for k in range(T):
        w.write_image(stamps[k], images[k], ci)
        w.write_joint_state(stamps[k], joints[k])
        w.write_command(stamps[k], joints[k, :6], 0.0)
    # what a SIGKILL leaves: the chunks flushed so far, nothing of the close
    w._writer.storage.bio.flush()
    data = (path / f"{path.name}.mcap").read_bytes()
    w._writer.storage.bio.close()
    w._writer = None
    for f in path.iterdir():
        f.unlink()
    (path / f"{path.name}.mcap").write_bytes(data)
    return stamps, images, joints


def test_a_bag_cut_inside_a_chunk_is_recovered_up_to_the_last_whole_chunk(tmp_path):
    bag = tmp_path / "ep"
    stamps, images, joints = _killed_bag(bag)
    full = (bag / "ep.mcap").stat().st_size
    with open(bag / "ep.mcap", "r+b") as f:  # the last flushed chunk loses its end
        f.truncate(full - 100_000)
    assert bags.needs_reindex(bag) == "no metadata.yaml"
    report = bags.reindex_bag(bag)
    assert report.recovered and "ends inside a record" in report.stopped_because
    assert report.used_bytes < report.source_bytes == full - 100_000
    (ep,), _ = load_episodes(bag)
    n = len(ep)
    assert 10 <= n < 60
    np.testing.assert_allclose(ep.stamps, stamps[:n])
    for k in range(n):
        np.testing.assert_array_equal(ep.frames[k], images[k])
    np.testing.assert_allclose(ep.proprio, joints[:n])
    assert bags.needs_reindex(bag) is None
    again = bags.reindex_bag(bag)
    assert not again.recovered and "nothing to do" in again.stopped_because


def test_a_killed_bag_in_a_folder_of_bags_is_named_not_dropped(tmp_path):
    _killed_bag(tmp_path / "all" / "killed")
    rng = np.random.default_rng(0)
    T = 12
    write_episode_bag(tmp_path / "all" / "good", stamps=1000.0 + np.arange(T) / 10,
                      images=rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
                      camera_info=CameraInfoData.pinhole(W, H, 30.0),
                      joint_states=np.c_[rng.normal(size=(T, 6)), np.zeros(T)],
                      joint_targets=rng.normal(size=(T, 6)), gripper_commands=np.zeros(T))
    eps, report = load_episodes(tmp_path / "all")
    assert [e.name for e in eps] == ["good"]
    (skipped,) = report.skipped
    assert skipped.path == str(tmp_path / "all" / "killed")
    assert "killed.mcap but no metadata.yaml" in skipped.reason
    assert f"python -m atk_policy.bags reindex {tmp_path / 'all' / 'killed'}" in skipped.reason


def test_reindex_refuses_what_it_cannot_recover_with_a_reason(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(bags.BagError, match="no .mcap or .db3 file"):
        bags.reindex_bag(tmp_path / "empty")
    (tmp_path / "sq").mkdir()
    (tmp_path / "sq" / "sq.db3").write_bytes(b"")  # killed before the first commit
    with pytest.raises(bags.BagError, match="nothing was committed"):
        bags.reindex_bag(tmp_path / "sq")
    assert (tmp_path / "sq" / "sq.db3").is_file() and not (tmp_path / "sq" / ".reindex").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "junk.mcap").write_bytes(b"not an mcap file at all")
    with pytest.raises(bags.BagError, match="not an MCAP file"):
        bags.reindex_bag(tmp_path / "junk")
    assert not (tmp_path / "junk" / ".reindex").exists() and (tmp_path / "junk" / "junk.mcap").is_file()


def test_a_bag_cut_short_names_the_reindex_command(tmp_path):
    rng = np.random.default_rng(0)
    T = 12
    bag = write_episode_bag(tmp_path / "cut", stamps=1000.0 + np.arange(T) / 10,
                            images=rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
                            camera_info=CameraInfoData.pinhole(W, H, 30.0),
                            joint_states=np.c_[rng.normal(size=(T, 6)), np.zeros(T)],
                            joint_targets=rng.normal(size=(T, 6)), gripper_commands=np.zeros(T))
    mcap = bag / "cut.mcap"
    with open(mcap, "r+b") as f:
        f.truncate(mcap.stat().st_size - 50)  # the summary's end: metadata.yaml is there, the footer is not
    with pytest.raises(bags.BagError, match=f"python -m atk_policy.bags reindex {bag}"):
        inspect_bag(bag)
    assert bags.needs_reindex(bag) is not None
    assert bags.reindex_bag(bag).recovered
    assert inspect_bag(bag).message_count == 5 * T


def test_the_bags_command_line_lists_a_bag_and_refuses_a_missing_one(tmp_path):
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    T = 12
    bag = write_episode_bag(tmp_path / "ep", stamps=1000.0 + np.arange(T) / 10,
                            images=rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
                            camera_info=CameraInfoData.pinhole(W, H, 30.0),
                            joint_states=np.c_[rng.normal(size=(T, 6)), np.zeros(T)],
                            joint_targets=rng.normal(size=(T, 6)), gripper_commands=np.zeros(T))
    ok = subprocess.run([sys.executable, "-m", "atk_policy.bags", "inspect", str(bag)], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "mcap, files ep.mcap, 60 messages" in ok.stdout
    assert "/camera/color/image_raw (sensor_msgs/msg/Image, 12 msgs)" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "atk_policy.bags", "inspect", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "nope" in bad.stderr
