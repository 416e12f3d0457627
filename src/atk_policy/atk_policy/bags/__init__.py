"""rosbag2 bags: read demonstrations into Episodes, write simulated ones.

ROS-free: everything goes through the ``rosbags`` library (no rclpy, no
``*_msgs`` imports), so a bag recorded by ``ros2 bag record`` on a robot, one
written by the project's recorder node and one written here from the
simulator are read by the same code, on machines with or without ROS.

Reading (:func:`load_episodes`)
    One bag (a rosbag2 folder with ``metadata.yaml``; mcap or sqlite3, split
    into several files or not) is one episode. The topics of
    docs/interfaces.md are looked up with or without a leading namespace
    (``/robot1/joint_states`` matches ``joint_states``). The timeline is the
    colour images' header stamps; joint states and commands are aligned to it
    (see :class:`BagConversionConfig`). Every bag given ends up in the
    :class:`ConversionReport`, used or skipped with the reason: nothing is
    dropped silently. Frames stay in the bag and are decoded when indexed
    (:class:`BagFrames`). A depth topic registered to the colour camera
    (16UC1/mono16 mm or 32FC1 m) becomes ``Episode.depth`` (uint16 mm per
    colour frame, nearest stamp within the tolerance) when every used frame
    has one; otherwise a note in the report says why depth is not used.

Label
    ``<bag>/episode.yaml`` beside ``metadata.yaml`` (rosbag2 ignores other
    files in the folder): ``success`` (true/false/null), ``note``, ``task``,
    ``seed``, ``perturbations``, ``source``, ``recorded_at``; see
    :class:`EpisodeLabel`.

Writing (:class:`EpisodeBagWriter`, :func:`write_episode_bag`)
    MCAP bags with the same topics, message types, type hashes and QoS
    metadata as a real recording, from numpy data (the simulated experts).

Modules: ``common`` (message types, BagError), ``typestore`` (message
definitions), ``reader`` (open, list, read messages), ``labels``
(episode.yaml), ``config`` (BagTopics, BagConversionConfig), ``frames``
(lazy frames, frame cache, reader pool), ``alignment``, ``conversion``
(bag -> Episode, the report), ``writer``, ``recovery`` (bags a killed
writer left: ``python -m atk_policy.bags reindex``). Everything public is importable
from ``atk_policy.bags``.
"""

from .alignment import align, stamp_series
from .common import (BAG_VERSION, CAMERA_INFO_TYPE, COLOR_ENCODINGS, COMPRESSED_IMAGE_TYPE, DEPTH_ENCODINGS,
                     GRIPPER_COMMAND_TYPE, GRIPPER_JOINT, IMAGE_TYPE, JOINT_STATE_TYPE, LABEL_FILE, UR_JOINT_NAMES,
                     BagError)
from .config import BagConversionConfig, BagTopics
from .conversion import BagEntry, ConversionReport, load_episodes
from .frames import FRAME_CACHE, READERS, BagFrames, decode_depth, decode_image
from .labels import EpisodeLabel, read_label, write_label
from .reader import BagInfo, BagWarning, TopicInfo, find_bags, inspect_bag, open_reader, raw_messages, read_messages
from .recovery import RecoveryReport, needs_reindex, reindex_bag
from .typestore import find_atk_msgs_dir, make_typestore, normalize_msgtype, register_from_bag, service_of_event
from .writer import (COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, CameraInfoData, EpisodeBagWriter, enable_compression,
                     make_qos, namespaced_topic, write_episode_bag)

__all__ = [
    "BAG_VERSION", "CAMERA_INFO_TYPE", "COLOR_ENCODINGS", "COMMAND_QOS", "COMPRESSED_IMAGE_TYPE", "DEPTH_ENCODINGS",
    "FRAME_CACHE",
    "GRIPPER_COMMAND_TYPE", "GRIPPER_JOINT", "IMAGE_TYPE", "JOINT_STATE_TYPE", "LABEL_FILE", "LATCHED_QOS",
    "READERS", "SENSOR_QOS", "UR_JOINT_NAMES", "BagConversionConfig", "BagEntry", "BagError", "BagFrames",
    "BagInfo", "BagTopics", "BagWarning", "CameraInfoData", "ConversionReport", "EpisodeBagWriter", "EpisodeLabel",
    "RecoveryReport", "TopicInfo", "align", "decode_image", "enable_compression", "find_atk_msgs_dir", "find_bags",
    "inspect_bag", "decode_depth", "load_episodes", "make_qos", "make_typestore", "namespaced_topic", "needs_reindex",
    "normalize_msgtype", "open_reader", "raw_messages", "read_label", "read_messages", "register_from_bag",
    "reindex_bag", "service_of_event", "stamp_series", "write_episode_bag", "write_label"
]
