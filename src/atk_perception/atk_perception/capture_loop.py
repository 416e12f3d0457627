"""The camera node's capture thread: open, read, report stalls, reopen with backoff.

ROS-free (publishing and health reports are callbacks), so the retry
behaviour is tested without a camera or ROS; :mod:`atk_perception.camera_node`
runs it in a thread and publishes what it delivers.
"""
from __future__ import annotations

import threading
import time

from atk_perception.camera_sources import CameraError, CameraSource, EndOfStream, RetryPolicy

# diagnostic_msgs/DiagnosticStatus levels (plain ints: CaptureLoop stays independent of rclpy).
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
