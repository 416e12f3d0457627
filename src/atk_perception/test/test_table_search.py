"""table_search.py without the simulator: the geometry's checks and maths, and how the tracker
node's inputs turn the table search on (or say why it is off)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from atk_perception.table_search import (TableSearchError, TableSearchParams, TemplateGeometry, height_map,
                                         table_height, table_objects)

W, H = 160, 120
K = np.array([[150.0, 0, 79.5], [0, 150.0, 59.5], [0, 0, 1]])


def _camera_looking_down(tilt_deg: float = 30.0, height: float = 0.6) -> np.ndarray:
    """base_T_camera: the camera above the origin, optical axis tilted from straight down."""
    t = math.radians(tilt_deg)
    # optical z points down (-z base) tilted towards +x; camera x = base -y... any right-handed frame
    z = np.array([math.sin(t), 0.0, -math.cos(t)])
    x = np.array([0.0, -1.0, 0.0])
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack([x, y, z])
    pose[:3, 3] = [-height * math.tan(t), 0.0, height]
    return pose


def _depth_of_scene(pose: np.ndarray, box: tuple[float, float, float, float, float]) -> np.ndarray:
    """Ray-cast depth (m along the optical axis) of a table at z=0 with one box (x0, x1, y0, y1, top z)."""
    us, vs = np.meshgrid(np.arange(W, dtype=float), np.arange(H, dtype=float))
    rays_c = np.stack([(us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1], np.ones_like(us)], -1)
    r, o = pose[:3, :3], pose[:3, 3]
    d = rays_c @ r.T
    lam_table = -o[2] / d[..., 2]
    lam = lam_table.copy()
    x0, x1, y0, y1, top = box
    lam_top = (top - o[2]) / d[..., 2]
    p = o + d * lam_top[..., None]
    on_top = (p[..., 0] >= x0) & (p[..., 0] <= x1) & (p[..., 1] >= y0) & (p[..., 1] <= y1)
    lam = np.where(on_top, lam_top, lam)
    return lam.astype(np.float32)   # rays_c has z = 1: lam is the depth along the optical axis


def test_geometry_is_checked():
    pose = _camera_looking_down()
    with pytest.raises(TableSearchError, match="depth"):
        TemplateGeometry(np.zeros((H, W, 1)), K, pose)
    with pytest.raises(TableSearchError, match="intrinsics"):
        TemplateGeometry(np.zeros((H, W)), np.zeros((3, 3)), pose)
    with pytest.raises(TableSearchError, match="base_t_camera"):
        TemplateGeometry(np.zeros((H, W)), K, np.full((4, 4), np.nan))
    with pytest.raises(TableSearchError, match="coarse_step_deg"):
        TableSearchParams(coarse_step_deg=0)


def test_lift_and_project_are_inverse_and_the_table_is_found():
    pose = _camera_looking_down()
    depth = _depth_of_scene(pose, (0.05, 0.10, -0.03, 0.03, 0.03))
    g = TemplateGeometry(depth, K, pose)
    uv = np.array([[10.0, 20.0], [80.0, 60.0], [150.0, 100.0]])
    p = g.lift(uv, depth[uv[:, 1].astype(int), uv[:, 0].astype(int)].astype(float))
    np.testing.assert_allclose(g.project(p), uv, atol=1e-6)
    hz = height_map(g)
    assert table_height(hz) == pytest.approx(0.0, abs=1e-3)
    # the box's top at 3 cm: a pixel whose ray hits it lifts to z = 0.03
    box_px = np.argwhere(np.isclose(hz, 0.03, atol=1e-4))
    assert len(box_px) > 50


def test_points_on_the_box_belong_to_it_and_points_on_the_table_to_nothing():
    pose = _camera_looking_down()
    depth = _depth_of_scene(pose, (0.05, 0.10, -0.03, 0.03, 0.03))
    g = TemplateGeometry(depth, K, pose)
    hz = height_map(g)
    on_box = np.argwhere(np.isclose(hz, 0.03, atol=1e-4))[::40][:, ::-1].astype(np.float32)   # (x, y)
    on_table = np.array([[5.0, 5.0], [150.0, 110.0]], np.float32)
    objs = table_objects(g, np.vstack([on_table, on_box]), TableSearchParams(min_top_px=10))
    assert len(objs) == 1
    assert sorted(objs[0].members.tolist()) == list(range(2, 2 + len(on_box)))
    assert objs[0].top_z == pytest.approx(0.03, abs=1e-3)
    np.testing.assert_allclose(objs[0].points_3d[:, 2], 0.03, atol=1e-3)
    # without depth readings nothing stands on the table
    assert table_objects(TemplateGeometry(np.zeros((H, W), np.float32), K, pose), on_box) == []


class _HC:
    def __init__(self, has: bool = True) -> None:
        self.calls = []
        if has:
            self.set_template_geometry = lambda image, geometry: self.calls.append(geometry) or True


class _Template:
    def __init__(self, depth) -> None:
        self.image = np.zeros((H, W, 3), np.uint8)
        self.depth = depth


def test_the_tracker_node_inputs_turn_the_table_search_on_once_and_say_why_not():
    from atk_perception.robot_occlusion import RobotInputs

    pose = _camera_looking_down()
    depth = np.ones((H, W), np.float32)
    assert "no extrinsics_file" in RobotInputs(None).apply_template_geometry(_HC(), _Template(depth))
    assert "no template depth" in RobotInputs(pose).apply_template_geometry(_HC(), _Template(None))
    inputs = RobotInputs(pose)
    hc = _HC()
    assert "until camera_info" in inputs.apply_template_geometry(hc, _Template(depth))
    inputs.set_intrinsics(K)
    assert inputs.apply_template_geometry(hc, _Template(depth)).startswith("table search on")
    assert inputs.apply_template_geometry(hc, _Template(depth)) == ""   # said once, set once
    assert len(hc.calls) == 1 and np.array_equal(hc.calls[0].k, K)
    inputs.set_intrinsics(K * np.array([[2, 1, 2], [1, 2, 2], [1, 1, 1]]))   # another resolution: set again
    inputs.apply_template_geometry(hc, _Template(depth))
    assert len(hc.calls) == 2
    none = RobotInputs(pose)
    none.set_intrinsics(K)
    assert "has none" in none.apply_template_geometry(_HC(has=False), _Template(depth))


def test_robot_occlusion_can_be_off_with_extrinsics():
    from atk_perception.robot_occlusion import RobotAwareTracker, RobotInputs

    class Inner:
        def transfer(self, *a):
            raise AssertionError

    inputs = RobotInputs(_camera_looking_down(), occlusion=False)
    inputs.set_intrinsics(K)
    inputs.set_joint_state(np.zeros(7), 1.0)
    tracker = RobotAwareTracker(Inner())
    assert "robot_occlusion is false" in inputs.apply(tracker, 1.0)
    assert not tracker.active
