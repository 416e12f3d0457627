"""h_C ``transfer`` from the canonical template to new simulated sushi scenes.

Renders the canonical scene (seed 0, RP), samples 12 points per object
(salmon nigiri, plate, tamago) from the segmentation, and for 10 other
scenes (seeds 10001-10010) under RP, RP+RB, RP+RB+RO, RP+RB+RO+LIGHT
computes their true pixel positions from the objects' true poses (points
lifted with the template depth into the body frame, moved with the body,
projected). Prints the per-episode median transfer error (px), the median
confidence, episodes under 3 px, and the time per transfer.

    python benchmarks/bench_transfer_sim.py [--width 320 --height 240]
        [--objects sushi plate tamago] [--config '{"search": false}'] [--geometry]
        [--all-points 64]

``--geometry``: the tracker is given the canonical frame's depth and the
camera pose (``set_template_geometry``), as the tracker node and propagation
do, so the transfer uses the table search (docs/perception.md, "Table search").
``--all-points N``: besides the per-object runs, N points on the three
objects and the table transferred in one call (the issue's 64 points at
640x480 target: at most 1 s median); prints the median / p90 seconds.

Timings are wall-clock on a shared machine (noisy).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from atk_bringup.sim.env import SimEnv, SimConfig
from atk_perception.backends import make_correspondence

CONDITIONS = (("RP",), ("RP", "RB"), ("RP", "RB", "RO"), ("RP", "RB", "RO", "LIGHT"))


def project(env: SimEnv, pw: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> pixels (N, 2)."""
    tinv = np.linalg.inv(env.camera_pose)
    pc = (tinv[:3, :3] @ pw.T).T + tinv[:3, 3]
    uv = (env.intrinsics @ pc.T).T
    return uv[:, :2] / uv[:, 2:3]


def template_points(env: SimEnv, obs, body: str, n: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """n pixels (n, 2) on ``body`` in the current render and the same points in its body frame (n, 3)."""
    bid = env.model.body(body).id
    seg = env.render_segmentation()
    ys, xs = np.nonzero(seg == bid)
    idx = np.random.default_rng(seed).choice(len(xs), n, replace=False)
    pts = np.stack([xs[idx], ys[idx]], 1).astype(np.float32)
    k, t = env.intrinsics, env.camera_pose
    z = obs.depth_mm[ys[idx], xs[idx]] / 1000.0
    pc = np.stack([(pts[:, 0] - k[0, 2]) * z / k[0, 0], (pts[:, 1] - k[1, 2]) * z / k[1, 1], z], 1)
    pw = (t[:3, :3] @ pc.T).T + t[:3, 3]
    r0, t0 = env.data.xmat[bid].reshape(3, 3).copy(), env.data.xpos[bid].copy()
    return pts, (r0.T @ (pw - t0).T).T


def true_pixels(env: SimEnv, body: str, pb: np.ndarray) -> np.ndarray:
    bid = env.model.body(body).id
    r, t = env.data.xmat[bid].reshape(3, 3), env.data.xpos[bid]
    return project(env, (r @ pb.T).T + t)


def time_all_points(env: SimEnv, obs0, hc, n: int, episodes: int) -> None:
    """Seconds per transfer of ``n`` points (a quarter on each object, the rest on the table)."""
    per = n // 4
    pts = [template_points(env, obs0, b, per, seed=1)[0] for b in ("sushi", "plate", "tamago")]
    rng = np.random.default_rng(2)
    h, w = obs0.rgb.shape[:2]
    rest = n - 3 * per
    pts.append(np.stack([rng.uniform(0.1 * w, 0.9 * w, rest), rng.uniform(0.5 * h, 0.95 * h, rest)], 1))
    pts_a = np.vstack(pts).astype(np.float32)
    secs = []
    for k in range(1, episodes + 1):
        obs = env.reset("sushi", seed=10000 + k, perturbations=("RP",))
        t = time.perf_counter()
        hc.transfer(obs0.rgb, pts_a, obs.rgb)
        secs.append(time.perf_counter() - t)
    print(f"--- {n} points in one transfer, {len(secs)} RP scenes: median {np.median(secs):.2f} s, "
          f"p90 {np.percentile(secs, 90):.2f} s, max {max(secs):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--objects", nargs="+", default=["sushi", "plate", "tamago"])
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--config", default="{}", help="JSON overrides of CpuTrackerConfig")
    ap.add_argument("--geometry", action="store_true",
                    help="give the tracker the canonical depth and camera pose (table search)")
    ap.add_argument("--all-points", type=int, default=0,
                    help="also time N points on the objects and the table in one transfer")
    args = ap.parse_args()
    env = SimEnv(SimConfig(width=args.width, height=args.height))
    hc = make_correspondence("cpu", **json.loads(args.config))
    obs0 = env.reset("sushi", seed=0, perturbations=("RP",))
    if args.geometry:
        from atk_bringup.sim.model import base_t_camera
        from atk_perception.table_search import TemplateGeometry

        used = hc.set_template_geometry(obs0.rgb, TemplateGeometry(obs0.depth_mm.astype(np.float32) / 1000.0,
                                                                   env.intrinsics, base_t_camera()))
        print(f"template geometry given; table search {'on' if used else 'OFF (config)'}")
    sets = {b: template_points(env, obs0, b, 12, seed=0) for b in args.objects}
    print(f"{args.width}x{args.height}, config {args.config}")
    if args.all_points:
        time_all_points(env, obs0, hc, args.all_points, args.episodes)
    for body in args.objects:
        print(f"--- {body} (12 points)")
        right, wrong = [], []  # median confidence of episodes <= 3 px / > 3 px
        for conds in CONDITIONS:
            errs, confs, secs = [], [], []
            for k in range(1, args.episodes + 1):
                obs = env.reset("sushi", seed=10000 + k, perturbations=conds)
                gt = true_pixels(env, body, sets[body][1])
                t = time.perf_counter()
                out, conf = hc.transfer(obs0.rgb, sets[body][0], obs.rgb)
                secs.append(time.perf_counter() - t)
                errs.append(float(np.median(np.linalg.norm(out - gt, axis=1))))
                confs.append(float(np.median(conf)))
            errs_a, conf_a = np.array(errs), np.array(confs)
            right += conf_a[errs_a <= 3].tolist()
            wrong += conf_a[errs_a > 3].tolist()
            print(f"{'+'.join(conds):16s} err px {np.round(errs_a, 1)}  conf {np.round(conf_a, 2)}  "
                  f"<=3px {int((errs_a <= 3).sum())}/{len(errs)}  {np.mean(secs):.2f} s/transfer")
        print(f"confidence when right (<= 3 px, {len(right)}): min {min(right, default=np.nan):.2f}"
              f" median {np.median(right) if right else np.nan:.2f}; when wrong ({len(wrong)}):"
              f" max {max(wrong, default=np.nan):.2f} median {np.median(wrong) if wrong else np.nan:.2f}")


if __name__ == "__main__":
    main()
