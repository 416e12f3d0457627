"""CPU h_C backend on synthetic sequences with ground truth (seeded)."""
from __future__ import annotations

import numpy as np
import pytest

from atk_perception.correspondence import Correspondence
from atk_perception.cpu_tracker import CpuTracker, CpuTrackerConfig
from atk_fixtures.images import make_sequence, moved_object_scene, moved_object_sequence

N_FRAMES = 100


def _run(tracker: CpuTracker, seq) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Errors (T-1, N) px, confidences (T-1, N), reported visibility (T-1, N)."""
    tracker.reset(seq.frames[0], seq.points[0])
    errs, confs, vis = [], [], []
    for t in range(1, len(seq.frames)):
        r = tracker.update(seq.frames[t])
        assert r.points.shape == seq.points[t].shape and r.points.dtype == np.float32
        errs.append(np.linalg.norm(r.points - seq.points[t], axis=1))
        confs.append(r.confidence)
        vis.append(r.visible)
    return np.array(errs), np.array(confs), np.array(vis)


class _Lazy(dict):
    """Computed on first use, shared by the tests of this module (each run costs seconds)."""

    def __init__(self, make):
        super().__init__()
        self._make = make

    def __missing__(self, key):
        self[key] = value = self._make(key)
        return value


@pytest.fixture(scope="module")
def sequences():
    return _Lazy(lambda kind: make_sequence(kind, N_FRAMES, (640, 480), 16, seed=3))


@pytest.fixture(scope="module")
def default_runs(sequences):
    """kind -> (errors, confidences, visibility) of the default tracker."""
    return _Lazy(lambda kind: _run(CpuTracker(), sequences[kind]))


def test_is_a_correspondence():
    assert isinstance(CpuTracker(), Correspondence)


@pytest.mark.parametrize("kind", ["rotation", "scale", "lighting", "distractors", "occlusion"])
def test_drift_stays_below_one_pixel(sequences, default_runs, kind):
    seq = sequences[kind]
    errs, conf, _ = default_runs[kind]
    vis = seq.visible[1:]
    # Drift: where the points are after 100 frames (median over the visible
    # points, robust to one point that is just re-entering the image).
    # The target is < 1 px; this implementation measures 0.01-0.1 px here.
    assert np.median(errs[-1][vis[-1]]) < 0.5, errs[-1]
    # Over the whole sequence: nearly all visible estimates within 3 px.
    assert np.mean(errs[vis] < 3.0) > 0.95
    assert np.all((conf >= 0) & (conf <= 1))


def test_reanchoring_beats_plain_lk(sequences, default_runs):
    seq = sequences["occlusion"]
    plain, _, _ = _run(CpuTracker(CpuTrackerConfig(reanchor_period=0)), seq)
    anchored, _, _ = default_runs["occlusion"]
    vis = seq.visible[1:]
    assert anchored[vis].mean() < 0.5 * plain[vis].mean()


def test_confidence_decays_between_reanchors(sequences):
    seq = sequences["lighting"]
    # Inline: the re-anchoring then lands exactly on frames 10, 20, ...
    cfg = CpuTrackerConfig(reanchor_period=10, confidence_decay=0.9, reanchor_mode="inline")
    _, conf, vis = _run(CpuTracker(cfg), seq)
    # Frames 10 (re-anchored) .. 19: the median confidence must fall steadily.
    med = np.median(conf[9:19], axis=1)
    assert np.all(np.diff(med) < 0), med
    assert med[-1] < 0.5 * med[0]


def test_occluded_points_are_reported_not_visible(sequences, default_runs):
    seq = sequences["occlusion"]
    _, conf, vis = default_runs["occlusion"]
    hidden = ~seq.visible[1:]
    assert hidden.sum() > 20, "the sequence must occlude some points"
    # Most truly hidden samples are reported invisible with zero confidence.
    assert np.mean(~vis[hidden]) > 0.8
    assert np.mean(conf[hidden] < 0.1) > 0.8
    assert np.mean(vis[~hidden]) > 0.9


def test_transfer_object_moved_background_static():
    tpl, tgt, pts, true = moved_object_scene(seed=5, move_object=True, move_background=False)
    out, conf = CpuTracker().transfer(tpl, pts, tgt)
    err = np.linalg.norm(out - true, axis=1)
    # Points on the small moved object (first half) must follow it, not the
    # static table around it.
    assert np.all(err[:6] < 1.5), err
    assert np.all(err[6:] < 1.0), err
    assert np.all(conf > 0.5), conf


def test_transfer_background_moved_object_static_on_it():
    tpl, tgt, pts, true = moved_object_scene(seed=6, move_object=False, move_background=True)
    out, conf = CpuTracker().transfer(tpl, pts, tgt)
    err = np.linalg.norm(out - true, axis=1)
    assert np.all(err < 1.5), err
    assert np.all(conf > 0.5), conf


def test_transfer_unrelated_image_has_low_confidence():
    tpl, _, pts, _ = moved_object_scene(seed=7)
    other, _, _, _ = moved_object_scene(seed=8)
    _, conf = CpuTracker().transfer(tpl, pts, other)
    assert np.median(conf) < 0.3, conf


def test_grey_and_rgb_give_the_same_track(sequences):
    seq = sequences["scale"]
    a, b = CpuTracker(), CpuTracker()
    a.reset(seq.frames[0], seq.points[0])
    grey0 = seq.frames[0].mean(axis=2).astype(np.uint8)
    b.reset(grey0, seq.points[0])
    for t in range(1, 6):
        ra = a.update(seq.frames[t])
        rb = b.update(seq.frames[t].mean(axis=2).astype(np.uint8))
        # Grey conversions differ slightly (luma weights vs plain mean).
        assert np.median(np.linalg.norm(ra.points - rb.points, axis=1)) < 0.3


@pytest.fixture(scope="module")
def object_sequence():
    return moved_object_sequence(30, (640, 480), seed=5)


def test_tracking_a_small_object_over_a_static_table(object_sequence):
    seq = object_sequence
    errs, conf, vis = _run(CpuTracker(), seq)
    # Object points (first half) travel ~70 px and turn 25 deg; table points stay.
    assert np.linalg.norm(seq.points[-1][:6] - seq.points[0][:6], axis=1).min() > 40
    assert errs[-1].max() < 1.0, errs[-1]
    assert np.all(conf[-1] > 0.5) and vis[-1].all()


def test_without_motion_groups_the_table_does_not_drag_object_points(object_sequence):
    """One motion model only (no grouping): the re-anchoring sees only the
    table's motion. The appearance check must keep it from pulling the object
    points back to where the object was, and their confidence must say so."""
    seq = object_sequence
    errs, conf, _ = _run(CpuTracker(CpuTrackerConfig(group_max_models=1)), seq)
    assert errs[-1][:6].max() < 8.0, errs[-1]        # not dragged ~70 px back
    assert np.all(conf[-1][:6] < 0.2), conf[-1]      # and reported as doubtful
    assert np.all(errs[-1][6:] < 0.5) and np.all(conf[-1][6:] > 0.5)


def test_transfer_without_motion_groups_fails_and_says_so():
    tpl, tgt, pts, true = moved_object_scene(seed=5)
    out, conf = CpuTracker(CpuTrackerConfig(group_max_models=1)).transfer(tpl, pts, tgt)
    err = np.linalg.norm(out - true, axis=1)
    assert np.all(err[:6] > 20.0), err                # the table's motion was used...
    assert np.all(conf[:6] < 0.5), conf               # ...and the confidence is low


def test_unsplit_reanchoring_holds_drift_too(sequences):
    seq = sequences["rotation"]
    errs, _, _ = _run(CpuTracker(CpuTrackerConfig(reanchor_mode="inline")), seq)
    vis = seq.visible[1:]
    assert np.median(errs[-1][vis[-1]]) < 0.5, errs[-1]
    assert np.mean(errs[vis] < 3.0) > 0.95
