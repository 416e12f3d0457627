"""Camera sources: replay of tests/data recordings, and the Azure Kinect source
against a stand-in for pyk4a at exactly the hardware boundary."""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_perception.camera_sources import (
    CameraError, CameraIntrinsics, DeviceClockMapper, EndOfStream, ImageFolderSource,
    KinectConfig, KinectSource, RetryPolicy, VideoFileSource, make_camera_source,
    parse_resolution)

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"
TREE = DATA / "tree.avi"


def _tree_frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(TREE))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_video_replays_every_frame_then_ends() -> None:
    expected = _tree_frames()
    src = VideoFileSource(TREE, fps=1000.0, loop=False)
    src.open()
    got = []
    with pytest.raises(EndOfStream, match=f"end of recording after {len(expected)} frames"):
        while True:
            frame = src.read(timeout_s=1.0)
            assert frame is not None
            got.append(frame)
    src.close()
    assert len(got) == len(expected) == 68
    for frame, exp in zip(got, expected):
        np.testing.assert_array_equal(frame.color, exp)
        assert frame.depth is None
    assert [f.index for f in got] == list(range(68))
    assert all(b.stamp_ns > a.stamp_ns for a, b in zip(got, got[1:]))
    assert src.intrinsics.width == 320 and src.intrinsics.height == 240


def test_video_loops_and_resizes() -> None:
    first = _tree_frames()[0]
    src = make_camera_source("video", video_path=str(TREE), fps=1000.0, loop=True,
                             resolution="160x120")
    src.open()
    frames = [src.read(1.0) for _ in range(69)]
    src.close()
    assert frames[0].color.shape == (120, 160, 3)
    np.testing.assert_array_equal(frames[68].color, frames[0].color)  # looped
    small = cv2.resize(first, (160, 120), interpolation=cv2.INTER_AREA)
    assert np.abs(frames[0].color.astype(int) - small).max() <= 1
    assert src.intrinsics.width == 160


def test_replay_is_paced_and_times_out() -> None:
    src = VideoFileSource(TREE, fps=25.0, loop=True)
    src.open()
    t0 = time.monotonic()
    for _ in range(6):
        assert src.read(timeout_s=1.0) is not None
    elapsed = time.monotonic() - t0
    # 6 frames at 25 fps: the first is immediate, then 5 periods of 40 ms.
    assert elapsed >= 5 * 0.04 * 0.9
    # A timeout shorter than the frame period returns None (a stall), not a frame.
    assert src.read(timeout_s=0.001) is None
    src.close()


def test_image_folder_in_name_order(tmp_path: Path) -> None:
    names = ["b.png", "a.png", "c.jpg"]
    sources = ["rubberwhale1.png", "rubberwhale2.png", "basketball1.png"]
    for name, srcname in zip(names, sources):
        img = cv2.imread(str(DATA / srcname))
        cv2.imwrite(str(tmp_path / name), img[:100, :120])
    (tmp_path / "notes.txt").write_text("not an image")
    src = make_camera_source("video", video_path=str(tmp_path), fps=1000.0, loop=False)
    assert isinstance(src, ImageFolderSource)
    src.open()
    frames = [src.read(1.0) for _ in range(3)]
    with pytest.raises(EndOfStream):
        src.read(1.0)
    expect_a = cv2.cvtColor(cv2.imread(str(DATA / "rubberwhale2.png"))[:100, :120],
                            cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(frames[0].color, expect_a)  # a.png first
    assert frames[2].color.shape == (100, 120, 3)


def test_missing_recordings_are_camera_errors(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="does not exist"):
        VideoFileSource(tmp_path / "nope.avi").open()
    with pytest.raises(CameraError, match="holds no images"):
        ImageFolderSource(tmp_path).open()
    with pytest.raises(ValueError, match="video_path"):
        make_camera_source("video")
    with pytest.raises(ValueError, match="backend: 'usb'"):
        make_camera_source("usb")


def test_resolution_names() -> None:
    assert parse_resolution("native") is None
    assert parse_resolution("720P") == (1280, 720)
    assert parse_resolution("640x480") == (640, 480)
    with pytest.raises(ValueError, match="resolution: '4k'"):
        parse_resolution("4k")


@pytest.mark.parametrize("kwargs, field", [
    (dict(resolution="480p"), "resolution"),
    (dict(fps=25), "fps"),
    (dict(resolution="3072p", fps=30), "fps"),
    (dict(depth_mode="WFOV_UNBINNED", fps=30), "fps"),
    (dict(depth_mode="FAR"), "depth_mode"),
    (dict(exposure_us=100), "exposure_us"),
])
def test_kinect_config_refuses_what_the_device_cannot_do(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        KinectConfig(**kwargs)


# ---------------------------------------------------------------- pyk4a stand-in
class _Timeout(Exception):
    pass


def _fake_pyk4a(fail_start: bool = False, script: list | None = None) -> types.ModuleType:
    """A module with exactly the parts of pyk4a's API that KinectSource uses."""
    mod = types.ModuleType("pyk4a")

    class _Enum:
        def __init__(self, *names):
            for n in names:
                setattr(self, n, n)

    mod.ColorResolution = _Enum("RES_720P", "RES_1080P", "RES_1440P", "RES_1536P",
                                "RES_2160P", "RES_3072P")
    mod.DepthMode = _Enum("NFOV_UNBINNED", "NFOV_2X2BINNED", "WFOV_2X2BINNED",
                          "WFOV_UNBINNED", "PASSIVE_IR", "OFF")
    mod.FPS = _Enum("FPS_5", "FPS_15", "FPS_30")
    mod.ImageFormat = _Enum("COLOR_BGRA32")
    mod.CalibrationType = _Enum("COLOR", "DEPTH")
    mod.K4ATimeoutException = _Timeout
    mod.Config = lambda **kw: dict(kw)
    mod.devices = []

    class Calibration:
        def get_camera_matrix(self, which):
            assert which == "COLOR"
            return np.array([[605.0, 0, 639.5], [0, 604.0, 366.2], [0, 0, 1]])

        def get_distortion_coefficients(self, which):
            return np.array([0.5, -2.6, 0.0007, -0.0002, 1.5, 0.4, -2.4, 1.4])

    class Capture:
        def __init__(self, t_usec):
            rng = np.random.default_rng(t_usec)
            self.color = rng.integers(0, 255, (720, 1280, 4), dtype=np.uint8)
            self.transformed_depth = np.full((720, 1280), 850, np.uint16)
            self.color_timestamp_usec = t_usec

    class PyK4A:
        def __init__(self, config, device_id=0):
            self.config, self.device_id = config, device_id
            self.calibration = Calibration()
            self.exposure_mode_auto = None
            self.exposure = None
            self.started = False
            mod.devices.append(self)

        def start(self):
            if fail_start:
                raise RuntimeError("Cannot open device")
            self.started = True

        def stop(self):
            self.started = False

        def get_capture(self, timeout):
            step = script.pop(0) if script else "frame"
            if step == "timeout":
                raise _Timeout()
            if step == "unplugged":
                raise RuntimeError("K4A_WAIT_RESULT_FAILED")
            return Capture(33_333 * (len(mod.devices) * 100 + len(script or [])))

    mod.PyK4A = PyK4A
    return mod


def test_kinect_source_through_the_pyk4a_boundary(monkeypatch) -> None:
    fake = _fake_pyk4a(script=["frame", "timeout", "unplugged"])
    monkeypatch.setitem(sys.modules, "pyk4a", fake)
    src = KinectSource(KinectConfig(resolution="720p", fps=30, exposure_us=8000, device_id=1))
    src.open()
    dev = fake.devices[0]
    assert dev.device_id == 1 and dev.started and dev.exposure == 8000
    assert dev.config["color_resolution"] == "RES_720P" and dev.config["camera_fps"] == "FPS_30"
    assert dev.config["synchronized_images_only"] is True
    intr = src.intrinsics
    assert (intr.width, intr.height, intr.fx, intr.cy) == (1280, 720, 605.0, 366.2)
    assert intr.distortion_model == "rational_polynomial" and len(intr.distortion) == 8

    frame = src.read(0.5)
    assert frame.color.shape == (720, 1280, 3) and frame.depth.dtype == np.uint16
    assert frame.depth.shape == (720, 1280) and int(frame.depth[0, 0]) == 850
    assert frame.stamp_ns % 1000 == 0 and frame.stamp_ns > 0  # device usec -> ns
    assert src.read(0.5) is None  # timeout is a stall, not an error
    with pytest.raises(CameraError, match="capture failed"):
        src.read(0.5)
    src.close()
    assert not dev.started


def test_kinect_colour_is_converted_from_bgra(monkeypatch) -> None:
    fake = _fake_pyk4a()
    monkeypatch.setitem(sys.modules, "pyk4a", fake)
    src = KinectSource(KinectConfig())
    src.open()
    assert fake.devices[0].exposure_mode_auto is True  # exposure_us 0 = auto
    frame = src.read(0.5)
    # The stand-in seeds its pixels with the device timestamp: regenerate them.
    bgra = np.random.default_rng(frame.stamp_ns // 1000).integers(0, 255, (720, 1280, 4),
                                                                  dtype=np.uint8)
    np.testing.assert_array_equal(frame.color, bgra[:, :, 2::-1])


def test_kinect_errors_tell_the_operator_what_to_do(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyk4a", None)  # import fails
    with pytest.raises(CameraError, match="pip install pyk4a"):
        KinectSource(KinectConfig()).open()
    monkeypatch.setitem(sys.modules, "pyk4a", _fake_pyk4a(fail_start=True))
    with pytest.raises(CameraError, match="plugged in"):
        KinectSource(KinectConfig()).open()


def test_clock_mapper_keeps_device_intervals_and_resyncs() -> None:
    m = DeviceClockMapper(resync_s=0.5)
    a = m.to_host(1_000_000, host_now_ns=50_000_000_000)
    b = m.to_host(34_333_333, host_now_ns=50_040_000_000)  # host jitter of 7 ms
    assert a == 50_000_000_000 and b - a == 33_333_333
    c = m.to_host(5_000_000, host_now_ns=60_000_000_000)  # device restarted
    assert c == 60_000_000_000


def test_retry_policy_backs_off_and_resets() -> None:
    r = RetryPolicy(initial_s=0.5, max_s=3.0)
    assert [r.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    r.succeeded()
    assert r.next_delay() == 0.5
    with pytest.raises(ValueError, match="max_s"):
        RetryPolicy(initial_s=2.0, max_s=1.0)


def test_intrinsics_scaling_and_nominal() -> None:
    k = CameraIntrinsics.nominal(640, 480, hfov_deg=90.0)
    assert k.fx == pytest.approx(320.0) and k.cx == pytest.approx(319.5)
    half = k.scaled(320, 240)
    assert half.fx == pytest.approx(160.0) and half.cx == pytest.approx(159.5)
    with pytest.raises(ValueError, match="fx/fy"):
        CameraIntrinsics(10, 10, 0.0, 1.0, 5, 5)


# ---------------------------------------------------------------- damaged recordings
def read_all(src) -> tuple[list, str]:
    frames = []
    with pytest.raises(EndOfStream) as end:
        while True:
            frame = src.read(timeout_s=1.0)
            assert frame is not None
            frames.append(frame)
    return frames, str(end.value)


def test_damaged_video_frames_are_skipped_and_reported(bad_recordings) -> None:
    """Issue 15 risk: a video with damaged frames replayed (only its first
    part) with status "streaming". Now damaged frames are skipped and counted."""
    src = VideoFileSource(bad_recordings["damaged"], fps=1000.0, loop=False)
    src.open()
    frames, end = read_all(src)
    src.close()
    assert len(frames) == 58
    assert "2 damaged frame(s)" in src.problems() and "2 damaged frame(s)" in end


def test_truncated_video_is_reported_not_looped_silently(bad_recordings) -> None:
    """Issue 15 risk: a truncated video's first half looped silently."""
    path = bad_recordings["truncated"]
    src = VideoFileSource(path, fps=1000.0, loop=False)
    src.open()
    frames, end = read_all(src)
    src.close()
    assert 20 < len(frames) < 40
    assert "truncated" in end and "of the 4.00 s its container declares" in end
    looping = VideoFileSource(path, fps=1000.0, loop=True)
    looping.open()
    assert looping.problems() == ""
    for _ in range(len(frames) + 1):  # one pass and the first frame of the next
        assert looping.read(timeout_s=1.0) is not None
    assert "truncated" in looping.problems() and "only the readable part is replayed" in looping.problems()
    looping.close()
    ok = VideoFileSource(bad_recordings["intact"], fps=1000.0, loop=False)
    ok.open()
    frames, end = read_all(ok)
    assert len(frames) == 60 and ok.problems() == "" and "truncated" not in end
    tree = VideoFileSource(TREE, fps=1000.0, loop=False)  # 376 of its 444 AVI chunks are empty
    tree.open()
    read_all(tree)
    assert tree.problems() == ""


def test_image_folder_with_two_sizes_keeps_the_first(bad_recordings) -> None:
    """Issue 15 risk: a folder with two frame sizes interleaved them without a warning."""
    src = ImageFolderSource(bad_recordings["mixed"], fps=1000.0, loop=False)
    src.open()
    frames, end = read_all(src)
    assert [f.color.shape for f in frames] == [(48, 64, 3)] * 3
    assert [int(f.color[0, 0, 0]) for f in frames] == [0, 40, 80]
    msg = src.problems()
    assert "skipped 3 image(s) whose size differs from the first image's 64x48 (e.g. 001.png: 80x60)" in msg
    assert "1 unreadable image(s) (e.g. 007.png)" in msg and "differs" in end
