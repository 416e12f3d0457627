"""h_C transfer onto new simulated scenes: a ~20x25 px nigiri and a ~70x50 px plate, moved and turned.

SIFT alone found almost no features on the nigiri at 320x240 and put its
points 19-188 px off; the appearance search (object_search.py) must place
them within 3 px, confidently, also under new background, distractors and
light. Ground truth comes from the object's true pose in the simulator.
The plate (round, the place target) moved nearer to the camera is seen less
foreshortened; the search used to put its points turned about its centre
(37-46 px) with confidence ~1: now right, or at least not confident.
"""
from __future__ import annotations

import numpy as np
import pytest

from atk_perception.cpu_tracker import CpuTracker

sim_env = pytest.importorskip("atk_bringup.sim.env")


def _project(env, pw: np.ndarray) -> np.ndarray:
    tinv = np.linalg.inv(env.camera_pose)
    pc = (tinv[:3, :3] @ pw.T).T + tinv[:3, 3]
    uv = (env.intrinsics @ pc.T).T
    return uv[:, :2] / uv[:, 2:3]


def _scenes(body: str, episodes) -> tuple:
    """Template RGB, 12 points (12, 2) on ``body``, {name: (RGB, true points (12, 2))}."""
    env = sim_env.SimEnv(sim_env.SimConfig(width=320, height=240))
    obs0 = env.reset("sushi", seed=0, perturbations=("RP",))
    bid = env.model.body(body).id
    ys, xs = np.nonzero(env.render_segmentation() == bid)
    idx = np.random.default_rng(0).choice(len(xs), 12, replace=False)
    pts = np.stack([xs[idx], ys[idx]], 1).astype(np.float32)
    k, t = env.intrinsics, env.camera_pose
    z = obs0.depth_mm[ys[idx], xs[idx]] / 1000.0
    pc = np.stack([(pts[:, 0] - k[0, 2]) * z / k[0, 0], (pts[:, 1] - k[1, 2]) * z / k[1, 1], z], 1)
    pw = (t[:3, :3] @ pc.T).T + t[:3, 3]
    r0, t0 = env.data.xmat[bid].reshape(3, 3).copy(), env.data.xpos[bid].copy()
    body_pts = (r0.T @ (pw - t0).T).T
    out = {}
    for name, seed, conds in episodes:
        obs = env.reset("sushi", seed=seed, perturbations=conds)
        r, tt = env.data.xmat[bid].reshape(3, 3), env.data.xpos[bid]
        out[name] = (obs.rgb, _project(env, (r @ body_pts.T).T + tt))
    env.close()
    return obs0.rgb, pts, out


@pytest.fixture(scope="module")
def scenes():
    return _scenes("sushi", (("RP", 10001, ("RP",)),
                             ("all", 10003, ("RP", "RB", "RO", "LIGHT"))))


@pytest.fixture(scope="module")
def plate_scenes():
    # 10006: nearer the camera and turned by ~115 degrees (the old search
    # answered 46 px off with confidence 1); 10008: under every perturbation.
    return _scenes("plate", (("near", 10006, ("RP",)),
                             ("all", 10008, ("RP", "RB", "RO", "LIGHT"))))


@pytest.mark.parametrize("fixture,condition", [("scenes", "RP"), ("scenes", "all"),
                                               ("plate_scenes", "near"), ("plate_scenes", "all")])
def test_transfer_places_the_moved_object(request, fixture, condition):
    """The nigiri (moved and turned) and the plate (moved, not turned)."""
    template, pts, targets = request.getfixturevalue(fixture)
    image, truth = targets[condition]
    # The object really moved: staying put would be far off.
    assert np.median(np.linalg.norm(pts - truth, axis=1)) > 20
    out, conf = CpuTracker().transfer(template, pts, image)
    err = np.linalg.norm(out - truth, axis=1)
    assert np.median(err) <= 3.0, err
    assert np.median(conf) > 0.5, conf
