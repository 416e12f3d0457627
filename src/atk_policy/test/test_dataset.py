"""Episode contract, validation errors, and the on-disk episode cache."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_policy.dataset import (ArrayFrames, DatasetError, Episode, PngFrames, filter_episodes,
                                load_episode_cache, save_episode_cache)

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"


def _real_frames(n: int) -> np.ndarray:
    """n real frames (RGB): the rubber-whale photograph shifted by t pixels."""
    img = cv2.imread(str(DATA / "rubberwhale1.png"))[:, :, ::-1]
    return np.stack([np.ascontiguousarray(img[40:160, 40 + t:200 + t]) for t in range(n)])


def _episode(name: str = "ep", t: int = 6, **kw) -> Episode:
    rng = np.random.default_rng(0)
    args = dict(name=name, frames=ArrayFrames(_real_frames(t)), stamps=np.arange(t) * 0.1,
                proprio=np.c_[rng.normal(size=(t, 6)), np.zeros(t)],
                actions=np.c_[rng.normal(size=(t, 6)), np.ones(t)])
    args.update(kw)
    return Episode(**args)


def test_episode_converts_dtypes_and_reports_size():
    ep = _episode()
    assert ep.proprio.dtype == np.float32 and ep.actions.dtype == np.float32
    assert ep.stamps.dtype == np.float64
    assert ep.image_size == (160, 120) and len(ep) == 6
    assert ep.frames[2].shape == (120, 160, 3)


@pytest.mark.parametrize("kw, words", [
    (dict(stamps=np.zeros(0), proprio=np.zeros((0, 7)), actions=np.zeros((0, 7))), ["'bad'", "empty"]),
    (dict(actions=np.zeros((6, 6))), ["'bad'", "'actions'", "(T, 7)"]),
    (dict(proprio=np.zeros((5, 7))), ["'bad'", "'proprio'", "5 steps"]),
    (dict(stamps=np.array([0, 0.1, 0.1, 0.3, 0.4, 0.5])), ["'bad'", "'stamps'", "increasing"]),
    (dict(proprio=np.full((6, 7), np.nan)), ["'bad'", "'proprio'", "non-finite"]),
    (dict(actions=np.c_[np.zeros((6, 6)), np.full(6, 255.0)]), ["'bad'", "'actions'", "gripper"]),
    (dict(frames=ArrayFrames(np.zeros((4, 8, 8, 3), np.uint8))), ["'bad'", "'frames'", "4 frames"]),
])
def test_bad_episode_fields_are_named(kw, words):
    with pytest.raises(DatasetError) as exc:
        _episode("bad", **kw)
    for w in words:
        assert w in str(exc.value)


def test_filter_lists_skipped_episodes_with_reason():
    kept, skipped = filter_episodes([_episode("a", 6), _episode("short", 2), _episode("b", 5)], min_length=4)
    assert [e.name for e in kept] == ["a", "b"]
    assert [s.name for s in skipped] == ["short"] and "too short" in skipped[0].reason
    with pytest.raises(DatasetError, match="no usable episodes.*short"):
        filter_episodes([_episode("short", 2)], min_length=4)
    with pytest.raises(DatasetError, match="named 'a'"):
        filter_episodes([_episode("a"), _episode("a")], min_length=1)


def test_cache_round_trip_is_lossless_and_lazy(tmp_path):
    eps = [_episode("pick/one", 5), _episode("pick:two", 4, success=False, meta={"seed": 3})]
    save_episode_cache(eps, tmp_path / "c", progress=False)
    with pytest.raises(DatasetError, match="already holds"):
        save_episode_cache(eps, tmp_path / "c", progress=False)
    back = load_episode_cache(tmp_path / "c")
    assert [e.name for e in back] == ["pick/one", "pick:two"]
    assert isinstance(back[0].frames, PngFrames)
    assert back[1].success is False and back[1].meta == {"seed": 3}
    for a, b in zip(eps, back):
        np.testing.assert_array_equal(a.proprio, b.proprio)
        np.testing.assert_array_equal(a.stamps, b.stamps)
        for t in range(len(a)):
            np.testing.assert_array_equal(a.frames[t], b.frames[t])
    # Lazy: a deleted frame fails only when it is read, naming the file.
    back[0].frames.path(3).unlink()
    assert back[0].frames[2].shape == (120, 160, 3)
    with pytest.raises(DatasetError, match="000003.png"):
        back[0].frames[3]
