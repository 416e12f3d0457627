"""Names every part of the bag package shares: message types, the rosbag2
version written, the label file name, and the package's error class."""
from __future__ import annotations

from atk_perception import kinematics as kin

UR_JOINT_NAMES: tuple[str, ...] = kin.JOINT_NAMES
GRIPPER_JOINT = kin.GRIPPER_JOINT
LABEL_FILE = "episode.yaml"
#: rosbag2 metadata version written (kilted and jazzy write 9).
BAG_VERSION = 9

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
GRIPPER_COMMAND_TYPE = "atk_msgs/msg/GripperCommand"

#: Channels per pixel of the colour encodings the reader converts to RGB.
COLOR_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
#: Depth encodings the reader converts to uint16 millimetres (REP 118: 16-bit mm, float metres).
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


class BagError(ValueError):
    """A bag cannot be read or used; the message names the bag and the cause."""
