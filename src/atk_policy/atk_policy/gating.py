"""Input gate of the policy node: may the policy act on the newest input?

ROS-free. The policy node converts the newest ``KeypointArray`` and the
newest ``JointState`` into :class:`KeypointInput` / a joint-state stamp,
calls :func:`evaluate_gate` once per control step and acts only when the
decision is :attr:`GateState.RUNNING`. Every other state means *hold*: publish
nothing that moves the arm, and report the decision's ``reason``.

The checks, in order (the first that fails decides):

1. a fault (bad model, inference error) reported by the caller -> FAULT;
2. no keypoints yet, or their source stamp older than
   ``keypoint_timeout_s`` (or further in the future than that: two clocks
   disagree) -> HOLD_STALE;
3. no joint state yet, or older than ``joint_state_timeout_s`` -> HOLD_STALE;
4. tracker state not TRACKING -> HOLD_NOT_TRACKING;
5. keypoint ids (order included) differ from the model's, or the image size
   differs from the one the model was trained on, or is not reported (0x0)
   -> FAULT (retrying cannot fix a wrong model/tracker pairing: an operator
   must);
6. invalid keypoint values: a position that is not finite or lies outside
   the image by more than ``image_margin_fraction`` of its size (the tracker
   clips its points to the image, so such a point is a tracker defect), or a
   confidence that is not a number in [0, 1] -> FAULT. Such values never
   reach the network: a point at (1e6, 1e6) made it command joint targets
   16,000 rad away (issue 15). Re-checked every step; the policy resumes when
   the values are valid again;
7. more than ``max_low_confidence`` keypoints below
   ``confidence_threshold`` (or invisible) -> HOLD_LOW_CONFIDENCE; a
   keypoint the tracker reports covered by the robot's own arm is not low
   (``GateConfig.hold_on_robot_covered``).

Times are plain float seconds on one clock (the node's ROS clock, which
follows ``/clock`` under ``use_sim_time``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Optional, Sequence

import numpy as np

from atk_perception.tracker_state import TrackerState

__all__ = ["GateConfig", "GateDecision", "GateState", "InputGate", "KeypointInput", "TrackerState",
           "evaluate_gate", "invalid_keypoint_reason", "low_confidence_mask"]


class GateState(IntEnum):
    """Same values as the ``atk_msgs/PolicyStatus`` STATE_* constants."""

    RUNNING = 0
    HOLD_STALE = 1
    HOLD_NOT_TRACKING = 2
    HOLD_LOW_CONFIDENCE = 3
    FAULT = 4


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the input gate (all of them parameters of the policy node).

    keypoint_timeout_s: the newest keypoint array may be at most this old
        (now - source image stamp), camera exposure to policy included.
    joint_state_timeout_s: the newest joint state may be at most this old.
    confidence_threshold: a keypoint with confidence below this is "low".
    max_low_confidence: the policy still acts with up to this many low
        keypoints ...
    max_low_confidence_fraction: ... or up to this fraction of them (a
        64-keypoint policy with 3 low ones has 61 good ones; a count alone
        held the FullSet baseline in every evaluation episode; 0.5, a
        majority, is where the tracker's min_confident_fraction calls a frame
        bad). More than both and it holds ...
    low_confidence_grace_s: ... once they have been too many for this long
        (s; applied by :class:`InputGate`, the policy node's gate). The
        robot's own arm covers keypoints for a moment while it grasps or
        places; holding then froze the arm in the covering pose, so the
        keypoints never came back (the deadlock of 36 of 49 evaluation
        episodes before this grace existed). 0: hold at once.
    predicted_min_confidence: a keypoint the camera does not see (visible
        False) is not low when its confidence is at least this: the tracker
        predicted it from the robot (a point on the object the gripper
        carries, atk_perception.robot_occlusion, confidence 0.8). The h_C
        backends give hidden points less (CPU: 0, CoTracker: at most its
        0.6 visibility threshold). Above 1: every hidden keypoint is low.
    hold_on_robot_covered: False (default): a keypoint the tracker reports
        covered by the robot itself (robot_covered, robot-aware occlusion:
        its position is predicted from the robot model, held where it was
        last seen, moved with its object or carried) never counts as low.
        The robot covers keypoints while it reaches over them; a hold then
        froze the arm in the covering pose, so they never came back
        (measured in the ROS graph: 10 of 40 sushi episodes ended in such a
        hold and the re-transfer that followed). True: they count as low
        like any other hidden keypoint.
    image_margin_fraction: a keypoint may lie outside the image by at most
        this fraction of the image's width (x) or height (y) before the array
        counts as invalid input; the tracker clips what it transfers to the
        image and optical flow drifts a few pixels past its edge, so half an
        image is far beyond anything a working tracker reports.
    """

    keypoint_timeout_s: float = 0.25
    joint_state_timeout_s: float = 0.25
    confidence_threshold: float = 0.5
    max_low_confidence: int = 2
    max_low_confidence_fraction: float = 0.5
    low_confidence_grace_s: float = 2.0
    predicted_min_confidence: float = 0.75
    image_margin_fraction: float = 0.5
    hold_on_robot_covered: bool = False

    def __post_init__(self) -> None:
        for name in ("keypoint_timeout_s", "joint_state_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"GateConfig.{name} must be a positive number of seconds, got {value!r}")
        c = self.confidence_threshold
        if not (isinstance(c, (int, float)) and 0.0 <= c <= 1.0):
            raise ValueError(f"GateConfig.confidence_threshold must be in [0, 1], got {c!r}")
        m = self.max_low_confidence
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"GateConfig.max_low_confidence must be an integer >= 0, got {m!r}")
        f = self.max_low_confidence_fraction
        if not (isinstance(f, (int, float)) and 0.0 <= f <= 1.0):
            raise ValueError(f"GateConfig.max_low_confidence_fraction must be in [0, 1], got {f!r}")
        g = self.low_confidence_grace_s
        if not (isinstance(g, (int, float)) and math.isfinite(g) and g >= 0):
            raise ValueError(f"GateConfig.low_confidence_grace_s must be >= 0 seconds, got {g!r}")
        p = self.predicted_min_confidence
        if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= self.confidence_threshold):
            raise ValueError(f"GateConfig.predicted_min_confidence must be >= confidence_threshold "
                             f"({self.confidence_threshold}), got {p!r}")
        mf = self.image_margin_fraction
        if not (isinstance(mf, (int, float)) and math.isfinite(mf) and 0.0 <= mf <= 10.0):
            raise ValueError(f"GateConfig.image_margin_fraction must be in [0, 10], got {mf!r}")


@dataclass(frozen=True)
class KeypointInput:
    """The newest keypoint array, converted from ``atk_msgs/KeypointArray``.

    ids: (N,) keypoint ids in the order they were published.
    positions: (N, 2) pixels (x, y).
    confidence: (N,) in [0, 1].
    visible: (N,) bool.
    robot_covered: (N,) bool, the robot covers the point (None: not reported).
    """

    stamp_s: float
    tracker_state: int
    ids: np.ndarray
    positions: np.ndarray
    confidence: np.ndarray
    visible: np.ndarray
    image_size: tuple[int, int] = (0, 0)  # (width, height); (0, 0) = not reported
    tracker_message: str = ""
    robot_covered: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if np.shape(self.positions) != (n, 2):
            raise ValueError(f"KeypointInput.positions must have shape ({n}, 2), got {np.shape(self.positions)}")
        for name in ("confidence", "visible", "robot_covered"):
            if getattr(self, name) is not None and np.shape(getattr(self, name)) != (n,):
                raise ValueError(f"KeypointInput.{name} must have shape ({n},), got {np.shape(getattr(self, name))}")


@dataclass(frozen=True)
class GateDecision:
    state: GateState
    reason: str
    input_age_s: float  # now - keypoints' source stamp; -1.0 when none received
    low_confidence_count: int = 0
    low_confidence_ids: tuple[int, ...] = field(default=())

    @property
    def running(self) -> bool:
        return self.state == GateState.RUNNING


def invalid_keypoint_reason(keypoints: KeypointInput, image_size: Optional[tuple[int, int]],
                            margin_fraction: float) -> str:
    """Why the keypoint values cannot be fed to the policy, or "" when they can.

    Invalid: a non-finite position; a position outside the image (width,
    height) by more than ``margin_fraction`` of its size (not checked when
    ``image_size`` is None or 0x0); a confidence that is not finite or lies
    outside [0, 1].
    """
    ids = np.asarray(keypoints.ids)
    pos = np.asarray(keypoints.positions, dtype=np.float64).reshape(-1, 2)
    conf = np.asarray(keypoints.confidence, dtype=np.float64)
    bad_pos = ~np.all(np.isfinite(pos), axis=1)
    if np.any(bad_pos):
        k = int(np.flatnonzero(bad_pos)[0])
        return (f"invalid keypoint input: {int(bad_pos.sum())} position(s) not finite, e.g. id {int(ids[k])} at "
                f"{pos[k].tolist()}")
    bad_conf = ~np.isfinite(conf) | (conf < 0.0) | (conf > 1.0)
    if np.any(bad_conf):
        k = int(np.flatnonzero(bad_conf)[0])
        return (f"invalid keypoint input: {int(bad_conf.sum())} confidence(s) outside [0, 1], e.g. id "
                f"{int(ids[k])} with {conf[k]!r}")
    if image_size is not None and tuple(image_size) != (0, 0):
        w, h = float(image_size[0]), float(image_size[1])
        mx, my = margin_fraction * w, margin_fraction * h
        out = (pos[:, 0] < -mx) | (pos[:, 0] > w + mx) | (pos[:, 1] < -my) | (pos[:, 1] > h + my)
        if np.any(out):
            k = int(np.flatnonzero(out)[0])
            return (f"invalid keypoint input: {int(out.sum())} keypoint(s) outside the {w:.0f}x{h:.0f} image by "
                    f"more than {margin_fraction:g} of its size, e.g. id {int(ids[k])} at "
                    f"({pos[k, 0]:.1f}, {pos[k, 1]:.1f}): is the tracker working in another image size?")
    return ""


def low_confidence_mask(keypoints: KeypointInput, threshold: float,
                        predicted_threshold: float = math.inf, covered_ok: bool = False) -> np.ndarray:
    """(N,) bool: below ``threshold``, not visible (unless predicted: confidence at
    least ``predicted_threshold``, see GateConfig), or with a non-finite value;
    ``covered_ok``: a finite keypoint the robot covers (``robot_covered``) is never low."""
    conf = np.asarray(keypoints.confidence, dtype=np.float64)
    pos = np.asarray(keypoints.positions, dtype=np.float64)
    finite = np.isfinite(conf) & np.all(np.isfinite(pos), axis=1)
    c = np.nan_to_num(conf, nan=-1.0)
    hidden = ~np.asarray(keypoints.visible, dtype=bool) & (c < predicted_threshold)
    low = (c < threshold) | hidden
    if covered_ok and keypoints.robot_covered is not None:
        low &= ~np.asarray(keypoints.robot_covered, dtype=bool)
    return ~finite | low


def _state_name(value: int) -> str:
    try:
        return TrackerState(value).name
    except ValueError:
        return f"unknown state {value}"


def evaluate_gate(config: GateConfig, now_s: float, keypoints: Optional[KeypointInput],
                  joint_state_stamp_s: Optional[float],
                  expected_ids: Optional[Sequence[int]] = None,
                  expected_image_size: Optional[tuple[int, int]] = None,
                  fault: Optional[str] = None) -> GateDecision:
    """Decide whether the policy may act now (see the module docstring for the order).

    expected_ids: (N,) the model's keypoint ids, in the model's order; None
        skips the check.
    expected_image_size: (width, height) the model's pixel frame; None or a
        keypoint array without a size skips the check.
    fault: a reason why the policy cannot act at all (e.g. the model failed
        to load); makes the decision FAULT whatever the input.
    """
    age = -1.0 if keypoints is None else now_s - keypoints.stamp_s
    if fault:
        return GateDecision(GateState.FAULT, fault, age)
    if keypoints is None:
        return GateDecision(GateState.HOLD_STALE, "no keypoints received yet (is the tracker running and "
                            "publishing 'keypoints'?)", age)
    if age > config.keypoint_timeout_s:
        return GateDecision(GateState.HOLD_STALE, f"keypoints are {age:.3f} s old (timeout "
                            f"{config.keypoint_timeout_s:.3f} s): tracker or camera too slow or stopped", age)
    if age < -config.keypoint_timeout_s:
        return GateDecision(GateState.HOLD_STALE, f"keypoint stamp is {-age:.3f} s in the future: the clocks "
                            "of camera/tracker and policy disagree (use_sim_time set on all nodes?)", age)
    if joint_state_stamp_s is None:
        return GateDecision(GateState.HOLD_STALE, "no joint state received yet (is the driver or simulator "
                            "publishing 'joint_states'?)", age)
    js_age = now_s - joint_state_stamp_s
    if abs(js_age) > config.joint_state_timeout_s:
        return GateDecision(GateState.HOLD_STALE, f"joint state is {js_age:.3f} s old (timeout "
                            f"{config.joint_state_timeout_s:.3f} s): driver or simulator stopped?", age)
    if keypoints.tracker_state != TrackerState.TRACKING:
        detail = f": {keypoints.tracker_message}" if keypoints.tracker_message else ""
        return GateDecision(GateState.HOLD_NOT_TRACKING,
                            f"tracker state is {_state_name(keypoints.tracker_state)}, not TRACKING{detail}", age)
    if expected_ids is not None:
        got = [int(i) for i in keypoints.ids]
        want = [int(i) for i in expected_ids]
        if got != want:
            if sorted(got) == sorted(want):
                why = "same ids in a different order"
            else:
                missing = sorted(set(want) - set(got))
                extra = sorted(set(got) - set(want))
                why = f"missing {missing}, unexpected {extra}"
            return GateDecision(GateState.FAULT, f"tracker keypoint ids {got} do not match the model's {want} "
                                f"({why}): the tracker and the policy must load the same model", age)
    if expected_image_size is not None:
        ew, eh = (int(v) for v in expected_image_size)
        w, h = (int(v) for v in keypoints.image_size)
        if (w, h) == (0, 0):
            # An unreported size used to skip this check (issue 15): the
            # pixels could then refer to any image.
            return GateDecision(GateState.FAULT, "the keypoint array reports no image size (0x0), so its pixels "
                                f"cannot be checked against the model's {ew}x{eh} frame: the tracker must fill "
                                "image_width and image_height", age)
        if (w, h) != (ew, eh):
            return GateDecision(GateState.FAULT, f"keypoints refer to a {w}x{h} image but the model was trained "
                                f"on {ew}x{eh}: set the camera resolution to {ew}x{eh} (deploy launch argument "
                                f"sim_width:={ew} sim_height:={eh} in simulation, or leave them at auto)", age)
    invalid = invalid_keypoint_reason(keypoints, tuple(keypoints.image_size), config.image_margin_fraction)
    if invalid:
        return GateDecision(GateState.FAULT, invalid, age)
    low = low_confidence_mask(keypoints, config.confidence_threshold, config.predicted_min_confidence,
                              covered_ok=not config.hold_on_robot_covered)
    n_low = int(low.sum())
    low_ids = tuple(int(i) for i in np.asarray(keypoints.ids)[low])
    allowed = max(config.max_low_confidence, int(math.floor(config.max_low_confidence_fraction * len(low) + 1e-9)))
    if n_low > allowed:
        return GateDecision(GateState.HOLD_LOW_CONFIDENCE,
                            f"{n_low} of {len(low)} keypoints below confidence {config.confidence_threshold:.2f} "
                            f"or not visible (at most {allowed} allowed): ids {list(low_ids)}",
                            age, n_low, low_ids)
    reason = "" if n_low == 0 else f"{n_low} low-confidence keypoints tolerated: ids {list(low_ids)}"
    return GateDecision(GateState.RUNNING, reason or "running", age, n_low, low_ids)


class InputGate:
    """:func:`evaluate_gate` plus the low-confidence grace of
    ``config.low_confidence_grace_s``: too many low keypoints hold the policy
    only once they have lasted that long (``now_s`` of successive calls); any
    other decision, and low-confidence ones after the grace, pass unchanged.
    One instance per input stream (the policy node, an evaluation agent)."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self._low_since: Optional[float] = None

    def reset(self) -> None:
        self._low_since = None

    def evaluate(self, now_s: float, keypoints: Optional[KeypointInput], joint_state_stamp_s: Optional[float],
                 expected_ids: Optional[Sequence[int]] = None,
                 expected_image_size: Optional[tuple[int, int]] = None,
                 fault: Optional[str] = None) -> GateDecision:
        d = evaluate_gate(self.config, now_s, keypoints, joint_state_stamp_s, expected_ids, expected_image_size,
                          fault)
        if d.state != GateState.HOLD_LOW_CONFIDENCE:
            self._low_since = None
            return d
        if self._low_since is None or now_s < self._low_since:
            self._low_since = now_s
        left = self.config.low_confidence_grace_s - (now_s - self._low_since)
        if left > 0:
            return GateDecision(GateState.RUNNING, f"{d.reason}; acting on for {left:.1f} s more "
                                "(low_confidence_grace_s)", d.input_age_s, d.low_confidence_count,
                                d.low_confidence_ids)
        return d
