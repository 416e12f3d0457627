"""The keypoint tracker's states, ROS-free and dependency-free.

One definition for the tracker (:mod:`atk_perception.tracking_session`), the
policy's input gate (:mod:`atk_policy.gating`) and the evaluation; the values
equal ``atk_msgs/KeypointArray``'s STATE_* constants.
"""
from __future__ import annotations

from enum import IntEnum


class TrackerState(IntEnum):
    INITIALISING = 0
    TRACKING = 1
    LOST = 2
