"""The tracker's state machine with the real CPU h_C on real photographs
warped by known motions (ground truth)."""
from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_perception.backends import make_correspondence
from atk_perception.keypoint_template import KeypointTemplate
from atk_perception.tracking_session import (
    LatestFrameSlot, SessionConfig, TrackerState, TrackingSession)

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"
TOL_PX = 2.0


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    """rubberwhale1 (388, 584, 3) RGB and 8 textured keypoints (8, 2) away from borders."""
    img = cv2.cvtColor(cv2.imread(str(DATA / "rubberwhale1.png")), cv2.COLOR_BGR2RGB)
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    h, w = g.shape
    pts = cv2.goodFeaturesToTrack(g, 200, 0.01, 30).reshape(-1, 2)
    keep = (pts[:, 0] > 60) & (pts[:, 0] < w - 60) & (pts[:, 1] > 60) & (pts[:, 1] < h - 60)
    return img, pts[keep][:8].astype(np.float32)


def warp(img: np.ndarray, pts: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame t of a known motion (rotation 0.3 deg/frame about the centre plus a
    drift of (1.2, 0.6) px/frame) and the keypoints' true positions (N, 2)."""
    h, w = img.shape[:2]
    a = cv2.getRotationMatrix2D((w / 2, h / 2), 0.3 * t, 1.0)
    a[:, 2] += (1.2 * t, 0.6 * t)
    frame = cv2.warpAffine(img, a, (w, h), borderMode=cv2.BORDER_REFLECT)
    return frame, (pts @ a[:, :2].T + a[:, 2]).astype(np.float32)


def session(scene, **cfg) -> TrackingSession:
    img, pts = scene
    tpl = KeypointTemplate(img, pts, tuple(range(10, 18)), tuple(f"kp{i}" for i in range(8)))
    return TrackingSession(make_correspondence("cpu"), tpl, SessionConfig(**cfg))


def test_config_refuses_bad_values_naming_the_field() -> None:
    for kwargs, field in [({"min_point_confidence": 1.5}, "min_point_confidence"),
                          ({"lost_after_frames": 0}, "lost_after_frames"),
                          ({"frame_timeout_s": 0.0}, "frame_timeout_s"),
                          ({"template_size_mismatch": "stretch"}, "template_size_mismatch")]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            SessionConfig(**kwargs)


def test_latest_frame_slot_keeps_newest_and_counts_drops() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.take() is None
    for i in range(5):
        slot.put(i)
    assert slot.take() == 4 and slot.dropped == 4 and slot.take() is None
    slot.put(5)
    assert slot.take() == 5 and slot.dropped == 4

    # Producer and consumer threads: every item is either taken or counted.
    taken: list[int] = []
    done = threading.Event()

    def consume() -> None:
        while not done.is_set() or slot_b.received != len(taken) + slot_b.dropped:
            item = slot_b.take()
            if item is not None:
                taken.append(item)

    slot_b: LatestFrameSlot[int] = LatestFrameSlot()
    th = threading.Thread(target=consume)
    th.start()
    for i in range(20000):
        slot_b.put(i)
    done.set()
    th.join(timeout=10.0)
    assert not th.is_alive()
    assert len(taken) + slot_b.dropped == 20000 and taken == sorted(taken)


def test_latest_frame_slot_wait_take_wakes_on_put_and_on_close() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.wait_take(0.01) is None  # timeout, nothing there
    got: list[int | None] = []
    waiting = threading.Thread(target=lambda: got.append(slot.wait_take()))
    waiting.start()
    slot.put(7)
    waiting.join(timeout=5.0)
    assert not waiting.is_alive() and got == [7]

    # close() releases a worker blocked with no timeout, and later waits return at once.
    waiting = threading.Thread(target=lambda: got.append(slot.wait_take()))
    waiting.start()
    slot.close()
    waiting.join(timeout=5.0)
    assert not waiting.is_alive() and got == [7, None] and slot.closed
    slot.put(8)
    assert slot.wait_take() is None


def test_first_frame_transfers_then_tracks_ground_truth(scene) -> None:
    s = session(scene)
    img, pts = scene
    assert s.state == TrackerState.INITIALISING
    errors = []
    for t in range(12):
        frame, gt = warp(img, pts, t + 2)
        out = s.process(frame, stamp_s=0.05 * t)
        if t == 0:
            assert "transferred from the template" in out.message
        assert out.state == TrackerState.TRACKING, out.message
        assert out.image_size == (584, 388)
        errors.append(np.abs(out.points - gt).max())
    assert max(errors) < TOL_PX, errors
    assert out.confidence.min() >= 0.5 and out.visible.all()
    assert s.transfers == 1  # the first frame's only: the evaluation reports this count per episode


def test_lost_on_garbage_then_recovers(scene) -> None:
    img, pts = scene
    s = session(scene, lost_after_frames=2, lost_after_s=0.0, retransfer_every_n_frames=3)
    s.process(warp(img, pts, 1)[0], 0.0)
    rng = np.random.default_rng(7)
    states, messages = [], []
    for k in range(4):
        out = s.process(rng.integers(0, 255, img.shape, dtype=np.uint8), 0.05 * (k + 1))
        states.append(out.state)
        messages.append(out.message)
    assert TrackerState.LOST in states, messages
    first_lost = states.index(TrackerState.LOST)
    assert first_lost <= 2 and "tracking lost" in messages[first_lost]
    # The object is back: a transfer is retried at most every 3 frames.
    frame, gt = warp(img, pts, 4)
    for k in range(4):
        out = s.process(frame, 0.3 + 0.05 * k)
        if out.state == TrackerState.TRACKING:
            break
    assert out.state == TrackerState.TRACKING, out.message
    assert np.abs(out.points - gt).max() < TOL_PX


def test_low_confidence_keypoints_are_named_in_the_message(scene) -> None:
    img, pts = scene
    s = session(scene, min_confident_fraction=0.1)
    frame, _ = warp(img, pts, 1)
    s.process(frame, 0.0)
    frame, gt = warp(img, pts, 2)
    hidden = frame.copy()
    x, y = gt[0].round().astype(int)
    hidden[y - 25:y + 25, x - 25:x + 25] = 0  # occlude kp0 only
    out = s.process(hidden, 0.05)
    assert out.state == TrackerState.TRACKING
    assert (not out.visible[0]) or out.confidence[0] < 0.5
    assert "kp0" in out.message and "below confidence 0.5" in out.message
    assert len(out.points) == 8  # reported, not dropped


def test_reset_with_explicit_points(scene) -> None:
    img, pts = scene
    s = session(scene)
    frame, gt = warp(img, pts, 1)
    s.process(frame, 0.0)
    ok, msg = s.request_reset(gt[:3], [10, 11, 12])
    assert not ok and "must be exactly the model's ids" in msg
    outside = gt.copy()
    outside[2] = (700.0, 10.0)
    ok, msg = s.request_reset(outside, list(range(10, 18)))
    assert not ok and "outside the 584x388 frame" in msg
    # Given in reverse id order: the session reorders them by the model's ids.
    ok, msg = s.request_reset(gt[::-1], list(range(17, 9, -1)))
    assert ok, msg
    frame2, gt2 = warp(img, pts, 2)
    out = s.process(frame2, 0.05)
    assert out.state == TrackerState.TRACKING and "tracking the given keypoints" in out.message
    assert np.abs(out.points - gt2).max() < TOL_PX


def test_frames_stop_and_restart(scene) -> None:
    img, pts = scene
    s = session(scene, frame_timeout_s=0.5)
    assert s.check_stalled(10.0) is None  # no frame ever: nothing to report yet
    s.process(warp(img, pts, 1)[0], 100.0)
    assert s.check_stalled(0.2) is None
    out = s.check_stalled(0.8)
    assert out.state == TrackerState.LOST and "no camera frames for 0.8 s" in out.message
    assert s.check_stalled(5.0) is None  # reported once per stall
    frame, gt = warp(img, pts, 9)  # the scene moved meanwhile (8 frames of motion)
    out = s.process(frame, 105.0)
    assert out.state == TrackerState.TRACKING
    assert "frames resumed after 5.00 s" in out.message
    assert np.abs(out.points - gt).max() < TOL_PX


def test_a_pause_with_continuous_stamps_keeps_the_tracks(scene) -> None:
    """Frames stop for longer than frame_timeout_s (LOST reported once), then
    resume with the next stamp in sequence: the scene did not jump, so the
    tracks continue without a transfer (issue 17: each such pause in the
    simulated graph cost a transfer of seconds and stale holds)."""
    img, pts = scene
    s = session(scene, frame_timeout_s=0.5)
    for t in range(3):
        out = s.process(warp(img, pts, t)[0], 100.0 + 0.1 * t)
    assert out.state == TrackerState.TRACKING and s.transfers == 1
    out = s.check_stalled(1.3)
    assert out.state == TrackerState.LOST and "no camera frames for 1.3 s" in out.message
    frame, gt = warp(img, pts, 3)
    out = s.process(frame, 100.3)
    assert out.state == TrackerState.TRACKING, out.message
    assert "frames resumed after a 1.3 s pause with continuous stamps (+0.10 s): tracking continues" in out.message
    assert s.transfers == 1
    assert np.abs(out.points - gt).max() < TOL_PX


def test_stamp_jumps_and_resolution_changes_retransfer(scene) -> None:
    img, pts = scene
    s = session(scene, max_frame_gap_s=0.5)
    s.process(warp(img, pts, 1)[0], 10.0)
    # far beyond max_frame_gap_s plus any time the transfer of frame 1 took
    out = s.process(warp(img, pts, 2)[0], 40.0)
    assert "jumped by 30.00 s" in out.message and out.state == TrackerState.TRACKING
    out = s.process(warp(img, pts, 3)[0], 1.0)
    assert "went backwards by 39.00 s" in out.message
    frame, gt = warp(img, pts, 4)
    small = cv2.resize(frame, (292, 194), interpolation=cv2.INTER_AREA)
    out = s.process(small, 1.05)
    assert "frame size changed from 584x388 to 292x194" in out.message
    assert out.state == TrackerState.TRACKING and out.image_size == (292, 194)
    gt_small = (gt + 0.5) * 0.5 - 0.5
    assert np.abs(out.points - gt_small).max() < TOL_PX
    assert s.transfers == 4  # first frame, stamp jump, stamp backwards, new size


def test_template_size_mismatch_policies(scene) -> None:
    img, pts = scene
    frame, gt = warp(img, pts, 1)
    small = cv2.resize(frame, (292, 194), interpolation=cv2.INTER_AREA)
    refuse = session(scene, template_size_mismatch="refuse")
    out = refuse.process(small, 0.0)
    assert out.state == TrackerState.LOST
    assert "template is 584x388 but camera frames are 292x194" in out.message
    assert refuse.state == TrackerState.INITIALISING
    wide = np.zeros((194, 400, 3), np.uint8)
    out = session(scene).process(wide, 0.0)
    assert "aspect ratios differ" in out.message and out.state == TrackerState.LOST
    out = session(scene).process(small, 0.0)
    assert out.state == TrackerState.TRACKING, out.message
    assert np.abs(out.points - ((gt + 0.5) * 0.5 - 0.5)).max() < TOL_PX


def test_bad_frames_are_reported_without_losing_the_track(scene) -> None:
    img, pts = scene
    s = session(scene)
    s.process(warp(img, pts, 1)[0], 0.0)
    out = s.report_bad_frame("unsupported image encoding 'yuv422'")
    assert out.state == TrackerState.LOST and "frame skipped: unsupported" in out.message
    assert s.state == TrackerState.TRACKING
    out = s.process(np.zeros((4, 4, 3), np.uint8), 0.05)  # too small for h_C
    assert out.state == TrackerState.LOST and out.message.startswith("frame skipped")
    frame, gt = warp(img, pts, 2)
    out = s.process(frame, 0.1)
    assert out.state == TrackerState.TRACKING
    assert np.abs(out.points - gt).max() < TOL_PX


def test_slow_transfer_is_not_a_stamp_jump(scene, monkeypatch) -> None:
    """Frames dropped while a slow transfer ran (newest-frame policy) leave a
    stamp gap of about the transfer's duration: no re-transfer for that."""
    import atk_perception.tracking_session as ts

    clock = [0.0]
    monkeypatch.setattr(ts.time, "perf_counter", lambda: clock[0])
    img, pts = scene
    s = session(scene, max_frame_gap_s=0.5)
    real_transfer = s.h_c.transfer

    def slow_transfer(*args):
        clock[0] += 3.0   # the transfer took 3 s of wall time
        return real_transfer(*args)

    monkeypatch.setattr(s.h_c, "transfer", slow_transfer)
    s.process(warp(img, pts, 1)[0], 10.0)
    out = s.process(warp(img, pts, 2)[0], 13.2)   # 3.2 s later: 0.5 + 3.0 allowed
    assert "jumped" not in out.message and out.state == TrackerState.TRACKING
    out = s.process(warp(img, pts, 3)[0], 14.0)   # this frame took ~0 s: 0.8 s > 0.5
    assert "jumped by 0.80 s" in out.message


def test_support_points_are_a_second_chance_for_unconfident_keypoints(scene) -> None:
    """Keypoints placed confidently on their own are kept (one transfer). When
    some are not, a second transfer with the support points (the C
    candidates propagation transferred) runs and each keypoint keeps its more
    confident placement; only the N keypoints are tracked."""
    img, pts = scene
    hc = make_correspondence("cpu")
    seen = []
    real = hc.transfer
    fake_conf: dict[int, np.ndarray] = {}

    def spy(template_image, template_points, image):
        seen.append(np.asarray(template_points).copy())
        out, conf = real(template_image, template_points, image)
        return out, fake_conf.get(len(template_points), conf)

    hc.transfer = spy
    tpl = KeypointTemplate(img, pts[:3], (1, 2, 3), ("a", "b", "c"), support=pts[3:])
    frame, gt = warp(img, pts, 2)
    out = TrackingSession(hc, tpl, SessionConfig()).process(frame, stamp_s=0.0)
    assert out.state == TrackerState.TRACKING, out.message
    assert [len(p) for p in seen] == [3]                     # confident alone: no second transfer
    assert out.points.shape == (3, 2) and np.abs(out.points - gt[:3]).max() < TOL_PX

    seen.clear()
    fake_conf[3] = np.array([0.9, 0.1, 0.2], np.float32)     # two keypoints unsure on their own
    fake_conf[8] = np.array([0.3, 0.8, 0.1, 1, 1, 1, 1, 1], np.float32)
    out = TrackingSession(hc, tpl, SessionConfig()).process(frame, stamp_s=0.0)
    assert [len(p) for p in seen] == [3, 8]
    np.testing.assert_array_equal(seen[1][:3], pts[:3])
    np.testing.assert_allclose(out.confidence, [0.9, 0.8, 0.2])   # the better of the two, per keypoint
    assert out.points.shape == (3, 2) and np.abs(out.points - gt[:3]).max() < TOL_PX


def test_lost_needs_the_bad_streak_to_last_lost_after_s(scene) -> None:
    """Bad frames shorter than lost_after_s (the arm passing over the
    keypoints) keep TRACKING and the tracks; longer ones go LOST."""
    img, pts = scene
    rng = np.random.default_rng(0)
    s = session(scene, lost_after_frames=2, lost_after_s=0.5)
    assert s.process(warp(img, pts, 1)[0], stamp_s=0.0).state == TrackerState.TRACKING
    states = [s.process(rng.integers(0, 255, img.shape, dtype=np.uint8), stamp_s=0.125 * k).state
              for k in range(1, 6)]   # new noise at 0.125 .. 0.625 s
    assert states[:4] == [TrackerState.TRACKING] * 4, states   # up to 0.375 s after the first bad frame
    assert states[4] == TrackerState.LOST                       # 0.5 s after it
    with pytest.raises(ValueError, match="lost_after_s"):
        SessionConfig(lost_after_s=-1.0)


def test_points_predicted_from_the_robot_keep_tracking_alive(scene) -> None:
    """Hidden keypoints whose position the robot model predicts (confidence >=
    min_predicted_confidence, as RobotAwareTracker reports a carried object's
    points) count as confident: carrying an object is not a lost track. The
    same points hidden at a backend's usual confidence do go LOST."""
    from atk_perception.correspondence import TrackResult

    class Carried(type(make_correspondence("cpu"))):
        """The CPU backend with 5 of 8 points reported hidden at ``conf``."""

        conf = 0.8

        def update(self, image):
            r = super().update(image)
            vis = r.visible.copy()
            vis[:5] = False
            c = r.confidence.copy()
            c[:5] = self.conf
            return TrackResult(r.points, c, vis)

    img, pts = scene
    tpl = KeypointTemplate(img, pts, tuple(range(10, 18)), tuple(f"kp{i}" for i in range(8)))
    for conf, lost in ((0.8, False), (0.6, True)):
        h_c = Carried()
        h_c.conf = conf
        s = TrackingSession(h_c, tpl, SessionConfig(lost_after_frames=2, lost_after_s=0.2))
        states = [s.process(warp(img, pts, k)[0], stamp_s=0.1 * k).state for k in range(1, 7)]
        assert (TrackerState.LOST in states) == lost, (conf, states)
    with pytest.raises(ValueError, match="min_predicted_confidence"):
        SessionConfig(min_predicted_confidence=1.5)


def test_keypoints_the_robot_covers_are_no_lost_track(scene) -> None:
    """Keypoints h_C reports covered by the robot (robot-aware occlusion: held
    where last seen at a low confidence while the gripper reaches over them)
    never make a frame bad: a transfer cannot see under the gripper, and the
    re-transfer it triggered ended 10 of 40 ROS-graph episodes. The same points
    without the covered flag do go LOST, and so do uncovered keypoints that
    are lost while a few others are covered."""
    from atk_perception.correspondence import TrackResult

    class Covering(type(make_correspondence("cpu"))):
        """The CPU backend with points ``low`` at confidence 0.3, not visible; ``covered`` flagged."""

        low = slice(0, 5)
        covered: np.ndarray | None = None

        def update(self, image):
            r = super().update(image)
            vis, c = r.visible.copy(), r.confidence.copy()
            vis[self.low], c[self.low] = False, 0.3
            return TrackResult(r.points, c, vis, self.covered)

    img, pts = scene
    tpl = KeypointTemplate(img, pts, tuple(range(10, 18)), tuple(f"kp{i}" for i in range(8)))
    first5 = np.arange(8) < 5
    for low, covered, lost in ((slice(0, 5), first5, False),            # the arm over 5 of 8
                               (slice(0, 5), None, True),               # no robot model: lost
                               (slice(0, 7), np.arange(8) < 2, True)):  # 2 covered, 5 more lost
        h_c = Covering()
        h_c.low, h_c.covered = low, covered
        s = TrackingSession(h_c, tpl, SessionConfig(lost_after_frames=2, lost_after_s=0.2))
        outs = [s.process(warp(img, pts, k)[0], stamp_s=0.1 * k) for k in range(1, 7)]
        states = [o.state for o in outs]
        assert (TrackerState.LOST in states) == lost, (covered, states)
        assert s.transfers == 1 + lost
        if covered is not None and not lost:
            np.testing.assert_array_equal(outs[-1].covered, covered)   # reported, for the gate
    assert not outs[0].covered.any()    # a transfer's frame: nothing known to be covered


def test_a_new_scene_after_a_failed_transfer_is_transferred_onto_at_once(scene) -> None:
    """LOST after a failed transfer, the session retries only every N frames. A
    frame after a stamp jump is a new scene (the simulator's next episode, a
    restarted recording): it gets a transfer at once, not the countdown's
    'next attempt in k frames', which the simulator would take as the tracker
    giving up on the episode's first frame (issue 17: the first episode of
    every graph started its clock that way and held on stale keypoints)."""
    img, pts = scene
    s = session(scene, retransfer_every_n_frames=5)
    rng = np.random.default_rng(3)
    out = s.process(rng.integers(0, 255, img.shape, dtype=np.uint8), 0.0)   # nothing to transfer onto
    assert out.state == TrackerState.LOST and s.transfers == 1
    out = s.process(rng.integers(0, 255, img.shape, dtype=np.uint8), 0.1)
    assert "next attempt in" in out.message and s.transfers == 1      # the countdown, within a scene
    frame, gt = warp(img, pts, 2)
    out = s.process(frame, 10.1)                                      # the next episode, 10 s later
    assert s.transfers == 2, out.message
    assert "jumped by 10.00 s" in out.message and "transfer retried at once" in out.message
    assert out.state == TrackerState.TRACKING, out.message
    assert np.abs(out.points - gt).max() < TOL_PX
