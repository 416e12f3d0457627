"""A separate process for tests/test_workspace_dds.py: publishes 640x480 rgb8
images with sensor-data QoS at a fixed rate for a fixed number of frames,
after waiting (bounded) for a subscriber to match. Each frame carries its
sequence number in header.frame_id and in its first pixels."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

MATCH_TIMEOUT_S = 15.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("image_publisher")
    pub = node.create_publisher(Image, "camera/color/image_raw", qos_profile_sensor_data)
    deadline = time.monotonic() + MATCH_TIMEOUT_S
    while pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            print(f"no subscriber matched within {MATCH_TIMEOUT_S} s", file=sys.stderr)
            sys.exit(2)
        rclpy.spin_once(node, timeout_sec=0.05)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(args.height, args.width, 3), dtype=np.uint8)
    period = 1.0 / args.rate
    start = time.monotonic()
    for seq in range(args.frames):
        msg = Image()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = str(seq)
        msg.height, msg.width, msg.encoding = args.height, args.width, "rgb8"
        msg.step = args.width * 3
        frame = base.copy()
        frame[0, 0, :] = (seq % 256, seq // 256, 7)
        msg.data = frame.tobytes()
        pub.publish(msg)
        # Pace at the camera rate (a real camera does not burst).
        next_t = start + (seq + 1) * period
        while (remaining := next_t - time.monotonic()) > 0:
            time.sleep(min(remaining, 0.005))
    # Give the last samples time to leave before the participant goes away.
    rclpy.spin_once(node, timeout_sec=0.5)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
