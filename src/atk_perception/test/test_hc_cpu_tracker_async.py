"""CPU h_C backend, background re-anchoring (reanchor_mode="async"): delays, reset, shutdown.

Deterministic: a step executor runs each background job only when the test
says so, so a re-anchoring is applied exactly m frames after its snapshot
whatever the thread timing. The real worker thread is exercised through
``wait_for_reanchor`` (no sleeps).
"""
from __future__ import annotations

from concurrent.futures import Executor, Future

import numpy as np
import pytest

from atk_perception.correspondence import CorrespondenceError
from atk_perception.cpu_tracker import CpuTracker, CpuTrackerConfig
from atk_fixtures.images import make_sequence

N_FRAMES = 100


class StepExecutor(Executor):
    """Holds submitted jobs until ``run_all`` (runs them in this thread, in order)."""

    def __init__(self) -> None:
        self.jobs: list = []
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self.jobs.append((future, fn, args, kwargs))
        self.submitted += 1
        return future

    def run_all(self) -> None:
        jobs, self.jobs = self.jobs, []
        for future, fn, args, kwargs in jobs:
            future.set_result(fn(*args, **kwargs))


def _run_delayed(seq, delay: int, cfg: CpuTrackerConfig | None = None):
    """Track ``seq`` with every re-anchoring applied ``delay`` frames after its snapshot.

    Returns errors (T-1, N) px, confidences (T-1, N), visibility (T-1, N),
    the tracker and the applied delays (one per applied re-anchoring).
    """
    cfg = cfg or CpuTrackerConfig(reanchor_mode="async")
    ex = StepExecutor()
    tracker = CpuTracker(cfg, executor=ex)
    tracker.reset(seq.frames[0], seq.points[0])
    errs, confs, vis, delays = [], [], [], []
    age, applied = 0, 0
    for t in range(1, len(seq.frames)):
        r = tracker.update(seq.frames[t])
        if tracker.reanchors_applied > applied:
            applied = tracker.reanchors_applied
            delays.append(tracker.last_anchor_delay_frames)
        if tracker.reanchor_pending:
            age += 1
            if age >= delay:
                ex.run_all()
                age = 0
        errs.append(np.linalg.norm(r.points - seq.points[t], axis=1))
        confs.append(r.confidence)
        vis.append(r.visible)
    return np.array(errs), np.array(confs), np.array(vis), tracker, delays


@pytest.fixture(scope="module")
def sequences():
    return {kind: make_sequence(kind, N_FRAMES, (640, 480), 16, seed=3)
            for kind in ("rotation", "scale", "lighting", "distractors", "occlusion")}


def test_mode_is_validated():
    with pytest.raises(ValueError, match="reanchor_mode"):
        CpuTrackerConfig(reanchor_mode="background")
    # The library default stays deterministic (offline propagation, evaluation).
    assert CpuTrackerConfig().reanchor_mode == "split"


@pytest.mark.parametrize("kind", ["rotation", "scale", "lighting", "distractors", "occlusion"])
def test_drift_with_three_frames_of_delay(sequences, kind):
    # Three frames: a ~100 ms job at 30 fps. The correction computed on frame
    # k is carried forward by the LK motion k -> k+3.
    seq = sequences[kind]
    errs, conf, _, tracker, delays = _run_delayed(seq, 3)
    vis = seq.visible[1:]
    assert delays and set(delays) == {3}, delays
    assert tracker.reanchors_applied >= 10
    assert np.median(errs[-1][vis[-1]]) < 0.5, errs[-1]
    assert np.mean(errs[vis] < 3.0) > 0.95
    assert np.all((conf >= 0) & (conf <= 1))


def test_delayed_reanchoring_still_beats_plain_lk(sequences):
    seq = sequences["rotation"]
    good, *_ = _run_delayed(seq, 3)
    plain = CpuTracker(CpuTrackerConfig(reanchor_period=0))
    plain.reset(seq.frames[0], seq.points[0])
    plain_errs = [np.linalg.norm(plain.update(f).points - p, axis=1)
                  for f, p in zip(seq.frames[1:], seq.points[1:])]
    vis = seq.visible[1:]
    assert good[vis].mean() < 0.5 * np.array(plain_errs)[vis].mean()


def test_confidence_decays_from_the_snapshot_frame(sequences):
    seq = sequences["lighting"]
    cfg = CpuTrackerConfig(reanchor_mode="async", reanchor_period=10, confidence_decay=0.9)
    _, conf, vis, _, delays = _run_delayed(seq, 3, cfg)
    assert set(delays) == {3}, delays
    med = np.median(conf, axis=1)
    # Snapshots at frames 10, 20, ...; applied at 13, 23, ... with 3 frames
    # of decay already counted. Between applications the confidence falls.
    for start in (13, 23, 33):
        seg = med[start - 1:start + 9]      # frames start .. start+9
        assert np.all(np.diff(seg) < 0), seg
        assert seg[0] <= 0.9 ** 3 + 1e-6, seg[0]


def test_reset_while_a_job_is_pending_discards_it(sequences):
    seq = sequences["rotation"]
    ex = StepExecutor()
    tracker = CpuTracker(CpuTrackerConfig(reanchor_mode="async", reanchor_period=2), executor=ex)
    tracker.reset(seq.frames[0], seq.points[0])
    tracker.update(seq.frames[1])
    tracker.update(seq.frames[2])
    assert tracker.reanchor_pending
    # Restart on a later part of the stream with other points: the old job
    # (template of the first reset) must never move the new points.
    tracker.reset(seq.frames[50], seq.points[50])
    assert not tracker.reanchor_pending
    ex.run_all()
    r = tracker.update(seq.frames[51])
    assert tracker.reanchors_applied == 0 and tracker.last_anchor is None
    assert np.median(np.linalg.norm(r.points - seq.points[51], axis=1)) < 0.5


def test_real_worker_wait_and_close(sequences):
    seq = sequences["rotation"]
    tracker = CpuTracker(CpuTrackerConfig(reanchor_mode="async", reanchor_period=1))
    tracker.reset(seq.frames[0], seq.points[0])
    assert tracker.wait_for_reanchor() is False       # nothing in flight
    tracker.update(seq.frames[1])
    assert tracker.reanchor_pending
    assert tracker.wait_for_reanchor(timeout_s=30.0) is True
    tracker.update(seq.frames[2])
    assert tracker.reanchors_applied == 1 and tracker.last_anchor_delay_frames == 1
    assert tracker.reanchor_pending                    # the next one, for frame 2
    tracker.close()                                    # joins the worker with a job in flight
    assert not tracker.reanchor_pending
    tracker.close()                                    # idempotent
    with pytest.raises(CorrespondenceError, match="close"):
        tracker.update(seq.frames[3])
    # transfer does not need the worker.
    out, conf = tracker.transfer(seq.frames[0], seq.points[0], seq.frames[3])
    assert out.shape == (16, 2)


def test_inline_and_split_never_start_a_worker(sequences):
    seq = sequences["rotation"]
    for mode in ("inline", "split"):
        ex = StepExecutor()
        tracker = CpuTracker(CpuTrackerConfig(reanchor_mode=mode, reanchor_period=2), executor=ex)
        tracker.reset(seq.frames[0], seq.points[0])
        for f in seq.frames[1:8]:
            tracker.update(f)
        assert ex.submitted == 0 and tracker.reanchors_applied == 3, mode
