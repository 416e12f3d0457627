"""Optional looks: MuJoCo Menagerie's UR5e meshes on our DH-built arm.

Only a local copy is used (``SimConfig.menagerie_path``, e.g. a clone of
mujoco_menagerie or what the ``mujoco-menagerie`` package fetched where the
internet is reachable); nothing is downloaded here.

The arm's bodies stay exactly the DH bodies of :mod:`sim.model` (so the
simulator's kinematics remain ``kinematics.fk``); only the visual geoms are
replaced. Menagerie's link frames follow ur_description, not DH, so each of
its visual meshes is re-expressed in the DH body of the same joint, using
both models' poses at q = 0. That is valid only if the two models move the
same way, which is checked first: Menagerie's wrist_3 origin must follow
``kinematics.fk``'s tool0 within `tolerance` at several random
configurations; otherwise :class:`MenagerieError` explains the mismatch and
the caller keeps the primitives.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from atk_perception import kinematics as kin

# Menagerie body names -> our DH bodies (the body each joint moves).
BODY_MAP = {"base": "base", "shoulder_link": "link1", "upper_arm_link": "link2", "forearm_link": "link3",
            "wrist_1_link": "link4", "wrist_2_link": "link5", "wrist_3_link": "link6"}


class MenagerieError(ValueError):
    """The Menagerie model cannot be used (missing, or its kinematics disagree with ours)."""


@dataclass(frozen=True)
class MeshPart:
    """One visual mesh: our body name, mesh name, binary STL, pose in that body, colour."""

    body: str
    name: str
    stl: bytes
    pos: np.ndarray    # (3,)
    quat: np.ndarray   # (4,) wxyz
    rgba: np.ndarray   # (4,)


def find(path: str | Path | None) -> Path | None:
    """The folder holding Menagerie's ur5e.xml under path, or None (never downloads)."""
    if not path:
        return None
    p = Path(path).expanduser()
    for cand in (p, p / "universal_robots_ur5e"):
        if (cand / "ur5e.xml").is_file():
            return cand
    return None


def stl_bytes(vert: np.ndarray, face: np.ndarray) -> bytes:
    """Binary STL of a triangle mesh: vert (V, 3) float, face (F, 3) int."""
    tri = vert[face].astype(np.float32)                       # (F, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    rec = np.zeros(len(face), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")])
    rec["n"], rec["v"] = n, tri
    return b"\0" * 80 + np.uint32(len(face)).tobytes() + rec.tobytes()


def _pose(xpos: np.ndarray, xmat: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = xmat.reshape(3, 3), xpos
    return t


def _set_q(mm: mujoco.MjModel, md: mujoco.MjData, q: np.ndarray) -> None:
    for name, v in zip(kin.JOINT_NAMES, q):
        md.qpos[mm.jnt_qposadr[mm.joint(name).id]] = v
    mujoco.mj_kinematics(mm, md)


def load_parts(folder: Path, tolerance: float = 0.005, checks: int = 8) -> list[MeshPart]:
    """Visual meshes of Menagerie's UR5e, posed in our DH bodies.

    Raises MenagerieError when the model is unusable (see module docstring).
    """
    try:
        mm = mujoco.MjModel.from_xml_path(str(Path(folder) / "ur5e.xml"))
    except Exception as exc:  # noqa: BLE001 - any load failure means "use primitives"
        raise MenagerieError(f"could not load {folder}/ur5e.xml: {exc}") from None
    md = mujoco.MjData(mm)
    try:
        base = mm.body("base").id
        bodies = {mm.body(n).id: ours for n, ours in BODY_MAP.items()}
        for n in kin.JOINT_NAMES:
            mm.joint(n)
    except KeyError as exc:
        raise MenagerieError(f"{folder}/ur5e.xml lacks {exc}; expected Menagerie's UR5e names") from None

    # 1. the two models must move alike: Menagerie's wrist_3 origin == our tool0
    rng = np.random.default_rng(0)
    wrist3 = mm.body("wrist_3_link").id
    worst = 0.0
    for k in range(checks):
        q = np.zeros(6) if k == 0 else rng.uniform(-np.pi, np.pi, 6)
        _set_q(mm, md, q)
        t_base = _pose(md.xpos[base], md.xmat[base])
        p_m = (np.linalg.inv(t_base) @ np.append(md.xpos[wrist3], 1.0))[:3]
        p_d = kin.fk(q)[:3, 3]
        # Menagerie's wrist_3 origin lies on the flange axis; compare off-axis distance and reach
        axis = kin.fk(q)[:3, 2]
        off = p_m - p_d
        worst = max(worst, float(np.linalg.norm(off - axis * np.dot(off, axis))))
    if worst > tolerance:
        raise MenagerieError(f"Menagerie UR5e does not follow the DH kinematics (wrist off by {worst * 1e3:.1f} mm "
                             f"> {tolerance * 1e3:.1f} mm); keeping primitive shapes")

    # 2. re-express every visual mesh geom in the DH body of the same joint, at q = 0
    _set_q(mm, md, np.zeros(6))
    t_base_inv = np.linalg.inv(_pose(md.xpos[base], md.xmat[base]))
    frames = kin.fk_all(np.zeros(6))
    ours_at_zero = {"base": np.eye(4), **{f"link{i + 1}": frames[i] for i in range(6)}}
    parts: list[MeshPart] = []
    for g in range(mm.ngeom):
        if mm.geom_type[g] != mujoco.mjtGeom.mjGEOM_MESH or mm.geom_bodyid[g] not in bodies:
            continue
        if mm.geom_contype[g] or mm.geom_conaffinity[g]:
            continue   # collision copies: we only want looks
        ours = bodies[mm.geom_bodyid[g]]
        t = np.linalg.inv(ours_at_zero[ours]) @ t_base_inv @ _pose(md.geom_xpos[g], md.geom_xmat[g])
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, t[:3, :3].ravel())
        mesh = mm.geom_dataid[g]
        va, vn = mm.mesh_vertadr[mesh], mm.mesh_vertnum[mesh]
        fa, fn = mm.mesh_faceadr[mesh], mm.mesh_facenum[mesh]
        mat = mm.geom_matid[g]
        rgba = mm.mat_rgba[mat] if mat >= 0 else mm.geom_rgba[g]
        parts.append(MeshPart(ours, f"menagerie_{g}", stl_bytes(mm.mesh_vert[va:va + vn], mm.mesh_face[fa:fa + fn]),
                              t[:3, 3].copy(), quat, np.array(rgba, dtype=float)))
    if not parts:
        raise MenagerieError(f"no visual mesh geoms found in {folder}/ur5e.xml")
    return parts
