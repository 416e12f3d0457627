"""Camera node parameters (node ``camera``): one :class:`CameraParams` field per
parameter, and the ``camera_node`` console script, which answers ``--help``
without ROS before it imports :mod:`atk_perception.camera_node`.
"""
from __future__ import annotations

from dataclasses import dataclass

from atk_perception.camera_sources import KINECT_DEPTH_MODES, KINECT_EXPOSURE_RANGE_US
from atk_perception.node_params import NodeCommand, ParamSpec, param, param_specs

NODE_NAME = "camera"


@dataclass(frozen=True)
class CameraParams:
    """The camera node's parameters: defaults, help and ranges."""

    backend: str = param("kinect", "'kinect' (Azure Kinect via pyk4a), 'video' (replay "
                         "video_path) or 'none' (the simulator publishes the images)",
                         choices=("kinect", "video", "none"))
    video_path: str = param("", "backend video: a video file or a folder of images "
                            "(replayed in file-name order)")
    loop: bool = param(True, "backend video: start again at the end of the recording")
    resolution: str = param("native", "colour resolution: 720p, 1080p, 1440p, 1536p, "
                            "2160p, 3072p (Kinect; 'native' = 720p), or for video also 'native' or "
                            "WIDTHxHEIGHT (frames resized)")
    fps: float = param(30.0, "frame rate: 5, 15 or 30 on the Kinect; any rate for video "
                       "replay", min=0.1, max=120.0)
    depth_mode: str = param("NFOV_UNBINNED", "Kinect depth mode (OFF: colour only)", choices=KINECT_DEPTH_MODES)
    exposure_us: int = param(0, "Kinect colour exposure in microseconds; 0 = auto",
                             min=0, max=KINECT_EXPOSURE_RANGE_US[1])
    device_id: int = param(0, "Kinect device index", min=0, max=16)
    frame_id: str = param("camera_color_optical_frame", "header.frame_id of colour, depth "
                          "(registered to colour) and camera_info")
    hfov_deg: float = param(90.0, "video: horizontal field of view for the nominal "
                            "CameraInfo of recordings without calibration", min=1.0, max=179.0)
    frame_timeout_s: float = param(1.0, "no frame for this long is reported as a stall", min=0.05, max=60.0)
    reopen_after_s: float = param(3.0, "a stall this long closes and reopens the camera", min=0.1, max=600.0)
    retry_initial_s: float = param(0.5, "first delay before reopening a failed camera", min=0.01, max=60.0)
    retry_max_s: float = param(10.0, "longest delay between reopen attempts (backoff cap)", min=0.01, max=600.0)


PARAMS: tuple[ParamSpec, ...] = param_specs(CameraParams)

SUMMARY = ("Publishes camera/color/image_raw (rgb8), camera/color/camera_info and\n"
           "camera/depth/image_raw (16UC1 mm, registered to colour) with sensor-data QoS,\n"
           "and camera health on diagnostics.")


COMMAND = NodeCommand("camera_node", "atk_perception.camera_node", PARAMS, summary=SUMMARY)
