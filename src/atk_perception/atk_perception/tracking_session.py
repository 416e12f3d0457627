"""The tracker node's state machine, ROS-free.

States (values equal atk_msgs/KeypointArray's STATE_* constants)::

    INITIALISING --first frame: transfer ok--> TRACKING
    INITIALISING/LOST --transfer finds too few keypoints--> LOST (retried)
    TRACKING --too few confident keypoints for `lost_after_frames` frames and `lost_after_s`--> LOST
              (keypoints the robot covers count as confident here: see SessionConfig.lost_after_s)
    TRACKING --no frame for `frame_timeout_s`--> LOST (re-transfer on return)
    any --reset requested / frame gap / resolution change--> transfer on next frame

A transfer maps the template's canonical keypoints onto the live frame with
h_C's ``transfer`` and then starts the online tracker (``reset``); every
later frame goes through ``update``. Low-confidence keypoints are kept and
reported (count and names in the message), never dropped.

:class:`LatestFrameSlot` is the newest-frame-only buffer between the image
callback and the worker, with the dropped-frame counter.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Generic, Sequence, TypeVar

import numpy as np

from atk_perception.correspondence import Correspondence, CorrespondenceError
from atk_perception.keypoint_template import KeypointTemplate
from atk_perception.tracker_state import TrackerState

T = TypeVar("T")

SIZE_MISMATCH_POLICIES = ("rescale", "refuse")
#: Smallest frame side the session accepts (the h_C backends' own minimum).
MIN_FRAME_SIZE = 16


@dataclass
class SessionConfig:
    """Thresholds of the tracking state machine (all operator-tunable)."""

    #: A keypoint counts as confident when visible and at/above this confidence.
    min_point_confidence: float = 0.5
    #: Fewer confident keypoints than this fraction makes a frame "bad".
    min_confident_fraction: float = 0.5
    #: A keypoint that is not visible counts as confident when its confidence
    #: is at least this: its position was predicted from the robot (carried by
    #: the gripper, atk_perception.robot_occlusion); h_C backends give hidden
    #: points less. Carrying an object for longer than lost_after_s must not
    #: read as a lost track.
    min_predicted_confidence: float = 0.75
    #: Consecutive bad frames before the state becomes LOST (1 = immediately) ...
    lost_after_frames: int = 3
    #: ... and for at least this long (source stamps, s). The robot's own arm
    #: covers keypoints for a second or two while it places an object; LOST
    #: throws the tracks away and transfers from the template, which no longer
    #: matches the scene then (object in the gripper, target under the arm),
    #: and the held arm kept covering the target: measured, 36 of 49
    #: evaluation episodes ended that way at 3 frames (0.3 s at 10 Hz).
    #: Where h_C knows what the robot covers (robot-aware occlusion,
    #: TrackResult.covered), covered keypoints never make a frame bad: a
    #: transfer cannot see under the gripper, and in the ROS graph the
    #: re-transfers it triggered (> 5 s on two cores) ended 10 of 40 episodes.
    lost_after_s: float = 2.0
    #: A transfer is accepted when at least this fraction of keypoints is confident.
    transfer_min_fraction: float = 0.5
    #: While LOST, try a new transfer every this many frames (transfer is costly).
    retransfer_every_n_frames: int = 5
    #: A jump between source stamps above this (or backwards) breaks frame-to-frame
    #: tracking: the keypoints are transferred again from the template.
    max_frame_gap_s: float = 1.0
    #: No frame for this long (host clock) reports LOST ("no camera frames").
    frame_timeout_s: float = 1.0
    #: Template of another size than the camera frames: "rescale" the template
    #: (same aspect ratio only) or "refuse" to track.
    template_size_mismatch: str = "rescale"
    #: Largest relative aspect-ratio difference that "rescale" accepts.
    max_aspect_difference: float = 0.02

    def __post_init__(self) -> None:
        for name in ("min_point_confidence", "min_confident_fraction", "transfer_min_fraction",
                     "min_predicted_confidence"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: must be within [0, 1], got {v!r}")
        for name in ("lost_after_frames", "retransfer_every_n_frames"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        if not (isinstance(self.lost_after_s, (int, float)) and 0 <= self.lost_after_s < 60):
            raise ValueError(f"lost_after_s: must be within [0, 60) seconds, got {self.lost_after_s!r}")
        for name in ("max_frame_gap_s", "frame_timeout_s"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"{name}: must be > 0 seconds, got {v!r}")
        if self.template_size_mismatch not in SIZE_MISMATCH_POLICIES:
            raise ValueError(f"template_size_mismatch: {self.template_size_mismatch!r} is not "
                             f"one of {', '.join(SIZE_MISMATCH_POLICIES)}")
        if not 0.0 <= self.max_aspect_difference < 1.0:
            raise ValueError(f"max_aspect_difference: must be within [0, 1), got "
                             f"{self.max_aspect_difference!r}")


@dataclass(frozen=True)
class SessionOutput:
    """What the tracker reports for one frame.

    points: (N, 2) float32 pixels; confidence: (N,) float32 in [0, 1];
    visible: (N,) bool; image_size: (width, height) of the frame;
    covered: (N,) bool, the robot covers the point (h_C's TrackResult.covered;
    all False without a robot model or on a transfer's frame).
    """

    state: TrackerState
    points: np.ndarray
    confidence: np.ndarray
    visible: np.ndarray
    image_size: tuple[int, int]
    message: str
    processing_time_s: float
    covered: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.covered is None:
            object.__setattr__(self, "covered", np.zeros(len(self.confidence), bool))


class LatestFrameSlot(Generic[T]):
    """Holds only the newest item; counts items overwritten before being taken.

    ``put`` is called from the subscription callback, ``take`` (or the
    blocking ``wait_take``) from the worker; one condition variable keeps the
    counter exact across threads and wakes a waiting worker. ``close`` wakes
    it for good (shutdown).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._dropped = 0
        self._received = 0
        self._closed = False

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self._dropped += 1
            self._item = item
            self._received += 1
            self._cond.notify()

    def take(self) -> T | None:
        with self._cond:
            item, self._item = self._item, None
            return item

    def wait_take(self, timeout_s: float | None = None) -> T | None:
        """The newest item, waiting up to ``timeout_s`` (None: until one comes
        or the slot is closed); None on timeout or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout_s)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wakes every waiter; ``wait_take`` returns None from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def dropped(self) -> int:
        with self._cond:
            return self._dropped

    @property
    def received(self) -> int:
        with self._cond:
            return self._received


class TrackingSession:
    """Transfer + online tracking with the states described in the module doc."""

    def __init__(self, correspondence: Correspondence, template: KeypointTemplate,
                 config: SessionConfig | None = None) -> None:
        self.h_c = correspondence
        self.template = template
        self.config = config or SessionConfig()
        n = len(template)
        self.state = TrackerState.INITIALISING
        self._points = template.points.copy()
        self._conf = np.zeros(n, np.float32)
        self._visible = np.zeros(n, bool)
        self._covered = np.zeros(n, bool)
        self._image_size: tuple[int, int] | None = None
        self._needs_transfer = True
        #: Transfers from the template attempted so far (each h_C transfer
        #: onto a frame; the support-point retry of the same frame included
        #: in the same one): a count the evaluation reports per episode.
        self.transfers = 0
        self._reset_points: np.ndarray | None = None
        self._pending_note = ""
        self._bad_streak = 0
        self._bad_since = 0.0    # source stamp of the first bad frame of the streak
        self._frames_until_retry = 0
        self._last_stamp: float | None = None
        self._state_before_stall = TrackerState.INITIALISING
        self._stall_idle_s = 0.0
        self._last_processing_s = 0.0  # wall time spent on the previous frame
        self._stalled = False
        self._scaled_template: KeypointTemplate | None = None
        # request_reset may be called from another thread than process (the
        # tracker node's service vs its worker): it only files the request
        # under this lock, and process applies it before its next frame, so
        # neither waits for the other's work (a transfer takes seconds).
        self._request_lock = threading.Lock()
        self._request: tuple[np.ndarray | None, str] | None = None

    # ------------------------------------------------------------------ API
    @property
    def ids(self) -> tuple[int, ...]:
        return self.template.ids

    @property
    def names(self) -> tuple[str, ...]:
        return self.template.names

    def request_reset(self, points: np.ndarray | None = None,
                      ids: Sequence[int] | None = None) -> tuple[bool, str]:
        """Re-initialise on the next frame: transfer from the template, or
        start tracking ``points`` (N, 2) pixels given for ``ids``.

        Returns (accepted, message). Explicit points must name every template
        id exactly once (any order); they are checked against the frame size.
        Thread-safe against :meth:`process` (the request is applied before
        the next frame is processed).
        """
        if points is None or len(points) == 0:
            with self._request_lock:
                self._request = (None, "reset requested: keypoints transferred from the template")
            return True, "reset accepted: the template keypoints will be transferred on the next frame"
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] != 2 or not np.all(np.isfinite(pts)):
            return False, f"reset refused: keypoints must be finite (N, 2) pixels, got shape {pts.shape}"
        ids = list(range(len(pts))) if ids is None else [int(i) for i in ids]
        if sorted(ids) != sorted(self.template.ids) or len(ids) != len(pts):
            return False, (f"reset refused: keypoint ids {ids} must be exactly the model's ids "
                           f"{list(self.template.ids)}")
        order = [ids.index(i) for i in self.template.ids]
        pts = pts[order]
        size = self._image_size
        if size is not None:
            err = self._outside(pts, size)
            if err:
                return False, f"reset refused: {err}"
        with self._request_lock:
            self._request = (pts, "reset requested: tracking the given keypoints")
        return True, "reset accepted: tracking the given keypoints from the next frame"

    def _apply_request(self) -> None:
        with self._request_lock:
            request, self._request = self._request, None
        if request is None:
            return
        self._reset_points, self._pending_note = request
        self._needs_transfer = True
        self._frames_until_retry = 0

    def process(self, image: np.ndarray, stamp_s: float) -> SessionOutput:
        """Handle one frame: ``image`` (H, W, 3) uint8 RGB taken at ``stamp_s``."""
        t0 = time.perf_counter()
        self._apply_request()
        problem = self._frame_problem(image)
        if problem:  # before any state change: a bad frame must not end a good track
            return self.report_bad_frame(problem)
        notes: list[str] = []
        if self._pending_note:
            notes.append(self._pending_note)
            self._pending_note = ""
        size = (int(image.shape[1]), int(image.shape[0]))
        if self._stalled:
            self._stalled = False
            gap, continuous = self._stamp_gap(stamp_s)
            if self._state_before_stall == TrackerState.TRACKING and not self._needs_transfer and continuous:
                # The stream paused but its stamps did not jump (a simulator
                # that paused with its clock, a camera driver hiccup): the scene
                # is the one the tracks are on, so they continue.
                self.state = TrackerState.TRACKING
                notes.append(f"frames resumed after a {self._stall_idle_s:.1f} s pause with continuous "
                             f"stamps (+{gap:.2f} s): tracking continues")
            else:
                if self._last_stamp is not None:
                    notes.append(f"frames resumed after {gap:.2f} s: keypoints transferred again")
                self._needs_transfer = True
                self._frames_until_retry = 0
        elif self._last_stamp is not None and (not self._needs_transfer or self._frames_until_retry > 0):
            gap, continuous = self._stamp_gap(stamp_s)
            if not continuous:
                what = ("went backwards by %.2f s (recording restarted?)" % -gap if gap < 0
                        else "jumped by %.2f s (> max_frame_gap_s %.2f + %.2f s processing)"
                        % (gap, self.config.max_frame_gap_s, self._last_processing_s))
                # While LOST and waiting to retry, a break in the stream is a new
                # scene (the next episode): transfer onto it now, not after the
                # countdown, whose "next attempt in k frames" would read as a
                # failed transfer onto that scene's first frame.
                notes.append(f"source stamp {what}: "
                             + ("transfer retried at once" if self._needs_transfer
                                else "keypoints transferred again"))
                self._needs_transfer = True
                self._frames_until_retry = 0
        if self._image_size is not None and size != self._image_size:
            notes.append(f"frame size changed from {self._image_size[0]}x{self._image_size[1]} "
                         f"to {size[0]}x{size[1]}: keypoints transferred again")
            self._needs_transfer = True
            self._frames_until_retry = 0
            if self._reset_points is not None and self._outside(self._reset_points, size):
                self._reset_points = None
        self._last_stamp = stamp_s
        self._image_size = size
        try:
            if self._needs_transfer:
                self._initialise(image, notes)
            else:
                self._track(image, notes)
        except CorrespondenceError as exc:
            notes.append(f"frame skipped: {exc}")
            return self._output(t0, notes, reported_state=TrackerState.LOST)
        finally:
            self._last_processing_s = time.perf_counter() - t0
        return self._output(t0, notes)

    def _stamp_gap(self, stamp_s: float) -> tuple[float, bool]:
        """(seconds since the last frame's stamp, whether ``stamp_s`` continues the stream).

        Frames that arrived while the previous one was processed were dropped
        on purpose (newest-frame policy): a slow transfer (seconds on a loaded
        CPU) must not read as a break in the stream, or every transfer would
        trigger the next one; so the last frame's processing time is allowed
        on top of ``max_frame_gap_s``. No earlier frame: an infinite gap.
        """
        gap = math.inf if self._last_stamp is None else stamp_s - self._last_stamp
        return gap, 0 <= gap <= self.config.max_frame_gap_s + self._last_processing_s

    def report_bad_frame(self, reason: str) -> SessionOutput:
        """An unusable frame (conversion failed): reported as LOST for this frame
        only, since no keypoints were computed for it; tracking resumes with the
        next good frame."""
        return self._output(time.perf_counter(), [f"frame skipped: {reason}"],
                            reported_state=TrackerState.LOST)

    def check_stalled(self, seconds_since_last_frame: float) -> SessionOutput | None:
        """Call periodically; returns one LOST output when frames have stopped
        for longer than ``frame_timeout_s`` (None otherwise, and while the
        stall lasts after it was reported once)."""
        if (self._stalled or self._image_size is None
                or seconds_since_last_frame <= self.config.frame_timeout_s):
            return None
        self._stalled = True
        self._state_before_stall, self._stall_idle_s = self.state, float(seconds_since_last_frame)
        self.state = TrackerState.LOST
        return self._output(time.perf_counter(), [
            f"no camera frames for {seconds_since_last_frame:.1f} s "
            f"(frame_timeout_s {self.config.frame_timeout_s:g}): positions are from the last "
            "frame; they are transferred again if the stream resumes with a stamp jump"])

    def transfer(self, image: np.ndarray, template_image: np.ndarray | None = None,
                 template_points: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One-off transfer (the TransferKeypoints service): template keypoints
        (N, 2) on ``template_image`` (defaults: the loaded template) onto
        ``image``. Returns (points (N, 2), confidence (N,)). Does not change
        the tracking state."""
        if template_image is None:
            tpl = self._template_for((int(image.shape[1]), int(image.shape[0])))
            template_image = tpl.image
            if template_points is None:
                template_points = tpl.points
        elif template_points is None:
            raise CorrespondenceError("template_keypoints are required with a template_image")
        pts, conf = self.h_c.transfer(template_image, np.asarray(template_points, np.float32), image)
        return np.asarray(pts, np.float32), np.asarray(conf, np.float32)

    # ------------------------------------------------------------ internals
    @staticmethod
    def _frame_problem(image: np.ndarray) -> str:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3:
            return (f"expected an (H, W, 3) uint8 RGB frame, got "
                    f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
        if image.shape[0] < MIN_FRAME_SIZE or image.shape[1] < MIN_FRAME_SIZE:
            return (f"frame of {image.shape[1]}x{image.shape[0]} pixels is empty or too small "
                    f"to track in (need at least {MIN_FRAME_SIZE}x{MIN_FRAME_SIZE})")
        return ""

    def _template_for(self, size: tuple[int, int]) -> KeypointTemplate:
        tpl = self.template
        if tpl.size == size:
            return tpl
        tw, th = tpl.size
        w, h = size
        advice = ("record the template at the camera's resolution, or set the camera "
                  f"resolution to {tw}x{th}")
        if self.config.template_size_mismatch == "refuse":
            raise CorrespondenceError(
                f"template is {tw}x{th} but camera frames are {w}x{h} and "
                f"template_size_mismatch is 'refuse': {advice}")
        aspect_diff = abs((tw / th) / (w / h) - 1.0)
        if aspect_diff > self.config.max_aspect_difference:
            raise CorrespondenceError(
                f"template is {tw}x{th} but camera frames are {w}x{h}: aspect ratios differ "
                f"by {aspect_diff:.1%}, so the template cannot be rescaled: {advice}")
        if self._scaled_template is None or self._scaled_template.size != size:
            self._scaled_template = tpl.resized(w, h)
        return self._scaled_template

    @staticmethod
    def _outside(pts: np.ndarray, size: tuple[int, int]) -> str:
        w, h = size
        bad = (pts[:, 0] < 0) | (pts[:, 0] > w - 1) | (pts[:, 1] < 0) | (pts[:, 1] > h - 1)
        if not np.any(bad):
            return ""
        k = int(np.flatnonzero(bad)[0])
        return (f"{int(bad.sum())} keypoint(s) outside the {w}x{h} frame, e.g. "
                f"({pts[k, 0]:.1f}, {pts[k, 1]:.1f})")

    def _confident(self, conf: np.ndarray, visible: np.ndarray) -> np.ndarray:
        c = self.config
        return (conf >= c.min_point_confidence) & (visible | (conf >= c.min_predicted_confidence))

    def _initialise(self, image: np.ndarray, notes: list[str]) -> None:
        cfg = self.config
        self._covered = np.zeros(len(self._points), bool)   # nothing is known to be covered on a transfer
        if self._reset_points is not None:
            err = self._outside(self._reset_points, self._image_size)
            if err:
                self._reset_points = None
                raise CorrespondenceError(f"reset keypoints refused: {err}")
            self.h_c.reset(image, self._reset_points)
            self._points = self._reset_points.copy()
            self._conf = np.ones(len(self._points), np.float32)
            self._visible = np.ones(len(self._points), bool)
            self._reset_points = None
            self._start_tracking()
            return
        if self._frames_until_retry > 0:
            self._frames_until_retry -= 1
            notes.append(f"transfer failed; next attempt in {self._frames_until_retry + 1} frame(s)")
            return
        tpl = self._template_for(self._image_size)
        self.transfers += 1
        pts, conf = self.h_c.transfer(tpl.image, tpl.points, image)
        pts = np.asarray(pts, np.float32)
        conf = np.asarray(conf, np.float32)
        if tpl.support is not None and np.any(conf < cfg.min_point_confidence):
            # Again with the support points (the model's other candidates), so
            # that each object is seen through several points; each keypoint
            # keeps the more confident of its two placements (the paper's
            # "highest-confidence matches"). Not always: support points on the
            # background around a small object join its cluster, and under a
            # new background they spoil a search its keypoints alone win.
            n_kp = len(tpl.points)
            pts2, conf2 = self.h_c.transfer(tpl.image, tpl.transfer_points(), image)
            pts2 = np.asarray(pts2, np.float32)[:n_kp]
            conf2 = np.asarray(conf2, np.float32)[:n_kp]
            better = conf2 > conf
            pts[better], conf[better] = pts2[better], conf2[better]
        w, h = self._image_size
        pts_in = np.clip(pts, 0, [w - 1, h - 1]).astype(np.float32)
        confident = conf >= cfg.min_point_confidence
        n_ok, n = int(confident.sum()), len(conf)
        self._points, self._conf, self._visible = pts_in, conf, confident
        if n_ok < cfg.transfer_min_fraction * n or n_ok == 0:
            self.state = TrackerState.LOST
            self._frames_until_retry = cfg.retransfer_every_n_frames - 1
            notes.append(f"transfer found only {n_ok} of {n} keypoints with confidence >= "
                         f"{cfg.min_point_confidence:g} (need {cfg.transfer_min_fraction:.0%}); "
                         "is the object in view? retrying")
            return
        self.h_c.reset(image, pts_in)
        self._start_tracking()
        notes.append(f"keypoints transferred from the template ({n_ok} of {n} confident)")

    def _start_tracking(self) -> None:
        self.state = TrackerState.TRACKING
        self._needs_transfer = False
        self._bad_streak = 0
        self._frames_until_retry = 0

    def _track(self, image: np.ndarray, notes: list[str]) -> None:
        cfg = self.config
        res = self.h_c.update(image)
        self._points = np.asarray(res.points, np.float32)
        self._conf = np.asarray(res.confidence, np.float32)
        self._visible = np.asarray(res.visible, bool)
        self._covered = (np.zeros(len(self._conf), bool) if res.covered is None
                         else np.asarray(res.covered, bool).reshape(len(self._conf)))
        confident = self._confident(self._conf, self._visible)
        n_ok = int(confident.sum())
        # A keypoint the robot covers is no evidence of a lost track (see lost_after_s).
        if int((confident | self._covered).sum()) < cfg.min_confident_fraction * len(self._conf):
            if self._bad_streak == 0:
                self._bad_since = self._last_stamp
            self._bad_streak += 1
            if (self._bad_streak >= cfg.lost_after_frames
                    and self._last_stamp - self._bad_since >= cfg.lost_after_s):
                self.state = TrackerState.LOST
                self._needs_transfer = True
                self._frames_until_retry = 0
                notes.append(f"tracking lost: only {n_ok} of {len(self._conf)} keypoints confident "
                             f"for {self._bad_streak} frames ({self._last_stamp - self._bad_since:.2f} s); "
                             "transferring again")
        else:
            self._bad_streak = 0

    def _output(self, t0: float, notes: list[str],
                reported_state: TrackerState | None = None) -> SessionOutput:
        low = ~self._confident(self._conf, self._visible)
        if self.state == TrackerState.TRACKING and np.any(low):
            names = [self.template.names[i] for i in np.flatnonzero(low)]
            notes.append(f"{len(names)} of {len(low)} keypoints below confidence "
                         f"{self.config.min_point_confidence:g} or not visible: {', '.join(names)}")
        if self.state == TrackerState.INITIALISING and not notes:
            notes.append("waiting for the first frame to transfer the keypoints")
        size = self._image_size or self.template.size
        return SessionOutput(
            state=reported_state if reported_state is not None else self.state,
            points=self._points.copy(), confidence=self._conf.copy(),
            visible=self._visible.copy(), image_size=size, message="; ".join(notes),
            processing_time_s=time.perf_counter() - t0, covered=self._covered.copy())
