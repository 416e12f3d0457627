"""Camera node: its capture/retry loop against scripted sources (the hardware
boundary), and the node over real DDS replaying tests/data/images/tree.avi."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from atk_fixtures.ros import start_node, stop_node, wait_until
from atk_perception.capture_loop import ERROR, OK, WARN, CaptureLoop
from atk_perception.camera_sources import (
    CameraError, CameraIntrinsics, CameraSource, EndOfStream, Frame, RetryPolicy)

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"
TREE = DATA / "tree.avi"
STARTUP_TIMEOUT_S = 20.0
MSG_TIMEOUT_S = 10.0
CAMERA_NODE = "atk_perception.camera_node"


# ---------------------------------------------------------------- capture loop
class ScriptedCamera(CameraSource):
    """A camera stand-in that follows a script of open/read outcomes."""

    name = "scripted camera"

    def __init__(self, opens: list[bool], reads: list[str]) -> None:
        self.opens, self.reads = list(opens), list(reads)
        self.open_calls = self.close_calls = 0
        self.exhausted = threading.Event()

    def open(self) -> None:
        self.open_calls += 1
        if self.opens and not self.opens.pop(0):
            raise CameraError("device not found")

    def read(self, timeout_s: float) -> Frame | None:
        if not self.reads:
            self.exhausted.set()
            raise EndOfStream("script finished")
        step = self.reads.pop(0)
        if step == "stall":  # a real device blocks for the timeout, then gives nothing
            threading.Event().wait(timeout_s)
            return None
        if step == "fail":
            raise CameraError("USB transfer error")
        return Frame(np.zeros((20, 30, 3), np.uint8), None, len(self.reads), 0)

    def close(self) -> None:
        self.close_calls += 1

    @property
    def intrinsics(self) -> CameraIntrinsics:
        return CameraIntrinsics.nominal(30, 20)


def run_loop(cam: ScriptedCamera, reopen_after_s: float = 10.0):
    reports: list[tuple[int, str]] = []
    frames: list[Frame] = []
    loop = CaptureLoop(cam, lambda f, k: frames.append(f), lambda lv, m: reports.append((lv, m)),
                       frame_timeout_s=0.01, reopen_after_s=reopen_after_s,
                       retry=RetryPolicy(initial_s=0.001, max_s=0.004))
    th = threading.Thread(target=loop.run)
    th.start()
    assert cam.exhausted.wait(timeout=10.0), "capture loop did not finish its script"
    loop.stop.set()
    th.join(timeout=10.0)
    assert not th.is_alive()
    return loop, reports, frames


def test_failed_opens_are_retried_and_reported() -> None:
    cam = ScriptedCamera(opens=[False, False, True], reads=["frame", "frame"])
    loop, reports, frames = run_loop(cam)
    assert cam.open_calls == 3 and len(frames) == 2
    levels = [lv for lv, _ in reports]
    assert levels[:2] == [ERROR, ERROR] and "device not found; retrying in" in reports[0][1]
    assert (OK, "scripted camera streaming") in reports
    assert reports[-1][0] == WARN and "script finished" in reports[-1][1]


def test_device_errors_reopen_the_camera() -> None:
    cam = ScriptedCamera(opens=[True, True], reads=["frame", "fail", "frame"])
    loop, reports, frames = run_loop(cam)
    assert cam.open_calls == 2 and loop.reopens == 1 and len(frames) == 2
    assert any(lv == ERROR and "USB transfer error; reopening" in m for lv, m in reports)


def test_stalls_are_reported_then_the_camera_is_reopened() -> None:
    cam = ScriptedCamera(opens=[True, True], reads=["frame"] + ["stall"] * 8 + ["frame"])
    loop, reports, frames = run_loop(cam, reopen_after_s=0.05)
    assert any(lv == WARN and "delivered no frame" in m for lv, m in reports)
    assert any(lv == ERROR and "closing it and reopening" in m for lv, m in reports)
    assert loop.reopens >= 1 and cam.open_calls == loop.reopens + 1
    assert len(frames) == 2


# ---------------------------------------------------------------- over DDS
rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402


class Listener:
    def __init__(self, ns: str) -> None:
        self.ctx = rclpy.context.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("camera_test_client", namespace=ns, context=self.ctx)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.images: list[Image] = []
        self.infos: list[CameraInfo] = []
        self.diags: list[DiagnosticArray] = []
        self.node.create_subscription(Image, "camera/color/image_raw", self.images.append,
                                      qos_profile_sensor_data)
        self.node.create_subscription(CameraInfo, "camera/color/camera_info", self.infos.append,
                                      qos_profile_sensor_data)
        self.node.create_subscription(DiagnosticArray, "diagnostics", self.diags.append,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        wait_until(predicate, timeout_s, what, executor=self.executor)

    def diag_messages(self) -> list[tuple[int, str]]:
        return [(s.level[0] if isinstance(s.level, bytes) else int(s.level), s.message)
                for d in self.diags for s in d.status]

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


def test_video_backend_publishes_tree_frames(tmp_path: Path) -> None:
    expected = []
    cap = cv2.VideoCapture(str(TREE))
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        expected.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    ns = f"/cam{os.getpid()}"
    # Three nodes at once (startup dominates): the replay, a recording that
    # ends, and a missing file.
    procs = [start_node(CAMERA_NODE, ns, tmp_path / "a.log", "backend:=video", f"video_path:={TREE}",
                          "fps:=30", "loop:=true"),
             start_node(CAMERA_NODE, ns + "/end", tmp_path / "b.log", "backend:=video",
                          f"video_path:={TREE}", "fps:=120", "loop:=false"),
             start_node(CAMERA_NODE, ns + "/missing", tmp_path / "c.log", "backend:=video",
                          "video_path:=/nonexistent/recording.avi", "retry_initial_s:=0.1",
                          "retry_max_s:=0.2")]
    listeners = [Listener(ns), Listener(ns + "/end"), Listener(ns + "/missing")]
    try:
        main, end, missing = listeners
        main.wait_for(lambda: len(main.images) >= 12 and len(main.infos) >= 12,
                      STARTUP_TIMEOUT_S, "12 images and camera_infos from the video backend")
        # Every frame is one of tree.avi's, in playing order (best effort may skip).
        indices = []
        for msg in main.images:
            assert (msg.encoding, msg.width, msg.height) == ("rgb8", 320, 240)
            assert msg.header.frame_id == "camera_color_optical_frame"
            arr = np.frombuffer(msg.data, np.uint8).reshape(240, 320, 3)
            match = [i for i, e in enumerate(expected) if np.array_equal(arr, e)]
            assert match, "a published frame is not a frame of tree.avi"
            indices.append(match[0])
        assert indices == sorted(indices) or indices[-1] < indices[0]  # may loop once
        stamps = {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in main.images}
        info_stamps = {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in main.infos}
        assert len(stamps & info_stamps) >= 10  # camera_info carries the image's stamp
        info = main.infos[-1]
        assert (info.width, info.height) == (320, 240) and info.k[0] == pytest.approx(160.0)
        gaps = np.diff(sorted(stamps)) / 1e9
        assert np.median(gaps) == pytest.approx(1 / 30, rel=0.3)  # paced at fps

        end.wait_for(lambda: any("end of recording" in m for _, m in end.diag_messages()),
                     STARTUP_TIMEOUT_S, "the end-of-recording diagnostic")
        assert len(end.images) <= 68
        missing.wait_for(lambda: sum("does not exist" in m for _, m in missing.diag_messages()) >= 2,
                         STARTUP_TIMEOUT_S, "repeated 'does not exist' diagnostics")
        assert all(lv == ERROR for lv, m in missing.diag_messages() if "does not exist" in m)
        # Neither fault ended its node.
        assert procs[1].poll() is None and procs[2].poll() is None
    finally:
        for lst in listeners:
            lst.close()
        codes = [stop_node(p) for p in procs]
    assert all(rc in (0, -signal.SIGINT) for rc in codes), codes


def test_camera_bad_parameters(tmp_path: Path) -> None:
    """(camera_node --help without ROS: tests/test_parameter_files.py.)"""
    log = tmp_path / "bad.log"
    proc = start_node(CAMERA_NODE, f"/badcam{os.getpid()}", log, "backend:=kinect", "fps:=25")
    rc = proc.wait(timeout=30)
    assert rc == 2 and "fps: the Azure Kinect runs at 5, 15 or 30, got 25" in log.read_text()


def test_damaged_recordings_are_reported_over_dds(tmp_path: Path, bad_recordings) -> None:
    """Issue 15 risks, through the node: a video with damaged frames, a
    truncated video and a folder of two frame sizes were replayed with status
    "streaming" (OK). Now each is WARN on diagnostics, saying what is wrong,
    and keeps replaying the readable, same-size frames."""
    ns = f"/badrec{os.getpid()}"
    cases = {"damaged": ("damaged", "2 damaged frame(s) could not be decoded"),
             "truncated": ("truncated", "is truncated or damaged, only the readable part is replayed"),
             "mixed": ("mixed", "whose size differs from the first image's 64x48")}
    procs = [start_node(CAMERA_NODE, f"{ns}/{name}", tmp_path / f"{name}.log", "backend:=video",
                          f"video_path:={bad_recordings[key]}", "fps:=120", "loop:=true")
             for name, (key, _) in cases.items()]
    listeners = {name: Listener(f"{ns}/{name}") for name in cases}
    try:
        for name, (_, words) in cases.items():
            lst = listeners[name]
            lst.wait_for(lambda: any(lv == WARN and words in m for lv, m in lst.diag_messages()),
                         STARTUP_TIMEOUT_S, f"WARN diagnostics of the {name} recording")
            lst.wait_for(lambda: len(lst.images) >= 5, STARTUP_TIMEOUT_S, f"images of the {name} recording")
            assert lst.diag_messages()[-1][0] == WARN, lst.diag_messages()[-1]
        assert {(m.width, m.height) for m in listeners["mixed"].images} == {(64, 48)}
        assert all(p.poll() is None for p in procs)
    finally:
        for lst in listeners.values():
            lst.close()
        codes = [stop_node(p) for p in procs]
    assert all(rc in (0, -signal.SIGINT) for rc in codes), codes
