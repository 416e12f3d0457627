"""MJCF of the simulated cell, generated in code: UR5e, 2F-85-like gripper,
table, camera, lights, switchable table/background materials and distractors.

The arm is built link by link from :mod:`atk_perception.kinematics`'s DH table
(one body per DH frame, hinge about the body's z axis), so the simulator's
forward kinematics equals ``kinematics.fk`` by construction (tested). Shapes
are primitives: fast to render, nothing downloaded. If a local copy of
MuJoCo Menagerie's ``universal_robots_ur5e`` folder is given, its visual
meshes replace the primitive link shapes on the same DH bodies (see
:mod:`sim.menagerie`), so the kinematics stay exact either way.

World frame: z up, table top at z = 0. The robot base sits on the table at
the world origin, rotated by pi about z so that the arm's working side
(base -x) faces world +x, where the task objects lie. The camera stands at
the front of the cell (world +x) and looks down and back at the workspace,
as a tripod-mounted Kinect does on the real cell.

Everything that perturbations switch is prepared here at build time:
``N_TABLE_MATERIALS`` table materials, ``N_BACKGROUND_MATERIALS`` floor/wall
materials, ``N_DISTRACTORS`` visual-only mocap distractors parked under the
floor. Switching them edits model fields (``geom_matid``, ``mocap_pos``,
``light_*``) and never recompiles.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from atk_perception import kinematics as kin
from atk_bringup.sim import textures as tx

# Robot base pose in the world: origin, yaw pi (see module docstring).
BASE_POS = np.zeros(3)
BASE_YAW = np.pi
# Table top half extents (x, y), metres; the top is at z = 0.
TABLE_HALF = (0.55, 0.6)
TABLE_CENTRE_X = 0.35
FLOOR_Z = -0.75

# Gripper (Robotiq 2F-85 dimensions): stroke 85 mm, i.e. each finger travels
# 42.5 mm; pad 22 mm wide (y) and 37 mm long (z); pinch point
# kin.ROBOTIQ_2F85_TCP_Z from tool0.
FINGER_TRAVEL = kin.ROBOTIQ_2F85_FINGER_TRAVEL
PAD_HALF = tuple(float(v) for v in kin.ROBOTIQ_2F85_PAD_HALF)  # x (thickness), y (width), z (length)
TCP_Z = kin.ROBOTIQ_2F85_TCP_Z

# Joint PD gains (position actuators): stiff enough that a 10 Hz target
# stream is tracked within a few milliradians, critically damped for the
# link inertia + armature below (gravity is compensated per body, as the UR
# controller does).
KP = (4000.0, 4000.0, 3000.0, 800.0, 800.0, 500.0)
KV = (400.0, 400.0, 300.0, 60.0, 60.0, 40.0)
ARMATURE = (0.4, 0.4, 0.3, 0.1, 0.1, 0.1)
LINK_MASS = (3.7, 8.393, 2.275, 1.219, 1.219, 0.1879)  # UR5e published link masses, kg
LINK_RADIUS = tuple(float(r) for r in kin.UR5E_LINK_RADII)  # the robot mask draws the same solids

N_TABLE_MATERIALS = 5
N_BACKGROUND_MATERIALS = 4
#: Side (px) of the two textures that RB fills with the user's photographs at
#: run time (SimConfig.backgrounds); grey and unused otherwise.
USER_TEXTURE_PX = 512
N_DISTRACTORS = 8

CAMERA_POS = np.array([0.92, 0.0, 0.47])
CAMERA_TARGET = np.array([0.47, 0.0, 0.03])
CAMERA_FOVY_DEG = 45.0


@dataclass(frozen=True)
class TaskAssets:
    """What a task adds to the scene.

    worldbody: MJCF elements placed in <worldbody>; assets: MJCF elements in
    <asset>; textures: file name -> (H, W, 3) uint8 image, referenced by
    the asset elements as file="<name>".
    """

    worldbody: str
    assets: str = ""
    textures: dict[str, np.ndarray] = field(default_factory=dict)
    extra: str = ""  # top-level elements (equality, tendon, contact excludes)


def _fmt(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in np.atleast_1d(v))


def _quat_rx(alpha: float) -> np.ndarray:
    return np.array([np.cos(alpha / 2), np.sin(alpha / 2), 0.0, 0.0])


def look_at_xyaxes(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """MuJoCo camera `xyaxes` (6,) for a camera at pos looking at target, image up ~ world z."""
    fwd = target - pos
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return np.concatenate([right, up])


def _mesh_geoms(parts, body: str, ind: str) -> str:
    return "".join(
        f'{ind}<geom class="robot" type="mesh" mesh="{p.name}" pos="{_fmt(p.pos)}" quat="{_fmt(p.quat)}" '
        f'rgba="{_fmt(p.rgba)}"/>\n' for p in parts if p.body == body)


def _arm_xml(parts=None) -> str:
    """Nested bodies link1..link6 + flange + gripper, in DH frames.

    parts: optional Menagerie visual meshes (sim.menagerie.MeshPart) that
    replace the primitive link shapes; the bodies and joints are the same.
    """
    out = []
    indent = "    "
    # the first link hangs off the base body at its origin
    parent_pos = np.zeros(3)
    parent_quat = np.array([1.0, 0.0, 0.0, 0.0])
    for i in range(kin.N_JOINTS):
        name = kin.JOINT_NAMES[i]
        lo, hi = kin.CELL_JOINT_LIMITS[i]
        r = LINK_RADIUS[i]
        seg = np.array([kin.DH_A[i], 0.0, kin.DH_D[i]])
        # Body i = DH frame i-1, rotated by joint i about its z axis. The
        # child body (frame i) sits at Tz(d) Tx(a) Rx(alpha), i.e. position
        # (a, 0, d) and rotation Rx(alpha) in this body's frame.
        geoms = [f'<geom class="robot" type="cylinder" size="{r:.3f} {r * 1.1:.3f}" '
                 f'material="ur_joint"/>']
        if np.linalg.norm(seg) > 1e-6:
            geoms.append(f'<geom class="robot" type="capsule" fromto="0 0 0 {_fmt(seg)}" '
                         f'size="{r * 0.75:.3f}" material="ur_link"/>')
        com = seg / 2
        out.append(
            f'{indent * (i + 1)}<body name="link{i + 1}" pos="{_fmt(parent_pos)}" '
            f'quat="{_fmt(parent_quat)}" gravcomp="1">\n'
            f'{indent * (i + 2)}<inertial pos="{_fmt(com)}" mass="{LINK_MASS[i]}" '
            f'diaginertia="{_fmt(np.full(3, 0.02 * LINK_MASS[i]))}"/>\n'
            f'{indent * (i + 2)}<joint name="{name}" axis="0 0 1" range="{lo:.6f} {hi:.6f}" '
            f'armature="{ARMATURE[i]}" damping="0.5"/>\n'
            + (_mesh_geoms(parts, f"link{i + 1}", indent * (i + 2)) if parts
               else "".join(f"{indent * (i + 2)}{g}\n" for g in geoms)))
        parent_pos = seg
        parent_quat = _quat_rx(kin.DH_ALPHA[i])
    # tool0 (flange) frame = DH frame 6 = last body's child placement.
    ind = indent * 7
    out.append(
        f'{ind}<body name="tool0" pos="{_fmt(parent_pos)}" quat="{_fmt(parent_quat)}" gravcomp="1">\n'
        f'{ind}  <site name="tool0" size="0.005" rgba="1 0 0 0"/>\n'
        f'{ind}  <site name="tcp" pos="0 0 {TCP_Z}" size="0.005" rgba="0 1 0 0"/>\n'
        f'{_gripper_xml(ind + "  ")}'
        f'{ind}</body>\n')
    for i in reversed(range(kin.N_JOINTS)):
        out.append(f'{indent * (i + 1)}</body>\n')
    return "".join(out)


def _gripper_xml(ind: str) -> str:
    """2F-85-like gripper in the tool0 frame (z along the tool)."""
    px, py, pz = PAD_HALF
    fingers = []
    for side, sign in (("left", 1.0), ("right", -1.0)):
        # Finger body origin on the pad's inner face, open position; the
        # slide joint moves it towards the centre line (sign * -x).
        fingers.append(
            f'{ind}  <body name="finger_{side}" gravcomp="1" pos="{sign * FINGER_TRAVEL:.4f} 0 0">\n'
            f'{ind}    <inertial pos="0 0 {TCP_Z - 0.02}" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>\n'
            f'{ind}    <joint name="finger_{side}" type="slide" axis="{-sign:.0f} 0 0" '
            f'range="0 {FINGER_TRAVEL}" armature="0.01" damping="2"/>\n'
            f'{ind}    <geom class="gripper" name="knuckle_{side}" type="box" '
            f'pos="{_fmt(kin.ROBOTIQ_2F85_KNUCKLE_OFFSET * [sign, 1, 1])}" '
            f'size="{_fmt(kin.ROBOTIQ_2F85_KNUCKLE_HALF)}" material="gripper_dark"/>\n'
            f'{ind}    <geom class="pad" name="pad_{side}" type="box" '
            f'pos="{sign * px:.4f} 0 {TCP_Z:.4f}" size="{px} {py} {pz}" material="gripper_pad"/>\n'
            f'{ind}  </body>\n')
    cr, chl, cz = kin.ROBOTIQ_2F85_COUPLING
    return (
        f'{ind}<geom class="gripper" type="cylinder" pos="0 0 {cz}" size="{cr} {chl}" material="ur_joint"/>\n'
        f'{ind}<geom class="gripper" name="gripper_housing" type="box" pos="0 0 {kin.ROBOTIQ_2F85_HOUSING_Z}" '
        f'size="{_fmt(kin.ROBOTIQ_2F85_HOUSING_HALF)}" material="gripper_dark"/>\n'
        + "".join(fingers))


def _materials_xml() -> tuple[str, dict[str, np.ndarray]]:
    textures: dict[str, np.ndarray] = {
        "table0.png": tx.wood(name="table0"),
        "table1.png": tx.wood(name="table1", tone=(95, 62, 40)),
        "table2.png": tx.checker(name="table2"),
        "table3.png": tx.marble(name="table3"),
        "table4.png": tx.fabric(name="table4"),
        "bg0.png": tx.wall(name="bg0"),
        "bg1.png": tx.wall(name="bg1", tone=(120, 140, 170)),
        "bg2.png": tx.checker(name="bg2", colours=((160, 60, 60), (230, 210, 160)), cells=6),
        "bg3.png": tx.fabric(name="bg3", tone=(150, 110, 160)),
        "dis_stripes.png": tx.stripes(),
        "dis_dots.png": tx.dots(),
        "dis_wood.png": tx.wood(64, name="dis_wood", tone=(200, 160, 90)),
        "dis_green.png": tx.stripes(name="dis_green", colours=((30, 140, 60), (220, 230, 60)), n=10),
    }
    xml = []
    for i in range(N_TABLE_MATERIALS):
        xml.append(f'<texture name="table{i}" type="2d" file="table{i}.png"/>')
        xml.append(f'<material name="table{i}" texture="table{i}" texrepeat="2 2" specular="0.2"/>')
    for i in range(N_BACKGROUND_MATERIALS):
        xml.append(f'<texture name="bg{i}" type="2d" file="bg{i}.png"/>')
        xml.append(f'<material name="bg{i}" texture="bg{i}" texrepeat="4 4" specular="0.05"/>')
    # RB with the user's photographs (SimConfig.backgrounds): one photo covers the table, one the backdrop
    textures["user_table.png"] = np.full((USER_TEXTURE_PX, USER_TEXTURE_PX, 3), 128, np.uint8)
    textures["user_bg.png"] = np.full((USER_TEXTURE_PX, USER_TEXTURE_PX, 3), 128, np.uint8)
    xml.append('<texture name="user_table" type="2d" file="user_table.png"/>')
    xml.append('<material name="user_table" texture="user_table" texrepeat="1 1" specular="0.1"/>')
    xml.append('<texture name="user_bg" type="2d" file="user_bg.png"/>')
    xml.append('<material name="user_bg" texture="user_bg" texrepeat="1 1" specular="0.05"/>')
    for n in ("stripes", "dots", "wood", "green"):
        xml.append(f'<texture name="dis_{n}" type="cube" file="dis_{n}.png"/>')
        xml.append(f'<material name="dis_{n}" texture="dis_{n}"/>')
    xml += [
        '<material name="ur_link" rgba="0.72 0.74 0.78 1" specular="0.5" shininess="0.5"/>',
        '<material name="ur_joint" rgba="0.25 0.42 0.62 1" specular="0.4"/>',
        '<material name="gripper_dark" rgba="0.12 0.12 0.13 1" specular="0.3"/>',
        '<material name="gripper_pad" rgba="0.35 0.35 0.38 1"/>',
        '<material name="table_edge" rgba="0.35 0.3 0.25 1"/>',
    ]
    return "\n    ".join(xml), textures


def _distractors_xml() -> str:
    """Visual-only mocap bodies (contype 0): they change images, never physics."""
    shapes = [
        ('type="cylinder" size="0.035 0.05"', "dis_stripes"),   # can
        ('type="box" size="0.04 0.03 0.045"', "dis_dots"),      # box
        ('type="sphere" size="0.035"', "dis_green"),            # ball
        ('type="capsule" size="0.018 0.05" euler="0 90 0"', "dis_wood"),  # banana-ish
        ('type="cylinder" size="0.045 0.015"', "dis_dots"),     # disc
        ('type="box" size="0.06 0.02 0.02"', "dis_stripes"),    # bar
        ('type="ellipsoid" size="0.04 0.03 0.025"', "dis_wood"),
        ('type="cylinder" size="0.025 0.07"', "dis_green"),     # bottle
    ]
    out = []
    for i in range(N_DISTRACTORS):
        geom, mat = shapes[i % len(shapes)]
        out.append(
            f'<body name="distractor{i}" mocap="true" pos="0 {i * 0.2:.2f} -5">'
            f'<geom name="distractor{i}" {geom} material="{mat}" contype="0" conaffinity="0" group="1"/>'
            f'</body>')
    return "\n    ".join(out)


def distractor_half_height(model: mujoco.MjModel, i: int) -> float:
    """Height of distractor i's centre above the table when resting on it (m)."""
    g = model.geom(f"distractor{i}")
    t, s = int(g.type[0]), g.size
    if t == mujoco.mjtGeom.mjGEOM_SPHERE:
        return float(s[0])
    if t == mujoco.mjtGeom.mjGEOM_CAPSULE:
        return float(s[0])  # lying (euler 0 90 0)
    if t == mujoco.mjtGeom.mjGEOM_ELLIPSOID:
        return float(s[2])
    return float(s[1] if t == mujoco.mjtGeom.mjGEOM_CYLINDER else s[2])


def build_mjcf(task: TaskAssets, width: int, height: int,
               timestep: float = 0.002, parts=None) -> tuple[str, dict[str, bytes]]:
    """Full MJCF text and its in-memory assets (PNG/STL bytes) for one task scene.

    parts: optional Menagerie meshes for the arm (see sim.menagerie).
    """
    mats, textures = _materials_xml()
    if parts:
        mats += "\n    " + "\n    ".join(f'<mesh name="{p.name}" file="{p.name}.stl"/>' for p in parts)
    textures = {**textures, **task.textures}
    base_quat = np.array([np.cos(BASE_YAW / 2), 0.0, 0.0, np.sin(BASE_YAW / 2)])
    br, bhl, bz = kin.UR5E_BASE_CYLINDER
    base_geoms = (_mesh_geoms(parts, "base", "      ") if parts else
                  f'      <geom class="robot" type="cylinder" pos="0 0 {bz}" size="{br} {bhl}" material="ur_joint"/>\n')
    xyaxes = look_at_xyaxes(CAMERA_POS, CAMERA_TARGET)
    tx0 = TABLE_CENTRE_X
    xml = f"""<mujoco model="atk_cell">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <!-- shadows and multisampling off: several times faster headless -->
    <quality shadowsize="0" offsamples="0"/>
    <global offwidth="{max(width, 64)}" offheight="{max(height, 64)}" fovy="{CAMERA_FOVY_DEG}"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.4 0.4 0.4" specular="0.1 0.1 0.1"/>
    <map znear="0.02" zfar="20"/>
  </visual>
  <default>
    <geom solref="0.004 1" solimp="0.95 0.99 0.001" friction="1.0 0.01 0.001"/>
    <default class="robot"><geom contype="0" conaffinity="0" group="2"/></default>
    <default class="gripper"><geom contype="1" conaffinity="1" condim="4" group="2"/></default>
    <default class="pad"><geom contype="1" conaffinity="1" condim="4" friction="1.8 0.02 0.002" group="2"/></default>
    <default class="object"><geom condim="4" friction="1.2 0.02 0.002" group="0"/></default>
  </default>
  <asset>
    {mats}
    {task.assets}
  </asset>
  <worldbody>
    <light name="key" directional="true" pos="0.5 0.3 2.0" dir="-0.2 -0.15 -1" diffuse="0.6 0.6 0.6"
           specular="0.2 0.2 0.2" castshadow="false"/>
    <light name="fill" directional="true" pos="1.5 -0.5 1.5" dir="-0.6 0.3 -0.7" diffuse="0.25 0.25 0.25"
           specular="0 0 0" castshadow="false"/>
    <camera name="cam" pos="{_fmt(CAMERA_POS)}" xyaxes="{_fmt(xyaxes)}" fovy="{CAMERA_FOVY_DEG}"/>
    <geom name="table" type="plane" pos="{tx0} 0 0" size="{TABLE_HALF[0]} {TABLE_HALF[1]} 0.05"
          material="table0" condim="4" friction="0.8 0.01 0.001"/>
    <geom name="table_body" type="box" pos="{tx0} 0 -0.03" size="{TABLE_HALF[0]} {TABLE_HALF[1]} 0.029"
          material="table_edge" contype="0" conaffinity="0"/>
    <geom name="floor" type="plane" pos="0 0 {FLOOR_Z}" size="4 4 0.1" material="bg0"
          contype="0" conaffinity="0"/>
    <geom name="wall" type="plane" pos="-0.6 0 0.5" zaxis="1 0 0" size="2.5 1.5 0.1" material="bg0"
          contype="0" conaffinity="0"/>
    <body name="base" pos="{_fmt(BASE_POS)}" quat="{_fmt(base_quat)}">
{base_geoms}{_arm_xml(parts)}    </body>
    {_distractors_xml()}
    {task.worldbody}
  </worldbody>
  <equality>
    <joint name="finger_coupling" joint1="finger_right" joint2="finger_left" polycoef="0 1 0 0 0"
           solref="0.005 1"/>
  </equality>
  <actuator>
{"".join(f'    <position name="{n}" joint="{n}" kp="{KP[i]}" kv="{KV[i]}" '
         f'ctrlrange="{kin.CELL_JOINT_LIMITS[i][0]:.6f} {kin.CELL_JOINT_LIMITS[i][1]:.6f}"/>{chr(10)}'
         for i, n in enumerate(kin.JOINT_NAMES))}
    <!-- gripper: ctrl = finger travel in metres; force capped like a 2F-85 at low force setting -->
    <position name="gripper" joint="finger_left" kp="3000" kv="30" ctrlrange="0 {FINGER_TRAVEL}"
              forcerange="-60 60"/>
  </actuator>
  {task.extra}
</mujoco>
"""
    assets = {name: tx.png_bytes(img) for name, img in textures.items()}
    for p in parts or ():
        assets[f"{p.name}.stl"] = p.stl
    return xml, assets


@dataclass(frozen=True)
class ModelIndex:
    """Ids into a compiled scene (everything the env and perturbations touch)."""

    arm_qpos: np.ndarray      # (6,) qpos addresses of the UR joints
    arm_dof: np.ndarray       # (6,) dof addresses
    arm_act: np.ndarray       # (6,) actuator ids
    finger_qpos: np.ndarray   # (2,) left, right
    gripper_act: int
    tcp_site: int
    tool0_site: int
    camera: int
    table_geom: int
    background_geoms: np.ndarray   # floor, wall
    table_materials: np.ndarray    # (N_TABLE_MATERIALS,)
    background_materials: np.ndarray
    user_materials: np.ndarray     # (2,) table, backdrop: the user's photographs
    user_textures: np.ndarray      # (2,) their textures
    distractor_mocap: np.ndarray   # (N_DISTRACTORS,) mocap ids
    pad_geoms: np.ndarray          # (2,)
    gripper_geoms: np.ndarray      # all collision geoms of the gripper


def index_model(m: mujoco.MjModel) -> ModelIndex:
    """Look up the ids of the named elements built by :func:`build_mjcf`."""
    jid = [m.joint(n).id for n in kin.JOINT_NAMES]
    gripper_bodies = {m.body(n).id for n in ("tool0", "finger_left", "finger_right")}
    return ModelIndex(
        arm_qpos=np.array([m.jnt_qposadr[j] for j in jid]),
        arm_dof=np.array([m.jnt_dofadr[j] for j in jid]),
        arm_act=np.array([m.actuator(n).id for n in kin.JOINT_NAMES]),
        finger_qpos=np.array([m.jnt_qposadr[m.joint(f"finger_{s}").id] for s in ("left", "right")]),
        gripper_act=m.actuator("gripper").id,
        tcp_site=m.site("tcp").id,
        tool0_site=m.site("tool0").id,
        camera=m.camera("cam").id,
        table_geom=m.geom("table").id,
        background_geoms=np.array([m.geom("floor").id, m.geom("wall").id]),
        table_materials=np.array([m.material(f"table{i}").id for i in range(N_TABLE_MATERIALS)]),
        background_materials=np.array([m.material(f"bg{i}").id for i in range(N_BACKGROUND_MATERIALS)]),
        user_materials=np.array([m.material("user_table").id, m.material("user_bg").id]),
        user_textures=np.array([m.texture("user_table").id, m.texture("user_bg").id]),
        distractor_mocap=np.array([m.body_mocapid[m.body(f"distractor{i}").id]
                                   for i in range(N_DISTRACTORS)]),
        pad_geoms=np.array([m.geom("pad_left").id, m.geom("pad_right").id]),
        gripper_geoms=np.array([g for g in range(m.ngeom)
                                if m.geom_bodyid[g] in gripper_bodies and m.geom_contype[g]]),
    )


def camera_intrinsics(width: int, height: int) -> np.ndarray:
    """(3, 3) pinhole K of the cell camera at width x height (OpenCV convention, square pixels)."""
    fy = 0.5 * height / np.tan(np.deg2rad(CAMERA_FOVY_DEG) / 2)
    return np.array([[fy, 0.0, (width - 1) / 2], [0.0, fy, (height - 1) / 2], [0.0, 0.0, 1.0]])


def base_t_camera() -> np.ndarray:
    """(4, 4) robot base <- camera optical frame (x right, y down, z forward) of the fixed cell camera."""
    xyaxes = look_at_xyaxes(CAMERA_POS, CAMERA_TARGET)
    right, up = xyaxes[:3], xyaxes[3:]
    world_t_cam = np.eye(4)
    world_t_cam[:3, :3] = np.stack([right, -up, np.cross(right, up) * -1.0], 1)
    world_t_cam[:3, 3] = CAMERA_POS
    return np.linalg.inv(base_transform()) @ world_t_cam


def base_transform() -> np.ndarray:
    """World <- robot base transform (4, 4)."""
    c, s = np.cos(BASE_YAW), np.sin(BASE_YAW)
    t = np.eye(4)
    t[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    t[:3, 3] = BASE_POS
    return t
