"""MuJoCo simulator node (``sim_node``, node name ``sim``): stands in for the
camera node and the UR driver.

Publishes ``camera/color/image_raw`` (rgb8), ``camera/depth/image_raw``
(16UC1 mm, registered to colour), ``camera/color/camera_info`` (the true
pinhole intrinsics), ``joint_states`` (6 UR joints, rad, then ``gripper``
0 open .. 1 closed), ``sim/episode`` (atk_msgs/EpisodeStatus, latched) and
``/clock`` (sim time, monotonic across episodes, for use_sim_time).
Subscribes ``joint_target`` (sensor_msgs/JointState) and ``gripper_command``
(atk_msgs/GripperCommand); without any target it holds the last one (the
home pose after a reset). Service ``~/reset_episode`` (atk_msgs/ResetEpisode)
starts an episode with a task, seed and perturbation set.

Without the expert, an episode's clock starts with its first command: after
a reset the world stands still (the first frame is re-published every
control period, at the same stamp) until the first joint_target or
gripper_command of the episode arrives, or the tracker reports on
``keypoints`` that it could not transfer the keypoints onto that frame, or
``start_timeout_s`` passes. The policy thus acts on the first frame before
the world moves, however long the tracker's transfer takes, as in the
in-process evaluation (docs/deployment.md, "Latency"). Each new episode's
stamps start ``episode_gap_s`` after the last one's: a break in the camera
stream, so the tracker transfers its keypoints onto the new scene instead of
tracking the old one into it. Commands stamped before the episode began
(computed from the previous one) are ignored.

Publishing order per step: joint_states, camera_info, depth, image, then
``/clock``: a consumer of the image has the joint state of the same stamp.

realtime=true steps one control period per control period of wall time;
realtime=false steps as fast as the CPU allows (batch work: use it with
expert=true or with consumers on use_sim_time). expert=true drives the arm
with the privileged scripted expert and publishes its actions on
joint_target / gripper_command, so a recorder captures demonstrations
through the ROS graph; auto_reset starts the next seed when an episode ends.

Library: atk_bringup.sim (SimEnv); parameters: atk_bringup.sim_params; this file
only converts messages.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import Any, Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy, \
    qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState

from atk_bringup.driver.driver_node import target_from_joint_state
from atk_bringup.sim.env import SimConfig, SimEnv
from atk_bringup.sim.perturbations import photo_files
from atk_bringup.sim_params import COMMAND, NODE_NAME, PARAMS
from atk_msgs.msg import EpisodeStatus, GripperCommand, KeypointArray
from atk_msgs.srv import ResetEpisode
from atk_perception import kinematics as kin
from atk_perception.node_params import ParameterError, declare, log_effective
from atk_perception.node_runner import run_node

GRIPPER_JOINT = kin.GRIPPER_JOINT
INIT_TIMEOUT_S = 60.0    # model compile + first render (EGL start-up is slow on a loaded machine)
RESET_TIMEOUT_S = 30.0   # one reset: settle physics + render
STOP_TIMEOUT_S = 5.0


def stamp_parts(t: float) -> tuple[int, int]:
    """Sim time t (s, >= 0) -> (sec, nanosec) of a builtin_interfaces/Time.

    Rounded once, in nanoseconds: rounding the fraction alone turned t =
    2.9999999999999996 (thirty 0.1 s steps) into 2 s + 1e9 ns, wrapped to 2.0 s,
    so every whole second the stamps jumped 0.9 s back and then 1.1 s forward:
    the tracker re-transferred its keypoints on the backward jump (seconds of
    work) and the policy held on the forward one ("joint state 1.1 s old")."""
    return divmod(int(round(t * 1e9)), 1_000_000_000)


# Commands: reliable, keep last 1: only the newest target is worth executing.
COMMAND_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                         reliability=QoSReliabilityPolicy.RELIABLE)
# Episode status is latched state: a late joiner (recorder) gets the current episode.
LATCHED_QOS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                         reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
# /clock: the profile rclpy's TimeSource subscribes with (best effort, depth 1).
CLOCK_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT)



def stamp_of(t: float) -> Time:
    sec, nanosec = stamp_parts(t)
    return Time(sec=sec, nanosec=nanosec)


class SimNode(Node):
    """ROS shell around :class:`~atk_bringup.sim.env.SimEnv` (stepped by its own thread)."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._params: dict[str, Any] = declare(self, PARAMS)
        prm = self._params
        try:
            cfg = SimConfig(width=int(prm["width"]), height=int(prm["height"]),
                            control_hz=float(prm["control_hz"]), render_depth=bool(prm["publish_depth"]),
                            backgrounds=str(prm["backgrounds"]))
            if cfg.backgrounds:   # a wrong folder is refused here, by name; SimEnv reads the photos once
                photo_files(cfg.backgrounds)
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        log_effective(self, prm)
        self._cfg = cfg
        self._env: Optional[SimEnv] = None   # owned by the stepping thread (EGL is per thread)
        self._target_lock = threading.Lock()
        self._clock_offset = 0.0            # sim time of the current episode's t = 0
        self._target: Optional[np.ndarray] = None   # (7,) newest command, None = hold home
        self._last_status = (None, None)
        self._last_status_wall = 0.0
        self._requests: queue.Queue = queue.Queue()
        # Start of the current episode (guarded by _target_lock): its first
        # stamp, whether its clock runs, and since when it has waited.
        self._episode_t0 = 0.0
        self._started = True
        self._waiting_since = 0.0
        self._last_obs = None

        self._pub_rgb = self.create_publisher(Image, "camera/color/image_raw", qos_profile_sensor_data)
        self._pub_info = self.create_publisher(CameraInfo, "camera/color/camera_info", qos_profile_sensor_data)
        self._pub_depth = self.create_publisher(Image, "camera/depth/image_raw", qos_profile_sensor_data)
        self._pub_js = self.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self._pub_episode = self.create_publisher(EpisodeStatus, "sim/episode", LATCHED_QOS)
        self._pub_clock = self.create_publisher(Clock, "/clock", CLOCK_QOS)
        self._pub_target = self.create_publisher(JointState, "joint_target", COMMAND_QOS)
        self._pub_grip = self.create_publisher(GripperCommand, "gripper_command", COMMAND_QOS)
        self.create_subscription(JointState, "joint_target", self._on_target, COMMAND_QOS)
        self.create_subscription(GripperCommand, "gripper_command", self._on_gripper, COMMAND_QOS)
        if not prm["expert"] and prm["start_timeout_s"] > 0:
            # Sensor-data QoS, as the tracker publishes: only whether it
            # reported on the episode's first frame matters.
            self.create_subscription(KeypointArray, "keypoints", self._on_keypoints, qos_profile_sensor_data)
        # The reset service waits for the stepping thread; its own group lets
        # a multi-threaded executor keep serving the topics meanwhile.
        self.create_service(ResetEpisode, "~/reset_episode", self._on_reset,
                            callback_group=MutuallyExclusiveCallbackGroup())

        self._stop = threading.Event()
        # Ctrl-C shuts the context down from rclpy's signal handler, before
        # the executor returns and destroy_node() runs: stop stepping at
        # once, or the thread's next publish fails on the dead context
        # ("publisher's context is invalid", logged as an error on every
        # clean shutdown).
        self.context.on_shutdown(self._stop.set)
        self._ready = threading.Event()
        self._init_error: Optional[BaseException] = None
        # One thread owns the simulator: it steps, renders (the EGL context
        # is bound to the thread that made it) and serves reset requests, so
        # the executor is never blocked by physics or rendering.
        self._thread = threading.Thread(target=self._run, name="sim_stepper", daemon=True)
        self._thread.start()
        if not self._ready.wait(INIT_TIMEOUT_S):
            raise RuntimeError(f"simulator did not start within INIT_TIMEOUT_S={INIT_TIMEOUT_S} s")
        if self._init_error is not None:
            raise ParameterError(f"simulator start failed: {self._init_error}")
        self.get_logger().info(
            f"simulating task {prm['task']!r} seed {prm['seed']} perturbations "
            f"{[p for p in prm['perturbations'] if p]} "
            f"({'real time' if prm['realtime'] else 'as fast as possible'})")

    # --- inputs ----------------------------------------------------------
    def _from_earlier_episode(self, stamp) -> bool:
        """A command stamped (non-zero) before this episode began was computed from the last one."""
        t = stamp.sec + stamp.nanosec * 1e-9
        return t != 0.0 and t < self._episode_t0 - 1e-6

    def _on_target(self, msg: JointState) -> None:
        if self._params["expert"]:
            return  # our own expert's actions echo back here
        q, why = target_from_joint_state(list(msg.name), list(msg.position))
        if q is None or not np.all(np.isfinite(q)):
            self.get_logger().warning(f"joint_target refused: {why or 'NaN or inf'}",
                                      throttle_duration_sec=1.0)
            return
        with self._target_lock:
            if self._from_earlier_episode(msg.header.stamp):
                return
            base = self._current_target()
            base[:6] = q
            self._target = base
            self._started = True

    def _on_gripper(self, msg: GripperCommand) -> None:
        if self._params["expert"]:
            return
        if not np.isfinite(msg.position):
            self.get_logger().warning(f"gripper_command refused: position {msg.position!r}",
                                      throttle_duration_sec=1.0)
            return
        with self._target_lock:
            if self._from_earlier_episode(msg.header.stamp):
                return
            base = self._current_target()
            base[6] = float(np.clip(msg.position, 0.0, 1.0))
            self._target = base
            self._started = True

    def _on_keypoints(self, msg) -> None:
        # The tracker could not transfer onto this episode's first frame:
        # no command will come from it, and the policy holds, as it does
        # in the in-process evaluation, while the clock runs.
        if msg.state == KeypointArray.STATE_TRACKING:
            return
        with self._target_lock:
            if not self._started and not self._from_earlier_episode(msg.header.stamp):
                self._started = True
                self.get_logger().info(f"episode starts without a command: tracker reports state "
                                       f"{msg.state} on its first frame ({msg.message})")

    def _current_target(self) -> np.ndarray:
        if self._target is not None:
            return self._target.copy()
        return np.concatenate([kin.HOME_Q, [0.0]])

    def _on_reset(self, request, response):
        job = {"request": request, "done": threading.Event(), "ok": False, "message": ""}
        self._requests.put(job)
        if not job["done"].wait(RESET_TIMEOUT_S):
            response.success = False
            response.message = f"the simulator did not reset within RESET_TIMEOUT_S={RESET_TIMEOUT_S} s"
        else:
            response.success, response.message = job["ok"], job["message"]
        if response.success:
            self.get_logger().info(f"episode reset: {response.message}")
        else:
            self.get_logger().error(f"~/reset_episode refused: {response.message}")
        return response

    # --- stepping thread ---------------------------------------------------
    def _run(self) -> None:
        prm = self._params
        try:
            self._env = SimEnv(self._cfg)
            obs = self._env.reset(task=prm["task"], seed=int(prm["seed"]),
                                  perturbations=tuple(p for p in prm["perturbations"] if p))
            self._begin_episode(obs)
            self._publish(obs, force_status=True)
        except Exception as exc:  # noqa: BLE001 - reported by __init__
            self._init_error = exc
            self._ready.set()
            return
        self._ready.set()
        period = 1.0 / self._cfg.control_hz
        next_tick = time.monotonic()
        try:
            while not self._shutting_down():
                if prm["realtime"]:
                    next_tick += period
                    while not self._stop.is_set():
                        delay = next_tick - time.monotonic()
                        if delay <= 0:
                            break
                        try:
                            self._serve_reset(self._requests.get(timeout=delay))
                        except queue.Empty:
                            pass
                    if next_tick < time.monotonic() - 1.0:
                        next_tick = time.monotonic()   # fell far behind: do not race to catch up
                while not self._requests.empty():
                    self._serve_reset(self._requests.get_nowait())
                if self._stop.is_set():
                    break
                try:
                    if self._waiting():
                        self._publish(self._last_obs)   # the same frame, same stamp: the world stands still
                        if not prm["realtime"]:
                            self._stop.wait(period)
                        continue
                    self._tick()
                except Exception as exc:  # noqa: BLE001 - report, keep the node alive
                    if self._shutting_down():
                        break  # a publish raced the shutdown: not a failure, and nothing to log to
                    self.get_logger().error(f"simulation step failed: {exc}", throttle_duration_sec=1.0)
                    self._stop.wait(period)
        finally:
            self._env.close()

    def _shutting_down(self) -> bool:
        return self._stop.is_set() or not self.context.ok()

    def _serve_reset(self, job: dict) -> None:
        req, env = job["request"], self._env
        try:
            t0 = env.time
            obs = env.reset(task=req.task or env.task, seed=int(req.seed),
                            perturbations=tuple(p for p in req.perturbations if p))
            self._new_episode(t0, obs)
            self._publish(obs, force_status=True)
            job["ok"] = True
            job["message"] = env.episode_message or (
                f"task {env.task!r} seed {env.seed} perturbations {list(env.perturbations)}")
        except ValueError as exc:
            job["ok"], job["message"] = False, str(exc)
        finally:
            job["done"].set()

    def _new_episode(self, last_t: float, obs) -> None:
        """Stamps of the new episode start episode_gap_s after the last one's
        (last_t: the old episode's time); it waits for its first command."""
        self._clock_offset += last_t + 1.0 / self._cfg.control_hz + float(self._params["episode_gap_s"])
        self._begin_episode(obs)

    def _begin_episode(self, obs) -> None:
        with self._target_lock:
            self._target = None
            self._episode_t0 = self._clock_offset + obs.time
            self._started = bool(self._params["expert"]) or self._params["start_timeout_s"] <= 0
            self._waiting_since = time.monotonic()

    def _waiting(self) -> bool:
        """Whether the current episode still waits for its first command."""
        with self._target_lock:
            if self._started:
                return False
            waited = time.monotonic() - self._waiting_since
            if waited <= self._params["start_timeout_s"]:
                return True
            self._started = True
        self.get_logger().warning(f"no command within start_timeout_s={self._params['start_timeout_s']:g} s "
                                  "of the episode's start: the world moves on without one")
        return False

    def _tick(self) -> None:
        env = self._env
        if env.done and self._params["auto_reset"]:
            t0 = env.time
            obs = env.reset(seed=env.seed + 1, perturbations=env.perturbations)
            self._new_episode(t0, obs)
            self._publish(obs, force_status=True)
            return
        if self._params["expert"]:
            action = env.expert_action()
            self._publish_action(action, self._clock_offset + env.time)
        else:
            with self._target_lock:
                action = self._current_target()
        obs = env.step(action)
        self._publish(obs)

    # --- outputs -------------------------------------------------------------
    def _publish_action(self, action: np.ndarray, t: float) -> None:
        stamp = stamp_of(t)  # the stamp of the observation the action was computed from
        js = JointState()
        js.header.stamp = stamp
        js.name = list(kin.JOINT_NAMES)
        js.position = [float(v) for v in action[:6]]
        self._pub_target.publish(js)
        g = GripperCommand(position=float(action[6]), speed=0.5, force=0.5)
        g.header.stamp = stamp
        self._pub_grip.publish(g)

    def _publish(self, obs, force_status: bool = False) -> None:
        env = self._env
        self._last_obs = obs
        t = self._clock_offset + obs.time
        stamp = stamp_of(t)
        fid = self._params["frame_id"]
        # joint_states first and /clock last: whoever reacts to the image
        # (tracker -> policy) or to the clock (a timer under use_sim_time)
        # already has the joint state of this stamp.
        js = JointState()
        js.header.stamp = stamp
        js.name = [*kin.JOINT_NAMES, GRIPPER_JOINT]
        js.position = [float(v) for v in obs.joint_positions]
        js.velocity = [float(v) for v in env.joint_velocities()]
        self._pub_js.publish(js)
        h, w = obs.rgb.shape[:2]
        img = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w)
        img.header.stamp, img.header.frame_id = stamp, fid
        img.data = obs.rgb.tobytes()
        k = env.intrinsics
        info = CameraInfo(height=h, width=w, distortion_model="plumb_bob")
        info.header.stamp, info.header.frame_id = stamp, fid
        info.d = [0.0] * 5
        info.k = [float(v) for v in k.ravel()]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [k[0, 0], 0.0, k[0, 2], 0.0, 0.0, k[1, 1], k[1, 2], 0.0, 0.0, 0.0, 1.0, 0.0]
        self._pub_info.publish(info)
        if obs.depth_mm.size:
            dep = Image(height=h, width=w, encoding="16UC1", step=2 * w,
                        is_bigendian=int(sys.byteorder == "big"))
            dep.header.stamp, dep.header.frame_id = stamp, fid
            dep.data = obs.depth_mm.tobytes()
            self._pub_depth.publish(dep)
        self._pub_rgb.publish(img)
        self._pub_clock.publish(Clock(clock=stamp))
        status = (env.done, env.success())
        now = time.monotonic()
        if (force_status or status != self._last_status
                or now - self._last_status_wall >= 1.0 / self._params["episode_status_hz"]):
            self._last_status, self._last_status_wall = status, now
            msg = EpisodeStatus(task=env.task, seed=env.seed, perturbations=list(env.perturbations),
                                step=env.steps, done=status[0], success=status[1],
                                message=env.episode_message)
            msg.header.stamp = stamp
            self._pub_episode.publish(msg)

    def destroy_node(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:
                # Under `ros2 launch`, Ctrl-C reaches a node twice (from the
                # terminal's process group and from launch). The second one
                # must not abandon this join: the interpreter would then
                # exit under a stepper thread still inside MuJoCo/EGL and
                # crash (exit -11, seen 2 times in 5 clean Ctrl-Cs).
                continue
        super().destroy_node()



def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_node(NODE_NAME, argv, SimNode, print_help=COMMAND.print_help,
                    startup_errors=(ParameterError,), threads=os.cpu_count() or 2)


if __name__ == "__main__":
    sys.exit(main())
