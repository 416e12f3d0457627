"""CoTracker backend against a stand-in with the official online predictor's call contract.

The stand-in (here, not in the product) behaves like
``cotracker.predictor.CoTrackerOnlinePredictor``: ``step``; a first call
with ``is_first_step=True`` that only stores the queries and returns
(None, None); later calls with a chunk of at most 2*step frames that run an
inner network ``model`` (returning tracks, visibility, confidence, extra) and
return (tracks (1, T, N, 2) pixels, visibility x confidence > 0.6). Its
"network" measures the translation of the newest frame against frame 0 by
phase correlation, so the adapter must feed the right frames in the right
order for the tracks to be right.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from atk_perception.backends import make_correspondence
from atk_perception.correspondence import CorrespondenceError
from atk_perception.cotracker_backend import CoTrackerBackend, CoTrackerConfig
from atk_fixtures.images import procedural_texture

STEP = 4
W, H = 160, 120


class _FakeNet(torch.nn.Module):
    """Inner network: per-point visibility and confidence heads chosen by the test."""

    def __init__(self, vis: np.ndarray, conf: np.ndarray, v2: bool = False) -> None:
        super().__init__()
        self.v2 = v2  # CoTracker2's network has no confidence head
        self.vis = torch.tensor(vis, dtype=torch.float32)
        self.conf = torch.tensor(conf, dtype=torch.float32)
        self.window_len = 2 * STEP
        self.online_ind = None
        self.frame0: np.ndarray | None = None
        self.n_processed = 0

    def init_video_online_processing(self) -> None:
        self.online_ind = 0

    def forward(self, video, queries, iters, is_online):
        assert is_online and self.online_ind is not None, "init_video_online_processing first"
        b, t, c, h, w = video.shape
        assert (b, c) == (1, 3) and t <= self.window_len
        newest = video[0, -1].permute(1, 2, 0).numpy().mean(axis=2).astype(np.float32)
        (dx, dy), _ = cv2.phaseCorrelate(self.frame0, newest)
        total = self.online_ind + self.window_len
        n = queries.shape[1]
        tracks = queries[:, None, :, 1:].repeat(1, total, 1, 1).clone()
        tracks[:, -1, :, 0] += dx
        tracks[:, -1, :, 1] += dy
        vis = self.vis[None, None, :n].repeat(1, total, 1)
        conf = self.conf[None, None, :n].repeat(1, total, 1)
        self.online_ind += self.window_len // 2
        if self.v2:
            return tracks, vis, None
        return tracks, vis, conf, None


class FakeOnlinePredictor(torch.nn.Module):
    """Same call contract as CoTrackerOnlinePredictor (identity resize, 0.6 threshold)."""

    def __init__(self, vis: np.ndarray, conf: np.ndarray, with_inner: bool = True,
                 v2: bool = False) -> None:
        super().__init__()
        self.step = STEP
        self.v2 = v2
        self.net_for_test = _FakeNet(vis, conf, v2)
        if with_inner:
            self.model = self.net_for_test
        self.calls: list[tuple[bool, int]] = []  # (is_first_step, chunk length)
        self.queries = None

    def forward(self, video_chunk, is_first_step=False, queries=None, grid_size=5,
                grid_query_frame=0, add_support_grid=False):
        b, t, c, h, w = video_chunk.shape
        assert video_chunk.dtype == torch.float32 and float(video_chunk.max()) > 1.5, \
            "frames must be float RGB in 0..255"
        self.calls.append((is_first_step, t))
        net = getattr(self, "model", self.net_for_test)
        if is_first_step:
            assert queries is not None and queries.shape[0] == 1 and queries.shape[2] == 3
            net.init_video_online_processing()
            self.net_for_test.frame0 = video_chunk[0, 0].permute(1, 2, 0).numpy().mean(
                axis=2).astype(np.float32)
            self.queries = queries.clone()
            return (None, None)
        out = net(video=video_chunk, queries=self.queries, iters=6, is_online=True)
        tracks, vis = out[0], out[1]
        if not self.v2:
            vis = vis * out[2]
        return tracks, vis > 0.6


def _shifted(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Circular shift by whole pixels: phase correlation measures it exactly."""
    return np.roll(img, (dy, dx), axis=(0, 1))


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "scaled_online.pth"
    path.write_bytes(b"stand-in weights")
    return str(path)


def _make(checkpoint, vis, conf, threshold=0.6, with_inner=True, v2=False):
    fake = FakeOnlinePredictor(np.asarray(vis), np.asarray(conf), with_inner, v2)
    backend = CoTrackerBackend(
        CoTrackerConfig(checkpoint=checkpoint, device="cpu", window_len=2 * STEP,
                        visibility_threshold=threshold, confidence_decay=0.8, v2=v2),
        predictor_factory=lambda cfg: fake)
    return backend, fake


def test_contract_rolling_window_and_decay(checkpoint):
    base = procedural_texture(H, W, seed=4)
    pts = np.array([[50.0, 40.0], [110.0, 80.0]], np.float32)
    backend, fake = _make(checkpoint, [0.95, 0.95], [0.9, 0.9])
    backend.reset(base, pts)
    assert fake.calls == [(True, 1)]
    shifts = [(k, -(k // 2)) for k in range(1, 20)]
    results = [backend.update(_shifted(base, dx, dy)) for dx, dy in shifts]
    # Frames 0..19 seen; a result when the frame count reaches 8, 12, 16, 20,
    # each from the last 2*step = 8 frames.
    assert fake.calls[1:] == [(False, 8)] * 4
    for k, r in enumerate(results, start=1):
        n_frames = k + 1
        if n_frames >= 2 * STEP and n_frames % STEP == 0:
            dx, dy = shifts[k - 1]
            np.testing.assert_allclose(r.points, pts + [dx, dy], atol=0.1)
            np.testing.assert_allclose(r.confidence, 0.95 * 0.9, atol=1e-5)
            assert r.visible.all()
        elif n_frames < 2 * STEP:
            np.testing.assert_allclose(r.points, pts)  # nothing computed yet
    # Between results: the last estimate, confidence decayed per frame.
    r8, r9, r10 = results[6], results[7], results[8]
    np.testing.assert_array_equal(r9.points, r8.points)
    assert r9.confidence[0] == pytest.approx(r8.confidence[0] * 0.8, rel=1e-5)
    assert r10.confidence[0] == pytest.approx(r8.confidence[0] * 0.8 ** 2, rel=1e-5)


def test_threshold_is_the_config_field_not_the_predictors(checkpoint):
    base = procedural_texture(H, W, seed=5)
    pts = np.array([[30.0, 30.0], [120.0, 90.0]], np.float32)
    # visibility x confidence: 0.81 and 0.45; the predictor's fixed 0.6 would hide point 1.
    for threshold, expected in ((0.6, [True, False]), (0.4, [True, True]),
                                (0.9, [False, False])):
        backend, _ = _make(checkpoint, [0.9, 0.5], [0.9, 0.9], threshold)
        backend.reset(base, pts)
        r = None
        for _ in range(2 * STEP - 1):
            r = backend.update(base)
        assert r.visible.tolist() == expected
        np.testing.assert_allclose(r.confidence, [0.81, 0.45], atol=1e-5)


def test_cotracker2_network_has_visibility_only(checkpoint):
    base = procedural_texture(H, W, seed=5)
    pts = np.array([[30.0, 30.0], [120.0, 90.0]], np.float32)
    backend, _ = _make(checkpoint, [0.9, 0.5], [0.1, 0.1], 0.4, v2=True)
    backend.reset(base, pts)
    for _ in range(2 * STEP - 1):
        r = backend.update(base)
    # The confidence head values (0.1) must not enter: visibility alone.
    np.testing.assert_allclose(r.confidence, [0.9, 0.5], atol=1e-5)
    assert r.visible.tolist() == [True, True]


def test_predictor_without_inner_heads_falls_back_to_booleans(checkpoint):
    base = procedural_texture(H, W, seed=6)
    pts = np.array([[30.0, 30.0], [120.0, 90.0]], np.float32)
    backend, _ = _make(checkpoint, [0.9, 0.5], [0.9, 0.9], 0.4, with_inner=False)
    backend.reset(base, pts)
    for _ in range(2 * STEP - 1):
        r = backend.update(base)
    assert r.visible.tolist() == [True, False]
    np.testing.assert_allclose(r.confidence, [1.0, 0.0])


def test_reset_starts_a_new_video(checkpoint):
    base = procedural_texture(H, W, seed=7)
    backend, fake = _make(checkpoint, [0.9], [0.9])
    backend.reset(base, np.array([[40.0, 40.0]]))
    for _ in range(3):
        backend.update(base)
    backend.reset(base, np.array([[60.0, 50.0]]))
    assert [c for c in fake.calls if c[0]] == [(True, 1), (True, 1)]
    for _ in range(2 * STEP - 2):
        backend.update(base)
    assert sum(1 for c in fake.calls if not c[0]) == 0  # the frame count restarted
    r = backend.update(base)
    np.testing.assert_allclose(r.points, [[60.0, 50.0]], atol=0.15)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth.*nothing is downloaded"):
        CoTrackerBackend(CoTrackerConfig(checkpoint=missing),
                         predictor_factory=lambda cfg: pytest.fail("must not be built"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        make_correspondence("cotracker", checkpoint=missing)
    with pytest.raises(ValueError, match="checkpoint"):
        make_correspondence("cotracker")


def test_missing_package_names_it_with_install_hint(checkpoint):
    try:
        import cotracker  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("cotracker is installed here")
    with pytest.raises(ImportError, match="cotracker.*pip install git\\+https://github.com/"
                                          "facebookresearch/co-tracker.*non-commercial"):
        make_correspondence("cotracker", checkpoint=checkpoint, device="cpu")


def test_bad_input_and_config(checkpoint):
    backend, _ = _make(checkpoint, [0.9], [0.9])
    base = procedural_texture(H, W, seed=8)
    with pytest.raises(CorrespondenceError, match="before reset"):
        backend.update(base)
    with pytest.raises(CorrespondenceError, match="outside"):
        backend.reset(base, np.array([[500.0, 10.0]]))
    backend.reset(base, np.array([[40.0, 40.0]]))
    with pytest.raises(CorrespondenceError, match="uint8"):
        backend.update(base.astype(np.float32))
    with pytest.raises(CorrespondenceError, match="320x240"):
        backend.update(procedural_texture(240, 320, seed=1))
    for field, value in (("window_len", 7), ("visibility_threshold", 1.0),
                         ("confidence_decay", 0.0), ("device", "tpu")):
        with pytest.raises(ValueError, match=field):
            CoTrackerConfig(checkpoint=checkpoint, **{field: value})


def test_transfer_delegates_to_cpu_sift(checkpoint):
    backend, _ = _make(checkpoint, [0.9], [0.9])
    base = procedural_texture(240, 320, seed=9)
    pts = np.array([[100.0, 80.0], [200.0, 150.0]], np.float32)
    moved = cv2.warpAffine(base, np.float32([[1, 0, 6.0], [0, 1, -4.0]]), (320, 240),
                           borderMode=cv2.BORDER_REFLECT)
    out, conf = backend.transfer(base, pts, moved)
    np.testing.assert_allclose(out, pts + [6.0, -4.0], atol=0.5)
    assert np.all(conf > 0.5)
