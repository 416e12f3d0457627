""":class:`CpuTracker`: Lucas-Kanade tracking frame to frame, re-anchored to the
template (inline, split over two frames, or in its background thread), and
the transfer of template points onto an image."""
from __future__ import annotations

import math
import threading
import weakref
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass

import cv2
import numpy as np

from atk_perception.correspondence import Correspondence, CorrespondenceError, TrackResult
from atk_perception.cpu_tracker.anchoring import AnchorResult, Features, SiftAnchor
from atk_perception.cpu_tracker.config import CpuTrackerConfig
from atk_perception.cpu_tracker.fusion import Fused, Template, fuse, fuse_job
from atk_perception.image_checks import check_image, check_points, check_same_size
from atk_perception.object_search import (SearchParams, affine_score, cluster_points, region_mask,
                                          search_object)


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
        self._template_features: Features | None = None
        self._prev_gray: np.ndarray | None = None
        self._prev_lk: np.ndarray | None = None
        self._points: np.ndarray | None = None
        self._var: np.ndarray | None = None
        self._anchor_conf: np.ndarray | None = None
        self._frames_since_anchor = 0
        self._frame = 0
        self._pending: tuple | None = None  # (gray, tracked, visible, features) of a split re-anchoring
        # the template frame's depth and the camera (set_template_geometry): objects on the
        # table are then searched for as 3D objects (table_search.py)
        self._geometry_image: np.ndarray | None = None
        self._geometry = None
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
    def set_template_geometry(self, template_image: np.ndarray | None, geometry=None) -> bool:
        """What the robot knows about a template frame: ``geometry`` (table_search.TemplateGeometry:
        its depth, the camera's K and pose in the robot base frame) for ``template_image``
        (H, W, 3) uint8. Later transfers from that very image search the objects standing on the
        table by their top faces, with yaw and perspective (``cfg.table_search``); transfers from
        any other image, or after ``set_template_geometry(None)``, do as before. Returns whether it
        will be used."""
        if template_image is None or geometry is None:
            self._geometry_image, self._geometry = None, None
            return False
        img = np.asarray(template_image)
        if img.shape[:2] != geometry.depth_m.shape:
            raise CorrespondenceError(f"template geometry: depth {geometry.depth_m.shape} does not match the "
                                      f"template image {img.shape[:2]}")
        self._geometry_image, self._geometry = img.copy(), geometry
        return bool(self.cfg.search and self.cfg.table_search)

    def _table_geometry(self, template_image: np.ndarray):
        """The geometry set for ``template_image``, or None."""
        g, ref = self._geometry, self._geometry_image
        if g is None or ref is None or not (self.cfg.search and self.cfg.table_search):
            return None
        img = np.asarray(template_image)
        return g if img.shape == ref.shape and np.array_equal(img, ref) else None

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
            placed = np.zeros(len(pts), bool)
            geometry = self._table_geometry(template_image)
            if geometry is not None and tc.ndim == 3:
                placed = self._search_table(tc, pts, ic, geometry, res, out, conf)
            # objects the table search did not place confidently also get the flat search; each
            # point keeps the more confident of the two placements
            doubtful = placed & (conf < self.cfg.table_accept_confidence)
            table_out, table_conf = out[doubtful].copy(), conf[doubtful].copy()
            self._search_clusters(tc, pts, ic, res, out, conf, skip=placed & ~doubtful)
            keep = table_conf >= conf[doubtful]
            idx = np.flatnonzero(doubtful)[keep]
            out[idx], conf[idx] = table_out[keep], table_conf[keep]
        inside = (out[:, 0] >= 0) & (out[:, 0] <= w - 1) & (out[:, 1] >= 0) & (out[:, 1] <= h - 1)
        conf[~inside] = 0.0
        out[:, 0] = np.clip(out[:, 0], 0, w - 1)
        out[:, 1] = np.clip(out[:, 1], 0, h - 1)
        return out, conf.astype(np.float32)

    def _search_table(self, template: np.ndarray, pts: np.ndarray, image: np.ndarray, geometry,
                      res: AnchorResult, out: np.ndarray, conf: np.ndarray) -> np.ndarray:
        """Objects standing on the table under ``pts`` (N, 2), searched with the template geometry
        (table_search.py); updates ``out`` (N, 2) and ``conf`` (N,) in place for the points of the
        objects it places. Returns (N,) bool: the points it placed.

        An object whose points SIFT placed confidently and consistently (at least 4 matched points,
        their mean confidence at least ``table_sift_confidence``, and one affine map fitting them
        within ``table_sift_agree_px`` median residual) keeps the SIFT placement, and is not searched
        (the search is most of a transfer's time).
        """
        from atk_perception.table_search import (TableSearchParams, check_sizes, search_object_on_table,
                                                 table_objects)

        cfg = self.cfg
        placed = np.zeros(len(pts), bool)
        params = TableSearchParams(work_size_px=cfg.table_work_size_px, coarse_step_deg=cfg.table_step_deg)
        check_sizes(template, image, geometry)
        for obj in table_objects(geometry, pts, params):
            m = obj.members
            found = res.found[m]
            if found.sum() >= 4 and float(conf[m][found].mean()) >= cfg.table_sift_confidence:
                a_sift, _ = cv2.estimateAffine2D(pts[m][found], out[m][found], method=cv2.LMEDS)
                if a_sift is not None and np.all(np.isfinite(a_sift)):
                    fit = pts[m][found] @ a_sift[:, :2].T + a_sift[:, 2]
                    if float(np.median(np.linalg.norm(fit - out[m][found], axis=1))) <= cfg.table_sift_agree_px:
                        placed[m] = True   # SIFT placed them consistently: keep its placement
                        continue
            r = search_object_on_table(template, image, geometry, obj, params)
            if r is None:
                continue
            appearance = float(np.clip((r.score - cfg.search_ncc_min) / (cfg.search_ncc_full - cfg.search_ncc_min),
                                       0, 1))
            unique = float(np.clip(r.place_lead / cfg.search_margin, 0, 1))
            turn = float(np.clip(r.turn_lead / cfg.search_turn_margin, 0, 1))
            out[m] = r.points.astype(np.float32)
            conf[m] = appearance * unique * turn
            placed[m] = True
        return placed

    def _search_clusters(self, template: np.ndarray, pts: np.ndarray, image: np.ndarray,
                         res: AnchorResult, out: np.ndarray, conf: np.ndarray,
                         skip: np.ndarray | None = None) -> None:
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
        todo = np.flatnonzero(~skip) if skip is not None else np.arange(len(pts))
        for sub in cluster_points(pts[todo], cfg.search_link_frac * side) if len(todo) else []:
            members = todo[sub]
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
            fused: Fused | None = job.future.result()  # a worker exception surfaces here
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
            tpl = Template(self._template_gray, self._template_points, self._template_features)
            snap_pts, snap_var = new_pts.copy(), self._var.copy()
            # g.copy(): a grey input is the caller's own array, which it may
            # reuse for its next frame while the job still reads it.
            future = self._submit(fuse_job, cfg, tpl, g.copy(), snap_pts.copy(), visible.copy(),
                                  snap_var.copy(), self._anchor_conf.copy())
            self._job = _AsyncJob(future, self._frame, snap_pts, snap_var)
            self._next_async_frame = self._frame + cfg.reanchor_period
        return new_pts

    def _reanchor(self, g: np.ndarray, tracked: np.ndarray, visible: np.ndarray,
                  feats: Features | None = None) -> np.ndarray:
        """Fuse the tracked points (N, 2) on ``g`` with their template re-anchoring; returns (N, 2).

        ``feats``: the SIFT features of ``g`` when already detected (split re-anchoring).
        """
        if self._template_features is None:
            return tracked
        tpl = Template(self._template_gray, self._template_points, self._template_features)
        fused = fuse(self._anchor, self.cfg, tpl, g, tracked, visible, self._var,
                      self._anchor_conf, feats)
        self._var, self._anchor_conf = fused.var, fused.anchor_conf
        self.last_anchor = fused.result
        self._frames_since_anchor = 0
        self.reanchors_applied += 1
        return fused.points
