"""Fusion of a re-anchoring with the tracked points, by their variances; runs
inline or on a snapshot in the tracker's worker thread."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atk_perception.cpu_tracker.anchoring import AnchorResult, Features, SiftAnchor
from atk_perception.cpu_tracker.config import CpuTrackerConfig


@dataclass
class Fused:
    """Outcome of fusing a re-anchoring with the track at one frame (all (N, ...) per point)."""

    points: np.ndarray
    var: np.ndarray
    anchor_conf: np.ndarray
    result: AnchorResult | None


@dataclass
class Template:
    """What re-anchoring matches against: the reset image (H, W), its points (N, 2), its SIFT features."""

    gray: np.ndarray
    points: np.ndarray
    features: Features


def fuse_job(cfg: CpuTrackerConfig, tpl: Template, g: np.ndarray, tracked: np.ndarray,
              visible: np.ndarray, var: np.ndarray, anchor_conf: np.ndarray) -> Fused:
    """Background re-anchoring: its own SiftAnchor (OpenCV objects are not shared across threads)."""
    return fuse(SiftAnchor(cfg), cfg, tpl, g, tracked, visible, var, anchor_conf)


def _anchor_looks_better(anchor: SiftAnchor, cfg: CpuTrackerConfig, tpl: Template,
                         g: np.ndarray, i: int, res: AnchorResult,
                         tracked: np.ndarray, track_visible: bool) -> bool:
    """Whether point ``i``'s anchor should replace its (disagreeing or lost) track.

    Geometry alone is not enough: when a moved object has too few matches
    to form its own motion group, the only candidate is the table's, and
    it would drag the point back to where the object used to be. So the
    anchor must look like the template (NCC above ``ncc_min``) and, if
    the track is alive, at least as much as the tracked position does.
    """
    ncc_anchor = float(res.ncc[i])
    if np.isnan(ncc_anchor):
        return True  # flat template patch: appearance cannot decide
    if ncc_anchor <= cfg.ncc_min:
        return False
    if not track_visible:
        return True
    ncc_track = anchor.ncc_at(tpl.gray, g, tpl.points[i], tracked, res.linear[i])
    return ncc_track is None or ncc_anchor >= ncc_track


def fuse(anchor: SiftAnchor, cfg: CpuTrackerConfig, tpl: Template, g: np.ndarray,
          tracked: np.ndarray, visible: np.ndarray, var: np.ndarray, anchor_conf: np.ndarray,
          feats: Features | None = None) -> Fused:
    """Fuse the tracked points (N, 2) on ``g`` with their re-anchoring to ``tpl``.

    ``visible`` (N,) bool, ``var`` (N,) px^2 and ``anchor_conf`` (N,) are the
    track's state at ``g``; they are not modified (the result holds the new
    values), so this runs on a snapshot in a worker thread as well as inline.
    ``feats``: the SIFT features of ``g`` when already detected (split mode).
    """
    if feats is None:
        feats = anchor.features(g, tracked, 1.0, cfg.reanchor_sift_pixels)
    src, dst = anchor.match(tpl.features, feats)
    res = anchor.anchor(src, dst, tpl.points, tpl.gray, g, prior=tracked, prior_ok=visible)
    out = tracked.copy()
    var = var.astype(np.float32)  # a copy
    anchor_conf = anchor_conf.astype(np.float32)
    for i in range(len(out)):
        if not res.found[i]:
            continue
        agree = np.hypot(*(res.points[i] - tracked[i])) <= cfg.prior_gate_px
        if visible[i] and agree:
            vt, va = float(var[i]), float(res.variance[i])
            wa = vt / (vt + va)
            out[i] = tracked[i] + wa * (res.points[i] - tracked[i])
            var[i] = vt * va / (vt + va)
            anchor_conf[i] = max(float(res.confidence[i]), 0.0)
        elif res.geometric[i] >= cfg.jump_min_confidence and _anchor_looks_better(
                anchor, cfg, tpl, g, i, res, tracked[i], visible[i]):
            # The track was lost or went astray (e.g. followed an occluder
            # or a look-alike): the matches around the point say where it
            # is, and the template looks at least as much like it there.
            out[i] = res.points[i]
            var[i] = res.variance[i]
            anchor_conf[i] = float(res.confidence[i])
        else:
            anchor_conf[i] *= cfg.disagree_confidence_factor
    return Fused(out, var, anchor_conf, res)
