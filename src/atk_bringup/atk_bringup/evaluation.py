"""Closed-loop evaluation of policies in the simulation, under the paper's
perturbation conditions (tables 1-3): RP, then RB, RO and LIGHT added
cumulatively.

ROS-free: the same library code the nodes run (h_C transfer + tracking, the
policy's ``select_action``), stepped in-process faster than real time. The
ROS graph runs the same code for the episode(s) deployed through DDS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

#: Evaluation conditions, cumulative as in the paper's tables.
CONDITIONS: dict[str, tuple[str, ...]] = {
    "RP": ("RP",),
    "RB": ("RP", "RB"),
    "+RO": ("RP", "RB", "RO"),
    "+Light": ("RP", "RB", "RO", "LIGHT"),
}


class Agent(Protocol):
    """Something that acts in the simulator from what a real robot sees."""

    def reset(self, obs) -> None:
        """Start an episode from its first observation (transfer keypoints, ...)."""

    def act(self, obs) -> np.ndarray:
        """Action (7,): 6 joint targets (rad) + gripper command (0..1)."""


class KeypointAgent:
    """ATK deployment (paper, section 3.3), exactly as the tracker and policy
    nodes run it: the tracker's state machine (atk_perception.tracking_session:
    transfer the model's keypoints from the canonical template on the first
    frame, track them, re-transfer when lost) and the policy node's input gate
    (atk_policy.gating: hold when the tracker is not tracking or too many
    keypoints have low confidence). While holding, the robot keeps its last
    commanded target, as the simulator and the driver do when no new target
    arrives."""

    def __init__(self, policy, correspondence, template, session_config=None, gate_config=None) -> None:
        """template: an atk_perception.keypoint_template.KeypointTemplate (the
        model's canonical image and keypoints)."""
        from atk_perception.tracking_session import TrackingSession
        from atk_policy.gating import GateConfig, InputGate

        self.policy = policy
        self.session = TrackingSession(correspondence, template, session_config)
        self.gate_config = gate_config or GateConfig()
        self.gate = InputGate(self.gate_config)
        self.points: np.ndarray | None = None      # (N, 2) pixels, newest frame
        self.confidence: np.ndarray | None = None  # (N,)
        self.holds = 0                              # control steps spent holding
        self.last_reason = ""
        self._last_action: np.ndarray | None = None
        self._pending = None
        self._was_running = True   # the policy was reset with the episode

    def reset(self, obs) -> None:
        self.session.request_reset()
        self.policy.reset()
        self.gate.reset()
        self._was_running = True
        self.holds = 0
        self._last_action = None
        self._pending = self._track(obs)  # the transfer onto the first frame

    def _track(self, obs):
        try:
            out = self.session.process(obs.rgb, float(obs.time))
        except Exception as exc:  # noqa: BLE001 - as the tracker node: a backend bug skips the frame
            out = self.session.report_bad_frame(f"tracker error {type(exc).__name__}: {exc}")
        self.points, self.confidence = out.points, out.confidence
        return out

    def act(self, obs) -> np.ndarray:
        from atk_policy.gating import KeypointInput

        out = self._pending if self._pending is not None else self._track(obs)
        self._pending = None
        kp = KeypointInput(float(obs.time), int(out.state), np.asarray(self.session.ids), out.points,
                           out.confidence, out.visible, out.image_size, out.message)
        decision = self.gate.evaluate(float(obs.time), kp, float(obs.time),
                                      expected_ids=self.policy.keypoint_ids,
                                      expected_image_size=tuple(self.policy.image_size))
        resumed = decision.running and not self._was_running
        self._was_running = decision.running
        if decision.running:
            if resumed:
                self.policy.reset()  # no context (action chunk) carried over a hold, as the node does
            self._last_action = np.asarray(self.policy.select_action(out.points, obs.joint_positions),
                                           dtype=np.float64)
        else:
            self.holds += 1
            self.last_reason = decision.reason
            if self._last_action is None:  # nothing commanded yet: stay where the arm is
                self._last_action = np.asarray(obs.joint_positions, dtype=np.float64).copy()
        return self._last_action


class ImageAgent:
    """A policy on the raw RGB image (the RGB baseline)."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def reset(self, obs) -> None:
        self.policy.reset()

    def act(self, obs) -> np.ndarray:
        return np.asarray(self.policy.select_action(obs.rgb, obs.joint_positions), dtype=np.float64)


class NoisyExpertAgent:
    """The expert with Gaussian noise on its joint targets (DART, Laskey et
    al. 2017). Recorded with the expert's clean action as the label
    (demonstrations.record_relabelled_episode), its episodes show the expert
    recovering from small deviations, which clean demonstrations never do."""

    def __init__(self, env, joint_noise_rad: float, seed: int) -> None:
        if not joint_noise_rad >= 0:
            raise ValueError(f"joint_noise_rad must be >= 0, got {joint_noise_rad!r}")
        self.env = env
        self.sigma = float(joint_noise_rad)
        self.rng = np.random.default_rng(seed)

    def reset(self, obs) -> None:
        pass

    def act(self, obs) -> np.ndarray:
        action = np.asarray(self.env.expert_action(), dtype=np.float64).copy()
        action[:6] += self.rng.normal(scale=self.sigma, size=6)
        return action


@dataclass
class EpisodeResult:
    task: str
    seed: int
    perturbations: tuple[str, ...]
    success: bool
    steps: int
    error: str = ""


class HoldStreak:
    """Counts the control steps in a row in which ``agent`` held (its
    ``holds`` counter grew during ``act``); ``stalled`` once that reaches
    ``limit`` (None or 0: never). Shared by the evaluation and the DAgger
    rollouts, which both stop a robot stuck holding, as an operator would."""

    def __init__(self, agent, limit: int | None) -> None:
        self.agent, self.limit, self.count = agent, limit, 0

    def act(self, obs) -> np.ndarray:
        before = getattr(self.agent, "holds", 0)
        action = self.agent.act(obs)
        self.count = self.count + 1 if getattr(self.agent, "holds", 0) > before else 0
        return action

    @property
    def stalled(self) -> bool:
        return bool(self.limit) and self.count >= self.limit


def run_episode(env, agent: Agent, task: str, seed: int, perturbations: Sequence[str],
                max_steps: int | None = None,
                on_step: Callable[[int, object, np.ndarray], None] | None = None,
                stall_steps: int | None = None) -> EpisodeResult:
    """Roll ``agent`` out in ``env`` until success, the env's time limit or
    ``max_steps``. A policy that produces a non-finite action fails the episode
    (the driver would refuse it) instead of crashing the evaluation; so does
    one that has held (``agent.holds`` growing) for ``stall_steps`` control
    steps in a row."""
    obs = env.reset(task=task, seed=seed, perturbations=tuple(perturbations))
    agent.reset(obs)
    steps = 0
    streak = HoldStreak(agent, stall_steps)
    while not env.done and (max_steps is None or steps < max_steps):
        action = streak.act(obs)
        if streak.stalled:
            return EpisodeResult(task, seed, tuple(perturbations), False, steps,
                                 f"held for {streak.count} steps: {getattr(agent, 'last_reason', '')}")
        if not np.all(np.isfinite(action)):
            return EpisodeResult(task, seed, tuple(perturbations), False, steps, "non-finite action")
        if on_step is not None:
            on_step(steps, obs, action)
        obs = env.step(action)
        steps += 1
    return EpisodeResult(task, seed, tuple(perturbations), bool(env.success()), steps)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (successes of n episodes);
    (nan, nan) for n = 0. Unlike mean +- std it stays inside [0, 1] and is
    honest about 0/10 and 10/10."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class CellStats:
    """Success over evaluation episodes for one method x condition, with the
    spread across training seeds (the paper's mean +- std over seeds) and,
    when the episode counts are given, the pooled successes / episodes with
    their 95% Wilson interval."""

    rates: list[float] = field(default_factory=list)  # one success rate per training seed
    successes: int = 0   # pooled over training seeds
    episodes: int = 0

    def add(self, outcomes: Sequence[bool]) -> None:
        """One training seed's episodes."""
        self.rates.append(float(np.mean(outcomes)) if len(outcomes) else math.nan)
        self.successes += int(sum(bool(o) for o in outcomes))
        self.episodes += len(outcomes)

    @property
    def mean(self) -> float:
        return float(np.mean(self.rates)) if self.rates else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.rates)) if self.rates else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def fmt(self) -> str:
        if not self.rates:
            return "n/a"
        text = f"{self.mean:.2f}±{self.std:.2f}"
        if self.episodes:
            lo, hi = self.interval
            text += f" ({self.successes}/{self.episodes}; {lo:.2f}-{hi:.2f})"
        return text


def success_rate(results: Iterable[EpisodeResult]) -> float:
    results = list(results)
    return float(np.mean([r.success for r in results])) if results else math.nan


def format_table(table: dict[str, dict[str, CellStats]], conditions: Sequence[str]) -> str:
    """Markdown table: methods x conditions, mean±std over training seeds, and
    (where counted) successes/episodes pooled over seeds with the 95% Wilson interval."""
    header = "| method | " + " | ".join(conditions) + " |"
    sep = "|---|" + "---|" * len(conditions)
    rows = [f"| {m} | " + " | ".join(table[m][c].fmt() if c in table[m] else "n/a" for c in conditions) + " |"
            for m in table]
    return "\n".join([header, sep, *rows])


def table_csv(table: dict[str, dict[str, CellStats]], conditions: Sequence[str]) -> str:
    lines = ["method,condition,mean,std,n_seeds,rates,successes,episodes,wilson95_lo,wilson95_hi"]
    for m, cells in table.items():
        for c in conditions:
            cell = cells.get(c, CellStats())
            lo, hi = cell.interval
            lines.append(f"{m},{c},{cell.mean:.4f},{cell.std:.4f},{len(cell.rates)},"
                         + " ".join(f"{r:.4f}" for r in cell.rates)
                         + f",{cell.successes},{cell.episodes},{lo:.4f},{hi:.4f}")
    return "\n".join(lines) + "\n"
