"""The canonical frame's depth, from the bags to the model artifact.

A bag carrying a depth image for its first frame gives the episode a
``depth_first`` entry; the training pipeline reads it as the canonical
frame's depth and every keypoint model's artifact stores it
(template_depth.png, checked by sha256); the tracker loads it with the
template. Propagation gives it, with the extrinsics and the episode's
camera_info, to h_C's table search and keys its cache on it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atk_policy.bags import CameraInfoData, EpisodeBagWriter, load_episodes
from atk_policy.bags.frames import read_depth

W, H = 32, 24


def _bag(path: Path, depth_frames: tuple[int, ...] = (0,), T: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    depth_mm = rng.integers(300, 2000, (H, W)).astype(np.uint16)
    depth_mm[0, 0] = 0   # no reading
    with EpisodeBagWriter(path, with_depth=True) as w:
        ci = CameraInfoData.pinhole(W, H, 30.0)
        for t in range(T):
            s = 100.0 + t / 10
            w.write_image(s, rng.integers(0, 256, (H, W, 3), dtype=np.uint8), ci)
            if t in depth_frames:
                w.write_depth(s, depth_mm + t)
            w.write_joint_state(s, np.r_[rng.normal(size=6), 0.0])
            w.write_command(s, rng.normal(size=6), 0.0)
    return depth_mm


def test_the_first_frames_depth_is_found_and_read_back(tmp_path):
    depth_mm = _bag(tmp_path / "ep", depth_frames=(0, 1, 2))
    (ep,), _ = load_episodes(tmp_path / "ep")
    first = ep.meta["depth_first"]
    assert ep.meta["depth_messages"] == 3
    got = read_depth(ep.meta["bag"], first["topic"], first["log_ts"])
    np.testing.assert_allclose(got, depth_mm.astype(np.float32) / 1000.0, atol=1e-6)   # frame 0's, not 1's
    assert got[0, 0] == 0.0


def test_no_depth_for_the_first_frame_means_none(tmp_path):
    _bag(tmp_path / "ep", depth_frames=(5,))   # a depth image, but 0.5 s after the first frame
    (ep,), _ = load_episodes(tmp_path / "ep")
    assert ep.meta["depth_messages"] == 1 and "depth_first" not in ep.meta


def test_canonical_depth_comes_from_the_canonical_episode_only(tmp_path):
    from atk_policy.pipeline import DataSource, canonical_depth

    depth_mm = _bag(tmp_path / "bags" / "a")
    _bag(tmp_path / "bags" / "b", depth_frames=())
    eps, _ = load_episodes(tmp_path / "bags")
    by = {e.name: e for e in eps}
    a = next(n for n in by if "a" in n.split("/")[-1] or n.endswith("a"))
    b = next(n for n in by if n != a)
    got = canonical_depth(DataSource(inputs=(str(tmp_path / "bags"),), canonical_episode=a), eps)
    np.testing.assert_allclose(got, depth_mm / 1000.0, atol=1e-6)
    assert canonical_depth(DataSource(inputs=(str(tmp_path / "bags"),), canonical_episode=b), eps) is None
    # another frame than the first: its depth is not known
    assert canonical_depth(DataSource(inputs=(str(tmp_path / "bags"),), canonical_episode=a,
                                      canonical_frame=3), eps) is None


def _policy():
    from atk_policy.config import ModelConfig
    from atk_policy.model import KeypointPolicy, Normalisation

    pr = np.random.default_rng(0).normal(scale=0.1, size=(32, 7)).astype(np.float32)
    return KeypointPolicy(2, (W, H), ModelConfig(hidden=(8,)), Normalisation.from_data(pr, pr, binary_gripper=False),
                          keypoint_ids=[0, 1], canonical_xy=np.array([[4, 4], [20, 10]], np.float32))


def test_the_artifact_keeps_the_template_depth_and_refuses_an_edited_one(tmp_path):
    import cv2

    from atk_perception.keypoint_template import TemplateError, load_model_template
    from atk_policy.artifact import save_policy

    depth = np.full((H, W), 0.75, np.float32)
    depth[3, 5] = 0.0
    d = save_policy(tmp_path / "m", _policy(), np.zeros((H, W, 3), np.uint8), template_depth=depth)
    t = load_model_template(d)
    np.testing.assert_allclose(t.depth, depth, atol=5e-4)
    # a model without depth has none, and re-exporting without it removes the old file
    save_policy(d, _policy(), np.zeros((H, W, 3), np.uint8))
    assert load_model_template(d).depth is None and not (d / "template_depth.png").exists()
    save_policy(d, _policy(), np.zeros((H, W, 3), np.uint8), template_depth=depth)
    cv2.imwrite(str(d / "template_depth.png"), np.zeros((H, W), np.uint16))
    with pytest.raises(TemplateError, match="template_depth_sha256"):
        load_model_template(d)
    with pytest.raises(Exception, match="template depth"):
        save_policy(tmp_path / "m2", _policy(), np.zeros((H, W, 3), np.uint8), template_depth=np.zeros((H, W + 1)))


class _RecordingHC:
    """h_C stand-in at the hardware-free boundary: records the geometry it is given."""

    def __init__(self) -> None:
        self.geometry = None

    def set_template_geometry(self, image, geometry):
        self.geometry = (image, geometry)
        return True

    def transfer(self, template_image, points, image):
        return np.asarray(points, np.float32), np.ones(len(points), np.float32)

    def reset(self, image, points):
        self.points = np.asarray(points, np.float32)

    def update(self, image):
        from atk_perception.correspondence import TrackResult

        return TrackResult(self.points, np.ones(len(self.points), np.float32), np.ones(len(self.points), bool))


def test_propagation_gives_h_c_the_template_geometry_and_keys_the_cache_on_it(tmp_path):
    from atk_policy.propagation import cache_key, propagate_episode

    depth_mm = _bag(tmp_path / "ep")
    (ep,), _ = load_episodes(tmp_path / "ep")
    tpl = np.asarray(ep.frames[0])
    cands = np.array([[3.0, 4.0], [10.0, 12.0]], np.float32)
    pose = np.eye(4)
    hc = _RecordingHC()
    te = propagate_episode(ep, tpl, cands, hc, base_t_camera=pose, robot_occlusion=False,
                           template_depth=depth_mm / 1000.0)
    assert te.meta["table_search"] == "on" and te.meta["robot_occlusion"] == "off"
    image, geometry = hc.geometry
    assert image is tpl
    np.testing.assert_allclose(geometry.k, np.asarray(ep.meta["camera_info"]["k"]).reshape(3, 3))
    np.testing.assert_allclose(geometry.depth_m, depth_mm / 1000.0)
    hc2 = _RecordingHC()
    assert propagate_episode(ep, tpl, cands, hc2, template_depth=depth_mm / 1000.0).meta["table_search"] == "off"
    assert hc2.geometry is None   # no extrinsics: no geometry
    keys = {cache_key(ep, tpl, cands, "cpu", 0.0, pose, False, d) for d in (None, depth_mm / 1000.0,
                                                                             depth_mm / 1000.0 + 0.01)}
    assert len(keys) == 3
