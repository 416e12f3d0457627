"""The object search's warps: the hull shortcut gives exactly the warp that all
of the region's pixels give, and its memo never serves another mask's hull."""
from __future__ import annotations

import gc

import cv2
import numpy as np

from atk_perception import object_search as osr


def _extent_from_all_pixels(mask: np.ndarray, centre: np.ndarray, lin: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    mapped = (np.stack([xs, ys], 1).astype(np.float64) - centre) @ lin.T
    return np.ceil(np.abs(mapped).max(axis=0)).astype(int) + 1


def test_warp_extent_from_the_hull_equals_the_extent_from_every_pixel():
    rng = np.random.default_rng(0)
    tpl = rng.integers(0, 255, (120, 160), np.uint8)
    for _ in range(40):
        pts = rng.uniform([10, 10], [150, 110], (int(rng.integers(3, 9)), 2))
        mask = osr.region_mask(pts, tpl.shape, 2.0)
        ys, xs = np.nonzero(mask)
        centre = np.array([xs.mean(), ys.mean()])
        lin = osr.pose_matrix(rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1.3), rng.uniform(0.6, 1.0),
                              rng.uniform(0.8, 1.2))
        w = osr._Warped(tpl, mask, centre, lin)
        np.testing.assert_array_equal(w.half, _extent_from_all_pixels(mask, centre, lin))
        assert w.image.shape == (int(2 * w.half[1] + 1), int(2 * w.half[0] + 1))


def test_hull_memo_is_per_mask_object():
    a = np.zeros((50, 50), np.uint8)
    cv2.circle(a, (25, 25), 5, 255, -1)
    hull_a = osr._hull_pixels(a).copy()
    assert np.abs(hull_a - 25).max() <= 5
    del a
    gc.collect()
    # a new mask (possibly at the freed array's address) gets its own hull
    b = np.zeros((50, 50), np.uint8)
    cv2.circle(b, (10, 40), 3, 255, -1)
    hull_b = osr._hull_pixels(b)
    assert np.abs(hull_b - [10, 40]).max() <= 3
    assert osr._hull_pixels(b) is hull_b  # memoised while b lives
