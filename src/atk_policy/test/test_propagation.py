"""Algorithm 1 propagation with the real CPU h_C on real-photo sequences."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_policy.dataset import ArrayFrames, Episode
from atk_policy.propagation import PropagationError, TrackedEpisode, cache_key, propagate_dataset

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"
W, H = 200, 150


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(DATA / "rubberwhale1.png"))[:, :, ::-1])


def _pan_episode(photo: np.ndarray, name: str, start: tuple[int, int], vel: tuple[int, int], t: int) -> Episode:
    """Camera panning over the photograph: frame k is the crop at start + k * vel (pixels)."""
    frames = np.stack([photo[start[1] + k * vel[1]:start[1] + k * vel[1] + H,
                             start[0] + k * vel[0]:start[0] + k * vel[0] + W] for k in range(t)])
    return Episode(name, ArrayFrames(np.ascontiguousarray(frames)), np.arange(t) / 10.0,
                   np.zeros((t, 7)), np.zeros((t, 7)))


def _truth(cands: np.ndarray, template_origin, start, vel, t: int) -> np.ndarray:
    """(T, C, 2): a template point p shows at p + template_origin - (start + k vel) in frame k."""
    k = np.arange(t)[:, None, None]
    return cands[None] + np.asarray(template_origin) - (np.asarray(start) + k * np.asarray(vel))


def test_transfer_then_track_follows_known_motion(photo, tmp_path):
    origin = (150, 100)
    template = np.ascontiguousarray(photo[origin[1]:origin[1] + H, origin[0]:origin[0] + W])
    cands = np.array([[x, y] for x in (60, 100, 140) for y in (50, 75, 100)], np.float32)
    specs = [("a", (145, 104), (1, 0), 12), ("b", (156, 96), (0, 1), 10)]
    eps = [_pan_episode(photo, n, s, v, t) for n, s, v, t in specs]
    out = propagate_dataset(eps, template, cands, backend="cpu", cache_dir=tmp_path, progress=False)
    assert [te.name for te in out] == ["a", "b"]
    for te, (_, s, v, t) in zip(out, specs):
        assert te.tracks.shape == (t, 9, 2) and te.visible.shape == (t, 9) and te.confidence.shape == (t, 9)
        err = np.linalg.norm(te.tracks - _truth(cands, origin, s, v, t), axis=2)
        assert np.median(err[0]) < 1.0, err[0]          # transfer from I_can
        assert np.median(err) < 1.5 and err[te.visible].max() < 4.0, err
        assert te.confidence[0].mean() > 0.3
    # Second run: every episode comes from the cache, identical.
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 2
    again = propagate_dataset(eps, template, cands, backend="cpu", cache_dir=tmp_path, progress=False)
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a.tracks, b.tracks)
    # The key changes with any input.
    k0 = cache_key(eps[0], template, cands, "cpu", 0.0)
    assert k0 != cache_key(eps[0], template, cands + 1, "cpu", 0.0)
    assert k0 != cache_key(eps[0], template, cands, "cpu", 0.5)
    assert k0 != cache_key(eps[1], template, cands, "cpu", 0.0)


BUILT: list[int] = []


def _counting_cpu_backend():
    """The real CPU h_C, counting how often it is built (once per propagated episode)."""
    from atk_perception.backends import make_correspondence

    BUILT.append(1)
    return make_correspondence("cpu")


def test_cached_episodes_do_not_run_hc(photo, tmp_path):
    template = np.ascontiguousarray(photo[100:100 + H, 150:150 + W])
    cands = np.array([[100, 75]], np.float32)
    eps = [_pan_episode(photo, n, (150, 100), (1, 1), 4) for n in ("a", "b")]
    BUILT.clear()
    first = propagate_dataset(eps, template, cands, backend=_counting_cpu_backend, cache_dir=tmp_path,
                              progress=False)
    assert len(BUILT) == 2
    second = propagate_dataset(eps, template, cands, backend=_counting_cpu_backend, cache_dir=tmp_path,
                               progress=False)
    assert len(BUILT) == 2
    np.testing.assert_array_equal(second[1].tracks, first[1].tracks)


def test_parallel_workers_match_serial(photo):
    template = np.ascontiguousarray(photo[100:100 + H, 150:150 + W])
    cands = np.array([[60, 50], [140, 100]], np.float32)
    eps = [_pan_episode(photo, f"e{i}", (150 + i, 100), (1, 0), 6) for i in range(3)]
    serial = propagate_dataset(eps, template, cands, workers=1, progress=False)
    parallel = propagate_dataset(eps, template, cands, workers=2, progress=False)
    assert [t.name for t in parallel] == ["e0", "e1", "e2"]
    for a, b in zip(serial, parallel):
        np.testing.assert_allclose(a.tracks, b.tracks, atol=1e-4)


def test_bad_tracks_and_inputs_are_named(photo):
    ok = dict(visible=np.ones((3, 2), bool), confidence=np.ones((3, 2)), proprio=np.zeros((3, 7)),
              actions=np.zeros((3, 7)), image_size=(100, 80))
    tr = np.full((3, 2, 2), 10.0)
    tr[2, 1] = np.nan
    with pytest.raises(PropagationError, match=r"episode 'x'.*NaN.*step 2, candidate 1"):
        TrackedEpisode("x", tr, **ok)
    tr = np.full((3, 2, 2), 10.0)
    tr[1, 0] = [150.0, 10.0]
    with pytest.raises(PropagationError, match=r"episode 'y'.*outside the 100x80 image.*step 1, candidate 0"):
        TrackedEpisode("y", tr, **ok)
    template = np.ascontiguousarray(photo[:H, :W])
    eps = [_pan_episode(photo, "a", (0, 0), (1, 0), 3)]
    with pytest.raises(PropagationError, match="outside"):
        propagate_dataset(eps, template, np.array([[W + 5, 10]], np.float32), progress=False)
    with pytest.raises(PropagationError, match="canonical image is 100x"):
        propagate_dataset(eps, np.ascontiguousarray(template[:, :100]), np.array([[5, 5]], np.float32),
                          progress=False)
