"""End-to-end figures of the tracker node over DDS (prints, does not assert).

Starts ``tracker_node`` (CPU backend) in a subprocess, publishes a real
photograph moving by a known motion at a fixed rate, and reports per frame:
latency (keypoints received - source stamp), h_C processing time, the
fraction of frames dropped by the newest-frame policy, and the error against
the known motion.

    source env.sh
    python benchmarks/bench_tracker_node.py --size 640x480 --rate 30 --seconds 10 --points 16

Timings depend on the machine and on what else runs on it: say so with them.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "tests" / "data" / "images" / "basketball1.png"
STARTUP_TIMEOUT_S = 30.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="640x480", help="frame size WIDTHxHEIGHT")
    ap.add_argument("--rate", type=float, default=30.0, help="frames per second published")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of the run")
    ap.add_argument("--points", type=int, default=16, help="number of keypoints")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 30))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    import rclpy
    from atk_msgs.msg import KeypointArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from atk_perception.image_conversion import array_to_imgmsg

    img = cv2.resize(cv2.cvtColor(cv2.imread(str(IMAGE)), cv2.COLOR_BGR2RGB), (w, h))
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    pts = cv2.goodFeaturesToTrack(g, 400, 0.01, 10).reshape(-1, 2)
    m = 0.12
    keep = ((pts[:, 0] > m * w) & (pts[:, 0] < (1 - m) * w)
            & (pts[:, 1] > m * h) & (pts[:, 1] < (1 - m) * h))
    pts = pts[keep][:args.points].astype(np.float32)

    def frame(t: float) -> tuple[np.ndarray, np.ndarray]:
        a = cv2.getRotationMatrix2D((w / 2, h / 2), 3.0 * np.sin(t), 1.0 + 0.03 * np.sin(0.7 * t))
        a[:, 2] += (15 * np.sin(0.9 * t), 10 * np.sin(1.3 * t))
        return (cv2.warpAffine(img, a, (w, h), borderMode=cv2.BORDER_REFLECT),
                (pts @ a[:, :2].T + a[:, 2]).astype(np.float32))

    tmp = Path(tempfile.mkdtemp(prefix="bench_tracker_"))
    cv2.imwrite(str(tmp / "template.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    log = (tmp / "tracker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "atk_perception.tracker_node", "--ros-args",
         "-p", f"template_image:={tmp / 'template.png'}",
         "-p", "points:=[" + ", ".join(f"{v:.2f}" for v in pts.ravel()) + "]"],
        stdout=log, stderr=subprocess.STDOUT)
    rclpy.init()
    node = rclpy.create_node("bench_tracker_client")
    pub = node.create_publisher(Image, "camera/color/image_raw", qos_profile_sensor_data)
    got: list[tuple[KeypointArray, int]] = []
    sub = node.create_subscription(
        KeypointArray, "keypoints",
        lambda msg: got.append((msg, node.get_clock().now().nanoseconds)), qos_profile_sensor_data)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while pub.get_subscription_count() == 0 or sub.get_publisher_count() == 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                print(f"tracker node did not come up (log: {log.name})")
                return 1
            rclpy.spin_once(node, timeout_sec=0.05)
        truth: dict[int, np.ndarray] = {}
        n_frames = int(args.rate * args.seconds)
        period = 1.0 / args.rate
        t_next = time.monotonic()
        for k in tqdm(range(n_frames), desc="publishing", unit="frame"):
            rgb, gt = frame(k * period)
            stamp = node.get_clock().now().nanoseconds
            header = Header(frame_id="cam")
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 10**9)
            truth[stamp] = gt
            pub.publish(array_to_imgmsg(rgb, "rgb8", header))
            t_next += period
            while time.monotonic() < t_next:  # pacing the publisher, not synchronisation
                rclpy.spin_once(node, timeout_sec=max(0.0, t_next - time.monotonic()))
        drain = time.monotonic() + 3.0
        while time.monotonic() < drain:
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()

    msgs = [(m, rx) for m, rx in got if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec in truth]
    if not msgs:
        print("no keypoints received")
        return 1
    lat = np.array([(rx - (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec)) / 1e6
                    for m, rx in msgs])
    proc_ms = np.array([m.processing_time_s * 1e3 for m, _ in msgs])
    errs = np.array([np.abs(np.array([[k.x, k.y] for k in m.keypoints])
                            - truth[m.header.stamp.sec * 10**9 + m.header.stamp.nanosec]).max()
                     for m, _ in msgs if m.state == KeypointArray.STATE_TRACKING])
    dropped = msgs[-1][0].frames_dropped
    print(f"frames {w}x{h} rgb8, {len(pts)} keypoints, published {n_frames} at {args.rate:g} Hz")
    print(f"keypoint arrays received: {len(msgs)}  dropped by newest-frame policy: {dropped} "
          f"({dropped / n_frames:.1%})  lost in transport: {n_frames - len(msgs) - dropped}")
    print(f"latency stamp->received ms: median {np.median(lat):.1f}  p95 {np.percentile(lat, 95):.1f}"
          f"  max {lat.max():.1f}")
    print(f"h_C processing ms:          median {np.median(proc_ms):.1f}  p95 "
          f"{np.percentile(proc_ms, 95):.1f}  max {proc_ms.max():.1f}")
    if errs.size:
        print(f"max keypoint error vs known motion px: median {np.median(errs):.2f}  "
              f"p95 {np.percentile(errs, 95):.2f}  (over {errs.size} TRACKING frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
