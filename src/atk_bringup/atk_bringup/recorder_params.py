"""Recorder node options (node ``recorder``) as :class:`RecorderParams` fields;
``recorder_node --help`` needs no ROS, and only running the node imports
:mod:`atk_bringup.recorder_node`.
"""
from __future__ import annotations

from dataclasses import dataclass

from atk_perception.node_params import NodeCommand, ParamSpec, param, param_specs

from atk_bringup.graph_tools.graph import TRAINING_TOPICS
from atk_bringup.recording import KNOWN_TOPIC_TYPES

NODE_NAME = "recorder"
SUMMARY = ("Records the training topics into one rosbag2 bag per episode (rosbags, MCAP), "
           "started and ended by ~/start_episode and ~/end_episode, with the success label beside the bag.")
# The graph's list, so that the recorder node and `ros2 bag record` write the same topics.
DEFAULT_TOPICS = TRAINING_TOPICS
DEPTH_TOPIC = "camera/depth/image_raw"


@dataclass(frozen=True)
class RecorderParams:
    """The recorder node's parameters: defaults, help and choices."""

    output_dir: str = param("bags", "Folder the episode bags are written to (created if missing).")
    topics: list[str] = param(list(DEFAULT_TOPICS), "Topics to record, relative (namespaced by the node's "
                              "namespace). A topic of docs/interfaces.md by name, any other as "
                              "'name:pkg/msg/Type[:sensor|command|latched]'.")
    record_depth: bool = param(False, f"Also record {DEPTH_TOPIC}.")
    bag_prefix: str = param("episode", "Bag folder names: <bag_prefix>_<UTC date-time>_<NNN>.")
    storage: str = param("mcap", "rosbag2 storage of the bags.", choices=("mcap", "sqlite3"))
    compress: bool = param(False, "zstd-compress the bags (MCAP chunks; sqlite3: each message). Costs CPU "
                           "while recording; camera images of a scene shrink a few times.")
    task: str = param("", "Task name written into episode.yaml (overridden by sim/episode when recorded).")
    keyboard: bool = param(False, "Also start/end episodes from the terminal: s=start, y=success, n=failure.")


PARAMS: tuple[ParamSpec, ...] = param_specs(RecorderParams)


EXTRA = "topics of docs/interfaces.md known by name: " + ", ".join(KNOWN_TOPIC_TYPES)
COMMAND = NodeCommand("recorder_node", "atk_bringup.recorder_node", PARAMS, summary=SUMMARY, extra=EXTRA)
