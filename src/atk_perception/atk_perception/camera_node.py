"""Camera node: publishes colour, registered depth and CameraInfo.

Thin shell over :mod:`atk_perception.camera_sources` (the hardware
boundary). Backends: ``kinect`` (Azure Kinect via pyk4a), ``video`` (a video
file or a folder of images, for replaying recordings) and ``none`` (the
simulator publishes the images; the node only reports that in diagnostics).

Capture runs in its own thread because a device read blocks until the next
exposure; publishing from it is thread-safe in rclpy. A camera that stops
delivering frames is reported (log + ``diagnostics``) and reopened with
exponential backoff; the node never exits on a camera fault (the official
Kinect driver does; a robot cell needs the node to come back by itself).
See docs/perception_nodes.md.
"""
from __future__ import annotations

import sys
import threading
import time

from atk_perception.camera_sources import (
    KINECT_DEPTH_MODES, KINECT_EXPOSURE_RANGE_US, CameraError, CameraIntrinsics, CameraSource,
    DeviceClockMapper, EndOfStream, Frame, RetryPolicy, make_camera_source)
from atk_perception.node_params import ParamSpec, ParameterError, format_help
from atk_perception.node_runner import run_node

NODE_NAME = "camera"

PARAMS = (
    ParamSpec("backend", "kinect", "'kinect' (Azure Kinect via pyk4a), 'video' (replay "
              "video_path) or 'none' (the simulator publishes the images)",
              choices=("kinect", "video", "none")),
    ParamSpec("video_path", "", "backend video: a video file or a folder of images "
              "(replayed in file-name order)"),
    ParamSpec("loop", True, "backend video: start again at the end of the recording"),
    ParamSpec("resolution", "native", "colour resolution: 720p, 1080p, 1440p, 1536p, "
              "2160p, 3072p (Kinect; 'native' = 720p), or for video also 'native' or "
              "WIDTHxHEIGHT (frames resized)"),
    ParamSpec("fps", 30.0, "frame rate: 5, 15 or 30 on the Kinect; any rate for video "
              "replay", min=0.1, max=120.0),
    ParamSpec("depth_mode", "NFOV_UNBINNED", "Kinect depth mode (OFF: colour only)",
              choices=KINECT_DEPTH_MODES),
    ParamSpec("exposure_us", 0, "Kinect colour exposure in microseconds; 0 = auto",
              min=0, max=KINECT_EXPOSURE_RANGE_US[1]),
    ParamSpec("device_id", 0, "Kinect device index", min=0, max=16),
    ParamSpec("frame_id", "camera_color_optical_frame", "header.frame_id of colour, depth "
              "(registered to colour) and camera_info"),
    ParamSpec("hfov_deg", 90.0, "video: horizontal field of view for the nominal "
              "CameraInfo of recordings without calibration", min=1.0, max=179.0),
    ParamSpec("frame_timeout_s", 1.0, "no frame for this long is reported as a stall",
              min=0.05, max=60.0),
    ParamSpec("reopen_after_s", 3.0, "a stall this long closes and reopens the camera",
              min=0.1, max=600.0),
    ParamSpec("retry_initial_s", 0.5, "first delay before reopening a failed camera",
              min=0.01, max=60.0),
    ParamSpec("retry_max_s", 10.0, "longest delay between reopen attempts (backoff cap)",
              min=0.01, max=600.0),
)

SUMMARY = ("Publishes camera/color/image_raw (rgb8), camera/color/camera_info and\n"
           "camera/depth/image_raw (16UC1 mm, registered to colour) with sensor-data QoS,\n"
           "and camera health on diagnostics.")

# diagnostic_msgs/DiagnosticStatus levels (kept here so the thread needs no msg import).
OK, WARN, ERROR = 0, 1, 2


class CaptureLoop:
    """The capture thread's logic, independent of rclpy (publishing and
    reporting are callbacks), so the retry behaviour is easy to follow.

    ``publish(frame, intrinsics)`` is called per frame; ``report(level,
    message)`` whenever the camera's health changes.
    """

    def __init__(self, source: CameraSource, publish, report, frame_timeout_s: float,
                 reopen_after_s: float, retry: RetryPolicy) -> None:
        self.source = source
        self.publish = publish
        self.report = report
        self.frame_timeout_s = frame_timeout_s
        self.reopen_after_s = reopen_after_s
        self.retry = retry
        self.stop = threading.Event()
        self.frames = 0
        self.reopens = 0

    def run(self) -> None:
        opened = False
        stalled_since: float | None = None
        reported_trouble = ""
        while not self.stop.is_set():
            if not opened:
                try:
                    self.source.open()
                except CameraError as exc:
                    delay = self.retry.next_delay()
                    self.report(ERROR, f"{exc}; retrying in {delay:.1f} s")
                    self.stop.wait(delay)
                    continue
                opened = True
                stalled_since = time.monotonic()
                self.report(OK, f"{self.source.name} opened, waiting for frames")
            try:
                frame = self.source.read(self.frame_timeout_s)
            except EndOfStream as exc:
                self.report(WARN, f"{exc}; no more frames will be published")
                self.source.close()
                self.stop.wait()  # stay alive (diagnostics, services) until shutdown
                break
            except CameraError as exc:
                self.source.close()
                opened = False
                self.reopens += 1
                delay = self.retry.next_delay()
                self.report(ERROR, f"{exc}; reopening in {delay:.1f} s")
                self.stop.wait(delay)
                continue
            now = time.monotonic()
            if frame is None:
                if self.stop.is_set():
                    break
                if stalled_since is None:  # the read above already waited the timeout
                    stalled_since = now - self.frame_timeout_s
                idle = now - stalled_since
                if idle >= self.reopen_after_s:
                    self.source.close()
                    opened = False
                    self.reopens += 1
                    delay = self.retry.next_delay()
                    self.report(ERROR, f"{self.source.name} delivered no frame for {idle:.1f} s; "
                                f"closing it and reopening in {delay:.1f} s")
                    self.stop.wait(delay)
                else:
                    self.report(WARN, f"{self.source.name} delivered no frame for {idle:.1f} s "
                                f"(reopening after {self.reopen_after_s:g} s)")
                continue
            trouble = self.source.problems()
            if stalled_since is not None or trouble != reported_trouble:
                # First frame after opening or a stall, or new damage found:
                # a replay of a damaged recording is WARN, never plain "streaming".
                if stalled_since is not None:
                    self.retry.succeeded()
                if trouble:
                    self.report(WARN, f"{self.source.name} streaming, but {trouble}")
                else:
                    self.report(OK, f"{self.source.name} streaming")
                stalled_since = None
                reported_trouble = trouble
            self.frames += 1
            self.publish(frame, self.source.intrinsics)
        self.source.close()


def _build_node_class():
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: PLC0415
    from rclpy.node import Node  # noqa: PLC0415
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: PLC0415
    from sensor_msgs.msg import CameraInfo, Image  # noqa: PLC0415

    from atk_perception.image_conversion import array_to_imgmsg  # noqa: PLC0415
    from atk_perception.node_params import declare, log_effective  # noqa: PLC0415

    class CameraNode(Node):
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
            self._DiagnosticArray, self._DiagnosticStatus, self._KeyValue = (
                DiagnosticArray, DiagnosticStatus, KeyValue)
            self._array_to_imgmsg = array_to_imgmsg
            self._CameraInfo = CameraInfo
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
                info = self._CameraInfo()
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
            from builtin_interfaces.msg import Time  # noqa: PLC0415
            from std_msgs.msg import Header  # noqa: PLC0415

            stamp_ns = self._clock_map.to_host(frame.stamp_ns, self.get_clock().now().nanoseconds)
            header = Header(frame_id=self.p["frame_id"],
                            stamp=Time(sec=stamp_ns // 1_000_000_000,
                                       nanosec=stamp_ns % 1_000_000_000))
            self.color_pub.publish(self._array_to_imgmsg(frame.color, "rgb8", header))
            if frame.depth is not None:
                self.depth_pub.publish(self._array_to_imgmsg(frame.depth, "16UC1", header))
            if (frame.color.shape[1], frame.color.shape[0]) != (intr.width, intr.height):
                intr = intr.scaled(frame.color.shape[1], frame.color.shape[0])
            self.info_pub.publish(self._camera_info(intr, header))
            self._last_frame_time = time.monotonic()

        # -------------------------------------------------------- diagnostics
        def _publish_diagnostics(self) -> None:
            with self._status_lock:
                level, message = self._status
            st = self._DiagnosticStatus(level=bytes([level]), name=f"{self.get_name()}: camera",
                                        message=message, hardware_id=self.p["backend"])
            kv = self._KeyValue
            age = ("never" if self._last_frame_time is None
                   else f"{time.monotonic() - self._last_frame_time:.2f}")
            st.values = [kv(key="backend", value=self.p["backend"]),
                         kv(key="frames_published",
                            value=str(self._loop.frames if self._loop else 0)),
                         kv(key="reopens", value=str(self._loop.reopens if self._loop else 0)),
                         kv(key="last_frame_age_s", value=age)]
            arr = self._DiagnosticArray()
            arr.header.stamp = self.get_clock().now().to_msg()
            arr.status = [st]
            self.diag_pub.publish(arr)

        def shutdown(self) -> None:
            if self._loop is not None:
                self._loop.stop.set()
                self._loop.source.interrupt()
            if self._thread is not None:
                self._thread.join(timeout=2.0 + self.p["frame_timeout_s"])

    return CameraNode


def main(argv: list[str] | None = None) -> int:
    # One thread spins the diagnostics timer; capture has its own thread.
    return run_node("camera", argv, lambda: _build_node_class()(),
                    print_help=lambda: print(format_help("camera_node", SUMMARY, PARAMS)),
                    startup_errors=(ParameterError, ValueError), threads=1,
                    on_exit=lambda node: node.shutdown())


if __name__ == "__main__":
    sys.exit(main())
