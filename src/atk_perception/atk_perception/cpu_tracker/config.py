"""Configuration of the CPU tracker: :class:`CpuTrackerConfig` (validated on
construction) and the re-anchoring modes."""
from __future__ import annotations

from dataclasses import dataclass, fields


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
    table_search: bool = True
    """With the template frame's depth and the camera's pose (``set_template_geometry``), objects standing on the table are searched for by their top faces, turned about the vertical and moved on the table with the camera's perspective (table_search.py); their points, side faces included, move with them. Without that geometry (a photograph, no calibration) nothing changes."""
    table_work_size_px: float = 40.0
    """The table search's coarse stage runs on images scaled so that the top face is about this big."""
    table_step_deg: float = 15.0
    """Yaw step of the table search's coarse stage (7.5 until 2026-12-03; 15 placed every keypoint of the ground-truth benchmark's first frames as 7.5 did, in half the time: docs/perception.md, "Cost")."""
    table_sift_agree_px: float = 1.5
    """An object whose points SIFT placed confidently (``table_sift_confidence``) with at least 4 matched points fitting one affine map within this (median) keeps the SIFT placement."""
    table_accept_confidence: float = 0.5
    """An object the table search places with less confidence also gets the flat search; each point keeps the more confident placement."""
    table_sift_confidence: float = 0.5
    """Mean SIFT confidence of an object's matched points at or above which SIFT's placement is kept (with ``table_sift_agree_px``)."""
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
        need(self.table_work_size_px >= 8, "table_work_size_px", "must be >= 8")
        need(0 < self.table_step_deg <= 45, "table_step_deg", "must be in (0, 45]")
        need(self.table_sift_agree_px >= 0, "table_sift_agree_px", "must be >= 0")
        need(0 <= self.table_sift_confidence <= 1, "table_sift_confidence", "must be in [0, 1]")
        need(0 <= self.table_accept_confidence <= 1, "table_accept_confidence", "must be in [0, 1]")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
