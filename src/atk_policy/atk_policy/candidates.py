"""Candidate keypoints on the canonical image I_can (Algorithm 1, first step).

ROS-free. :func:`sample_candidates` returns C points (C, 2) float32 pixels
(x right, y down) inside the image, at least ``border_px`` from its edge and
inside an optional region-of-interest mask:

* ``grid``: a uniform grid over the allowed area (the near-square grid with
  at least C allowed nodes, then C of them evenly spread);
* ``random``: uniform random allowed pixels, seeded, with a minimum spacing;
* ``texture``: Shi-Tomasi corners (good to track), then SIFT keypoints, then
  random points to reach C; the sources used are reported in ``info``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import CandidateConfig


class CandidateError(ValueError):
    """Cannot sample candidates (ROI too small, bad image); says why."""


@dataclass
class Candidates:
    """points (C, 2) float32 pixels on I_can; source[i] says how point i was found."""

    points: np.ndarray
    source: list[str]
    info: dict = field(default_factory=dict)


def _allowed_mask(shape: tuple[int, int], border: int, roi: np.ndarray | None) -> np.ndarray:
    h, w = shape
    allowed = np.zeros((h, w), bool)
    if border * 2 >= min(h, w):
        raise CandidateError(f"border_px {border} leaves no room in a {w}x{h} image")
    allowed[border:h - border, border:w - border] = True
    if roi is not None:
        roi = np.asarray(roi)
        if roi.shape != (h, w):
            raise CandidateError(f"ROI mask is {roi.shape}, the canonical image is {(h, w)} (H, W)")
        allowed &= roi.astype(bool)
    return allowed


def _spaced(points: np.ndarray, existing: np.ndarray, min_dist: float, limit: int) -> np.ndarray:
    """Greedily keep points at least ``min_dist`` from each other and from ``existing``."""
    kept = list(existing)
    out = []
    for p in points:
        if len(out) >= limit:
            break
        if min_dist > 0 and kept and np.min(np.hypot(*(np.asarray(kept) - p).T)) < min_dist:
            continue
        kept.append(p)
        out.append(p)
    return np.asarray(out, np.float32).reshape(-1, 2)


def _grid(allowed: np.ndarray, c: int) -> np.ndarray:
    h, w = allowed.shape
    ys, xs = np.nonzero(allowed)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    aspect = (x1 - x0 + 1) / (y1 - y0 + 1)
    n = c
    for _ in range(200):
        nx = max(1, int(round(np.sqrt(n * aspect))))
        ny = max(1, int(np.ceil(n / nx)))
        gx = np.linspace(x0, x1, nx + 2)[1:-1] if nx > 1 else np.array([(x0 + x1) / 2])
        gy = np.linspace(y0, y1, ny + 2)[1:-1] if ny > 1 else np.array([(y0 + y1) / 2])
        pts = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
        ok = allowed[np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)]
        pts = pts[ok]
        if len(pts) >= c:
            idx = np.round(np.linspace(0, len(pts) - 1, c)).astype(int)
            return pts[idx].astype(np.float32)
        n = int(n * 1.25) + 1
    raise CandidateError(f"could not place {c} grid candidates inside the allowed region")


def _random(allowed: np.ndarray, c: int, rng: np.random.Generator, min_dist: float,
            existing: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(allowed)
    order = rng.permutation(len(xs))[: max(50 * c, 1000)]
    pts = np.stack([xs[order], ys[order]], 1).astype(np.float32)
    out = _spaced(pts, existing, min_dist, c)
    if len(out) < c:  # region too small for the spacing: relax it rather than fail
        out = np.concatenate([out, _spaced(pts, np.concatenate([existing, out]), 0.0, c - len(out))])
    return out


def sample_candidates(image: np.ndarray, cfg: CandidateConfig | None = None,
                      roi_mask: np.ndarray | None = None) -> Candidates:
    """Sample ``cfg.num_candidates`` points on ``image`` (H, W, 3) uint8 RGB.

    roi_mask: optional (H, W) bool/uint8, nonzero where candidates may lie.
    """
    import cv2

    cfg = cfg or CandidateConfig()
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise CandidateError(f"canonical image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    c = cfg.num_candidates
    allowed = _allowed_mask(img.shape[:2], cfg.border_px, roi_mask)
    n_allowed = int(allowed.sum())
    if n_allowed < c:
        raise CandidateError(f"only {n_allowed} pixels are allowed (border {cfg.border_px} px and ROI), "
                             f"fewer than the {c} candidates asked for")
    rng = np.random.default_rng(cfg.seed)
    info: dict = {"method": cfg.method, "allowed_pixels": n_allowed}
    if cfg.method == "grid":
        pts = _grid(allowed, c)
        return Candidates(pts, ["grid"] * c, info)
    if cfg.method == "random":
        pts = _random(allowed, c, rng, cfg.min_distance_px, np.zeros((0, 2), np.float32))
        return Candidates(pts, ["random"] * len(pts), info)
    # texture: corners first (the best to track), then SIFT, then random fill.
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    mask8 = allowed.astype(np.uint8) * 255
    corners = cv2.goodFeaturesToTrack(gray, maxCorners=c, qualityLevel=0.01,
                                      minDistance=max(1.0, cfg.min_distance_px), mask=mask8)
    pts = (np.zeros((0, 2), np.float32) if corners is None else corners.reshape(-1, 2).astype(np.float32))
    source = ["corner"] * len(pts)
    if len(pts) < c:
        sift = cv2.SIFT_create(nfeatures=4 * c)
        kps = sift.detect(gray, mask8)
        kps = sorted(kps, key=lambda k: -k.response)
        sp = np.asarray([k.pt for k in kps], np.float32).reshape(-1, 2)
        if len(sp):
            ok = allowed[np.clip(np.round(sp[:, 1]).astype(int), 0, allowed.shape[0] - 1),
                         np.clip(np.round(sp[:, 0]).astype(int), 0, allowed.shape[1] - 1)]
            extra = _spaced(sp[ok], pts, cfg.min_distance_px, c - len(pts))
            pts = np.concatenate([pts, extra])
            source += ["sift"] * len(extra)
    if len(pts) < c:
        extra = _random(allowed, c - len(pts), rng, cfg.min_distance_px, pts)
        pts = np.concatenate([pts, extra])
        source += ["random"] * len(extra)
    info["sources"] = {s: source.count(s) for s in sorted(set(source))}
    return Candidates(pts[:c].astype(np.float32), source[:c], info)
