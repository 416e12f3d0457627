"""Simulator figures: physics speed, render speed, expert episodes, pixel coverage.

    python benchmarks/bench_sim.py                 # everything (about 1-2 min on one core)
    python benchmarks/bench_sim.py --episodes 10   # quicker success-rate estimate
    python benchmarks/bench_sim.py --only physics render

Prints:
* physics steps per second (arm holding its pose, objects resting);
* rendered frames per second at 320x240 and 640x480, colour only and
  colour + depth (EGL, shadows and multisampling off);
* seconds per scripted-expert episode, without rendering and with
  640x480 colour + depth at every control step;
* expert success rate over N seeded episodes per task under RP;
* pixels covered by each task object at the default resolution (segmentation
  rendering), nominal pose and mean over RP seeds.

Timings are wall-clock on whatever machine runs this; on a shared machine
they are noisy (report the machine and its load with them).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from atk_bringup.sim.env import SimConfig, SimEnv  # noqa: E402
from atk_bringup.sim.tasks import TASKS  # noqa: E402

# task -> bodies whose pixels we count (what a tracker must follow)
OBJECTS = {"sushi": ("sushi", "plate"), "glass_lid": ("lid", "pot"), "clock_button": ("clock", "button"),
           "clock_hand": ("wall_clock", "minute_hand")}


def bench_physics(n_steps: int) -> None:
    print("\n== physics steps per second (timestep 2 ms) ==")
    env = SimEnv(SimConfig(render=False))
    for task in TASKS:
        env.reset(task=task, seed=0)
        m, d = env.model, env.data
        t0 = time.perf_counter()
        for _ in range(n_steps):
            mujoco.mj_step(m, d)
        dt = time.perf_counter() - t0
        print(f"{task:14s} {n_steps / dt:10.0f} steps/s  ({n_steps / dt * m.opt.timestep:6.1f}x real time)")
    env.close()


def bench_render(n_frames: int) -> None:
    print("\n== rendered frames per second (sushi scene) ==")
    for w, h in ((320, 240), (640, 480)):
        for depth in (False, True):
            env = SimEnv(SimConfig(width=w, height=h, render_depth=depth))
            env.reset(task="sushi", seed=0, perturbations=("RP", "RO"))
            env.render()  # warm-up (texture upload)
            t0 = time.perf_counter()
            for _ in range(n_frames):
                env.render()
            dt = time.perf_counter() - t0
            print(f"{w}x{h} {'rgb+depth' if depth else 'rgb      '} {n_frames / dt:8.1f} frames/s")
            env.close()


def bench_experts(episodes: int) -> None:
    print(f"\n== scripted experts: {episodes} seeded episodes per task under RP (no rendering) ==")
    env = SimEnv(SimConfig(render=False))
    for task in TASKS:
        ok, steps, t0 = 0, [], time.perf_counter()
        for seed in tqdm(range(episodes), desc=task, leave=False):
            env.reset(task=task, seed=seed, perturbations=("RP",))
            while not env.done:
                env.step(env.expert_action())
            ok += env.success()
            steps.append(env.steps)
        dt = (time.perf_counter() - t0) / episodes
        print(f"{task:14s} success {ok}/{episodes} = {100 * ok / episodes:5.1f}%  "
              f"{dt:6.3f} s/episode  mean {np.mean(steps):5.1f} control steps ({np.mean(steps) / env.config.control_hz:4.1f} s sim)")
    env.close()
    print("\n== expert episode with 640x480 rgb+depth rendered at every step (3 seeds per task) ==")
    env = SimEnv(SimConfig())
    for task in TASKS:
        t0 = time.perf_counter()
        for seed in range(3):
            env.reset(task=task, seed=seed, perturbations=("RP",))
            while not env.done:
                env.step(env.expert_action())
        print(f"{task:14s} {(time.perf_counter() - t0) / 3:6.3f} s/episode")
    env.close()


def bench_coverage(seeds: int) -> None:
    print(f"\n== pixels covered by task objects at 640x480 (nominal; mean/min over {seeds} RP seeds) ==")
    env = SimEnv(SimConfig(render_depth=False))
    for task, bodies in OBJECTS.items():
        env.reset(task=task, seed=0)
        ids = [env.model.body(b).id for b in bodies]
        nominal = [int((env.render_segmentation() == i).sum()) for i in ids]
        counts = []
        for seed in range(seeds):
            env.reset(task=task, seed=seed, perturbations=("RP",))
            seg = env.render_segmentation()
            counts.append([int((seg == i).sum()) for i in ids])
        counts = np.array(counts)
        for j, b in enumerate(bodies):
            print(f"{task:14s} {b:8s} nominal {nominal[j]:6d} px   RP mean {counts[:, j].mean():8.0f}  "
                  f"min {counts[:, j].min():6d}")
    env.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=50, help="expert episodes per task for the success rate")
    ap.add_argument("--steps", type=int, default=20000, help="physics steps timed per task")
    ap.add_argument("--frames", type=int, default=100, help="frames timed per resolution")
    ap.add_argument("--only", nargs="+", choices=("physics", "render", "experts", "coverage"),
                    default=("physics", "render", "experts", "coverage"))
    args = ap.parse_args()
    print(f"mujoco {mujoco.__version__}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}, {os.cpu_count()} CPUs")
    if "physics" in args.only:
        bench_physics(args.steps)
    if "render" in args.only:
        bench_render(args.frames)
    if "experts" in args.only:
        bench_experts(args.episodes)
    if "coverage" in args.only:
        bench_coverage(20)


if __name__ == "__main__":
    main()
