"""The launch files start exactly what graph.py declares, checked without the launch package.

Each ``launch/*.launch.py`` is executed against a small recording fake of the
parts of ``launch``/``launch_ros`` it uses (injected into sys.modules for
this test only); the recorded arguments, nodes, parameters, remappings,
conditions, processes, on_exit actions and the argument-preparing
OpaqueFunction are turned back into the declaration's terms and compared with
graph.py. A launch file that drifts (a node added by hand, a condition,
parameter or on_exit dropped, another graph built) fails here. The recorded
OpaqueFunctions are then called as launch would call them: the required
nodes' on_exit stops the launch with one line naming the node, and the
arguments are refused or derived exactly as atk-graph does.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest

from atk_bringup.graph_tools.graph import GRAPHS, Graph, GraphError, When, config_path, resolve

LAUNCH_DIR = Path(__file__).resolve().parent.parent / "launch"


class _Rec:
    """Records its constructor arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args = args
        self.kwargs = kwargs


def _fake_modules() -> dict[str, types.ModuleType]:
    names = {
        "launch": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument", "ExecuteProcess", "GroupAction", "OpaqueFunction"],
        "launch.conditions": ["IfCondition", "UnlessCondition"],
        "launch.substitutions": ["EqualsSubstitution", "NotEqualsSubstitution", "LaunchConfiguration",
                                 "IfElseSubstitution"],
        "launch_ros": [],
        "launch_ros.actions": ["Node"],
        "launch_ros.parameter_descriptions": ["ParameterValue"],
    }
    mods = {}
    for mod, classes in names.items():
        m = types.ModuleType(mod)
        for c in classes:
            setattr(m, c, type(c, (_Rec,), {}))
        mods[mod] = m
    return mods


def run_launch_file(path: Path, monkeypatch) -> _Rec:
    for name, mod in _fake_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location(f"launchfile_{path.stem.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def _config_arg(sub: _Rec) -> str:
    assert type(sub).__name__ == "LaunchConfiguration", f"expected LaunchConfiguration, got {sub!r}"
    return sub.args[0]


def _when(cond: _Rec | None) -> list[When]:
    if cond is None:
        return []
    assert type(cond).__name__ == "IfCondition"
    sub = cond.args[0]
    negate = {"EqualsSubstitution": False, "NotEqualsSubstitution": True}[type(sub).__name__]
    return [When(_config_arg(sub.args[0]), sub.args[1], negate)]


def _required(on_exit, name: str, kind: str) -> bool:
    """on_exit of a node or process: None (not required) or [OpaqueFunction(required_exit, name, kind)]."""
    from atk_bringup.graph_tools import launch_builder

    if on_exit is None:
        return False
    assert len(on_exit) == 1 and type(on_exit[0]).__name__ == "OpaqueFunction", on_exit
    assert on_exit[0].kwargs["function"] is launch_builder.required_exit
    assert on_exit[0].kwargs["args"] == [name, kind]
    return True


def decompile(ld: _Rec) -> dict:
    """The fake launch tree in the declaration's terms."""
    from atk_bringup.graph_tools import launch_builder

    assert type(ld).__name__ == "LaunchDescription"
    out = {"arguments": [], "nodes": [], "processes": [], "order": []}

    def visit(entity: _Rec, outer: list[When]) -> None:
        kind = type(entity).__name__
        kw = entity.kwargs
        if kind == "OpaqueFunction":
            assert kw["function"] is launch_builder.prepare_arguments and not outer
            out["prepare"] = kw["args"][0].name
        elif kind == "DeclareLaunchArgument":
            choices = kw.get("choices")
            out["arguments"].append((entity.args[0], kw["default_value"], kw["description"],
                                     tuple(choices) if choices is not None else None))
        elif kind == "GroupAction":
            for child in entity.args[0]:
                visit(child, outer + _when(kw.get("condition")))
        elif kind == "Node":
            files, overrides = [], []
            for p in kw["parameters"]:
                if isinstance(p, str):
                    files.append(Path(p).name)
                    assert Path(p) == config_path(Path(p).name)
                else:
                    for name, value in p.items():
                        assert type(value).__name__ == "ParameterValue"
                        sub = value.args[0]
                        if type(sub).__name__ == "IfElseSubstitution":
                            # IfElse(Equals(arg, "auto"), other, arg): "auto" defers to another argument
                            cond, if_value, else_value = sub.args
                            arg = _config_arg(cond.args[0])
                            assert type(cond).__name__ == "EqualsSubstitution" and cond.args[1] == "auto"
                            assert _config_arg(else_value) == arg
                            overrides.append((name, arg, value.kwargs["value_type"].__name__,
                                              _config_arg(if_value)))
                        else:
                            overrides.append((name, _config_arg(sub), value.kwargs["value_type"].__name__, None))
            assert [_config_arg(a) if isinstance(a, _Rec) else a for a in kw["ros_arguments"]] == \
                ["--log-level", "log_level"]
            out["nodes"].append(dict(package=kw["package"], executable=kw["executable"], name=kw["name"],
                                     files=files, overrides=overrides, remappings=[tuple(r) for r in kw["remappings"]],
                                     when=outer + _when(kw.get("condition")),
                                     required=_required(kw.get("on_exit"), kw["name"], "node")))
        elif kind == "ExecuteProcess":
            cmd = [f"{{{_config_arg(c)}}}" if isinstance(c, _Rec) else c for c in kw["cmd"]]
            cwd = _config_arg(kw["cwd"]) if kw.get("cwd") is not None else None
            out["processes"].append(dict(name=kw["name"], cmd=cmd, cwd=cwd, when=outer + _when(kw.get("condition")),
                                         required=_required(kw.get("on_exit"), kw["name"], "process")))
        else:
            raise AssertionError(f"launch file uses {kind}, which graph.py does not declare")

    for entity in ld.args[0]:
        inner = entity
        while type(inner).__name__ == "GroupAction":
            inner = inner.args[0][0]
        out["order"].append(type(inner).__name__)
        visit(entity, [])
    return out


def expected(graph: Graph) -> dict:
    """The declaration, in the same terms (written independently of launch_builder).

    The arguments are finished (OpaqueFunction) after they are declared and
    before any node or process starts."""
    return {
        "arguments": [(a.name, a.default, a.description, a.choices) for a in graph.arguments],
        "nodes": [dict(package=n.package, executable=n.executable, name=n.name, files=list(n.param_files),
                       overrides=[(p.param, p.arg, p.kind, p.auto_from) for p in n.params_from_args],
                       remappings=list(n.remappings), when=list(n.when), required=n.required)
                  for n in graph.nodes],
        "processes": [dict(name=p.name, cmd=list(p.cmd), cwd=p.cwd_arg, when=list(p.when), required=p.required)
                      for p in graph.processes],
        "order": (["DeclareLaunchArgument"] * len(graph.arguments) + ["OpaqueFunction"]
                  + ["Node"] * len(graph.nodes) + ["ExecuteProcess"] * len(graph.processes)),
        "prepare": graph.name,
    }


def test_every_graph_has_a_launch_file_and_back():
    files = sorted(p.name for p in LAUNCH_DIR.glob("*.launch.py"))
    assert files == sorted(f"{name}.launch.py" for name in GRAPHS)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_launch_file_matches_declaration(name, monkeypatch):
    got = decompile(run_launch_file(LAUNCH_DIR / f"{name}.launch.py", monkeypatch))
    assert got == expected(GRAPHS[name])


@pytest.mark.parametrize("values", [
    {}, {"sim": "true"}, {"camera": "none"}, {"camera": "video", "video": "/tmp/v.mp4"},
    {"sim": "true", "camera": "none"},
])
def test_launch_conditions_start_what_the_runner_starts(values, monkeypatch, tmp_path):
    """Evaluating the launch file's conditions gives the runner's process list."""
    graph = GRAPHS["deploy"]
    values = values | {"model": str(_write_model(tmp_path / "model", (320, 240)))}
    tree = decompile(run_launch_file(LAUNCH_DIR / "deploy.launch.py", monkeypatch))
    full = {a.name: a.default for a in graph.arguments} | values
    launched = [n["name"] for n in tree["nodes"] if all(w.holds(full) for w in n["when"])]
    run = [p.name for p in resolve(graph, values, find_executable=lambda pkg, exe: f"/x/{pkg}/{exe}")]
    assert launched == run
    assert ("ur_driver" in run) == (values.get("sim") != "true")
    assert ("camera" in run) == (values.get("sim") != "true" and values.get("camera") != "none")


def test_drift_is_detected(tmp_path, monkeypatch):
    """A launch file that adds a node by hand no longer matches: the check can fail."""
    src = (LAUNCH_DIR / "deploy.launch.py").read_text()
    drifted = tmp_path / "deploy.launch.py"
    drifted.write_text(src + """

_original = generate_launch_description


def generate_launch_description():
    from launch_ros.actions import Node
    ld = _original()
    ld.args[0].append(Node(package="atk_policy", executable="policy_node", name="policy2", parameters=[],
                           remappings=[], ros_arguments=["--log-level", "info"]))
    return ld
""")
    with pytest.raises(AssertionError):
        assert decompile(run_launch_file(drifted, monkeypatch)) == expected(GRAPHS["deploy"])
    # and a launch file building another graph
    other = tmp_path / "deploy2.launch.py"
    other.write_text(src.replace('GRAPHS["deploy"]', 'GRAPHS["sim"]'))
    assert decompile(run_launch_file(other, monkeypatch)) != expected(GRAPHS["deploy"])


class _FakeContext:
    """The parts of launch.LaunchContext the OpaqueFunctions use."""

    def __init__(self, configs: dict[str, str] | None = None, is_shutdown: bool = False,
                 returncode: int | None = None) -> None:
        self.launch_configurations = dict(configs or {})
        self.is_shutdown = is_shutdown
        self.locals = types.SimpleNamespace(event=types.SimpleNamespace(returncode=returncode))


def _opaque_functions(tree: _Rec) -> list[_Rec]:
    found = []

    def visit(entity: _Rec) -> None:
        kind = type(entity).__name__
        if kind == "OpaqueFunction":
            found.append(entity)
        elif kind == "GroupAction":
            for child in entity.args[0]:
                visit(child)
        elif kind in ("Node", "ExecuteProcess") and entity.kwargs.get("on_exit"):
            found.extend((entity.kwargs["name"], f) for f in entity.kwargs["on_exit"])

    for e in tree.args[0]:
        visit(e)
    return found


def _call(opaque: _Rec, context: _FakeContext):
    return opaque.kwargs["function"](context, *opaque.kwargs["args"])


def test_every_node_and_process_is_required():
    """The decision (graph.py's docstring): each is on the path from camera to arm or bag, so its exit
    stops the graph. A node added without thinking about it is required by default."""
    for g in GRAPHS.values():
        assert all(item.required for item in (*g.nodes, *g.processes)), g.name


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_required_exit_stops_the_launch_in_one_line(name, monkeypatch):
    """A required node exiting on its own raises (launch: one error line, shutdown, exit code 1);
    its exit during a shutdown (Ctrl-C, another node's exit) is part of that shutdown."""
    from atk_bringup.graph_tools.launch_builder import RequiredProcessExited

    tree = run_launch_file(LAUNCH_DIR / f"{name}.launch.py", monkeypatch)
    exits = [(n, f) for n, f in (x for x in _opaque_functions(tree) if isinstance(x, tuple))]
    declared = [item.name for item in (*GRAPHS[name].nodes, *GRAPHS[name].processes) if item.required]
    assert [n for n, _ in exits] == declared
    for node_name, opaque in exits:
        with pytest.raises(RequiredProcessExited) as info:
            _call(opaque, _FakeContext(returncode=2))
        assert f"'{node_name}' exited with code 2" in str(info.value) and "\n" not in str(info.value)
        assert _call(opaque, _FakeContext(is_shutdown=True, returncode=-2)) == []


def _prepare(tree: _Rec) -> _Rec:
    (prepare,) = [x for x in _opaque_functions(tree) if not isinstance(x, tuple)]
    return prepare


def _launch_defaults(tree: _Rec) -> dict[str, str]:
    return {e.args[0]: e.kwargs["default_value"] for e in tree.args[0]
            if type(e).__name__ == "DeclareLaunchArgument"}


def _write_model(folder: Path, size: tuple[int, int]) -> Path:
    """What prepare_values reads of a model folder: model.json's image_size (no torch needed)."""
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"image_size": list(size)}))
    return folder


def test_deploy_without_model_is_refused_in_one_line(monkeypatch):
    """`ros2 launch atk_bringup deploy.launch.py sim:=true` stops before any node starts."""
    tree = run_launch_file(LAUNCH_DIR / "deploy.launch.py", monkeypatch)
    ctx = _FakeContext(_launch_defaults(tree) | {"sim": "true"})
    with pytest.raises(GraphError) as info:
        _call(_prepare(tree), ctx)
    msg = str(info.value)
    assert msg.startswith("deploy.launch.py: argument model is required: model:=") and "\n" not in msg
    # the runner refuses the same values with the same sentence
    with pytest.raises(GraphError) as runner_info:
        resolve(GRAPHS["deploy"], {"sim": "true"}, find_executable=lambda pkg, exe: exe)
    assert msg.endswith(str(runner_info.value))


@pytest.mark.parametrize("values", [{"sim": "true"}, {"sim": "true", "sim_width": "640", "sim_height": "480"},
                                    {"sim": "false"}])
def test_deploy_renders_at_the_models_size(values, tmp_path, monkeypatch, capsys):
    """sim_width/sim_height auto become the model's image size in the launch file as in the runner."""
    model = _write_model(tmp_path / "model", (320, 240))
    tree = run_launch_file(LAUNCH_DIR / "deploy.launch.py", monkeypatch)
    ctx = _FakeContext(_launch_defaults(tree) | values | {"model": str(model)})
    assert _call(_prepare(tree), ctx) == []
    procs = resolve(GRAPHS["deploy"], values | {"model": str(model)}, find_executable=lambda pkg, exe: exe)
    if values["sim"] == "true":
        want = ("320", "240") if "sim_width" not in values else ("640", "480")
        assert (ctx.launch_configurations["sim_width"], ctx.launch_configurations["sim_height"]) == want
        sim = next(p for p in procs if p.name == "sim")
        assert f"width:={want[0]}" in sim.cmd and f"height:={want[1]}" in sim.cmd
        assert ("sim_width:=auto is 320" in capsys.readouterr().out) == ("sim_width" not in values)
    else:  # no simulator: the size is not read, auto stays as declared
        assert ctx.launch_configurations["sim_width"] == "auto"


def test_model_latest_is_the_newest_demo_model(tmp_path, monkeypatch, capsys):
    """model:=latest: the model atk-demo finished last under ./runs, printed; none -> one line."""
    tree = run_launch_file(LAUNCH_DIR / "deploy.launch.py", monkeypatch)
    monkeypatch.chdir(tmp_path)
    ctx = _FakeContext(_launch_defaults(tree) | {"sim": "true", "model": "latest"})
    with pytest.raises(GraphError, match=r"model:=latest: no trained atk-demo model under .*runs"):
        _call(_prepare(tree), ctx)
    older = _write_model(tmp_path / "runs" / "a" / "models" / "seed0", (640, 480))
    newer = _write_model(tmp_path / "runs" / "b" / "models" / "seed1", (320, 240))
    unfinished = _write_model(tmp_path / "runs" / "c" / "models" / "seed0", (160, 120))  # no marker: training
    for i, m in enumerate((older, newer)):
        (m / "atk_demo_train.json").write_text("{}")
        os.utime(m / "atk_demo_train.json", (1_000_000 + i, 1_000_000 + i))
    assert unfinished.is_dir()
    _call(_prepare(tree), ctx)
    assert ctx.launch_configurations["model"] == str(newer.resolve())
    assert ctx.launch_configurations["sim_width"] == "320"
    assert f"model:=latest is {newer.resolve()}" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    """Structure tests need every parameter file to resolve; files another package has not written yet
    are stood in for (test_graph_runner.py checks that the real ones exist)."""
    from atk_bringup.graph_tools.graph import GraphError, all_param_files

    d = tmp_path / "config"
    d.mkdir()
    for name in all_param_files():
        try:
            (d / name).write_bytes(config_path(name).read_bytes())
        except GraphError:
            (d / name).write_text("{}\n")
    monkeypatch.setenv("ATK_CONFIG_DIR", str(d))
