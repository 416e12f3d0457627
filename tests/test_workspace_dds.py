"""Issue 2 acceptance: two processes exchanging atk_msgs over DDS, a service
call across processes, and 640x480 rgb8 images at 30 Hz with sensor-data QoS
through the shared-memory profile."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from atk_fixtures.ros import wait_until
from atk_msgs.msg import Keypoint, KeypointArray
from atk_msgs.srv import ResetTracker

PEERS = Path(__file__).parent / "peers"
DISCOVERY_TIMEOUT_S = 15.0
MESSAGES_TIMEOUT_S = 15.0


@pytest.fixture()
def ros_node():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("workspace_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield node, executor
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_keypoint_arrays_and_service_across_processes(ros_node):
    node, executor = ros_node
    peer = subprocess.Popen([sys.executable, str(PEERS / "keypoint_peer.py"), "--duration", "30"])
    try:
        received: list[KeypointArray] = []
        node.create_subscription(KeypointArray, "keypoints", received.append, qos_profile_sensor_data)
        client = node.create_client(ResetTracker, "tracker/reset")
        wait_until(lambda: len(received) >= 10, DISCOVERY_TIMEOUT_S + MESSAGES_TIMEOUT_S,
                   "10 KeypointArray messages from the peer process", executor=executor)
        for msg in received:
            seq = msg.frames_dropped
            assert msg.header.stamp.sec == 1000 + (seq * 33) // 1000
            assert msg.header.stamp.nanosec == ((seq * 33) % 1000) * 1_000_000
            assert msg.header.frame_id == "camera_color_optical_frame"
            assert msg.state == KeypointArray.STATE_TRACKING
            assert (msg.image_width, msg.image_height) == (640, 480)
            assert [k.id for k in msg.keypoints] == [0, 1, 2, 3]
            assert [k.name for k in msg.keypoints] == ["kp00", "kp01", "kp02", "kp03"]
            assert [k.x for k in msg.keypoints] == pytest.approx([seq, 10.0 + seq, 20.0 + seq, 30.0 + seq])
            assert [k.confidence for k in msg.keypoints] == pytest.approx([0.5, 0.6, 0.7, 0.8])
            assert [k.visible for k in msg.keypoints] == [True, False, True, False]
        seqs = [m.frames_dropped for m in received]
        assert seqs == sorted(seqs), "keypoint arrays arrived out of order"

        assert client.wait_for_service(timeout_sec=DISCOVERY_TIMEOUT_S), "tracker/reset service not available"
        request = ResetTracker.Request(keypoints=[Keypoint(id=0, x=12.5, y=3.0), Keypoint(id=1)])
        future = client.call_async(request)
        wait_until(future.done, MESSAGES_TIMEOUT_S, "the tracker/reset response", executor=executor)
        response = future.result()
        assert response.success
        assert response.message == "reset with 2 keypoints; first x=12.5"
    finally:
        peer.terminate()
        peer.wait(timeout=10)


def _run_image_stream(profile_env: dict[str, str], frames: int = 150) -> tuple[int, set[int]]:
    """Publish `frames` 640x480 rgb8 images at 30 Hz from one process to
    another (both started with `profile_env` on top of ours, since Fast DDS
    reads its profile at start-up); returns (publisher exit code, received
    sequence numbers)."""
    env = {**os.environ, **profile_env}
    receiver = subprocess.Popen(
        [sys.executable, str(PEERS / "image_receiver.py"), "--frames", str(frames)],
        env=env, stdout=subprocess.PIPE, text=True)
    publisher = subprocess.Popen(
        [sys.executable, str(PEERS / "image_publisher.py"), "--frames", str(frames)], env=env)
    try:
        rc = publisher.wait(timeout=DISCOVERY_TIMEOUT_S + frames / 30.0 + 20)
        out, _ = receiver.communicate(timeout=45)
    finally:
        for p in (publisher, receiver):
            if p.poll() is None:
                p.kill()
    return rc, {int(line.split()[1]) for line in out.splitlines() if line.startswith("SEQ ")}


def test_images_640x480_at_30hz_arrive_with_shm_profile():
    profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
    assert profile.endswith("fastdds_shm.xml") and Path(profile).is_file(), (
        "source env.sh: the tests run with the project's Fast DDS profile")
    rc, got = _run_image_stream({})
    assert rc == 0, "image publisher failed (no subscriber matched?)"
    assert len(got) >= 0.95 * 150, f"only {len(got)} of 150 frames arrived"
