"""``sim_node`` (node ``sim``): parameters as :class:`SimParams` fields and the
console script, ROS-free so that ``--help`` runs anywhere; the node is
:mod:`atk_bringup.sim_node`.
"""
from __future__ import annotations

from dataclasses import dataclass

from atk_perception.node_params import NodeCommand, ParamSpec, param, param_specs

NODE_NAME = "sim"
TASK_CHOICES = ("sushi", "glass_lid", "clock_button", "clock_hand")          # atk_bringup.sim.tasks.TASKS
PERTURBATION_CHOICES = ("RP", "RB", "RO", "LIGHT")            # atk_bringup.sim.perturbations


@dataclass(frozen=True)
class SimParams:
    """The simulator node's parameters: defaults, help and ranges."""

    task: str = param("sushi", f"Task of the first episode, one of {list(TASK_CHOICES)}.", choices=TASK_CHOICES)
    seed: int = param(0, "Seed of the first episode.", min=0, max=2 ** 31 - 1)
    perturbations: list[str] = param([""], f"Perturbations of the first episode, any of {list(PERTURBATION_CHOICES)} "
                                     "([''] = none).", item_choices=("", *PERTURBATION_CHOICES))
    width: int = param(640, "Image width (px).", min=16, max=4096)
    height: int = param(480, "Image height (px).", min=16, max=4096)
    control_hz: float = param(10.0, "Control rate (Hz): one step, one set of images per period; must divide "
                              "the 500 Hz physics rate.", min=0.5, max=500.0)
    realtime: bool = param(True, "true: pace steps to the wall clock; false: step as fast as the CPU allows.")
    publish_depth: bool = param(True, "Render and publish camera/depth/image_raw (costs a second render pass).")
    expert: bool = param(False, "Drive the arm with the scripted expert (and publish its actions) instead of "
                         "following joint_target / gripper_command.")
    auto_reset: bool = param(False, "When an episode is done, start the next one (seed + 1, same task and "
                             "perturbations).")
    frame_id: str = param("camera_color_optical_frame", "frame_id of the images and camera info.", nonempty=True)
    start_timeout_s: float = param(120.0, "Without expert: after a reset, wait this long at most for the episode's "
                                   "first command (or the tracker's report that it could not transfer) before the "
                                   "world moves (s); 0: start at once.", min=0.0, max=3600.0)
    episode_gap_s: float = param(10.0, "Simulated time between an episode's last stamp and the next one's first: "
                                 "more than the tracker's max_frame_gap_s, so it transfers anew on a new "
                                 "scene (s).", min=0.0, max=3600.0)
    episode_status_hz: float = param(1.0, "Rate of periodic sim/episode updates (also sent at once on reset, "
                                     "success and end).", min=0.1, max=100.0)
    backgrounds: str = param("", "Folder of photographs that RB puts on the table and the backdrop (one drawn "
                                 "per episode from its seed), e.g. pictures of your own lab; empty: the procedural "
                                 "textures.")


PARAMS: tuple[ParamSpec, ...] = param_specs(SimParams)


COMMAND = NodeCommand("sim_node", "atk_bringup.sim_node", PARAMS,
                      extra="All parameters are read-only after start. Parameter file: --ros-args --params-file "
                            "sim.yaml (atk_bringup/config).")
