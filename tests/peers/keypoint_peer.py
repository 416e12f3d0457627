"""A separate process for tests/test_workspace_dds.py.

Publishes atk_msgs/KeypointArray messages whose content and stamps are a
known function of their sequence number, and serves atk_msgs/ResetTracker,
echoing the number of keypoints it was given. Exits after --duration seconds.
"""
from __future__ import annotations

import argparse

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data

from atk_msgs.msg import Keypoint, KeypointArray
from atk_msgs.srv import ResetTracker


def make_array(seq: int) -> KeypointArray:
    msg = KeypointArray()
    # stamp = 1000 s + seq * 33 ms, so the receiver can check it exactly
    msg.header.stamp.sec = 1000 + (seq * 33) // 1000
    msg.header.stamp.nanosec = ((seq * 33) % 1000) * 1_000_000
    msg.header.frame_id = "camera_color_optical_frame"
    msg.state = KeypointArray.STATE_TRACKING
    msg.image_width, msg.image_height = 640, 480
    msg.frames_dropped = seq
    msg.keypoints = [
        Keypoint(id=i, name=f"kp{i:02d}", x=10.0 * i + seq, y=5.0 * i, confidence=0.5 + 0.1 * i,
                 visible=bool(i % 2 == 0))
        for i in range(4)
    ]
    return msg


class KeypointPeer(Node):
    def __init__(self) -> None:
        super().__init__("keypoint_peer")
        self._pub = self.create_publisher(KeypointArray, "keypoints", qos_profile_sensor_data)
        self._srv = self.create_service(ResetTracker, "tracker/reset", self._on_reset)
        self._seq = 0
        self.create_timer(0.02, self._tick)

    def _tick(self) -> None:
        self._pub.publish(make_array(self._seq))
        self._seq += 1

    def _on_reset(self, request: ResetTracker.Request, response: ResetTracker.Response):
        response.success = True
        response.message = f"reset with {len(request.keypoints)} keypoints; first x={request.keypoints[0].x if request.keypoints else -1.0}"
        return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    rclpy.init()
    node = KeypointPeer()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    end = node.get_clock().now().nanoseconds + int(args.duration * 1e9)
    while rclpy.ok() and node.get_clock().now().nanoseconds < end:
        executor.spin_once(timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
