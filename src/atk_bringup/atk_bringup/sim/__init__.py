"""MuJoCo simulation of the ATK cell (ROS-free): scene, tasks, perturbations, experts, SimEnv.

Rendering is headless: MUJOCO_GL defaults to "egl" here, before any module
of this package imports mujoco (the GL backend is chosen at import time).
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
