"""Writing episodes as rosbag2 bags from numpy data (the simulated experts)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys.store import Typestore

from atk_policy.dataset import ACTION_DIM, PROPRIO_DIM

from .common import (BAG_VERSION, CAMERA_INFO_TYPE, GRIPPER_COMMAND_TYPE, GRIPPER_JOINT, IMAGE_TYPE,
                     JOINT_STATE_TYPE, UR_JOINT_NAMES, BagError)
from .config import BagTopics
from .labels import EpisodeLabel, write_label
from .typestore import make_typestore


def make_qos(reliable: bool, depth: int, transient: bool = False) -> Qos:
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth,
               QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if transient else QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


#: Offered QoS per topic as docs/interfaces.md gives it (what the publishers offer).
SENSOR_QOS = make_qos(reliable=False, depth=5)
COMMAND_QOS = make_qos(reliable=True, depth=1)
#: Latched state (transient local, depth 1), e.g. sim/episode.
LATCHED_QOS = make_qos(reliable=True, depth=1, transient=True)


def namespaced_topic(namespace: str, name: str) -> str:
    ns = namespace.strip("/")
    return "/" + (f"{ns}/" if ns else "") + name.strip("/")


def enable_compression(writer: Writer, storage: str) -> None:
    """zstd chunk compression (MCAP's own, as `ros2 bag record --storage-preset-profile
    zstd_fast` writes it); sqlite3 bags compress each message instead."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode

    mode = CompressionMode.STORAGE if storage == "mcap" else CompressionMode.MESSAGE
    writer.set_compression(mode, CompressionFormat.ZSTD)


class EpisodeBagWriter:
    """Write one episode as a rosbag2 bag (MCAP unless told sqlite3), message by message.

    Topics (absolute, as ``ros2 bag record`` names them): ``/<ns>/camera/color/
    image_raw`` (rgb8), ``.../camera_info``, optional ``camera/depth/image_raw``
    (16UC1 mm), ``joint_states`` (6 UR joints + gripper), ``joint_target``
    (6 UR joints), ``gripper_command``. Stamps are seconds; the log time of
    each message is its stamp plus ``receive_delay_s`` (in simulation
    messages arrive when they are made). Use as a context manager or call
    :meth:`close` with the label.
    """

    def __init__(self, out_dir: str | os.PathLike, *, topics: BagTopics = BagTopics(),
                 namespace: str = "", camera_frame_id: str = "camera_color_optical_frame",
                 joint_names: Sequence[str] = UR_JOINT_NAMES, gripper_joint: str = GRIPPER_JOINT,
                 with_depth: bool = False, receive_delay_s: float = 0.0,
                 storage: Literal["mcap", "sqlite3"] = "mcap", compress: bool = False,
                 distro: Literal["kilted", "jazzy"] = "kilted") -> None:
        if len(joint_names) != 6:
            raise ValueError(f"joint_names must be the 6 UR joints, got {list(joint_names)}")
        if not (0 <= receive_delay_s < 10):
            raise ValueError(f"receive_delay_s must be in [0, 10) s, got {receive_delay_s!r}")
        self.path = Path(out_dir)
        self.store = make_typestore(distro)
        self.frame_id = camera_frame_id
        self.joint_names = list(joint_names)
        self.gripper_joint = gripper_joint
        self.delay_ns = int(round(receive_delay_s * 1e9))
        self._image_size: tuple[int, int] | None = None
        self.counts: dict[str, int] = {}
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
        try:
            self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=plugins[storage])
            if compress:
                enable_compression(self._writer, storage)
            self._writer.open()
        except WriterError as exc:
            raise BagError(f"cannot create bag {self.path}: {exc}") from exc
        plan = [("image", topics.image, IMAGE_TYPE, SENSOR_QOS),
                ("camera_info", topics.camera_info, CAMERA_INFO_TYPE, SENSOR_QOS)]
        if with_depth:
            plan.append(("depth", topics.depth, IMAGE_TYPE, SENSOR_QOS))
        plan += [("joint_states", topics.joint_states, JOINT_STATE_TYPE, SENSOR_QOS),
                 ("joint_target", topics.joint_target, JOINT_STATE_TYPE, COMMAND_QOS),
                 ("gripper_command", topics.gripper_command, GRIPPER_COMMAND_TYPE, COMMAND_QOS)]
        self._conns = {}
        for key, name, msgtype, qos in plan:
            self._conns[key] = self._writer.add_connection(
                namespaced_topic(namespace, name), msgtype, typestore=self.store, offered_qos_profiles=[qos])
            self.counts[key] = 0

    # -- message builders
    def _header(self, stamp_s: float, frame_id: str) -> Any:
        ns = int(round(float(stamp_s) * 1e9))
        if ns < 0:
            raise ValueError(f"stamp must be >= 0 s, got {stamp_s!r}")
        T = self.store.types
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000),
            frame_id=frame_id)

    def _write(self, key: str, stamp_s: float, msg: Any, msgtype: str) -> None:
        if key not in self._conns:
            raise BagError(f"this writer has no {key} topic (with_depth=False?)")
        log_ns = int(round(float(stamp_s) * 1e9)) + self.delay_ns
        self._writer.write(self._conns[key], log_ns, bytes(self.store.serialize_cdr(msg, msgtype)))
        self.counts[key] += 1

    def write_image(self, stamp_s: float, image: np.ndarray, camera_info: "CameraInfoData") -> None:
        """image: (H, W, 3) uint8 RGB; also writes the camera info with the same stamp."""
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        if self._image_size is None:
            self._image_size = (w, h)
        elif self._image_size != (w, h):
            raise ValueError(f"image size changed within the episode: {w}x{h} after "
                             f"{self._image_size[0]}x{self._image_size[1]}")
        if (camera_info.width, camera_info.height) != (w, h):
            raise ValueError(f"camera_info is {camera_info.width}x{camera_info.height}, image is {w}x{h}")
        T = self.store.types
        hdr = self._header(stamp_s, self.frame_id)
        msg = T[IMAGE_TYPE](header=hdr, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                            data=np.ascontiguousarray(img).reshape(-1))
        self._write("image", stamp_s, msg, IMAGE_TYPE)
        self._write("camera_info", stamp_s, camera_info.to_msg(self.store, hdr), CAMERA_INFO_TYPE)

    def write_depth(self, stamp_s: float, depth_mm: np.ndarray) -> None:
        """depth_mm: (H, W) uint16 millimetres, registered to the colour camera."""
        d = np.asarray(depth_mm)
        if d.ndim != 2 or d.dtype != np.uint16:
            raise ValueError(f"depth must be (H, W) uint16 mm, got {d.shape} {d.dtype}")
        h, w = d.shape
        T = self.store.types
        msg = T[IMAGE_TYPE](header=self._header(stamp_s, self.frame_id), height=h, width=w,
                            encoding="16UC1", is_bigendian=0, step=w * 2,
                            data=np.ascontiguousarray(d.astype("<u2")).view(np.uint8).reshape(-1))
        self._write("depth", stamp_s, msg, IMAGE_TYPE)

    def write_joint_state(self, stamp_s: float, positions: np.ndarray) -> None:
        """positions: (7,) = 6 UR joints (rad) + gripper (0 open .. 1 closed)."""
        p = np.asarray(positions, np.float64).reshape(-1)
        if p.shape != (PROPRIO_DIM,):
            raise ValueError(f"joint state must be (7,) = 6 joints + gripper, got {p.shape}")
        T = self.store.types
        msg = T[JOINT_STATE_TYPE](header=self._header(stamp_s, ""),
                                  name=self.joint_names + [self.gripper_joint], position=p,
                                  velocity=np.zeros(0), effort=np.zeros(0))
        self._write("joint_states", stamp_s, msg, JOINT_STATE_TYPE)

    def write_command(self, stamp_s: float, joint_target: np.ndarray, gripper: float,
                      gripper_speed: float = 1.0, gripper_force: float = 1.0) -> None:
        """joint_target: (6,) rad; gripper: 0 open .. 1 closed; stamp = the observation's stamp."""
        q = np.asarray(joint_target, np.float64).reshape(-1)
        if q.shape != (ACTION_DIM - 1,):
            raise ValueError(f"joint target must be (6,) rad, got {q.shape}")
        if not 0.0 <= float(gripper) <= 1.0:
            raise ValueError(f"gripper command must be in 0..1, got {gripper!r}")
        T = self.store.types
        hdr = self._header(stamp_s, "")
        self._write("joint_target", stamp_s,
                    T[JOINT_STATE_TYPE](header=hdr, name=list(self.joint_names), position=q,
                                        velocity=np.zeros(0), effort=np.zeros(0)), JOINT_STATE_TYPE)
        self._write("gripper_command", stamp_s,
                    T[GRIPPER_COMMAND_TYPE](header=hdr, position=float(gripper), speed=float(gripper_speed),
                                            force=float(gripper_force)), GRIPPER_COMMAND_TYPE)

    def close(self, label: EpisodeLabel | None = None) -> Path:
        """Finish the bag (metadata.yaml) and write the label beside it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None  # type: ignore[assignment]
            if label is not None:
                write_label(self.path, label)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None  # type: ignore[assignment]

    def __enter__(self) -> "EpisodeBagWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class CameraInfoData:
    """Pinhole intrinsics for sensor_msgs/CameraInfo: k (3, 3) pixels, d (5,) plumb_bob."""

    width: int
    height: int
    k: tuple[float, ...]
    d: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    distortion_model: str = "plumb_bob"

    def __post_init__(self) -> None:
        if not (self.width > 0 and self.height > 0):
            raise ValueError(f"CameraInfoData width/height must be > 0, got {self.width}x{self.height}")
        if len(np.asarray(self.k).reshape(-1)) != 9:
            raise ValueError(f"CameraInfoData.k must have 9 values (3x3), got {self.k!r}")

    @staticmethod
    def pinhole(width: int, height: int, fx: float, fy: float | None = None,
                cx: float | None = None, cy: float | None = None) -> "CameraInfoData":
        fy = fx if fy is None else fy
        cx = (width - 1) / 2 if cx is None else cx
        cy = (height - 1) / 2 if cy is None else cy
        return CameraInfoData(width, height, (fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0))

    def to_msg(self, store: Typestore, header: Any) -> Any:
        T = store.types
        k = np.asarray(self.k, np.float64).reshape(3, 3)
        p = np.zeros((3, 4))
        p[:, :3] = k
        return T[CAMERA_INFO_TYPE](
            header=header, height=self.height, width=self.width, distortion_model=self.distortion_model,
            d=np.asarray(self.d, np.float64), k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1),
            binning_x=0, binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                       do_rectify=False))


def write_episode_bag(out_dir: str | os.PathLike, *, stamps: np.ndarray, images: Sequence[np.ndarray],
                      camera_info: CameraInfoData, joint_states: np.ndarray, joint_targets: np.ndarray,
                      gripper_commands: np.ndarray, label: EpisodeLabel | None = None,
                      joint_state_stamps: np.ndarray | None = None,
                      command_stamps: np.ndarray | None = None,
                      depth: Sequence[np.ndarray] | None = None, namespace: str = "",
                      topics: BagTopics = BagTopics(), receive_delay_s: float = 0.0,
                      storage: Literal["mcap", "sqlite3"] = "mcap", compress: bool = False,
                      distro: Literal["kilted", "jazzy"] = "kilted") -> Path:
    """Write a simulated episode as a bag a real recording could not be told from.

    stamps: (T,) s image stamps; images: T arrays (H, W, 3) uint8 RGB (any
    sequence, e.g. a lazy one); camera_info: intrinsics; joint_states: (J, 7)
    measured joints + gripper at ``joint_state_stamps`` (J,) (default: the
    image stamps); joint_targets: (C, 6) rad and gripper_commands: (C,) 0..1
    at ``command_stamps`` (C,) (default: the image stamps, as the expert
    stamps a command with its observation's stamp); depth: optional T arrays
    (H, W) uint16 mm; compress: zstd (MCAP chunks, sqlite3 messages).
    Messages are written in time order. Returns the bag folder.
    """
    stamps = np.asarray(stamps, np.float64).reshape(-1)
    js = np.asarray(joint_states, np.float64)
    tg = np.asarray(joint_targets, np.float64)
    gc = np.asarray(gripper_commands, np.float64).reshape(-1)
    js_t = stamps if joint_state_stamps is None else np.asarray(joint_state_stamps, np.float64).reshape(-1)
    cm_t = stamps if command_stamps is None else np.asarray(command_stamps, np.float64).reshape(-1)
    if len(images) != len(stamps):
        raise ValueError(f"{len(images)} images but {len(stamps)} stamps")
    if depth is not None and len(depth) != len(stamps):
        raise ValueError(f"{len(depth)} depth images but {len(stamps)} stamps")
    if js.ndim != 2 or js.shape != (len(js_t), PROPRIO_DIM):
        raise ValueError(f"joint_states must be ({len(js_t)}, 7), got {js.shape}")
    if tg.ndim != 2 or tg.shape != (len(cm_t), 6):
        raise ValueError(f"joint_targets must be ({len(cm_t)}, 6), got {tg.shape}")
    if gc.shape != (len(cm_t),):
        raise ValueError(f"gripper_commands must be ({len(cm_t)},), got {gc.shape}")
    # (time, kind order, index): images before states before commands at equal time,
    # the order in which a simulator step produces them.
    events = sorted([(t, 0, i) for i, t in enumerate(stamps)] + [(t, 1, i) for i, t in enumerate(js_t)]
                    + [(t, 2, i) for i, t in enumerate(cm_t)])
    writer = EpisodeBagWriter(out_dir, topics=topics, namespace=namespace, with_depth=depth is not None,
                              receive_delay_s=receive_delay_s, storage=storage, compress=compress,
                              distro=distro)
    try:
        for t, kind, i in events:
            if kind == 0:
                writer.write_image(t, images[i], camera_info)
                if depth is not None:
                    writer.write_depth(t, depth[i])
            elif kind == 1:
                writer.write_joint_state(t, js[i])
            else:
                writer.write_command(t, tg[i], float(gc[i]))
    except BaseException:
        writer.abort()
        raise
    return writer.close(label)
