"""A slow transfer must not stop frame intake nor start another transfer (issue 17).

The tracker node runs in this process with a stand-in h_C whose transfer
takes 3 s (the CPU tracker's transfer took 1.4-5.4 s on a loaded machine);
frames arrive over real DDS at 10 Hz. Before the fix, the stall watchdog
waited for the session's lock on the node's only executor thread while the
transfer ran, so no frame was taken; when the lock came free the watchdog
declared a stall, and the frames that "resumed" were transferred onto again,
in a loop.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from atk_msgs.msg import KeypointArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from atk_perception import tracker_node  # noqa: E402
from atk_perception.correspondence import Correspondence  # noqa: E402
from atk_perception.image_conversion import array_to_imgmsg  # noqa: E402
from atk_fixtures.images import rubberwhale_scene  # noqa: E402

TRANSFER_S = 3.0
FRAME_PERIOD_S = 0.1
STARTUP_TIMEOUT_S = 20.0
TRANSFER_TIMEOUT_S = 30.0   # the stand-in transfer (3 s) plus SIFT on a loaded 2-core machine
AFTER_TIMEOUT_S = 20.0


class SlowTransfer(Correspondence):
    """The real CPU h_C, but every transfer first sleeps TRANSFER_S (a stand-in
    for a slow machine); records when transfers start and end."""

    def __init__(self, inner: Correspondence) -> None:
        self.inner = inner
        self.started: list[float] = []
        self.finished = threading.Event()

    def transfer(self, template_image, template_points, image):
        self.started.append(time.monotonic())
        time.sleep(TRANSFER_S)   # the stand-in's cost, not synchronisation
        try:
            return self.inner.transfer(template_image, template_points, image)
        finally:
            self.finished.set()

    def reset(self, image, points) -> None:
        self.inner.reset(image, points)

    def update(self, image):
        return self.inner.update(image)

    def close(self) -> None:
        getattr(self.inner, "close", lambda: None)()




def _model_dir(folder: Path, img: np.ndarray, pts: np.ndarray) -> Path:
    cv2.imwrite(str(folder / "template.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    doc = {"format_version": 1, "kind": "atk-keypoint-policy", "image_size": [320, 240],
           "keypoints": {"ids": list(range(len(pts))), "names": [f"kp{i}" for i in range(len(pts))],
                         "canonical_xy": pts.tolist()},
           "template_image": "template.png"}
    (folder / "model.json").write_text(json.dumps(doc))
    return folder


def test_a_slow_transfer_neither_stops_frame_intake_nor_starts_another(tmp_path, monkeypatch):
    img, pts = rubberwhale_scene(8)
    real_make_backend = tracker_node.make_backend
    stand_in: list[SlowTransfer] = []

    def slow_backend(*args, **kwargs):
        stand_in.append(SlowTransfer(real_make_backend(*args, **kwargs)))
        return stand_in[0]

    monkeypatch.setattr(tracker_node, "make_backend", slow_backend)
    from rclpy.parameter import Parameter

    context = rclpy.Context()
    rclpy.init(context=context)
    # The node's defaults: max_frame_gap_s 1 s and frame_timeout_s 1 s, both
    # shorter than the transfer.
    node = tracker_node.TrackerNode(context=context, parameter_overrides=[
        Parameter("model_dir", value=str(_model_dir(tmp_path, img, pts)))])
    client = rclpy.create_node("slow_transfer_test", context=context)
    received: list[KeypointArray] = []
    lock = threading.Lock()

    def keep(msg: KeypointArray) -> None:
        with lock:
            received.append(msg)

    client.create_subscription(KeypointArray, "keypoints", keep, qos_profile_sensor_data)
    pub = client.create_publisher(Image, "camera/color/image_raw", qos_profile_sensor_data)
    stamp_ns = [1_000 * 10**9]

    def publish_frame() -> None:   # a 10 Hz camera with source stamps 0.1 s apart
        from std_msgs.msg import Header
        stamp_ns[0] += int(FRAME_PERIOD_S * 1e9)
        header = Header(frame_id="camera")
        header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns[0], 10**9)
        pub.publish(array_to_imgmsg(img, "rgb8", header))

    client.create_timer(FRAME_PERIOD_S, publish_frame)
    # As tracker_node.main runs it: one executor thread for the node; the
    # camera stand-in has its own, so it publishes whatever the node does.
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    camera = SingleThreadedExecutor(context=context)
    camera.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    camera_thread = threading.Thread(target=camera.spin, daemon=True)
    camera_thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not (stand_in and stand_in[0].started):
            assert time.monotonic() < deadline, "the first transfer did not start"
            time.sleep(0.01)   # polling with a deadline, not synchronising
        backend = stand_in[0]
        received_at_start = node.slot.received
        assert backend.finished.wait(TRANSFER_TIMEOUT_S), "the first transfer did not finish"
        during = node.slot.received - received_at_start
        # 3 s at 10 Hz is 30 frames; most of them must have been taken in
        # (the old node took none: its executor waited on the session lock).
        assert during >= 15, f"only {during} frames taken in during a {TRANSFER_S} s transfer"

        def tracking_after(n: int) -> bool:
            with lock:
                return sum(m.state == KeypointArray.STATE_TRACKING for m in received) >= n

        deadline = time.monotonic() + AFTER_TIMEOUT_S
        while not tracking_after(20):
            assert time.monotonic() < deadline, "fewer than 20 TRACKING keypoint arrays after the transfer"
            time.sleep(0.01)   # polling with a deadline, not synchronising
        with lock:
            messages = [m.message for m in received]
            states = [m.state for m in received]
        assert len(backend.started) == 1, f"{len(backend.started)} transfers: {messages}"
        assert not any("transferred again" in m for m in messages), messages
        assert KeypointArray.STATE_LOST not in states, messages
    finally:
        camera.shutdown()
        executor.shutdown()
        node.close()
        node.destroy_node()
        client.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(timeout=5.0)
        camera_thread.join(timeout=5.0)
