"""SIFT re-anchoring of the CPU tracker: features near the points, matching,
grouping into consistent motions by sequential RANSAC, and the local affine
fit that maps template points into the current frame (:class:`SiftAnchor`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from atk_perception.cpu_tracker.config import CpuTrackerConfig


@dataclass
class Features:
    """SIFT keypoint positions (M, 2) float32 and descriptors (M, 128) float32."""

    xy: np.ndarray
    desc: np.ndarray


@dataclass
class AnchorResult:
    """Template points mapped into another image by matches.

    points: (N, 2) float32; confidence: (N,) float32 in [0, 1] (geometry times
    appearance); geometric: (N,) float32 in [0, 1], the part of the confidence
    that comes from match support and fit residual only (a point hidden by an
    occluder keeps it); variance: (N,) float32 px^2 (isotropic); found: (N,)
    bool (False: no group or fit could place the point); n_groups: number of
    motion groups found; n_matches: matches after the ratio test; ncc: (N,)
    float32 patch correlation at the anchored point (NaN: flat template
    patch or not found); linear: (N, 2, 2) local linear map template offset
    -> image offset.
    """

    points: np.ndarray
    confidence: np.ndarray
    geometric: np.ndarray
    variance: np.ndarray
    found: np.ndarray
    n_groups: int
    n_matches: int
    ncc: np.ndarray
    linear: np.ndarray


class SiftAnchor:
    """SIFT matching + motion grouping + per-point local affine fit."""

    def __init__(self, config: CpuTrackerConfig) -> None:
        self.cfg = config
        self._sift = cv2.SIFT_create(nfeatures=config.sift_features)
        if config.matcher == "flann":
            # KD-trees: exact enough for SIFT at a fraction of brute force cost.
            self._matcher = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4},
                                                  {"checks": 48})
        else:
            self._matcher = cv2.BFMatcher(cv2.NORM_L2)

    def features(self, gray: np.ndarray, near: np.ndarray | None = None,
                 scale: float = 1.0, max_pixels: int = 0) -> Features:
        """SIFT on ``gray`` (H, W); positions returned in full-resolution pixels (M, 2).

        ``near`` (K, 2): only the bounding box of these points grown by
        ``reanchor_radius_px`` is searched (a crop: cheaper than a mask, which
        still pays for the whole pyramid). ``scale`` < 1 detects on a
        downscaled copy (about 1/scale^2 cheaper, at some accuracy cost that
        the local fits average out); ``max_pixels`` > 0 lowers the scale
        further until the searched region has at most that many pixels.
        """
        x0 = y0 = 0
        radius = self.cfg.reanchor_radius_px
        if near is not None and radius > 0 and len(near) > 0:
            h, w = gray.shape
            x0 = int(max(0, np.floor(near[:, 0].min() - radius)))
            y0 = int(max(0, np.floor(near[:, 1].min() - radius)))
            x1 = int(min(w, np.ceil(near[:, 0].max() + radius) + 1))
            y1 = int(min(h, np.ceil(near[:, 1].max() + radius) + 1))
            gray = gray[y0:y1, x0:x1]
        if max_pixels > 0:
            scale = min(scale, float(np.sqrt(max_pixels / gray.size)))
        if 0.97 < scale < 1.03:
            scale = 1.0
        if scale != 1.0:
            # INTER_AREA to shrink; INTER_LINEAR to enlarge (both map pixel
            # centres as (x + 0.5) * scale - 0.5).
            gray = cv2.resize(gray, None, fx=scale, fy=scale,
                              interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        kps, desc = self._sift.detectAndCompute(gray, None)
        if desc is None or len(kps) == 0:
            return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32))
        xy = np.array([k.pt for k in kps], np.float32)
        if scale != 1.0:
            # INTER_AREA maps pixel centres as (x + 0.5) / scale - 0.5.
            xy = (xy + 0.5) / scale - 0.5
        xy += np.array([x0, y0], np.float32)
        return Features(xy, desc.astype(np.float32))

    def near_points(self, feats: Features, points: np.ndarray) -> Features:
        """Keep the features (M, 2) within ``local_max_distance_px`` of some point (N, 2).

        Only these can take part in a local fit, and every feature dropped
        from the template makes each later matching cheaper.
        """
        if len(feats.xy) == 0 or len(points) == 0:
            return feats
        d2 = ((feats.xy[:, None, :] - points[None, :, :].astype(np.float32)) ** 2).sum(-1)
        keep = d2.min(axis=1) <= self.cfg.local_max_distance_px ** 2
        return Features(feats.xy[keep], feats.desc[keep])

    def match(self, a: Features, b: Features) -> tuple[np.ndarray, np.ndarray]:
        """Ratio-test matches a -> b: (src (M, 2) in a, dst (M, 2) in b)."""
        if len(a.xy) < 2 or len(b.xy) < 2:
            return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
        pairs = self._matcher.knnMatch(a.desc, b.desc, k=2)
        ia, ib = [], []
        for pair in pairs:
            if len(pair) == 2 and pair[0].distance < self.cfg.sift_ratio * pair[1].distance:
                ia.append(pair[0].queryIdx)
                ib.append(pair[0].trainIdx)
        if not ia:
            return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
        # One template feature per target feature: drop many-to-one matches,
        # which are repeated texture rather than correspondences.
        ib_arr = np.array(ib)
        _, first, counts = np.unique(ib_arr, return_index=True, return_counts=True)
        keep = first[counts == 1]
        return a.xy[np.array(ia)[keep]], b.xy[ib_arr[keep]]

    def group(self, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Sequential RANSAC: labels (M,) int (-1 = in no group) and one 3x3 model per group."""
        cfg = self.cfg
        labels = np.full(len(src), -1, np.int32)
        models: list[np.ndarray] = []
        free = np.arange(len(src))
        for g in range(cfg.group_max_models):
            if len(free) < cfg.group_min_matches:
                break
            s, d = src[free], dst[free]
            if cfg.group_model == "homography":
                model, inl = cv2.findHomography(s, d, cv2.RANSAC, cfg.group_ransac_px,
                                                maxIters=2000, confidence=0.995)
            else:
                aff, inl = cv2.estimateAffine2D(s, d, method=cv2.RANSAC,
                                                ransacReprojThreshold=cfg.group_ransac_px,
                                                maxIters=2000, confidence=0.995)
                model = None if aff is None else np.vstack([aff, [0.0, 0.0, 1.0]])
            if model is None or inl is None:
                break
            inl = inl.ravel().astype(bool)
            if inl.sum() < cfg.group_min_matches:
                break
            labels[free[inl]] = g
            models.append(model)
            free = free[~inl]
        return labels, models

    def refine(self, template_gray: np.ndarray, gray: np.ndarray, q: np.ndarray,
               pred: np.ndarray, lin: np.ndarray) -> np.ndarray | None:
        """Align the template around ``q`` (2,), warped by ``lin`` (2, 2), to ``gray`` near ``pred``.

        SIFT keypoints are localised to a few tenths of a pixel and the local
        fit averages a dozen of them; this last step matches the point's own
        neighbourhood (Lucas-Kanade on contrast-normalised patches, so a
        lighting change does not bias it). Returns the refined (2,) position,
        or None when the alignment fails, is inconsistent forward-backward or
        moves the point by more than ``refine_max_shift_px``.
        """
        cfg = self.cfg
        rr = cfg.refine_radius_px
        if rr == 0:
            return None
        try:
            inv = np.linalg.inv(lin)
        except np.linalg.LinAlgError:
            return None
        margin = int(math.ceil(cfg.refine_max_shift_px)) + 2
        side = 2 * (rr + margin) + 1
        c = (side - 1) / 2.0
        # crop pixel u <-> image pred + (u - c) <-> template q + inv (u - c)
        m = np.hstack([inv, (q - inv @ np.array([c, c]))[:, None]])
        warped = cv2.warpAffine(template_gray, m, (side, side),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        crop = cv2.getRectSubPix(gray, (side, side), (float(pred[0]), float(pred[1])))
        a, b = _normalise_u8(warped), _normalise_u8(crop)
        if a is None or b is None:
            return None
        start = np.array([[[c, c]]], np.float32)
        params = dict(winSize=(2 * rr + 1, 2 * rr + 1), maxLevel=1,
                      criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
        fwd, st1, _ = cv2.calcOpticalFlowPyrLK(a, b, start, None, **params)
        bwd, st2, _ = cv2.calcOpticalFlowPyrLK(b, a, fwd, None, **params)
        if not (st1[0, 0] and st2[0, 0]):
            return None
        d = fwd[0, 0] - start[0, 0]
        if (np.hypot(*d) > cfg.refine_max_shift_px
                or np.hypot(*(bwd[0, 0] - start[0, 0])) > 0.25):
            return None
        return (pred + d).astype(np.float32)

    def ncc_at(self, template_gray: np.ndarray, gray: np.ndarray, q: np.ndarray,
               at: np.ndarray, lin: np.ndarray) -> float | None:
        """NCC of the template patch around ``q`` (2,), warped by ``lin`` (2, 2), at ``at`` (2,) in ``gray``."""
        r = self.cfg.patch_radius_px
        off = np.stack(np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1)), -1)
        off = off.reshape(-1, 2).astype(np.float64)
        tpl_patch = cv2.getRectSubPix(template_gray, (2 * r + 1, 2 * r + 1),
                                      (float(q[0]), float(q[1]))).astype(np.float32)
        return _patch_ncc(tpl_patch, gray, off @ np.asarray(lin, float).T + at, r)

    def anchor(self, src: np.ndarray, dst: np.ndarray, points: np.ndarray,
               template_gray: np.ndarray, gray: np.ndarray,
               prior: np.ndarray | None = None,
               prior_ok: np.ndarray | None = None) -> AnchorResult:
        """Map template ``points`` (N, 2) through the grouped matches ``src`` -> ``dst`` (M, 2).

        Each point gets one candidate per motion group near it (a local affine
        fit of that group's nearest matches). ``prior`` (N, 2) is the tracked
        estimate in the target image: where ``prior_ok`` (N,) is True the
        candidate nearest to it (within ``prior_gate_px``) wins. Otherwise the
        candidate whose warped template patch correlates best with the image
        wins (a point on a moved object lands where its own texture is; the
        static table's candidate lands on whatever is there now).
        """
        cfg = self.cfg
        n = len(points)
        out = np.zeros((n, 2), np.float32)
        conf = np.zeros(n, np.float32)
        geo = np.zeros(n, np.float32)
        var = np.full(n, np.inf, np.float32)
        found = np.zeros(n, bool)
        ncc_out = np.full(n, np.nan, np.float32)
        lin_out = np.tile(np.eye(2, dtype=np.float32), (n, 1, 1))
        labels, models = self.group(src, dst)
        if not models or n == 0:
            return AnchorResult(out, conf, geo, var, found, len(models), len(src),
                                ncc_out, lin_out)
        in_group = labels >= 0
        gsrc, gdst, glab = src[in_group], dst[in_group], labels[in_group]
        two_sigma2 = 2.0 * cfg.local_sigma_px ** 2
        r = cfg.patch_radius_px
        off = np.stack(np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1)), -1)
        off = off.reshape(-1, 2).astype(np.float64)
        for i in range(n):
            q = points[i].astype(np.float64)
            tpl_patch = cv2.getRectSubPix(template_gray, (2 * r + 1, 2 * r + 1),
                                          (float(q[0]), float(q[1]))).astype(np.float32)
            d2 = np.sum((gsrc - q) ** 2, axis=1)
            w_all = np.exp(-d2 / two_sigma2)
            candidates = []  # (vote, prediction (2,), rms, support, matches used, ncc, A (2, 2))
            for g in range(len(models)):
                sel = np.flatnonzero((glab == g) & (d2 <= cfg.local_max_distance_px ** 2))
                vote = float(w_all[glab == g].sum())
                if len(sel) >= cfg.local_min_matches:
                    sel = sel[np.argsort(d2[sel])[:cfg.local_matches]]
                    coef = _local_affine(gsrc[sel] - q, gdst[sel], w_all[sel])
                    if coef is None:
                        continue
                    coef, rms = coef
                    pred = coef[2].astype(np.float32)
                    lin = coef[:2].T  # template offset -> image offset
                    mapped = off @ coef[:2] + coef[2]
                    support = min(1.0, float(w_all[sel].sum()) / (0.5 * cfg.local_matches))
                    used = len(sel)
                elif vote > 0.5:
                    # Few matches nearby: the whole part's model, with low support.
                    hq = np.hstack([q + off, np.ones((len(off), 1))]) @ models[g].T
                    if np.any(np.abs(hq[:, 2]) < 1e-9):
                        continue
                    mapped = hq[:, :2] / hq[:, 2:3]
                    pred = mapped[len(off) // 2].astype(np.float32)
                    lin = np.linalg.lstsq(off, mapped - pred, rcond=None)[0].T
                    rms, support, used = cfg.group_ransac_px, 0.25 * min(1.0, vote), cfg.local_min_matches
                else:
                    continue
                ncc = _patch_ncc(tpl_patch, gray, mapped, r)
                candidates.append((vote, pred, rms, support, used, ncc, lin))
            if not candidates:
                continue
            total_vote = sum(c[0] for c in candidates) + 1e-9
            chosen = None
            if prior is not None and prior_ok is not None and prior_ok[i]:
                dists = [float(np.hypot(*(c[1] - prior[i]))) for c in candidates]
                j = int(np.argmin(dists))
                if dists[j] <= cfg.prior_gate_px:
                    chosen = candidates[j]
            if chosen is None:
                chosen = max(candidates, key=lambda c: (c[5] if c[5] is not None else 0.0)
                             + 0.2 * c[0] / total_vote)
            vote, pred, rms, support, used, ncc, lin = chosen
            refined = self.refine(template_gray, gray, q, pred, lin)
            appearance = 1.0 if ncc is None else float(np.clip(
                (ncc - cfg.ncc_min) / (cfg.ncc_full - cfg.ncc_min), 0.0, 1.0))
            out[i] = pred
            geo[i] = support * math.exp(-0.5 * (rms / cfg.residual_scale_px) ** 2)
            conf[i] = geo[i] * appearance
            # Variance of the fitted position: per-match noise (floored by the
            # assumed SIFT accuracy) over the matches that carry the fit.
            var[i] = (cfg.anchor_noise_px ** 2 + rms ** 2) / max(1.0, used - 3.0) * 3.0
            if refined is not None:
                out[i] = refined
                var[i] = min(float(var[i]), cfg.refine_noise_px ** 2)
            found[i] = True
            ncc_out[i] = np.nan if ncc is None else ncc
            lin_out[i] = lin
        return AnchorResult(out, np.clip(conf, 0, 1), np.clip(geo, 0, 1), var, found,
                            len(models), len(src), ncc_out, lin_out)


def _normalise_u8(patch: np.ndarray) -> np.ndarray | None:
    """Zero-mean, fixed-contrast uint8 copy of ``patch`` (None if it is flat)."""
    p = patch.astype(np.float32)
    std = float(p.std())
    if std < 2.0:
        return None
    return np.clip((p - float(p.mean())) * (40.0 / std) + 128.0, 0, 255).astype(np.uint8)


def _patch_ncc(tpl_patch: np.ndarray, gray: np.ndarray, mapped: np.ndarray,
               r: int) -> float | None:
    """NCC between a template patch (2r+1, 2r+1) and ``gray`` sampled at ``mapped`` ((2r+1)^2, 2).

    None when the template patch is flat (correlation says nothing there).
    """
    side = 2 * r + 1
    mx = mapped[:, 0].reshape(side, side).astype(np.float32)
    my = mapped[:, 1].reshape(side, side).astype(np.float32)
    patch = cv2.remap(gray, mx, my, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)
    a = tpl_patch - tpl_patch.mean()
    b = patch - patch.mean()
    na, nb = float(np.sqrt((a * a).sum())), float(np.sqrt((b * b).sum()))
    if na < 1e-3 * side * side:
        return None
    if nb < 1e-6:
        return 0.0
    return float((a * b).sum() / (na * nb))


def _local_affine(rel_src: np.ndarray, dst: np.ndarray,
                  w: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Weighted least-squares affine dst ~ A [rel_src, 1]; rel_src (K, 2) centred on the query.

    Returns (coefficients (3, 2): rows map x, y and 1, so row 2 is the query's
    image; weighted rms residual) or None when degenerate.
    """
    k = len(rel_src)
    x = np.hstack([rel_src.astype(np.float64), np.ones((k, 1))])
    sw = np.sqrt(np.maximum(w, 1e-6))[:, None]
    xw = x * sw
    if np.linalg.matrix_rank(xw, tol=1e-6 * max(1.0, float(np.abs(xw).max()))) < 3:
        return None
    coef, *_ = np.linalg.lstsq(xw, dst.astype(np.float64) * sw, rcond=None)
    resid = x @ coef - dst
    rms = float(np.sqrt(np.sum(w[:, None] * resid ** 2) / max(1e-9, float(w.sum()))))
    # With exactly three matches the fit is exact and its residual says
    # nothing: report the RANSAC-level uncertainty instead.
    if k <= 3:
        rms = max(rms, 1.0)
    return coef, rms
