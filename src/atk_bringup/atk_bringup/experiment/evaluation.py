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


TIMINGS = ("graph", "ideal")


class KeypointAgent:
    """ATK deployment (paper, section 3.3), exactly as the tracker and policy
    nodes run it: the tracker's state machine (atk_perception.tracking_session:
    transfer the model's keypoints from the canonical template on the first
    frame, track them, re-transfer when lost) and the policy node's deploy
    step (atk_policy.deploy_step: input gate, ``select_action``, action check,
    hold). While holding, the robot keeps its last commanded target, as the
    simulator and the driver do when no new target arrives.

    timing="graph" (default) reproduces when things happen in the deploy graph
    (sim_node at ``control_period_s``, tracker node, policy node with
    trigger=keypoints; docs/deployment.md, "Latency"):

    - the episode's first frame: the transfer costs no simulated time (the
      simulator waits for the policy's first target, or for the tracker to
      report that the transfer failed), and its action is the first step's;
    - every later frame: the tracker takes a frame only when it is free
      before the next frame arrives (newest-frame slot), and its work takes the
      wall time it takes here (``clock``), as does the deploy step; an action
      is applied from the first control step that starts after it is ready,
      so an action later than one period is applied a step late, and a
      transfer of seconds drops the frames meanwhile and holds the arm;
    - the gate's "now" is the newest simulated clock tick when the keypoints
      reach the policy, so keypoints older than ``keypoint_timeout_s`` (after
      a long transfer) hold as stale, as in the graph.

    timing="ideal": every frame is tracked and acted on at no cost in
    simulated time (the evaluation before issue 17).

    Counters: ``holds`` (control steps without a new action),
    ``hold_reasons`` (state name -> steps; "LATE" when no action was ready
    for the step), ``frames_dropped`` (frames the tracker was too busy to take).
    """

    def __init__(self, policy, correspondence, template, session_config=None, gate_config=None, *,
                 timing: str = "graph", control_period_s: float = 0.1,
                 max_joint_step_rad: float | None = None, clock: Callable[[], float] | None = None) -> None:
        """template: an atk_perception.keypoint_template.KeypointTemplate (the
        model's canonical image and keypoints); clock: wall-time source of the
        latency model (seconds; default time.perf_counter)."""
        import time

        from atk_perception.tracking_session import TrackingSession
        from atk_policy.deploy_step import DEFAULT_MAX_JOINT_STEP_RAD, DeployStep
        from atk_policy.gating import GateConfig

        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
        if not control_period_s > 0:
            raise ValueError(f"control_period_s must be > 0 seconds, got {control_period_s!r}")
        self.policy = policy
        self.session = TrackingSession(correspondence, template, session_config)
        self.gate_config = gate_config or GateConfig()
        self.step = DeployStep(policy, self.gate_config,
                               DEFAULT_MAX_JOINT_STEP_RAD if max_joint_step_rad is None else max_joint_step_rad)
        self.timing = timing
        self.period = float(control_period_s)
        self.clock = clock or time.perf_counter
        self.points: np.ndarray | None = None      # (N, 2) pixels, newest frame
        self.confidence: np.ndarray | None = None  # (N,)
        self.holds = 0                              # control steps spent holding
        self.hold_reasons: dict[str, int] = {}
        self.frames_dropped = 0
        self.last_reason = ""
        self._last_action: np.ndarray | None = None
        self._first = None           # the first frame's tracker output, acted on by the first act()
        self._free_at = 0.0          # simulated time the tracker finishes its current frame
        self._queue: list = []       # [(ready time, StepOutcome)] computed but not yet applied

    def reset(self, obs) -> None:
        self.session.request_reset()
        self.step.reset()
        self.holds = 0
        self.hold_reasons = {}
        self.frames_dropped = 0
        self.last_reason = ""
        self._last_action = None
        self._queue = []
        self._free_at = float(obs.time)
        self._first = self._track(obs)  # the transfer onto the first frame: no simulated time (see class doc)

    def _track(self, obs):
        from atk_perception.robot_occlusion import RobotAwareTracker

        if isinstance(self.session.h_c, RobotAwareTracker):
            # the tracker node gets these from joint_states and the depth topic
            depth = obs.depth_mm.astype(np.float32) / 1000.0 if obs.depth_mm.size else None
            self.session.h_c.set_robot_state(obs.joint_positions, depth)
        try:
            out = self.session.process(obs.rgb, float(obs.time))
        except Exception as exc:  # noqa: BLE001 - as the tracker node: a backend bug skips the frame
            out = self.session.report_bad_frame(f"tracker error {type(exc).__name__}: {exc}")
        self.points, self.confidence = out.points, out.confidence
        return out

    def _decide(self, obs, out, now_s: float):
        from atk_policy.gating import KeypointInput

        t = float(obs.time)
        kp = KeypointInput(t, int(out.state), np.asarray(self.session.ids), out.points, out.confidence,
                           out.visible, out.image_size, out.message, out.covered)
        return self.step.step(now_s, kp, np.asarray(obs.joint_positions, dtype=np.float64), t)

    def act(self, obs) -> np.ndarray:
        t, period = float(obs.time), self.period
        if self._first is not None or self.timing == "ideal":
            out = self._first if self._first is not None else self._track(obs)
            self._first = None
            self._queue.append((t, self._decide(obs, out, t)))
            self._free_at = t
        elif self._free_at < t + period:
            # Free before the next frame arrives: the tracker takes this one
            # (else the newest-frame slot drops it for the next).
            start = max(t, self._free_at)
            c0 = self.clock()
            out = self._track(obs)
            c1 = self.clock()
            done = start + (c1 - c0)
            # The policy's clock follows /clock, which moves once per tick.
            now = t + period * math.floor((done - t) / period + 1e-9)
            outcome = self._decide(obs, out, now)
            self._free_at = done
            self._queue.append((done + (self.clock() - c1), outcome))
        else:
            self.frames_dropped += 1
        # The simulator steps with the newest target that has arrived by the
        # end of this control period; a hold publishes nothing.
        horizon = t + period + 1e-9
        due = [o for ready, o in self._queue if ready <= horizon]
        self._queue = [(ready, o) for ready, o in self._queue if ready > horizon]
        acted = [o for o in due if o.acted]
        if acted:
            self._last_action = acted[-1].action
        else:
            self.holds += 1
            if due:
                key, self.last_reason = due[-1].decision.state.name, due[-1].decision.reason
            else:
                key = "LATE"
                self.last_reason = "no new action in this control step: the tracker or the policy was still busy"
            self.hold_reasons[key] = self.hold_reasons.get(key, 0) + 1
        if self._last_action is None:  # nothing commanded yet: stay where the arm is
            self._last_action = np.asarray(obs.joint_positions, dtype=np.float64).copy()
        return self._last_action


#: What an ImageAgent hands its policy: the Observation field of each input.
IMAGE_INPUTS = ("rgb", "depth_mm")


class ImageAgent:
    """A policy on the raw camera picture: ``observation`` "rgb" (the RGB
    baseline) or "depth_mm" (the depth and point-cloud baselines; the
    simulator must render depth, SimEnv.render_depth)."""

    def __init__(self, policy, observation: str = "rgb") -> None:
        if observation not in IMAGE_INPUTS:
            raise ValueError(f"observation must be one of {IMAGE_INPUTS}, got {observation!r}")
        self.policy = policy
        self.observation = observation

    def reset(self, obs) -> None:
        self.policy.reset()

    def act(self, obs) -> np.ndarray:
        picture = getattr(obs, self.observation)
        if picture.size == 0:
            raise ValueError(f"this agent acts on {self.observation}, but the observation has none "
                             f"(the simulator renders no {'depth' if self.observation == 'depth_mm' else 'images'})")
        return np.asarray(self.policy.select_action(picture, obs.joint_positions), dtype=np.float64)


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
