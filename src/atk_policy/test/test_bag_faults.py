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
