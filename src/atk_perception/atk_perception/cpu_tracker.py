"""CPU backend of h_C: Lucas-Kanade tracking re-anchored to the template by SIFT.

ROS-free, no learned weights, OpenCV only. Two parts:

* **Frame to frame** (every ``update``): pyramidal Lucas-Kanade from the
  previous frame, checked forward-backward. The forward-backward error makes a
  point invisible when it exceeds ``fb_max_error_px`` and scales its
  confidence. LK alone drifts slowly (each step's sub-pixel error adds up, and
  the forward-backward check cannot see it), so:
* **Re-anchoring** (every ``reanchor_period`` frames): SIFT matches between
  the template (the image given to ``reset``) and the current frame are
  grouped into consistent motions by sequential RANSAC (one model per moving
  part: the table, each moved object), each keypoint picks the group that
  agrees with its tracked position, and a *local* affine transform fitted to
  the nearest matches of that group maps the template point into the current
  frame. A local fit copes with non-rigid motion where one global homography
  would not; the grouping keeps a keypoint on a small moved object from being
  pulled by the matches of the static table around it. The anchored estimate
  is fused with the tracked one by their variances (tracked variance grows
  each frame, anchored variance comes from the fit residuals).
  ``reanchor_mode`` says where that work runs: ``"split"`` (library
  default: deterministic) over two frames; ``"inline"`` all on the frame it
  is due; ``"async"`` (the tracker node's default) in a background thread on
  a snapshot (frame k, the points at frame k), its correction carried forward
  by the LK motion from k to the frame where it finishes, so that no frame
  waits for SIFT (but where it lands depends on thread timing).

Confidence decays by ``confidence_decay`` per frame since the last
re-anchoring, because the drift the re-anchoring corrects is invisible to the
forward-backward check.

``transfer`` uses the same SIFT matching, grouping and local fit, without a
tracked prior; each point's confidence comes from the support (how many
matches, how near) and the residual of its local fit.

Points: ``(N, 2)`` float32 pixels (x right, y down); images ``(H, W)`` grey
or ``(H, W, 3)`` RGB, uint8.
"""
from __future__ import annotations

import math
import threading
import weakref
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, fields

import cv2
import numpy as np

from atk_perception.correspondence import Correspondence, CorrespondenceError, TrackResult
from atk_perception.image_checks import check_image, check_points, check_same_size
from atk_perception.object_search import (SearchParams, affine_score, cluster_points, region_mask,
                                          search_object)

REANCHOR_MODES = ("inline", "split", "async")


@dataclass
class CpuTrackerConfig:
    """Every threshold of the CPU backend. Distances are in pixels of the input image."""

    # --- Lucas-Kanade, frame to frame ---
    lk_window_px: int = 21
    """Side of the LK search window (odd). Larger follows faster motion, costs more."""
    lk_pyramid_levels: int = 3
    """Pyramid levels above the full image (0 = no pyramid)."""
    lk_max_iterations: int = 30
    lk_epsilon: float = 0.01
    """LK stops when an iteration moves the point less than this (pixels)."""
    lk_highpass_sigma_px: float = 4.0
    """If > 0, LK runs on the image minus its Gaussian blur of this sigma: smooth lighting changes (offsets, gradients) then do not bias it."""
    fb_max_error_px: float = 1.5
    """Forward-backward error above which a point is reported not visible."""
    fb_confidence_scale_px: float = 1.0
    """Confidence factor is exp(-(fb_error / scale)^2 / 2)."""
    lk_drift_std_px: float = 0.15
    """Assumed LK drift per frame (std, pixels): the tracked estimate's variance grows by its square."""

    # --- re-anchoring to the template ---
    reanchor_period: int = 5
    """Re-anchor every this many frames (1 = every frame, 0 = never: plain LK)."""
    reanchor_mode: str = "split"
    """Where a re-anchoring runs (the tracker node defaults to 'async'; the library keeps 'split' because offline users (keypoint propagation, in-process evaluation, tests) feed frames faster than real time and want results that do not depend on thread timing). 'inline': all on the frame it is due (that frame costs SIFT + fits, ~90 ms at 640x480). 'split': SIFT on that frame, fits on the next, the correction carried over by that frame's LK motion (~65 ms peak). 'async': a background thread works on a snapshot (frame k and its points) while frames keep coming; when it finishes at frame k+m its correction is carried forward by the LK motion from k to k+m, and frames_since_anchor counts from k. Every frame then costs only LK (OpenCV releases the GIL, so the job runs on the other core)."""
    reanchor_radius_px: float = 160.0
    """Re-anchoring searches SIFT features in the points' bounding box grown by this (0 = whole image)."""
    reanchor_sift_pixels: int = 120_000
    """Re-anchoring detects SIFT on the searched region downscaled to at most this many pixels (0 = full resolution). SIFT cost grows with the pixel count; 120k keeps 640x480 at ~0.6x scale and leaves 320x240 untouched."""
    transfer_sift_scale: float = 1.0
    """``transfer`` detects SIFT on the images scaled by this (> 1 enlarges: more features on small objects, at about scale^2 the cost)."""
    sift_features: int = 1500
    """Maximum SIFT features per image (0 = no limit)."""
    sift_ratio: float = 0.8
    """Lowe's ratio test: keep a match when best < ratio * second best distance."""
    group_model: str = "homography"
    """Motion model of one moving part for the grouping: 'homography' or 'affine'."""
    group_ransac_px: float = 4.0
    """RANSAC inlier threshold of the grouping (pixels)."""
    group_min_matches: int = 8
    """A motion group needs at least this many inlier matches."""
    group_max_models: int = 6
    """At most this many moving parts are extracted."""
    local_matches: int = 12
    """Matches (nearest to the point, of its group) used by the local affine fit."""
    local_min_matches: int = 4
    """Fewer matches than this within local_max_distance_px: no local fit (the group's model is used)."""
    local_max_distance_px: float = 120.0
    """Matches further than this from the point are not used by its local fit."""
    local_sigma_px: float = 40.0
    """Gaussian weight width of the local fit and of the group vote."""
    anchor_noise_px: float = 0.5
    """Assumed accuracy of one SIFT match (std, pixels), floor of the anchored variance."""
    refine_radius_px: int = 8
    """Half-size of the window of the final refinement: the template patch, warped by the local fit, is aligned to the image by Lucas-Kanade (0 disables it)."""
    refine_max_shift_px: float = 2.0
    """A refinement that moves the fitted point further than this is discarded."""
    refine_noise_px: float = 0.15
    """Assumed accuracy (std, pixels) of a refined anchor, used when fusing it with the track."""
    prior_gate_px: float = 6.0
    """A group whose prediction lies further than this from the tracked point is not chosen for it."""
    jump_min_confidence: float = 0.5
    """A re-anchored estimate replaces a lost or disagreeing track only when its geometric confidence (support, residual) is at least this."""

    # --- confidence ---
    disagree_confidence_factor: float = 0.5
    """A track that its re-anchoring contradicts (and that keeps its position) has its confidence multiplied by this."""
    confidence_decay: float = 0.97
    """Per-frame confidence factor since the last re-anchoring (drift is invisible to LK)."""
    residual_scale_px: float = 2.0
    """Anchor confidence factor is exp(-(rms residual / scale)^2 / 2)."""
    patch_radius_px: int = 7
    """Half-size of the appearance patch compared (NCC) between template and image."""
    ncc_min: float = 0.2
    """Patch correlation at or below which a match is judged wrong (confidence 0)."""
    ncc_full: float = 0.8
    """Patch correlation at or above which appearance gives full confidence."""
    matcher: str = "flann"
    """Descriptor matcher: 'flann' (fast, approximate) or 'bruteforce' (exact)."""

    # --- transfer: appearance search for small objects (object_search.py) ---
    search: bool = True
    """``transfer`` also searches each small cluster of points (one object) by its appearance, rotation-aware, and keeps whichever of that and the SIFT fit is more confident. SIFT finds (almost) no features on an object of ~20 px."""
    search_max_size_frac: float = 0.3
    """Only clusters whose region (square root of its area) is at most this fraction of min(H, W) are searched: larger ones have SIFT features."""
    search_link_frac: float = 0.1
    """Points closer than this fraction of min(H, W) (chained) form one cluster, i.e. one object."""
    search_angle_step_deg: float = 10.0
    """Rotation step of the coarse search (the fine stage halves and quarters it)."""
    search_candidates: int = 8
    """Places (colour back-projection maxima) searched per cluster."""
    search_prefilter_places: int = 0
    """Of those, this many (ranked by a turn-only search) get the whole pose family (0: all of them)."""
    search_stretch: float = 1.0
    """The pose family also stretches the target's foreshortening by 1/this and this (1: off): an object that moved nearer to the camera is seen less foreshortened."""
    search_work_size_px: float = 28.0
    """The coarse search runs on images scaled so that the object is about this big (never enlarged)."""
    search_ncc_min: float = 0.45
    """Search score (masked colour NCC) at or below which the search gives confidence 0."""
    search_ncc_full: float = 0.7
    """Search score at or above which its appearance gives full confidence."""
    search_margin: float = 0.1
    """Confidence is also scaled by min(1, (score - best score elsewhere) / this): a look-alike elsewhere makes the answer doubtful."""
    search_better_by: float = 0.03
    """The search replaces a cluster's SIFT fit only when its score beats the NCC of the template region at the SIFT fit by this."""
    search_turn_margin: float = 0.1
    """Coarse-score margin of the best turn over any turn more than 25 degrees away at the same place at or above which the turn is unambiguous (confidence scales down linearly below it: a round plate's points turned about its centre must not be confident)."""

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise ValueError(
                    f"CpuTrackerConfig.{field} = {getattr(self, field)!r}: {rule}")

        need(self.lk_window_px >= 5 and self.lk_window_px % 2 == 1, "lk_window_px",
             "must be an odd integer >= 5")
        need(0 <= self.lk_pyramid_levels <= 8, "lk_pyramid_levels", "must be in [0, 8]")
        need(self.lk_max_iterations >= 1, "lk_max_iterations", "must be >= 1")
        need(self.lk_epsilon > 0, "lk_epsilon", "must be > 0")
        need(self.lk_highpass_sigma_px >= 0, "lk_highpass_sigma_px", "must be >= 0 (0 = off)")
        need(self.fb_max_error_px > 0, "fb_max_error_px", "must be > 0")
        need(self.fb_confidence_scale_px > 0, "fb_confidence_scale_px", "must be > 0")
        need(self.lk_drift_std_px > 0, "lk_drift_std_px", "must be > 0")
        need(self.reanchor_period >= 0, "reanchor_period", "must be >= 0 (0 disables)")
        need(self.reanchor_mode in REANCHOR_MODES, "reanchor_mode",
             f"must be one of {REANCHOR_MODES}")
        need(self.reanchor_radius_px >= 0, "reanchor_radius_px", "must be >= 0")
        need(self.reanchor_sift_pixels == 0 or self.reanchor_sift_pixels >= 10_000,
             "reanchor_sift_pixels", "must be 0 (full resolution) or >= 10000")
        need(0.1 <= self.transfer_sift_scale <= 4.0, "transfer_sift_scale", "must be in [0.1, 4]")
        need(self.sift_features >= 0, "sift_features", "must be >= 0 (0 = no limit)")
        need(0 < self.sift_ratio <= 1, "sift_ratio", "must be in (0, 1]")
        need(self.group_model in ("homography", "affine"), "group_model",
             "must be 'homography' or 'affine'")
        need(self.group_ransac_px > 0, "group_ransac_px", "must be > 0")
        need(self.group_min_matches >= 4, "group_min_matches", "must be >= 4")
        need(self.group_max_models >= 1, "group_max_models", "must be >= 1")
        need(self.local_min_matches >= 3, "local_min_matches",
             "must be >= 3 (an affine fit needs three points)")
        need(self.local_matches >= self.local_min_matches, "local_matches",
             "must be >= local_min_matches")
        need(self.local_max_distance_px > 0, "local_max_distance_px", "must be > 0")
        need(self.local_sigma_px > 0, "local_sigma_px", "must be > 0")
        need(self.anchor_noise_px > 0, "anchor_noise_px", "must be > 0")
        need(self.refine_radius_px == 0 or self.refine_radius_px >= 3, "refine_radius_px",
             "must be 0 (off) or >= 3")
        need(self.refine_max_shift_px > 0, "refine_max_shift_px", "must be > 0")
        need(self.refine_noise_px > 0, "refine_noise_px", "must be > 0")
        need(self.prior_gate_px > 0, "prior_gate_px", "must be > 0")
        need(0 <= self.jump_min_confidence <= 1, "jump_min_confidence", "must be in [0, 1]")
        need(0 <= self.disagree_confidence_factor <= 1, "disagree_confidence_factor",
             "must be in [0, 1]")
        need(0 < self.confidence_decay <= 1, "confidence_decay", "must be in (0, 1]")
        need(self.residual_scale_px > 0, "residual_scale_px", "must be > 0")
        need(self.patch_radius_px >= 2, "patch_radius_px", "must be >= 2")
        need(-1 <= self.ncc_min < self.ncc_full <= 1, "ncc_min",
             "must satisfy -1 <= ncc_min < ncc_full <= 1")
        need(self.matcher in ("flann", "bruteforce"), "matcher",
             "must be 'flann' or 'bruteforce'")
        need(0 < self.search_max_size_frac <= 1, "search_max_size_frac", "must be in (0, 1]")
        need(0 < self.search_link_frac <= 1, "search_link_frac", "must be in (0, 1]")
        need(1 <= self.search_angle_step_deg <= 90, "search_angle_step_deg", "must be in [1, 90]")
        need(self.search_candidates >= 1, "search_candidates", "must be >= 1")
        need(self.search_prefilter_places >= 0, "search_prefilter_places", "must be >= 0 (0 = off)")
        need(1.0 <= self.search_stretch <= 2.0, "search_stretch", "must be in [1, 2] (1 = off)")
        need(self.search_work_size_px >= 8, "search_work_size_px", "must be >= 8")
        need(-1 <= self.search_ncc_min < self.search_ncc_full <= 1, "search_ncc_min",
             "must satisfy -1 <= search_ncc_min < search_ncc_full <= 1")
        need(self.search_margin > 0, "search_margin", "must be > 0")
        need(0 <= self.search_better_by <= 1, "search_better_by", "must be in [0, 1]")
        need(self.search_turn_margin > 0, "search_turn_margin", "must be > 0")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class _Features:
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
                 scale: float = 1.0, max_pixels: int = 0) -> _Features:
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
            return _Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32))
        xy = np.array([k.pt for k in kps], np.float32)
        if scale != 1.0:
            # INTER_AREA maps pixel centres as (x + 0.5) / scale - 0.5.
            xy = (xy + 0.5) / scale - 0.5
        xy += np.array([x0, y0], np.float32)
        return _Features(xy, desc.astype(np.float32))

    def near_points(self, feats: _Features, points: np.ndarray) -> _Features:
        """Keep the features (M, 2) within ``local_max_distance_px`` of some point (N, 2).

        Only these can take part in a local fit, and every feature dropped
        from the template makes each later matching cheaper.
        """
        if len(feats.xy) == 0 or len(points) == 0:
            return feats
        d2 = ((feats.xy[:, None, :] - points[None, :, :].astype(np.float32)) ** 2).sum(-1)
        keep = d2.min(axis=1) <= self.cfg.local_max_distance_px ** 2
        return _Features(feats.xy[keep], feats.desc[keep])

    def match(self, a: _Features, b: _Features) -> tuple[np.ndarray, np.ndarray]:
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


@dataclass
class _Fused:
    """Outcome of fusing a re-anchoring with the track at one frame (all (N, ...) per point)."""

    points: np.ndarray
    var: np.ndarray
    anchor_conf: np.ndarray
    result: AnchorResult | None


@dataclass
class _Template:
    """What re-anchoring matches against: the reset image (H, W), its points (N, 2), its SIFT features."""

    gray: np.ndarray
    points: np.ndarray
    features: _Features


@dataclass
class _AsyncJob:
    """A re-anchoring running in the background on the snapshot of frame ``frame``."""

    future: Future
    frame: int
    points: np.ndarray
    """(N, 2) tracked points of the snapshot."""
    var: np.ndarray
    """(N,) tracked variance of the snapshot."""


REANCHOR_WAIT_TIMEOUT_S = 10.0
"""Default bound of :meth:`CpuTracker.wait_for_reanchor` (a 640x480 job takes ~0.1 s)."""


class CpuTracker(Correspondence):
    """The CPU default h_C backend (see the module docstring).

    With ``reanchor_mode="async"`` the tracker owns one worker thread (started
    on the first re-anchoring); :meth:`close` stops it, and
    :meth:`wait_for_reanchor` waits for the job in flight (tests use it to
    make results independent of thread timing). ``executor`` replaces that
    worker (e.g. one that runs jobs only when told, for deterministic tests).
    ``update`` and ``reset`` are meant for one thread; only the re-anchoring
    job runs beside it, on copies.
    """

    def __init__(self, config: CpuTrackerConfig | None = None,
                 executor: Executor | None = None) -> None:
        self.cfg = config if config is not None else CpuTrackerConfig()
        self._executor: Executor | None = executor
        self._own_executor = executor is None
        self._executor_lock = threading.Lock()
        self._closed = False
        self._job: _AsyncJob | None = None
        self._next_async_frame = 0
        self._anchor = SiftAnchor(self.cfg)
        self._lk_params = dict(
            winSize=(self.cfg.lk_window_px, self.cfg.lk_window_px),
            maxLevel=self.cfg.lk_pyramid_levels,
            criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT,
                      self.cfg.lk_max_iterations, self.cfg.lk_epsilon))
        self._template_gray: np.ndarray | None = None
        self._template_points: np.ndarray | None = None
        self._template_features: _Features | None = None
        self._prev_gray: np.ndarray | None = None
        self._prev_lk: np.ndarray | None = None
        self._points: np.ndarray | None = None
        self._var: np.ndarray | None = None
        self._anchor_conf: np.ndarray | None = None
        self._frames_since_anchor = 0
        self._frame = 0
        self._pending: tuple | None = None  # (gray, tracked, visible, features) of a split re-anchoring
        self.last_anchor: AnchorResult | None = None
        """Diagnostics of the latest re-anchoring (None before the first)."""
        self.last_anchor_delay_frames = 0
        """Frames between the snapshot of the latest applied re-anchoring and the frame it was applied to (async mode; 0 inline, 1 split)."""
        self.reanchors_applied = 0
        """Re-anchorings applied since ``reset``."""

    # ------------------------------------------------------------------ async worker
    def close(self) -> None:
        """Stop the re-anchoring worker (waits for a job in flight, ~0.1 s); idempotent.

        After ``close`` the tracker still transfers, but ``update`` in async
        mode raises CorrespondenceError.
        """
        self._closed = True
        self._job = None
        with self._executor_lock:
            ex, self._executor = self._executor, None
        if ex is not None and self._own_executor:
            ex.shutdown(wait=True, cancel_futures=True)

    def wait_for_reanchor(self, timeout_s: float = REANCHOR_WAIT_TIMEOUT_S) -> bool:
        """Block until the re-anchoring in flight (if any) has finished; True if there was one.

        It is applied by the next ``update``. Raises TimeoutError when it
        takes longer than ``timeout_s``.
        """
        job = self._job
        if job is None:
            return False
        done, _ = wait_futures([job.future], timeout=timeout_s)
        if not done:
            raise TimeoutError(f"the CPU tracker's background re-anchoring (snapshot of frame "
                               f"{job.frame}) did not finish within {timeout_s} s")
        return True

    @property
    def reanchor_pending(self) -> bool:
        """Whether a background re-anchoring is in flight (async mode)."""
        return self._job is not None

    def _submit(self, fn, *args) -> Future:
        with self._executor_lock:
            if self._executor is None:
                if self._closed:
                    raise CorrespondenceError("update() after close(): the CPU tracker's "
                                              "re-anchoring worker was stopped; make a new tracker")
                self._executor = ThreadPoolExecutor(max_workers=1,
                                                    thread_name_prefix="cpu-tracker-reanchor")
                # Stop the thread when the tracker is collected without close().
                weakref.finalize(self, self._executor.shutdown, wait=False, cancel_futures=True)
            return self._executor.submit(fn, *args)

    # ------------------------------------------------------------------ transfer
    def transfer(self, template_image: np.ndarray, template_points: np.ndarray,
                 image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map ``template_points`` (N, 2) on ``template_image`` onto ``image``.

        Both images must have the same size. Returns (points (N, 2) float32,
        confidence (N,) float32); a point that no match group could place keeps
        its template position with confidence 0.
        """
        tg = check_image(template_image, "template_image")
        g = check_image(image, "image")
        check_same_size(tg, g, "template_image", "image")
        pts = check_points(template_points, tg.shape, "template_points")
        if len(pts) == 0:
            return pts, np.zeros(0, np.float32)
        sc = self.cfg.transfer_sift_scale
        ft = self._anchor.features(tg, pts, sc)
        # Unknown motion: search the whole target image.
        fi = self._anchor.features(g, None, sc)
        src, dst = self._anchor.match(ft, fi)
        res = self._anchor.anchor(src, dst, pts, tg, g)
        out = np.where(res.found[:, None], res.points, pts).astype(np.float32)
        conf = res.confidence.copy()
        h, w = g.shape
        if self.cfg.search:
            tc = template_image if template_image.ndim == 3 and template_image.shape[2] == 3 else tg
            ic = image if image.ndim == 3 and image.shape[2] == 3 else g
            if tc.ndim != ic.ndim:
                tc, ic = tg, g
            self._search_clusters(tc, pts, ic, res, out, conf)
        inside = (out[:, 0] >= 0) & (out[:, 0] <= w - 1) & (out[:, 1] >= 0) & (out[:, 1] <= h - 1)
        conf[~inside] = 0.0
        out[:, 0] = np.clip(out[:, 0], 0, w - 1)
        out[:, 1] = np.clip(out[:, 1], 0, h - 1)
        return out, conf.astype(np.float32)

    def _search_clusters(self, template: np.ndarray, pts: np.ndarray, image: np.ndarray,
                         res: AnchorResult, out: np.ndarray, conf: np.ndarray) -> None:
        """Appearance search per small cluster of ``pts`` (N, 2); updates ``out`` (N, 2) and ``conf`` (N,) in place.

        A cluster's search result replaces its SIFT fit when its template
        region looks more like the image there (masked NCC higher by
        ``search_better_by``) than at the SIFT fit (an affine fitted to the
        cluster's SIFT placements): the SIFT fit, where it exists and is
        right, is the more precise of the two.
        """
        cfg = self.cfg
        h, w = template.shape[:2]
        side = min(h, w)
        st = cfg.search_stretch
        params = SearchParams(angle_step_deg=cfg.search_angle_step_deg,
                              candidates=cfg.search_candidates,
                              prefilter_places=cfg.search_prefilter_places,
                              stretches=(1.0 / st, 1.0, st) if st > 1.0 else (1.0,),
                              work_size_px=cfg.search_work_size_px)
        for members in cluster_points(pts, cfg.search_link_frac * side):
            if len(members) < 3:
                continue
            mask = region_mask(pts[members], (h, w), params.grow_px)
            size = math.sqrt(float(np.count_nonzero(mask)))
            if size > cfg.search_max_size_frac * side or size < 8:
                continue
            found = res.found[members]
            extra = (np.median(res.points[members][found], axis=0)[None]
                     if found.any() else None)
            result = search_object(template, pts[members], image, params, extra)
            if result is None:
                continue
            appearance = float(np.clip((result.score - cfg.search_ncc_min)
                                       / (cfg.search_ncc_full - cfg.search_ncc_min), 0, 1))
            unique = float(np.clip((result.score - result.runner_up) / cfg.search_margin, 0, 1))
            turn = (1.0 if result.turn_runner_up <= -1.0 else
                    float(np.clip(-result.turn_runner_up / cfg.search_turn_margin, 0, 1)))
            c = appearance * unique * turn
            sift_score = -1.0
            if found.sum() >= 3:
                a_sift, _ = cv2.estimateAffine2D(pts[members][found], out[members][found],
                                                 method=cv2.LMEDS)
                # LMEDS can return a matrix of NaNs for a degenerate set (seen in an
                # atk-demo evaluation: it crashed affine_score); that is no fit
                if a_sift is not None and np.all(np.isfinite(a_sift)):
                    sift_score = affine_score(template, pts[members], image, a_sift,
                                              params.grow_px)
            if result.score > sift_score + cfg.search_better_by:
                a = result.affine
                out[members] = (pts[members] @ a[:, :2].T + a[:, 2]).astype(np.float32)
                conf[members] = c

    # ------------------------------------------------------------------ tracking
    def reset(self, image: np.ndarray, points: np.ndarray) -> None:
        """Start tracking ``points`` (N, 2) on ``image``; this image is the re-anchoring template."""
        g = check_image(image, "image")
        pts = check_points(points, g.shape, "points")
        self._template_gray = g
        self._template_points = pts.copy()
        self._template_features = None
        if self.cfg.reanchor_period > 0 and len(pts):
            self._template_features = self._anchor.near_points(
                self._anchor.features(g, pts, 1.0, self.cfg.reanchor_sift_pixels), pts)
        self._prev_gray = g
        self._prev_lk = self._lk_image(g)
        self._points = pts.copy()
        self._var = np.zeros(len(pts), np.float32)
        self._anchor_conf = np.ones(len(pts), np.float32)
        self._frames_since_anchor = 0
        self._frame = 0
        self._pending = None
        # A job in flight belongs to the old template: it keeps running (it
        # cannot be interrupted) but its result is never read.
        self._job = None
        self._next_async_frame = self.cfg.reanchor_period
        self.last_anchor = None
        self.last_anchor_delay_frames = 0
        self.reanchors_applied = 0

    def _lk_image(self, g: np.ndarray) -> np.ndarray:
        """The (H, W) uint8 image LK runs on: ``g`` itself, or its high-pass version."""
        sigma = self.cfg.lk_highpass_sigma_px
        if sigma <= 0:
            return g
        low = cv2.GaussianBlur(g, (0, 0), sigma).astype(np.int16)
        return np.clip(2 * (g.astype(np.int16) - low) + 128, 0, 255).astype(np.uint8)

    @property
    def points(self) -> np.ndarray | None:
        """Current estimates (N, 2) float32, or None before ``reset``."""
        return None if self._points is None else self._points.copy()

    def set_points(self, points: np.ndarray, which: np.ndarray) -> bool:
        """Continue from ``points`` (N, 2) for the points ``which`` (N,) bool (robot-aware occlusion).

        Their variance is raised to (prior_gate_px / 2)^2: a predicted
        position is only as good as the robot model, so the next
        re-anchoring that finds the point outweighs it.
        """
        if self._points is None:
            return False
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        sel = np.asarray(which, bool).reshape(-1)
        if len(pts) != len(self._points) or len(sel) != len(self._points):
            raise CorrespondenceError(f"set_points: {len(pts)} points / {len(sel)} flags for "
                                      f"{len(self._points)} tracked points")
        self._points[sel] = pts[sel]
        self._var[sel] = np.maximum(self._var[sel], np.float32((self.cfg.prior_gate_px / 2) ** 2))
        return True

    def update(self, image: np.ndarray) -> TrackResult:
        """Track into ``image`` (same size as the reset image)."""
        if self._prev_gray is None or self._points is None:
            raise CorrespondenceError("update() called before reset(): give the tracker "
                                      "a first image and its keypoints")
        g = check_image(image, "image")
        check_same_size(self._prev_gray, g, "the tracked stream's first image", "image")
        cfg = self.cfg
        n = len(self._points)
        self._frame += 1
        if n == 0:
            self._prev_gray, self._prev_lk = g, self._lk_image(g)
            empty = np.zeros(0, np.float32)
            return TrackResult(np.zeros((0, 2), np.float32), empty, np.zeros(0, bool))

        prev = self._points.reshape(-1, 1, 2)
        lk_prev, lk_cur = self._prev_lk, self._lk_image(g)
        fwd, st1, _ = cv2.calcOpticalFlowPyrLK(lk_prev, lk_cur, prev, None, **self._lk_params)
        bwd, st2, _ = cv2.calcOpticalFlowPyrLK(lk_cur, lk_prev, fwd, None, **self._lk_params)
        fwd = fwd.reshape(-1, 2)
        fb = np.linalg.norm(bwd.reshape(-1, 2) - self._points, axis=1)
        ok = (st1.ravel() == 1) & (st2.ravel() == 1) & np.isfinite(fb)
        fb = np.where(ok, fb, np.inf)
        visible = ok & (fb <= cfg.fb_max_error_px)
        # A lost point stays where it was last seen until re-anchoring finds it.
        new_pts = np.where(visible[:, None], fwd, self._points).astype(np.float32)
        self._var = self._var + np.float32(cfg.lk_drift_std_px ** 2)
        self._frames_since_anchor += 1

        if cfg.reanchor_mode == "async":
            new_pts = self._async_step(g, new_pts, visible)
        elif self._pending is not None:
            # Second half of a split re-anchoring: fit on the stored frame,
            # then carry each correction over by this frame's LK motion.
            old_g, old_pts, old_vis, feats = self._pending
            self._pending = None
            fixed = self._reanchor(old_g, old_pts, old_vis, feats)
            moved = np.where(visible[:, None], new_pts - old_pts, 0.0)
            new_pts = (fixed + moved).astype(np.float32)
            self.last_anchor_delay_frames = 1
        elif cfg.reanchor_period > 0 and self._frame % cfg.reanchor_period == 0:
            if cfg.reanchor_mode == "split" and self._template_features is not None:
                feats = self._anchor.features(g, new_pts, 1.0, cfg.reanchor_sift_pixels)
                self._pending = (g, new_pts.copy(), visible.copy(), feats)
            else:
                new_pts = self._reanchor(g, new_pts, visible)
                self.last_anchor_delay_frames = 0

        # Points that left the view keep their (outside) estimate, reported
        # not visible: clipping them to the border would invent a position.
        h, w = g.shape
        inside = ((new_pts[:, 0] >= 0) & (new_pts[:, 0] <= w - 1)
                  & (new_pts[:, 1] >= 0) & (new_pts[:, 1] <= h - 1))
        visible = visible & inside
        self._points = new_pts
        self._prev_gray = g
        self._prev_lk = lk_cur

        fb_term = np.exp(-0.5 * (np.where(np.isfinite(fb), fb, 1e6) / cfg.fb_confidence_scale_px) ** 2)
        conf = (self._anchor_conf * fb_term
                * cfg.confidence_decay ** self._frames_since_anchor)
        conf = np.where(visible, conf, 0.0).astype(np.float32)
        return TrackResult(new_pts.copy(), np.clip(conf, 0.0, 1.0), visible.copy())

    def _async_step(self, g: np.ndarray, new_pts: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """Async mode: apply a finished background re-anchoring, start the next when due.

        ``new_pts`` (N, 2) are this frame's tracked points; returns them
        corrected. Only numpy work happens here: the SIFT, matching and
        fitting run in the worker on copies.
        """
        cfg = self.cfg
        if self._closed:
            raise CorrespondenceError("update() after close(): the CPU tracker's re-anchoring "
                                      "worker was stopped; make a new tracker")
        job = self._job
        if job is not None and job.future.done():
            self._job = None
            fused: _Fused | None = job.future.result()  # a worker exception surfaces here
            if fused is not None:
                # The correction is for frame k (the snapshot): carry it forward
                # by the LK motion from k to now. A point lost meanwhile was held
                # in place, so its motion only counts while it was tracked.
                new_pts = (fused.points + (new_pts - job.points)).astype(np.float32)
                # The drift accumulated since k is not corrected: keep its variance.
                self._var = (fused.var + (self._var - job.var)).astype(np.float32)
                self._anchor_conf = fused.anchor_conf
                self._frames_since_anchor = self._frame - job.frame
                self.last_anchor = fused.result
                self.last_anchor_delay_frames = self._frame - job.frame
                self.reanchors_applied += 1
        if (cfg.reanchor_period > 0 and self._job is None and self._template_features is not None
                and self._frame >= self._next_async_frame):
            # Due, and no job in flight (a job that overran delays the next one
            # instead of queueing stale snapshots behind it).
            tpl = _Template(self._template_gray, self._template_points, self._template_features)
            snap_pts, snap_var = new_pts.copy(), self._var.copy()
            # g.copy(): a grey input is the caller's own array, which it may
            # reuse for its next frame while the job still reads it.
            future = self._submit(_fuse_job, cfg, tpl, g.copy(), snap_pts.copy(), visible.copy(),
                                  snap_var.copy(), self._anchor_conf.copy())
            self._job = _AsyncJob(future, self._frame, snap_pts, snap_var)
            self._next_async_frame = self._frame + cfg.reanchor_period
        return new_pts

    def _reanchor(self, g: np.ndarray, tracked: np.ndarray, visible: np.ndarray,
                  feats: _Features | None = None) -> np.ndarray:
        """Fuse the tracked points (N, 2) on ``g`` with their template re-anchoring; returns (N, 2).

        ``feats``: the SIFT features of ``g`` when already detected (split re-anchoring).
        """
        if self._template_features is None:
            return tracked
        tpl = _Template(self._template_gray, self._template_points, self._template_features)
        fused = _fuse(self._anchor, self.cfg, tpl, g, tracked, visible, self._var,
                      self._anchor_conf, feats)
        self._var, self._anchor_conf = fused.var, fused.anchor_conf
        self.last_anchor = fused.result
        self._frames_since_anchor = 0
        self.reanchors_applied += 1
        return fused.points


def _fuse_job(cfg: CpuTrackerConfig, tpl: _Template, g: np.ndarray, tracked: np.ndarray,
              visible: np.ndarray, var: np.ndarray, anchor_conf: np.ndarray) -> _Fused:
    """Background re-anchoring: its own SiftAnchor (OpenCV objects are not shared across threads)."""
    return _fuse(SiftAnchor(cfg), cfg, tpl, g, tracked, visible, var, anchor_conf)


def _anchor_looks_better(anchor: SiftAnchor, cfg: CpuTrackerConfig, tpl: _Template,
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


def _fuse(anchor: SiftAnchor, cfg: CpuTrackerConfig, tpl: _Template, g: np.ndarray,
          tracked: np.ndarray, visible: np.ndarray, var: np.ndarray, anchor_conf: np.ndarray,
          feats: _Features | None = None) -> _Fused:
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
    return _Fused(out, var, anchor_conf, res)
