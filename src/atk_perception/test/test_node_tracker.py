"""Tracker node over real DDS: a subprocess runs the node, this process feeds
frames (a synthetic sequence with known motion cut from a real photograph,
and the real video tests/data/images/tree.avi) and checks what comes back.

Every wait is on a message, a match count or a service future, with a named
timeout; nothing sleeps.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from atk_fixtures.images import rubberwhale_scene
from atk_fixtures.ros import start_node, stop_node, wait_until

rclpy = pytest.importorskip("rclpy")
from atk_msgs.msg import Keypoint, KeypointArray  # noqa: E402
from atk_msgs.srv import ResetTracker, TransferKeypoints  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from atk_perception.image_conversion import array_to_imgmsg  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"
TOL_PX = 2.0
STARTUP_TIMEOUT_S = 20.0
REPLY_TIMEOUT_S = 5.0
N_KP = 8
TRACKER_NODE = "atk_perception.tracker_node"


# ---------------------------------------------------------------- test data


SCENE_IMG, SCENE_PTS = rubberwhale_scene(N_KP)


def warp(t: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame of a known motion: 0.3 deg/frame rotation plus (0.8, 0.5) px/frame."""
    h, w = SCENE_IMG.shape[:2]
    a = cv2.getRotationMatrix2D((w / 2, h / 2), 0.3 * t, 1.0)
    a[:, 2] += (0.8 * t, 0.5 * t)
    frame = cv2.warpAffine(SCENE_IMG, a, (w, h), borderMode=cv2.BORDER_REFLECT)
    return frame, (SCENE_PTS @ a[:, :2].T + a[:, 2]).astype(np.float32)


def _model_dir(folder: Path) -> Path:
    """A model artifact folder of the shape the trainer writes (model.json + template.png)."""
    cv2.imwrite(str(folder / "template.png"), cv2.cvtColor(SCENE_IMG, cv2.COLOR_RGB2BGR))
    doc = {"format_version": 1, "kind": "atk-keypoint-policy", "image_size": [320, 240],
           "keypoints": {"ids": list(range(100, 100 + N_KP)),
                         "names": [f"corner{i}" for i in range(N_KP)],
                         "canonical_xy": SCENE_PTS.tolist()},
           "template_image": "template.png"}
    (folder / "model.json").write_text(json.dumps(doc))
    return folder


# ---------------------------------------------------------------- DDS plumbing
class Harness:
    """Test-side node: publishes frames, collects keypoint arrays, calls services."""

    def __init__(self, ns: str) -> None:
        self.ctx = rclpy.context.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("tracker_test_client", namespace=ns, context=self.ctx)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.pub = self.node.create_publisher(Image, "camera/color/image_raw",
                                              qos_profile_sensor_data)
        self.received: list[KeypointArray] = []
        self.overlays: list[Image] = []
        self.sub = self.node.create_subscription(KeypointArray, "keypoints", self.received.append,
                                                 qos_profile_sensor_data)
        self.overlay_sub = self.node.create_subscription(Image, "keypoints/overlay",
                                                         self.overlays.append,
                                                         qos_profile_sensor_data)
        self.reset = self.node.create_client(ResetTracker, "tracker/reset")
        self.transfer = self.node.create_client(TransferKeypoints, "tracker/transfer")
        self.stamp_ns = 1_000 * 10**9

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        wait_until(predicate, timeout_s, what, executor=self.executor)

    def next_stamp(self, dt_s: float = 0.05):
        self.stamp_ns += int(dt_s * 1e9)
        return self.stamp_ns

    def frame_msg(self, rgb: np.ndarray, stamp_ns: int, encoding: str = "rgb8") -> Image:
        from std_msgs.msg import Header

        header = Header(frame_id="camera_color_optical_frame")
        header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 10**9)
        arr = rgb if encoding == "rgb8" else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        return array_to_imgmsg(arr, "rgb8" if encoding == "rgb8" else "bgr8", header)

    def reply_for(self, stamp_ns: int) -> KeypointArray | None:
        for m in self.received:
            if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == stamp_ns:
                return m
        return None

    def send_and_wait(self, msg: Image) -> KeypointArray:
        """Publish a frame and wait for the keypoints with its stamp (lock-step).
        Best-effort transport may lose a frame: it is sent again, at most twice."""
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        for _attempt in range(3):
            self.pub.publish(msg)
            try:
                self.wait_for(lambda: self.reply_for(stamp) is not None, REPLY_TIMEOUT_S / 2,
                              f"keypoints for the frame stamped {stamp} ns")
                return self.reply_for(stamp)
            except TimeoutError:
                continue
        raise TimeoutError(f"no keypoints for the frame stamped {stamp} ns after 3 sends")

    def call(self, client, request, what: str):
        self.wait_for(client.service_is_ready, STARTUP_TIMEOUT_S, f"service {what}")
        future = client.call_async(request)
        self.wait_for(future.done, REPLY_TIMEOUT_S * 2, f"reply of {what}")
        return future.result()

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """One tracker node for the module (startup costs seconds) and its harness."""
    folder = tmp_path_factory.mktemp("model")
    ns = f"/trk{os.getpid()}"
    log = folder / "tracker.log"
    proc = start_node(TRACKER_NODE, ns, log, f"model_dir:={_model_dir(folder)}", "frame_timeout_s:=0.6",
                         "max_frame_gap_s:=0.5", "lost_after_frames:=2",
                         "retransfer_every_n_frames:=1")
    h = Harness(ns)
    try:
        h.wait_for(lambda: h.pub.get_subscription_count() > 0 and h.sub.get_publisher_count() > 0
                   or proc.poll() is not None, STARTUP_TIMEOUT_S, "the tracker node's topics")
        if proc.poll() is not None:
            pytest.fail(f"tracker node exited with {proc.returncode}:\n{log.read_text()}")
        h.proc, h.log = proc, log
        yield h
    finally:
        h.close()
        rc = stop_node(proc)
        print(log.read_text()[-3000:])
        assert rc in (0, -signal.SIGINT), f"tracker exit code {rc}"


def _positions(msg: KeypointArray) -> np.ndarray:
    return np.array([[k.x, k.y] for k in msg.keypoints], np.float32)


# ---------------------------------------------------------------- tests
def test_tracks_synthetic_motion_with_source_stamps(tracker: Harness) -> None:
    h = tracker
    for t in range(14):
        frame, gt = warp(t + 1)
        stamp = h.next_stamp()
        reply = h.send_and_wait(h.frame_msg(frame, stamp, "bgr8" if t % 2 else "rgb8"))
        assert reply.header.stamp.sec * 10**9 + reply.header.stamp.nanosec == stamp
        assert reply.header.frame_id == "camera_color_optical_frame"
        assert len(reply.keypoints) == N_KP
        assert [k.id for k in reply.keypoints] == list(range(100, 100 + N_KP))
        assert reply.keypoints[3].name == "corner3"
        assert reply.state == KeypointArray.STATE_TRACKING, reply.message
        assert (reply.image_width, reply.image_height) == (320, 240)
        err = np.abs(_positions(reply) - gt).max()
        assert err < TOL_PX, f"frame {t}: error {err:.2f} px ({reply.message})"
        assert reply.processing_time_s > 0
    assert reply.frames_dropped == 0  # lock-step: nothing to drop


def _tree_frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(DATA / "tree.avi"))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_real_video_lock_step(tmp_path: Path) -> None:
    """Real hand-held video (tree.avi), 25 frames forward then back to the first,
    through a tracker whose template is the video's first frame (points +
    template_image): one reply per frame with its stamp, the same positions as
    the library run in this process, and forward-backward closure.

    min_confident_fraction 0 keeps the state TRACKING whatever the confidences
    (which vary with h_C's randomised RANSAC): this test is about the node
    doing exactly what the library does, the state machine is tested above."""
    frames = _tree_frames()
    assert len(frames) == 68
    seq = [frames[i] for i in list(range(25)) + list(range(23, -1, -1))]
    g = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    start = cv2.goodFeaturesToTrack(g, N_KP, 0.01, 30).reshape(-1, 2).astype(np.float32)
    cv2.imwrite(str(tmp_path / "tree0.png"), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    ns = f"/tree{os.getpid()}"
    log = tmp_path / "tracker.log"
    flat = ", ".join(f"{v:.1f}" for v in start.ravel())
    proc = start_node(TRACKER_NODE, ns, log, f"template_image:={tmp_path / 'tree0.png'}",
                         f"points:=[{flat}]", "min_confident_fraction:=0.0")
    h = Harness(ns)
    try:
        h.wait_for(lambda: h.pub.get_subscription_count() > 0 and h.sub.get_publisher_count() > 0
                   or proc.poll() is not None, STARTUP_TIMEOUT_S, "the tracker node's topics")
        assert proc.poll() is None, log.read_text()
        sent, replies = [], []
        for rgb in seq:
            sent.append(h.next_stamp(1 / 15))
            replies.append(h.send_and_wait(h.frame_msg(rgb, sent[-1])))
    finally:
        h.close()
        stop_node(proc)
    assert "transferred from the template" in replies[0].message
    stamps = [r.header.stamp.sec * 10**9 + r.header.stamp.nanosec for r in replies]
    assert stamps == sent
    assert all(len(r.keypoints) == N_KP for r in replies)
    assert [k.name for k in replies[0].keypoints] == [f"kp{i:02d}" for i in range(N_KP)]
    assert all(r.state == KeypointArray.STATE_TRACKING for r in replies)

    # The same frames through the library directly (what the node must do).
    from atk_perception.backends import make_correspondence
    from atk_perception.keypoint_template import load_points_template
    from atk_perception.tracking_session import SessionConfig, TrackingSession

    lib = TrackingSession(make_correspondence("cpu"),
                          load_points_template(np.round(start, 1), tmp_path / "tree0.png"),
                          SessionConfig(min_confident_fraction=0.0))
    for k, (rgb, reply) in enumerate(zip(seq, replies)):
        ref = lib.process(rgb, k / 15)
        # RANSAC inside h_C is randomised: equal up to a fraction of a pixel.
        assert np.abs(_positions(reply) - ref.points).max() < 1.0, f"frame {k}"
    # Ground truth we do know on a real video: back at the first frame, the
    # keypoints must be back where they started.
    err = np.abs(_positions(replies[-1]) - start).max()
    assert err < 2.0, f"forward-backward error {err:.2f} px"


def test_newest_frame_only_and_drop_counter(tracker: Harness) -> None:
    h = tracker
    h.send_and_wait(h.frame_msg(warp(0)[0], h.next_stamp(1.0)))  # re-transfer after the gap
    before = h.received[-1].frames_dropped
    sent = []
    n_before = len(h.received)
    for t in range(30):  # as fast as possible: faster than h_C on 2 shared cores
        stamp = h.next_stamp(0.01)
        sent.append(stamp)
        h.pub.publish(h.frame_msg(warp(t * 0.2)[0], stamp))
    h.wait_for(lambda: h.reply_for(sent[-1]) is not None, REPLY_TIMEOUT_S * 2,
               "keypoints for the newest frame of the burst")
    burst = h.received[n_before:]
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in burst]
    assert stamps == sorted(stamps)  # never an older frame after a newer one
    assert set(stamps) <= set(sent)
    dropped = h.reply_for(sent[-1]).frames_dropped - before
    assert dropped >= 1, "a 30-frame burst should overrun the tracker"
    assert len(burst) + dropped <= 30


def test_reset_service(tracker: Harness) -> None:
    h = tracker
    res = h.call(h.reset, ResetTracker.Request(), "tracker/reset")
    assert res.success and "next frame" in res.message
    frame, gt = warp(3)
    reply = h.send_and_wait(h.frame_msg(frame, h.next_stamp()))
    assert reply.state == KeypointArray.STATE_TRACKING
    assert "reset requested" in reply.message
    assert np.abs(_positions(reply) - gt).max() < TOL_PX
    bad = ResetTracker.Request(keypoints=[Keypoint(id=7, x=1.0, y=1.0)])
    res = h.call(h.reset, bad, "tracker/reset")
    assert not res.success and "ids [7]" in res.message


def test_transfer_service(tracker: Harness) -> None:
    h = tracker
    frame, gt = warp(6)
    req = TransferKeypoints.Request(image=h.frame_msg(frame, h.next_stamp()))
    res = h.call(h.transfer, req, "tracker/transfer")
    assert res.success, res.message
    assert [k.id for k in res.keypoints] == list(range(100, 100 + N_KP))
    pos = np.array([[k.x, k.y] for k in res.keypoints])
    assert np.abs(pos - gt).max() < TOL_PX
    assert all(0.0 <= k.confidence <= 1.0 for k in res.keypoints)
    empty = TransferKeypoints.Request()
    res = h.call(h.transfer, empty, "tracker/transfer")
    assert not res.success and "empty image" in res.message


def test_frames_stop_and_restart(tracker: Harness) -> None:
    h = tracker
    frame, _ = warp(4)
    last = h.send_and_wait(h.frame_msg(frame, h.next_stamp()))
    last_stamp = last.header.stamp.sec * 10**9 + last.header.stamp.nanosec
    n = len(h.received)
    # No more frames: the node reports LOST once, stamped with the last frame.
    h.wait_for(lambda: any(m.state == KeypointArray.STATE_LOST for m in h.received[n:]),
               REPLY_TIMEOUT_S, "a LOST report after frames stopped")
    lost = next(m for m in h.received[n:] if m.state == KeypointArray.STATE_LOST)
    assert "no camera frames" in lost.message
    assert lost.header.stamp.sec * 10**9 + lost.header.stamp.nanosec == last_stamp
    assert len(lost.keypoints) == N_KP
    frame, gt = warp(9)
    reply = h.send_and_wait(h.frame_msg(frame, h.next_stamp(2.0)))
    assert reply.state == KeypointArray.STATE_TRACKING
    assert "frames resumed" in reply.message
    assert np.abs(_positions(reply) - gt).max() < TOL_PX


def test_bad_images_are_reported_and_the_node_keeps_running(tracker: Harness) -> None:
    h = tracker
    frame, gt = warp(10)
    h.send_and_wait(h.frame_msg(frame, h.next_stamp()))
    odd = h.frame_msg(frame, h.next_stamp())
    odd.encoding = "yuv422"
    reply = h.send_and_wait(odd)
    assert reply.state == KeypointArray.STATE_LOST and "unsupported image encoding" in reply.message
    short = h.frame_msg(frame, h.next_stamp())
    short.data = short.data[:1000]
    reply = h.send_and_wait(short)
    assert "truncated" in reply.message
    depth = h.frame_msg(frame, h.next_stamp())
    depth.encoding, depth.step = "16UC1", depth.width * 2
    depth.data = depth.data[:depth.height * depth.step]
    reply = h.send_and_wait(depth)
    assert "not a colour image" in reply.message
    frame, gt = warp(11)
    reply = h.send_and_wait(h.frame_msg(frame, h.next_stamp()))
    assert reply.state == KeypointArray.STATE_TRACKING, reply.message
    assert np.abs(_positions(reply) - gt).max() < TOL_PX
    assert h.proc.poll() is None


def test_overlay_is_published_with_the_source_stamp(tracker: Harness) -> None:
    h = tracker
    h.wait_for(lambda: h.overlay_sub.get_publisher_count() > 0, REPLY_TIMEOUT_S,
               "the overlay publisher")
    frame, _ = warp(12)
    stamp = h.next_stamp()
    h.send_and_wait(h.frame_msg(frame, stamp))

    def overlay() -> Image | None:
        return next((o for o in h.overlays
                     if o.header.stamp.sec * 10**9 + o.header.stamp.nanosec == stamp), None)

    h.wait_for(lambda: overlay() is not None, REPLY_TIMEOUT_S, "the overlay of the frame")
    ov = overlay()
    assert ov.encoding == "rgb8" and (ov.width, ov.height) == (320, 240)
    pixels = np.frombuffer(ov.data, np.uint8).reshape(240, 320, 3)
    assert np.abs(pixels.astype(int) - frame).sum() > 0  # something was drawn


# ---------------------------------------------------------------- startup
# tracker_node --help without ROS: tests/test_parameter_files.py (every node).


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """base_T_camera (4, 4) of an optical frame (z forward, y down) at eye looking at target."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    t = np.eye(4)
    t[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    t[:3, 3] = eye
    return t


def test_keypoints_under_the_robot_are_reported_not_visible(tmp_path: Path) -> None:
    """With an extrinsics file, camera_info and joint_states, the keypoint the
    gripper covers is reported not visible (and held where it was), the others
    are tracked as usual, and the node says once that the robot model is on."""
    from sensor_msgs.msg import CameraInfo, JointState
    from std_msgs.msg import Header

    from atk_perception import kinematics as kin
    from atk_perception.robot_mask import save_extrinsics

    q = np.concatenate([kin.HOME_Q + [0.0, 0.6, -0.6, -0.5, 0.0, 0.0], [0.0]])
    tcp = (kin.fk(q[:6]) @ kin.ROBOTIQ_2F85_TCP)[:3, 3]
    # a camera 0.8 m beside the gripper looking at its pinch point, which then
    # projects onto keypoint 0 (the principal point is put there)
    cam = _look_at(tcp + [0.0, 0.8, 0.0], tcp)
    k = np.array([[290.0, 0, SCENE_PTS[0, 0]], [0, 290.0, SCENE_PTS[0, 1]], [0, 0, 1]])
    save_extrinsics(tmp_path / "camera.yaml", cam)
    ns = f"/rbt{os.getpid()}"
    log = tmp_path / "tracker.log"
    proc = start_node(TRACKER_NODE, ns, log, f"model_dir:={_model_dir(tmp_path)}",
                         f"extrinsics_file:={tmp_path / 'camera.yaml'}")
    h = Harness(ns)
    try:
        info_pub = h.node.create_publisher(CameraInfo, "camera/color/camera_info", qos_profile_sensor_data)
        js_pub = h.node.create_publisher(JointState, "joint_states", 10)
        h.wait_for(lambda: (h.pub.get_subscription_count() > 0 and js_pub.get_subscription_count() > 0
                            and info_pub.get_subscription_count() > 0) or proc.poll() is not None,
                   STARTUP_TIMEOUT_S, "the tracker node's image, camera_info and joint_states subscriptions")
        assert proc.poll() is None, log.read_text()
        replies = []
        for t in range(6):
            stamp = h.next_stamp()
            header = Header(frame_id="camera_color_optical_frame")
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 10**9)
            info_pub.publish(CameraInfo(header=header, width=320, height=240, k=k.reshape(-1).tolist()))
            js_pub.publish(JointState(header=header, name=[*kin.JOINT_NAMES, kin.GRIPPER_JOINT],
                                      position=q.tolist()))
            replies.append(h.send_and_wait(h.frame_msg(SCENE_IMG, stamp)))
        # the first frames may come before the node has the camera_info and a joint state
        last = replies[-1]
        assert not last.keypoints[0].visible
        np.testing.assert_allclose([last.keypoints[0].x, last.keypoints[0].y], SCENE_PTS[0], atol=TOL_PX)
        assert sum(kp.visible for kp in last.keypoints) >= 2, "points away from the robot are still tracked"
    finally:
        h.close()
        stop_node(proc)
    text = log.read_text()
    assert text.count("robot-aware occlusion on") == 1, text[-3000:]


@pytest.mark.parametrize("params, match", [
    (["points:=[10.0, 10.0]", "template_image:=%s", "extrinsics_file:=/nonexistent/camera.yaml"],
     "extrinsics_file"),
    (["backend:=cotracker", "points:=[10.0, 10.0]", "template_image:=%s"],
     "needs a local CoTracker3 checkpoint"),
    (["backend:=cotracker", "checkpoint:=/nonexistent/scaled_online.pth",
      "points:=[10.0, 10.0]", "template_image:=%s"], "not found"),
    (["points:=[10.0, 10.0, 5000.0, 1.0]", "template_image:=%s"], "outside the 584x388"),
    (["min_point_confidence:=1.5", "model_dir:=/tmp"], "min_point_confidence"),
    ([], "model_dir or points"),
])
def test_startup_errors_are_clear(tmp_path: Path, params: list[str], match: str) -> None:
    params = [p.replace("%s", str(DATA / "rubberwhale1.png")) for p in params]
    log = tmp_path / "log.txt"
    proc = start_node(TRACKER_NODE, f"/bad{os.getpid()}", log, *params)
    try:
        rc = proc.wait(timeout=30)
    finally:
        stop_node(proc)
    text = log.read_text()
    assert rc != 0 and match in text, text[-2000:]


def test_a_paused_simulator_is_not_a_camera_stall(tmp_path) -> None:
    """use_sim_time: frames that stop together with /clock (the simulator paused: both stop) are not
    reported LOST; frames that stop while /clock runs on are (issue 17: each simulator pause made the
    policy hold and drop its action chunk)."""
    from rosgraph_msgs.msg import Clock

    ns = f"/trksim{os.getpid()}"
    log = tmp_path / "tracker.log"
    proc = start_node(TRACKER_NODE, ns, log, f"model_dir:={_model_dir(tmp_path)}", "frame_timeout_s:=0.6",
                      "use_sim_time:=true")
    h = Harness(ns)
    clock_pub = h.node.create_publisher(Clock, "/clock", 10)
    sim_ns = [h.stamp_ns]

    def tick_clock() -> None:
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(sim_ns[0], 10**9)
        clock_pub.publish(msg)

    try:
        h.wait_for(lambda: (h.pub.get_subscription_count() > 0 and h.sub.get_publisher_count() > 0
                            and clock_pub.get_subscription_count() > 0) or proc.poll() is not None,
                   STARTUP_TIMEOUT_S, "the tracker node's topics and its /clock subscription")
        assert proc.poll() is None, log.read_text()
        for t in range(3):   # the clock and the frames advance together, as the simulator publishes them
            stamp = h.next_stamp()
            sim_ns[0] = stamp
            tick_clock()
            reply = h.send_and_wait(h.frame_msg(warp(t)[0], stamp))
        assert reply.state == KeypointArray.STATE_TRACKING, reply.message
        n = len(h.received)
        # paused: no frames, no clock, for more than 3 frame timeouts of wall time
        with pytest.raises(TimeoutError):
            h.wait_for(lambda: any(m.state == KeypointArray.STATE_LOST for m in h.received[n:]), 2.0,
                       "a LOST report while the simulator is paused")
        # the clock runs on (20 Hz of simulated time in step with the wall), the camera does not
        timer = h.node.create_timer(0.05, lambda: (sim_ns.__setitem__(0, sim_ns[0] + 50_000_000), tick_clock()))
        h.wait_for(lambda: any(m.state == KeypointArray.STATE_LOST for m in h.received[n:]), REPLY_TIMEOUT_S,
                   "a LOST report while the clock runs and no frame comes")
        timer.cancel()
        lost = next(m for m in h.received[n:] if m.state == KeypointArray.STATE_LOST)
        assert "no camera frames" in lost.message
    finally:
        h.close()
        rc = stop_node(proc)
        print(log.read_text()[-3000:])
        assert rc in (0, -signal.SIGINT), f"tracker exit code {rc}"
