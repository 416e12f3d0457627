"""A separate process for tests/test_workspace_dds.py: subscribes to
640x480 rgb8 images with sensor-data QoS and prints the sequence number of
every intact frame. Exits once --frames arrived, when the stream has been
quiet for QUIET_S after the first frame, or after TOTAL_TIMEOUT_S."""
from __future__ import annotations

import argparse
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

QUIET_S = 2.0
TOTAL_TIMEOUT_S = 40.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=150)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("image_receiver")
    seen: list[int] = []
    last_arrival = [0.0]

    def on_image(msg: Image) -> None:
        seq = int(msg.header.frame_id)
        first = np.frombuffer(msg.data, dtype=np.uint8, count=3)
        intact = ((msg.width, msg.height, msg.encoding) == (640, 480, "rgb8")
                  and len(msg.data) == 640 * 480 * 3
                  and int(first[0]) + 256 * int(first[1]) == seq)
        if intact:
            seen.append(seq)
            print("SEQ", seq, flush=True)
        last_arrival[0] = time.monotonic()

    node.create_subscription(Image, "camera/color/image_raw", on_image, qos_profile_sensor_data)
    start = time.monotonic()
    while time.monotonic() - start < TOTAL_TIMEOUT_S and len(seen) < args.frames:
        rclpy.spin_once(node, timeout_sec=0.1)
        if seen and time.monotonic() - last_arrival[0] > QUIET_S:
            break
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
