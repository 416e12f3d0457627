"""Hand-eye solver and board detection without a simulator (synthetic views, a real ArUco photo)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_perception.hand_eye import (BoardConfig, BoardView, HandEyeError, detect_board, detect_markers,
                                     pose_error, solve_eye_to_hand)

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"
K = np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]])


def _pose(rvec, t) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64))[0]
    m[:3, 3] = t
    return m


def _synthetic(n: int, seed: int, pixel_noise: float = 0.0):
    rng = np.random.default_rng(seed)
    board = BoardConfig()
    obj = board.board().getChessboardCorners().astype(np.float64)
    x = _pose([2.2, 0.1, -0.3], [0.9, 0.05, 0.45])         # base_T_camera
    y = _pose([0.05, -0.1, 0.2], [0.01, -0.02, 0.21])      # gripper_T_board
    poses, views = [], []
    while len(views) < n:
        a = _pose(rng.normal(scale=0.5, size=3), rng.uniform([-0.6, -0.3, 0.1], [-0.3, 0.3, 0.5]))
        b = np.linalg.inv(x) @ a @ y                         # camera_T_board
        if b[2, 3] < 0.2:
            continue
        img, _ = cv2.projectPoints(obj, cv2.Rodrigues(b[:3, :3])[0], b[:3, 3], K, np.zeros(5))
        img = img.reshape(-1, 2) + rng.normal(scale=pixel_noise, size=(len(obj), 2))
        ok, rv, tv = cv2.solvePnP(obj, img, K, np.zeros(5))
        poses.append(a)
        views.append(BoardView(_pose(rv.ravel(), tv.ravel()), obj, img, 0.0))
    return np.array(poses), views, x, y


def test_solver_recovers_both_unknowns_exactly_from_exact_views():
    poses, views, x, y = _synthetic(8, seed=0)
    r = solve_eye_to_hand(poses, views, K, refine=False)
    dt, dr = pose_error(r.base_t_camera, x)
    assert dt < 1e-6 and dr < 1e-4
    assert pose_error(r.gripper_t_board, y)[0] < 1e-6
    assert r.residual_mm.max() < 0.01


def test_refinement_copes_with_pixel_noise():
    poses, views, x, _ = _synthetic(15, seed=1, pixel_noise=0.3)
    dt, dr = pose_error(solve_eye_to_hand(poses, views, K).base_t_camera, x)
    assert dt < 0.002 and dr < 0.2


def test_too_few_views_are_refused():
    poses, views, _, _ = _synthetic(2, seed=2)
    with pytest.raises(HandEyeError, match="at least 3"):
        solve_eye_to_hand(poses, views, K)


def test_markers_are_found_in_a_real_photograph():
    img = cv2.cvtColor(cv2.imread(str(DATA / "aruco_markers_6x6_250.jpg")), cv2.COLOR_BGR2RGB)
    ids, corners = detect_markers(img, "DICT_6X6_250")
    assert sorted(ids.tolist()) == [23, 40, 62, 98, 124, 203]
    sides = np.linalg.norm(np.roll(corners, -1, axis=1) - corners, axis=2)   # (M, 4)
    assert sides.min() > 20 and sides.max() / sides.min() < 3   # printed squares seen in perspective
    # the wrong dictionary does not find these markers (a false 4x4 match may appear elsewhere)
    assert not set(detect_markers(img, "DICT_4X4_50")[0].tolist()) & {23, 40, 62, 98, 124, 203}


def test_board_pose_from_a_rendered_view_of_the_printed_board():
    board = BoardConfig()
    img = cv2.copyMakeBorder(board.image(60), 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=255)
    # the flat print seen head-on by a camera whose K maps 60 px to one 24 mm square at 1 m
    f = 60 / board.square_m
    k = np.array([[f, 0, 40 - 0.5], [0, f, 40 - 0.5], [0, 0, 1.0]])
    v = detect_board(img, board, k)
    assert v is not None and len(v.object_points) == (board.squares_x - 1) * (board.squares_y - 1)
    assert v.rms_px < 0.5
    np.testing.assert_allclose(v.camera_t_board[:3, 3], [0, 0, 1.0], atol=0.01)
