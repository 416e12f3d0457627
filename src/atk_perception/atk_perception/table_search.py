"""Find an object of the template on the table with what the robot knows: depth and camera pose (ROS-free).

Why: the flat object search (:mod:`atk_perception.object_search`) turns the
template region in the image as if it were a picture lying on the table. A
nigiri is a box: when it is turned by half a turn, its top face turns but
the side faces the camera sees stay on the camera's side, so the flat
search prefers the unturned pose (side faces aligned, the top's diagonal
bands alike after a half turn) and puts every point off the object's
centre at the other end (measured on simulated sushi: a keypoint at the
nigiri's near edge 15.7 px off in 20 of 30 first frames, at confidence 0.82).

With the template's depth and the camera's intrinsics and pose in the robot
base frame (z up: a hand-eye calibration on the real cell, the simulator's
camera in simulation), an object standing on the table is searched for as
what it is:

1. **Its top face**: the template pixels of the region lifted to 3D; the
   table is the low part of a ring around the region, the object what
   stands ``min_height_m`` above it, its top face the pixels within
   ``top_tolerance_m`` of its top (the 90th percentile of its heights).
   Connected parts are separate objects.
2. **A yaw and a shift on the table**: a rigid motion of the top face's
   plane is a homography between the two images (same camera), so the top
   face is warped exactly, with its perspective at the new place, for each
   yaw about the vertical axis through the face's centre and each shift,
   and compared with the image (masked NCC, colour). Places come from the
   colour back-projection of the top face (and any the caller adds); at
   each, the yaw is searched in ``coarse_step_deg`` steps on images scaled
   to ``work_size_px`` (in grey, each place's best pose then scored again in
   colour), then refined at full size with the shift re-derived from the
   image match (two rounds).
3. **The points**: every template point of the object is lifted to 3D with
   the template depth (a point on a side face stays on that face), moved
   by the yaw and shift, and projected.

The result carries the match score, the best score at another place (a
look-alike) and the lead of the best yaw over the best yaw more than
``turn_apart_deg`` away (a half-turned look-alike gives a small lead).

Frames and shapes: images ``(H, W, 3)`` RGB uint8; template depth ``(H, W)``
float32 metres along the optical axis (0 or non-finite: no reading);
points ``(N, 2)`` float pixels; K ``(3, 3)``; ``base_t_camera`` ``(4, 4)``
camera optical frame (x right, y down, z forward) in the robot base frame,
whose z axis points up (the table is horizontal).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from atk_perception.object_search import backprojection_candidates


class TableSearchError(ValueError):
    """Unusable template geometry (shapes, non-finite camera)."""


@dataclass(frozen=True)
class TableSearchParams:
    """Knobs of :func:`search_on_table` (metres, degrees, pixels)."""

    min_height_m: float = 0.004
    """A pixel more than this above the table belongs to an object."""
    top_tolerance_m: float = 0.004
    """Pixels within this of the object's top height are its top face."""
    min_top_px: int = 20
    """Fewer top-face pixels than this: no search (too small or flat)."""
    ring_px: int = 6
    """Width of the ring around an object whose low part is the table there."""
    candidates: int = 12
    work_size_px: float = 40.0
    """The coarse stage runs on images scaled so that the top face is about this big."""
    coarse_step_deg: float = 15.0
    """Yaw step of the coarse stage (7.5 until 2026-12-03: 15 at ``work_size_px`` 40 placed every
    ground-truth benchmark keypoint as 7.5 did, in half the time)."""
    coarse_grey: bool = True
    """The coarse stage compares grey images (the fine stage and the scores stay in colour)."""
    fine_step_deg: float = 2.5
    fine_span_deg: float = 15.0
    refine_places: int = 2
    turn_apart_deg: float = 30.0
    inner_shrink: float = 0.15
    inner_min_size_px: float = 32.0
    """A top face of at least this size (square root of its area) is searched by its inside, eroded by
    ``inner_shrink`` of its size: the border of a round face (a plate's rim) matches any turn and
    outvotes the pattern inside that tells the turn."""
    point_link_px: float = 3.0
    """A point belongs to an object when it lies within this of the object's pixels."""

    def __post_init__(self) -> None:
        for name in ("min_height_m", "top_tolerance_m", "coarse_step_deg", "fine_step_deg", "turn_apart_deg"):
            if not getattr(self, name) > 0:
                raise TableSearchError(f"TableSearchParams.{name} must be > 0")
        if self.candidates < 1 or self.refine_places < 1 or self.min_top_px < 3:
            raise TableSearchError("TableSearchParams: candidates and refine_places >= 1, min_top_px >= 3")


@dataclass(frozen=True)
class TemplateGeometry:
    """What the robot knows about the template frame: its depth and the camera.

    depth_m: (H, W) float32 metres; k: (3, 3); base_t_camera: (4, 4) with the
    base frame's z axis up.
    """

    depth_m: np.ndarray
    k: np.ndarray
    base_t_camera: np.ndarray

    def __post_init__(self) -> None:
        d = np.asarray(self.depth_m)
        if d.ndim != 2:
            raise TableSearchError(f"template depth must be (H, W) metres, got shape {d.shape}")
        k = np.asarray(self.k, np.float64)
        t = np.asarray(self.base_t_camera, np.float64)
        if k.shape != (3, 3) or not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
            raise TableSearchError("camera intrinsics must be a finite (3, 3) K with positive focal lengths")
        if t.shape != (4, 4) or not np.all(np.isfinite(t)):
            raise TableSearchError("base_t_camera must be a finite (4, 4) transform")

    @property
    def size(self) -> tuple[int, int]:
        """(W, H)."""
        return int(self.depth_m.shape[1]), int(self.depth_m.shape[0])

    def lift(self, uv: np.ndarray, z_cam: np.ndarray) -> np.ndarray:
        """Base-frame points (N, 3) of pixels ``uv`` (N, 2) at camera depths ``z_cam`` (N,)."""
        k = np.asarray(self.k, np.float64)
        pc = np.stack([(uv[:, 0] - k[0, 2]) * z_cam / k[0, 0], (uv[:, 1] - k[1, 2]) * z_cam / k[1, 1], z_cam], 1)
        t = np.asarray(self.base_t_camera, np.float64)
        return pc @ t[:3, :3].T + t[:3, 3]

    def project(self, pts: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) of base-frame points (N, 3)."""
        tinv = np.linalg.inv(np.asarray(self.base_t_camera, np.float64))
        pc = pts @ tinv[:3, :3].T + tinv[:3, 3]
        uv = pc @ np.asarray(self.k, np.float64).T
        return uv[:, :2] / uv[:, 2:3]

    def plane_homography(self, z: float) -> np.ndarray:
        """(3, 3) map from base-frame (x, y) on the horizontal plane at height ``z`` to pixels."""
        tinv = np.linalg.inv(np.asarray(self.base_t_camera, np.float64))
        r, t = tinv[:3, :3], tinv[:3, 3]
        return np.asarray(self.k, np.float64) @ np.column_stack([r[:, 0], r[:, 1], r[:, 2] * z + t])


@dataclass
class TableObject:
    """One object of the template region: its top face and where its points sit."""

    top_mask: np.ndarray          # (H, W) uint8, 255 on the top face
    top_z: float                  # height of the top face (base frame, m)
    centre: np.ndarray            # (2,) base-frame x, y of the top face's centre
    members: np.ndarray           # indices into the caller's points
    points_3d: np.ndarray         # (M, 3) base-frame positions of those points


@dataclass
class TableSearchResult:
    """Where one object went: yaw (rad) about the vertical through its top's centre, shift (2,) m on
    the table, its points (M, 2) in the image (``members`` of the caller's points), masked NCC
    ``score``; ``place_lead``: the coarse score of its place minus the best coarse score at another
    place (>= 0, 1 when no other place was looked at; near 0: a look-alike elsewhere); ``turn_lead``:
    best score minus the best at a yaw more than ``turn_apart_deg`` away (>= 0; near 0: the turn is
    ambiguous, e.g. half-turned look-alike)."""

    members: np.ndarray
    points: np.ndarray
    yaw: float
    shift: np.ndarray
    score: float
    place_lead: float
    turn_lead: float
    size_px: float


def height_map(geometry: TemplateGeometry) -> np.ndarray:
    """(H, W) float64 height (base-frame z, m) of every template pixel; NaN without a depth reading."""
    depth = np.asarray(geometry.depth_m, np.float64)
    h, w = depth.shape
    ok = np.isfinite(depth) & (depth > 0)
    ys, xs = np.nonzero(ok)
    out = np.full((h, w), np.nan)
    if len(xs):
        out[ys, xs] = geometry.lift(np.stack([xs, ys], 1).astype(np.float64), depth[ys, xs])[:, 2]
    return out


def table_height(heights: np.ndarray, bin_m: float = 0.002) -> float | None:
    """The table's height: the most common height among the pixels (the largest horizontal surface
    in a tabletop view), refined to the median of its bin and the two beside it; None without depth."""
    z = heights[np.isfinite(heights)]
    if len(z) < 100:
        return None
    lo = float(np.percentile(z, 1))
    hi = float(np.percentile(z, 99))
    if hi - lo < bin_m:
        return float(np.median(z))
    counts, edges = np.histogram(z, bins=max(1, int(math.ceil((hi - lo) / bin_m))), range=(lo, hi))
    i = int(np.argmax(counts))
    near = z[(z >= edges[max(0, i - 1)]) & (z <= edges[min(len(edges) - 1, i + 2)])]
    return float(np.median(near))


def table_objects(geometry: TemplateGeometry, points: np.ndarray,
                  params: TableSearchParams = TableSearchParams()) -> list[TableObject]:
    """The objects standing on the table that hold some of ``points`` (N, 2), with those points.

    An object is a connected part of the template pixels more than ``min_height_m`` above the table
    (:func:`table_height`; the table's own height locally: the low part of a ring around the part);
    a point belongs to the object it lies on (within ``point_link_px``). Points on no object (the
    table, a picture on it) are in none.
    """
    depth = np.asarray(geometry.depth_m, np.float32)
    h, w = depth.shape
    heights = height_map(geometry)
    z_table = table_height(heights)
    if z_table is None:
        return []
    above = np.nan_to_num(heights, nan=-1e9) > z_table + params.min_height_m
    n, labels = cv2.connectedComponents(above.astype(np.uint8), connectivity=8)
    pts = np.asarray(points, np.float64)
    xi = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
    # each point's object: the label at the point, else the nearest within point_link_px
    r = int(round(params.point_link_px))
    label_of = np.zeros(len(pts), np.int32)
    for i, (x, y) in enumerate(zip(xi, yi)):
        win = labels[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
        if labels[y, x] > 0:
            label_of[i] = labels[y, x]
        elif (win > 0).any():
            wy, wx = np.nonzero(win)
            j = int(np.argmin((wy + max(0, y - r) - y) ** 2 + (wx + max(0, x - r) - x) ** 2))
            label_of[i] = win[wy[j], wx[j]]
    out: list[TableObject] = []
    for lab in sorted(set(int(v) for v in label_of) - {0}):
        part = labels == lab
        if part[0, :].any() or part[-1, :].any() or part[:, 0].any() or part[:, -1].any():
            continue   # cut by the image border (the backdrop, an object leaving the view): not searched
        ring = cv2.dilate(part.astype(np.uint8), np.ones((2 * params.ring_px + 1,) * 2, np.uint8)).astype(bool) & ~part
        ring_h = heights[ring & np.isfinite(heights)]
        local_table = float(np.percentile(ring_h, 20)) if len(ring_h) >= 10 else z_table
        hz = heights[part]
        top_z = float(np.percentile(hz, 90))
        if top_z < local_table + params.min_height_m:
            continue
        top = part & (heights >= top_z - params.top_tolerance_m)
        if int(top.sum()) < params.min_top_px:
            continue
        size = math.sqrt(float(top.sum()))
        if size >= params.inner_min_size_px:
            e = int(round(params.inner_shrink * size))
            inner = cv2.erode(top.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * e + 1,) * 2))
            if int(inner.sum()) >= max(params.min_top_px, 0.25 * float(top.sum())):
                top = inner.astype(bool)
        members = np.flatnonzero(label_of == lab)
        ty, tx = np.nonzero(top)
        face = geometry.lift(np.stack([tx, ty], 1).astype(np.float64), depth[ty, tx].astype(np.float64))
        z = depth[yi[members], xi[members]].astype(np.float64)
        p3 = geometry.lift(pts[members], z)
        # a point without a depth reading sits on the top face's plane
        bad = ~np.isfinite(z) | (z <= 0)
        if bad.any():
            hp = np.linalg.inv(geometry.plane_homography(top_z)) @ np.vstack([pts[members][bad].T,
                                                                              np.ones(int(bad.sum()))])
            p3[bad] = np.column_stack([(hp[:2] / hp[2]).T, np.full(int(bad.sum()), top_z)])
        out.append(TableObject(top.astype(np.uint8) * 255, top_z, face[:, :2].mean(0), members, p3))
    return out


def _motion(yaw: float, centre: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(3, 3) planar rigid motion: turn by ``yaw`` about ``centre`` (2,), then move by ``shift`` (2,)."""
    c, s = math.cos(yaw), math.sin(yaw)
    r = np.array([[c, -s], [s, c]])
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = centre - r @ centre + shift
    return m


class _Face:
    """One object's top face, warped into the image for a yaw and shift."""

    def __init__(self, template: np.ndarray, geometry: TemplateGeometry, obj: TableObject) -> None:
        self.template = template
        self.obj = obj
        self.h0 = geometry.plane_homography(obj.top_z)
        self.h0_inv = np.linalg.inv(self.h0)
        ys, xs = np.nonzero(obj.top_mask)
        pts = np.stack([xs, ys], 1).astype(np.float32)
        hull = cv2.convexHull(pts).reshape(-1, 2) if len(pts) >= 3 else pts
        self.hull = np.vstack([hull + d for d in ((-1, -1), (1, -1), (1, 1), (-1, 1))]).astype(np.float64)
        self.size_px = math.sqrt(float(len(xs)))
        self._scaled: dict[tuple[float, bool], tuple[np.ndarray, np.ndarray]] = {}

    def _at_scale(self, scale: float, grey: bool) -> tuple[np.ndarray, np.ndarray]:
        """The template (grey: one channel) and its top-face mask resized by ``scale`` (area averaging), cached."""
        key = (scale, grey)
        if key not in self._scaled:
            tpl = self.template
            if grey and tpl.ndim == 3:
                tpl = cv2.cvtColor(tpl, cv2.COLOR_RGB2GRAY)
            if scale < 1.0:
                h, w = tpl.shape[:2]
                size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
                self._scaled[key] = (cv2.resize(tpl, size, interpolation=cv2.INTER_AREA),
                                     cv2.resize(self.obj.top_mask, size, interpolation=cv2.INTER_AREA))
            else:
                self._scaled[key] = (tpl, self.obj.top_mask)
        return self._scaled[key]

    def homography(self, yaw: float, shift: np.ndarray) -> np.ndarray:
        return self.h0 @ _motion(yaw, self.obj.centre, shift) @ self.h0_inv

    def centre_px(self, shift: np.ndarray) -> np.ndarray:
        p = self.h0 @ np.array([*(self.obj.centre + shift), 1.0])
        return p[:2] / p[2]

    def to_shift(self, uv: np.ndarray) -> np.ndarray:
        """The shift that puts the top face's centre at image pixel ``uv`` (2,)."""
        p = self.h0_inv @ np.array([uv[0], uv[1], 1.0])
        return p[:2] / p[2] - self.obj.centre

    def warp(self, yaw: float, shift: np.ndarray, scale: float = 1.0, grey: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(patch (h, w, C), mask (h, w, C), top-left (2,)) of the face moved by (yaw, shift), in the
        image resized by ``scale`` (<= 1: warped from the template resized alike, not warped at full
        size and then resized: the coarse stage's 576 warps per object were most of its time);
        ``grey``: one channel."""
        hm = self.homography(yaw, shift)
        template, top_mask = self._at_scale(scale, grey)
        if scale < 1.0:
            o = 0.5 * scale - 0.5     # pixel centres: x_small = (x + 0.5) * scale - 0.5
            s = np.array([[scale, 0, o], [0, scale, o], [0, 0, 1]], np.float64)
            hm = s @ hm @ np.linalg.inv(s)
            hull = self.hull * scale + o
        else:
            hull = self.hull
        q = cv2.perspectiveTransform(hull.reshape(-1, 1, 2), hm).reshape(-1, 2)
        if not np.all(np.isfinite(q)):
            return None
        x0, y0 = np.floor(q.min(0)).astype(int)
        x1, y1 = np.ceil(q.max(0)).astype(int) + 1
        if x1 - x0 < 3 or y1 - y0 < 3 or (x1 - x0) * (y1 - y0) > 400 * (self.size_px * scale) ** 2:
            return None
        shifted = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64) @ hm
        size = (int(x1 - x0), int(y1 - y0))
        m = cv2.warpPerspective(top_mask, shifted, size, flags=cv2.INTER_LINEAR)
        m = ((m > 127) * 255).astype(np.uint8)
        if int(np.count_nonzero(m)) < 8:
            return None
        img = cv2.warpPerspective(template, shifted, size, flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
        if img.ndim == 3:
            m = cv2.merge([m] * img.shape[2])
        return img, m, np.array([x0, y0], np.float64)

    def score(self, image: np.ndarray, yaw: float, shift: np.ndarray, radius: float,
              scale: float = 1.0) -> tuple[float, np.ndarray]:
        """Best masked NCC of the face moved by (yaw, shift), allowing an image offset up to ``radius``
        px; returns (score, the shift that puts the face where it matched best). ``scale`` < 1:
        ``image`` is the image resized by ``scale`` (radius in its pixels)."""
        warped = self.warp(yaw, shift, scale, grey=image.ndim == 2)
        if warped is None:
            return -1.0, shift
        patch, pmask, tl = warped
        ph, pw = patch.shape[:2]
        hh, ww = image.shape[:2]
        r = int(math.ceil(radius))
        x0, y0 = int(round(tl[0])) - r, int(round(tl[1])) - r
        x1, y1 = int(round(tl[0])) + pw + r, int(round(tl[1])) + ph + r
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(ww, x1), min(hh, y1)
        if cx1 - cx0 < pw or cy1 - cy0 < ph:
            return -1.0, shift
        res = cv2.matchTemplate(image[cy0:cy1, cx0:cx1], patch, cv2.TM_CCOEFF_NORMED, mask=pmask)
        res[~np.isfinite(res)] = -1.0
        v = int(np.argmax(res))
        rr, cc = divmod(v, res.shape[1])
        offset = np.array([cx0 + cc - tl[0], cy0 + rr - tl[1]], np.float64)
        if scale < 1.0:
            offset = offset / scale
        return float(res[rr, cc]), self.to_shift(self.centre_px(shift) + offset)


def _angle_apart(a: float, b: float) -> float:
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


def search_object_on_table(template: np.ndarray, image: np.ndarray, geometry: TemplateGeometry,
                           obj: TableObject, params: TableSearchParams = TableSearchParams(),
                           extra_candidates: np.ndarray | None = None) -> TableSearchResult | None:
    """Search one :class:`TableObject` of ``template`` in ``image`` (see the module doc)."""
    face = _Face(template, geometry, obj)
    size = face.size_px
    cands = backprojection_candidates(template, obj.top_mask, image, size, params.candidates)
    if extra_candidates is not None and len(extra_candidates):
        cands = np.vstack([np.asarray(extra_candidates, np.float64).reshape(-1, 2), cands])
    if len(cands) == 0:
        return None
    coarse = np.deg2rad(np.arange(0.0, 360.0, params.coarse_step_deg))
    k = min(1.0, params.work_size_px / size)
    small = image if k >= 0.97 else cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    k = 1.0 if k >= 0.97 else k
    grey = params.coarse_grey and small.ndim == 3
    search_img = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) if grey else small
    found = []   # (score, yaw, shift)
    for cand in cands:
        shift0 = face.to_shift(cand)
        best = (-2.0, 0.0, shift0)
        for yaw in coarse:
            sc, sh = face.score(search_img, float(yaw), shift0, (0.5 * size + 2.0) * k, k)
            if sc > best[0]:
                best = (sc, float(yaw), sh)
        if grey and best[0] > -2.0:
            # each place's best pose scored again in colour: its rank and the look-alike lead
            # (place_lead) see colour, as they did before the grey coarse stage (in grey a yellow
            # tamago's place led the others by less and its confidence fell to 0.5-0.8)
            sc, sh = face.score(small, best[1], best[2], 2.0, k)
            best = (sc, best[1], sh)
        found.append(best)
    found.sort(key=lambda f: -f[0])
    fine = np.deg2rad(np.arange(-params.fine_span_deg, params.fine_span_deg + 1e-9, params.fine_step_deg))
    refined = []   # (score, yaw, shift, coarse score of the place)
    for sc, yaw, shift in found[:params.refine_places]:
        coarse_sc = sc
        for _ in range(2):
            best = (sc, yaw, shift)
            for d in fine:
                s2, sh2 = face.score(image, yaw + float(d), shift, 2.0)
                if s2 > best[0]:
                    best = (s2, yaw + float(d), sh2)
            sc, yaw, shift = best
        refined.append((sc, yaw % (2 * math.pi), shift, coarse_sc))
    sc, yaw, shift, coarse_sc = max(refined, key=lambda r: r[0])
    far = []
    for y2 in coarse:
        if _angle_apart(float(y2), yaw) > math.radians(params.turn_apart_deg):
            far.append(face.score(image, float(y2), shift, 2.0)[0])
    turn_lead = max(0.0, sc - max(far)) if far else 1.0
    here = face.centre_px(shift)
    others = [f[0] for f in found if np.hypot(*(face.centre_px(f[2]) - here)) > size]
    place_lead = max(0.0, coarse_sc - max(others)) if others else 1.0
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    c3 = np.array([*obj.centre, 0.0])
    moved = (obj.points_3d - c3) @ rot.T + c3 + np.array([*shift, 0.0])
    return TableSearchResult(obj.members, geometry.project(moved), yaw, shift, sc, place_lead, turn_lead, size)


def check_sizes(template: np.ndarray, image: np.ndarray, geometry: TemplateGeometry) -> None:
    """Raise :class:`TableSearchError` unless template, image and template depth have one size."""
    if template.shape[:2] != geometry.depth_m.shape or image.shape[:2] != template.shape[:2]:
        raise TableSearchError(f"template {template.shape[:2]}, image {image.shape[:2]} and template depth "
                               f"{geometry.depth_m.shape} must have one size")


def search_on_table(template: np.ndarray, points: np.ndarray, image: np.ndarray, geometry: TemplateGeometry,
                    params: TableSearchParams = TableSearchParams(),
                    extra_candidates: np.ndarray | None = None) -> list[TableSearchResult]:
    """Every object standing on the table under the region of ``points`` (N, 2), searched in ``image``.

    Points on no object (the table, a flat picture) are in no result.
    """
    check_sizes(template, image, geometry)
    out = []
    for obj in table_objects(geometry, points, params):
        r = search_object_on_table(template, image, geometry, obj, params, extra_candidates)
        if r is not None:
            out.append(r)
    return out
