"""Bad input to h_C is refused with CorrespondenceError, and configs validate."""
from __future__ import annotations

import numpy as np
import pytest

from atk_perception.backends import BACKENDS, make_correspondence
from atk_perception.correspondence import CorrespondenceError
from atk_perception.cpu_tracker import CpuTracker, CpuTrackerConfig
from atk_fixtures.images import procedural_texture

IMG = procedural_texture(120, 160, seed=1)
PTS = np.array([[40.0, 30.0], [100.0, 80.0]], np.float32)


@pytest.mark.parametrize("image, match", [
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    (np.zeros((8, 8, 3), np.uint8), "too small"),
    (np.zeros((120, 160, 4), np.uint8), "shape"),
    (np.zeros((120, 160), np.uint16), "uint8"),
    (np.zeros((120, 160, 3), np.float32), "uint8"),
    ([[1, 2], [3, 4]], "numpy array"),
])
def test_bad_images_are_refused(image, match):
    tracker = CpuTracker()
    with pytest.raises(CorrespondenceError, match=match):
        tracker.reset(image, PTS)
    with pytest.raises(CorrespondenceError, match=match):
        tracker.transfer(IMG, PTS, image)


@pytest.mark.parametrize("points, match", [
    (np.array([[200.0, 30.0]]), "outside"),
    (np.array([[-1.0, 30.0]]), "outside"),
    (np.array([[10.0, np.nan]]), "NaN"),
    (np.zeros((3, 3)), "shape"),
])
def test_bad_points_are_refused(points, match):
    with pytest.raises(CorrespondenceError, match=match):
        CpuTracker().reset(IMG, points)
    with pytest.raises(CorrespondenceError, match=match):
        CpuTracker().transfer(IMG, points, IMG)


def test_template_of_another_size_is_refused():
    big = procedural_texture(240, 320, seed=2)
    with pytest.raises(CorrespondenceError, match="160x120.*320x240"):
        CpuTracker().transfer(IMG, PTS, big)


def test_update_with_another_size_or_before_reset():
    tracker = CpuTracker()
    with pytest.raises(CorrespondenceError, match="before reset"):
        tracker.update(IMG)
    tracker.reset(IMG, PTS)
    with pytest.raises(CorrespondenceError, match="320x240"):
        tracker.update(procedural_texture(240, 320, seed=2))
    # The tracker still works after refusing a frame.
    r = tracker.update(IMG)
    assert np.allclose(r.points, PTS, atol=0.1)


def test_grey_image_with_channel_axis_is_accepted():
    tracker = CpuTracker()
    tracker.reset(IMG[:, :, :1].copy(), PTS)
    r = tracker.update(IMG[:, :, 1:2].copy())
    assert r.points.shape == (2, 2)


def test_no_points_is_allowed():
    tracker = CpuTracker()
    tracker.reset(IMG, np.zeros((0, 2)))
    r = tracker.update(IMG)
    assert r.points.shape == (0, 2) and r.confidence.shape == (0,)
    out, conf = tracker.transfer(IMG, np.zeros((0, 2)), IMG)
    assert out.shape == (0, 2) and conf.shape == (0,)


@pytest.mark.parametrize("field, value", [
    ("lk_window_px", 20), ("fb_max_error_px", 0.0), ("reanchor_period", -1),
    ("sift_ratio", 1.5), ("group_model", "fundamental"), ("group_min_matches", 3),
    ("local_min_matches", 2), ("confidence_decay", 0.0), ("matcher", "magic"),
    ("ncc_min", 0.9),
])
def test_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        CpuTrackerConfig(**{field: value})


def test_make_correspondence():
    assert isinstance(make_correspondence("cpu"), CpuTracker)
    tracker = make_correspondence("cpu", reanchor_period=3)
    assert tracker.cfg.reanchor_period == 3
    with pytest.raises(ValueError, match="cpu.*cotracker.*oracle"):
        make_correspondence("orb")
    with pytest.raises(ValueError, match="unknown option.*bogus"):
        make_correspondence("cpu", bogus=1)
    assert BACKENDS == ("cpu", "cotracker", "oracle")
