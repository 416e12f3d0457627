"""The policy node's parameters (node ``policy``), written once as fields of
:class:`PolicyParams`, and its console script: ``policy_node --help`` (the text
is :mod:`atk_policy.policy_node`'s docstring) works without ROS.
"""
from __future__ import annotations

from dataclasses import dataclass

from atk_perception.node_params import NodeCommand, ParamSpec, param, param_specs
from atk_policy.deploy_step import DEFAULT_MAX_JOINT_STEP_RAD

NODE_NAME = "policy"
TRIGGERS = ("keypoints", "timer")


@dataclass(frozen=True)
class PolicyParams:
    """The policy node's parameters: defaults, help, ranges, and which may change at run time."""

    model_dir: str = param("", "Folder of the trained policy (model.json + policy.safetensors). Empty: the node "
                           "reports FAULT until restarted with a model.")
    trigger: str = param("keypoints", "keypoints: act when a keypoint array arrives, at most control_rate_hz "
                         "times per second of source stamps (the newest keypoints, lowest latency); timer: act at "
                         "control_rate_hz on the newest input (under use_sim_time one step late).", choices=TRIGGERS)
    control_rate_hz: float = param(10.0, "Control rate (Hz): the timer's rate, or the most keypoint arrays acted "
                                   "on per second.", min=0.5, max=100.0)
    status_rate_hz: float = param(10.0, "Rate of policy/status (Hz), also while holding.", min=0.5, max=100.0)
    keypoint_timeout_s: float = param(0.25, "Hold when the newest keypoints' source image stamp is older than this "
                                      "(s).", min=0.001, max=10.0, runtime=True)
    joint_state_timeout_s: float = param(0.25, "Hold when the newest joint state is older than this (s).",
                                         min=0.001, max=10.0, runtime=True)
    confidence_threshold: float = param(0.5, "A keypoint below this confidence (or not visible) counts as low.",
                                        min=0.0, max=1.0, runtime=True)
    max_low_confidence: int = param(2, "Hold when more keypoints than this are low ...",
                                    min=0, max=1000, runtime=True)
    max_low_confidence_fraction: float = param(0.5, "... and more than this fraction of them (0.5: a majority, the "
                                               "line at which the tracker calls a frame bad) ...",
                                               min=0.0, max=1.0, runtime=True)
    low_confidence_grace_s: float = param(2.0, "... for longer than this (s): the arm covering keypoints while it "
                                          "grasps or places must not freeze it there.",
                                          min=0.0, max=60.0, runtime=True)
    hold_on_robot_covered: bool = param(False, "Count keypoints the tracker reports covered by the robot itself "
                                        "(robot-aware occlusion: positions predicted from the robot model) as low. "
                                        "False: the robot reaching over keypoints never holds the policy.",
                                        runtime=True)
    image_margin_fraction: float = param(0.5, "A keypoint further outside the image than this fraction of its "
                                         "size is invalid input (FAULT, nothing published).",
                                         min=0.0, max=10.0, runtime=True)
    max_joint_step_rad: float = param(DEFAULT_MAX_JOINT_STEP_RAD, "Refuse (do not publish) an action whose joint "
                                      "target is further than this from the measured joints (rad; the driver's "
                                      "max_target_step).", min=0.001, max=6.3, runtime=True)
    torch_threads: int = param(1, "Threads torch may use for inference. One sample through a small network gains "
                               "nothing from more, and on a small machine the extra threads spin and take CPU from "
                               "the tracker (benchmarks/bench_latency.py, 2 cores: p99 21 ms with 1, 44-52 ms with "
                               "torch's default).", min=1, max=64)
    gripper_speed: float = param(0.5, "Speed sent with each gripper command, 0..1.", min=0.0, max=1.0, runtime=True)
    gripper_force: float = param(0.5, "Force sent with each gripper command, 0..1.", min=0.0, max=1.0, runtime=True)


PARAMS: tuple[ParamSpec, ...] = param_specs(PolicyParams)


COMMAND = NodeCommand("policy_node", "atk_policy.policy_node", PARAMS,
                      extra="Parameters marked 'changeable at run time' can be set while the node runs (ros2 param "
                            "set /policy NAME VALUE); the others are read-only after start.\n"
                            "Parameter file: --ros-args --params-file policy.yaml (atk_bringup/config).")
