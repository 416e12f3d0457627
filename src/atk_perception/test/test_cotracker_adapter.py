"""CoTracker backend against a stand-in with the official online predictor's call contract,
and against the real predictor class where the co-tracker package is importable.

The stand-in (here, not in the product) behaves like
``cotracker.predictor.CoTrackerOnlinePredictor`` of the released CoTracker3
online model: ``step`` 8 (window 16); a first call with
``is_first_step=True`` that only stores the queries, scaled to the model
resolution (384x512), and returns (None, None); later calls with a chunk of
at most 2*step frames, resized bilinearly to the model resolution, that run
an inner network ``model`` (returning tracks, visibility, confidence, extra)
and return (tracks (1, T, N, 2) scaled back to pixels, visibility x
confidence > 0.6). Its "network" measures the translation of the newest
frame against frame 0 by phase correlation, so the adapter must feed the
right frames in the right order for the tracks to be right.

The real predictor is built from a random-weight checkpoint the test saves
(nothing is downloaded); those tests are skipped where ``cotracker`` is not
importable (it is not on PyPI, see cotracker_backend's docstring).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atk_perception.backends import make_correspondence
from atk_perception.correspondence import CorrespondenceError
from atk_perception.cotracker_backend import (CheckpointError, CheckpointInfo, CoTrackerBackend, CoTrackerConfig,
                                              check_checkpoint, inspect_checkpoint)
from atk_fixtures.images import procedural_texture

STEP = 8                  # the released CoTracker3 online model: window_len 16, step = window_len // 2
WINDOW = 2 * STEP
INTERP = (384, 512)       # its model_resolution (H, W): every frame is resized to it
W, H = 160, 120


class _FakeNet(torch.nn.Module):
    """Inner network: per-point visibility and confidence heads chosen by the test."""

    def __init__(self, vis: np.ndarray, conf: np.ndarray, v2: bool = False) -> None:
        super().__init__()
        self.v2 = v2  # CoTracker2's network has no confidence head
        self.vis = torch.tensor(vis, dtype=torch.float32)
        self.conf = torch.tensor(conf, dtype=torch.float32)
        self.window_len = WINDOW
        self.model_resolution = INTERP
        self.online_ind = None
        self.frame0: np.ndarray | None = None
        self.n_processed = 0

    def init_video_online_processing(self) -> None:
        self.online_ind = 0

    def forward(self, video, queries, iters, is_online):
        assert is_online and self.online_ind is not None, "init_video_online_processing first"
        b, t, c, h, w = video.shape
        assert (b, c) == (1, 3) and t <= self.window_len and (h, w) == INTERP
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


def _resize(video: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, T, 3, *INTERP), as the official predictor resizes."""
    b, t, c, h, w = video.shape
    out = F.interpolate(video.reshape(b * t, c, h, w), INTERP, mode="bilinear", align_corners=True)
    return out.reshape(b, t, c, *INTERP)


class FakeOnlinePredictor(torch.nn.Module):
    """Same call contract as CoTrackerOnlinePredictor: step 8, resize to 384x512, 0.6 threshold."""

    def __init__(self, vis: np.ndarray, conf: np.ndarray, with_inner: bool = True,
                 v2: bool = False) -> None:
        super().__init__()
        self.v2 = v2
        self.net_for_test = _FakeNet(vis, conf, v2)
        if with_inner:
            self.model = self.net_for_test
        self.interp_shape = INTERP
        self.step = self.net_for_test.window_len // 2
        self.calls: list[tuple[bool, int]] = []  # (is_first_step, chunk length)
        self.queries = None

    def forward(self, video_chunk, is_first_step=False, queries=None, grid_size=5,
                grid_query_frame=0, add_support_grid=False):
        b, t, c, h, w = video_chunk.shape
        assert video_chunk.dtype == torch.float32 and float(video_chunk.max()) > 1.5, \
            "frames must be float RGB in 0..255"
        self.calls.append((is_first_step, t))
        net = getattr(self, "model", self.net_for_test)
        scale = torch.tensor([(INTERP[1] - 1) / (w - 1), (INTERP[0] - 1) / (h - 1)])
        if is_first_step:
            assert queries is not None and queries.shape[0] == 1 and queries.shape[2] == 3
            net.init_video_online_processing()
            self.net_for_test.frame0 = _resize(video_chunk)[0, 0].permute(1, 2, 0).numpy().mean(
                axis=2).astype(np.float32)
            self.queries = queries.clone()
            self.queries[:, :, 1:] *= scale
            return (None, None)
        out = net(video=_resize(video_chunk), queries=self.queries, iters=6, is_online=True)
        tracks, vis = out[0], out[1]
        if not self.v2:
            vis = vis * out[2]
        return tracks / scale, vis > 0.6


def _shifted(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Circular shift by whole pixels: phase correlation measures it exactly."""
    return np.roll(img, (dy, dx), axis=(0, 1))


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "scaled_online.pth"
    path.write_bytes(b"stand-in weights")
    return str(path)


def _make(checkpoint, vis, conf, threshold=0.6, with_inner=True, v2=False, decay=0.8):
    fake = FakeOnlinePredictor(np.asarray(vis), np.asarray(conf), with_inner, v2)
    backend = CoTrackerBackend(
        CoTrackerConfig(checkpoint=checkpoint, device="cpu",
                        visibility_threshold=threshold, confidence_decay=decay, v2=v2),
        predictor_factory=lambda cfg: fake)
    return backend, fake


def test_contract_rolling_window_and_decay(checkpoint):
    base = procedural_texture(H, W, seed=4)
    pts = np.array([[50.0, 40.0], [110.0, 80.0]], np.float32)
    backend, fake = _make(checkpoint, [0.95, 0.95], [0.9, 0.9], decay=0.95)
    assert backend.step == STEP
    backend.reset(base, pts)
    assert fake.calls == [(True, 1)]
    # small shifts (phase correlation of the resized frames stays exact), every frame's differs from
    # its neighbours', so a frame fed out of order shows
    shifts = [((3 * k) % 13, -((2 * k) % 7)) for k in range(1, 40)]
    results = [backend.update(_shifted(base, dx, dy)) for dx, dy in shifts]
    # Frames 0..39 seen; a result when the frame count reaches 16, 24, 32, 40,
    # each from the last 2*step = 16 frames, resized to the model resolution
    # and scaled back.
    assert fake.calls[1:] == [(False, WINDOW)] * 4
    for k, r in enumerate(results, start=1):
        n_frames = k + 1
        if n_frames >= WINDOW and n_frames % STEP == 0:
            dx, dy = shifts[k - 1]
            np.testing.assert_allclose(r.points, pts + [dx, dy], atol=0.5)  # < the >= 1 px between frames
            np.testing.assert_allclose(r.confidence, 0.95 * 0.9, atol=1e-5)
            assert r.visible.all()
        elif n_frames < WINDOW:
            np.testing.assert_allclose(r.points, pts)  # nothing computed yet
    # Between results: the last estimate, confidence decayed per frame.
    r16, r17, r18 = results[14], results[15], results[16]
    np.testing.assert_array_equal(r17.points, r16.points)
    assert r17.confidence[0] == pytest.approx(r16.confidence[0] * 0.95, rel=1e-5)
    assert r18.confidence[0] == pytest.approx(r16.confidence[0] * 0.95 ** 2, rel=1e-5)


def test_visible_follows_the_decayed_confidence(checkpoint):
    """Found by running the adapter: before the first window `visible` stayed true while the decayed
    confidence fell below the threshold (8/8 visible at 0.23). A stale estimate is visible only while
    its confidence exceeds visibility_threshold, before the first window and between windows."""
    base = procedural_texture(H, W, seed=3)
    pts = np.array([[50.0, 40.0], [110.0, 80.0]], np.float32)
    backend, _ = _make(checkpoint, [1.0, 1.0], [0.9, 0.7], threshold=0.6, decay=0.9)
    backend.reset(base, pts)
    for k in range(1, 3 * STEP + 1):
        r = backend.update(base)
        n_frames = k + 1
        if n_frames < WINDOW:
            expected = np.full(2, 0.9 ** k, np.float32)  # the reset points, decaying from 1
        else:
            since = (n_frames - WINDOW) % STEP
            expected = np.array([0.9, 0.7], np.float32) * np.float32(0.9 ** since)
        np.testing.assert_allclose(r.confidence, expected, rtol=1e-5)
        assert r.visible.tolist() == (expected > 0.6).tolist(), (k, r.confidence, r.visible)
    # frame 15 before the first window: confidence 0.9**14 = 0.23, not visible
    backend.reset(base, pts)
    for _ in range(WINDOW - 2):
        r = backend.update(base)
    assert r.confidence[0] == pytest.approx(0.9 ** 14, rel=1e-5) and not r.visible.any()


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


def test_missing_package_names_it_with_install_hint(tmp_path):
    try:
        import cotracker  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("cotracker is installed here")
    checkpoint = _fabricated_checkpoint(tmp_path, version=3, window_len=16)
    with pytest.raises(ImportError, match="cotracker.*pip install git\\+https://github.com/"
                                          "facebookresearch/co-tracker.*non-commercial"):
        make_correspondence("cotracker", checkpoint=checkpoint, device="cpu")


# ----------------------------------------------------------- checkpoint and device checks

def _fabricated_checkpoint(tmp_path: Path, version: int, window_len: int, name: str = "fab.pth",
                           wrap: bool = False) -> str:
    """The keys inspect_checkpoint reads, laid out as the official architectures name them
    (CoTracker3: corr_mlp.*, time_emb (1, window, 1110); CoTracker2: track_feat_updater.*,
    time_emb (1, window, 456)); the real classes are checked in the test_real_* tests below."""
    state = {"time_emb": torch.zeros(1, window_len, 1110 if version == 3 else 456)}
    state["corr_mlp.fc1.weight" if version == 3 else "track_feat_updater.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / name
    torch.save({"model": state} if wrap else state, path)
    return str(path)


def test_checkpoint_fixes_version_and_window(tmp_path):
    v3 = _fabricated_checkpoint(tmp_path, 3, 16, "v3.pth", wrap=True)
    v2 = _fabricated_checkpoint(tmp_path, 2, 8, "v2.pth")
    assert inspect_checkpoint(v3) == CheckpointInfo(3, 16)
    assert inspect_checkpoint(v2) == CheckpointInfo(2, 8)
    assert check_checkpoint(CoTrackerConfig(checkpoint=v3)).window_len == 16  # window_len 0: the checkpoint's
    assert check_checkpoint(CoTrackerConfig(checkpoint=v3, window_len=16)).window_len == 16
    assert check_checkpoint(CoTrackerConfig(checkpoint=v2, v2=True)).version == 2
    for cfg, match in ((CoTrackerConfig(checkpoint=v2), "is a CoTracker2 checkpoint: set v2.*cotracker_v2: true"),
                       (CoTrackerConfig(checkpoint=v3, v2=True), "is a CoTracker3 checkpoint, but v2 is set"),
                       (CoTrackerConfig(checkpoint=v3, window_len=8),
                        "window_len 8 does not match .* whose window is 16 frames.*leave window_len at 0")):
        with pytest.raises(CheckpointError, match=match) as info:
            check_checkpoint(cfg)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"stand-in weights", b"", "truncated"])
def test_damaged_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "scaled_online.pth"
    if content == "truncated":
        good = _fabricated_checkpoint(tmp_path, 3, 16)
        path.write_bytes(Path(good).read_bytes()[:200])
    else:
        path.write_bytes(content)
    # through the backend's default (official) factory: refused before the package is imported
    with pytest.raises(CheckpointError, match="cannot be read .*damaged or not a PyTorch checkpoint") as info:
        CoTrackerBackend(CoTrackerConfig(checkpoint=str(path), device="cpu"))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)  # the tracker node's startup errors: exit 2


def test_a_checkpoint_without_cotracker_keys_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="no time_emb"):
        inspect_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        inspect_checkpoint(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_a_clear_error(checkpoint):
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=f"device = '{device}': CUDA is not available.*use device 'cpu'"):
            CoTrackerBackend(CoTrackerConfig(checkpoint=checkpoint, device=device),
                             predictor_factory=lambda cfg: pytest.fail("must not be built"))


def _tracker_startup(tmp_path: Path, *params: str) -> tuple[int, str]:
    template = tmp_path / "template.png"
    cv2.imwrite(str(template), procedural_texture(120, 160, seed=1))
    args = [sys.executable, "-m", "atk_perception.tracker_node", "--ros-args",
            "-r", f"__ns:=/cotracker{os.getpid()}", "-p", "backend:=cotracker", "-p", "points:=[40.0, 40.0]",
            "-p", f"template_image:={template}"]
    for p in params:
        args += ["-p", p]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        out, _ = proc.communicate(timeout=120)  # torch import on a loaded machine
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


@pytest.mark.parametrize("kind", ["damaged", "v2_as_v3", "window", "cuda"])
def test_tracker_node_refuses_a_bad_cotracker_setup_with_exit_2_and_one_line(tmp_path, kind):
    """The node's promise for operator errors: exit 2, one line, no traceback (was: exit 1 + traceback)."""
    pytest.importorskip("rclpy")
    if kind == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"\x80\x02not a checkpoint")
    v3 = _fabricated_checkpoint(tmp_path, 3, 16, "v3.pth")
    params = {"damaged": [f"checkpoint:={damaged}"],
              "v2_as_v3": [f"checkpoint:={_fabricated_checkpoint(tmp_path, 2, 8, 'v2.pth')}"],
              "window": [f"checkpoint:={v3}", "cotracker_window_len:=8"],
              "cuda": [f"checkpoint:={v3}", "device:=cuda"]}[kind]
    rc, out = _tracker_startup(tmp_path, *params)
    errors = [line for line in out.splitlines() if "cannot start" in line]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert {"damaged": "cannot be read", "v2_as_v3": "cotracker_v2: true", "window": "leave window_len at 0",
            "cuda": "CUDA is not available"}[kind] in errors[0]


# ----------------------------------------------------------- the real predictor (co-tracker importable)

@pytest.fixture(scope="module")
def real_checkpoints(tmp_path_factory):
    """Random-weight checkpoints of the official architectures, saved by the test (nothing downloaded)."""
    build = pytest.importorskip("cotracker.models.build_cotracker", reason="co-tracker is not installed "
                                "(not on PyPI; see atk_perception.cotracker_backend)")
    d = tmp_path_factory.mktemp("cotracker")
    torch.manual_seed(0)
    paths = {}
    for name, kwargs in (("v3", dict(offline=False, window_len=16)), ("v2", dict(v2=True, window_len=8))):
        model = build.build_cotracker(None, **kwargs)
        paths[name] = d / f"random_{name}.pth"
        torch.save(model.state_dict(), paths[name])
    return paths


def test_real_checkpoints_are_inspected_as_the_architectures_they_are(real_checkpoints):
    assert inspect_checkpoint(real_checkpoints["v3"]) == CheckpointInfo(3, 16)
    assert inspect_checkpoint(real_checkpoints["v2"]) == CheckpointInfo(2, 8)


def test_real_predictor_contract(real_checkpoints):
    """The official CoTrackerOnlinePredictor through the adapter: step 8, one result per 8 frames from
    the 16th on, points in image pixels, visible exactly where confidence exceeds the threshold."""
    backend = CoTrackerBackend(CoTrackerConfig(checkpoint=str(real_checkpoints["v3"]), device="cpu"))
    assert backend.step == STEP and type(backend.model).__name__ == "CoTrackerOnlinePredictor"
    base = procedural_texture(H, W, seed=11)
    pts = np.array([[50.0, 40.0], [110.0, 80.0], [20.0, 100.0]], np.float32)
    backend.reset(base, pts)
    results = [backend.update(_shifted(base, k, 0)) for k in range(1, WINDOW + STEP)]
    for k, r in enumerate(results, start=1):
        assert r.points.shape == (3, 2) and np.isfinite(r.points).all()
        assert r.visible.tolist() == (r.confidence > 0.6).tolist()
        if k + 1 < WINDOW:
            np.testing.assert_array_equal(r.points, pts)  # nothing computed before the first window
    assert not np.array_equal(results[WINDOW - 2].points, pts)  # the first window's result


def test_real_v2_checkpoint_as_v3_and_back(real_checkpoints):
    with pytest.raises(CheckpointError, match="is a CoTracker2 checkpoint: set v2"):
        CoTrackerBackend(CoTrackerConfig(checkpoint=str(real_checkpoints["v2"]), device="cpu"))
    backend = CoTrackerBackend(CoTrackerConfig(checkpoint=str(real_checkpoints["v2"]), device="cpu", v2=True))
    assert backend.step == 4  # CoTracker2's window is 8


def test_real_state_dict_refused_by_the_model_is_one_line(real_checkpoints, tmp_path):
    state = torch.load(real_checkpoints["v3"], weights_only=True)
    state.pop(next(k for k in state if k.startswith("updateformer.")))
    path = tmp_path / "pruned.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not fit the CoTracker3 online model") as info:
        CoTrackerBackend(CoTrackerConfig(checkpoint=str(path), device="cpu"))
    assert "\n" not in str(info.value)


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
    for field, value in (("window_len", 7), ("window_len", -2), ("visibility_threshold", 1.0),
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
