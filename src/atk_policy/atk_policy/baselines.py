"""Keypoint-selection baselines trained with the same trainer as ATK.

ROS-free.

* FullSet: all C candidates, no mask.
* RandomSelect: N candidates drawn uniformly without replacement (seeded).
* ManualSelect: N points given on the canonical image (by an operator or a
  language model) in a small JSON file::

      {"image_size": [W, H],                      # optional, checked if given
       "points": [{"name": "handle", "xy": [x, y]}, ...]}

  Manual points are not candidates: they are propagated through the
  episodes like candidates (Algorithm 1) and the policy is trained on them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


class BaselineError(ValueError):
    """Bad baseline input (manual points file, N > C); says what."""


def full_set_ids(num_candidates: int) -> np.ndarray:
    """FullSet: every candidate id, (C,)."""
    return np.arange(int(num_candidates))


def random_select_ids(num_candidates: int, n: int, seed: int) -> np.ndarray:
    """RandomSelect: N distinct candidate ids drawn with ``seed``, (N,) sorted."""
    if n > num_candidates:
        raise BaselineError(f"RandomSelect: N = {n} is larger than C = {num_candidates}; C must be >= N")
    if n < 1:
        raise BaselineError(f"RandomSelect: N must be >= 1, got {n}")
    return np.sort(np.random.default_rng(seed).choice(num_candidates, size=n, replace=False))


def load_manual_points(path: str | Path, image_size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    """ManualSelect: (names, points (N, 2) float32 pixels) from a JSON file (see module docstring)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise BaselineError(f"cannot read manual keypoints file {p}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BaselineError(f"manual keypoints file {p} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("points"), list) or not doc["points"]:
        raise BaselineError(f"{p}: expected {{\"points\": [{{\"name\": ..., \"xy\": [x, y]}}, ...]}} "
                            f"with at least one point")
    w, h = image_size
    if "image_size" in doc and list(doc["image_size"]) != [w, h]:
        raise BaselineError(f"{p}: points were given on a {doc['image_size']} image, the canonical image is "
                            f"[{w}, {h}]")
    names, pts = [], []
    for k, item in enumerate(doc["points"]):
        if not isinstance(item, dict) or "xy" not in item:
            raise BaselineError(f"{p}: points[{k}] must be an object with \"xy\": [x, y]")
        xy = item["xy"]
        if (not isinstance(xy, (list, tuple)) or len(xy) != 2
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in xy)):
            raise BaselineError(f"{p}: points[{k}].xy must be two finite numbers, got {xy!r}")
        if not (0 <= xy[0] <= w - 1 and 0 <= xy[1] <= h - 1):
            raise BaselineError(f"{p}: points[{k}].xy = {list(xy)} lies outside the {w}x{h} canonical image")
        names.append(str(item.get("name", f"manual{k}")))
        pts.append([float(xy[0]), float(xy[1])])
    if len(set(names)) != len(names):
        raise BaselineError(f"{p}: point names must be distinct, got {names}")
    return names, np.asarray(pts, np.float32)
