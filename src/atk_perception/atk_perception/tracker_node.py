"""Keypoint tracker node: runs h_C on the live camera and publishes keypoints.

Thin shell over :mod:`atk_perception.tracking_session` (state machine),
:mod:`atk_perception.keypoint_template` (model artifact / points),
:mod:`atk_perception.image_conversion` and the h_C backends. See
docs/perception_nodes.md for topics, QoS and behaviour. Parameters and
``--help``: :mod:`atk_perception.tracker_params` (ROS-free).

Concurrency: a SingleThreadedExecutor runs the image callback and the two
services; the image callback only stores the newest frame in a one-slot
buffer (an older one not yet taken counts as dropped) and returns. A plain
worker thread owns the session: it waits on that slot, runs h_C and
publishes, and between frames it runs the stall watchdog. The executor thread
never waits for the worker, so frames keep arriving while a transfer runs for
seconds: ~/reset only files a request the worker applies before its next frame
(TrackingSession.request_reset is thread-safe). Before, the watchdog timer
waited on the session's lock on the executor thread during a transfer, so no
frame was taken, the stall rule fired when the lock came free, and the frames
that "resumed" were transferred onto again: a re-transfer loop (issue 17).
Only ~/transfer, the operator's one-off, shares h_C with the worker under a
lock and so holds the executor while a frame is processed.
(A two-thread MultiThreadedExecutor did the same with a guard condition, but
rclpy's per-callback futures and wait-set rebuilds cost more than h_C
itself: ~40 % of a core at 30 fps, measured.)
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState

from atk_msgs.msg import Keypoint, KeypointArray
from atk_msgs.srv import ResetTracker, TransferKeypoints
from atk_perception import kinematics as kin
from atk_perception.correspondence import CorrespondenceError
from atk_perception.image_conversion import ImageConversionError, array_to_imgmsg, imgmsg_to_rgb8
from atk_perception.keypoint_template import (
    TemplateError, load_model_template, load_points_template)
from atk_perception.node_params import ParameterError, config_from_params, declare, log_effective
from atk_perception.node_runner import run_node
from atk_perception.robot_mask import RobotMaskError, load_extrinsics
from atk_perception.robot_occlusion import RobotAwareTracker, RobotInputs, RobotOcclusionConfig
from atk_perception.tracker_params import COMMAND, NODE_NAME, PARAMS
from atk_perception.tracking_session import (
    LatestFrameSlot, SessionConfig, SessionOutput, TrackerState,
    TrackingSession)

# Overlay colours (RGB) from red (confidence 0) over yellow to green (1).
_STATE_NAMES = {TrackerState.INITIALISING: "INITIALISING", TrackerState.TRACKING: "TRACKING",
                TrackerState.LOST: "LOST"}


#: tracker parameter -> CoTrackerConfig field
COTRACKER_PARAMS = {"cotracker_v2": "v2", "cotracker_window_len": "window_len",
                    "cotracker_visibility_threshold": "visibility_threshold",
                    "cotracker_confidence_decay": "confidence_decay"}


def make_backend(backend: str, checkpoint: str, device: str, reanchor_mode: str = "async",
                 cotracker: dict[str, Any] | None = None):
    """Build h_C; ValueError/FileNotFoundError with an operator message on failure.

    cotracker: the node's ``cotracker_*`` parameters (COTRACKER_PARAMS), for backend 'cotracker'.
    """
    from atk_perception.backends import make_correspondence  # noqa: PLC0415 (torch for cotracker)

    overrides: dict[str, Any] = {}
    if backend == "cpu":
        overrides["reanchor_mode"] = reanchor_mode
    if backend == "cotracker":
        if not checkpoint:
            raise ParameterError("parameter checkpoint: backend 'cotracker' needs a local "
                                 "CoTracker3 checkpoint file (e.g. scaled_online.pth); nothing "
                                 "is downloaded at run time. Use backend:=cpu to run without one")
        overrides["checkpoint"] = checkpoint
        if device:
            overrides["device"] = device
        for param, value in (cotracker or {}).items():
            overrides[COTRACKER_PARAMS[param]] = value
    return make_correspondence(backend, **overrides)


def draw_overlay(image: np.ndarray, out: SessionOutput, ids: tuple[int, ...],
                 min_confidence: float) -> np.ndarray:
    """Operator view: (H, W, 3) uint8 RGB with keypoints coloured by confidence
    (filled: visible, ring: not visible), their ids, and the state."""
    canvas = image.copy()
    h, w = canvas.shape[:2]
    radius = max(3, int(round(min(w, h) / 120)))
    scale = max(0.35, min(w, h) / 900)
    for (x, y), c, vis, kid in zip(out.points, out.confidence, out.visible, ids):
        c = float(np.clip(c, 0.0, 1.0))
        colour = (int(255 * min(1.0, 2 * (1 - c))), int(255 * min(1.0, 2 * c)), 0)
        centre = (int(round(x)), int(round(y)))
        cv2.circle(canvas, centre, radius, colour, -1 if vis else 2, cv2.LINE_AA)
        if c < min_confidence:
            cv2.circle(canvas, centre, radius + 3, (255, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(canvas, str(kid), (centre[0] + radius + 2, centre[1] - radius),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    banner = _STATE_NAMES.get(out.state, str(out.state))
    colour = {TrackerState.TRACKING: (0, 200, 0), TrackerState.LOST: (255, 0, 0)}.get(
        out.state, (255, 200, 0))
    cv2.putText(canvas, banner, (8, int(24 * scale / 0.5)), cv2.FONT_HERSHEY_SIMPLEX,
                scale * 1.5, colour, 2, cv2.LINE_AA)
    return canvas


class TrackerNode(Node):
    """ROS shell around :class:`TrackingSession`."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        p = declare(self, PARAMS)
        log_effective(self, p)
        self.p = p
        config = config_from_params(SessionConfig, p)
        template = self._load_template(p)
        h_c = make_backend(p["backend"], p["checkpoint"], p["device"], p["reanchor_mode"],
                           {name: p[name] for name in COTRACKER_PARAMS})
        base_t_camera = None
        if p["extrinsics_file"]:
            try:
                base_t_camera = load_extrinsics(p["extrinsics_file"])
            except RobotMaskError as exc:
                raise ParameterError(f"parameter extrinsics_file: {exc}") from exc
        self.robot = RobotInputs(base_t_camera, p["max_joint_age_s"], occlusion=p["robot_occlusion"])
        h_c = RobotAwareTracker(h_c, None, RobotOcclusionConfig(margin_px=p["robot_margin_px"]))
        self.session = TrackingSession(h_c, template, config)
        self.get_logger().info(
            f"tracking {len(template)} keypoints ({', '.join(template.names)}) from "
            f"{template.source}, template {template.size[0]}x{template.size[1]}, "
            f"backend {p['backend']}")

        self.slot: LatestFrameSlot = LatestFrameSlot()
        self._last_rx = time.monotonic()
        # With use_sim_time the frame timeout also waits for the simulated clock: a simulator that
        # pauses (clock and camera together, seen for 0.7-1.6 s on a loaded machine) is not a camera
        # that stopped, and a LOST report there made the policy drop its action chunk.
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self._last_rx_clock = self._clock_s()
        self._last_header = None
        self._last_stall_log = 0.0
        self._last_bad_log = 0.0
        self._frames_done = 0
        # Held by the worker while it processes a frame and by the ~/transfer
        # service (both use h_C); never by anything else on the executor thread.
        self._session_lock = threading.Lock()

        # Sensor-data QoS (best effort, keep last 5): a late frame is worth
        # nothing, and a reliable queue would make the camera wait on us.
        self.sub = self.create_subscription(Image, "camera/color/image_raw", self._on_image,
                                            qos_profile_sensor_data)
        # The robot model's inputs: sensor-data QoS (newest only; best effort
        # also matches a reliable publisher such as the driver's joint_states).
        if base_t_camera is not None:
            self.create_subscription(CameraInfo, "camera/color/camera_info", self._on_camera_info,
                                     qos_profile_sensor_data)
            if p["robot_occlusion"]:
                self.create_subscription(JointState, "joint_states", self._on_joint_state,
                                         qos_profile_sensor_data)
        # Keypoints are sensor data too: consumers want the newest, not a backlog.
        self.pub = self.create_publisher(KeypointArray, "keypoints", qos_profile_sensor_data)
        self.overlay_pub = self.create_publisher(Image, "keypoints/overlay",
                                                 qos_profile_sensor_data)
        # Watchdog period (run by the worker between frames): a tenth of the
        # frame timeout, so a stall is seen within 10 % of it, but not
        # faster than 20 Hz.
        self._watchdog_period_s = max(0.05, config.frame_timeout_s / 10)
        self.create_service(ResetTracker, "~/reset", self._on_reset)
        self.create_service(TransferKeypoints, "~/transfer", self._on_transfer)
        self._worker = threading.Thread(target=self._worker_loop, name="tracker-worker",
                                        daemon=True)
        self._worker.start()

    # -------------------------------------------------------- setup
    def _load_template(self, p: dict):
        if p["model_dir"]:
            return load_model_template(p["model_dir"])
        if not p["points"] or not p["template_image"]:
            raise ParameterError("parameters model_dir or points + template_image: give a "
                                 "trained model folder (model_dir:=...) or keypoints "
                                 "(points:=[x0, y0, ...]) on a template image "
                                 "(template_image:=...)")
        return load_points_template(p["points"], p["template_image"],
                                    p["point_ids"] or None, p["point_names"] or None)

    # -------------------------------------------------------- callbacks
    def _on_camera_info(self, msg) -> None:
        self.robot.set_intrinsics(np.asarray(msg.k, np.float64))

    def _on_joint_state(self, msg) -> None:
        q, _ = kin.joint_state_vector(list(msg.name), list(msg.position))
        if q is not None:
            self.robot.set_joint_state(q, msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)

    def _on_image(self, msg: Image) -> None:
        # Cheap on purpose: store, count an overwrite as a drop, wake the worker.
        self._last_rx = time.monotonic()
        self._last_rx_clock = self._clock_s()
        self.slot.put(msg)

    def _clock_s(self) -> float:
        """The node's clock in seconds (simulated time with use_sim_time)."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _idle_s(self) -> float:
        """Seconds without a camera frame: wall time, and with use_sim_time at most the simulated time
        that passed meanwhile (a paused simulator sends no frames and no clock)."""
        idle = time.monotonic() - self._last_rx
        if self._sim_time:
            idle = min(idle, max(0.0, self._clock_s() - self._last_rx_clock))
        return idle

    def _worker_loop(self) -> None:
        while True:
            msg = self.slot.wait_take(self._watchdog_period_s)
            if self.slot.closed:  # the node is shutting down
                return
            try:
                if msg is None:
                    self._check_stall()
                    continue
                with self._session_lock:
                    self._work(msg)
            except Exception as exc:  # noqa: BLE001
                if self.slot.closed:
                    return  # publish after the context went down: shutting down
                self.get_logger().error(f"tracker worker: {type(exc).__name__}: {exc}; "
                                        "frame skipped")

    def close(self) -> None:
        """Stops the worker (after the frame in hand) and the CPU backend's
        re-anchoring thread; called before the node is destroyed."""
        self.slot.close()
        self._worker.join(timeout=10.0)
        close = getattr(self.session.h_c, "close", None)
        if close is not None:
            close()

    def _work(self, msg) -> None:
        self._last_header = msg.header
        try:
            rgb = imgmsg_to_rgb8(msg)
        except ImageConversionError as exc:
            self._warn_bad(str(exc))
            self._publish(self.session.report_bad_frame(str(exc)), msg.header)
            return
        stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        for note in (self.robot.apply_template_geometry(self.session.h_c, self.session.template),
                     self.robot.apply(self.session.h_c, stamp_s)):
            if note:
                self.get_logger().info(note)
        try:
            out = self.session.process(rgb, stamp_s)
        except Exception as exc:  # noqa: BLE001 (a backend bug must not kill the node)
            self.get_logger().error(f"h_C failed on this frame ({type(exc).__name__}: {exc}); "
                                    "frame skipped")
            out = self.session.report_bad_frame(f"tracker error {type(exc).__name__}: {exc}")
        if out.message and out.message.startswith("frame skipped"):
            self._warn_bad(out.message)
        self._publish(out, msg.header)
        self._frames_done += 1
        if self.p["overlay"] and self.overlay_pub.get_subscription_count() > 0:
            canvas = draw_overlay(rgb, out, self.session.ids, self.p["min_point_confidence"])
            self.overlay_pub.publish(array_to_imgmsg(canvas, "rgb8", msg.header))

    def _warn_bad(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_bad_log > 2.0:  # throttle: a bad stream repeats per frame
            self.get_logger().warning(text)
            self._last_bad_log = now

    def _check_stall(self) -> None:
        """Worker thread, when no frame came for a watchdog period."""
        if self._last_header is None:
            return
        idle = self._idle_s()
        out = self.session.check_stalled(idle)
        if out is not None:
            self.get_logger().warning(out.message)
            self._last_stall_log = time.monotonic()
            self._publish(out, self._last_header)
        elif idle > self.session.config.frame_timeout_s and \
                time.monotonic() - self._last_stall_log > 10.0:
            self.get_logger().warning(f"still no camera frames on {self.sub.topic_name} "
                                      f"after {idle:.0f} s")
            self._last_stall_log = time.monotonic()

    def _on_reset(self, request, response):
        pts = np.array([[k.x, k.y] for k in request.keypoints], np.float32).reshape(-1, 2)
        ids = [int(k.id) for k in request.keypoints]
        # No lock: the session files the request, and the worker applies
        # it before its next frame (a transfer in progress is not waited for).
        ok, message = self.session.request_reset(pts if len(ids) else None, ids or None)
        if ok:
            self.get_logger().info(message)
        else:
            self.get_logger().warning(message)
        response.success, response.message = ok, message
        return response

    def _on_transfer(self, request, response):
        try:
            image = imgmsg_to_rgb8(request.image)
            template = None
            if request.template_image.height and request.template_image.width:
                template = imgmsg_to_rgb8(request.template_image)
            tk = request.template_keypoints
            pts = np.array([[k.x, k.y] for k in tk], np.float32).reshape(-1, 2) if tk else None
            if tk:
                ids = [int(k.id) for k in tk]
                names = [k.name for k in tk]
            else:
                ids, names = list(self.session.ids), list(self.session.names)
            with self._session_lock:  # a transfer can take seconds: the worker waits
                out_pts, conf = self.session.transfer(image, template, pts)
        except (ImageConversionError, CorrespondenceError, ValueError) as exc:
            response.success, response.message = False, f"transfer refused: {exc}"
            self.get_logger().warning(response.message)
            return response
        thr = self.p["min_point_confidence"]
        for kid, name, (x, y), c in zip(ids, names, out_pts, conf):
            response.keypoints.append(Keypoint(
                id=kid, name=name, x=float(x), y=float(y), confidence=float(c),
                visible=bool(c >= thr)))
        n_ok = int(np.sum(conf >= thr))
        response.success = True
        response.message = f"{n_ok} of {len(conf)} keypoints with confidence >= {thr:g}"
        return response

    # -------------------------------------------------------- output
    def _publish(self, out: SessionOutput, header) -> None:
        msg = KeypointArray()
        msg.header = header
        if not msg.header.frame_id:
            msg.header.frame_id = self.p["frame_id"]
        msg.state = int(out.state)
        msg.image_width, msg.image_height = int(out.image_size[0]), int(out.image_size[1])
        msg.frames_dropped = self.slot.dropped
        msg.processing_time_s = float(out.processing_time_s)
        msg.message = out.message
        Kp = Keypoint
        msg.keypoints = [
            Kp(id=int(i), name=n, x=float(x), y=float(y),
               confidence=float(np.clip(c, 0.0, 1.0)), visible=bool(v), robot_covered=bool(rc))
            for i, n, (x, y), c, v, rc in zip(self.session.ids, self.session.names,
                                              out.points, out.confidence, out.visible, out.covered)]
        self.pub.publish(msg)


def main(argv: list[str] | None = None) -> int:
    # Startup errors an operator can fix (no template, unknown backend) exit 2:
    # nothing could be tracked. One executor thread receives frames; the node's
    # own worker thread processes them.
    return run_node(NODE_NAME, argv, TrackerNode, print_help=COMMAND.print_help,
                    startup_errors=(ParameterError, TemplateError, ValueError, FileNotFoundError, ImportError),
                    threads=1, on_exit=lambda node: node.close())


if __name__ == "__main__":
    sys.exit(main())
