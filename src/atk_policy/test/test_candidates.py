"""Candidate sampling on a real photograph."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_policy.candidates import CandidateError, sample_candidates
from atk_policy.config import CandidateConfig

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(DATA / "rubberwhale1.png"))[:, :, ::-1])


@pytest.mark.parametrize("method", ["grid", "random", "texture"])
def test_sampler_returns_c_distinct_points_inside_border(image, method):
    cfg = CandidateConfig(num_candidates=64, method=method, border_px=10)
    c = sample_candidates(image, cfg)
    h, w = image.shape[:2]
    assert c.points.shape == (64, 2) and c.points.dtype == np.float32
    assert (c.points >= 10).all() and (c.points[:, 0] <= w - 11).all() and (c.points[:, 1] <= h - 11).all()
    assert len(np.unique(np.round(c.points), axis=0)) == 64
    assert len(c.source) == 64


def test_texture_points_lie_on_texture(image):
    """Texture candidates have a much higher local gradient energy than grid points."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    energy = cv2.boxFilter(np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(gray, cv2.CV_32F, 0, 1)),
                           -1, (7, 7))

    def mean_energy(pts):
        return float(energy[pts[:, 1].round().astype(int), pts[:, 0].round().astype(int)].mean())

    tex = sample_candidates(image, CandidateConfig(method="texture")).points
    grid = sample_candidates(image, CandidateConfig(method="grid")).points
    assert mean_energy(tex) > 1.5 * mean_energy(grid)


def test_random_is_seeded_and_spaced(image):
    a = sample_candidates(image, CandidateConfig(method="random", seed=1, min_distance_px=12)).points
    b = sample_candidates(image, CandidateConfig(method="random", seed=1, min_distance_px=12)).points
    c = sample_candidates(image, CandidateConfig(method="random", seed=2, min_distance_px=12)).points
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    d = np.hypot(*(a[:, None] - a[None]).transpose(2, 0, 1)) + np.eye(len(a)) * 1e9
    assert d.min() >= 12


@pytest.mark.parametrize("method", ["grid", "random", "texture"])
def test_roi_mask_is_respected(image, method):
    roi = np.zeros(image.shape[:2], bool)
    roi[100:180, 200:320] = True
    pts = sample_candidates(image, CandidateConfig(method=method, num_candidates=32), roi).points
    assert (pts[:, 0] >= 200).all() and (pts[:, 0] < 320).all()
    assert (pts[:, 1] >= 100).all() and (pts[:, 1] < 180).all()


def test_too_small_roi_is_refused(image):
    roi = np.zeros(image.shape[:2], bool)
    roi[50:55, 50:55] = True
    with pytest.raises(CandidateError, match="only 25 pixels"):
        sample_candidates(image, CandidateConfig(num_candidates=64), roi)
    with pytest.raises(CandidateError, match="ROI mask"):
        sample_candidates(image, CandidateConfig(), np.ones((10, 10), bool))
