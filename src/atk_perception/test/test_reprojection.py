"""Viewpoint reprojection on synthetic renders with known poses, and ArUco on a real photo."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from atk_perception.reprojection import (CameraIntrinsics, ReprojectionError, detect_markers,
                                         estimate_marker_pose, invert_transform, lift_points,
                                         project_points, reproject_to_training_view)
from atk_fixtures.images import procedural_texture

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "images"
MARKER_ID = 23
MARKER_M = 0.10          # side of the black square
TEX_PX, TEX_M = 1000, 0.5  # the table texture: 1000 px for 0.5 m
W, H = 640, 480


def look_at(position: np.ndarray, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """T_cam_marker of a camera at ``position`` (marker frame, metres) looking at ``target``."""
    z = np.asarray(target, float) - position
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.vstack([x, y, z])  # rows: camera axes in the marker frame
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = -r @ position
    return t


def table_texture() -> np.ndarray:
    tex = procedural_texture(TEX_PX, TEX_PX, seed=11)
    side = int(MARKER_M / TEX_M * TEX_PX)
    dic = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_6X6_250)
    marker = cv2.aruco.generateImageMarker(dic, MARKER_ID, side, borderBits=1)
    c, q = TEX_PX // 2, side // 2
    tex[c - q - 30:c + q + 30, c - q - 30:c + q + 30] = 255  # quiet zone
    tex[c - q:c + q, c - q:c + q] = marker[..., None]
    return tex


def render(tex: np.ndarray, k: CameraIntrinsics, t_cam_marker: np.ndarray):
    """Image (H, W, 3) uint8 and depth (H, W) float metres (0: no table) of the table plane."""
    s = TEX_M / TEX_PX
    c = (TEX_PX - 1) / 2.0
    # texture pixel (col, row) -> marker frame (X, Y) on z = 0 (y up on the marker)
    a = np.array([[s, 0, -c * s], [0, -s, c * s], [0, 0, 1]])
    r, t = t_cam_marker[:3, :3], t_cam_marker[:3, 3]
    hom = k.matrix @ np.column_stack([r[:, 0], r[:, 1], t]) @ a
    img = cv2.warpPerspective(tex, hom, (k.width, k.height), flags=cv2.INTER_LINEAR)
    cover = cv2.warpPerspective(np.ones(tex.shape[:2], np.uint8), hom, (k.width, k.height),
                                flags=cv2.INTER_NEAREST)
    u, v = np.meshgrid(np.arange(k.width), np.arange(k.height))
    rays = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u, float)], -1)
    n = r[:, 2]
    depth = (n @ t) / (rays @ n)
    depth[cover == 0] = 0.0
    return img, depth


@pytest.fixture(scope="module")
def scene():
    k_train = CameraIntrinsics(600.0, 600.0, 319.5, 239.5, W, H)
    k_moved = CameraIntrinsics(560.0, 565.0, 322.0, 236.0, W, H)
    t_train = look_at(np.array([0.02, -0.30, 0.40]))
    t_moved = look_at(np.array([0.22, -0.22, 0.36]), target=(0.03, 0.02, 0.0))
    tex = table_texture()
    img_t, depth_t = render(tex, k_train, t_train)
    img_m, depth_m = render(tex, k_moved, t_moved)
    return dict(k_train=k_train, k_moved=k_moved, t_train=t_train, t_moved=t_moved,
                img_t=img_t, img_m=img_m, depth_t=depth_t, depth_m=depth_m)


def _truth(scene, pts_moved):
    """Where the table points seen at ``pts_moved`` project in the training camera."""
    k, d = scene["k_moved"], scene["depth_m"]
    z = d[np.round(pts_moved[:, 1]).astype(int), np.round(pts_moved[:, 0]).astype(int)]
    # exact plane depth at the sub-pixel point (the render's depth is per pixel centre)
    t = scene["t_moved"]
    n, p0 = t[:3, 2], t[:3, 3]
    rays = np.column_stack([(pts_moved[:, 0] - k.cx) / k.fx, (pts_moved[:, 1] - k.cy) / k.fy,
                            np.ones(len(pts_moved))])
    z = (n @ p0) / (rays @ n)
    xyz = rays * z[:, None]
    rel = scene["t_train"] @ invert_transform(scene["t_moved"])
    px, _ = project_points(xyz @ rel[:3, :3].T + rel[:3, 3], scene["k_train"])
    return px


def _table_points(scene, n=20, seed=0):
    rng = np.random.default_rng(seed)
    valid = np.argwhere(scene["depth_m"][40:-40, 40:-40] > 0) + 40
    pick = valid[rng.choice(len(valid), n, replace=False)]
    return pick[:, ::-1].astype(np.float64) + rng.uniform(-0.4, 0.4, (n, 2))


def test_marker_pose_from_renders_matches_the_truth(scene):
    for img, k, truth in ((scene["img_t"], scene["k_train"], scene["t_train"]),
                          (scene["img_m"], scene["k_moved"], scene["t_moved"])):
        pose = estimate_marker_pose(img, k, MARKER_M, MARKER_ID)
        assert pose.rms_px < 0.5
        dr = cv2.Rodrigues(pose.T_cam_marker[:3, :3] @ truth[:3, :3].T)[0]
        assert np.degrees(np.linalg.norm(dr)) < 1.0
        assert np.linalg.norm(pose.T_cam_marker[:3, 3] - truth[:3, 3]) < 0.005


def test_reprojection_with_true_poses_is_exact(scene):
    pts = _table_points(scene)
    for depth in (scene["depth_m"].astype(np.float32),
                  np.round(scene["depth_m"] * 1000).astype(np.uint16)):
        out, valid = reproject_to_training_view(pts, depth, scene["k_moved"], scene["t_moved"],
                                                scene["k_train"], scene["t_train"], radius=0)
        assert valid.all()
        err = np.linalg.norm(out - _truth(scene, pts), axis=1)
        # Only depth sampling at the nearest pixel (and mm rounding) separate them.
        assert np.max(err) < 1.0, err


def test_reprojection_with_marker_poses(scene):
    pose_t = estimate_marker_pose(scene["img_t"], scene["k_train"], MARKER_M, MARKER_ID)
    pose_m = estimate_marker_pose(scene["img_m"], scene["k_moved"], MARKER_M, MARKER_ID)
    pts = _table_points(scene, seed=1)
    depth_mm = np.round(scene["depth_m"] * 1000).astype(np.uint16)
    out, valid = reproject_to_training_view(pts, depth_mm, scene["k_moved"], pose_m.T_cam_marker,
                                            scene["k_train"], pose_t.T_cam_marker)
    assert valid.all()
    err = np.linalg.norm(out - _truth(scene, pts), axis=1)
    assert np.median(err) < 2.0 and np.max(err) < 5.0, err
    # The view change itself is large: without reprojection the points are far off.
    assert np.median(np.linalg.norm(pts - _truth(scene, pts), axis=1)) > 40


def test_missing_depth_and_behind_camera_are_invalid(scene):
    pts = np.array([[100.0, 100.0], [300.0, 200.0]])
    depth = np.zeros((H, W), np.uint16)
    depth[190:210, 290:310] = 500  # 0.5 m around the second point only
    _, valid = reproject_to_training_view(pts, depth, scene["k_moved"], np.eye(4),
                                          scene["k_train"], np.eye(4))
    assert valid.tolist() == [False, True]
    flip = np.eye(4)
    flip[:3, :3] = np.diag([1.0, -1.0, -1.0])  # training camera facing the other way
    out, valid = reproject_to_training_view(pts, depth, scene["k_moved"], np.eye(4),
                                            scene["k_train"], flip)
    assert valid.tolist() == [False, False] and np.isnan(out).all()


def test_lift_then_project_round_trip_with_distortion():
    k = CameraIntrinsics(500.0, 505.0, 320.0, 240.0, W, H, (0.1, -0.05, 0.001, -0.002, 0.01))
    rng = np.random.default_rng(3)
    pts = rng.uniform([50, 50], [590, 430], (15, 2))
    depth = np.full((H, W), 0.8, np.float32)
    xyz, ok = lift_points(pts, depth, k, radius=0)
    assert ok.all() and np.allclose(xyz[:, 2], 0.8)
    back, front = project_points(xyz, k)
    assert front.all()
    assert np.max(np.linalg.norm(back - pts, axis=1)) < 0.05


def test_bad_input_is_refused(scene):
    k = scene["k_moved"]
    good = np.zeros((H, W), np.uint16)
    with pytest.raises(ReprojectionError, match="outside"):
        lift_points(np.array([[700.0, 10.0]]), good, k)
    with pytest.raises(ReprojectionError, match="register depth"):
        lift_points(np.array([[10.0, 10.0]]), np.zeros((240, 320), np.uint16), k)
    with pytest.raises(ReprojectionError, match="dtype int32"):
        lift_points(np.array([[10.0, 10.0]]), np.zeros((H, W), np.int32), k)
    with pytest.raises(ReprojectionError, match="rigid"):
        reproject_to_training_view(np.array([[10.0, 10.0]]), good, k, 2 * np.eye(4), k, np.eye(4))
    with pytest.raises(ValueError, match="fx"):
        CameraIntrinsics(0.0, 1.0, 1.0, 1.0, 10, 10)
    with pytest.raises(ReprojectionError, match="marker 7 .*ids seen: \\[23\\]"):
        estimate_marker_pose(scene["img_t"], scene["k_train"], MARKER_M, marker_id=7)
    with pytest.raises(ReprojectionError, match="unknown ArUco dictionary"):
        detect_markers(scene["img_t"], "DICT_NOPE")


def test_real_photo_markers():
    img = cv2.cvtColor(cv2.imread(str(DATA / "aruco_markers_6x6_250.jpg")), cv2.COLOR_BGR2RGB)
    found = detect_markers(img)
    assert sorted(found) == [23, 40, 62, 98, 124, 203]
    h, w = img.shape[:2]
    k = CameraIntrinsics(700.0, 700.0, (w - 1) / 2, (h - 1) / 2, w, h)  # assumed, uncalibrated
    poses = {i: estimate_marker_pose(img, k, 0.05, i) for i in found}
    for pose in poses.values():
        assert pose.rms_px < 1.5
        assert pose.T_cam_marker[2, 3] > 0  # in front of the camera
    # The markers are printed on one sheet: their z axes nearly agree.
    normals = np.array([p.T_cam_marker[:3, 2] for p in poses.values()])
    mean = normals.mean(axis=0) / np.linalg.norm(normals.mean(axis=0))
    assert np.degrees(np.arccos(np.clip(normals @ mean, -1, 1))).max() < 20
    with pytest.raises(ReprojectionError, match="exactly one"):
        estimate_marker_pose(img, k, 0.05)
