"""UR5e kinematics: :mod:`atk_policy.kinematics` under its historical name.

The kinematics moved to atk_policy because Cartesian (``tcp``) policies
convert their actions to joint targets with it, and atk_policy must not
depend on atk_bringup. This module *is* that module (same object), so the
driver, simulator, experts and their tests keep importing it from here.
"""
import sys

from atk_policy import kinematics as _kinematics

sys.modules[__name__] = _kinematics
