"""RB with the user's photographs (SimConfig.backgrounds / atk-demo --backgrounds):
the table and the backdrop show them, chosen per scene, without recompiling."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_bringup.sim.env import SimConfig, SimEnv

IMAGES = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"   # real photographs (README there)


@pytest.fixture()
def colour_folder(tmp_path) -> Path:
    """Two 'photographs': plain red and plain blue (BGR files)."""
    cv2.imwrite(str(tmp_path / "a_red.png"), np.full((300, 400, 3), (0, 0, 255), np.uint8))
    cv2.imwrite(str(tmp_path / "b_blue.jpg"), np.full((200, 200, 3), (255, 0, 0), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image: skipped")
    return tmp_path


def test_rb_puts_the_photographs_on_table_and_backdrop(colour_folder):
    env = SimEnv(SimConfig(width=160, height=120, render_depth=False, backgrounds=str(colour_folder)))
    plain = SimEnv(SimConfig(width=160, height=120, render_depth=False))
    try:
        assert len(env.photos) == 2
        seen = set()
        for seed in range(12):
            obs = env.reset(task="sushi", seed=seed, perturbations=("RP", "RB"))
            table_photo, backdrop_photo = env.background_photos
            seen.add((table_photo, backdrop_photo))
            # the bottom rows of the image are table only (the objects lie further up)
            r, g, b = obs.rgb[-12:, :, :].reshape(-1, 3).mean(axis=0)
            if table_photo == 0:
                assert r > 2 * (g + b) + 20, (seed, r, g, b)    # red photo
            else:
                assert b > 2 * (r + g) + 20, (seed, r, g, b)    # blue photo
            # without RB the compiled textures are back: nothing red or blue dominates
            base = env.reset(task="sushi", seed=seed, perturbations=("RP",)).rgb[-12:].reshape(-1, 3).mean(0)
            ref = plain.reset(task="sushi", seed=seed, perturbations=("RP",)).rgb[-12:].reshape(-1, 3).mean(0)
            np.testing.assert_allclose(base, ref, atol=1.0)
        assert len({t for t, _ in seen}) == 2    # both photos were drawn for the table over 12 scenes
    finally:
        env.close()
        plain.close()


def test_same_seed_same_photos_and_real_photographs_load(tmp_path):
    for name in ("rubberwhale1.png", "basketball1.png", "aruco_markers_6x6_250.jpg"):
        shutil.copy(IMAGES / name, tmp_path / name)
    a = SimEnv(SimConfig(width=160, height=120, render_depth=False, backgrounds=str(tmp_path)))
    b = SimEnv(SimConfig(width=160, height=120, render_depth=False, backgrounds=str(tmp_path)))
    try:
        fa = a.reset(task="sushi", seed=7, perturbations=("RP", "RB")).rgb
        fb = b.reset(task="sushi", seed=7, perturbations=("RP", "RB")).rgb
        assert a.background_photos == b.background_photos
        np.testing.assert_array_equal(fa, fb)
    finally:
        a.close()
        b.close()


def test_bad_folders_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        SimEnv(SimConfig(width=160, height=120, backgrounds=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="no photographs"):
        SimEnv(SimConfig(width=160, height=120, backgrounds=str(tmp_path)))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read .*broken.png"):
        SimEnv(SimConfig(width=160, height=120, backgrounds=str(tmp_path)))
