"""The deploy step: one control step of a keypoint policy, ROS-free.

The policy node (:mod:`atk_policy.policy_node`) and the evaluation's agent
(``atk_bringup.experiment.evaluation.KeypointAgent``) both call :meth:`DeployStep.step`,
so what is evaluated is what is deployed:

1. the input gate (:mod:`atk_policy.gating`) decides whether the policy may
   act on these keypoints and this joint state;
2. if it may: after a hold, the policy is reset first (no action chunk or
   other context is carried over a hold); then ``select_action``;
3. the action check (:func:`check_action`): shape (7,), finite, and no joint
   target further than ``max_joint_step_rad`` from the last target this step
   produced, or from the measured joints for the first one after a reset or
   a hold: the driver's ``max_target_step`` rule, checked here before
   anything is published (bad input once made the policy command targets
   16,000 rad away). Not from the measured joints alone: the later actions of
   a chunk run ahead of an arm that lags or is blocked (0.307 rad on one
   evaluation scene), and refusing them held that arm for good;
4. hold semantics: a gate hold, an inference error or a refused action
   yields no action (:attr:`StepOutcome.action` is None). The caller then
   commands nothing new, and the robot keeps its last target: the node
   publishes nothing, the driver and the simulator keep the last target, and
   the evaluation repeats its last action.

:class:`JointStateBuffer` pairs a keypoint array with the joint state of the
same camera frame (the policy was trained on such pairs).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from atk_policy.gating import GateConfig, GateDecision, GateState, InputGate, KeypointInput

#: Default of ``max_joint_step_rad``: the UR driver's ``SafetyLimits.max_target_step``.
DEFAULT_MAX_JOINT_STEP_RAD = 0.3


def check_action(action: Any, measured: Optional[np.ndarray] = None,
                 max_joint_step_rad: Optional[float] = None) -> tuple[Optional[np.ndarray], str]:
    """(7,) float64 action, or (None, why) when it must not be published.

    action: the policy's output, expected (7,) = 6 joint targets (rad) +
        gripper (0..1; clipped when published, so not checked here).
    measured: (>= 6,) the reference joint positions (rad): the last target,
        or the measured joints; with ``max_joint_step_rad`` the largest joint
        step |action[:6] - measured[:6]| must not exceed it (None: not checked).
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (7,):
        return None, f"model returned an action of shape {np.shape(action)}, expected (7,)"
    if not np.all(np.isfinite(a)):
        return None, f"model returned a non-finite action {a.tolist()}"
    if measured is not None and max_joint_step_rad is not None:
        step = np.abs(a[:6] - np.asarray(measured, dtype=np.float64).reshape(-1)[:6])
        worst = int(np.argmax(step))
        if not step[worst] <= max_joint_step_rad:
            return None, (f"action refused: joint {worst} target is {step[worst]:.3f} rad from the last target "
                          f"or measured position (max_joint_step_rad {max_joint_step_rad:.3f}); bad input or a "
                          "broken model")
    return a, ""


@dataclass(frozen=True)
class StepOutcome:
    """decision: the gate's verdict, or FAULT when inference failed or the
    action was refused; action: (7,) to command, None = hold; error: why
    inference failed or the action was refused ("" otherwise)."""

    decision: GateDecision
    action: Optional[np.ndarray]
    error: str = ""

    @property
    def acted(self) -> bool:
        return self.action is not None


class DeployStep:
    """Gate -> ``select_action`` -> action check, with the hold semantics of
    the module docstring. One instance per input stream.

    policy: has ``select_action(keypoints (N, 2) float32 px, proprio (7,)
        float32) -> (7,)``, ``reset()``, ``keypoint_ids`` and ``image_size``
        (width, height); None when no model could be loaded (every step is
        then FAULT with ``fault``).
    """

    def __init__(self, policy: Any, gate_config: Optional[GateConfig] = None,
                 max_joint_step_rad: float = DEFAULT_MAX_JOINT_STEP_RAD) -> None:
        if not (isinstance(max_joint_step_rad, (int, float)) and math.isfinite(max_joint_step_rad)
                and max_joint_step_rad > 0):
            raise ValueError(f"max_joint_step_rad must be a positive number of radians, got {max_joint_step_rad!r}")
        self.policy = policy
        self.gate = InputGate(gate_config or GateConfig())
        self.max_joint_step_rad = float(max_joint_step_rad)
        self.expected_ids = None if policy is None else [int(i) for i in policy.keypoint_ids]
        self.expected_size = None if policy is None else tuple(int(v) for v in policy.image_size)
        # True: the policy may carry its context (action chunk) on: it was
        # reset, or has acted, since the last hold.
        self._fresh = False
        self._last_target: Optional[np.ndarray] = None   # (6,) the last action's joints; None after a hold

    @property
    def config(self) -> GateConfig:
        return self.gate.config

    @config.setter
    def config(self, value: GateConfig) -> None:
        self.gate.config = value

    def reset(self) -> None:
        """A new episode: forget the grace timer and reset the policy."""
        self.gate.reset()
        if self.policy is not None:
            self.policy.reset()
        self._fresh = True
        self._last_target = None

    def evaluate(self, now_s: float, keypoints: Optional[KeypointInput], joint_state_stamp_s: Optional[float],
                 fault: Optional[str] = None) -> GateDecision:
        """The gate alone (for status reports between steps); a hold here also
        means the policy is reset before it acts again."""
        d = self.gate.evaluate(now_s, keypoints, joint_state_stamp_s, self.expected_ids, self.expected_size,
                               fault)
        if not d.running:
            self._fresh = False
            self._last_target = None
        return d

    def step(self, now_s: float, keypoints: Optional[KeypointInput], proprio: Optional[np.ndarray],
             joint_state_stamp_s: Optional[float], fault: Optional[str] = None) -> StepOutcome:
        """One control step.

        now_s: the time the step runs at (same clock as the stamps);
        keypoints: the newest keypoint array; proprio: (7,) joint positions
        (rad) + gripper of the same camera frame, stamped ``joint_state_stamp_s``.
        """
        if proprio is None:
            joint_state_stamp_s = None  # the gate reports "no joint state"
        decision = self.evaluate(now_s, keypoints, joint_state_stamp_s, fault)
        if not decision.running:
            return StepOutcome(decision, None)
        if not self._fresh:
            self.policy.reset()  # no context carried over a hold
            self._fresh = True
        proprio = np.asarray(proprio, dtype=np.float64)
        try:
            raw = self.policy.select_action(np.asarray(keypoints.positions, np.float32), proprio.astype(np.float32))
        except Exception as exc:  # noqa: BLE001 - an inference error holds the arm and is reported, never raised
            raw, why = None, f"inference failed: {type(exc).__name__}: {exc}"
        else:
            reference = proprio if self._last_target is None else self._last_target
            raw, why = check_action(raw, reference, self.max_joint_step_rad)
        if raw is None:
            self._fresh = False
            self._last_target = None
            return StepOutcome(GateDecision(GateState.FAULT, why, decision.input_age_s,
                                            decision.low_confidence_count, decision.low_confidence_ids), None, why)
        self._last_target = raw[:6].copy()
        return StepOutcome(decision, raw)


class JointStateBuffer:
    """The joint states of the last ``horizon_s`` seconds, to pair a keypoint
    array with the joint state of the same camera frame.

    The simulator stamps a frame's image and joint state alike; the robot's
    driver publishes at 125-500 Hz, so the nearest stamp is within a few ms
    of the image's.
    """

    def __init__(self, horizon_s: float = 2.0, max_items: int = 2048) -> None:
        if not horizon_s > 0:
            raise ValueError(f"horizon_s must be > 0 seconds, got {horizon_s!r}")
        self.horizon_s = float(horizon_s)
        self._items: deque[tuple[float, np.ndarray]] = deque(maxlen=max_items)

    def clear(self) -> None:
        self._items.clear()

    def add(self, stamp_s: float, proprio: np.ndarray) -> None:
        """proprio: (7,) joint positions + gripper at ``stamp_s``. A stamp
        older than the newest (a restarted clock) clears the buffer first."""
        if self._items and stamp_s < self._items[-1][0]:
            self._items.clear()
        self._items.append((float(stamp_s), np.asarray(proprio, dtype=np.float64)))
        while self._items and self._items[0][0] < stamp_s - self.horizon_s:
            self._items.popleft()

    @property
    def newest_stamp(self) -> Optional[float]:
        return self._items[-1][0] if self._items else None

    def nearest(self, stamp_s: float) -> Optional[tuple[float, np.ndarray]]:
        """(stamp, proprio) of the joint state nearest to ``stamp_s`` (ties:
        the newer one), or None when there is none."""
        best = None
        for item in reversed(self._items):  # newest first: the match is usually among the last few
            if best is not None and abs(item[0] - stamp_s) >= abs(best[0] - stamp_s):
                if item[0] < stamp_s:
                    break  # stamps only fall from here on
                continue
            best = item
        return best
