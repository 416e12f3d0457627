"""The ROS graphs of atk-ros, declared once.

ROS-free and launch-free: plain dataclasses describing which nodes a graph
runs (package, executable, node name, parameter files from
``atk_bringup/config``, parameter overrides taken from launch arguments,
remappings, the launch-argument values under which each node runs) and the
launch arguments themselves (name, default, description, choices).

Two consumers build on this declaration, so that what the launch files start
is exactly what the launch-free runner starts:

* ``atk_bringup.graph_tools.launch_builder`` turns a :class:`Graph` into a
  ``launch.LaunchDescription`` (used by ``launch/*.launch.py``);
* :func:`resolve` turns a :class:`Graph` plus argument values into concrete
  command lines (used by ``atk-graph``, :mod:`atk_bringup.graph_tools.runner`).

Graphs: ``deploy`` (camera or simulator, tracker, policy, driver),
``record`` (camera or simulator, driver, recorder node or ``ros2 bag
record``), ``sim`` (the simulator alone).

Exit policy: every node and process is ``required`` unless declared
otherwise: when one exits on its own (crash, bad parameter, exit code 2 for
an operator error), the whole graph is stopped and the launcher exits
non-zero. Each one is on the path from the camera to the arm (or to the
bag); a graph with a dead tracker, policy, simulator, driver or recorder is
not a working robot, and keeping the rest running only hides the failure.

Arguments are finished by :func:`prepare_values` before anything starts (the
launch files run it in an ``OpaqueFunction``, the runner in
:func:`resolve`): a ``required`` argument left empty is refused in one line,
``model:=latest`` becomes the newest model an ``atk-demo`` run trained under
``./runs``, and ``sim_width``/``sim_height`` ``auto`` become the image size
the model was trained at (its ``model.json``), so the simulated camera
renders the frames the policy expects.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

PACKAGE = "atk_bringup"
BOOL_CHOICES = ("true", "false")
LOG_LEVELS = ("debug", "info", "warn", "error")


class GraphError(ValueError):
    """A graph cannot be resolved: bad argument, missing file or executable."""


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    choices: Optional[tuple[str, ...]] = None
    #: An empty value is refused before anything starts (one line naming the argument).
    required: bool = False
    #: The argument names a model folder; the value ``latest`` means the newest atk-demo model.
    model: bool = False
    #: The value ``auto`` takes this entry of the model's image size ("width" or "height"),
    #: read from the model folder named by ``model_arg``.
    auto_from_model: Optional[str] = None
    model_arg: str = "model"

    def __post_init__(self) -> None:
        if not self.description:
            raise ValueError(f"LaunchArgument.description of {self.name!r} must not be empty")
        if self.auto_from_model not in (None, "width", "height"):
            raise ValueError(f"LaunchArgument.auto_from_model of {self.name!r} must be 'width' or 'height', "
                             f"got {self.auto_from_model!r}")
        if self.choices is not None and self.default not in self.choices:
            raise ValueError(f"LaunchArgument.default {self.default!r} of {self.name!r} is not one of "
                             f"its choices {list(self.choices)}")


@dataclass(frozen=True)
class When:
    """True when launch argument ``arg`` equals ``value`` (differs, with ``negate``)."""

    arg: str
    value: str = "true"
    negate: bool = False

    def holds(self, values: Mapping[str, str]) -> bool:
        return (values[self.arg] == self.value) != self.negate

    def __str__(self) -> str:
        return f"{self.arg}{'!=' if self.negate else '=='}{self.value}"


@dataclass(frozen=True)
class ParamFromArg:
    """Node parameter ``param`` set from launch argument ``arg``, typed ``kind``."""

    param: str
    arg: str
    kind: str = "str"  # one of "str", "bool", "int", "float"
    # When the argument's value is "auto", take the value of this argument instead.
    auto_from: Optional[str] = None

    def value(self, values: Mapping[str, str]) -> str:
        v = values[self.arg]
        return values[self.auto_from] if self.auto_from is not None and v == "auto" else v

    def __post_init__(self) -> None:
        if self.kind not in ("str", "bool", "int", "float"):
            raise ValueError(f"ParamFromArg.kind must be str/bool/int/float, got {self.kind!r}")


@dataclass(frozen=True)
class NodeSpec:
    package: str
    executable: str
    name: str
    param_files: tuple[str, ...] = ()  # file names under atk_bringup/config
    params_from_args: tuple[ParamFromArg, ...] = ()
    remappings: tuple[tuple[str, str], ...] = ()
    when: tuple[When, ...] = ()  # all must hold
    description: str = ""
    #: Exits on its own -> the whole graph is stopped (launch: on_exit shutdown; atk-graph: exit 1).
    required: bool = True


@dataclass(frozen=True)
class ProcessSpec:
    """A plain process (not a ROS node), e.g. ``ros2 bag record``."""

    name: str
    cmd: tuple[str, ...]  # literal strings; "{arg}" is replaced by that argument's value
    when: tuple[When, ...] = ()
    cwd_arg: Optional[str] = None  # launch argument naming the working directory
    description: str = ""
    required: bool = True


@dataclass(frozen=True)
class Graph:
    name: str
    description: str
    arguments: tuple[LaunchArgument, ...]
    nodes: tuple[NodeSpec, ...]
    processes: tuple[ProcessSpec, ...] = ()

    def __post_init__(self) -> None:
        known = {a.name for a in self.arguments}
        for item in (*self.nodes, *self.processes):
            used = [w.arg for w in item.when]
            if isinstance(item, NodeSpec):
                used += [p.arg for p in item.params_from_args]
                used += [p.auto_from for p in item.params_from_args if p.auto_from]
            if isinstance(item, ProcessSpec):
                used += [a for a in _placeholders(item.cmd)] + ([item.cwd_arg] if item.cwd_arg else [])
            for arg in used:
                if arg not in known:
                    raise ValueError(f"Graph {self.name!r}: {item.name!r} refers to undeclared argument {arg!r}")
        for a in self.arguments:
            if a.auto_from_model is not None and a.model_arg not in known:
                raise ValueError(f"Graph {self.name!r}: argument {a.name!r} takes its size from undeclared "
                                 f"argument {a.model_arg!r}")

    def argument(self, name: str) -> LaunchArgument:
        for a in self.arguments:
            if a.name == name:
                return a
        raise GraphError(f"graph {self.name!r} has no argument {name!r}; it has: "
                         f"{', '.join(a.name for a in self.arguments)}")


def _placeholders(cmd: Sequence[str]) -> list[str]:
    return [part[1:-1] for part in cmd if part.startswith("{") and part.endswith("}")]


# --- the declaration -------------------------------------------------------

_USE_SIM_TIME_ARG = LaunchArgument(
    "use_sim_time", "auto", "Nodes follow the /clock topic instead of the wall clock; auto: when sim:=true "
    "(the simulator stamps its images with sim time and publishes /clock).", ("auto", "true", "false"))
_LOG_LEVEL_ARG = LaunchArgument("log_level", "info", "Log level of every node.", LOG_LEVELS)
_TASKS = ("sushi", "glass_lid", "clock_button")


def _task_arg(in_sim: str) -> LaunchArgument:
    return LaunchArgument("task", "sushi", f"Simulated task{in_sim}.", _TASKS)


def _seed_arg(in_sim: str) -> LaunchArgument:
    return LaunchArgument("seed", "0", f"Seed of the first simulated episode{in_sim}.")


# Graphs with a sim argument say when a simulator argument applies; the sim
# graph has no such argument (its simulator always runs).
_WITH_SIM = " (sim:=true)"


_SIM_ARG = LaunchArgument("sim", "false", "Run in the MuJoCo simulator instead of the real camera and UR arm "
                          "(the simulator then publishes the camera and joint-state topics).", BOOL_CHOICES)
_CAMERA_ARG = LaunchArgument("camera", "kinect", "Camera source on the real robot: the Azure Kinect, a video "
                             "file (argument video) or none (frames come from elsewhere, e.g. a bag). Ignored "
                             "with sim:=true.", ("kinect", "video", "none"))
_VIDEO_ARG = LaunchArgument("video", "", "Video file played as the camera with camera:=video.")
_ROBOT_IP_ARG = LaunchArgument("robot_ip", "192.168.56.101", "IP address of the UR controller (URSim's default "
                               "shown). Ignored with sim:=true.")
_SIM_TIME = ParamFromArg("use_sim_time", "use_sim_time", "bool", auto_from="sim")

_REAL = When("sim", "false")
_SIMULATED = When("sim", "true")


# The simulated camera's resolution. A policy reads keypoints in the pixels of
# the frames it was trained on, so deploy renders at the model's size by
# default (auto); atk-demo trains at 320x240, a 640x480 render put the policy
# in FAULT. The tracker rescales only the template, never the keypoints.
def _sim_size_args(in_sim: str, from_model: bool) -> tuple[LaunchArgument, ...]:
    def text(what: str) -> str:
        return f"sim:=true: {what}" if in_sim else what[0].upper() + what[1:]

    if not from_model:
        return (LaunchArgument("sim_width", "640", text("width of the simulated camera image in pixels.")),
                LaunchArgument("sim_height", "480", text("height of the simulated camera image in pixels.")))
    return (LaunchArgument("sim_width", "auto", text("width of the simulated camera image in pixels; auto: the "
                           "width the model was trained at (its model.json)."), auto_from_model="width"),
            LaunchArgument("sim_height", "auto", text("height of the simulated camera image in pixels; auto: the "
                           "height the model was trained at (its model.json)."), auto_from_model="height"))


def _sim_node(when: tuple[When, ...]) -> NodeSpec:
    # The simulator is the clock source (it publishes /clock), so it never
    # follows use_sim_time itself.
    return NodeSpec("atk_bringup", "sim_node", "sim", ("sim.yaml",),
                    (ParamFromArg("task", "task"), ParamFromArg("seed", "seed", "int"),
                     ParamFromArg("expert", "expert", "bool"), ParamFromArg("width", "sim_width", "int"),
                     ParamFromArg("height", "sim_height", "int")), (), when,
                    "MuJoCo simulation of the UR5e cell: camera, joint states, /clock, episodes.")


def _camera_node() -> NodeSpec:
    return NodeSpec("atk_perception", "camera_node", "camera", ("camera.yaml",),
                    (ParamFromArg("backend", "camera"), ParamFromArg("video_path", "video"), _SIM_TIME), (),
                    (_REAL, When("camera", "none", negate=True)), "Colour (and depth) frames from the camera.")


def _driver_node() -> NodeSpec:
    return NodeSpec("atk_bringup", "ur_driver_node", "ur_driver", ("ur_driver.yaml",),
                    (ParamFromArg("robot_ip", "robot_ip"), _SIM_TIME), (), (_REAL,),
                    "UR5e + gripper driver: joint states out, joint targets in (starts disarmed).")


DEPLOY = Graph(
    "deploy",
    "Run a trained ATK policy: camera (or simulator), keypoint tracker, policy node, UR driver.",
    (
        _SIM_ARG,
        LaunchArgument("model", "", "Folder of the trained policy (safetensors weights + JSON); the tracker "
                       "and the policy load the same one. Required. latest: the newest model an atk-demo run "
                       "trained under ./runs (printed at start).", required=True, model=True),
        _ROBOT_IP_ARG,
        LaunchArgument("tracker_backend", "cpu", "Keypoint tracker: the CPU tracker or CoTracker.",
                       ("cpu", "cotracker")),
        LaunchArgument("camera_extrinsics", "", "Camera pose in the robot base frame (atk-calibrate's YAML; "
                       "atk-demo writes the simulator's as <run>/camera_extrinsics.yaml): the tracker then "
                       "predicts the keypoints the robot covers (robot_occlusion) and, with a model trained on "
                       "bags with depth, transfers the objects on the table in 3D. Empty: off."),
        LaunchArgument("robot_occlusion", "true", "With camera_extrinsics: the tracker predicts the keypoints "
                       "the robot covers from the joint states.", BOOL_CHOICES),
        _CAMERA_ARG,
        _VIDEO_ARG,
        _task_arg(_WITH_SIM),
        _seed_arg(_WITH_SIM),
        *_sim_size_args(_WITH_SIM, from_model=True),
        LaunchArgument("expert", "false", "sim:=true: the scripted expert drives the arm instead of the policy "
                       "(to compare; the policy's targets are then ignored).", BOOL_CHOICES),
        _USE_SIM_TIME_ARG,
        _LOG_LEVEL_ARG,
    ),
    (
        _sim_node((_SIMULATED,)),
        _camera_node(),
        NodeSpec("atk_perception", "tracker_node", "tracker", ("tracker.yaml",),
                 (ParamFromArg("model_dir", "model"), ParamFromArg("backend", "tracker_backend"),
                  ParamFromArg("extrinsics_file", "camera_extrinsics"),
                  ParamFromArg("robot_occlusion", "robot_occlusion", "bool"), _SIM_TIME), (),
                 (), "Tracks the model's selected keypoints in the camera frames."),
        NodeSpec("atk_policy", "policy_node", "policy", ("policy.yaml",),
                 (ParamFromArg("model_dir", "model"), _SIM_TIME), (), (),
                 "Keypoints + joint states -> joint targets and gripper commands; holds on bad input."),
        _driver_node(),
    ),
)

# Topics a training run needs (docs/interfaces.md); the recorder node and
# `ros2 bag record` write the same list.
TRAINING_TOPICS = ("camera/color/image_raw", "camera/color/camera_info", "joint_states", "joint_target",
                   "gripper_command", "sim/episode")

RECORD = Graph(
    "record",
    "Record demonstrations to rosbag2 bags: camera (or simulator), driver, and a recorder.",
    (
        _SIM_ARG,
        _CAMERA_ARG,
        _VIDEO_ARG,
        _ROBOT_IP_ARG,
        LaunchArgument("recorder", "node", "Who writes the bags: the project's recorder node (one bag per "
                       "episode, started/ended by its services, success label beside the bag; works without the "
                       "ros2 CLI) or `ros2 bag record -s mcap` (one bag for the whole session, needs the ros2 "
                       "CLI and rosbag2).", ("node", "bag")),
        LaunchArgument("bag_dir", "bags", "Folder the bags are written to (must exist with recorder:=bag)."),
        LaunchArgument("depth", "false", "Also record camera/depth/image_raw.", BOOL_CHOICES),
        _task_arg(_WITH_SIM),
        _seed_arg(_WITH_SIM),
        *_sim_size_args(_WITH_SIM, from_model=False),
        LaunchArgument("expert", "true", "sim:=true: the scripted expert demonstrates (false: drive the simulated "
                       "arm yourself through joint_target).", BOOL_CHOICES),
        _USE_SIM_TIME_ARG,
        _LOG_LEVEL_ARG,
    ),
    (
        _sim_node((_SIMULATED,)),
        _camera_node(),
        _driver_node(),
        NodeSpec("atk_bringup", "recorder_node", "recorder", ("recorder.yaml",),
                 (ParamFromArg("output_dir", "bag_dir"), ParamFromArg("record_depth", "depth", "bool"), _SIM_TIME),
                 (), (When("recorder", "node"),), "Writes one rosbag2 bag per episode with rosbags."),
    ),
    (
        ProcessSpec("rosbag_record", ("ros2", "bag", "record", "-s", "mcap", *TRAINING_TOPICS),
                    (When("recorder", "bag"), When("depth", "false")), "bag_dir",
                    "ros2 bag record of the training topics."),
        ProcessSpec("rosbag_record", ("ros2", "bag", "record", "-s", "mcap", *TRAINING_TOPICS,
                                      "camera/depth/image_raw"),
                    (When("recorder", "bag"), When("depth", "true")), "bag_dir",
                    "ros2 bag record of the training topics and depth."),
    ),
)

SIM = Graph(
    "sim",
    "The MuJoCo simulator alone (camera, joint states, /clock, episodes), e.g. to drive it by hand or with "
    "another graph.",
    (
        _task_arg(""),
        _seed_arg(""),
        *_sim_size_args("", from_model=False),
        LaunchArgument("expert", "false", "The scripted expert drives the arm (false: it follows joint_target).",
                       BOOL_CHOICES),
        _LOG_LEVEL_ARG,
    ),
    (_sim_node(()),),
)

GRAPHS: dict[str, Graph] = {g.name: g for g in (DEPLOY, RECORD, SIM)}


# --- resolution ------------------------------------------------------------

@dataclass(frozen=True)
class ResolvedProcess:
    name: str
    cmd: tuple[str, ...]
    cwd: Optional[str] = None
    required: bool = True


def source_config_dir() -> Path:
    """atk_bringup/config in the source tree (this module's real location)."""
    return Path(__file__).resolve().parents[2] / "config"


def config_path(file_name: str) -> Path:
    """Path of a parameter file: $ATK_CONFIG_DIR, the installed share folder, then the source tree.

    ATK_CONFIG_DIR (optional) holds site-specific copies that take precedence
    (e.g. a robot PC's calibrated camera.yaml). The source tree is the
    fallback for a checkout whose newest config file was added after the
    last ``colcon build``.
    """
    candidates = []
    if os.environ.get("ATK_CONFIG_DIR"):
        candidates.append(Path(os.environ["ATK_CONFIG_DIR"]) / file_name)
    try:
        from ament_index_python.packages import get_package_share_directory, PackageNotFoundError
        try:
            candidates.append(Path(get_package_share_directory(PACKAGE)) / "config" / file_name)
        except PackageNotFoundError:
            pass
    except ImportError:  # not a ROS environment; the source tree still works
        pass
    candidates.append(source_config_dir() / file_name)
    for c in candidates:
        if c.is_file():
            return c
    raise GraphError(f"parameter file {file_name!r} not found (looked in: {', '.join(map(str, candidates))}); "
                     "rebuild with scripts/setup.sh")


def find_node_executable(package: str, executable: str) -> str:
    """``<prefix>/lib/<package>/<executable>`` as ``ros2 run`` finds it."""
    try:
        from ament_index_python.packages import get_package_prefix, PackageNotFoundError
    except ImportError as exc:
        raise GraphError("ament_index_python is not importable: source env.sh (or a ROS 2 setup) first") from exc
    try:
        prefix = Path(get_package_prefix(package))
    except PackageNotFoundError as exc:
        raise GraphError(f"package {package!r} not found in AMENT_PREFIX_PATH: run scripts/setup.sh and "
                         "source env.sh") from exc
    path = prefix / "lib" / package / executable
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise GraphError(f"executable {executable!r} of package {package!r} not found at {path}: rebuild with "
                         "scripts/setup.sh")
    return str(path)


def find_program(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        hint = " (with the ros2 CLI absent, record with recorder:=node)" if program == "ros2" else ""
        raise GraphError(f"program {program!r} not found on PATH{hint}")
    return path


def check_values(graph: Graph, values: Mapping[str, str]) -> dict[str, str]:
    """Defaults filled in, unknown names and values outside ``choices`` refused."""
    out = {a.name: a.default for a in graph.arguments}
    for name, value in values.items():
        arg = graph.argument(name)
        if arg.choices is not None and value not in arg.choices:
            raise GraphError(f"argument {name}:={value!r} of graph {graph.name!r} must be one of "
                             f"{', '.join(arg.choices)}")
        out[name] = str(value)
    return out


#: Where ``model:=latest`` looks, relative to the working directory: atk-demo's default --out parent.
DEMO_RUNS_DIR = "runs"
#: Written by atk-demo into a model folder once its training finished (demo.train_seed).
DEMO_MODEL_MARKER = "atk_demo_train.json"


def latest_demo_model(runs_dir: Path) -> Path:
    """The model folder an atk-demo run under ``runs_dir`` finished training last.

    A model counts once atk-demo has written its marker (training finished):
    ``runs_dir/<run>/models/<seed>/atk_demo_train.json``. The newest marker wins.
    """
    markers = [m for m in runs_dir.glob(f"*/models/*/{DEMO_MODEL_MARKER}")
               if (m.parent / "model.json").is_file()]
    if not markers:
        raise GraphError(f"model:=latest: no trained atk-demo model under {runs_dir.resolve()} (run "
                         "scripts/demo.sh from this folder first, or give model:=<folder of a trained policy>)")
    return max(markers, key=lambda m: (m.stat().st_mtime, str(m))).parent.resolve()


def model_image_size(model_dir: str, arg_name: str) -> tuple[int, int]:
    """(width, height) a model was trained at, from its model.json (no torch)."""
    path = Path(model_dir) / "model.json"
    try:
        doc = json.loads(path.read_text())
        w, h = (int(v) for v in doc["image_size"])
    except FileNotFoundError:
        raise GraphError(f"{arg_name}:={model_dir!r} is not a trained model folder ({path} not found)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GraphError(f"{arg_name}:={model_dir!r}: cannot read the image size from {path} ({exc})") from None
    if w < 1 or h < 1:
        raise GraphError(f"{arg_name}:={model_dir!r}: model.json image_size must be positive, got {w}x{h}")
    return w, h


def _used_arguments(graph: Graph, values: Mapping[str, str]) -> set[str]:
    """Arguments read by the nodes and processes these values start."""
    used: set[str] = set()
    for node in graph.nodes:
        if all(w.holds(values) for w in node.when):
            for p in node.params_from_args:
                used.add(p.arg if p.auto_from is None or values[p.arg] != "auto" else p.auto_from)
    for proc in graph.processes:
        if all(w.holds(values) for w in proc.when):
            used.update(_placeholders(proc.cmd))
            if proc.cwd_arg:
                used.add(proc.cwd_arg)
    return used


def prepare_values(graph: Graph, values: Mapping[str, str], cwd: Optional[Path] = None,
                   notes: Optional[list[str]] = None) -> dict[str, str]:
    """Argument values as the nodes get them: checked, defaults filled, derived ones set.

    Refuses (GraphError, one line naming the argument) an empty ``required``
    argument; turns ``latest`` of a ``model`` argument into the newest
    atk-demo model under ``cwd/runs``; turns ``auto`` of an
    ``auto_from_model`` argument into the model's image size when a started
    node reads it. What was derived is appended to ``notes`` as sentences.
    Shared by the launch files (an OpaqueFunction) and :func:`resolve`.
    """
    vals = check_values(graph, values)
    base = Path.cwd() if cwd is None else Path(cwd)
    for a in graph.arguments:
        if a.required and not vals[a.name].strip():
            hint = " (or latest: the newest model atk-demo trained under ./runs)" if a.model else ""
            raise GraphError(f"argument {a.name} is required: {a.name}:=<"
                             f"{'folder of a trained policy' if a.model else 'value'}>{hint}")
        if a.model and vals[a.name] == "latest" and not (base / "latest").is_dir():
            found = latest_demo_model(base / DEMO_RUNS_DIR)
            vals[a.name] = str(found)
            if notes is not None:
                notes.append(f"{a.name}:=latest is {found} (the newest atk-demo model)")
    used = _used_arguments(graph, vals)
    for a in graph.arguments:
        if a.auto_from_model is not None and vals[a.name] == "auto" and a.name in used:
            w, h = model_image_size(vals[a.model_arg], a.model_arg)
            vals[a.name] = str(w if a.auto_from_model == "width" else h)
            if notes is not None:
                notes.append(f"{a.name}:=auto is {vals[a.name]} (the {a.auto_from_model} the model was trained at)")
    return vals


def format_param_value(value: str, kind: str, where: str) -> str:
    """A ``-p name:=value`` value (parsed as YAML by rcl) with the declared type."""
    if kind == "str":
        return json.dumps(value)  # a double-quoted YAML string, even when empty or numeric-looking
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise GraphError(f"{where} needs true or false, got {value!r}")
        return value.lower()
    try:
        return repr(int(value)) if kind == "int" else repr(float(value))
    except ValueError:
        raise GraphError(f"{where} needs a number ({kind}), got {value!r}") from None


def node_command(node: NodeSpec, values: Mapping[str, str], executable: str) -> tuple[str, ...]:
    cmd = [executable, "--ros-args", "-r", f"__node:={node.name}"]
    for f in node.param_files:
        cmd += ["--params-file", str(config_path(f))]
    for p in node.params_from_args:
        value = format_param_value(p.value(values), p.kind, f"argument {p.arg} (parameter {node.name}.{p.param})")
        cmd += ["-p", f"{p.param}:={value}"]
    for src, dst in node.remappings:
        cmd += ["-r", f"{src}:={dst}"]
    cmd += ["--log-level", values.get("log_level", "info")]
    return tuple(cmd)


def resolve(graph: Graph, values: Mapping[str, str] | None = None,
            find_executable: Callable[[str, str], str] = find_node_executable,
            find_process: Callable[[str], str] = find_program, cwd: Optional[Path] = None,
            notes: Optional[list[str]] = None) -> list[ResolvedProcess]:
    """The processes ``graph`` starts with these launch-argument values.

    Values go through :func:`prepare_values` first (``cwd``: where
    ``model:=latest`` looks; ``notes``: what was derived). Raises GraphError
    (a ValueError) naming the argument, file or executable at fault.
    """
    vals = prepare_values(graph, values or {}, cwd, notes)
    out: list[ResolvedProcess] = []
    for node in graph.nodes:
        if all(w.holds(vals) for w in node.when):
            out.append(ResolvedProcess(node.name, node_command(node, vals,
                                                               find_executable(node.package, node.executable)),
                                       required=node.required))
    for proc in graph.processes:
        if all(w.holds(vals) for w in proc.when):
            cmd = [vals[p[1:-1]] if p.startswith("{") and p.endswith("}") else p for p in proc.cmd]
            cmd[0] = find_process(cmd[0])
            out.append(ResolvedProcess(proc.name, tuple(cmd), vals[proc.cwd_arg] if proc.cwd_arg else None,
                                       required=proc.required))
    return out


def all_param_files() -> list[str]:
    """Every parameter file any graph refers to."""
    return sorted({f for g in GRAPHS.values() for n in g.nodes for f in n.param_files})


def describe(graph: Graph) -> str:
    """Arguments and nodes of a graph, for ``--help``."""
    lines = [graph.description, "", "arguments (name:=value):"]
    for a in graph.arguments:
        choices = f" {{{', '.join(a.choices)}}}" if a.choices else ""
        lines.append(f"  {a.name}{choices} ({'required' if a.required else f'default: {a.default!r}'})")
        lines.append(f"      {a.description}")
    lines += ["", "nodes (required: its exit stops the graph):"]
    for n in graph.nodes:
        cond = f" when {' and '.join(map(str, n.when))}" if n.when else ""
        lines.append(f"  {n.name}: {n.package}/{n.executable}{cond}{', required' if n.required else ''}")
    for p in graph.processes:
        cond = f" when {' and '.join(map(str, p.when))}" if p.when else ""
        lines.append(f"  {p.name}: {' '.join(p.cmd[:4])} ...{cond}{', required' if p.required else ''}")
    return "\n".join(lines)


__all__ = ["Graph", "GraphError", "GRAPHS", "LaunchArgument", "NodeSpec", "ParamFromArg", "ProcessSpec",
           "ResolvedProcess", "TRAINING_TOPICS", "When", "all_param_files", "check_values", "config_path",
           "describe", "latest_demo_model", "model_image_size", "prepare_values", "resolve"]
