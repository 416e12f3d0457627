"""ManualSelect's committed, hand-picked keypoints (config/manual_keypoints/<task>.json):
one file per task, every point on the object the file names, at the file's resolution and
after atk-demo scales it to another."""
from __future__ import annotations

import json

import mujoco
import numpy as np
import pytest

from atk_bringup.experiment.demo import DemoConfig, manual_points_file
from atk_bringup.graph_tools.graph import config_path
from atk_bringup.sim.env import SimConfig, SimEnv
from atk_bringup.sim.tasks import TASKS
from atk_policy.baselines import load_manual_points


def _bodies_under(env: SimEnv, points: np.ndarray) -> list[set[str]]:
    """Names of the bodies seen in the 3x3 pixels around each point (N, 2)."""
    seg = env.render_segmentation()
    out = []
    for x, y in np.round(points).astype(int):
        ids = {int(v) for v in seg[y - 1:y + 2, x - 1:x + 2].ravel()}
        out.append({mujoco.mj_id2name(env.model, mujoco.mjtObj.mjOBJ_BODY, i) if i >= 0 else "" for i in ids})
    return out


@pytest.mark.parametrize("size", [(320, 240), (640, 480)])
def test_every_task_has_manual_points_on_its_objects(size, tmp_path):
    w, h = size
    env = SimEnv(SimConfig(width=w, height=h, render_depth=False))
    try:
        for task in TASKS:
            doc = json.loads(config_path(f"manual_keypoints/{task}.json").read_text())
            assert doc["task"] == task
            path = manual_points_file(DemoConfig(out=tmp_path / task, task=task, width=w, height=h))
            names, pts = load_manual_points(path, (w, h))   # what atk-train reads
            assert names == [p["name"] for p in doc["points"]] and len(names) >= 4
            env.reset(task=task, seed=0, perturbations=("RP",))   # the canonical frame (demo_000)
            under = _bodies_under(env, pts)
            for p, seen in zip(doc["points"], under):
                assert seen == {p["body"]}, f"{task}: {p['name']} at {p['xy']} ({w}x{h}) lies on {seen}"
            # a task's points are on its task objects, not the table: at least two objects
            assert len({p["body"] for p in doc["points"]}) >= 2
    finally:
        env.close()
