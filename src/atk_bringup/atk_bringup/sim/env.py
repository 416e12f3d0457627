"""ROS-free simulation API: `SimEnv`, the one entry point everyone else uses.

    env = SimEnv(SimConfig(width=640, height=480, control_hz=10.0))
    obs = env.reset(task="sushi", seed=0, perturbations=("RP",))
    obs = env.step(env.expert_action())
    env.success(), env.done, env.intrinsics, env.task_names

Rendering is headless through EGL (set MUJOCO_GL=egl before importing
mujoco; this module sets it when unset), shadows and multisampling off.

Actions `(7,)`: 6 joint position targets (rad) + gripper command (0 open ..
1 closed). Targets are clamped into `kinematics.CELL_JOINT_LIMITS`, and the
commanded target moves towards a new one at most at the UR5e's joint speed
limit, so a far target never makes the arm jump; NaN/inf are refused.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import logging  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from atk_perception import kinematics as kin  # noqa: E402
from atk_bringup.sim import menagerie  # noqa: E402
from atk_bringup.sim import model as sim_model  # noqa: E402
from atk_bringup.sim import perturbations as pert  # noqa: E402
from atk_bringup.sim.experts import ExpertConfig, ScriptedExpert, SimState, make_expert  # noqa: E402
from atk_bringup.sim.tasks import TASKS, Task, make_task  # noqa: E402

_log = logging.getLogger(__name__)

# 16-bit depth in millimetres saturates at 65.535 m; beyond the far clip
# MuJoCo returns zfar. Both become 0 ("no reading"), as on the Kinect.
_DEPTH_MAX_MM = 65535


@dataclass(frozen=True)
class SimConfig:
    """Simulator settings (validated)."""

    width: int = 640
    height: int = 480
    control_hz: float = 10.0
    timestep: float = 0.002          # physics step, s
    render: bool = True              # False: no images at all (expert benchmarks, fast batch)
    render_depth: bool = True        # False: skip the depth pass (depth_mm comes back empty)
    settle_s: float = 0.2            # physics time after placing objects before t = 0
    max_depth_m: float = 5.0         # depth beyond this reads 0 (no reading)
    menagerie_path: str = ""         # optional local Menagerie checkout for the arm's looks (never downloaded)
    backgrounds: str = ""            # folder of photographs for RB's table and backdrop ("": procedural textures)

    def __post_init__(self) -> None:
        for name, lo, hi in (("width", 16, 4096), ("height", 16, 4096)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"SimConfig.{name} must be an integer in [{lo}, {hi}], got {v!r}")
        for name in ("control_hz", "timestep", "max_depth_m"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise ValueError(f"SimConfig.{name} must be a positive number, got {v!r}")
        if not np.isfinite(self.settle_s) or self.settle_s < 0:
            raise ValueError(f"SimConfig.settle_s must be >= 0, got {self.settle_s!r}")
        ratio = 1.0 / (self.control_hz * self.timestep)
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(
                f"SimConfig.control_hz={self.control_hz} must divide the physics rate "
                f"1/timestep={1 / self.timestep:g} Hz into a whole number of steps")

    @property
    def substeps(self) -> int:
        """Physics steps per control period."""
        return int(round(1.0 / (self.control_hz * self.timestep)))


@dataclass
class Observation:
    """One frame of what the robot and camera report.

    rgb: (H, W, 3) uint8; depth_mm: (H, W) uint16 millimetres registered to
    rgb (0 = no reading; shape (0, 0) when depth is off); joint_positions:
    (7,) float64 = 6 UR joints (rad) + gripper (0 open .. 1 closed);
    time: sim time (s) since the episode started.
    """

    rgb: np.ndarray
    depth_mm: np.ndarray
    joint_positions: np.ndarray
    time: float


class SimEnv:
    """One simulated cell: a task scene, its camera, its expert.

    With rendering on, use an instance from the thread that created it: the
    EGL context behind the renderer is bound to that thread (the sim node
    gives the env its own thread for this reason).
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.task_names: tuple[str, ...] = tuple(TASKS)
        self._task: Task | None = None
        self._model: mujoco.MjModel | None = None
        self._data: mujoco.MjData | None = None
        self._renderer: mujoco.Renderer | None = None
        self._expert: ScriptedExpert | None = None
        self._seed = 0
        self._perturbations: tuple[str, ...] = ()
        self._steps = 0
        self._succeeded = False
        self._target = np.zeros(7)
        self.episode_message = ""
        self.last_action_clamped = False
        self._parts = None
        #: The newest Observation render() returned (the privileged ground truth
        #: recognises the live frame by it; atk_bringup.sim.ground_truth).
        self.last_observation: Observation | None = None
        #: True: observations carry black frames of the camera's size instead
        #: of rendered ones, for agents that never look at pixels (the
        #: privileged oracle h_C: its keypoints come from the scene state).
        #: Settable between episodes; rendering is 10 ms of a 320x240 step.
        self.blank_frames = False
        #: Render the depth pass (SimConfig.render_depth is the initial value).
        #: Settable between episodes, so that one simulator serves agents with
        #: and without depth (atk-demo's evaluation workers) and only the depth
        #: ones pay for the second pass.
        self.render_depth = bool(self.config.render_depth)
        self.menagerie_message = ""
        #: RB's photographs (SimConfig.backgrounds), loaded once; [] for the procedural textures.
        self.photos = (pert.load_photos(self.config.backgrounds, sim_model.USER_TEXTURE_PX)
                       if self.config.backgrounds else [])
        #: Indices into ``photos`` of the current episode's table and backdrop (() without RB photos).
        self.background_photos: tuple[int, ...] = ()
        if self.config.menagerie_path:
            folder = menagerie.find(self.config.menagerie_path)
            if folder is None:
                self.menagerie_message = (f"no Menagerie ur5e.xml under {self.config.menagerie_path!r}; "
                                          "using primitive shapes")
            else:
                try:
                    self._parts = menagerie.load_parts(folder)
                    self.menagerie_message = f"Menagerie UR5e meshes from {folder}"
                except menagerie.MenagerieError as exc:
                    self.menagerie_message = str(exc)
            _log.info(self.menagerie_message)

    # -- properties ----------------------------------------------------------
    @property
    def task(self) -> str:
        return "" if self._task is None else self._task.name

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def perturbations(self) -> tuple[str, ...]:
        return self._perturbations

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def time(self) -> float:
        return 0.0 if self._data is None else float(self._data.time)

    @property
    def time_limit(self) -> float:
        return 0.0 if self._task is None else self._task.time_limit_s

    @property
    def done(self) -> bool:
        """Success reached, or the task's time limit."""
        self._require()
        return self._succeeded or self._data.time >= self._task.time_limit_s - 1e-9

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) pinhole K of the colour (= depth) camera, OpenCV convention (pixel centres at integers)."""
        return sim_model.camera_intrinsics(self.config.width, self.config.height)

    @property
    def camera_pose(self) -> np.ndarray:
        """(4, 4) world <- camera optical frame (x right, y down, z forward)."""
        self._require()
        cam = self._index.camera
        t = np.eye(4)
        r = self._data.cam_xmat[cam].reshape(3, 3)
        t[:3, :3] = r @ np.diag([1.0, -1.0, -1.0])  # MuJoCo camera looks along -z, y up
        t[:3, 3] = self._data.cam_xpos[cam]
        return t

    @property
    def base_t_camera(self) -> np.ndarray:
        """(4, 4) robot base <- camera optical frame: the extrinsics a hand-eye calibration estimates."""
        return np.linalg.inv(sim_model.base_transform()) @ self.camera_pose

    @property
    def state(self) -> SimState:
        """The live physical state (privileged; for experts and tests)."""
        self._require()
        return SimState(self._model, self._data, self._index, self._task, self._succeeded,
                        1.0 / self.config.control_hz)

    @property
    def model(self) -> mujoco.MjModel:
        self._require()
        return self._model

    @property
    def data(self) -> mujoco.MjData:
        self._require()
        return self._data

    # -- episode -------------------------------------------------------------
    def reset(self, task: str | None = None, seed: int = 0, perturbations=()) -> Observation:
        """Start an episode. task None/"" keeps the current one. Returns the first observation."""
        if not task:
            if self._task is None:
                raise ValueError(f"no task loaded yet; choose one of {list(self.task_names)}")
            task = self._task.name
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {list(self.task_names)}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        names = pert.validate(perturbations)
        if self._task is None or self._task.name != task:
            self._load(task)
        m, d, idx = self._model, self._data, self._index
        self._restore_nominal()
        mujoco.mj_resetData(m, d)
        d.qpos[idx.arm_qpos] = kin.HOME_Q
        d.ctrl[idx.arm_act] = kin.HOME_Q
        d.ctrl[idx.gripper_act] = 0.0
        self._task.reset(m, d, pert.stream(seed, "RP") if "RP" in names else None)
        pert.park_distractors(m, d, idx)
        mujoco.mj_forward(m, d)
        self.background_photos = ()
        if "RB" in names:
            self.background_photos = pert.apply_rb(m, idx, pert.stream(seed, "RB"), self.photos,
                                                   self._upload_texture)
        if "RO" in names:
            pert.apply_ro(m, d, idx, pert.stream(seed, "RO"), self._task.keep_out(m, d))
        if "LIGHT" in names:
            pert.apply_light(m, pert.stream(seed, "LIGHT"), self._snapshot)
        for _ in range(int(round(self.config.settle_s / self.config.timestep))):
            mujoco.mj_step(m, d)
        d.time = 0.0
        self._seed, self._perturbations = int(seed), names
        self._steps, self._succeeded = 0, False
        self._target = np.concatenate([kin.HOME_Q, [0.0]])
        self.episode_message = self._expert.check_reachable(self.state)
        if self.episode_message:
            _log.warning("task %s seed %d: %s", task, seed, self.episode_message)
        return self.render()

    def step(self, action) -> Observation:
        """Apply action (7,) for one control period; returns the new observation."""
        self._require()
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,):
            raise ValueError(f"action must have shape (7,) = 6 joint targets + gripper, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf, refused: {a.tolist()}")
        lim = kin.CELL_JOINT_LIMITS
        clamped = np.concatenate([np.clip(a[:6], lim[:, 0], lim[:, 1]), [np.clip(a[6], 0.0, 1.0)]])
        self.last_action_clamped = bool(np.any(clamped != a))
        m, d, idx = self._model, self._data, self._index
        n = self.config.substeps
        # Rate-limit the commanded joint target like the driver's interpolator:
        # at most the joint speed limit, so a far target is approached, never jumped to.
        start = d.ctrl[idx.arm_act].copy()
        max_delta = kin.UR5E_VELOCITY_LIMITS / self.config.control_hz
        goal = start + np.clip(clamped[:6] - start, -max_delta, max_delta)
        d.ctrl[idx.gripper_act] = clamped[6] * sim_model.FINGER_TRAVEL
        for k in range(1, n + 1):
            d.ctrl[idx.arm_act] = start + (goal - start) * (k / n)
            mujoco.mj_step(m, d)
        self._target = clamped
        self._steps += 1
        if not self._succeeded and self._task.success(m, d):
            self._succeeded = True
        return self.render()

    def expert_action(self) -> np.ndarray:
        """The privileged expert's action (7,) for the current state."""
        self._require()
        return self._expert.action(self.state)

    def success(self) -> bool:
        """Task success in this episode (latched once reached)."""
        self._require()
        if not self._succeeded and self._task.success(self._model, self._data):
            self._succeeded = True
        return self._succeeded

    def joint_positions(self) -> np.ndarray:
        """(7,) measured: 6 joints (rad) + gripper (0 open .. 1 closed)."""
        d, idx = self._data, self._index
        g = float(np.clip(d.qpos[idx.finger_qpos[0]] / sim_model.FINGER_TRAVEL, 0.0, 1.0))
        return np.concatenate([d.qpos[idx.arm_qpos], [g]])

    def joint_velocities(self) -> np.ndarray:
        """(7,) measured: 6 joints (rad/s) + gripper (1/s, normalised)."""
        d, idx = self._data, self._index
        gdof = self._model.jnt_dofadr[self._model.joint("finger_left").id]
        return np.concatenate([d.qvel[idx.arm_dof], [d.qvel[gdof] / sim_model.FINGER_TRAVEL]])

    # -- rendering -----------------------------------------------------------
    def render(self) -> Observation:
        """Observation of the current state, without stepping."""
        self._require()
        c = self.config
        if c.render and self.blank_frames:
            rgb = np.zeros((c.height, c.width, 3), np.uint8)
            depth = np.zeros((0, 0), np.uint16)
        elif c.render:
            r = self._renderer
            r.update_scene(self._data, camera=self._index.camera)
            rgb = r.render().copy()
            if self.render_depth:
                depth = self.render_depth_mm()
            else:
                depth = np.zeros((0, 0), np.uint16)
        else:
            rgb, depth = np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), np.uint16)
        self.last_observation = Observation(rgb, depth, self.joint_positions(), float(self._data.time))
        return self.last_observation

    def render_depth_mm(self) -> np.ndarray:
        """(H, W) uint16 depth (mm, 0 = no reading) of the current state, whatever ``render_depth`` says
        (the frames of a run without depth can still record the first frame's)."""
        self._require()
        if self._renderer is None:
            raise ValueError("rendering is off (SimConfig.render=False)")
        r = self._renderer
        r.update_scene(self._data, camera=self._index.camera)
        r.enable_depth_rendering()
        z = r.render()
        r.disable_depth_rendering()
        depth = np.where((z > 0) & (z < self.config.max_depth_m), np.round(z * 1000.0), 0)
        return np.clip(depth, 0, _DEPTH_MAX_MM).astype(np.uint16)

    def render_segmentation(self) -> np.ndarray:
        """(H, W) int32 body id seen at each pixel (-1 = nothing)."""
        self._require()
        if self._renderer is None:
            raise ValueError("rendering is off (SimConfig.render=False)")
        r = self._renderer
        r.enable_segmentation_rendering()
        r.update_scene(self._data, camera=self._index.camera)
        seg = r.render()
        r.disable_segmentation_rendering()
        geom = seg[..., 0].astype(np.int64)
        is_geom = seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM
        body = np.where(is_geom & (geom >= 0), self._model.geom_bodyid[np.clip(geom, 0, None)], -1)
        return body.astype(np.int32)

    def close(self) -> None:
        """Release the renderer (EGL context)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> "SimEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -----------------------------------------------------------
    def _require(self) -> None:
        if self._task is None:
            raise ValueError("no episode yet: call reset(task=..., seed=...) first")

    def _load(self, task: str) -> None:
        """Compile the scene of one task (once per task switch, never per episode)."""
        t = make_task(task)
        xml, assets = sim_model.build_mjcf(t.assets(), self.config.width, self.config.height,
                                           self.config.timestep, self._parts)
        m = mujoco.MjModel.from_xml_string(xml, assets)
        t.bind(m)
        self.close()
        self._model, self._data, self._task = m, mujoco.MjData(m), t
        self._index = sim_model.index_model(m)
        self._expert = make_expert(task, ExpertConfig())
        self._snapshot = pert.VisualSnapshot.take(m)
        self._nominal_body = (m.body_pos.copy(), m.body_quat.copy())
        if self.config.render:
            self._renderer = mujoco.Renderer(m, self.config.height, self.config.width)
            # shadows and reflections off: several times faster, same geometry
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False

    def _upload_texture(self, texture_id: int) -> None:
        """Send a texture edited in the model to the renderer's GPU copy (RB photographs)."""
        r = self._renderer
        if r is None:
            return
        # mujoco.Renderer has no public upload; its context is what mjr_uploadTexture needs
        if getattr(r, "_gl_context", None) is not None:
            r._gl_context.make_current()
        mujoco.mjr_uploadTexture(self._model, r._mjr_context, texture_id)

    def _restore_nominal(self) -> None:
        m = self._model
        self._snapshot.restore(m)
        m.body_pos[:] = self._nominal_body[0]
        m.body_quat[:] = self._nominal_body[1]
