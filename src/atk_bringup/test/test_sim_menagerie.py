"""Optional Menagerie meshes: re-posed on the DH bodies, refused when the kinematics disagree.

No Menagerie files exist here (nothing is downloaded), so the test writes a
stand-in ``ur5e.xml`` with Menagerie's body and joint names whose link frames
are deliberately NOT the DH frames (each is the DH frame times an arbitrary
fixed transform, the joint axis given in that frame), with irregular STL
meshes on every link.
"""
from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np
import pytest

from atk_perception import kinematics as kin
from atk_bringup.sim import menagerie
from atk_bringup.sim import model as sim_model
from atk_bringup.sim.env import SimConfig, SimEnv

NAMES = ["base", "shoulder_link", "upper_arm_link", "forearm_link", "wrist_1_link", "wrist_2_link", "wrist_3_link"]


def _rot(axis, ang):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * k @ k


def _quat(r):
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, r.ravel())
    return q


def _f(v):
    return " ".join(f"{x:.9g}" for x in v)


def write_stand_in(folder: Path, flip_elbow: bool = False) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    frames = kin.fk_all(np.zeros(6))
    fake = [np.eye(4)]
    for i in range(6):
        f = np.eye(4)
        f[:3, :3] = _rot(rng.normal(size=3), rng.uniform(0.3, 2.5))
        # wrist_3's origin stays on the flange axis (as in Menagerie)
        f[:3, 3] = [0, 0, 0.03] if i == 5 else rng.uniform(-0.05, 0.05, 3)
        fake.append(frames[i] @ f)
    assets, body_xml = [], ""
    for k, name in enumerate(NAMES):
        vert = rng.uniform(-0.04, 0.04, (5, 3)) + [0.0, 0.0, 0.02 * k]
        face = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3], [1, 2, 4], [2, 3, 4]])
        (folder / f"{name}.stl").write_bytes(menagerie.stl_bytes(vert, face))
        assets.append(f'<mesh name="{name}" file="{name}.stl"/>')
    close = ""
    for k, name in enumerate(NAMES):
        rel = fake[k] if k == 0 else np.linalg.inv(fake[k - 1]) @ fake[k]
        if k == 0:
            # Menagerie-like: the base body sits in its world turned by pi
            head = f'<body name="base" quat="0 0 0 -1">'
            joint = ""
        else:
            inv = np.linalg.inv(fake[k][:3, :3])
            axis = inv @ frames[k - 1][:3, 2] * (-1 if (flip_elbow and k == 3) else 1)
            anchor = np.linalg.inv(fake[k]) @ np.append(frames[k - 1][:3, 3], 1.0)
            head = f'<body name="{name}" pos="{_f(rel[:3, 3])}" quat="{_f(_quat(rel[:3, :3]))}">'
            joint = f'<joint name="{kin.JOINT_NAMES[k - 1]}" axis="{_f(axis)}" pos="{_f(anchor[:3])}"/>'
        body_xml += (f'{head}{joint}<inertial pos="0 0 0" mass="1" diaginertia="0.01 0.01 0.01"/>'
                     f'<geom type="mesh" mesh="{name}" contype="0" conaffinity="0" rgba="0.2 0.3 {0.1 * k} 1"/>'
                     f'<geom type="mesh" mesh="{name}" group="3"/>')
        close += "</body>"
    (folder / "ur5e.xml").write_text(
        f'<mujoco model="ur5e stand-in"><asset>{"".join(assets)}</asset>'
        f'<worldbody>{body_xml}{close}</worldbody></mujoco>')


def world_vertices(m, d, g):
    mesh = m.geom_dataid[g]
    v = m.mesh_vert[m.mesh_vertadr[mesh]:m.mesh_vertadr[mesh] + m.mesh_vertnum[mesh]]
    w = v @ d.geom_xmat[g].reshape(3, 3).T + d.geom_xpos[g]
    return w[np.lexsort(w.T)]


def test_menagerie_meshes_follow_the_dh_arm(tmp_path):
    folder = tmp_path / "universal_robots_ur5e"
    write_stand_in(folder)
    env = SimEnv(SimConfig(render=False, menagerie_path=str(tmp_path)))
    assert "Menagerie UR5e meshes" in env.menagerie_message, env.menagerie_message
    env.reset(task="sushi", seed=0)
    m, d, idx = env.model, env.data, env.state.index
    ours = [g for g in range(m.ngeom) if m.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH]
    assert len(ours) == 7   # visual copies only, one per link
    mm = mujoco.MjModel.from_xml_path(str(folder / "ur5e.xml"))
    md = mujoco.MjData(mm)
    t_wb = sim_model.base_transform()
    rng = np.random.default_rng(5)
    for _ in range(4):
        q = rng.uniform(-np.pi, np.pi, 6)
        d.qpos[idx.arm_qpos] = q
        mujoco.mj_kinematics(m, d)
        for i, n in enumerate(kin.JOINT_NAMES):
            md.qpos[mm.jnt_qposadr[mm.joint(n).id]] = q[i]
        mujoco.mj_kinematics(mm, md)
        base = mm.body("base").id
        t_fb = np.eye(4)
        t_fb[:3, :3], t_fb[:3, 3] = md.xmat[base].reshape(3, 3), md.xpos[base]
        to_ours = t_wb @ np.linalg.inv(t_fb)
        visual = [g for g in range(mm.ngeom) if not mm.geom_contype[g]]
        for g_ours, g_fake in zip(ours, visual):
            w_fake = world_vertices(mm, md, g_fake) @ to_ours[:3, :3].T + to_ours[:3, 3]
            np.testing.assert_allclose(world_vertices(m, d, g_ours), w_fake[np.lexsort(w_fake.T)], atol=1e-6)
    # the kinematics are untouched
    np.testing.assert_allclose(d.site_xpos[idx.tcp_site], (t_wb @ kin.fk(q, kin.ROBOTIQ_2F85_TCP))[:3, 3],
                               atol=1e-9)


def test_menagerie_with_other_kinematics_is_refused(tmp_path):
    write_stand_in(tmp_path / "universal_robots_ur5e", flip_elbow=True)
    with pytest.raises(menagerie.MenagerieError, match="does not follow"):
        menagerie.load_parts(tmp_path / "universal_robots_ur5e")
    env = SimEnv(SimConfig(render=False, menagerie_path=str(tmp_path)))
    assert "does not follow" in env.menagerie_message
    env.reset(task="sushi", seed=0)   # primitives: still works
    assert not any(env.model.geom_type == mujoco.mjtGeom.mjGEOM_MESH)


def test_missing_menagerie_is_reported(tmp_path):
    env = SimEnv(SimConfig(render=False, menagerie_path=str(tmp_path / "nowhere")))
    assert "no Menagerie" in env.menagerie_message
