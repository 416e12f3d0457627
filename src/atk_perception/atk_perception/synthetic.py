"""Synthetic image sequences with ground-truth point motion (ROS-free).

Used by the perception tests and by ``benchmarks/bench_perception.py`` to
measure drift and transfer error where the true motion is known. A texture
(a procedural one, or a real photograph) is warped by a known homography per
frame; perturbations are layered on top:

* ``rotation``: in-plane rotation to 35 degrees, plus translation;
* ``scale``: zoom in to 1.35x, plus translation (and 6 degrees of rotation);
* ``lighting``: gain 1 -> 0.55, offset, and a moving illumination gradient;
  every kind also translates (about 30 px) and rotates (6 degrees) without
  coming back, so the last frame shows the accumulated drift;
* ``distractors``: moving textured patches cut from the same texture (they
  look like the scene, which is what confuses matching); they can hide points;
* ``occlusion``: a flat bar that sweeps over part of the points.

Ground truth: ``points`` (T, N, 2) float32 pixels and ``visible`` (T, N) bool
(False where an occluder or distractor covers the point).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PERTURBATIONS = ("rotation", "scale", "lighting", "distractors", "occlusion")


@dataclass
class Sequence:
    """frames: list of T (H, W, 3) uint8 RGB; points: (T, N, 2) float32; visible: (T, N) bool."""

    frames: list[np.ndarray]
    points: np.ndarray
    visible: np.ndarray


def procedural_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A (H, W, 3) uint8 texture of random shapes over multi-scale noise (corner-rich)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for scale in (4, 16, 64):
        small = rng.uniform(0, 255, (max(2, height // scale), max(2, width // scale), 3))
        img += cv2.resize(small.astype(np.float32), (width, height),
                          interpolation=cv2.INTER_CUBIC) / 3.0
    img = np.clip(img, 0, 255).astype(np.uint8)
    n_shapes = int(height * width / 1500)
    for _ in range(n_shapes):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(3, 18))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), r, color, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (x - r, y - r // 2), (x + r, y + r // 2), color, -1)
    return cv2.GaussianBlur(img, (3, 3), 0.8)


def _homography(angle_deg: float, scale: float, tx: float, ty: float,
                center: tuple[float, float]) -> np.ndarray:
    a = cv2.getRotationMatrix2D(center, angle_deg, scale)
    h = np.eye(3)
    h[:2] = a
    h[0, 2] += tx
    h[1, 2] += ty
    return h


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.hstack([pts, np.ones((len(pts), 1))]) @ h.T
    return (p[:, :2] / p[:, 2:3]).astype(np.float32)


def textured_points(image: np.ndarray, n: int, seed: int = 0, margin: int = 40) -> np.ndarray:
    """N (N, 2) float32 points on well-textured spots of ``image``, away from its border."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    mask = np.zeros(gray.shape, np.uint8)
    mask[margin:-margin, margin:-margin] = 255
    corners = cv2.goodFeaturesToTrack(gray, maxCorners=max(4 * n, 50), qualityLevel=0.01,
                                      minDistance=12, mask=mask)
    if corners is None or len(corners) < n:
        raise ValueError(f"only {0 if corners is None else len(corners)} textured points "
                         f"found, {n} requested")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(corners), n, replace=False)
    # Offset from the exact corner: keypoints are arbitrary surface points,
    # not necessarily the spots LK likes best.
    pts = corners[idx, 0, :] + rng.uniform(-3, 3, (n, 2))
    return pts.astype(np.float32)


def make_sequence(kind: str, n_frames: int = 100, size: tuple[int, int] = (640, 480),
                  n_points: int = 16, seed: int = 0,
                  texture: np.ndarray | None = None) -> Sequence:
    """A ground-truth sequence of ``kind`` (one of PERTURBATIONS), ``size`` = (W, H).

    ``texture``: (h, w, 3) uint8 RGB to warp (e.g. a real photograph); it is
    resized to 1.5x the frame size. Default: :func:`procedural_texture`.
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"kind {kind!r}: expected one of {PERTURBATIONS}")
    w, h = size
    rng = np.random.default_rng(seed)
    cw, ch = int(1.5 * w), int(1.5 * h)
    if texture is None:
        canvas = procedural_texture(ch, cw, seed)
    else:
        canvas = cv2.resize(texture, (cw, ch), interpolation=cv2.INTER_CUBIC)
    # Canvas centre onto frame centre.
    base = np.array([[1, 0, -(cw - w) / 2], [0, 1, -(ch - h) / 2], [0, 0, 1]], float)
    center = (w / 2.0, h / 2.0)
    phase = rng.uniform(0, 2 * np.pi, 4)

    def motion(t: float) -> np.ndarray:
        # The pose drifts away from the start and does not come back, so the
        # error after the last frame measures accumulated drift.
        s = t / max(1, n_frames - 1)
        tx = 30 * s + 12 * np.sin(3 * np.pi * s + phase[0]) - 12 * np.sin(phase[0])
        ty = -20 * s + 10 * np.sin(3 * np.pi * s + phase[1]) - 10 * np.sin(phase[1])
        ramp = np.sin(0.5 * np.pi * s)
        angle, scale = 6 * ramp, 1.0
        if kind == "rotation":
            angle = 35 * ramp
        elif kind == "scale":
            scale = 1.0 + 0.35 * ramp
        return _homography(angle, scale, tx, ty, center) @ base

    frames: list[np.ndarray] = []
    h0 = motion(0)
    first = cv2.warpPerspective(canvas, h0, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
    pts0 = textured_points(first, n_points, seed)
    canvas_pts = _apply(np.linalg.inv(h0), pts0)
    gt = np.zeros((n_frames, n_points, 2), np.float32)
    vis = np.ones((n_frames, n_points), bool)

    # Distractor patches: cut from the texture itself, moving on straight lines.
    patches = []
    if kind == "distractors":
        for _ in range(4):
            pw, ph = int(rng.integers(40, 80)), int(rng.integers(40, 80))
            x0, y0 = int(rng.integers(0, cw - pw)), int(rng.integers(0, ch - ph))
            # Start where no keypoint is hidden: the first frame is the
            # template, and a keypoint defined on a distractor would belong
            # to the distractor.
            for _attempt in range(200):
                start = rng.uniform([0, 0], [w - pw, h - ph])
                inside = ((pts0[:, 0] >= start[0] - 3) & (pts0[:, 0] <= start[0] + pw + 3)
                          & (pts0[:, 1] >= start[1] - 3) & (pts0[:, 1] <= start[1] + ph + 3))
                if not inside.any():
                    break
            vel = rng.uniform(-4, 4, 2)
            patches.append((canvas[y0:y0 + ph, x0:x0 + pw].copy(), start, vel))

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for t in range(n_frames):
        ht = motion(t)
        frame = cv2.warpPerspective(canvas, ht, (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT)
        pts = _apply(ht, canvas_pts)
        gt[t] = pts
        cover = np.zeros((h, w), np.uint8)
        if kind == "lighting":
            s = t / max(1, n_frames - 1)
            gain = 1.0 - 0.45 * s
            grad = 40 * s * np.cos(2 * np.pi * (xx / w) + 3 * s)
            frame = np.clip(frame.astype(np.float32) * gain + grad[..., None] + 10 * s,
                            0, 255).astype(np.uint8)
        elif kind == "distractors":
            for patch, start, vel in patches:
                ph, pw = patch.shape[:2]
                x, y = start + vel * t
                # Bounce off the image borders (a triangle wave that starts at `start`).
                x = int((w - pw) - abs((x % (2 * (w - pw))) - (w - pw))) if w > pw else 0
                y = int((h - ph) - abs((y % (2 * (h - ph))) - (h - ph))) if h > ph else 0
                frame[y:y + ph, x:x + pw] = patch
                cover[y:y + ph, x:x + pw] = 1
        elif kind == "occlusion":
            s = t / max(1, n_frames - 1)
            if 0.3 <= s <= 0.6:
                bx = int((s - 0.3) / 0.3 * (w + 120)) - 120
                frame[:, max(0, bx):max(0, bx + 90)] = (90, 90, 90)
                cover[:, max(0, bx):max(0, bx + 90)] = 1
        xi = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
        yi = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
        inside = ((pts[:, 0] >= 0) & (pts[:, 0] <= w - 1)
                  & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1))
        vis[t] = inside & (cover[yi, xi] == 0)
        frames.append(frame)
    return Sequence(frames, gt, vis)


def moved_object_scene(size: tuple[int, int] = (640, 480), seed: int = 0,
                       move_object: bool = True, move_background: bool = False,
                       texture: np.ndarray | None = None, amount: float = 1.0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A template and a target where a small object and/or the background moved.

    Returns (template (H, W, 3), target (H, W, 3), template points (N, 2),
    true target points (N, 2)); the first half of the points lie on the
    object, the rest on the background. ``amount`` in [0, 1] scales the
    motions (the points do not depend on it, so a sweep of amounts is a
    sequence: see :func:`moved_object_sequence`).
    """
    w, h = size
    rng = np.random.default_rng(seed)
    bg = procedural_texture(h, w, seed) if texture is None else cv2.resize(texture, (w, h))
    obj_tex = procedural_texture(110, 140, seed + 1000)
    ow, oh = 140, 110
    ox, oy = w // 2 - ow // 2, h // 2 - oh // 2
    template = bg.copy()
    template[oy:oy + oh, ox:ox + ow] = obj_tex

    # Object motion: rotation + translation about its centre.
    oc = (ox + ow / 2, oy + oh / 2)

    def motions(a: float) -> tuple[np.ndarray, np.ndarray]:
        h_obj = _homography(25.0 * a if move_object else 0.0, 1.0,
                            60.0 * a if move_object else 0.0,
                            35.0 * a if move_object else 0.0, oc)
        h_bg = (_homography(-6.0 * a, 1.0 + 0.08 * a, -15.0 * a, 10.0 * a, (w / 2, h / 2))
                if move_background else np.eye(3))
        return h_obj, h_bg

    h_obj, h_bg = motions(amount)
    target = cv2.warpPerspective(bg, h_bg, (w, h), borderMode=cv2.BORDER_REFLECT)
    obj_mask = np.zeros((h, w), np.uint8)
    obj_mask[oy:oy + oh, ox:ox + ow] = 255
    obj_full = np.zeros_like(template)
    obj_full[oy:oy + oh, ox:ox + ow] = obj_tex
    h_o = h_bg @ h_obj  # the object rests on the table, which moved too
    warped_obj = cv2.warpPerspective(obj_full, h_o, (w, h))
    warped_mask = cv2.warpPerspective(obj_mask, h_o, (w, h), flags=cv2.INTER_NEAREST)
    target[warped_mask > 0] = warped_obj[warped_mask > 0]

    n_obj, n_bg = 6, 6
    gray = cv2.cvtColor(template, cv2.COLOR_RGB2GRAY)
    inner = np.zeros_like(obj_mask)
    inner[oy + 15:oy + oh - 15, ox + 15:ox + ow - 15] = 255
    c = cv2.goodFeaturesToTrack(gray, 40, 0.01, 8, mask=inner)[:, 0]
    pts_obj = c[rng.choice(len(c), n_obj, replace=False)]
    bg_region = np.zeros_like(obj_mask)
    bg_region[60:h - 60, 60:w - 60] = 255
    # Background points near the object but not on it, and not where the
    # moved object lands: the case that pulls naive local fits.
    bg_region[oy - 50:oy + oh + 50, ox - 50:ox + ow + 50] = 0
    for a in np.linspace(0.0, 1.0, 9):  # wherever the object passes, for any amount
        ho, hb = motions(float(a))
        swept = cv2.warpPerspective(obj_mask, hb @ ho, (w, h), flags=cv2.INTER_NEAREST)
        bg_region[cv2.dilate(swept, np.ones((31, 31), np.uint8)) > 0] = 0
    c = cv2.goodFeaturesToTrack(gray, 80, 0.01, 8, mask=bg_region)[:, 0]
    pts_bg = c[rng.choice(len(c), n_bg, replace=False)]
    tpl_pts = np.vstack([pts_obj, pts_bg]).astype(np.float32)
    true = np.vstack([_apply(h_o, pts_obj), _apply(h_bg, pts_bg)]).astype(np.float32)
    return template, target, tpl_pts, true


def moved_object_sequence(n_frames: int = 40, size: tuple[int, int] = (640, 480),
                          seed: int = 0, move_background: bool = False) -> Sequence:
    """Frames in which a small object slides and turns (25 deg, 70 px) over a static table.

    (Or over a table that moves too, with ``move_background``.) Points: the
    first half on the object, the rest on the table; all stay visible.
    """
    frames, pts = [], []
    for t in range(n_frames):
        a = t / max(1, n_frames - 1)
        tpl, tgt, p0, p = moved_object_scene(size, seed, True, move_background, amount=a)
        frames.append(tgt)
        pts.append(p)
    points = np.array(pts, np.float32)
    return Sequence(frames, points, np.ones(points.shape[:2], bool))
