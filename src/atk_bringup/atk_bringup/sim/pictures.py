"""`atk-sim-pictures`: save one PNG per task and perturbation set.

    atk-sim-pictures --out /tmp/sim_pictures            # every task x {none, RP, RB, RO, LIGHT, all}
    atk-sim-pictures --tasks sushi --sets RB RO,LIGHT --seed 3

A set is a comma-separated list of perturbation names ("none" for nominal).
Files are named <task>__<set>__seed<seed>.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_SETS = ("none", "RP", "RB", "RO", "LIGHT", "RP,RB,RO,LIGHT")


def _parse_set(text: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in names:
        if n not in choices:
            raise argparse.ArgumentTypeError(f"unknown perturbation {n!r} in {text!r}; choose from {list(choices)}")
    return names


def main(argv: list[str] | None = None) -> int:
    # Parse (and answer --help) before importing mujoco / creating an EGL context.
    from atk_bringup.sim.perturbations import PERTURBATIONS
    from atk_bringup.sim.tasks import TASKS

    ap = argparse.ArgumentParser(prog="atk-sim-pictures", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("sim_pictures"), help="output folder (created)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="tasks to render")
    ap.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS),
                    help=f"perturbation sets, e.g. RB or RP,RO (choices {list(PERTURBATIONS)}; 'none' = nominal)")
    ap.add_argument("--seed", type=int, default=0, help="episode seed")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--expert-steps", type=int, default=0,
                    help="run the scripted expert this many control steps before the picture")
    args = ap.parse_args(argv)
    try:
        sets = [_parse_set(s, PERTURBATIONS) for s in args.sets]
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))

    import cv2
    from tqdm import tqdm

    from atk_bringup.sim.env import SimConfig, SimEnv

    args.out.mkdir(parents=True, exist_ok=True)
    env = SimEnv(SimConfig(width=args.width, height=args.height, render_depth=False))
    try:
        jobs = [(t, s) for t in args.tasks for s in sets]
        for task, pset in tqdm(jobs, desc="pictures", unit="png"):
            obs = env.reset(task=task, seed=args.seed, perturbations=pset)
            for _ in range(args.expert_steps):
                if env.done:
                    break
                obs = env.step(env.expert_action())
            name = f"{task}__{'-'.join(pset) or 'none'}__seed{args.seed}.png"
            cv2.imwrite(str(args.out / name), cv2.cvtColor(obs.rgb, cv2.COLOR_RGB2BGR))
    finally:
        env.close()
    print(f"wrote {len(jobs)} pictures to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
