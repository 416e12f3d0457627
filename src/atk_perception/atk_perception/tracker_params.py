"""What the tracker node (``tracker``) can be told: :class:`TrackerParams`, whose
fields make :data:`PARAMS`. ``tracker_node --help`` prints them with no ROS
installed; otherwise the console script runs :mod:`atk_perception.tracker_node`.
"""
from __future__ import annotations

from dataclasses import dataclass

from atk_perception.node_params import NodeCommand, ParamSpec, param, param_specs
from atk_perception.tracking_session import SIZE_MISMATCH_POLICIES

NODE_NAME = "tracker"


@dataclass(frozen=True)
class TrackerParams:
    """The tracker node's parameters: defaults, help and ranges."""

    backend: str = param("cpu", "h_C backend: 'cpu' (OpenCV LK + SIFT, no weights) or "
                         "'cotracker' (CoTracker3 online, GPU; needs `checkpoint`)", choices=("cpu", "cotracker"))
    checkpoint: str = param("", "CoTracker3 checkpoint file (local path; nothing is "
                            "downloaded). Required for backend 'cotracker'")
    device: str = param("", "torch device for backend 'cotracker' (e.g. cuda, cpu); "
                        "empty: the backend's default")
    cotracker_v2: bool = param(False, "backend 'cotracker': the checkpoint is a CoTracker2 one (no "
                               "confidence head); must match the checkpoint")
    cotracker_window_len: int = param(0, "backend 'cotracker': sliding window length; fixed by the "
                                      "checkpoint (CoTracker3 online: 16), 0 takes the checkpoint's", min=0, max=1024)
    cotracker_visibility_threshold: float = param(0.6, "backend 'cotracker': a point is visible when visibility x "
                                                  "confidence exceeds this (the official predictor's fixed value: "
                                                  "0.6)", min=0.0, max=0.999)
    cotracker_confidence_decay: float = param(0.9, "backend 'cotracker': confidence factor per frame "
                                              "since the last CoTracker result (it runs every window_len/2 frames)",
                                              min=0.001, max=1.0)
    # 'async' by default here (not in the library, whose offline users want
    # results independent of thread timing): it takes SIFT off the frame path,
    # which is what sets the node's latency tail (docs/perception.md).
    reanchor_mode: str = param("async", "backend 'cpu': where re-anchoring to the template "
                               "runs: 'async' (background thread, every frame costs only LK), 'split' (over "
                               "two frames), 'inline' (on the frame it is due)", choices=("async", "split", "inline"))
    model_dir: str = param("", "trained model folder with model.json + template.png; "
                           "its template and keypoints are tracked. Empty: use points + template_image")
    points: list[float] = param([], "flat list x0, y0, x1, y1, ... of keypoints in pixels of "
                                "template_image (used when model_dir is empty)", array_type="double")
    point_ids: list[int] = param([], "ids of `points` (default 0..N-1)", array_type="integer")
    point_names: list[str] = param([], "names of `points` (default kpNN)", array_type="string")
    template_image: str = param("", "template image file for `points`")
    frame_id: str = param("", "header.frame_id for keypoints when the image has none")
    min_point_confidence: float = param(0.5, "a keypoint counts as confident when visible "
                                        "and at/above this confidence", min=0.0, max=1.0)
    min_confident_fraction: float = param(0.5, "fewer confident keypoints than this fraction "
                                          "makes a frame bad", min=0.0, max=1.0)
    lost_after_frames: int = param(3, "consecutive bad frames before state LOST", min=1, max=1000)
    lost_after_s: float = param(2.0, "... lasting at least this long (source stamps, s): the "
                                "robot's own arm covering keypoints for a moment is not LOST", min=0.0, max=59.0)
    transfer_min_fraction: float = param(0.5, "a transfer from the template is accepted when "
                                         "at least this fraction of keypoints is confident", min=0.0, max=1.0)
    retransfer_every_n_frames: int = param(5, "while LOST, retry the transfer every this "
                                           "many frames", min=1, max=1000)
    max_frame_gap_s: float = param(1.0, "a jump between source stamps larger than this (or "
                                   "backwards) re-transfers the keypoints", min=0.001, max=3600.0)
    frame_timeout_s: float = param(1.0, "no frame for this long reports state LOST once "
                                   "(keypoints re-transferred when frames return)", min=0.01, max=3600.0)
    template_size_mismatch: str = param("rescale", "template of another size than the "
                                        "camera frames: 'rescale' it (same aspect ratio only) or 'refuse' to track",
                                        choices=SIZE_MISMATCH_POLICIES)
    overlay: bool = param(True, "publish keypoints/overlay (only while someone subscribes)")
    extrinsics_file: str = param("", "camera pose in the robot base frame (atk-calibrate's YAML): keypoints the "
                                 "robot covers (from joint_states, camera_info and this) are reported not visible "
                                 "and predicted (robot_occlusion), and with the model's template depth the objects "
                                 "on the table are transferred in 3D (the CPU h_C's table search). Empty: both off")
    robot_occlusion: bool = param(True, "with extrinsics_file: keypoints the robot covers are reported not "
                                  "visible and predicted (robot-aware occlusion)")
    robot_margin_px: float = param(6.0, "the robot's silhouette is grown by this before testing keypoints",
                                   min=0.0, max=100.0)
    max_joint_age_s: float = param(0.25, "a joint state further than this from the frame's stamp is not used "
                                   "(the robot model is off for that frame)", min=0.001, max=10.0)


PARAMS: tuple[ParamSpec, ...] = param_specs(TrackerParams)

SUMMARY = ("Tracks the model's keypoints on camera/color/image_raw with h_C and publishes\n"
           "keypoints (atk_msgs/KeypointArray) and keypoints/overlay (sensor_msgs/Image);\n"
           "services ~/reset (atk_msgs/ResetTracker), ~/transfer (atk_msgs/TransferKeypoints).")


COMMAND = NodeCommand("tracker_node", "atk_perception.tracker_node", PARAMS, summary=SUMMARY)
