"""atk-calibrate: hand-eye calibration of the fixed camera (eye-to-hand).

A ChArUco board (print it with ``--print-board``) is fixed to the gripper;
the robot is moved to K poses (freedrive or the teach pendant) where the
camera sees the whole board, tilted and turned differently each time. At
each pose the newest image and joint state are recorded. The camera's pose
in the robot base frame is then solved (:mod:`atk_perception.hand_eye`),
the residuals printed, and the extrinsics file written that the tracker
node (``extrinsics_file``), ``deploy.launch.py`` (``camera_extrinsics``) and
``atk-train --camera-extrinsics`` load.

Modes:

* ``--record DIR`` (ROS): subscribes to ``camera/color/image_raw``,
  ``camera/color/camera_info`` and ``joint_states``; press Enter at each
  pose. Images and joints are saved in DIR (``samples.yaml``), then solved.
* ``--from DIR``: solve a recorded DIR again (e.g. with another board setting).
* ``--sim``: the simulated cell with a board on its gripper; prints the
  error against the simulator's true camera pose.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from atk_perception import kinematics as kin
from atk_perception.hand_eye import (BoardConfig, HandEyeError, HandEyeResult, detect_board, pose_error,
                                     solve_eye_to_hand)
from atk_perception.robot_mask import save_extrinsics

SAMPLES = "samples.yaml"
#: How long the recorder waits for the first image, camera_info and joint state.
TOPIC_TIMEOUT_S = 10.0


def solve(images: Sequence[np.ndarray], joints: Sequence[np.ndarray], k: np.ndarray, board: BoardConfig,
          dist: np.ndarray | None = None, say=print) -> HandEyeResult:
    """Detect the board in every image and solve; views without the board are reported and skipped."""
    views, poses = [], []
    for i, (img, q) in enumerate(zip(images, joints)):
        v = detect_board(img, board, k, dist)
        if v is None:
            say(f"pose {i}: board not found (fewer than {board.min_corners} corners): skipped")
            continue
        say(f"pose {i}: {len(v.object_points)} corners, PnP reprojection {v.rms_px:.2f} px")
        views.append(v)
        poses.append(kin.fk(np.asarray(q, np.float64)[:6]))
    result = solve_eye_to_hand(np.array(poses).reshape(-1, 4, 4), views, k, dist)
    say(result.summary())
    for i, (mm, deg, px) in enumerate(zip(result.residual_mm, result.residual_deg, result.reprojection_px)):
        say(f"  view {i}: {mm:.2f} mm, {deg:.3f} deg, {px:.2f} px")
    return result


def _write(path: Path, result: HandEyeResult, k: np.ndarray, size: tuple[int, int], source: str, say) -> None:
    save_extrinsics(path, result.base_t_camera, size, k, info={
        "source": source, "poses": int(len(result.residual_mm)),
        "residual_mm_median": float(np.median(result.residual_mm)),
        "residual_deg_median": float(np.median(result.residual_deg)),
        "reprojection_px_median": float(np.median(result.reprojection_px)),
        "gripper_T_board": [[float(v) for v in row] for row in result.gripper_t_board]})
    t = result.base_t_camera[:3, 3]
    say(f"camera in the robot base frame: position ({t[0]:.4f}, {t[1]:.4f}, {t[2]:.4f}) m; written to {path}")


def run_sim(args: argparse.Namespace, board: BoardConfig, say=print) -> tuple[HandEyeResult, float, float]:
    """Calibrate the simulated cell; returns (result, translation error m, rotation error deg)."""
    from atk_bringup.sim import model as sim_model
    from atk_bringup.sim.calibration import BoardScene, calibration_poses

    scene = BoardScene(board, args.width, args.height)
    try:
        qs = calibration_poses(scene, args.poses, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        images = [scene.render(q) for q in qs]
        # what the controller would report: the true joints plus encoder noise
        joints = [q + rng.normal(scale=args.joint_noise_rad, size=6) for q in qs]
        result = solve(images, joints, scene.k, board, say=say)
    finally:
        scene.close()
    dt, dr = pose_error(result.base_t_camera, sim_model.base_t_camera())
    say(f"error against the simulator's camera pose: {dt * 1e3:.2f} mm, {dr:.3f} deg")
    if args.out:
        _write(Path(args.out), result, scene.k, (args.width, args.height), "simulation", say)
    return result, dt, dr


def load_samples(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray | None]:
    """Images, joint states (7,), K and distortion of a recorded folder."""
    import cv2
    import yaml

    path = folder / SAMPLES
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HandEyeError(f"cannot read {path}: {exc}; record one with atk-calibrate --record") from exc
    images, joints = [], []
    for s in doc["samples"]:
        img = cv2.imread(str(folder / s["image"]), cv2.IMREAD_COLOR)
        if img is None:
            raise HandEyeError(f"{folder / s['image']}: not a readable image")
        images.append(img[..., ::-1].copy())
        joints.append(np.asarray(s["joints"], np.float64))
    k = np.asarray(doc["camera_matrix"], np.float64).reshape(3, 3)
    dist = np.asarray(doc["distortion"], np.float64) if doc.get("distortion") else None
    return images, joints, k, dist


def record(folder: Path, n_poses: int, say=print) -> None:
    """ROS: record n_poses (image, joint state) pairs into folder, one per Enter."""
    import cv2
    import rclpy
    import yaml
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from atk_perception.image_conversion import imgmsg_to_rgb8
    import threading

    folder.mkdir(parents=True, exist_ok=True)
    rclpy.init()
    node = rclpy.create_node("atk_calibrate")
    latest: dict = {}
    got = threading.Event()

    def keep(key):
        def cb(msg):
            latest[key] = msg
            if len(latest) == 3:
                got.set()
        return cb

    # sensor-data QoS for the camera (as the camera node publishes); joint states as the driver does
    node.create_subscription(Image, "camera/color/image_raw", keep("image"), qos_profile_sensor_data)
    node.create_subscription(CameraInfo, "camera/color/camera_info", keep("info"), qos_profile_sensor_data)
    node.create_subscription(JointState, "joint_states", keep("joints"), 10)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    try:
        if not got.wait(TOPIC_TIMEOUT_S):
            raise HandEyeError(f"no {', '.join(sorted({'image', 'info', 'joints'} - set(latest)))} within "
                               f"{TOPIC_TIMEOUT_S:g} s (TOPIC_TIMEOUT_S): are the camera and driver running?")
        samples = []
        for i in range(n_poses):
            input(f"pose {i + 1}/{n_poses}: move the robot so the camera sees the whole board "
                  "(tilt and turn it differently each time), then press Enter ")
            js = latest["joints"]
            q, why = kin.joint_state_vector(list(js.name), list(js.position))
            if q is None:
                raise HandEyeError(f"joint_states unusable: {why}")
            rgb = imgmsg_to_rgb8(latest["image"])
            name = f"pose_{i:02d}.png"
            cv2.imwrite(str(folder / name), rgb[..., ::-1])
            samples.append({"image": name, "joints": [float(v) for v in q]})
            say(f"recorded {name}")
        info = latest["info"]
        (folder / SAMPLES).write_text(yaml.safe_dump({
            "camera_matrix": [float(v) for v in info.k], "distortion": [float(v) for v in info.d],
            "image_size": [int(info.width), int(info.height)], "samples": samples}, sort_keys=False))
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atk-calibrate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, metavar="DIR", help="record poses over ROS into DIR, then solve")
    mode.add_argument("--from", dest="from_dir", type=Path, metavar="DIR", help="solve a recorded DIR")
    mode.add_argument("--sim", action="store_true", help="calibrate the simulated cell (a test of the method)")
    mode.add_argument("--print-board", type=Path, metavar="PNG", help="write the board image to print, and exit")
    p.add_argument("--out", type=Path, default=Path("camera_extrinsics.yaml"),
                   help="extrinsics file to write (default: %(default)s)")
    p.add_argument("--poses", type=int, default=12, help="robot poses to record or simulate (default: 12)")
    p.add_argument("--squares", type=int, nargs=2, default=(5, 4), metavar=("X", "Y"),
                   help="ChArUco squares across and down (default: 5 4)")
    p.add_argument("--square-mm", type=float, default=24.0, help="printed square side (default: 24 mm)")
    p.add_argument("--marker-mm", type=float, default=18.0, help="printed marker side (default: 18 mm)")
    p.add_argument("--dictionary", default="DICT_4X4_50", help="ArUco dictionary (default: %(default)s)")
    p.add_argument("--width", type=int, default=640, help="--sim: image width (default: 640)")
    p.add_argument("--height", type=int, default=480, help="--sim: image height (default: 480)")
    p.add_argument("--joint-noise-rad", type=float, default=0.0,
                   help="--sim: std of noise on the reported joints (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="--sim: seed of the poses and the noise (default: 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        board = BoardConfig(args.squares[0], args.squares[1], args.square_mm / 1e3, args.marker_mm / 1e3,
                            args.dictionary)
        if args.poses < 3:
            raise HandEyeError(f"--poses {args.poses}: need at least 3 (10-20 recommended)")
        if args.print_board:
            import cv2

            cv2.imwrite(str(args.print_board), board.image(400))
            print(f"board written to {args.print_board}: print it so that a square measures "
                  f"{args.square_mm:g} mm, and fix it flat to the gripper")
            return 0
        if args.sim:
            run_sim(args, board)
            return 0
        if args.record:
            record(args.record, args.poses)
        folder = args.record or args.from_dir
        images, joints, k, dist = load_samples(folder)
        result = solve(images, joints, k, board, dist)
        h, w = images[0].shape[:2]
        _write(args.out, result, k, (w, h), f"recorded in {folder}", print)
        return 0
    except (HandEyeError, ValueError) as exc:
        print(f"atk-calibrate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
