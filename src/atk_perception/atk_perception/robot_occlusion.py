"""Robot-aware tracking: keypoints the robot covers are predicted, not tracked.

ROS-free. :class:`RobotAwareTracker` wraps any h_C backend
(:class:`~atk_perception.correspondence.Correspondence`). Before each
``update`` the caller gives the robot's joint state (and, where it has one,
the depth image) with :meth:`RobotAwareTracker.set_robot_state`; the wrapper
renders the robot's silhouette (:mod:`atk_perception.robot_mask`) grown by
``margin_px`` and, for every keypoint inside it:

* reports it not visible, and never takes its position from the backend
  (Lucas-Kanade follows the fingers over a covered point; a re-anchoring can
  lock onto the gripper);
* predicts it instead, first rule that applies:

  1. **carried**: its object is held (the gripper closed while one of the
     object's points was between or beside the fingers,
     see :class:`RobotOcclusionConfig`): at grasp time the point is lifted to
     3D from where it was last seen uncovered (by the depth reading there
     where one exists, else onto the horizontal plane through the pinch
     point: a grasped object lies between the fingers, and on simulated
     sushi that plane put the carried points 2-3x nearer their truth than
     the table plane, whose error the object's height sets) and expressed in
     the tool frame; each frame it is projected through the tool pose;
  2. **moved with its object**: the visible points of its own object (the
     keypoints that lie together on the template, the same clusters the CPU
     backend's object search treats as one object) moved; it moves by their
     median displacement;
  3. **held**: it stays where it was, at ``held_confidence``.

* writes the prediction back into the backend (``set_points``), so that
  when the robot uncovers the point, tracking resumes from the prediction
  and the backend's next re-anchoring corrects it.

Every point inside the silhouette (or carried) is reported ``covered`` in the
:class:`~atk_perception.correspondence.TrackResult`: the tracking session does
not read those as a lost track (a transfer cannot see under the gripper
either), and the policy's gate does not hold for them (holding froze the arm in
the covering pose, so they never came back).

A carried point is visible=False but keeps ``carried_confidence``: its
position is known from the robot, which is what the policy needs while it
carries the object. Positions only come from the wrapper while the point is
inside the silhouette; on the frame it leaves it the prediction is reported
once more (the backend's previous patch there showed the robot) and the
backend takes over from the next frame.

Shapes: points (N, 2) float32 pixels; joint state (7,) = 6 joints (rad) +
gripper (0 open .. 1 closed); depth (H, W) metres (0 or NaN: no reading).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from atk_perception import kinematics as kin
from atk_perception import robot_mask as rm
from atk_perception.correspondence import Correspondence, CorrespondenceError, TrackResult
from atk_perception.object_search import cluster_points

# Why a point's position came from the robot model (``RobotAwareTracker.reasons``).
TRACKED, CARRIED, MOVED, HELD, RESUMED = 0, 1, 2, 3, 4
REASON_NAMES = ("tracked", "carried", "moved with its object", "held", "resumed")


@dataclass
class RobotOcclusionConfig:
    """Every threshold of the robot-aware tracking (distances in pixels or metres as named)."""

    margin_px: float = 6.0
    """The silhouette is grown by this before testing keypoints: the model's solids are approximate and LK's window reaches beyond its point."""
    gripper_closed: float = 0.25
    """A gripper reading (0 open .. 1 closed) at or above this holds what is between its fingers."""
    gripper_empty: float = 0.95
    """A reading at or above this while closed means the fingers closed on nothing: nothing is carried (the 2F-85 stops at the object's width; the simulated nigiri at 0.62)."""
    grasp_half_extent_m: tuple[float, float, float] = (0.07, 0.04, 0.05)
    """A point counts as between or beside the fingers when its 3D position, in the tool frame relative to the pinch point, lies within these half extents (x: finger travel direction, y: pad width, z: along the tool)."""
    object_radius_m: float = 0.1
    """The other points of a grasped point's object are carried too when within this of the pinch point (a template cluster may chain in a neighbour)."""
    object_link_frac: float = 0.1
    """Keypoints chained closer than this fraction of min(H, W) on the reset image form one object (as the CPU backend's object search)."""
    depth_window_px: int = 2
    """Depth at a point is the median of valid readings within this many pixels (robot pixels excluded)."""
    max_depth_m: float = 5.0
    """Depth readings above this are ignored."""
    carried_confidence: float = 0.8
    """Confidence of a carried point (its position comes from the tool pose)."""
    moved_confidence: float = 0.4
    """Confidence of a point moved by its visible neighbours: below the gate's 0.5, because in closed-loop sushi (failed grasps) neighbours that LK carried along with the fingers moved hidden points 40 px off."""
    held_confidence: float = 0.3
    """Confidence of a point held where it was last seen."""
    min_object_points: int = 1
    """A point is moved with its object when at least this many of the object's points are visible."""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"RobotOcclusionConfig.{name} = {getattr(self, name)!r}: {rule}")

        need(np.isfinite(self.margin_px) and self.margin_px >= 0, "margin_px", "must be >= 0 pixels")
        need(0 < self.gripper_closed <= 1, "gripper_closed", "must be in (0, 1]")
        need(self.gripper_closed < self.gripper_empty <= 1, "gripper_empty", "must be in (gripper_closed, 1]")
        need(len(self.grasp_half_extent_m) == 3 and all(v > 0 for v in self.grasp_half_extent_m),
             "grasp_half_extent_m", "must be three positive lengths (m)")
        need(self.object_radius_m > 0, "object_radius_m", "must be > 0 m")
        need(0 < self.object_link_frac <= 1, "object_link_frac", "must be in (0, 1]")
        need(self.depth_window_px >= 0, "depth_window_px", "must be >= 0")
        need(self.max_depth_m > 0, "max_depth_m", "must be > 0 m")
        for name in ("carried_confidence", "moved_confidence", "held_confidence"):
            need(0 <= getattr(self, name) <= 1, name, "must be in [0, 1]")
        need(self.min_object_points >= 1, "min_object_points", "must be >= 1")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics K (3, 3) and the camera pose in the robot base frame (4, 4)."""

    k: np.ndarray
    base_t_camera: np.ndarray

    def __post_init__(self) -> None:
        rm.check_camera(self.k, self.base_t_camera)


class RobotAwareTracker(Correspondence):
    """h_C with robot-aware occlusion (see the module docstring)."""

    def __init__(self, inner: Correspondence, camera: CameraModel | None = None,
                 config: RobotOcclusionConfig | None = None) -> None:
        self.inner = inner
        self.cfg = config or RobotOcclusionConfig()
        self.camera = camera
        self._q: np.ndarray | None = None
        self._depth: np.ndarray | None = None
        self._n = 0
        self.last_mask: np.ndarray | None = None
        self.reasons = np.zeros(0, np.int8)

    # ------------------------------------------------------------------ inputs
    @property
    def active(self) -> bool:
        """Whether the robot model is used (a camera model and a joint state are known)."""
        return self.camera is not None and self._q is not None

    def set_camera(self, camera: CameraModel | None) -> None:
        self.camera = camera

    def set_robot_state(self, joint_state: np.ndarray | None, depth_m: np.ndarray | None = None) -> None:
        """The robot's (7,) joint state and the (H, W) depth (metres) at the next frame; None: unknown."""
        if joint_state is None:
            self._q = None
        else:
            q = np.asarray(joint_state, np.float64)
            if q.shape != (7,) or not np.all(np.isfinite(q)):
                raise CorrespondenceError(f"joint state must be (7,) finite = 6 joints + gripper, got {q.shape}")
            self._q = q
        self._depth = None if depth_m is None else np.asarray(depth_m, np.float32)

    # ------------------------------------------------------------------ h_C
    def set_template_geometry(self, template_image, geometry=None) -> bool:
        """Forwarded to the inner h_C (the CPU tracker's table search); False if it has none."""
        fn = getattr(self.inner, "set_template_geometry", None)
        return bool(fn(template_image, geometry)) if fn is not None else False

    def transfer(self, template_image: np.ndarray, template_points: np.ndarray,
                 image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.transfer(template_image, template_points, image)

    def reset(self, image: np.ndarray, points: np.ndarray) -> None:
        self.inner.reset(image, points)
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        n = self._n = len(pts)
        h, w = image.shape[:2]
        self._size = (w, h)
        self._objects = np.zeros(n, np.int32)
        for k, members in enumerate(cluster_points(pts.astype(np.float64), self.cfg.object_link_frac * min(h, w))):
            self._objects[members] = k
        self._points = pts.copy()
        self._conf = np.ones(n, np.float32)
        self._hidden = np.zeros(n, bool)
        self._seen_uv = pts.astype(np.float64)        # where each point was last seen uncovered
        self._seen_depth = np.full(n, np.nan)         # camera depth there (m), NaN: no reading
        self._tool_points = np.full((n, 3), np.nan)   # tool frame, while carried
        self._carried = np.zeros(n, bool)
        self._closed = False
        self._grasped = False
        self.reasons = np.zeros(n, np.int8)
        self.last_mask = None
        if self.active:
            mask = self._mask()
            self._remember_lifts(~rm.points_in_mask(mask, pts), mask)

    def update(self, image: np.ndarray) -> TrackResult:
        res = self.inner.update(image)
        if not self.active or self._n == 0:
            self.last_mask = None
            self.reasons = np.zeros(self._n, np.int8)
            self._points = np.asarray(res.points, np.float32).copy()
            return res
        cfg = self.cfg
        q = self._q
        mask = self._mask()
        self.last_mask = mask
        track = np.asarray(res.points, np.float32)
        conf = np.asarray(res.confidence, np.float32).copy()
        vis = np.asarray(res.visible, bool).copy()
        prev = self._points
        self._update_grasp(q, prev)

        # Predictions for every point (only used where the robot covers it).
        pred = prev.copy()
        pconf = np.full(self._n, cfg.held_confidence, np.float32)
        reason = np.full(self._n, HELD, np.int8)
        tool_t = rm.tool_pose(q)
        if self._carried.any():
            idx = np.flatnonzero(self._carried)
            p_base = self._tool_points[idx] @ tool_t[:3, :3].T + tool_t[:3, 3]
            uv, z = rm.project(self.camera.k, np.linalg.inv(self.camera.base_t_camera), p_base)
            ok = np.isfinite(uv).all(1) & (z > 0)
            pred[idx[ok]] = uv[ok]
            pconf[idx[ok]] = cfg.carried_confidence
            reason[idx[ok]] = CARRIED

        in_mask = rm.points_in_mask(mask, track) | rm.points_in_mask(mask, prev)
        # a point already hidden stays hidden while its prediction is covered
        cover_pred = rm.points_in_mask(mask, pred)
        hidden = np.where(self._hidden, cover_pred | (self._carried & self._closed), in_mask)
        # Carried points are hidden while the gripper holds them: the object
        # in the fingers moves with the robot, and LK on it follows the fingers.
        hidden |= self._carried

        seen = ~hidden & vis
        for obj in np.unique(self._objects[hidden & (reason == HELD)]):
            members = self._objects == obj
            ref = members & seen & ~self._hidden
            if ref.sum() >= cfg.min_object_points:
                shift = np.median(track[ref] - prev[ref], axis=0)
                sel = members & hidden & (reason == HELD)
                pred[sel] = prev[sel] + shift
                pconf[sel] = cfg.moved_confidence
                reason[sel] = MOVED

        out = track.copy()
        out_conf = conf
        resumed = self._hidden & ~hidden
        use_pred = hidden | resumed
        out[use_pred] = pred[use_pred]
        out_conf[hidden] = np.minimum(pconf[hidden], 1.0)
        # the frame a point comes out from under the robot: the prediction, not yet seen
        out_conf[resumed] = np.minimum(pconf[resumed], self._conf[resumed])
        vis[use_pred] = False
        reason[~use_pred] = TRACKED
        reason[resumed] = RESUMED
        if use_pred.any():
            self.inner.set_points(out, use_pred)
        self._remember_lifts(~hidden & vis, mask, out)
        self._hidden = hidden
        self._points = out.astype(np.float32)
        self._conf = out_conf.astype(np.float32)
        self.reasons = reason
        return TrackResult(self._points.copy(), np.clip(self._conf, 0, 1).copy(), vis, hidden.copy())

    def set_points(self, points: np.ndarray, which: np.ndarray) -> bool:
        return self.inner.set_points(points, which)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    # ------------------------------------------------------------------ internals
    def _mask(self) -> np.ndarray:
        return rm.render_mask(self._q, self.camera.k, self.camera.base_t_camera, self._size,
                              self.cfg.margin_px)

    def _depth_at(self, uv: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(M,) metres at the pixels (M, 2) from the depth image, NaN where there is none."""
        out = np.full(len(uv), np.nan)
        d = self._depth
        if d is None or d.shape != mask.shape:
            return out
        r = self.cfg.depth_window_px
        h, w = d.shape
        for i, (x, y) in enumerate(np.round(uv).astype(int)):
            x0, x1, y0, y1 = max(0, x - r), min(w, x + r + 1), max(0, y - r), min(h, y + r + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            win = d[y0:y1, x0:x1][~mask[y0:y1, x0:x1]]
            win = win[np.isfinite(win) & (win > 0) & (win < self.cfg.max_depth_m)]
            if len(win):
                out[i] = float(np.median(win))
        return out

    def _remember_lifts(self, which: np.ndarray, mask: np.ndarray, points: np.ndarray | None = None) -> None:
        """Where the uncovered points ``which`` (N,) bool are seen now, and the depth reading there."""
        idx = np.flatnonzero(which & ~self._carried)
        if len(idx) == 0:
            return
        uv = (self._points if points is None else points)[idx].astype(np.float64)
        self._seen_uv[idx] = uv
        self._seen_depth[idx] = self._depth_at(uv, mask)

    def _lift_seen(self, plane_z_m: float) -> np.ndarray:
        """(N, 3) base-frame positions where the points were last seen: by depth, else on z = plane_z_m."""
        k, t = self.camera.k, self.camera.base_t_camera
        p = rm.lift_to_plane(k, t, self._seen_uv, plane_z_m)
        have = np.isfinite(self._seen_depth)
        if have.any():
            p[have] = rm.lift(k, t, self._seen_uv[have], self._seen_depth[have])
        return p

    def _update_grasp(self, q: np.ndarray, prev: np.ndarray) -> None:
        """Attach the grasped objects' points to the tool when the gripper closes; release them
        when it opens or closes on nothing. (Waiting for the fingers to stop before attaching
        was tried: the expert lifts at once, so the points, lifted where last seen, were then
        3 px off instead of 0.3.)"""
        cfg = self.cfg
        g = float(q[6])
        closed = g >= cfg.gripper_closed
        if closed and not self._grasped and g < cfg.gripper_empty:
            self._grasped = True
            tool_t = rm.tool_pose(q)
            pinch = (tool_t @ kin.ROBOTIQ_2F85_TCP)[:3, 3]
            inv = np.linalg.inv(tool_t)
            p_tool = self._lift_seen(float(pinch[2])) @ inv[:3, :3].T + inv[:3, 3]   # (N, 3), NaN: no lift
            rel = p_tool - np.array([0.0, 0.0, kin.ROBOTIQ_2F85_TCP_Z])
            ok = np.isfinite(rel).all(1)
            safe = np.nan_to_num(rel, nan=1e9)
            between = ok & np.all(np.abs(safe) <= np.array(cfg.grasp_half_extent_m), axis=1)
            near = ok & (np.linalg.norm(safe, axis=1) <= cfg.object_radius_m)
            carried = between | (np.isin(self._objects, np.unique(self._objects[between])) & near)
            self._carried = carried
            self._tool_points = np.where(carried[:, None], p_tool, np.nan)
        elif (not closed) or (g >= cfg.gripper_empty):
            # opened (released), or closed on nothing: what was attached stays where it is now
            self._grasped = False
            self._carried = np.zeros(self._n, bool)
            self._tool_points[:] = np.nan
        self._closed = closed

class RobotInputs:
    """What the tracker node knows about the robot: extrinsics (from a file),
    intrinsics (camera_info) and the newest joint state (joint_states).

    Thread-safe: the subscription callbacks write, the tracking worker reads
    with :meth:`apply` before each frame. Missing or stale input turns the
    robot model off for that frame (tracking runs as without it); ``apply``
    returns a note only when that status changes, so the node says it once.
    """

    def __init__(self, base_t_camera: np.ndarray | None, max_joint_age_s: float = 0.25,
                 occlusion: bool = True) -> None:
        import threading

        if not max_joint_age_s > 0:
            raise ValueError(f"max_joint_age_s = {max_joint_age_s!r}: must be > 0 s")
        if base_t_camera is not None:
            rm.check_camera(np.eye(3), base_t_camera)
        self.base_t_camera = None if base_t_camera is None else np.asarray(base_t_camera, np.float64)
        self.max_joint_age_s = float(max_joint_age_s)
        self._lock = threading.Lock()
        self._k: np.ndarray | None = None
        self._q: np.ndarray | None = None
        self._q_stamp = 0.0
        self._status = ""
        self.occlusion = bool(occlusion)
        self._geometry_status = ""
        self._geometry_k: np.ndarray | None = None

    def apply_template_geometry(self, tracker: Any, template: Any) -> str:
        """Give the h_C ``tracker`` the template frame's geometry (``template.depth``, the camera's K
        from camera_info, the extrinsics) for its table search (table_search.py), once K is known
        and again when it changes. Returns a note when the status changes (else "")."""
        with self._lock:
            k = self._k
        if getattr(template, "depth", None) is None:
            status = "table search off: the model has no template depth (train on bags with depth)"
        elif self.base_t_camera is None:
            status = "table search off: no extrinsics_file (run atk-calibrate)"
        elif k is None:
            status = "table search off until camera_info arrives (intrinsics unknown)"
        elif getattr(tracker, "set_template_geometry", None) is None:
            status = "table search off: this h_C backend has none"
        else:
            status = "table search on: objects on the table are transferred in 3D (template depth + extrinsics)"
            if self._geometry_k is None or not np.array_equal(self._geometry_k, k):
                from atk_perception.table_search import TemplateGeometry

                used = tracker.set_template_geometry(template.image,
                                                     TemplateGeometry(template.depth, k, self.base_t_camera))
                self._geometry_k = k
                if not used:
                    status = "table search off: disabled in the h_C's configuration"
        if status == self._geometry_status:
            return ""
        self._geometry_status = status
        return status

    def set_intrinsics(self, k: np.ndarray) -> None:
        k = np.asarray(k, np.float64).reshape(3, 3)
        with self._lock:
            self._k = k if np.all(np.isfinite(k)) and k[0, 0] > 0 and k[1, 1] > 0 else None

    def set_joint_state(self, q7: np.ndarray, stamp_s: float) -> None:
        with self._lock:
            self._q, self._q_stamp = np.asarray(q7, np.float64), float(stamp_s)

    def apply(self, tracker: RobotAwareTracker, frame_stamp_s: float) -> str:
        """Give ``tracker`` the camera and the joint state for the frame taken at ``frame_stamp_s``."""
        with self._lock:
            k, q, q_stamp = self._k, self._q, self._q_stamp
        if self.base_t_camera is None:
            status = "robot-aware occlusion off: no extrinsics_file (run atk-calibrate)"
        elif not self.occlusion:
            status = "robot-aware occlusion off: robot_occlusion is false"
        elif k is None:
            status = "robot-aware occlusion off until camera_info arrives (intrinsics unknown)"
        elif q is None:
            status = "robot-aware occlusion off until joint_states arrive"
        elif abs(frame_stamp_s - q_stamp) > self.max_joint_age_s:
            status = (f"robot-aware occlusion off: the newest joint state is {abs(frame_stamp_s - q_stamp):.2f} s "
                      f"from the frame (> {self.max_joint_age_s:g} s)")
        else:
            status = "robot-aware occlusion on: keypoints the robot covers are predicted from its joint states"
        on = status.startswith("robot-aware occlusion on")
        if on:
            if tracker.camera is None or not np.array_equal(tracker.camera.k, k):
                tracker.set_camera(CameraModel(k, self.base_t_camera))
            tracker.set_robot_state(q)
        else:
            tracker.set_robot_state(None)
        if status == self._status:
            return ""
        self._status = status
        return status
