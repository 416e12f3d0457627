"""Scripted-expert demonstrations in simulation, written as rosbag2 bags (ROS-free).

Each episode becomes one MCAP bag with the topics and message types of a
real recording (see docs/recording.md), its ``episode.yaml`` label and the
privileged ground-truth sidecar ``ground_truth.npz`` (atk_bringup.sim.ground_truth:
per-frame physical state, for the simulation-only oracle h_C), so
training reads simulated and real demonstrations through the same
:func:`atk_policy.bags.load_episodes`.

Per control step t (sim time s, offset by ``stamp_offset_s``): the camera
image and camera info, the measured joint states, and the expert's joint
target and gripper command, all stamped with the observation's time (the
command carries its observation's stamp, as the policy node does).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from atk_policy.bags import CameraInfoData, EpisodeBagWriter, EpisodeLabel

from .evaluation import HoldStreak
from ..sim.ground_truth import EpisodeRecorder


@dataclass(frozen=True)
class DemoResult:
    """One recorded demonstration: its bag, outcome and length."""

    path: Path
    success: bool
    steps: int
    message: str = ""


def record_expert_episode(env, out_dir: str | Path, *, task: str, seed: int,
                          perturbations: Sequence[str] = (), max_steps: int | None = None,
                          stamp_offset_s: float = 0.0, with_depth: bool = False,
                          namespace: str = "", after_success_s: float = 1.0) -> DemoResult:
    """Run the privileged scripted expert of ``env`` (an atk_bringup.sim.env.SimEnv
    with rendering on) for one episode and write it to the bag ``out_dir``.

    The episode runs until the task succeeds (and then ``after_success_s``
    more: the expert lets go and backs off, so that releasing is in the data
    more than the one step it takes; without it a learned policy kept holding
    the nigiri over the plate), the time limit passes, or ``max_steps``
    control steps. The last observation (no action follows it) is not
    written. Returns where the bag is and whether the task succeeded.
    """
    return _record(env, out_dir, None, task=task, seed=seed, perturbations=perturbations,
                   max_steps=max_steps, stamp_offset_s=stamp_offset_s, with_depth=with_depth,
                   namespace=namespace, after_success_s=after_success_s)


def record_relabelled_episode(env, agent, out_dir: str | Path, *, task: str, seed: int,
                              perturbations: Sequence[str] = (), max_steps: int | None = None,
                              stamp_offset_s: float = 0.0, with_depth: bool = False,
                              namespace: str = "", after_success_s: float = 1.0,
                              stall_steps: int | None = None) -> DemoResult:
    """DAgger (student-teacher distillation): ``agent`` (``reset(obs)``,
    ``act(obs) -> (7,)``, e.g. a deployed ATK policy) drives the robot, and the
    bag records, at every state the agent reaches, the privileged expert's
    action for that state on the command topics. Plain behaviour cloning
    sees only the expert's own states and so never learns to recover; these
    episodes teach it. The label is ``success: true`` (every recorded action is
    the expert's), ``source: dagger``, and keeps the agent's own outcome in
    ``extra.learner_success``.

    stall_steps: end the rollout once the agent has held (``agent.holds``
    grew) this many control steps in a row, as the evaluation does: a held
    robot stands still, so further steps repeat one state's label, and a
    tracker that lost its keypoints re-transfers every few frames (seconds
    each), which made single rollouts take minutes. None: no limit.
    """
    return _record(env, out_dir, agent, task=task, seed=seed, perturbations=perturbations,
                   max_steps=max_steps, stamp_offset_s=stamp_offset_s, with_depth=with_depth,
                   namespace=namespace, after_success_s=after_success_s, stall_steps=stall_steps)


def _record(env, out_dir: str | Path, agent, *, task: str, seed: int, perturbations: Sequence[str],
            max_steps: int | None, stamp_offset_s: float, with_depth: bool, namespace: str,
            after_success_s: float = 0.0, stall_steps: int | None = None) -> DemoResult:
    if stall_steps is not None and stall_steps < 1:
        raise ValueError(f"stall_steps must be >= 1 or None, got {stall_steps!r}")
    if not after_success_s >= 0:
        raise ValueError(f"after_success_s must be >= 0, got {after_success_s!r}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps!r}")
    if stamp_offset_s < 0:
        raise ValueError(f"stamp_offset_s must be >= 0, got {stamp_offset_s!r}")
    obs = env.reset(task=task, seed=int(seed), perturbations=tuple(perturbations))
    if obs.rgb.size == 0:
        raise ValueError("the simulator renders no images (SimConfig.render is False); demonstrations need them")
    if agent is not None:
        agent.reset(obs)
    h, w = obs.rgb.shape[:2]
    k = np.asarray(env.intrinsics, np.float64)
    info = CameraInfoData(w, h, tuple(k.reshape(-1)))
    steps = 0
    post_steps = int(round(after_success_s * float(env.config.control_hz)))
    post = 0
    streak = None if agent is None else HoldStreak(agent, stall_steps)
    # depth: every frame with_depth; otherwise the first frame's only (a template taken from this
    # episode then has its depth: h_C's table search, table_search.py)
    writer = EpisodeBagWriter(out_dir, with_depth=True, namespace=namespace)
    # the privileged ground truth of every written frame (sim.ground_truth's
    # sidecar), for the simulation-only oracle h_C and the tracking benchmark
    truth = EpisodeRecorder(env)
    try:
        while max_steps is None or steps < max_steps:
            if env.done:
                if not env.success() or post >= post_steps:
                    break
                post += 1
            stamp = stamp_offset_s + float(obs.time)
            action = np.asarray(env.expert_action(), np.float64)
            executed = action if streak is None else np.asarray(streak.act(obs), np.float64)
            if not np.all(np.isfinite(executed)):
                break  # the driver would refuse it; the episode ends here
            if streak is not None and streak.stalled:
                break  # stuck holding: an operator would stop here (see record_relabelled_episode)
            writer.write_image(stamp, obs.rgb, info)
            truth.add(obs.rgb)
            if with_depth or steps == 0:
                writer.write_depth(stamp, obs.depth_mm if obs.depth_mm.size else env.render_depth_mm())
            writer.write_joint_state(stamp, obs.joint_positions)
            writer.write_command(stamp, action[:6], float(np.clip(action[6], 0.0, 1.0)))
            obs = env.step(executed)
            steps += 1
    except BaseException:
        writer.abort()
        raise
    success = bool(env.success())
    message = getattr(env, "episode_message", "") or ""
    extra = {"steps": steps, "control_hz": float(env.config.control_hz)}
    if agent is None:
        label = EpisodeLabel(success=success, task=task, seed=int(seed), perturbations=list(perturbations),
                             source="sim_expert", note=message, extra=extra)
    else:
        label = EpisodeLabel(success=True, task=task, seed=int(seed), perturbations=list(perturbations),
                             source="dagger", note=f"expert-relabelled rollout of a learned policy; {message}",
                             extra={**extra, "learner_success": success})
    truth.save(writer.path)  # before the label, which marks the episode complete
    path = writer.close(label)
    return DemoResult(path, success, steps, message)
