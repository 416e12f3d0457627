"""Synthetic tracked datasets with planted task-relevant keypoints.

ROS-free; used by the planted-relevance acceptance test and the training
benchmark. C smooth 2-D tracks per episode on a W x H image:

* ``relevant`` tracks (3 by default): the expert action is a fixed smooth
  function of their normalised positions and of the proprioception;
* distractors: a relevant track plus an independent smooth offset
  (partially informative: correlated with a relevant track, but noisy);
* the rest: independent smooth tracks (no information about the action).

Which candidate ids play which role is shuffled by the seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .propagation import TrackedEpisode


@dataclass
class PlantedData:
    """episodes: TrackedEpisode list; ids of each role; canonical_xy (C, 2) = tracks at step 0 of episode 0."""

    episodes: list[TrackedEpisode]
    relevant: np.ndarray
    distractors: np.ndarray
    independent: np.ndarray
    canonical_xy: np.ndarray
    image_size: tuple[int, int]


def _smooth_paths(rng: np.random.Generator, n: int, steps: int, amp: float, n_freq: int = 3) -> np.ndarray:
    """(steps, n) smooth zero-mean signals: sums of random low-frequency sinusoids."""
    t = np.linspace(0.0, 1.0, steps)[:, None, None]
    freq = rng.uniform(0.3, 1.5, size=(1, n, n_freq))
    phase = rng.uniform(0, 2 * np.pi, size=(1, n, n_freq))
    a = rng.normal(size=(1, n, n_freq)) / np.sqrt(n_freq)
    return amp * (a * np.sin(2 * np.pi * freq * t + phase)).sum(-1)


def planted_dataset(seed: int, num_episodes: int = 80, steps: int = 30, num_candidates: int = 64,
                    num_relevant: int = 3, distractors_per_relevant: int = 3,
                    image_size: tuple[int, int] = (640, 480), action_noise: float = 0.01,
                    distractor_offset_px: float = 60.0) -> PlantedData:
    """Build the planted dataset (see module docstring). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    w, h = image_size
    c = num_candidates
    n_dis = num_relevant * distractors_per_relevant
    if num_relevant + n_dis > c:
        raise ValueError(f"{num_relevant} relevant + {n_dis} distractors do not fit in C = {c}")
    roles = rng.permutation(c)
    relevant = np.sort(roles[:num_relevant])
    distractors = roles[num_relevant:num_relevant + n_dis]
    dis_parent = np.repeat(np.arange(num_relevant), distractors_per_relevant)
    independent = np.sort(roles[num_relevant + n_dis:])
    # The expert: every relevant keypoint contributes a separate nonlinear
    # term of equal size (so none can be dropped cheaply), on top of
    # following the proprioception.
    b = rng.normal(size=(num_relevant, 2, 8)) * 1.5
    cmat = rng.normal(size=(num_relevant, 8, 6))
    cmat *= 0.3 / np.sqrt((cmat ** 2).sum(axis=1, keepdims=True))
    g_w = rng.normal(size=2 * num_relevant)
    base = np.stack([rng.uniform(0.15 * w, 0.85 * w, c), rng.uniform(0.15 * h, 0.85 * h, c)], 1)
    episodes = []
    for e in range(num_episodes):
        # Object placement differs per episode: every track starts elsewhere.
        start = base + rng.normal(scale=[0.08 * w, 0.08 * h], size=(c, 2))
        motion = np.stack([_smooth_paths(rng, c, steps, 0.05 * w), _smooth_paths(rng, c, steps, 0.05 * h)], -1)
        tracks = start[None] + motion                                       # (T, C, 2)
        offs = np.stack([_smooth_paths(rng, n_dis, steps, distractor_offset_px),
                         _smooth_paths(rng, n_dis, steps, distractor_offset_px)], -1)
        tracks[:, distractors] = tracks[:, relevant[dis_parent]] + offs
        tracks[..., 0] = np.clip(tracks[..., 0], 0, w - 1)
        tracks[..., 1] = np.clip(tracks[..., 1], 0, h - 1)
        joints = rng.uniform(-1, 1, size=6)[None] + _smooth_paths(rng, 6, steps, 0.3)
        grip = (np.sin(np.linspace(0, np.pi, steps) + rng.uniform(0, np.pi)) > 0).astype(np.float64)
        proprio = np.concatenate([joints, grip[:, None]], 1)
        rel = tracks[:, relevant] / np.array([w, h]) * 2 - 1                 # (T, 3, 2) in [-1, 1]
        delta = sum(np.tanh(rel[:, k] @ b[k]) @ cmat[k] for k in range(num_relevant))
        target = joints + delta + rng.normal(scale=action_noise, size=delta.shape)
        g_cmd = 1.0 / (1.0 + np.exp(-3.0 * (rel.reshape(steps, -1) @ g_w)))
        actions = np.concatenate([target, g_cmd[:, None]], 1)
        episodes.append(TrackedEpisode(
            name=f"planted_{seed}_{e:03d}", tracks=tracks.astype(np.float32),
            visible=np.ones((steps, c), bool), confidence=np.ones((steps, c), np.float32),
            proprio=proprio, actions=actions, image_size=(w, h)))
    return PlantedData(episodes, relevant, np.sort(distractors), independent,
                       episodes[0].tracks[0].copy(), (w, h))


def rendered_episodes(background: np.ndarray, seed: int = 0, num_episodes: int = 8, steps: int = 20,
                      image_size: tuple[int, int] = (160, 120), patch: int = 32) -> tuple[list, np.ndarray]:
    """Episodes with real-photo frames where the action follows a moving object.

    background: (H0, W0, 3) uint8 RGB photograph; a crop of it is the static
    scene and another crop, pasted at a smoothly moving position, the object.
    The expert action is the proprioception plus a function of the object's
    centre. Returns (episodes, object_centres (E, T, 2) pixels).
    """
    import cv2

    from .dataset import ArrayFrames, Episode

    rng = np.random.default_rng(seed)
    w, h = image_size
    bg0 = np.asarray(background)
    if bg0.shape[0] < h + patch or bg0.shape[1] < w + patch:
        bg0 = cv2.resize(bg0, (max(w + patch, bg0.shape[1]), max(h + patch, bg0.shape[0])))
    scene = np.ascontiguousarray(bg0[:h, :w])
    # The object: a textured crop from the middle of the photograph, rotated
    # and colour-swapped so it stands out from the scene and has corners to track.
    oy, ox = bg0.shape[0] // 2 - patch // 2, bg0.shape[1] // 2 - patch // 2
    obj = np.ascontiguousarray(np.rot90(bg0[oy:oy + patch, ox:ox + patch, ::-1]))
    episodes, centres = [], []
    for e in range(num_episodes):
        start = np.array([rng.uniform(0.3 * w, 0.7 * w), rng.uniform(0.3 * h, 0.7 * h)])
        path = start + np.stack([_smooth_paths(rng, 1, steps, 0.06 * w)[:, 0],
                                 _smooth_paths(rng, 1, steps, 0.06 * h)[:, 0]], 1)
        path = np.round(path).clip([patch, patch], [w - patch, h - patch])
        frames = np.repeat(scene[None], steps, 0).copy()
        for t, (cx, cy) in enumerate(path.astype(int)):
            frames[t, cy - patch // 2:cy + patch // 2, cx - patch // 2:cx + patch // 2] = obj
        joints = rng.uniform(-1, 1, size=6)[None] + _smooth_paths(rng, 6, steps, 0.2)
        grip = np.zeros(steps)
        proprio = np.concatenate([joints, grip[:, None]], 1)
        rel = path / np.array([w, h]) * 2 - 1
        target = joints + 0.3 * np.tanh(np.stack([rel[:, 0], rel[:, 1], rel[:, 0] * rel[:, 1],
                                                   -rel[:, 0], rel[:, 1] ** 2, rel.sum(1)], 1))
        actions = np.concatenate([target, (rel[:, :1] > 0).astype(np.float64)], 1)
        episodes.append(Episode(name=f"rendered_{seed}_{e:02d}", frames=ArrayFrames(frames),
                                stamps=np.arange(steps) / 10.0, proprio=proprio, actions=actions,
                                success=True))
        centres.append(path)
    return episodes, np.asarray(centres, np.float32)
