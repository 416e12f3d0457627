"""Robot mask: projection, lifting, the silhouette's geometry, extrinsics files (no simulator)."""
from __future__ import annotations

import numpy as np
import pytest

from atk_perception import kinematics as kin
from atk_perception import robot_mask as rm

W, H = 320, 240
K = np.array([[290.0, 0, (W - 1) / 2], [0, 290.0, (H - 1) / 2], [0, 0, 1]])


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """base_T_camera (4, 4) for an optical frame (z forward, y down) at eye looking at target."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    t = np.eye(4)
    t[:3, :3] = np.stack([x, y, z], 1)
    t[:3, 3] = eye
    return t


Q = np.concatenate([kin.HOME_Q + [0.0, 0.6, -0.6, -0.5, 0.0, 0.0], [0.0]])
TOOL = kin.fk(Q[:6])
CAM = look_at(TOOL[:3, 3] + [0.0, 0.9, 0.1], TOOL[:3, 3] + [0.0, 0.0, -0.1])


def test_project_and_lift_round_trip():
    rng = np.random.default_rng(0)
    pts = CAM[:3, 3] + rng.uniform(-0.2, 0.2, (20, 3)) + CAM[:3, 2] * 0.8
    uv, z = rm.project(K, np.linalg.inv(CAM), pts)
    back = rm.lift(K, CAM, uv, z)
    np.testing.assert_allclose(back, pts, atol=1e-9)
    on_plane = rm.lift_to_plane(K, CAM, uv, 0.05)
    # rays that rise never meet a plane below the camera: NaN, not a point behind it
    down = (pts - CAM[:3, 3])[:, 2] < 0
    assert np.isfinite(on_plane[down]).all() and np.isnan(on_plane[~down]).all() and down.sum() >= 5
    np.testing.assert_allclose(on_plane[down, 2], 0.05, atol=1e-9)
    uv2, _ = rm.project(K, np.linalg.inv(CAM), on_plane[down])
    np.testing.assert_allclose(uv2, uv[down], atol=1e-6)


def test_pinch_point_and_fingers_are_inside_the_silhouette_and_far_pixels_are_not():
    mask = rm.render_mask(Q, K, CAM, (W, H))
    tcp = (TOOL @ kin.ROBOTIQ_2F85_TCP)[:3, 3]
    uv, _ = rm.project(K, np.linalg.inv(CAM), tcp[None])
    assert rm.points_in_mask(mask, uv)[0]
    assert 0.01 < mask.mean() < 0.6
    # a point 15 cm beside the tool (along the camera's x) is outside
    side, _ = rm.project(K, np.linalg.inv(CAM), (tcp + 0.15 * CAM[:3, 0])[None])
    assert not rm.points_in_mask(mask, side)[0]


def test_margin_grows_the_silhouette_and_closing_the_gripper_shrinks_it():
    m0 = rm.render_mask(Q, K, CAM, (W, H))
    m6 = rm.render_mask(Q, K, CAM, (W, H), margin_px=6)
    assert m6.sum() > m0.sum() and np.all(m6[m0])
    closed = Q.copy()
    closed[6] = 1.0
    # the fingers travel 85 mm together: an open gripper covers more
    assert rm.render_mask(closed, K, CAM, (W, H)).sum() < m0.sum()


def test_points_in_mask_outside_and_nan_are_false():
    mask = np.ones((10, 10), bool)
    got = rm.points_in_mask(mask, np.array([[5, 5], [-3, 2], [12, 1], [np.nan, 4]], np.float32))
    assert got.tolist() == [True, False, False, False]


def test_bad_inputs_are_refused_with_the_field():
    with pytest.raises(rm.RobotMaskError, match="joint state"):
        rm.render_mask(np.zeros(6), K, CAM, (W, H))
    with pytest.raises(rm.RobotMaskError, match="intrinsics"):
        rm.render_mask(Q, np.zeros((3, 3)), CAM, (W, H))
    bad = CAM.copy()
    bad[:3, :3] *= 2
    with pytest.raises(rm.RobotMaskError, match="orthonormal"):
        rm.render_mask(Q, K, bad, (W, H))


def test_extrinsics_file_round_trip_and_refusal(tmp_path):
    path = tmp_path / "camera.yaml"
    rm.save_extrinsics(path, CAM, (W, H), K, {"poses": 12})
    np.testing.assert_allclose(rm.load_extrinsics(path), CAM, atol=1e-12)
    (tmp_path / "other.yaml").write_text("base_T_camera: 3\n")
    with pytest.raises(rm.RobotMaskError, match="atk-calibrate"):
        rm.load_extrinsics(tmp_path / "other.yaml")
    with pytest.raises(rm.RobotMaskError, match="cannot read"):
        rm.load_extrinsics(tmp_path / "missing.yaml")


def test_occlusion_config_refuses_bad_values_naming_the_field():
    from atk_perception.robot_occlusion import RobotOcclusionConfig

    for kwargs, field in (({"margin_px": -1.0}, "margin_px"), ({"gripper_empty": 0.2}, "gripper_empty"),
                          ({"carried_confidence": 1.5}, "carried_confidence"),
                          ({"grasp_half_extent_m": (0.1, 0.0, 0.1)}, "grasp_half_extent_m")):
        with pytest.raises(ValueError, match=field):
            RobotOcclusionConfig(**kwargs)


def test_robot_inputs_say_once_why_the_robot_model_is_off_and_when_it_turns_on():
    from atk_perception.cpu_tracker import CpuTracker
    from atk_perception.robot_occlusion import RobotAwareTracker, RobotInputs

    trk = RobotAwareTracker(CpuTracker())
    assert "no extrinsics_file" in RobotInputs(None).apply(trk, 0.0)
    inputs = RobotInputs(CAM, max_joint_age_s=0.25)
    assert "camera_info" in inputs.apply(trk, 0.0)
    assert inputs.apply(trk, 0.1) == ""                     # said once
    inputs.set_intrinsics(K)
    assert "joint_states" in inputs.apply(trk, 0.2)
    inputs.set_joint_state(Q, stamp_s=1.0)
    assert "1.00 s from the frame" in inputs.apply(trk, 2.0) and not trk.active
    note = inputs.apply(trk, 1.1)
    assert note.startswith("robot-aware occlusion on") and trk.active
    np.testing.assert_allclose(trk.camera.base_t_camera, CAM)
    assert inputs.apply(trk, 1.15) == ""
