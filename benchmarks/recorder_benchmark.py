"""Does the recorder node keep up? Images 640x480 rgb8 at 30 Hz and joint states at 100 Hz, over DDS.

    source env.sh && python benchmarks/recorder_benchmark.py [--seconds 10] [--fps 30]

Starts `recorder_node` as its own process (as atk-graph record does),
publishes from this process for --seconds, ends the episode through the
service and counts what reached the bag, per topic. Messages lost are
best-effort samples the recorder did not receive or could not keep; on a
loaded shared machine the figures are noisy.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SERVICE_TIMEOUT_S = 30.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--joint-hz", type=float, default=100.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    a = ap.parse_args()

    import rclpy
    from atk_msgs.srv import EndEpisode
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_srvs.srv import Trigger

    from atk_policy.bags import UR_JOINT_NAMES, inspect_bag

    os.environ.setdefault("ROS_DOMAIN_ID", "77")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "atk_bringup.recorder_node", "--ros-args",
                                 "-p", f"output_dir:={tmp}", "-p", "topics:=[camera/color/image_raw, joint_states]"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rclpy.init()
        node = rclpy.create_node("recorder_benchmark")
        try:
            img_pub = node.create_publisher(Image, "camera/color/image_raw", qos_profile_sensor_data)
            js_pub = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
            start = node.create_client(Trigger, "/recorder/start_episode")
            end = node.create_client(EndEpisode, "/recorder/end_episode")

            def call(client, req):
                if not client.wait_for_service(timeout_sec=SERVICE_TIMEOUT_S):
                    raise TimeoutError(f"{client.srv_name} not available after {SERVICE_TIMEOUT_S} s")
                fut = client.call_async(req)
                rclpy.spin_until_future_complete(node, fut, timeout_sec=SERVICE_TIMEOUT_S)
                if not fut.done():
                    raise TimeoutError(f"no answer from {client.srv_name} within {SERVICE_TIMEOUT_S} s")
                return fut.result()

            res = call(start, Trigger.Request())
            if not res.success:
                raise RuntimeError(res.message)
            deadline = time.monotonic() + SERVICE_TIMEOUT_S
            while img_pub.get_subscription_count() < 1 or js_pub.get_subscription_count() < 1:
                if time.monotonic() > deadline:
                    raise TimeoutError("the recorder did not subscribe")
                rclpy.spin_once(node, timeout_sec=0.05)
            frame = np.random.default_rng(0).integers(0, 256, (a.height, a.width, 3), dtype=np.uint8).tobytes()
            sent = {"img": 0, "js": 0}
            stop = threading.Event()

            def publish_joints() -> None:
                period = 1.0 / a.joint_hz
                nxt = time.monotonic()
                while not stop.is_set():
                    js_pub.publish(JointState(name=list(UR_JOINT_NAMES) + ["gripper"], position=[0.0] * 7))
                    sent["js"] += 1
                    nxt += period
                    stop.wait(max(0.0, nxt - time.monotonic()))

            th = threading.Thread(target=publish_joints, daemon=True)
            th.start()
            period = 1.0 / a.fps
            t0 = nxt = time.monotonic()
            while time.monotonic() - t0 < a.seconds:
                msg = Image(height=a.height, width=a.width, encoding="rgb8", step=a.width * 3, data=frame)
                msg.header.stamp = node.get_clock().now().to_msg()
                img_pub.publish(msg)
                sent["img"] += 1
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))  # pacing the publisher, not synchronisation
            stop.set()
            th.join()
            res = call(end, EndEpisode.Request(success=True, note="benchmark"))
            if not res.ok:
                raise RuntimeError(res.message)
            counts = {t.name: t.count for t in inspect_bag(Path(res.bag_path)).topics}
            size = sum(f.stat().st_size for f in Path(res.bag_path).iterdir()) / 1e6
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
            proc.terminate()
            proc.wait(timeout=30)
    got_img, got_js = counts["/camera/color/image_raw"], counts["/joint_states"]
    print(f"{a.seconds:.0f} s, images {a.width}x{a.height} rgb8 at {a.fps:g} Hz, joint states at {a.joint_hz:g} Hz")
    print(f"images: published {sent['img']}, recorded {got_img} ({sent['img'] - got_img} lost)")
    print(f"joint states: published {sent['js']}, recorded {got_js} ({sent['js'] - got_js} lost)")
    print(f"bag: {size:.0f} MB")


if __name__ == "__main__":
    main()
