"""atk-calibrate (issue 12 item 2): a board on the simulated gripper recovers the
simulator's camera pose within 5 mm and 0.5 deg, through the same steps an
operator runs (recorded folder -> solve -> extrinsics file)."""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from atk_bringup import calibrate  # noqa: E402
from atk_bringup.sim import model as sim_model  # noqa: E402
from atk_perception.hand_eye import BoardConfig, pose_error  # noqa: E402
from atk_perception.robot_mask import load_extrinsics  # noqa: E402


def test_hand_eye_calibration_recovers_the_simulated_camera_pose(tmp_path, capsys):
    args = argparse.Namespace(width=640, height=480, poses=12, seed=0, joint_noise_rad=0.0005,
                              out=tmp_path / "camera.yaml")
    result, dt, dr = calibrate.run_sim(args, BoardConfig())
    print(f"simulated calibration error: {dt * 1e3:.2f} mm, {dr:.3f} deg; {result.summary()}")
    assert dt < 0.005 and dr < 0.5
    assert "error against the simulator's camera pose" in capsys.readouterr().out
    written = load_extrinsics(tmp_path / "camera.yaml")
    np.testing.assert_allclose(written, result.base_t_camera, atol=1e-9)


def test_a_recorded_folder_is_solved_into_an_extrinsics_file(tmp_path):
    from atk_bringup.sim.calibration import BoardScene, calibration_poses

    board = BoardConfig()
    scene = BoardScene(board, 640, 480)
    try:
        qs = calibration_poses(scene, 8, seed=3)
        samples = []
        for i, q in enumerate(qs):
            name = f"pose_{i:02d}.png"
            cv2.imwrite(str(tmp_path / name), scene.render(q)[..., ::-1])
            samples.append({"image": name, "joints": [float(v) for v in q] + [0.0]})
    finally:
        scene.close()
    (tmp_path / calibrate.SAMPLES).write_text(yaml.safe_dump({
        "camera_matrix": scene.k.reshape(-1).tolist(), "distortion": [0.0] * 5,
        "image_size": [640, 480], "samples": samples}))
    out = tmp_path / "camera.yaml"
    assert calibrate.main(["--from", str(tmp_path), "--out", str(out)]) == 0
    dt, dr = pose_error(load_extrinsics(out), sim_model.base_t_camera())
    assert dt < 0.005 and dr < 0.5
    # a folder without samples is refused with a message, not a traceback
    assert calibrate.main(["--from", str(tmp_path / "nothing"), "--out", str(out)]) == 2
