"""`atk-demo`: the whole ATK loop in simulation, and the paper's table.

What a robot operator does on the real cell, done in the MuJoCo stand-in:

1. collect scripted-expert demonstrations of a task into rosbag2 bags (the
   same topics and types as a real recording);
2. train ATK from those bags with ``atk_policy.pipeline.train`` (what the
   operator's ``atk-train`` command runs), plus FullSet, RandomSelect (same
   N) and the RGB baseline (``--methods all`` adds ManualSelect and the Depth
   and Pointcloud baselines, for which the demos record depth too);
   optionally DAgger rounds where the privileged expert labels the states the
   learned policy reaches;
3. deploy the ATK policy through the real ROS graph (sim, tracker and policy
   nodes over DDS) on the first ``--ros-episodes`` evaluation scenes (RP), the
   table's "ATK (ROS graph)" row; then evaluate every method in-process under
   RP, RB, RO and Light added cumulatively (paper tables 1-3), with the
   graph's timing modelled (evaluation.KeypointAgent, timing="graph");
4. print the success table (mean and spread over training seeds), write it as
   markdown and CSV, with the selected-keypoint picture and an image grid of
   the evaluation conditions.

Every stage writes under ``--out`` and is skipped when its results are
already there, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .evaluation import CONDITIONS, CellStats, format_table, run_episode, table_csv

if TYPE_CHECKING:
    from atk_policy.config import ATKConfig
    from atk_policy.pipeline import BaselineConfig, DataSource

METHODS = ("ATK", "FullSet", "RandomSelect", "ManualSelect", "RGB", "Depth", "Pointcloud")
#: What the main command trains and evaluates unless --methods says otherwise: ManualSelect, Depth and
#: Pointcloud are left out so that the default run fits 20 minutes (--methods all adds them).
DEFAULT_METHODS = ("ATK", "FullSet", "RandomSelect", "RGB")
#: atk-train's baseline name of each method but ATK.
BASELINE_OF = {"FullSet": "fullset", "RandomSelect": "random", "ManualSelect": "manual", "RGB": "rgb",
               "Depth": "depth", "Pointcloud": "pointcloud"}
#: Methods on the camera's picture, not on keypoints: no h_C, table rows without an h_C label.
IMAGE_METHODS = ("RGB", "Depth", "Pointcloud")
#: Methods on the depth image: the demonstrations record depth and their evaluation renders it.
DEPTH_METHODS = ("Depth", "Pointcloud")
#: h_C choices of atk-demo. "oracle" is PRIVILEGED and SIMULATION-ONLY: the
#: simulator's true keypoints (atk_bringup.sim.ground_truth), the paper's
#: simulator protocol; "cpu" is what the robot runs (deployment).
H_C_CHOICES = ("cpu", "oracle")
H_C_LABEL = {"cpu": "CPU h_C", "oracle": "oracle h_C"}


def row_name(method: str, h_c: str) -> str:
    """Table row of a method evaluated with h_C ``h_c``: keypoint methods say
    which h_C gave their keypoints ("ATK (oracle h_C)"); RGB, Depth and
    Pointcloud use none."""
    return method if method in IMAGE_METHODS else f"{method} ({H_C_LABEL[h_c]})"


@dataclass
class DemoConfig:
    """Sizes of the run (validated). Defaults finished in 16 min 24 s on 2 cores (measured 2026-12-03:
    demos 86 s, training 377 s, ROS graph 160 s, evaluation 358 s); 6 scenes and 5 graph episodes took
    21.5 min, 10 scenes 21 min."""

    out: Path
    task: str = "sushi"
    demos: int = 60
    width: int = 320
    height: int = 240
    candidates: int = 64
    #: One seed by default: with every method, condition and the graph row, two seeds do not fit 20 minutes
    #: on 2 cores (an episode that fails runs 30 s of simulated time: 5-14 s of CPU); --full trains 0,1,2.
    train_seeds: tuple[int, ...] = (0,)
    steps: int = 2000
    #: Scenes per cell. Few: the default run must fit 20 minutes on 2 cores, and 10 or 6 scenes took 21 (an
    #: episode that fails runs 30 s of simulated time, 5-14 s of CPU). With 4 a cell's 95% interval is
    #: about +-0.4 wide: the default shows the loop works, it cannot rank methods; the results
    #: name their intervals and --full / --eval-episodes give more (on 20 scenes a model that scored 5/5
    #: on the first five scored 8/20).
    eval_episodes: int = 4
    dagger_rounds: int = 0
    dagger_episodes: int = 10
    #: ATK episodes per training seed through the ROS graph, on the first
    #: evaluation scenes (RP): the "ATK (ROS graph)" row. ~35 s each (real time; a failure runs 30 s).
    ros_episodes: int = 3
    ros_timeout_s: float = 120.0
    methods: tuple[str, ...] = DEFAULT_METHODS
    rgb_steps: int = 600
    #: Steps of the Depth and Pointcloud baselines (atk-train --depth-steps, --pointcloud-steps).
    depth_steps: int = 600
    pointcloud_steps: int = 600
    #: Keep exactly this many keypoints (None: those whose keep-probability
    #: passes atk-train's threshold, the ATK way).
    top_n: int | None = None
    #: Std of the noise (rad) on the executed joint targets of every second
    #: demonstration (DART); 0: clean demonstrations only. The sushi grasp
    #: tolerates 0.01 (4/4 noisy expert episodes succeeded) but not 0.03 (0/5).
    noise_rad: float = 0.01
    #: Evaluation processes (episodes are independent; 2 uses both cores here).
    eval_workers: int = 2
    #: Propagation processes of atk-train (--workers): the candidates' tracks
    #: through every demo, the longest part of training (serial: ~3 s a demo).
    propagation_workers: int = 2
    #: An evaluation episode whose policy has held (not acted) for this many
    #: seconds in a row ends as a failure, as an operator would stop a stuck
    #: robot (0: run to the task's time limit).
    stall_s: float = 5.0
    #: Policy action space and chunk length (atk-train --action-mode/--chunk).
    #: Cartesian steps with 4-step chunks: with true keypoints 16/20 episodes
    #: succeeded from 60 demos, joint-space steps 0/10 (docs/training.md).
    action_mode: str = "tcp"
    chunk: int = 4
    #: Std (px) of the noise on training keypoints (atk-train --keypoint-noise).
    keypoint_noise_px: float = 0.0
    #: h_C of training (propagation) and evaluation: "cpu" (deployment) or
    #: "oracle" (privileged simulator ground truth: the paper's simulator protocol).
    h_c: str = "cpu"
    #: With h_c "cpu": also evaluate the same ATK models with the oracle h_C
    #: ("ATK (oracle h_C)" rows; no retraining, episodes without the CPU tracker:
    #: measured 3.2 s against 10.2 s for the same 63-step episode, so the 80
    #: extra episodes of the default run add roughly 1.5 minutes, estimated).
    oracle_rows: bool = True
    #: Robot-aware occlusion where the policy is deployed: the in-process
    #: evaluation and the ROS graph (the simulator's camera pose as the
    #: extrinsics; the tracker node's default with an extrinsics file): points
    #: the arm covers are predicted from the joint states instead of tracked
    #: (atk_perception.robot_occlusion). Off by default: in-process it lifts
    #: the table-search models from 52/100 to 67/100 RP scenes (paired +0.15
    #: [0.08, 0.22]), but through the ROS graph it did not (41/80 against
    #: 24/40 without), so the in-process figure would overstate the deployed
    #: stack (issue 17; docs/results.md, "Robot-aware occlusion at deployment").
    robot_occlusion: bool = False
    #: Robot-aware occlusion in propagation (the training keypoints): off by
    #: default, its effect on the trained policy is not measured yet.
    train_robot_occlusion: bool = False
    #: Folder of photographs for RB's table and backdrop (evaluation; "" = the
    #: procedural textures). Demonstrations stay under RP, so never see them.
    backgrounds: str = ""

    def __post_init__(self) -> None:
        for name in ("demos", "width", "height", "candidates", "steps", "eval_episodes", "rgb_steps", "depth_steps",
                     "pointcloud_steps", "chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("dagger_rounds", "dagger_episodes", "ros_episodes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 0, got {v!r}")
        if not isinstance(self.eval_workers, int) or self.eval_workers < 1:
            raise ValueError(f"--eval-workers must be an integer >= 1, got {self.eval_workers!r}")
        if not isinstance(self.propagation_workers, int) or self.propagation_workers < 1:
            raise ValueError(f"--workers must be an integer >= 1, got {self.propagation_workers!r}")
        if not (self.noise_rad >= 0):
            raise ValueError(f"--noise must be >= 0 rad, got {self.noise_rad!r}")
        if not (self.keypoint_noise_px >= 0):
            raise ValueError(f"--keypoint-noise must be >= 0 px, got {self.keypoint_noise_px!r}")
        if not (self.stall_s >= 0):
            raise ValueError(f"--stall-s must be >= 0 seconds, got {self.stall_s!r}")
        if self.h_c not in H_C_CHOICES:
            raise ValueError(f"--h-c must be one of {H_C_CHOICES}, got {self.h_c!r}")
        from ..sim.tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)} (or all), got {self.task!r}")
        if not self.train_seeds:
            raise ValueError("--seeds must name at least one training seed")
        if self.demos < 4:
            raise ValueError(f"--demos must be at least 4 (training holds out 20% for validation), got {self.demos}")
        if self.ros_episodes > self.eval_episodes:
            raise ValueError(f"--ros-episodes ({self.ros_episodes}) must be at most --eval-episodes "
                             f"({self.eval_episodes}): the graph runs on the in-process row's scenes")
        if self.backgrounds and not Path(self.backgrounds).is_dir():
            raise ValueError(f"--backgrounds must be a folder of photographs, got {self.backgrounds!r}")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or "ATK" not in self.methods:
            raise ValueError(f"--methods must include ATK and only {METHODS}, got {self.methods}")

    @property
    def needs_depth(self) -> bool:
        """A depth method is asked for: demonstrations record depth (the default run's do not)."""
        return any(m in DEPTH_METHODS for m in self.methods)


# --------------------------------------------------------------------------- output helpers

def _say(msg: str) -> None:
    print(f"[atk-demo] {msg}", flush=True)


def _stage(n: int, title: str) -> float:
    print(f"\n=== {n}. {title} " + "=" * max(0, 60 - len(title)), flush=True)
    return time.perf_counter()


# --------------------------------------------------------------------------- 1. demonstrations

def make_env(cfg: DemoConfig):
    """The simulator of the demonstrations, DAgger and figures; it renders depth only when a depth method
    is asked for (the second pass halves the frame rate: docs/simulation.md)."""
    from ..sim.env import SimConfig, SimEnv

    return SimEnv(SimConfig(width=cfg.width, height=cfg.height, render_depth=cfg.needs_depth,
                            backgrounds=cfg.backgrounds))


def lacks_depth(bag: Path) -> bool:
    """True when the bag holds no depth stream (recorded by a run that asked for no depth method: at
    most the first frame's depth image, for h_C's table search)."""
    from atk_policy.bags import BagTopics, inspect_bag

    want = BagTopics().depth.strip("/")
    return not any(t.name.strip("/").endswith(want) and t.count > 1 for t in inspect_bag(bag).topics)


def rerecord_without_depth(cfg: DemoConfig, paths: Sequence[Path], what: str) -> set[Path]:
    """The finished bags among ``paths`` that must be recorded again because a depth method is asked for
    and they hold no depth; says so once (they are removed and recorded again, with depth)."""
    if not cfg.needs_depth:
        return set()
    old = {p for p in paths if (p / "episode.yaml").is_file() and lacks_depth(p)}
    if old:
        names = sorted(p.name for p in old)
        _say(f"{len(old)} {what} in {cfg.out / 'bags'} were recorded without depth, which "
             f"{', '.join(m for m in cfg.methods if m in DEPTH_METHODS)} need: recording them again with depth "
             f"({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}; expert demos replay the same seeded "
             f"episode, DAgger rollouts are new ones)")
    return old


def collect_demos(cfg: DemoConfig, env) -> list[Path]:
    """Scripted-expert demonstrations under RP, one bag per episode. Every
    second one (odd seeds) is executed with noise on the joint targets and
    labelled with the expert's clean action at each state it reaches (DART),
    so the policy sees recoveries; ``noise_rad`` 0 records clean demos only."""
    from tqdm import tqdm

    from .demonstrations import record_expert_episode, record_relabelled_episode
    from .evaluation import NoisyExpertAgent

    bag_dir = cfg.out / "bags"
    bag_dir.mkdir(parents=True, exist_ok=True)
    bags, failed = [], 0
    redo = rerecord_without_depth(cfg, [bag_dir / f"demo_{seed:03d}" for seed in range(cfg.demos)],
                                  "demonstrations")
    for seed in tqdm(range(cfg.demos), desc="expert demos", unit="ep"):
        path = bag_dir / f"demo_{seed:03d}"
        if (path / "episode.yaml").is_file() and path not in redo:  # done in an earlier run
            bags.append(path)
            continue
        if path.exists():
            shutil.rmtree(path)  # an interrupted bag (or one without the depth now needed): record it again
        if cfg.noise_rad > 0 and seed % 2 == 1:
            res = record_relabelled_episode(env, NoisyExpertAgent(env, cfg.noise_rad, seed), path,
                                            task=cfg.task, seed=seed, perturbations=("RP",),
                                            with_depth=cfg.needs_depth)
        else:
            res = record_expert_episode(env, path, task=cfg.task, seed=seed, perturbations=("RP",),
                                        with_depth=cfg.needs_depth)
        failed += not res.success
        bags.append(path)
    _say(f"{len(bags)} demonstration bags in {bag_dir} ({failed} new ones failed and are labelled so)")
    return bags


def stall_steps(stall_s: float, control_hz: float) -> int | None:
    """``--stall-s`` in control steps (None: no limit)."""
    return int(round(stall_s * control_hz)) if stall_s else None


def collect_dagger(cfg: DemoConfig, env, model_dir: Path, round_idx: int) -> list[Path]:
    """DAgger: roll the ATK policy out (its own states), record the privileged
    expert's action at each visited state as the demonstration."""
    from tqdm import tqdm

    from .demonstrations import record_relabelled_episode

    agent = keypoint_agent(model_dir, cfg.h_c, env, cfg.out / "bags", cfg.task, camera=_camera(cfg, env))
    bag_dir = cfg.out / "bags"
    paths = []
    redo = rerecord_without_depth(cfg, [bag_dir / f"dagger{round_idx}_{i:03d}" for i in range(cfg.dagger_episodes)],
                                  f"DAgger round {round_idx} rollouts")
    for i in tqdm(range(cfg.dagger_episodes), desc=f"DAgger round {round_idx}", unit="ep"):
        seed = 5000 + 100 * round_idx + i
        path = bag_dir / f"dagger{round_idx}_{i:03d}"
        if not (path / "episode.yaml").is_file() or path in redo:
            if path.exists():
                shutil.rmtree(path)
            record_relabelled_episode(env, agent, path, task=cfg.task, seed=seed, perturbations=("RP",),
                                      stall_steps=stall_steps(cfg.stall_s, env.config.control_hz),
                                      with_depth=cfg.needs_depth)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- 2. training

def training_inputs(cfg: DemoConfig, seed: int) -> tuple[DataSource, ATKConfig, BaselineConfig, Path]:
    """(source, config, baselines, track cache) of :func:`atk_policy.pipeline.train` for one training seed:
    every bag so far, ``demo_000``'s first frame as I_can, atk-train's defaults for the rest."""
    from atk_policy.config import (ATKConfig, CandidateConfig, ModelConfig, PropagationConfig, SelectionConfig,
                                   TrainConfig)
    from atk_policy.pipeline import BaselineConfig, DataSource

    source = DataSource(inputs=(str(cfg.out / "bags"),), canonical_episode="demo_000")
    config = ATKConfig(
        candidates=CandidateConfig(num_candidates=cfg.candidates),
        # the oracle h_C knows occlusion already: no robot-aware wrapper around it
        # the simulator's camera pose stands in for the cell's hand-eye calibration: h_C's table search
        # (and robot-aware occlusion, if asked for)
        propagation=PropagationConfig(backend=cfg.h_c, workers=cfg.propagation_workers, camera_extrinsics=(
            str(write_sim_extrinsics(cfg.out / "camera_extrinsics.yaml")) if cfg.h_c != "oracle" else ""),
            robot_occlusion=cfg.train_robot_occlusion),
        model=ModelConfig(action_mode=cfg.action_mode, chunk=cfg.chunk),
        train=TrainConfig(steps=cfg.steps, seed=seed, keypoint_noise_px=cfg.keypoint_noise_px,
                          warmup_steps=min(TrainConfig().warmup_steps, cfg.steps)),
        selection=SelectionConfig(top_n=cfg.top_n))
    manual = "ManualSelect" in cfg.methods
    baselines = BaselineConfig(names=tuple(BASELINE_OF[m] for m in METHODS[1:] if m in cfg.methods),
                               manual_points=manual_points_file(cfg) if manual else None,
                               rgb_steps=cfg.rgb_steps, depth_steps=cfg.depth_steps,
                               pointcloud_steps=cfg.pointcloud_steps)
    return source, config, baselines, cfg.out / "cache" / "tracks"


def manual_points_file(cfg: DemoConfig) -> Path:
    """ManualSelect's points for ``cfg.task`` (config/manual_keypoints/<task>.json, hand-picked on the
    320x240 canonical frame), scaled to the run's resolution and written under ``cfg.out``."""
    from ..graph_tools.graph import config_path

    doc = json.loads(config_path(f"manual_keypoints/{cfg.task}.json").read_text())
    w0, h0 = doc["image_size"]
    sx, sy = cfg.width / w0, cfg.height / h0
    doc["points"] = [{**p, "xy": [(p["xy"][0] + 0.5) * sx - 0.5, (p["xy"][1] + 0.5) * sy - 0.5]}
                     for p in doc["points"]]
    doc["image_size"] = [cfg.width, cfg.height]
    path = cfg.out / "manual_keypoints.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    return path


def train_seed(cfg: DemoConfig, seed: int, tag: str = "") -> Path:
    """ATK + baselines (what `atk-train` runs) on every bag so far, for one training seed. A model folder
    finished by an earlier run is kept; image baselines it lacks (a later run asked for more methods) are
    trained alone beside it (pipeline.train_baselines), a missing keypoint baseline retrains the seed."""
    from dataclasses import replace

    from atk_policy.pipeline import IMAGE_BASELINES, train, train_baselines

    # oracle-trained models live apart: the same --out may hold both protocols
    out = cfg.out / "models" / f"seed{seed}{tag}{'_oracle' if cfg.h_c == 'oracle' else ''}"
    marker = out / "atk_demo_train.json"  # written last: the run finished
    source, config, baselines, track_cache = training_inputs(cfg, seed)
    if (out / "model.json").is_file() and marker.is_file():
        done = json.loads(marker.read_text())
        missing = [b for b in baselines.names if b not in done.get("baselines", [])
                   or not (out / "baselines" / b / "model.json").is_file()]
        if not missing:
            _say(f"model {out} exists, not retrained")
            return out
        if all(b in IMAGE_BASELINES for b in missing):
            _say(f"model {out} exists without the baselines {', '.join(missing)}: training them beside it")
            train_baselines(source, config, replace(baselines, names=tuple(missing)), out)
            done["baselines"] = sorted(set(done.get("baselines", [])) | set(missing))
            marker.write_text(json.dumps(done))
            return out
        _say(f"model {out} exists without the baselines {', '.join(missing)}: retraining seed {seed}")
    _say(f"training seed {seed} -> {out} (baselines: {', '.join(baselines.names) or 'none'})")
    report = train(source, config, baselines, out, track_cache=track_cache)
    print(report.summary)
    marker.write_text(json.dumps({"seed": seed, "config": config.to_dict(), "baselines": list(baselines.names)}))
    return out


def selection_figure(cfg: DemoConfig, model_dir: Path, path: Path) -> Path:
    """The paper's Fig. 8: the canonical frame with ATK's keypoints beside
    RandomSelect's (same N; when trained) and ManualSelect's (the task's
    hand-picked file), three times the training resolution."""
    from atk_perception.keypoint_template import load_model_template
    from atk_policy.baselines import load_manual_points

    from .selection_figure import draw_selection

    atk = load_model_template(model_dir)
    panels = [("ATK", atk.points, list(atk.names))]
    random_dir = method_dirs(model_dir)["RandomSelect"]
    if (random_dir / "model.json").is_file():
        rnd = load_model_template(random_dir)
        panels.append(("RandomSelect", rnd.points, list(rnd.names)))
    h, w = atk.image.shape[:2]
    names, pts = load_manual_points(manual_points_file(dataclasses.replace(cfg, width=w, height=h)), (w, h))
    panels.append(("ManualSelect", pts, names))
    return draw_selection(atk.image, panels, path)


# --------------------------------------------------------------------------- agents

def _camera(cfg: DemoConfig, env):
    c = env.config
    return sim_camera(c.width, c.height) if cfg.robot_occlusion else None


def write_sim_extrinsics(path: Path) -> Path:
    """The simulated camera's pose in the robot base frame, as atk-calibrate writes a real one."""
    from atk_perception.robot_mask import save_extrinsics

    from ..sim import model as sim_model

    path.parent.mkdir(parents=True, exist_ok=True)
    save_extrinsics(path, sim_model.base_t_camera(), info={"source": "simulator camera pose (exact)"})
    return path


def sim_camera(width: int, height: int):
    """The simulated cell camera as the tracker's robot model sees it (K and its pose in the robot base frame)."""
    from atk_perception.robot_occlusion import CameraModel

    from ..sim import model as sim_model

    return CameraModel(sim_model.camera_intrinsics(width, height), sim_model.base_t_camera())


def oracle_correspondence(env, bags: Path | None, task: str):
    """The PRIVILEGED, SIMULATION-ONLY oracle h_C on the live simulator ``env``.
    The model's template (the canonical frame) is found among the recorded
    frames under ``bags`` or, for bags without ground truth, as the first
    frame of the canonical demonstration (seed 0 under RP, demo_000)."""
    from atk_perception.backends import make_correspondence

    from ..sim.ground_truth import SimGroundTruthSource

    source = SimGroundTruthSource(folders=[bags] if bags else (), live_env=env)
    source.add_reset_frame(task, 0, ("RP",), env.config.width, env.config.height)
    return make_correspondence("oracle", ground_truth=source)


def keypoint_agent(model_dir: Path, h_c: str = "cpu", env=None, bags: Path | None = None, task: str = "sushi",
                   camera=None):
    """The deployed pipeline in-process: the tracker node's session and the
    policy node's gate, with their default parameters (config/tracker.yaml,
    config/policy.yaml). camera: a robot_occlusion.CameraModel for
    robot-aware occlusion (as the tracker node with an extrinsics file), or None.
    h_c "oracle" swaps the tracker's h_C for the simulator's ground truth
    (PRIVILEGED, SIMULATION-ONLY; needs the live ``env``; ``camera`` is not
    used: the truth knows what the arm covers)."""
    from atk_perception.backends import make_correspondence
    from atk_perception.keypoint_template import load_model_template
    from atk_perception.robot_occlusion import RobotAwareTracker
    from atk_policy.artifact import load_policy

    from .evaluation import KeypointAgent

    if h_c == "oracle":
        if env is None:
            raise ValueError("the oracle h_C needs the live simulator (env)")
        hc = oracle_correspondence(env, bags, task)
    else:
        hc = make_correspondence(h_c)
        template = load_model_template(model_dir)
        set_geometry = getattr(hc, "set_template_geometry", None)
        if template.depth is not None and set_geometry is not None:
            # the simulator's camera pose stands in for the cell's extrinsics file (the tracker node's
            # camera_extrinsics): h_C's table search with the model's template depth
            from atk_perception.table_search import TemplateGeometry

            cam = camera if camera is not None else sim_camera(*template.size)
            set_geometry(template.image, TemplateGeometry(template.depth, cam.k, cam.base_t_camera))
        if camera is not None:
            hc = RobotAwareTracker(hc, camera)
        return KeypointAgent(load_policy(model_dir), hc, template)
    return KeypointAgent(load_policy(model_dir), hc, load_model_template(model_dir))


def rgb_agent(model_dir: Path):
    from atk_policy.rgb_baseline import load_rgb_policy

    from .evaluation import ImageAgent

    return ImageAgent(load_rgb_policy(model_dir))


def depth_agent(method: str, model_dir: Path):
    """The Depth or Pointcloud baseline acting on the simulator's depth image (the env must render depth)."""
    from atk_policy.depth_baseline import load_depth_policy
    from atk_policy.pointcloud_baseline import load_pointcloud_policy

    from .evaluation import ImageAgent

    load = {"Depth": load_depth_policy, "Pointcloud": load_pointcloud_policy}[method]
    return ImageAgent(load(model_dir), observation="depth_mm")


def method_dirs(model_dir: Path) -> dict[str, Path]:
    return {"ATK": model_dir} | {m: model_dir / "baselines" / b for m, b in BASELINE_OF.items()}


def make_agent(method: str, path: Path, h_c: str = "cpu", env=None, bags: Path | None = None,
               task: str = "sushi", camera=None):
    if method == "RGB":
        return rgb_agent(path)
    if method in DEPTH_METHODS:
        return depth_agent(method, path)
    return keypoint_agent(path, h_c, env, bags, task, camera)


# --------------------------------------------------------------------------- 3a. ROS graph

ROS_ROW = "ATK (ROS graph)"


def evaluation_scenes(cfg: DemoConfig) -> list[int]:
    """The evaluation scenes (env seeds), the same for every method and row."""
    return [10_000 + i for i in range(cfg.eval_episodes)]


def ros_graph_episodes(cfg: DemoConfig, models: dict[int, Path]) -> list[dict]:
    """ATK through the real ROS graph (`atk-graph deploy sim:=true`: sim,
    tracker and policy nodes over DDS), one graph per training seed, on the
    first ``cfg.ros_episodes`` evaluation scenes under RP; results are
    appended to eval/ros_episodes.jsonl as they come (resumed)."""
    from ..graph_tools.ros_episode import run_graph_episodes

    path = cfg.out / "eval" / "ros_episodes.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    # episodes of an earlier run with the other robot-occlusion setting are kept in the file, not counted
    results = [r for r in results if recorded_robot_occlusion(r) == bool(cfg.robot_occlusion)]
    scenes = evaluation_scenes(cfg)[:cfg.ros_episodes]
    with open(path, "a") as log:
        for ts, model_dir in models.items():
            todo = [s for s in scenes if not any(r["train_seed"] == ts and r["seed"] == s for r in results)]
            if not todo:
                continue

            def record(r: dict, ts: int = ts) -> None:
                r = {"train_seed": ts, "condition": "RP", "robot_occlusion": bool(cfg.robot_occlusion), **r}
                results.append(r)
                log.write(json.dumps(r) + "\n")
                log.flush()
                _say(f"ROS graph, seed {ts}, scene {r['seed']}: success={r['success']} steps={r['steps']} "
                     f"transfers={r['transfers']} {r['error'] or r['message']}")

            run_graph_episodes(model_dir=model_dir, task=cfg.task, seeds=todo, perturbations=CONDITIONS["RP"],
                               width=cfg.width, height=cfg.height, timeout_s=cfg.ros_timeout_s,
                               log_dir=cfg.out / "ros" / f"seed{ts}", stall_s=cfg.stall_s, on_result=record,
                               camera_extrinsics=write_sim_extrinsics(cfg.out / "camera_extrinsics.yaml"),
                               robot_occlusion=cfg.robot_occlusion)
    return [r for r in results if r["seed"] in scenes and r["train_seed"] in models]


def ros_graph_cell(results: list[dict], models: dict[int, Path]) -> CellStats:
    """Success per training seed of the graph episodes (with the pooled count)."""
    cell = CellStats()
    for ts in models:
        hits = [r["success"] for r in results if r["train_seed"] == ts]
        if hits:
            cell.add(hits)
    return cell


# --------------------------------------------------------------------------- 3b. batch evaluation

_WORKER: dict = {}


def _worker_init(width: int, height: int, parent_pid: int | None = None, backgrounds: str = "") -> None:
    """Evaluation worker: its own simulator (one EGL context per process) and
    one torch thread (two workers share the machine's cores); with
    ``parent_pid``, it ends when the atk-demo process that started it dies."""
    import torch

    if parent_pid is not None:
        from atk_policy.worker_process import exit_with_parent

        exit_with_parent(parent_pid)

    torch.set_num_threads(1)
    from ..sim.env import SimConfig, SimEnv

    _WORKER["env"] = SimEnv(SimConfig(width=width, height=height, render_depth=False, backgrounds=backgrounds))
    _WORKER["agents"] = {}


def _worker_episode(job: tuple) -> dict:
    method, h_c, train_seed, cond, seed, path, task, stall_s, bags, robot_aware = job
    agents, env = _WORKER["agents"], _WORKER["env"]
    if (method, h_c, train_seed) not in agents:
        c = env.config
        agents[(method, h_c, train_seed)] = make_agent(method, Path(path), h_c, env, Path(bags), task,
                                                       sim_camera(c.width, c.height) if robot_aware else None)
    # the oracle's keypoints come from the scene state, not the pixels: no rendering;
    # only the depth methods pay for the depth pass
    env.blank_frames = method not in IMAGE_METHODS and h_c == "oracle"
    env.render_depth = method in DEPTH_METHODS
    agent = agents[(method, h_c, train_seed)]
    session = getattr(agent, "session", None)
    transfers0 = session.transfers if session is not None else 0
    res = run_episode(env, agent, task, seed, CONDITIONS[cond],
                      stall_steps=stall_steps(stall_s, env.config.control_hz))
    return {"method": method, "h_c": h_c, "train_seed": train_seed, "condition": cond, "seed": seed,
            "success": res.success, "steps": res.steps, "error": res.error,
            # what the deploy graph's policy/status would have said (KeypointAgent's counters)
            "holds": getattr(agent, "holds", 0), "hold_reasons": dict(getattr(agent, "hold_reasons", {})),
            "frames_dropped": getattr(agent, "frames_dropped", 0),
            "transfers": session.transfers - transfers0 if session is not None else None,
            "robot_occlusion": bool(robot_aware)}


def recorded_robot_occlusion(result: dict) -> bool:
    """The robot-occlusion setting an episode result (evaluation, ROS graph, bench_graph_parity) was
    measured with; results from before the field was recorded were measured without it."""
    return bool(result.get("robot_occlusion", False))


def robot_aware(cfg: DemoConfig, method: str, h_c: str) -> bool:
    """Whether ``method`` with ``h_c`` is evaluated with robot-aware occlusion: keypoint methods with a
    tracker (the oracle knows what the arm covers; the image methods have no keypoints)."""
    return bool(cfg.robot_occlusion) and h_c != "oracle" and method not in IMAGE_METHODS


def evaluation_rows(cfg: DemoConfig) -> list[tuple[str, str]]:
    """(method, h_C) pairs to evaluate: every method with ``cfg.h_c``, plus ATK
    with the oracle h_C when ``cfg.oracle_rows`` (same models, no retraining)."""
    rows = [(m, cfg.h_c) for m in cfg.methods]
    if cfg.h_c != "oracle" and cfg.oracle_rows:
        rows.append(("ATK", "oracle"))
    return rows


def evaluate(cfg: DemoConfig, models: dict[int, Path]) -> dict[str, dict[str, CellStats]]:
    """Every method x training seed x condition x evaluation episode, in
    ``cfg.eval_workers`` processes; results are appended to eval/episodes.jsonl
    as they come, so an interrupted evaluation resumes."""
    import multiprocessing as mp

    from tqdm import tqdm

    results_path = cfg.out / "eval" / "episodes.jsonl"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple, bool] = {}

    def key(r: dict) -> tuple:   # runs before h_C was recorded used the CPU one, and no robot occlusion
        return (r["method"], r.get("h_c", "cpu"), r["train_seed"], r["condition"], r["seed"],
                recorded_robot_occlusion(r))

    if results_path.is_file():  # resume
        for line in results_path.read_text().splitlines():
            r = json.loads(line)
            done[key(r)] = r["success"]
    eval_seeds = evaluation_scenes(cfg)  # the same scenes for every method
    rows = evaluation_rows(cfg)
    jobs = [(m, h, ts, c, seed, str(method_dirs(d)[m]), cfg.task, cfg.stall_s, str(cfg.out / "bags"),
             robot_aware(cfg, m, h))
            for m, h in rows for ts, d in models.items() for c in CONDITIONS for seed in eval_seeds
            if (m, h, ts, c, seed, robot_aware(cfg, m, h)) not in done]
    total = len(rows) * len(models) * len(CONDITIONS) * len(eval_seeds)
    bar = tqdm(total=total, desc="evaluation", unit="ep", initial=total - len(jobs))
    with open(results_path, "a") as log:
        def record(r: dict) -> None:
            done[key(r)] = r["success"]
            log.write(json.dumps(r) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix_str(f"{row_name(r['method'], r['h_c'])} s{r['train_seed']} {r['condition']}")

        if cfg.eval_workers > 1 and len(jobs) > 1:
            # spawn: no forked EGL context or torch thread pool
            with mp.get_context("spawn").Pool(cfg.eval_workers, _worker_init,
                                               (cfg.width, cfg.height, os.getpid(), cfg.backgrounds)) as pool:
                for r in pool.imap_unordered(_worker_episode, jobs):
                    record(r)
        else:
            _worker_init(cfg.width, cfg.height, backgrounds=cfg.backgrounds)
            for job in jobs:
                record(_worker_episode(job))
    bar.close()
    table: dict[str, dict[str, CellStats]] = {row_name(m, h): {c: CellStats() for c in CONDITIONS}
                                              for m, h in rows}
    for m, h in rows:
        for ts in models:
            for c in CONDITIONS:
                aware = robot_aware(cfg, m, h)
                table[row_name(m, h)][c].add([done[(m, h, ts, c, seed, aware)] for seed in eval_seeds])
    return table


# --------------------------------------------------------------------------- 4. report

def condition_grid(cfg: DemoConfig, env, model_dir: Path, path: Path) -> None:
    """One evaluation scene under each condition, with ATK's keypoints as
    transferred by h_C drawn on it (green: confident, red: not)."""
    import cv2

    agent = keypoint_agent(model_dir, cfg.h_c, env, cfg.out / "bags", cfg.task, camera=_camera(cfg, env))
    tiles = []
    for cond, perturbations in CONDITIONS.items():
        obs = env.reset(task=cfg.task, seed=10_000, perturbations=perturbations)
        agent.reset(obs)
        img = cv2.cvtColor(obs.rgb, cv2.COLOR_RGB2BGR)
        for (x, y), c in zip(agent.points, agent.confidence):
            colour = (0, 200, 0) if c >= 0.5 else (0, 0, 230)
            cv2.circle(img, (int(round(x)), int(round(y))), 4, colour, 1, cv2.LINE_AA)
        cv2.putText(img, cond, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    cv2.imwrite(str(path), np.hstack(tiles))


def inprocess_cell(cfg: DemoConfig, models: dict[int, Path], method: str, condition: str,
                   scenes: Sequence[int], h_c: str = "cpu") -> CellStats:
    """In-process success of ``method`` per training seed on ``scenes`` only (from eval/episodes.jsonl)."""
    rows = [json.loads(line) for line in (cfg.out / "eval" / "episodes.jsonl").read_text().splitlines()]
    cell = CellStats()
    for ts in models:
        hits = [r["success"] for r in rows if r["method"] == method and r["condition"] == condition
                and r["train_seed"] == ts and r["seed"] in scenes and r.get("h_c", "cpu") == h_c]
        if hits:
            cell.add(hits)
    return cell


def write_report(cfg: DemoConfig, table: dict[str, dict[str, CellStats]], extra: dict,
                 notes: Sequence[str] = ()) -> str:
    conds = list(CONDITIONS)
    md = format_table(table, conds)
    more = "".join(f"{n}\n\n" for n in notes)
    (cfg.out / "results.md").write_text(
        f"# ATK robustness table ({cfg.task}, simulation)\n\n"
        f"Success rate over {cfg.eval_episodes} evaluation episodes per cell, mean ± std over "
        f"training seeds {list(cfg.train_seeds)}. Conditions are cumulative: RB = RP + background, "
        f"+RO adds distractors, +Light changes the lighting. In brackets: successes / episodes pooled "
        f"over seeds, with the 95% Wilson interval.\n\n"
        f"Rows \"(CPU h_C)\": keypoints from the CPU tracker, as deployed on the robot. Rows \"(oracle h_C)\": "
        f"keypoints from the simulator's ground truth (PRIVILEGED, SIMULATION-ONLY; the paper's simulator "
        f"protocol): with --h-c cpu the same ATK models evaluated with true keypoints, with --h-c oracle "
        f"trained (propagation) and evaluated with them. Rows without an h_C (RGB, Depth, Pointcloud) act on the "
        f"camera's colour or depth image, without keypoints.\n\n{md}\n\n{more}"
        f"Run settings: `{json.dumps(extra.get('config', {}))}`\n")
    (cfg.out / "results.csv").write_text(table_csv(table, conds))
    return md


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="atk-demo",
        description="The whole ATK loop in simulation: expert demos -> bags -> ATK training (+ FullSet, "
                    "RandomSelect, RGB baselines; --methods all adds ManualSelect and the Depth and Pointcloud "
                    "baselines) -> deployment through the ROS graph -> robustness table "
                    "under RP, RB, RO and Light (paper tables 1-3).")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: runs/<UTC date-time>); an existing one is resumed")
    p.add_argument("--task", default="sushi",
                   help="simulated task: sushi, glass_lid, clock_button, clock_hand, or all (each in turn, "
                        "under --out/<task>; default: sushi)")
    p.add_argument("--demos", type=int, default=None, help="expert demonstrations (default: 60; --full 100)")
    p.add_argument("--size", default="320x240", help="camera resolution WxH (default: 320x240)")
    p.add_argument("--candidates", type=int, default=64, help="candidate keypoints C (default: 64)")
    p.add_argument("--seeds", default=None, help="training seeds, comma-separated (default: 0; --full 0,1,2)")
    p.add_argument("--steps", type=int, default=2000,
                   help="optimiser steps per training run (default: 2000; the mask settles by ~1500)")
    p.add_argument("--chunk", type=int, default=4,
                   help="action chunk length K: the policy predicts K Cartesian steps at once (atk-train --chunk; "
                        "default: 4)")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help="evaluation episodes per method, seed and condition (default: 4; --full 20)")
    p.add_argument("--dagger-rounds", type=int, default=None,
                   help="DAgger rounds: the expert labels states the learned ATK policy reaches "
                        "(default: 0; --quick: 1, so that CI runs the path)")
    p.add_argument("--dagger-episodes", type=int, default=10, help="rollouts per DAgger round (default: 10)")
    p.add_argument("--ros-episodes", type=int, default=None,
                   help="ATK episodes per training seed deployed through the real ROS graph over DDS, on the "
                        "first evaluation scenes under RP: the table's 'ATK (ROS graph)' row (default: 3; "
                        "--full 20; --quick 1; 0 skips)")
    p.add_argument("--top-n", type=int, default=None,
                   help="keep exactly N keypoints (default: those the mask keeps; --quick: 4)")
    p.add_argument("--noise", type=float, default=0.01,
                   help="std (rad) of noise on the executed joint targets of every second demonstration, "
                        "labelled with the expert's clean actions (DART); 0: clean demos only (default: 0.01)")
    p.add_argument("--keypoint-noise", type=float, default=0.0, metavar="PX",
                   help="std (px) of Gaussian noise on the training keypoints (atk-train --keypoint-noise; "
                        "default: 0)")
    p.add_argument("--robot-occlusion", action=argparse.BooleanOptionalAction, default=False,
                   help="predict the points the arm covers from the joint states (robot-aware occlusion) in "
                        "the evaluation and the ROS graph, with the simulator's camera pose, as the tracker "
                        "node does with an extrinsics file (default: off: in-process it helps, through the "
                        "ROS graph it did not, docs/results.md)")
    p.add_argument("--train-robot-occlusion", action="store_true",
                   help="robot-aware occlusion in propagation too, for the training keypoints (default: off)")
    p.add_argument("--eval-workers", type=int, default=2,
                   help="parallel evaluation processes (default: 2)")
    p.add_argument("--workers", type=int, default=2,
                   help="parallel processes propagating the candidates through the demos (default: 2)")
    p.add_argument("--stall-s", type=float, default=5.0,
                   help="an evaluation episode whose policy held this long in a row fails (0: no limit; "
                        "default: 5)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"methods to train and evaluate, comma-separated, or 'all' ({','.join(METHODS)}); "
                        f"ManualSelect uses the hand-picked points of config/manual_keypoints/<task>.json; "
                        f"Depth (the RGB CNN on the depth image) and Pointcloud (a PointNet on the depth "
                        f"back-projected with the camera's K, cropped to 0.25-1.2 m and above the table) make "
                        f"the demonstrations record depth (demos of an earlier --out without it are recorded "
                        f"again) and their evaluation render it (default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--h-c", dest="h_c", choices=H_C_CHOICES, default="cpu",
                   help="h_C for training propagation and evaluation: 'cpu' (the tracker the robot runs; "
                        "default) or 'oracle' (PRIVILEGED, SIMULATION-ONLY true keypoints from the simulator: "
                        "the paper's simulator protocol; no ROS-graph episode)")
    p.add_argument("--no-oracle-rows", dest="oracle_rows", action="store_false",
                   help="with --h-c cpu, skip the 'ATK (oracle h_C)' rows (the same ATK models evaluated "
                        "with the privileged simulator keypoints; cheap: no tracker runs)")
    p.add_argument("--backgrounds", default="", metavar="DIR",
                   help="folder of photographs (png/jpg/...) that RB puts on the table and the backdrop, one "
                        "drawn per scene, e.g. pictures of your own lab (default: procedural textures). The "
                        "evaluation's RB, +RO and +Light columns then test the policy against them; results are "
                        "kept per --out, so use a new one")
    p.add_argument("--full", action="store_true",
                   help="paper-sized run: 100 demos, 3 training seeds, 20 evaluation episodes per cell")
    p.add_argument("--quick", action="store_true",
                   help="a few episodes of everything (what CI runs; the numbers mean little)")
    return p


def config_from_args(args: argparse.Namespace, task: str | None = None) -> DemoConfig:
    """The run's settings; ``task`` overrides ``args.task`` (one task of ``--task all``)."""
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 320x240, got {args.size!r}") from None
    demos, seeds, evals, ros = 60, "0", 4, 3
    steps, dagger_eps, rgb_steps, top_n = args.steps, args.dagger_episodes, 600, args.top_n
    depth_steps = pointcloud_steps = 600
    dagger_rounds = args.dagger_rounds or 0
    if args.full:
        demos, seeds, evals, steps, ros = 100, "0,1,2", 20, max(steps, 3000), 20
    if args.quick:
        # 150 steps cannot settle the mask: keep the 4 most probable keypoints
        demos, seeds, evals, steps, dagger_eps, rgb_steps, ros = 6, "0", 1, 150, 2, 30, 1
        depth_steps = pointcloud_steps = 30
        dagger_rounds = 1 if args.dagger_rounds is None else args.dagger_rounds
        top_n = top_n or 4
    out = args.out or Path("runs") / datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    try:
        train_seeds = tuple(int(s) for s in (args.seeds or seeds).split(","))
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if task is not None and task != args.task:
        out = Path(out) / task
    return DemoConfig(out=Path(out), task=task or args.task, demos=args.demos or demos, width=w, height=h,
                      candidates=args.candidates, train_seeds=train_seeds, steps=steps,
                      eval_episodes=args.eval_episodes or evals, dagger_rounds=dagger_rounds,
                      dagger_episodes=dagger_eps,
                      ros_episodes=min(ros, args.eval_episodes or evals) if args.ros_episodes is None
                      else args.ros_episodes,
                      methods=METHODS if args.methods.strip() == "all"
                      else tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                      rgb_steps=rgb_steps, depth_steps=depth_steps, pointcloud_steps=pointcloud_steps,
                      top_n=top_n, eval_workers=args.eval_workers, noise_rad=args.noise,
                      propagation_workers=args.workers,
                      stall_s=args.stall_s, keypoint_noise_px=args.keypoint_noise, h_c=args.h_c, chunk=args.chunk,
                      oracle_rows=args.oracle_rows, robot_occlusion=args.robot_occlusion,
                      train_robot_occlusion=args.train_robot_occlusion,
                      backgrounds=str(Path(args.backgrounds).expanduser().resolve()) if args.backgrounds else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..sim.tasks import TASKS

    tasks = list(TASKS) if args.task == "all" else [args.task]
    try:
        if args.task == "all" and args.out is None:
            args.out = Path("runs") / datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        cfgs = [config_from_args(args, t if args.task == "all" else None) for t in tasks]
    except ValueError as exc:
        print(f"atk-demo: error: {exc}", file=sys.stderr)
        return 2
    for cfg in cfgs:
        if len(cfgs) > 1:
            _say(f"task {cfg.task} ({cfgs.index(cfg) + 1} of {len(cfgs)}) -> {cfg.out}")
        rc = run(cfg)
        if rc:
            return rc
    return 0


def run(cfg: DemoConfig) -> int:
    """Every stage for one task (resumed where ``cfg.out`` has results)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    cfg.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    (cfg.out / "config.json").write_text(json.dumps(settings, indent=1))
    _say(f"output: {cfg.out}")
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    env = make_env(cfg)

    t = _stage(1, f"expert demonstrations ({cfg.task}, {cfg.demos} episodes, {cfg.width}x{cfg.height})")
    collect_demos(cfg, env)
    timings["demos"] = time.perf_counter() - t

    t = _stage(2, f"training: ATK + baselines, seeds {list(cfg.train_seeds)}")
    models = {s: train_seed(cfg, s) for s in cfg.train_seeds}
    for r in range(1, cfg.dagger_rounds + 1):
        _say(f"DAgger round {r}: rolling out the ATK policy (seed {cfg.train_seeds[0]}), expert relabels")
        collect_dagger(cfg, env, models[cfg.train_seeds[0]], r)
        models = {s: train_seed(cfg, s, tag=f"_dagger{r}") for s in cfg.train_seeds}
    timings["training"] = time.perf_counter() - t
    first = models[cfg.train_seeds[0]]
    selection_figure(cfg, first, cfg.out / "selected_keypoints.png")

    ros_results: list[dict] = []
    if cfg.ros_episodes and cfg.h_c == "oracle":
        _say("no ROS-graph episodes with --h-c oracle: the oracle is simulation-only and in-process")
    elif cfg.ros_episodes:
        t = _stage(3, f"deployment through the ROS graph (sim + tracker + policy nodes over DDS): ATK on "
                      f"{cfg.ros_episodes} RP scenes x {len(models)} seeds")
        ros_results = ros_graph_episodes(cfg, models)
        timings["ros"] = time.perf_counter() - t

    t = _stage(4, f"evaluation: {len(evaluation_rows(cfg))} rows x {len(CONDITIONS)} conditions x "
                  f"{cfg.eval_episodes} episodes x {len(models)} seeds")
    table = evaluate(cfg, models)
    condition_grid(cfg, env, first, cfg.out / "conditions.png")
    timings["evaluation"] = time.perf_counter() - t

    _stage(5, "results")
    notes = []
    if ros_results:
        atk = row_name("ATK", cfg.h_c)
        table = {m: cells for m, cells in table.items() if m == atk} | {
            ROS_ROW: {"RP": ros_graph_cell(ros_results, models)}} | {
            m: cells for m, cells in table.items() if m != atk}
        scenes = evaluation_scenes(cfg)[:cfg.ros_episodes]
        same = inprocess_cell(cfg, models, "ATK", "RP", scenes)
        notes.append(f"{ROS_ROW}: the same ATK models deployed through the ROS graph (sim, tracker and policy "
                     f"nodes over DDS) on the first {len(scenes)} RP scenes; in-process ATK on those scenes: "
                     f"{same.fmt()} (docs/deployment.md, \"Latency\").")
    md = write_report(cfg, table, {"config": settings}, notes)
    timings["total"] = time.perf_counter() - t_all
    (cfg.out / "summary.json").write_text(json.dumps(
        {"timings_s": timings, "ros_episodes": ros_results,
         "table": {m: {c: {"mean": cell.mean, "std": cell.std, "rates": cell.rates,
                           "successes": cell.successes, "episodes": cell.episodes,
                           "wilson95": list(cell.interval)}
                       for c, cell in cells.items()} for m, cells in table.items()}}, indent=1))
    print(md)
    print(f"\nselected keypoints: {cfg.out / 'selected_keypoints.png'}")
    print(f"evaluation conditions: {cfg.out / 'conditions.png'}")
    print(f"table: {cfg.out / 'results.md'}, {cfg.out / 'results.csv'}")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
