"""Throughput of the bag path: write a simulated episode, convert it, decode its frames.

    python benchmarks/bags_benchmark.py [--frames 300] [--width 640 --height 480]

Prints seconds and frames per second for write_episode_bag, load_episodes
(scan + alignment, no image decoded), a sequential pass over the lazy
frames and 100 random accesses. Timings depend on the machine's load (on a shared 2-core machine
they are noisy); the bag is written to a temporary folder and removed.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from atk_policy.bags import CameraInfoData, EpisodeLabel, load_episodes, write_episode_bag


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    T, W, H = a.frames, a.width, a.height
    stamps = 1000.0 + np.arange(T) / 30.0
    base = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    images = [np.roll(base, t, axis=1) for t in range(T)]
    joints = np.c_[rng.normal(size=(T, 6)), np.linspace(0, 1, T)]
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / "bench"
        t0 = time.perf_counter()
        write_episode_bag(bag, stamps=stamps, images=images, camera_info=CameraInfoData.pinhole(W, H, 600.0),
                          joint_states=joints, joint_targets=joints[:, :6], gripper_commands=joints[:, 6],
                          label=EpisodeLabel(success=True))
        t_write = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in bag.iterdir()) / 1e6
        t0 = time.perf_counter()
        (ep,), _ = load_episodes(bag)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        for t in range(len(ep)):
            ep.frames[t]
        t_frames = time.perf_counter() - t0
        order = np.random.default_rng(1).permutation(len(ep))[:100]
        clone = type(ep.frames).__new__(type(ep.frames))  # fresh cache entries: a cold random pass
        clone.__setstate__(ep.frames.__getstate__())
        t0 = time.perf_counter()
        for t in order:
            clone[int(t)]
        t_random = time.perf_counter() - t0
        ok = all(np.array_equal(ep.frames[t], images[t]) for t in range(len(ep) - 8, len(ep)))
    print(f"episode: {T} frames {W}x{H} rgb8, bag {size_mb:.0f} MB (MCAP, uncompressed)")
    print(f"write_episode_bag: {t_write:.2f} s ({T / t_write:.0f} frames/s)")
    print(f"load_episodes (scan, align, no decode): {t_load:.2f} s ({T / t_load:.0f} frames/s)")
    print(f"sequential frame decode: {t_frames:.2f} s ({T / t_frames:.0f} frames/s), "
          f"{ep.frames.reads} bag passes, last frames equal: {ok}")
    print(f"random frame access (100 cold frames): {t_random:.2f} s ({len(order) / t_random:.0f} frames/s)")


if __name__ == "__main__":
    main()
