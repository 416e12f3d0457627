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

Modules: :mod:`.config` (CpuTrackerConfig), :mod:`.anchoring` (SIFT
re-anchoring), :mod:`.fusion` (fusing an anchoring with the track) and
:mod:`.lk` (CpuTracker: LK tracking, its re-anchoring thread, transfer).
"""
from atk_perception.cpu_tracker.anchoring import AnchorResult, SiftAnchor
from atk_perception.cpu_tracker.config import REANCHOR_MODES, CpuTrackerConfig
from atk_perception.cpu_tracker.lk import REANCHOR_WAIT_TIMEOUT_S, CpuTracker

__all__ = ["REANCHOR_MODES", "REANCHOR_WAIT_TIMEOUT_S", "AnchorResult", "CpuTracker", "CpuTrackerConfig",
           "SiftAnchor"]
