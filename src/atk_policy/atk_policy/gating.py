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
   differs from the one the model was trained on -> FAULT (retrying cannot
   fix a wrong model/tracker pairing: an operator must);
6. more than ``max_low_confidence`` keypoints below
   ``confidence_threshold`` (invisible or non-finite points count as low)
   -> HOLD_LOW_CONFIDENCE.

Times are plain float seconds on one clock (the node's ROS clock, which
follows ``/clock`` under ``use_sim_time``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Optional, Sequence

import numpy as np


class GateState(IntEnum):
    """Same values as the ``atk_msgs/PolicyStatus`` STATE_* constants."""

    RUNNING = 0
    HOLD_STALE = 1
    HOLD_NOT_TRACKING = 2
    HOLD_LOW_CONFIDENCE = 3
    FAULT = 4


class TrackerState(IntEnum):
    """Same values as the ``atk_msgs/KeypointArray`` STATE_* constants."""

    INITIALISING = 0
    TRACKING = 1
    LOST = 2


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
    """

    keypoint_timeout_s: float = 0.25
    joint_state_timeout_s: float = 0.25
    confidence_threshold: float = 0.5
    max_low_confidence: int = 2
    max_low_confidence_fraction: float = 0.5
    low_confidence_grace_s: float = 2.0

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


@dataclass(frozen=True)
class KeypointInput:
    """The newest keypoint array, converted from ``atk_msgs/KeypointArray``.

    ids: (N,) keypoint ids in the order they were published.
    positions: (N, 2) pixels (x, y).
    confidence: (N,) in [0, 1].
    visible: (N,) bool.
    """

    stamp_s: float
    tracker_state: int
    ids: np.ndarray
    positions: np.ndarray
    confidence: np.ndarray
    visible: np.ndarray
    image_size: tuple[int, int] = (0, 0)  # (width, height); (0, 0) = not reported
    tracker_message: str = ""

    def __post_init__(self) -> None:
        n = len(self.ids)
        if np.shape(self.positions) != (n, 2):
            raise ValueError(f"KeypointInput.positions must have shape ({n}, 2), got {np.shape(self.positions)}")
        for name in ("confidence", "visible"):
            if np.shape(getattr(self, name)) != (n,):
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


def low_confidence_mask(keypoints: KeypointInput, threshold: float) -> np.ndarray:
    """(N,) bool: below ``threshold``, not visible, or with a non-finite value."""
    conf = np.asarray(keypoints.confidence, dtype=np.float64)
    pos = np.asarray(keypoints.positions, dtype=np.float64)
    finite = np.isfinite(conf) & np.all(np.isfinite(pos), axis=1)
    return ~finite | (np.nan_to_num(conf, nan=-1.0) < threshold) | ~np.asarray(keypoints.visible, dtype=bool)


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
    if expected_image_size is not None and tuple(keypoints.image_size) != (0, 0):
        if tuple(int(v) for v in keypoints.image_size) != tuple(int(v) for v in expected_image_size):
            w, h = keypoints.image_size
            ew, eh = expected_image_size
            return GateDecision(GateState.FAULT, f"keypoints refer to a {w}x{h} image but the model was trained "
                                f"on {ew}x{eh}: set the camera resolution to {ew}x{eh} (deploy launch argument "
                                f"sim_width:={ew} sim_height:={eh} in simulation, or leave them at auto)", age)
    low = low_confidence_mask(keypoints, config.confidence_threshold)
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
