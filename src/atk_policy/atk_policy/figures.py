"""Figures of a training run: the selected keypoints on the canonical image, the training curves.

ROS-free; written by :func:`atk_policy.pipeline.train` as ``candidates.png``
and ``curves.png`` in the model folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def draw_candidates(image: np.ndarray, candidates: np.ndarray, keep_probs: np.ndarray,
                    selected: Sequence[int]) -> np.ndarray:
    """Canonical image with candidates (grey, radius by keep-probability) and selected (green, id).

    image: (H, W, 3) uint8 RGB; candidates: (C, 2) pixels; keep_probs: (C,).
    Returns (H, W, 3) uint8 RGB.
    """
    import cv2

    out = np.ascontiguousarray(image[:, :, ::-1].copy())  # BGR for OpenCV drawing
    scale = max(1.0, image.shape[1] / 640)
    for i, (x, y) in enumerate(candidates):
        r = int(round((2 + 10 * float(keep_probs[i])) * scale))
        cv2.circle(out, (int(round(x)), int(round(y))), r, (200, 200, 200), max(1, int(scale)), cv2.LINE_AA)
    for i in selected:
        x, y = candidates[i]
        r = int(round((2 + 10 * float(keep_probs[i])) * scale))
        c = (int(round(x)), int(round(y)))
        cv2.circle(out, c, r, (0, 200, 0), max(2, int(2 * scale)), cv2.LINE_AA)
        cv2.putText(out, str(int(i)), (c[0] + r + 2, c[1] - r), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale,
                    (0, 255, 0), max(1, int(scale)), cv2.LINE_AA)
    return np.ascontiguousarray(out[:, :, ::-1])


def plot_curves(path: Path, runs: dict[str, list[dict]]) -> None:
    """Training curves: loss and validation error per run, kept keypoints of the mask run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, hist in runs.items():
        if not hist:
            continue
        steps = [h["step"] for h in hist]
        axes[0].plot(steps, [h["loss"] for h in hist], label=name)
        axes[1].plot(steps, [h["val_mse"] for h in hist], label=name)
        if "kept" in hist[0]:
            axes[2].plot(steps, [h["kept"] for h in hist], label=name)
    axes[0].set_title("training loss")
    axes[1].set_title("validation error (normalised MSE)")
    axes[2].set_title("kept keypoints (p > threshold)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
