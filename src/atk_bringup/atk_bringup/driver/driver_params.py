"""UR driver settings (node ``ur_driver``), the safety limits among them: one
:class:`DriverParams` field each. ``ur_driver_node --help`` lists them without
ROS; the node is :mod:`atk_bringup.driver.driver_node`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atk_perception import kinematics as kin
from atk_perception.node_params import NodeCommand, ParamSpec, param, param_specs

NODE_NAME = "ur_driver"
_CELL = kin.CELL_JOINT_LIMITS


@dataclass(frozen=True)
class DriverParams:
    """The driver node's parameters: defaults, help and ranges (the safety limits among them)."""

    robot_ip: str = param("192.168.56.101", "IP address of the UR controller (URSim's default shown).", nonempty=True)
    control_rate_hz: float = param(500.0, "servoJ streaming rate (Hz): 500 for e-Series, 125 for CB3.",
                                   min=1.0, max=500.0)
    lookahead_time: float = param(0.1, "servoJ lookahead time (s): larger is smoother but lags more.",
                                  min=0.03, max=0.2)
    gain: float = param(300.0, "servoJ proportional gain.", min=100.0, max=2000.0)
    joint_limits_lower: list[float] = param([float(v) for v in _CELL[:, 0]], "Lower joint position limits (rad, 6 "
                                            "values, pan..wrist3); targets are clamped into them.",
                                            min=-2 * np.pi, max=2 * np.pi, length=6)
    joint_limits_upper: list[float] = param([float(v) for v in _CELL[:, 1]], "Upper joint position limits (rad, 6 "
                                            "values).", min=-2 * np.pi, max=2 * np.pi, length=6)
    max_velocity: list[float] = param([1.0] * 6, "Per-joint speed limit of the interpolator (rad/s, 6 values).",
                                      min=0.01, max=np.pi, length=6)
    max_acceleration: list[float] = param([3.0] * 6, "Per-joint acceleration limit of the interpolator (rad/s^2, 6 "
                                          "values).", min=0.01, max=40.0, length=6)
    max_target_step: float = param(0.3, "Largest distance of any joint between a target and the commanded "
                                   "position (rad); a larger jump is refused.", min=0.001, max=np.pi)
    max_target_age: float = param(0.5, "Refuse a target whose header.stamp is older than this, or this far in "
                                  "the future (s); 0 turns the check off (publishers without synchronised clocks).",
                                  min=0.0, max=60.0)
    workspace_min: list[float] = param([-0.85, -0.85, 0.015], "TCP workspace box lower corner in the robot base "
                                       "frame (m, x y z); targets moving the TCP outside are refused.",
                                       min=-2.0, max=2.0, length=3)
    workspace_max: list[float] = param([0.85, 0.85, 1.0], "TCP workspace box upper corner (m, x y z).",
                                       min=-2.0, max=2.0, length=3)
    tcp_offset_z: float = param(kin.ROBOTIQ_2F85_TCP_Z, "tool0 -> TCP distance along tool0 z (m) used for the "
                                "workspace box (Robotiq 2F-85 pad centre by default; measure on the cell).",
                                min=0.0, max=0.5)
    watchdog_timeout: float = param(0.5, "Stop smoothly when no fresh target arrives for this long (s).",
                                    min=0.01, max=10.0)
    stop_deceleration: float = param(2.0, "Joint deceleration of every stop (rad/s^2).", min=0.1, max=40.0)
    rtde_watchdog_min_frequency: float = param(10.0, "RTDE watchdog (Hz): the controller stops the arm when the "
                                               "driver's loop runs slower than this (driver crashed or hung).",
                                               min=1.0, max=500.0)
    joint_state_rate_hz: float = param(125.0, "Rate of joint_states (Hz).", min=1.0, max=500.0)
    diagnostics_rate_hz: float = param(2.0, "Rate of diagnostics (Hz); state changes are published at once too.",
                                       min=0.1, max=50.0)
    gripper_enabled: bool = param(True, "Drive a Robotiq 2F gripper through its URCap socket.")
    gripper_port: int = param(63352, "Robotiq URCap socket port on the controller.", min=1, max=65535)
    gripper_speed: float = param(0.5, "Gripper speed cap (0..1]; a command's speed of 0 means this value.",
                                 min=0.01, max=1.0)
    gripper_force: float = param(0.3, "Gripper force cap (0..1]; a command's force of 0 means this value.",
                                 min=0.01, max=1.0)
    gripper_raw_open: int = param(3, "Raw gripper position read when fully open (0..255).", min=0, max=255)
    gripper_raw_closed: int = param(230, "Raw gripper position read when fully closed (0..255).", min=0, max=255)


PARAMS: tuple[ParamSpec, ...] = param_specs(DriverParams)


COMMAND = NodeCommand("ur_driver_node", "atk_bringup.driver.driver_node", PARAMS,
                      extra="All parameters are read-only after start. Parameter file: --ros-args --params-file "
                            "ur_driver.yaml (atk_bringup/config).")
