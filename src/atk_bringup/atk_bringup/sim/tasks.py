"""Simulated tasks modelled on the ATK paper's: objects, poses, success.

Each :class:`Task` contributes MJCF (objects with procedural textures), puts
its objects in nominal or randomised poses (RP) at reset, and computes
success from the physical state only (object poses, contacts, joint
positions), never from time or from what the expert did.

Tasks: ``sushi`` (pick a nigiri among clutter, place it on a plate),
``glass_lid`` (lift a transparent pot lid by its small knob),
``clock_button`` (press the button on top of an alarm clock),
``clock_hand`` (turn a clock's minute hand to a mark).
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from atk_bringup.sim import textures as tx
from atk_bringup.sim.model import TaskAssets

# Table region where task objects are placed (world x, y ranges, metres):
# in front of the robot, inside the camera view and the arm's comfortable
# reach with a top-down gripper.
REGION_X = (0.36, 0.62)
REGION_Y = (-0.22, 0.22)


def yaw_quat(yaw: float) -> np.ndarray:
    """(4,) wxyz quaternion of a rotation by yaw about world z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def body_yaw(d: mujoco.MjData, body: int) -> float:
    """Yaw of a body's x axis projected on the table plane (rad)."""
    r = d.xmat[body].reshape(3, 3)
    return float(np.arctan2(r[1, 0], r[0, 0]))


def in_contact(m: mujoco.MjModel, d: mujoco.MjData, geoms_a, geoms_b) -> bool:
    """True when any geom of geoms_a touches any geom of geoms_b."""
    a, b = set(int(g) for g in geoms_a), set(int(g) for g in geoms_b)
    for i in range(d.ncon):
        g1, g2 = int(d.contact.geom1[i]), int(d.contact.geom2[i])
        if (g1 in a and g2 in b) or (g1 in b and g2 in a):
            return True
    return False


def body_geoms(m: mujoco.MjModel, body: int) -> np.ndarray:
    """Ids of the geoms attached to one body."""
    return np.flatnonzero(m.geom_bodyid == body)


@dataclass
class Placement:
    """Where an object sits: xy (2,), yaw (rad), keep-out radius (m)."""

    xy: np.ndarray
    yaw: float
    radius: float


def sample_layout(rng: np.random.Generator, radii: list[float], margin: float = 0.02,
                  max_tries: int = 500) -> list[Placement]:
    """Non-overlapping random placements in the task region, one per radius."""
    for _ in range(max_tries):
        out: list[Placement] = []
        for r in radii:
            for _ in range(100):
                xy = np.array([rng.uniform(REGION_X[0] + r * 0.5, REGION_X[1] - r * 0.5),
                               rng.uniform(REGION_Y[0] + r * 0.5, REGION_Y[1] - r * 0.5)])
                if all(np.linalg.norm(xy - p.xy) > r + p.radius + margin for p in out):
                    out.append(Placement(xy, float(rng.uniform(-np.pi, np.pi)), r))
                    break
            else:
                break
        if len(out) == len(radii):
            return out
    raise RuntimeError(f"could not place {len(radii)} objects without overlap in the task region")


class Task:
    """Base class. Subclasses set `name`, `time_limit_s` and implement the hooks."""

    name: str = ""
    time_limit_s: float = 20.0

    def assets(self) -> TaskAssets:
        raise NotImplementedError

    def bind(self, m: mujoco.MjModel) -> None:
        """Look up ids after compilation and remember nominal static poses."""
        raise NotImplementedError

    def reset(self, m: mujoco.MjModel, d: mujoco.MjData, rng: np.random.Generator | None) -> None:
        """Place the objects: nominal poses when rng is None, else random (RP)."""
        raise NotImplementedError

    def success(self, m: mujoco.MjModel, d: mujoco.MjData) -> bool:
        raise NotImplementedError

    def keep_out(self, m: mujoco.MjModel, d: mujoco.MjData) -> list[tuple[np.ndarray, float]]:
        """(xy (2,), radius) discs that distractors must not cover."""
        raise NotImplementedError

    @staticmethod
    def _set_free(m: mujoco.MjModel, d: mujoco.MjData, body: int, pos, quat) -> None:
        jnt = m.body_jntadr[body]
        adr, dof = m.jnt_qposadr[jnt], m.jnt_dofadr[jnt]
        d.qpos[adr:adr + 3] = pos
        d.qpos[adr + 3:adr + 7] = quat
        d.qvel[dof:dof + 6] = 0.0


# --------------------------------------------------------------------------
class SushiTask(Task):
    """Pick the salmon nigiri and place it on the plate, among clutter.

    Success: the nigiri touches the plate, its centre lies within
    `place_tolerance` of the plate centre (xy), it is upright, and neither
    finger pad touches it (it was released).
    """

    name = "sushi"
    time_limit_s = 30.0
    # nigiri: rice block + fish slice, metres (half sizes)
    RICE = (0.028, 0.014, 0.011)
    FISH = (0.033, 0.017, 0.004)
    PLATE_R, PLATE_H = 0.085, 0.006
    place_tolerance = 0.06

    def assets(self) -> TaskAssets:
        rx, ry, rz = self.RICE
        fx, fy, fz = self.FISH
        t_x, t_y, t_z = 0.026, 0.013, 0.012
        world = f"""
    <body name="sushi" pos="0.5 0 {rz}">
      <freejoint name="sushi"/>
      <geom class="object" name="sushi_rice" type="box" size="{rx} {ry} {rz}" material="rice" mass="0.025"/>
      <geom class="object" name="sushi_fish" type="box" pos="0 0 {rz + fz}" size="{fx} {fy} {fz}"
            material="salmon" mass="0.01"/>
    </body>
    <body name="plate" pos="0.5 0.15 {self.PLATE_H}">
      <geom class="object" name="plate" type="cylinder" size="{self.PLATE_R} {self.PLATE_H}" material="plate"/>
    </body>
    <body name="tamago" pos="0.4 -0.15 {t_z}">
      <freejoint name="tamago"/>
      <geom class="object" name="tamago_rice" type="box" size="{t_x} {t_y} {t_z * 0.7}" material="rice" mass="0.02"/>
      <geom class="object" type="box" pos="0 0 {t_z * 0.7 + 0.005}" size="{t_x + 0.003} {t_y + 0.002} 0.005"
            material="tamago" mass="0.01"/>
    </body>
    <body name="soy_dish" pos="0.6 -0.1 0.008">
      <geom class="object" type="cylinder" size="0.04 0.008" rgba="0.9 0.9 0.92 1"/>
      <geom class="object" type="cylinder" pos="0 0 0.0081" size="0.03 0.0001" rgba="0.2 0.08 0.03 1"
            contype="0" conaffinity="0"/>
    </body>
    <body name="chopsticks" pos="0.4 0.1 0.005">
      <geom class="object" type="box" pos="0 -0.008 0" size="0.11 0.004 0.004" rgba="0.55 0.3 0.15 1"/>
      <geom class="object" type="box" pos="0 0.008 0" size="0.11 0.004 0.004" rgba="0.6 0.35 0.18 1"/>
    </body>
"""
        assets = """
    <texture name="rice" type="cube" file="rice.png"/>
    <material name="rice" texture="rice" specular="0.1"/>
    <texture name="salmon" type="cube" file="salmon.png"/>
    <material name="salmon" texture="salmon" specular="0.4" shininess="0.6"/>
    <texture name="tamago" type="cube" file="tamago.png"/>
    <material name="tamago" texture="tamago" specular="0.2"/>
    <texture name="plate" type="2d" file="plate.png"/>
    <material name="plate" texture="plate" specular="0.5" shininess="0.7"/>
"""
        return TaskAssets(world, assets, {"rice.png": tx.rice(), "salmon.png": tx.salmon(),
                                          "tamago.png": tx.tamago(), "plate.png": tx.plate()})

    def bind(self, m: mujoco.MjModel) -> None:
        self.sushi = m.body("sushi").id
        self.plate = m.body("plate").id
        self.tamago = m.body("tamago").id
        self.statics = [m.body(n).id for n in ("plate", "soy_dish", "chopsticks")]
        self.nominal = {b: (m.body_pos[b].copy(), m.body_quat[b].copy()) for b in self.statics}
        self.sushi_geoms = body_geoms(m, self.sushi)
        self.plate_geoms = body_geoms(m, self.plate)
        self.sushi_half_height = self.RICE[2] + self.FISH[2]  # centre of body frame = rice centre
        self.sushi_height = 2 * self.RICE[2] + 2 * self.FISH[2]

    def reset(self, m, d, rng) -> None:
        if rng is None:
            lay = [Placement(np.array([0.47, -0.05]), 0.3, 0.04),
                   Placement(np.array([0.50, 0.15]), 0.0, self.PLATE_R),
                   Placement(np.array([0.40, -0.17]), -0.4, 0.035),
                   Placement(np.array([0.59, -0.14]), 0.0, 0.04),
                   Placement(np.array([0.69, 0.02]), np.pi / 2, 0.03)]
        else:
            lay = sample_layout(rng, [0.045, self.PLATE_R, 0.04, 0.042])
            # the chopsticks are long: they lie across the front edge of the
            # region (towards the camera), where no grasp reaches them
            lay.append(Placement(np.array([rng.uniform(0.68, 0.70), rng.uniform(-0.12, 0.12)]),
                                 float(np.pi / 2 + rng.uniform(-0.1, 0.1)), 0.03))
        sushi, plate, tamago, dish, sticks = lay
        self._set_free(m, d, self.sushi, [*sushi.xy, self.RICE[2]], yaw_quat(sushi.yaw))
        self._set_free(m, d, self.tamago, [*tamago.xy, 0.0085], yaw_quat(tamago.yaw))
        for body, p in zip(self.statics, (plate, dish, sticks)):
            m.body_pos[body, :2] = p.xy
            m.body_quat[body] = yaw_quat(p.yaw)

    def success(self, m, d) -> bool:
        s, p = d.xpos[self.sushi], d.xpos[self.plate]
        upright = d.xmat[self.sushi].reshape(3, 3)[2, 2] > np.cos(np.deg2rad(30))
        return bool(np.linalg.norm(s[:2] - p[:2]) < self.place_tolerance and upright
                    and in_contact(m, d, self.sushi_geoms, self.plate_geoms)
                    and not in_contact(m, d, self.sushi_geoms, self._pads(m)))

    @staticmethod
    def _pads(m):
        return [m.geom("pad_left").id, m.geom("pad_right").id]

    def keep_out(self, m, d):
        return [(d.xpos[b][:2].copy(), r) for b, r in
                ((self.sushi, 0.06), (self.plate, self.PLATE_R + 0.03), (self.tamago, 0.05),
                 (self.statics[1], 0.05))] + [
            (d.xpos[self.statics[2]][:2] + [0.0, dy], 0.03) for dy in (-0.08, 0.0, 0.08)]


# --------------------------------------------------------------------------
class GlassLidTask(Task):
    """Lift a transparent glass pot lid from its pot by the small knob.

    Success: the lid's centre is at least `lift_height` above its resting
    height on the pot and it hangs within 30 degrees of level.
    """

    name = "glass_lid"
    time_limit_s = 20.0
    POT_R, POT_HH = 0.08, 0.05
    LID_R, LID_HH = 0.09, 0.004
    STEM = (0.006, 0.010)   # radius, half height
    KNOB = (0.012, 0.009)   # radius, half height: the small tip to grasp
    lift_height = 0.08

    def assets(self) -> TaskAssets:
        top = 2 * self.POT_HH
        sr, sh = self.STEM
        kr, kh = self.KNOB
        # steel rim: a ring of short capsules around the glass (visual only)
        n_rim = 24
        rim = "\n".join(
            f'      <geom type="capsule" fromto="{self.LID_R * np.cos(a0):.5f} {self.LID_R * np.sin(a0):.5f} 0 '
            f'{self.LID_R * np.cos(a1):.5f} {self.LID_R * np.sin(a1):.5f} 0" size="0.0035" '
            f'material="steel_rim" contype="0" conaffinity="0" mass="0.002"/>'
            for a0, a1 in ((2 * np.pi * k / n_rim, 2 * np.pi * (k + 1) / n_rim) for k in range(n_rim)))
        world = f"""
    <body name="pot" pos="0.5 0 {self.POT_HH}">
      <geom class="object" name="pot" type="cylinder" size="{self.POT_R} {self.POT_HH}" material="pot"/>
      <!-- the pot's dark inside, seen through the glass lid -->
      <geom name="pot_inside" type="cylinder" pos="0 0 {self.POT_HH + 0.001}" size="{self.POT_R - 0.006} 0.0005"
            rgba="0.12 0.1 0.09 1" contype="0" conaffinity="0"/>
      <geom class="object" type="box" pos="{self.POT_R + 0.02} 0 {self.POT_HH * 0.6}" size="0.025 0.012 0.006"
            rgba="0.1 0.1 0.1 1"/>
      <geom class="object" type="box" pos="{-self.POT_R - 0.02} 0 {self.POT_HH * 0.6}" size="0.025 0.012 0.006"
            rgba="0.1 0.1 0.1 1"/>
    </body>
    <body name="lid" pos="0.5 0 {top + self.LID_HH}">
      <freejoint name="lid"/>
      <geom class="object" name="lid_glass" type="cylinder" size="{self.LID_R} {self.LID_HH}"
            material="glass" mass="0.25"/>
{rim}
      <geom class="object" name="lid_stem" type="cylinder" pos="0 0 {self.LID_HH + sh}" size="{sr} {sh}"
            material="steel_rim" mass="0.01"/>
      <geom class="object" name="lid_knob" type="cylinder" pos="0 0 {self.LID_HH + 2 * sh + kh}"
            size="{kr} {kh}" material="knob" mass="0.02" friction="1.5 0.02 0.002"/>
    </body>
"""
        assets = """
    <texture name="pot" type="cube" file="pot.png"/>
    <material name="pot" texture="pot" specular="0.8" shininess="0.8" reflectance="0.2"/>
    <!-- glass: mostly transparent, strong specular highlights, reflective -->
    <material name="glass" rgba="0.78 0.88 0.95 0.3" specular="1" shininess="1" reflectance="0.6"/>
    <material name="steel_rim" rgba="0.75 0.76 0.8 1" specular="0.9" shininess="0.9" reflectance="0.3"/>
    <texture name="knob" type="cube" file="knob.png"/>
    <material name="knob" texture="knob" specular="0.3"/>
"""
        return TaskAssets(world, assets, {"pot.png": tx.brushed_metal(),
                                          "knob.png": tx.stripes(32, name="knob", colours=((20, 20, 20), (200, 60, 40)), n=4)})

    def bind(self, m: mujoco.MjModel) -> None:
        self.lid = m.body("lid").id
        self.pot = m.body("pot").id
        self.knob_geom = m.geom("lid_knob").id
        self.nominal_pot = m.body_pos[self.pot].copy()
        self.rest_z = 2 * self.POT_HH + self.LID_HH

    def knob_top_offset(self) -> float:
        """Height of the knob centre above the lid body origin (m)."""
        return self.LID_HH + 2 * self.STEM[1] + self.KNOB[1]

    def reset(self, m, d, rng) -> None:
        if rng is None:
            xy, yaw = np.array([0.5, 0.0]), 0.0
        else:
            (p,) = sample_layout(rng, [self.LID_R])
            xy, yaw = p.xy, p.yaw
        m.body_pos[self.pot, :2] = xy
        m.body_quat[self.pot] = yaw_quat(yaw)
        self._set_free(m, d, self.lid, [*xy, self.rest_z], yaw_quat(yaw))

    def success(self, m, d) -> bool:
        level = d.xmat[self.lid].reshape(3, 3)[2, 2] > np.cos(np.deg2rad(30))
        return bool(d.xpos[self.lid][2] > self.rest_z + self.lift_height and level)

    def keep_out(self, m, d):
        return [(d.xpos[self.pot][:2].copy(), self.LID_R + 0.08)]


# --------------------------------------------------------------------------
class ClockButtonTask(Task):
    """Press the snooze button on top of an alarm clock.

    Success: the button's slide joint is pushed down by at least
    `press_depth` (the button springs back when released; the env latches
    success).
    """

    name = "clock_button"
    time_limit_s = 15.0
    BODY = (0.025, 0.06, 0.06)    # half sizes: thin in x (face towards the camera at +x)
    BUTTON = (0.012, 0.02, 0.006)
    TRAVEL = 0.008
    press_depth = 0.005

    def assets(self) -> TaskAssets:
        bx, by, bz = self.BODY
        ux, uy, uz = self.BUTTON
        world = f"""
    <body name="clock" pos="0.5 0 {bz}">
      <geom class="object" name="clock_case" type="box" size="{bx} {by} {bz}" material="clock_case"/>
      <geom class="object" name="clock_face" type="box" pos="{bx + 0.0005} 0 0" size="0.0005 {by * 0.85} {bz * 0.85}"
            material="clock_face" contype="0" conaffinity="0"/>
      <geom class="object" type="box" pos="{bx * 0.3} {by * 0.7} {-bz - 0.004}" size="0.01 0.01 0.004"
            rgba="0.2 0.2 0.2 1"/>
      <geom class="object" type="box" pos="{bx * 0.3} {-by * 0.7} {-bz - 0.004}" size="0.01 0.01 0.004"
            rgba="0.2 0.2 0.2 1"/>
      <body name="button" pos="0 0 {bz + uz}">
        <joint name="button" type="slide" axis="0 0 1" range="{-self.TRAVEL} 0" stiffness="300"
               springref="0" damping="3"/>
        <geom class="object" name="button" type="box" size="{ux} {uy} {uz}" material="button" mass="0.01"/>
      </body>
    </body>
"""
        assets = """
    <texture name="clock_face" type="cube" file="clock_face.png"/>
    <material name="clock_face" texture="clock_face" specular="0.3"/>
    <texture name="clock_case" type="cube" file="clock_case.png"/>
    <material name="clock_case" texture="clock_case" specular="0.5"/>
    <texture name="button" type="cube" file="button.png"/>
    <material name="button" texture="button" specular="0.4"/>
"""
        # the button slides inside the case: no contact between them
        extra = '<contact><exclude body1="clock" body2="button"/></contact>'
        return TaskAssets(world, assets, extra=extra, textures={
            "clock_face.png": tx.clock_face(),
            "clock_case.png": tx.stripes(64, name="clock_case", colours=((170, 30, 40), (150, 25, 35)), n=16),
            "button.png": tx.dots(32, name="button", bg=(230, 200, 40), fg=(40, 40, 40))})

    def bind(self, m: mujoco.MjModel) -> None:
        self.clock = m.body("clock").id
        self.button = m.body("button").id
        self.button_qpos = m.jnt_qposadr[m.joint("button").id]
        self.button_top_offset = self.BODY[2] + 2 * self.BUTTON[2]  # above the clock centre

    def reset(self, m, d, rng) -> None:
        if rng is None:
            xy, yaw = np.array([0.5, 0.0]), 0.0
        else:
            (p,) = sample_layout(rng, [0.07])
            # the face stays roughly towards the camera (+x), as a person would set it down
            xy, yaw = p.xy, float(rng.uniform(-0.6, 0.6))
        m.body_pos[self.clock, :2] = xy
        m.body_quat[self.clock] = yaw_quat(yaw)
        d.qpos[self.button_qpos] = 0.0

    def success(self, m, d) -> bool:
        return bool(d.qpos[self.button_qpos] < -self.press_depth)

    def keep_out(self, m, d):
        return [(d.xpos[self.clock][:2].copy(), 0.13)]


# --------------------------------------------------------------------------
class ClockHandTask(Task):
    """Turn the minute hand of a clock lying face up to the red 12 o'clock mark.

    The hand turns on a damped hinge (it stays where it is pushed). Success:
    the hand points within `angle_tolerance` of the mark (clock frame
    angle 0, marked by a red tab on the rim).
    """

    name = "clock_hand"
    time_limit_s = 20.0
    DIAL_R, DIAL_HH = 0.075, 0.015
    HAND = (0.032, 0.0035, 0.004)    # half sizes; the hand spans radius 0 .. 0.064
    angle_tolerance = 0.12           # rad (about 7 deg)

    def assets(self) -> TaskAssets:
        r, hh = self.DIAL_R, self.DIAL_HH
        hx, hy, hz = self.HAND
        world = f"""
    <body name="wall_clock" pos="0.5 0 {hh}">
      <geom class="object" name="dial_case" type="cylinder" size="{r} {hh}" material="dial_case"/>
      <!-- euler -pi/2 turns the dial texture so that its 12 sits at the red mark (clock +x) -->
      <geom name="dial_face" type="cylinder" pos="0 0 {hh}" size="{r * 0.92} 0.0004" euler="0 0 -1.5708" material="dial"
            contype="0" conaffinity="0"/>
      <geom name="target_mark" type="box" pos="{r * 0.93} 0 {hh + 0.001}" size="0.008 0.005 0.0015"
            rgba="0.85 0.1 0.1 1" contype="0" conaffinity="0"/>
      <geom name="hour_hand" type="box" pos="-0.012 0.012 {hh + 0.0012}" size="0.02 0.003 0.0008"
            euler="0 0 2.36" rgba="0.1 0.1 0.1 1" contype="0" conaffinity="0"/>
      <body name="minute_hand" pos="0 0 {hh + 0.0015}">
        <joint name="minute_hand" type="hinge" axis="0 0 1" damping="0.02" frictionloss="0.004"
               armature="0.0005"/>
        <geom class="object" name="minute_hand" type="box" pos="{hx} 0 {hz}" size="{hx} {hy} {hz}"
              material="hand" mass="0.004"/>
        <geom name="hand_cap" type="cylinder" pos="0 0 {2 * hz}" size="0.006 0.001" rgba="0.8 0.7 0.2 1"
              contype="0" conaffinity="0"/>
      </body>
    </body>
"""
        assets = """
    <texture name="dial" type="cube" file="dial.png"/>
    <material name="dial" texture="dial" specular="0.3"/>
    <texture name="dial_case" type="cube" file="dial_case.png"/>
    <material name="dial_case" texture="dial_case" specular="0.4"/>
    <texture name="hand" type="cube" file="hand.png"/>
    <material name="hand" texture="hand" specular="0.3"/>
"""
        extra = '<contact><exclude body1="wall_clock" body2="minute_hand"/></contact>'
        return TaskAssets(world, assets, extra=extra, textures={
            "dial.png": tx.clock_face(),
            "dial_case.png": tx.wood(64, name="dial_case", tone=(60, 90, 140)),
            "hand.png": tx.stripes(32, name="hand", colours=((20, 20, 20), (230, 200, 40)), n=8)})

    def bind(self, m: mujoco.MjModel) -> None:
        self.clock = m.body("wall_clock").id
        self.hand = m.body("minute_hand").id
        self.hand_geom = m.geom("minute_hand").id
        jnt = m.joint("minute_hand").id
        self.hand_qpos, self.hand_dof = m.jnt_qposadr[jnt], m.jnt_dofadr[jnt]
        self.face_z = 2 * self.DIAL_HH   # table to dial surface

    def hand_angle(self, d: mujoco.MjData) -> float:
        """Hand angle in the clock frame, wrapped to (-pi, pi]; 0 = at the mark."""
        a = float(d.qpos[self.hand_qpos])
        return (a + np.pi) % (2 * np.pi) - np.pi

    def reset(self, m, d, rng) -> None:
        if rng is None:
            xy, yaw, angle = np.array([0.5, 0.0]), 0.0, 1.4
        else:
            (p,) = sample_layout(rng, [self.DIAL_R + 0.02])
            xy, yaw = p.xy, p.yaw
            angle = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 2.4))
        m.body_pos[self.clock, :2] = xy
        m.body_quat[self.clock] = yaw_quat(yaw)
        d.qpos[self.hand_qpos] = angle
        d.qvel[self.hand_dof] = 0.0

    def success(self, m, d) -> bool:
        return bool(abs(self.hand_angle(d)) < self.angle_tolerance)

    def keep_out(self, m, d):
        return [(d.xpos[self.clock][:2].copy(), self.DIAL_R + 0.06)]


TASKS: dict[str, type[Task]] = {t.name: t for t in (SushiTask, GlassLidTask, ClockButtonTask, ClockHandTask)}


def make_task(name: str) -> Task:
    """A fresh task instance; unknown names raise ValueError listing the tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]()
