"""Recorder node: one rosbag2 bag per demonstration episode, without the ros2 CLI.

For machines with rclpy but no rosbag2 (a pip-only install): subscribes to
the training topics with ``raw=True`` (the CDR bytes are recorded unchanged)
and writes them through ``rosbags`` (:mod:`atk_bringup.recording`) as
rosbag2 bags, MCAP by default, one folder per episode under ``output_dir``.

Services (private): ``~/start_episode`` (std_srvs/Trigger) opens a bag;
``~/end_episode`` (atk_msgs/EndEpisode) closes it, writes ``episode.yaml``
(success, note, task, seed) beside it and returns the bag path. With
``keyboard:=true`` the terminal does the same: ``s`` + Enter starts, ``y``
ends as a success, ``n`` as a failure.

A write error (disk full, file-size limit) ends the episode, not the node:
the bag keeps every complete chunk and is closed readable, the error is
logged once, and the next ``~/end_episode`` answers ok=false with the error
and the bag's path (docs/recording.md). Parameters and ``--help``:
:mod:`atk_bringup.recorder_params` (ROS-free).
"""
from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message

from atk_perception.node_params import ParameterError, declare, log_effective
from atk_perception.node_runner import run_node
from atk_policy.bags import EpisodeLabel

from atk_bringup.recorder_params import COMMAND, DEPTH_TOPIC, NODE_NAME, PARAMS
from atk_bringup.recording import (EpisodeRecorder, EpisodeWriteError, RecorderError,
                                   TopicSpec, default_qos, parse_topics)

# Messages the subscription queues while the executor is busy writing. Sensor
# topics come at camera/driver rate; the recorder must not lose them to a
# momentary disk stall, so the queue is deeper than the publishers' (5).
SENSOR_QUEUE = 100
COMMAND_QUEUE = 100


def _msg_class(msgtype: str) -> Any:
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    pkg, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError) as exc:
        raise RecorderError(f"message type {msgtype} is not importable here ({exc}); "
                            f"install its package or drop the topic") from exc


def _to_bag_qos(profile: Any) -> Any:
    """rclpy QoSProfile (from the graph) -> rosbags Qos, for metadata.yaml."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    def t(d: Any) -> QosTime:
        ns = int(d.nanoseconds)
        return QosTime(min(ns // 1_000_000_000, 2**31 - 1), ns % 1_000_000_000 if ns < 2**63 - 1 else 2**32 - 1)

    return Qos(QosHistory(int(profile.history)), int(profile.depth), QosReliability(int(profile.reliability)),
               QosDurability(int(profile.durability)), t(profile.deadline), t(profile.lifespan),
               QosLiveliness(int(profile.liveliness)), t(profile.liveliness_lease_duration),
               bool(profile.avoid_ros_namespace_conventions))


class RecorderNode(Node):
    """Raw subscriptions -> EpisodeRecorder; services start and end episodes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        p = declare(self, PARAMS)
        entries = list(p["topics"]) + ([DEPTH_TOPIC] if p["record_depth"] and DEPTH_TOPIC not in p["topics"] else [])
        try:
            specs = parse_topics(entries)
        except RecorderError as exc:
            raise ParameterError(f"parameter topics: {exc}") from exc
        self.params = p
        self.specs: list[TopicSpec] = specs
        # One group: callbacks run one at a time, so an episode never ends
        # half-way through writing a message.
        group = MutuallyExclusiveCallbackGroup()
        self._subs = []
        resolved: list[tuple[str, str]] = []
        for spec in specs:
            cls = _msg_class(spec.msgtype)
            sub = self.create_subscription(cls, spec.name, self._make_callback(spec), self._qos(spec.kind),
                                           raw=True, callback_group=group)
            self._subs.append(sub)
            resolved.append((sub.topic_name, spec.msgtype))
        self._topic_of = {spec.name: name for spec, (name, _) in zip(specs, resolved)}
        self._kind_of = {name: spec.kind for spec, (name, _) in zip(specs, resolved)}
        self.recorder = EpisodeRecorder(Path(p["output_dir"]), resolved, prefix=p["bag_prefix"],
                                        storage=p["storage"], compress=p["compress"])
        self._last_episode_status: bytes | None = None
        self._reported_failure: Any = None
        self._episode_topic = next((n for n, t in resolved if t == "atk_msgs/msg/EpisodeStatus"), None)
        from atk_msgs.srv import EndEpisode
        from std_srvs.srv import Trigger

        self.create_service(Trigger, "~/start_episode", self._on_start, callback_group=group)
        self.create_service(EndEpisode, "~/end_episode", self._on_end, callback_group=group)
        log_effective(self, {**p, "resolved_topics": [f"{n} ({t})" for n, t in resolved]})
        if p["keyboard"]:
            self._start_keyboard()

    # ------------------------------------------------------------------ QoS
    @staticmethod
    def _qos(kind: str) -> QoSProfile:
        if kind == "sensor":
            # Best effort matches best-effort and reliable publishers alike
            # (camera and joint states are best effort per docs/interfaces.md).
            q = QoSProfile(depth=SENSOR_QUEUE, reliability=qos_profile_sensor_data.reliability,
                           history=HistoryPolicy.KEEP_LAST)
        elif kind == "latched":
            # Transient local: the latched sim/episode message published before
            # the recorder started still arrives.
            q = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
        else:
            # Commands are reliable; a reliable subscription records every one.
            q = QoSProfile(depth=COMMAND_QUEUE, reliability=ReliabilityPolicy.RELIABLE)
        return q

    def _offered_qos(self) -> dict[str, list]:
        """The publishers' QoS per topic, as ros2 bag record stores it; the contract's when none."""
        out: dict[str, list] = {}
        for name, kind in self._kind_of.items():
            try:
                infos = self.get_publishers_info_by_topic(name)
                profiles = [_to_bag_qos(i.qos_profile) for i in infos]
            except (ValueError, RuntimeError):
                profiles = []
            out[name] = profiles or [default_qos(kind)]
        return out

    # ------------------------------------------------------------------ messages
    def _make_callback(self, spec: TopicSpec):  # noqa: ANN202
        def on_message(data: bytes) -> None:
            topic = self._topic_of[spec.name]
            if topic == self._episode_topic:
                self._last_episode_status = bytes(data)
            written = self.recorder.write(topic, self.get_clock().now().nanoseconds, data)
            failed = self.recorder.failed
            if not written and failed is not None and failed is not self._reported_failure:
                self._reported_failure = failed  # once per episode, not per dropped message
                self.get_logger().error(f"{failed.describe()}; call ~/end_episode, then fix the disk and "
                                        "start a new episode")
        return on_message

    # ------------------------------------------------------------------ episodes
    def start_episode(self) -> Path:
        path = self.recorder.start(self._offered_qos())
        # The latched episode status arrived before this episode opened:
        # write it at the start so the bag says which episode it is.
        if self._last_episode_status is not None and self._episode_topic is not None:
            self.recorder.write(self._episode_topic, self.get_clock().now().nanoseconds, self._last_episode_status)
        self.get_logger().info(f"recording episode to {path}")
        return path

    def end_episode(self, success: bool | None, note: str) -> Any:
        label = EpisodeLabel(success=success, note=note, task=self.params["task"], source="recorder_node")
        if self._last_episode_status is not None:
            from atk_msgs.msg import EpisodeStatus

            st = deserialize_message(self._last_episode_status, EpisodeStatus)
            label.task = st.task or label.task
            label.seed = int(st.seed)
            label.perturbations = list(st.perturbations)
            label.extra["sim_success"] = bool(st.success) if st.done else None
        summary = self.recorder.end(label)
        self.get_logger().info(f"episode ended (success={success}): {summary.describe()}")
        return summary

    def _on_start(self, request: Any, response: Any) -> Any:
        try:
            path = self.start_episode()
        except RecorderError as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().warning(str(exc))
            return response
        response.success, response.message = True, str(path)
        return response

    def _on_end(self, request: Any, response: Any) -> Any:
        try:
            summary = self.end_episode(bool(request.success), request.note)
        except EpisodeWriteError as exc:
            response.ok, response.bag_path, response.message = False, str(exc.summary.path), str(exc)
            self.get_logger().error(f"~/end_episode: {exc}")
            return response
        except RecorderError as exc:
            response.ok, response.bag_path, response.message = False, "", str(exc)
            self.get_logger().warning(str(exc))
            return response
        response.ok, response.bag_path, response.message = True, str(summary.path), summary.describe()
        return response

    def _start_keyboard(self) -> None:
        if not sys.stdin or not sys.stdin.isatty():
            self.get_logger().warning("keyboard:=true but stdin is not a terminal; use the services instead")
            return

        def loop() -> None:
            print("[recorder] keys: s + Enter = start, y = end as success, n = end as failure", flush=True)
            for line in sys.stdin:
                key = line.strip().lower()
                try:
                    if key == "s":
                        self.start_episode()
                    elif key in ("y", "n"):
                        self.end_episode(key == "y", "ended from the keyboard")
                    elif key:
                        print(f"[recorder] unknown key {key!r}: s, y or n", flush=True)
                except RecorderError as exc:
                    print(f"[recorder] {exc}", flush=True)

        threading.Thread(target=loop, name="recorder_keyboard", daemon=True).start()

    def shutdown(self) -> None:
        """Close an open episode so its data is kept (label: success unknown)."""
        if self.recorder.recording:
            summary = self.recorder.end(EpisodeLabel(success=None, note="recorder stopped while recording",
                                                     task=self.params["task"], source="recorder_node"))
            self.get_logger().warning(f"stopped while recording: {summary.describe()}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_node(NODE_NAME, argv, RecorderNode, print_help=COMMAND.print_help,
                    startup_errors=(ParameterError, RecorderError), threads=1,
                    on_exit=lambda node: node.shutdown())


if __name__ == "__main__":
    sys.exit(main())
