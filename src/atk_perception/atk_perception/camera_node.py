"""Camera node: publishes colour, registered depth and CameraInfo.

Thin shell over :mod:`atk_perception.camera_sources` (the hardware
boundary) and :mod:`atk_perception.capture_loop` (the capture thread). Backends: ``kinect`` (Azure Kinect via pyk4a), ``video`` (a video
file or a folder of images, for replaying recordings) and ``none`` (the
simulator publishes the images; the node only reports that in diagnostics).

Capture runs in its own thread because a device read blocks until the next
exposure; publishing from it is thread-safe in rclpy. A camera that stops
delivering frames is reported (log + ``diagnostics``) and reopened with
exponential backoff; the node never exits on a camera fault (the official
Kinect driver does; a robot cell needs the node to come back by itself).
See docs/perception_nodes.md. Parameters and ``--help``:
:mod:`atk_perception.camera_params` (ROS-free).
"""
from __future__ import annotations

import sys
import threading
import time

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from atk_perception.camera_params import COMMAND, NODE_NAME, PARAMS
from atk_perception.camera_sources import (
    CameraIntrinsics, DeviceClockMapper, Frame, RetryPolicy, make_camera_source)
from atk_perception.capture_loop import OK, WARN, CaptureLoop
from atk_perception.image_conversion import array_to_imgmsg
from atk_perception.node_params import ParameterError, declare, log_effective
from atk_perception.node_runner import run_node

class CameraNode(Node):
    """ROS shell around a :class:`CaptureLoop` (run in its own thread)."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = declare(self, PARAMS)
        log_effective(self, p)
        self.p = p
        if p["retry_max_s"] < p["retry_initial_s"]:
            raise ParameterError(f"parameter retry_max_s: {p['retry_max_s']!r} is below "
                                 f"retry_initial_s {p['retry_initial_s']!r}")
        # Sensor-data QoS (best effort, keep last 5): frames are only worth
        # anything while fresh; subscribers must not slow the camera down.
        self.color_pub = self.create_publisher(Image, "camera/color/image_raw",
                                               qos_profile_sensor_data)
        self.info_pub = self.create_publisher(CameraInfo, "camera/color/camera_info",
                                              qos_profile_sensor_data)
        self.depth_pub = self.create_publisher(Image, "camera/depth/image_raw",
                                               qos_profile_sensor_data)
        # Diagnostics are health reports that must not be lost: reliable, 10 deep.
        self.diag_pub = self.create_publisher(
            DiagnosticArray, "diagnostics",
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self._clock_map = DeviceClockMapper()
        self._status = (OK, "starting")
        self._status_lock = threading.Lock()
        self._last_frame_time: float | None = None
        self._info_cache: tuple[CameraIntrinsics, object] | None = None
        self._loop: CaptureLoop | None = None
        self._thread: threading.Thread | None = None

        if p["backend"] == "none":
            self._set_status(OK, "backend none: images come from the simulator")
        else:
            source = make_camera_source(
                p["backend"], video_path=p["video_path"], loop=p["loop"],
                resolution=p["resolution"], fps=p["fps"], depth_mode=p["depth_mode"],
                exposure_us=p["exposure_us"], device_id=p["device_id"])
            self._loop = CaptureLoop(source, self._publish_frame, self._set_status,
                                     p["frame_timeout_s"],
                                     p["reopen_after_s"],
                                     RetryPolicy(p["retry_initial_s"], p["retry_max_s"]))
            self._thread = threading.Thread(target=self._loop.run, name="camera-capture",
                                            daemon=True)
            self._thread.start()
        self.create_timer(1.0, self._publish_diagnostics)

    # -------------------------------------------------------- capture side
    def _set_status(self, level: int, message: str) -> None:
        with self._status_lock:
            changed = self._status != (level, message)
            self._status = (level, message)
        if changed:
            # rclpy's logger keys call sites by line: one call per severity.
            if level == OK:
                self.get_logger().info(message)
            elif level == WARN:
                self.get_logger().warning(message)
            else:
                self.get_logger().error(message)
            self._publish_diagnostics()

    def _camera_info(self, intr: CameraIntrinsics, header):
        if self._info_cache is None or self._info_cache[0] != intr:
            info = CameraInfo()
            info.width, info.height = intr.width, intr.height
            info.distortion_model = intr.distortion_model
            info.d = [float(v) for v in intr.distortion]
            info.k = [intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0]
            info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            info.p = [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0,
                      0.0, 0.0, 1.0, 0.0]
            self._info_cache = (intr, info)
        info = self._info_cache[1]
        info.header = header
        return info

    def _publish_frame(self, frame: Frame, intr: CameraIntrinsics) -> None:
        stamp_ns = self._clock_map.to_host(frame.stamp_ns, self.get_clock().now().nanoseconds)
        header = Header(frame_id=self.p["frame_id"],
                        stamp=Time(sec=stamp_ns // 1_000_000_000,
                                   nanosec=stamp_ns % 1_000_000_000))
        self.color_pub.publish(array_to_imgmsg(frame.color, "rgb8", header))
        if frame.depth is not None:
            self.depth_pub.publish(array_to_imgmsg(frame.depth, "16UC1", header))
        if (frame.color.shape[1], frame.color.shape[0]) != (intr.width, intr.height):
            intr = intr.scaled(frame.color.shape[1], frame.color.shape[0])
        self.info_pub.publish(self._camera_info(intr, header))
        self._last_frame_time = time.monotonic()

    # -------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        with self._status_lock:
            level, message = self._status
        st = DiagnosticStatus(level=bytes([level]), name=f"{self.get_name()}: camera",
                                    message=message, hardware_id=self.p["backend"])
        kv = KeyValue
        age = ("never" if self._last_frame_time is None
               else f"{time.monotonic() - self._last_frame_time:.2f}")
        st.values = [kv(key="backend", value=self.p["backend"]),
                     kv(key="frames_published",
                        value=str(self._loop.frames if self._loop else 0)),
                     kv(key="reopens", value=str(self._loop.reopens if self._loop else 0)),
                     kv(key="last_frame_age_s", value=age)]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self.diag_pub.publish(arr)

    def shutdown(self) -> None:
        if self._loop is not None:
            self._loop.stop.set()
            self._loop.source.interrupt()
        if self._thread is not None:
            self._thread.join(timeout=2.0 + self.p["frame_timeout_s"])


def main(argv: list[str] | None = None) -> int:
    # One thread spins the diagnostics timer; capture has its own thread.
    return run_node(NODE_NAME, argv, CameraNode, print_help=COMMAND.print_help,
                    startup_errors=(ParameterError, ValueError), threads=1,
                    on_exit=lambda node: node.shutdown())


if __name__ == "__main__":
    sys.exit(main())
