"""How bags become episodes: topic names and the conversion settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .common import GRIPPER_JOINT, UR_JOINT_NAMES


@dataclass(frozen=True)
class BagTopics:
    """Topic names (relative, as in docs/interfaces.md)."""

    image: str = "camera/color/image_raw"
    camera_info: str = "camera/color/camera_info"
    depth: str = "camera/depth/image_raw"
    joint_states: str = "joint_states"
    joint_target: str = "joint_target"
    gripper_command: str = "gripper_command"

    def __post_init__(self) -> None:
        for name in ("image", "camera_info", "depth", "joint_states", "joint_target", "gripper_command"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip("/") or " " in v:
                raise ValueError(f"BagTopics.{name} must be a topic name, got {v!r}")


@dataclass(frozen=True)
class BagConversionConfig:
    """How bags become episodes.

    Alignment: the timeline is the colour images' stamps. ``joint_state_alignment``
    and ``target_alignment`` are "linear" (interpolate between the samples
    before and after the image stamp, both within ``tolerance_s`` of it) or
    "nearest" (the closest sample within ``tolerance_s``). Gripper commands
    are usually sent on change only, so ``gripper_alignment`` "hold" takes
    the latest command at or before the stamp (or the first one when it comes
    within ``tolerance_s`` after); "nearest" works as above. An image stamp
    outside a stream's sample range takes the end sample if within tolerance.

    Frames that cannot be aligned are dropped and counted in the report: at
    the start/end (recording started before the arm's topics, stopped after)
    as trimmed, elsewhere as gaps; an episode with more gap frames than
    ``max_gap_fraction`` of its images, or fewer than ``min_frames`` left,
    is skipped.

    action_source: "commands" (joint_target + gripper_command, the simulated
    expert and teleoperation) or "future_joint_state" (kinesthetic teaching:
    the measured joints ``action_horizon_s`` ahead are the target, gripper
    included; no command topics needed).
    stamp_source: "header" (the messages' header stamps, as the contract
    defines them) or "receive" (the bag's log times, for publishers with
    unset or foreign-clock stamps).
    namespace: None accepts a unique match of each topic under any
    namespace; a string ("" for none, "robot1") selects that namespace.
    skip_failed: skip episodes labelled success: false; require_label: skip
    bags without episode.yaml.
    frame_cache_mb: budget of the process-wide cache of decoded frames (all
    episodes together); prefetch: frames read in one pass over the bag when a
    sequential pass misses (see BagFrames).
    """

    topics: BagTopics = field(default_factory=BagTopics)
    namespace: str | None = None
    joint_state_alignment: Literal["linear", "nearest"] = "linear"
    target_alignment: Literal["linear", "nearest"] = "nearest"
    gripper_alignment: Literal["hold", "nearest"] = "hold"
    tolerance_s: float = 0.05
    stamp_source: Literal["header", "receive"] = "header"
    action_source: Literal["commands", "future_joint_state"] = "commands"
    action_horizon_s: float = 0.1
    min_frames: int = 10
    max_gap_fraction: float = 0.1
    skip_failed: bool = True
    require_label: bool = False
    joint_names: tuple[str, ...] = UR_JOINT_NAMES
    gripper_joint: str = GRIPPER_JOINT
    frame_cache_mb: float = 256.0
    prefetch: int = 8
    distro: Literal["kilted", "jazzy"] = "kilted"

    def __post_init__(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise ValueError(f"BagConversionConfig.{name} must be one of {list(options)}, "
                                 f"got {getattr(self, name)!r}")

        if not isinstance(self.topics, BagTopics):
            raise ValueError(f"BagConversionConfig.topics must be a BagTopics, got {self.topics!r}")
        if self.namespace is not None and (not isinstance(self.namespace, str) or " " in self.namespace):
            raise ValueError(f"BagConversionConfig.namespace must be None or a namespace, got {self.namespace!r}")
        choice("joint_state_alignment", ("linear", "nearest"))
        choice("target_alignment", ("linear", "nearest"))
        choice("gripper_alignment", ("hold", "nearest"))
        choice("stamp_source", ("header", "receive"))
        choice("action_source", ("commands", "future_joint_state"))
        choice("distro", ("kilted", "jazzy"))
        if not (isinstance(self.tolerance_s, (int, float)) and 0 < self.tolerance_s <= 10):
            raise ValueError(f"BagConversionConfig.tolerance_s must be in (0, 10] s, got {self.tolerance_s!r}")
        if not (isinstance(self.action_horizon_s, (int, float)) and 0 < self.action_horizon_s <= 10):
            raise ValueError(f"BagConversionConfig.action_horizon_s must be in (0, 10] s, "
                             f"got {self.action_horizon_s!r}")
        if not (isinstance(self.min_frames, int) and self.min_frames >= 1):
            raise ValueError(f"BagConversionConfig.min_frames must be an integer >= 1, got {self.min_frames!r}")
        if not (isinstance(self.max_gap_fraction, (int, float)) and 0 <= self.max_gap_fraction <= 1):
            raise ValueError(f"BagConversionConfig.max_gap_fraction must be in [0, 1], "
                             f"got {self.max_gap_fraction!r}")
        if len(self.joint_names) != 6 or len(set(self.joint_names)) != 6:
            raise ValueError(f"BagConversionConfig.joint_names must be 6 distinct names, got {self.joint_names!r}")
        if not self.gripper_joint or self.gripper_joint in self.joint_names:
            raise ValueError(f"BagConversionConfig.gripper_joint must be a name not among the arm joints, "
                             f"got {self.gripper_joint!r}")
        if not (isinstance(self.frame_cache_mb, (int, float)) and 0 <= self.frame_cache_mb <= 1e6):
            raise ValueError(f"BagConversionConfig.frame_cache_mb must be in [0, 1e6] MB, "
                             f"got {self.frame_cache_mb!r}")
        if not (isinstance(self.prefetch, int) and 1 <= self.prefetch <= 256):
            raise ValueError(f"BagConversionConfig.prefetch must be an integer in [1, 256], "
                             f"got {self.prefetch!r}")
