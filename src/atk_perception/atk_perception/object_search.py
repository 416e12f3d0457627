"""Find a small object of the template in another image by an appearance search (ROS-free).

Why: SIFT needs texture at a scale it can detect. A 20x25 px object (a
nigiri at 320x240) yields almost no SIFT keypoints, and those it yields do
not survive the object's yaw (different aliasing of its fine stripes), so
the match-based transfer has nothing to fit and falls back on the table's
motion. Such an object is still perfectly recognisable as a whole: its
colours and its layout. This module searches for the template region (the
hull of the keypoints of one object, slightly grown) over the target image:

1. **Where** (rotation-invariant): Swain & Ballard's ratio-histogram
   back-projection. Each pixel gets min(1, template colour frequency / image
   colour frequency) of its hue-saturation bin (colours common in the
   template but rare in the image score high), box-filtered over the
   object's size; its strongest local maxima are the candidates (plus any
   the caller adds, e.g. the SIFT prediction).
2. **How it is turned**: around each candidate the template region is
   warped by a family of affine maps ``s * D(c) R(theta) D(c)^-1`` (a yaw
   of the object on the table seen under the camera's foreshortening c:
   D(c) = diag(1, c), times diag(1, stretch) for an object now nearer to or
   further from the camera) and correlated with the image (masked zero-mean
   normalised cross-correlation, on grey: gain and offset changes of the
   light do not matter).
2b. **Turn again, inside only**: at each of the best few distinct places
   the turn is searched again with a separate target foreshortening
   (``repose_stretches``) at the coarse scale, on the region eroded by
   ``repose_shrink`` of its size. The coarse family ties template and
   target foreshortening, and the region's border (a plate's side wall,
   the table) looks alike for any small turn: together they let a small
   wrong turn of a round plate outscore its true large one. The lead of
   the best turn over the best one more than ``turn_apart_deg`` away is
   returned: a small lead means the turn is ambiguous.
3. **Precisely**: for the best few distinct places, a finer grid around the
   best pose on full-resolution colour with a sub-pixel peak, then an ECC
   alignment (full affine, masked) of the best, kept if it scores higher.

The result is an affine map template -> image for the region, its score
(masked NCC) and the score of the best pose at a distinct place (a second
look-alike): the caller turns the two into a confidence.

Images: ``(H, W, 3)`` RGB or ``(H, W)`` grey uint8. Points ``(N, 2)``
float pixels (x right, y down).
"""
from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class SearchResult:
    """affine: (2, 3) template pixel -> image pixel; score: masked NCC of the
    best pose in [-1, 1]; runner_up: best NCC at a place further than the
    object's size from it (-1 if none); size_px: the object's size (square
    root of the region's area, template pixels)."""

    affine: np.ndarray
    score: float
    runner_up: float
    size_px: float
    turn_runner_up: float = -1.0
    """Best coarse score of a pose at the same place turned by more than
    ``turn_apart_deg`` from the best, minus the best coarse score (<= 0;
    -1 if not measured): near 0, the object's turn is ambiguous."""


@dataclass(frozen=True)
class SearchParams:
    """The knobs of :func:`search_object` (CpuTrackerConfig's ``search_*`` fields)."""

    angle_step_deg: float = 10.0
    scales: tuple[float, ...] = (0.8, 1.0, 1.25)
    aspects: tuple[float, ...] = (0.65, 0.9)
    stretches: tuple[float, ...] = (1.0,)
    prefilter_places: int = 0
    candidates: int = 8
    fine_candidates: int = 3
    ecc_iterations: int = 50
    work_size_px: float = 28.0
    grow_px: float = 2.0
    repose_stretches: tuple[float, ...] = (0.8, 0.89, 1.0, 1.12, 1.25)
    """At each finalist place, the turn is searched again over these target
    foreshortenings (empty: off); cheap, one place at a time."""
    turn_apart_deg: float = 25.0
    repose_places: int = 3
    repose_shrink: float = 0.15
    repose_colour: bool = False
    repose_scales: tuple[float, ...] = (1.0,)
    """Scales (times the coarse pose's) of the turn search."""
    fine_inner: bool = True
    """The fine stage and ECC also use the eroded region (objects of at
    least ``inner_min_size_px``): its border is the table around it, which
    a new background changes (a plate on a checkerboard lost to a patch of
    checkerboard). A ~20 px nigiri keeps its whole region: eroded by 3 px
    it is placed less precisely (up to 2.9 px against 2.3 px)."""
    inner_min_size_px: float = 32.0
    repose_angle_step_deg: float = 10.0
    repose_size_px: float = 28.0
    """The turn search runs on the best ``repose_places`` finalists, on
    images scaled so that the object is about this big (twice the coarse
    size: a plate's rim pattern is a few pixels at 28 px)."""


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def pose_matrix(theta: float, scale: float, aspect: float, stretch: float = 1.0) -> np.ndarray:
    """(2, 2) ``scale * diag(1, stretch) D(aspect) R(theta) D(aspect)^-1``, D(c) = diag(1, c).

    ``stretch`` != 1: the target is foreshortened differently from the
    template (the object moved nearer to or further from the camera).
    """
    d = np.diag([1.0, aspect])
    return scale * np.diag([1.0, stretch]) @ d @ _rot(theta) @ np.diag([1.0, 1.0 / aspect])


def region_mask(points: np.ndarray, shape: tuple[int, int], grow_px: float) -> np.ndarray:
    """(H, W) uint8 mask: convex hull of ``points`` (N, 2) dilated by ``grow_px``."""
    mask = np.zeros(shape, np.uint8)
    pts = np.round(points).astype(np.int32)
    if len(pts) >= 3:
        cv2.fillConvexPoly(mask, cv2.convexHull(pts), 255)
    else:
        for p in pts:
            mask[min(max(p[1], 0), shape[0] - 1), min(max(p[0], 0), shape[1] - 1)] = 255
    g = max(1, int(round(grow_px)))
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * g + 1, 2 * g + 1)))


def cluster_points(points: np.ndarray, link_px: float) -> list[np.ndarray]:
    """Single-linkage clusters of ``points`` (N, 2): lists of indices, points chained closer than ``link_px``."""
    n = len(points)
    label = -np.ones(n, int)
    d = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1) <= link_px
    k = 0
    for i in range(n):
        if label[i] >= 0:
            continue
        stack = [i]
        label[i] = k
        while stack:
            j = stack.pop()
            for m in np.flatnonzero(d[j] & (label < 0)):
                label[m] = k
                stack.append(m)
        k += 1
    return [np.flatnonzero(label == c) for c in range(k)]


def _hue_sat(img: np.ndarray) -> tuple[np.ndarray, list[int], list[float]]:
    if img.ndim == 2:
        return img, [0], [0, 256]
    return cv2.cvtColor(img, cv2.COLOR_RGB2HSV), [0, 1], [0, 180, 0, 256]


def backprojection_candidates(tpl: np.ndarray, mask: np.ndarray, img: np.ndarray,
                              size_px: float, k: int) -> np.ndarray:
    """Up to ``k`` candidate centres (K, 2) of the masked template colours in ``img``, best first."""
    th, chans, ranges = _hue_sat(tpl)
    ih, _, _ = _hue_sat(img)
    bins = [30, 16] if len(chans) == 2 else [32]
    ht = cv2.calcHist([th], chans, mask, bins, ranges)
    hi = cv2.calcHist([ih], chans, None, bins, ranges)
    ht /= max(1.0, float(ht.sum()))
    hi /= max(1.0, float(hi.sum()))
    ratio = np.minimum(ht / np.maximum(hi, 1e-9), 1.0).astype(np.float32)
    bp = cv2.calcBackProject([ih], chans, ratio, ranges, scale=1.0)
    side = max(3, int(round(size_px)) | 1)
    score = cv2.blur(bp.astype(np.float32), (side, side))
    peaks = (score >= cv2.dilate(score, cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (side, side)))) & (score > 0.05 * float(score.max()) + 1e-6)
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-score[ys, xs])
    out: list[np.ndarray] = []
    for j in order:
        p = np.array([xs[j], ys[j]], np.float64)
        if all(np.hypot(*(p - q)) > 0.5 * size_px for q in out):
            out.append(p)
        if len(out) >= k:
            break
    return np.array(out, np.float64).reshape(-1, 2)


_HULLS: "OrderedDict[int, tuple[weakref.ref, np.ndarray]]" = OrderedDict()


def _hull_pixels(mask: np.ndarray) -> np.ndarray:
    """(K, 2) x, y of the convex-hull vertices of ``mask``'s nonzero pixels.

    A warp's extent (the largest |lin @ (p - centre)| over the region's
    pixels) is reached at a hull vertex, so these few pixels give exactly the
    extent all of them give; one search warps the same mask hundreds of times
    and ``np.nonzero`` on it was a fifth of a transfer's time. Memoised per
    mask array (the few most recent; masks are not modified once made).
    """
    entry = _HULLS.get(id(mask))
    if entry is not None and entry[0]() is mask:
        _HULLS.move_to_end(id(mask))
        return entry[1]
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], 1).astype(np.int32)
    if len(pts) >= 3:
        pts = cv2.convexHull(pts).reshape(-1, 2)
    hull = pts.astype(np.float64)
    _HULLS[id(mask)] = (weakref.ref(mask), hull)
    while len(_HULLS) > 16:
        _HULLS.popitem(last=False)
    return hull


class _Warped:
    """The template region warped by one linear map, centred on its anchor."""

    def __init__(self, tpl: np.ndarray, mask: np.ndarray, centre: np.ndarray,
                 lin: np.ndarray) -> None:
        corners = _hull_pixels(mask) - centre
        mapped = corners @ lin.T
        half = np.ceil(np.abs(mapped).max(axis=0)).astype(int) + 1
        w, h = 2 * half + 1
        m = np.hstack([lin, (half - lin @ centre)[:, None]])
        self.image = cv2.warpAffine(tpl, m, (int(w), int(h)), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
        wm = cv2.warpAffine(mask, m, (int(w), int(h)), flags=cv2.INTER_LINEAR)
        self.mask = (wm > 127).astype(np.uint8) * 255
        if self.image.ndim == 3:
            self.mask = cv2.merge([self.mask] * 3)
        self.half = half.astype(np.float64)
        self.lin = lin


def _match(img: np.ndarray, warped: _Warped, centre: np.ndarray,
           radius: float) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Best masked NCC of ``warped`` with its centre within ``radius`` of ``centre`` (2,).

    Returns (score, position (2,) of the centre, the score map or None).
    """
    hh, ww = img.shape[:2]
    th, tw = warped.image.shape[:2]
    x0 = int(math.floor(centre[0] - radius - warped.half[0]))
    y0 = int(math.floor(centre[1] - radius - warped.half[1]))
    x1 = int(math.ceil(centre[0] + radius + warped.half[0])) + 1
    y1 = int(math.ceil(centre[1] + radius + warped.half[1])) + 1
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(ww, x1), min(hh, y1)
    if x1 - x0 < tw or y1 - y0 < th:
        return -1.0, centre.copy(), None
    res = cv2.matchTemplate(img[y0:y1, x0:x1], warped.image, cv2.TM_CCOEFF_NORMED,
                            mask=warped.mask)
    res[~np.isfinite(res)] = -1.0  # flat windows: no match
    v = int(np.argmax(res))
    r, c = divmod(v, res.shape[1])
    return float(res[r, c]), np.array([x0 + c + warped.half[0], y0 + r + warped.half[1]]), res


def affine_score(template: np.ndarray, points: np.ndarray, image: np.ndarray,
                 affine: np.ndarray, grow_px: float = 2.0, mask: np.ndarray | None = None
                 ) -> float:
    """Masked NCC of the region of ``points`` (N, 2) warped by ``affine`` (2, 3) at its place in ``image``.

    The score :func:`search_object` maximises, for a placement found some
    other way (e.g. the SIFT fit): -1 when it falls outside the image.
    """
    if mask is None:
        mask = region_mask(points, template.shape[:2], grow_px)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return -1.0
    centre = np.array([xs.mean(), ys.mean()])
    lin = np.asarray(affine, np.float64)[:, :2]
    if abs(np.linalg.det(lin)) < 1e-6:
        return -1.0
    pos = lin @ centre + np.asarray(affine, np.float64)[:, 2]
    # Anchor the warp at the template point that lands on the integer pixel
    # nearest to pos: the sub-pixel part goes into the warp.
    anchor = centre + np.linalg.inv(lin) @ (np.round(pos) - pos)
    return _match(image, _Warped(template, mask, anchor, lin), np.round(pos), 0.0)[0]


def _subpixel(res: np.ndarray, r: int, c: int) -> np.ndarray:
    """Quadratic peak offset (dx, dy) around integer peak (r, c) of ``res``."""
    d = np.zeros(2)
    if 0 < c < res.shape[1] - 1:
        a, b, e = res[r, c - 1], res[r, c], res[r, c + 1]
        den = a - 2 * b + e
        if den < 0:
            d[0] = float(np.clip(0.5 * (a - e) / den, -0.5, 0.5))
    if 0 < r < res.shape[0] - 1:
        a, b, e = res[r - 1, c], res[r, c], res[r + 1, c]
        den = a - 2 * b + e
        if den < 0:
            d[1] = float(np.clip(0.5 * (a - e) / den, -0.5, 0.5))
    return d


def search_object(template: np.ndarray, points: np.ndarray, image: np.ndarray,
                  params: SearchParams, extra_candidates: np.ndarray | None = None
                  ) -> SearchResult | None:
    """Locate the region of ``points`` (N, 2) on ``template`` in ``image`` (see module doc).

    ``extra_candidates`` (K, 2): more places to look at (image pixels).
    Returns None when the region is too small or flat to search for.
    """
    mask_full = region_mask(points, template.shape[:2], params.grow_px)
    area = float(np.count_nonzero(mask_full))
    if area < 16:
        return None
    size = math.sqrt(area)
    ys, xs = np.nonzero(mask_full)
    centre = np.array([xs.mean(), ys.mean()])
    # Coarse stage on images scaled so that the object is about work_size_px.
    k = min(1.0, params.work_size_px / size)
    if k < 0.97:
        tpl_s = cv2.resize(template, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        img_s = cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        mask_s = cv2.resize(mask_full, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        mask_s = (mask_s > 127).astype(np.uint8) * 255
    else:
        k, tpl_s, img_s, mask_s = 1.0, template, image, mask_full
    c_s = (centre + 0.5) * k - 0.5
    size_s = size * k
    cands = backprojection_candidates(tpl_s, mask_s, img_s, size_s, params.candidates)
    if extra_candidates is not None and len(extra_candidates):
        cands = np.vstack([(np.asarray(extra_candidates, np.float64) + 0.5) * k - 0.5, cands])
    if len(cands) == 0:
        return None
    thetas = np.deg2rad(np.arange(0.0, 360.0, params.angle_step_deg))
    poses = [(t, s, a, r) for t in thetas for s in params.scales for a in params.aspects
             for r in params.stretches]
    # Coarse stage on grey with the exact mask: the colour back-projection
    # already chose the places; the pose comes from the texture layout, and
    # grey masked NCC is 2.5x cheaper than colour (an unmasked NCC would be
    # cheaper still but lets a busy background around the object win).
    tpl_g = cv2.cvtColor(tpl_s, cv2.COLOR_RGB2GRAY) if tpl_s.ndim == 3 else tpl_s
    img_g = cv2.cvtColor(img_s, cv2.COLOR_RGB2GRAY) if img_s.ndim == 3 else img_s
    warped = [_Warped(tpl_g, mask_s, c_s, pose_matrix(*p)) for p in poses]
    radius = 0.6 * size_s + 2.0
    if 0 < params.prefilter_places < len(cands):
        # Rank the places first with turns only (one scale, aspect and
        # stretch: a fifth or less of the family), then spend the whole
        # family on the best few.
        mid = [i for i, p in enumerate(poses)
               if p[1] == params.scales[len(params.scales) // 2]
               and p[2] == params.aspects[len(params.aspects) // 2]
               and p[3] == params.stretches[len(params.stretches) // 2]]
        rank = []
        for cand in cands:
            rank.append(max(_match(img_g, warped[i], cand, radius)[0] for i in mid))
        cands = cands[np.argsort(-np.array(rank))[:params.prefilter_places]]
    found = []  # (coarse score, position (2,) in the scaled image, pose)
    for cand in cands:
        best = (-2.0, cand, poses[0])
        for p, w in zip(poses, warped):
            sc, pos, _ = _match(img_g, w, cand, radius)
            if sc > best[0]:
                best = (sc, pos, p)
        found.append(best)
    found.sort(key=lambda f: -f[0])
    # The best fine_candidates distinct places get the exact (colour, masked,
    # full-resolution) fine search: their scores are comparable, and the
    # second best is the look-alike that makes the first doubtful.
    finals: list = []
    for f in found:
        if all(np.hypot(*(f[1] - g[1])) > 0.7 * size_s for g in finals):
            finals.append(f)
        if len(finals) >= params.fine_candidates:
            break
    margins = [-1.0] * len(finals)
    if params.repose_stretches:
        k2 = min(1.0, params.repose_size_px / size)
        tg_full, ig_full = template, image
        if not params.repose_colour and template.ndim == 3:
            tg_full = cv2.cvtColor(template, cv2.COLOR_RGB2GRAY)
            ig_full = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if k2 < 0.97:
            tpl2 = cv2.resize(tg_full, None, fx=k2, fy=k2, interpolation=cv2.INTER_AREA)
            img2 = cv2.resize(ig_full, None, fx=k2, fy=k2, interpolation=cv2.INTER_AREA)
            mask2 = (cv2.resize(mask_full, None, fx=k2, fy=k2, interpolation=cv2.INTER_AREA)
                     > 127).astype(np.uint8) * 255
        else:
            k2, tpl2, img2, mask2 = 1.0, tg_full, ig_full, mask_full
        c2 = (centre + 0.5) * k2 - 0.5
        rthetas = np.deg2rad(np.arange(0.0, 360.0, params.repose_angle_step_deg))
        # The turn comes from the inside of the region: its border (a
        # plate's side wall, the table around it) looks the same for a small
        # turn whatever the texture says, and wins over the true large turn.
        e = int(round(params.repose_shrink * size * k2))
        if e > 0:
            inner = cv2.erode(mask2, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                                (2 * e + 1, 2 * e + 1)))
            if np.count_nonzero(inner) >= 0.25 * np.count_nonzero(mask2):
                mask2 = inner
        out = []
        for j, f in enumerate(finals):
            if j >= params.repose_places:
                out.append(f + (-1.0,))
                continue
            pos2 = ((f[1] + 0.5) / k + 0.5) * k2 - 0.5
            sc, p2, pose, m = _repose(tpl2, mask2, c2, img2, (f[0], pos2, f[2]), params,
                                      rthetas, size * k2)
            out.append((sc, ((p2 + 0.5) / k2 + 0.5) * k - 0.5, pose, m))
        margins = [f[3] for f in out]
        finals = [f[:3] for f in out]
    mask_f = mask_full
    if params.fine_inner and size >= params.inner_min_size_px:
        e = int(round(params.repose_shrink * size))
        if e > 0:
            inner = cv2.erode(mask_full, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                                    (2 * e + 1, 2 * e + 1)))
            if np.count_nonzero(inner) >= 0.25 * area:
                mask_f = inner
    step = math.radians(params.angle_step_deg)
    refined = [_fine(template, mask_f, centre, image, f, k, step, size) + (m,)
               for f, m in zip(finals, margins)]
    refined = [r for r in refined if r[0] is not None]
    if not refined:
        return None
    refined.sort(key=lambda r: -r[0])
    sc, pos, pose, turn_margin = refined[0]
    others = [r[0] for r in refined[1:] if np.hypot(*(r[1] - pos)) > 0.7 * size]
    runner_up = max(others) if others else -1.0
    lin = pose_matrix(*pose)
    affine = np.hstack([lin, (pos - lin @ centre)[:, None]])
    if params.ecc_iterations > 0:
        better = _ecc(template, mask_f, image, affine, params.ecc_iterations)
        if better is not None:
            sc_ecc = affine_score(template, points, image, better, params.grow_px, mask_f)
            if sc_ecc > sc:
                sc, affine = sc_ecc, better
    return SearchResult(affine, float(sc), float(runner_up), size, float(turn_margin))


def _repose(tpl_g: np.ndarray, mask_s: np.ndarray, c_s: np.ndarray, img_g: np.ndarray,
            coarse: tuple, params: SearchParams, thetas: np.ndarray, size_s: float) -> tuple:
    """Search the turn again at one place with separate target foreshortening.

    The coarse family ties template and target foreshortening; a round
    object that moved nearer to the camera is seen less foreshortened and
    its true turn can score below a wrong one. Returns (score, position
    (2,), pose, turn margin): the margin is the best score at a turn more
    than ``turn_apart_deg`` away minus the best score (<= 0).
    """
    _, pos0, (_, s0, a0, _) = coarse
    radius = 0.1 * size_s + 1.5
    results = []  # (score, position, pose)
    for t in thetas:
        for s in (s0 * f for f in params.repose_scales):
            for r in params.repose_stretches:
                w = _Warped(tpl_g, mask_s, c_s, pose_matrix(t, s, a0, r))
                sc, pos, _ = _match(img_g, w, pos0, radius)
                results.append((sc, pos, (t, s, a0, r)))
    best = max(results, key=lambda x: x[0])
    apart = math.radians(params.turn_apart_deg)
    far = [x[0] for x in results
           if abs((x[2][0] - best[2][0] + math.pi) % (2 * math.pi) - math.pi) > apart]
    margin = (max(far) - best[0]) if far else -1.0
    return best[0], best[1], best[2], min(0.0, margin)


def _ecc(template: np.ndarray, mask: np.ndarray, image: np.ndarray, affine: np.ndarray,
         iterations: int) -> np.ndarray | None:
    """ECC alignment (full affine) of the masked template region, from ``affine`` (2, 3); None if it fails.

    The grid's maps keep template and target foreshortening tied (one
    aspect c for both); an object that moved nearer or further from the
    camera is foreshortened differently, which the 6-parameter ECC fit
    absorbs, and it is sub-pixel in every parameter, not only in position.
    """
    ys, xs = np.nonzero(mask)
    pad = 3
    x0, y0 = max(0, xs.min() - pad), max(0, ys.min() - pad)
    x1, y1 = min(mask.shape[1], xs.max() + pad + 1), min(mask.shape[0], ys.max() + pad + 1)
    tpl = template[y0:y1, x0:x1].astype(np.float32)
    img = image.astype(np.float32)
    w = np.asarray(affine, np.float32).copy()
    w[:, 2] += w[:, :2] @ np.array([x0, y0], np.float32)
    try:
        _, w = cv2.findTransformECCWithMask(
            tpl, img, mask[y0:y1, x0:x1], np.full(image.shape[:2], 255, np.uint8), w,
            cv2.MOTION_AFFINE,
            (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, 1e-4), 3)
    except cv2.error:
        return None
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)):
        return None
    w[:, 2] -= w[:, :2] @ np.array([x0, y0], np.float64)
    return w


def _fine(template: np.ndarray, mask: np.ndarray, centre: np.ndarray, image: np.ndarray,
          coarse: tuple, k: float, step: float, size: float
          ) -> tuple[float, np.ndarray, tuple] | None:
    """Masked full-resolution search around a coarse (score, position, pose): (score, position (2,), pose)."""
    theta0, s0, a0, r0 = coarse[2]
    pos0 = (coarse[1] + 0.5) / k - 0.5
    best = None
    for dt in (-0.5, -0.25, 0.0, 0.25, 0.5):
        for ds in (0.92, 1.0, 1.08):
            for a in sorted({a0, a0 * 0.88, min(1.0, a0 / 0.88)}):
                pose = (theta0 + dt * step, s0 * ds, a, r0)
                w = _Warped(template, mask, centre, pose_matrix(*pose))
                sc, pos, res = _match(image, w, pos0, 0.15 * size + 2.0)
                if res is not None and (best is None or sc > best[0]):
                    r, c = np.unravel_index(int(np.argmax(res)), res.shape)
                    best = (sc, pos + _subpixel(res, r, c), pose)
    return best if best is not None else (None, None, None)
