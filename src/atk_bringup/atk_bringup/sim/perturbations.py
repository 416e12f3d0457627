"""Visual perturbations of the ATK paper's evaluation, seeded and composable.

* ``RP``: random object poses (handled by the task's reset; changes physics).
* ``RB``: table and background (floor, wall) materials swapped.
* ``RO``: distractor objects placed on the table (visual only: contype 0,
  mocap bodies, so the physical state is unchanged).
* ``LIGHT``: key-light intensity, colour and direction, and ambient level.

Every perturbation draws from its own random stream
``default_rng([seed, k])`` (k = its index in :data:`PERTURBATIONS`), so
combining ``RB`` with ``RO`` gives the same backgrounds as ``RB`` alone, and
``RP``'s object poses do not depend on which visual perturbations are on.
Nothing here recompiles the model: it edits ``geom_matid``, ``mocap_pos``
and light fields, which MuJoCo reads at every step/render.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import mujoco
import numpy as np

from atk_bringup.sim import model as sim_model
from atk_bringup.sim.model import ModelIndex

PERTURBATIONS: tuple[str, ...] = ("RP", "RB", "RO", "LIGHT")

# How many distractors RO puts on the table (inclusive range).
RO_COUNT = (2, 4)


def validate(names) -> tuple[str, ...]:
    """Check perturbation names; returns them de-duplicated in canonical order.

    Raises ValueError naming the bad entry and listing the choices.
    """
    if isinstance(names, str):
        names = (names,) if names else ()
    out = []
    for n in names:
        if n not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {n!r}; choose any of {list(PERTURBATIONS)}")
        out.append(n)
    return tuple(p for p in PERTURBATIONS if p in out)


def stream(seed: int, name: str) -> np.random.Generator:
    """The random stream of one perturbation for one episode seed."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, PERTURBATIONS.index(name)])


@dataclass
class VisualSnapshot:
    """Model fields the visual perturbations edit, as compiled (restored at every reset)."""

    geom_matid: np.ndarray
    light_dir: np.ndarray
    light_pos: np.ndarray
    light_diffuse: np.ndarray
    light_specular: np.ndarray
    head_ambient: np.ndarray
    head_diffuse: np.ndarray

    @classmethod
    def take(cls, m: mujoco.MjModel) -> "VisualSnapshot":
        return cls(m.geom_matid.copy(), m.light_dir.copy(), m.light_pos.copy(),
                   m.light_diffuse.copy(), m.light_specular.copy(),
                   np.array(m.vis.headlight.ambient), np.array(m.vis.headlight.diffuse))

    def restore(self, m: mujoco.MjModel) -> None:
        m.geom_matid[:] = self.geom_matid
        m.light_dir[:] = self.light_dir
        m.light_pos[:] = self.light_pos
        m.light_diffuse[:] = self.light_diffuse
        m.light_specular[:] = self.light_specular
        m.vis.headlight.ambient[:] = self.head_ambient
        m.vis.headlight.diffuse[:] = self.head_diffuse


def park_distractors(m: mujoco.MjModel, d: mujoco.MjData, idx: ModelIndex) -> None:
    """Move every distractor under the floor, out of view."""
    for i, mid in enumerate(idx.distractor_mocap):
        d.mocap_pos[mid] = (0.0, 0.2 * i, -5.0)
        d.mocap_quat[mid] = (1.0, 0.0, 0.0, 0.0)


def apply_rb(m: mujoco.MjModel, idx: ModelIndex, rng: np.random.Generator,
             photos: Sequence[np.ndarray] = (), upload: Callable[[int], None] | None = None) -> tuple[int, ...]:
    """Swap the table material and the background (floor + wall) material.

    With ``photos`` ((S, S, 3) uint8 RGB, S = USER_TEXTURE_PX; load_photos),
    the table and the backdrop show two of them (drawn by ``rng``; the same one
    may cover both) instead of the procedural textures: their pixels are
    written into the model's user textures and ``upload(texture id)`` sends
    each to the renderer (no recompiling). Returns the photos' indices ((),
    procedural textures)."""
    if len(photos):
        k = (int(rng.integers(len(photos))), int(rng.integers(len(photos))))
        for tex, i in zip(idx.user_textures, k):
            adr, n = m.tex_adr[tex], m.tex_width[tex] * m.tex_height[tex] * m.tex_nchannel[tex]
            m.tex_data[adr:adr + n] = np.asarray(photos[i], np.uint8).reshape(-1)
            if upload is not None:
                upload(int(tex))
        m.geom_matid[idx.table_geom] = idx.user_materials[0]
        m.geom_matid[idx.background_geoms] = idx.user_materials[1]
        return k
    # never the compiled default (index 0), so RB always changes the image
    m.geom_matid[idx.table_geom] = idx.table_materials[rng.integers(1, len(idx.table_materials))]
    bg = idx.background_materials[rng.integers(1, len(idx.background_materials))]
    m.geom_matid[idx.background_geoms] = bg
    return ()


PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def photo_files(folder) -> list:
    """The photographs in ``folder`` (paths sorted by name; PHOTO_SUFFIXES),
    without reading them. ValueError naming the folder when it is missing or
    holds no image."""
    from pathlib import Path

    d = Path(folder).expanduser()
    if not d.is_dir():
        raise ValueError(f"backgrounds: {d} is not a folder of photographs")
    files = sorted(f for f in d.iterdir() if f.suffix.lower() in PHOTO_SUFFIXES and f.is_file())
    if not files:
        raise ValueError(f"backgrounds: no photographs ({', '.join(PHOTO_SUFFIXES)}) in {d}")
    return files


def load_photos(folder, size: int) -> list[np.ndarray]:
    """Every photograph in ``folder`` (:func:`photo_files`), centre-cropped
    square and resized to ``size`` x ``size`` RGB uint8, flipped vertically
    for MuJoCo's texture rows. ValueError naming the folder when it is
    missing, holds no image, or an image cannot be read."""
    import cv2

    out = []
    for f in photo_files(folder):
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"backgrounds: cannot read {f} as an image")
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out.append(np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[::-1]))
    return out


def apply_ro(m: mujoco.MjModel, d: mujoco.MjData, idx: ModelIndex, rng: np.random.Generator,
             keep_out: list[tuple[np.ndarray, float]]) -> int:
    """Put RO_COUNT distractors on the table, clear of the task objects. Returns how many."""
    n = int(rng.integers(RO_COUNT[0], RO_COUNT[1] + 1))
    chosen = rng.choice(len(idx.distractor_mocap), size=n, replace=False)
    placed: list[tuple[np.ndarray, float]] = list(keep_out)
    count = 0
    for i in chosen:
        for _ in range(200):
            # a wider band than the task region: distractors also sit at its edges
            xy = np.array([rng.uniform(0.30, 0.72), rng.uniform(-0.32, 0.32)])
            if all(np.linalg.norm(xy - c) > r + 0.05 for c, r in placed):
                mid = idx.distractor_mocap[i]
                d.mocap_pos[mid] = (*xy, sim_model.distractor_half_height(m, int(i)))
                yaw = rng.uniform(-np.pi, np.pi)
                d.mocap_quat[mid] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
                placed.append((xy, 0.05))
                count += 1
                break
    return count


def apply_light(m: mujoco.MjModel, rng: np.random.Generator, snap: VisualSnapshot) -> None:
    """Change the key light's intensity, colour and direction, and the ambient level."""
    key = 0  # the first light is the key light (model.build_mjcf)
    intensity = rng.uniform(0.2, 1.6)
    tint = rng.uniform(0.55, 1.0, size=3)
    tint /= tint.max()
    m.light_diffuse[key] = snap.light_diffuse[key] * intensity * tint / max(snap.light_diffuse[key].max(), 1e-6) * 0.6
    azimuth = rng.uniform(-np.pi, np.pi)
    elevation = np.deg2rad(rng.uniform(30.0, 85.0))
    m.light_dir[key] = (np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                        -np.sin(elevation))
    amb = rng.uniform(0.3, 1.4)
    m.vis.headlight.ambient[:] = np.clip(snap.head_ambient * amb * tint, 0.0, 1.0)
    m.vis.headlight.diffuse[:] = np.clip(snap.head_diffuse * rng.uniform(0.5, 1.3), 0.0, 1.0)
