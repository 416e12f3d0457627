"""The launch files start exactly what graph.py declares, checked without the launch package.

Each ``launch/*.launch.py`` is executed against a small recording fake of the
parts of ``launch``/``launch_ros`` it uses (injected into sys.modules for
this test only); the recorded arguments, nodes, parameters, remappings,
conditions and processes are turned back into the declaration's terms and
compared with graph.py. A launch file that drifts (a node added by hand, a
condition or parameter dropped, another graph built) fails here.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from atk_bringup.graph import GRAPHS, Graph, When, config_path, resolve

LAUNCH_DIR = Path(__file__).resolve().parent.parent / "launch"


class _Rec:
    """Records its constructor arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args = args
        self.kwargs = kwargs


def _fake_modules() -> dict[str, types.ModuleType]:
    names = {
        "launch": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument", "ExecuteProcess", "GroupAction"],
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


def decompile(ld: _Rec) -> dict:
    """The fake launch tree in the declaration's terms."""
    assert type(ld).__name__ == "LaunchDescription"
    out = {"arguments": [], "nodes": [], "processes": []}

    def visit(entity: _Rec, outer: list[When]) -> None:
        kind = type(entity).__name__
        kw = entity.kwargs
        if kind == "DeclareLaunchArgument":
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
                                     when=outer + _when(kw.get("condition"))))
        elif kind == "ExecuteProcess":
            cmd = [f"{{{_config_arg(c)}}}" if isinstance(c, _Rec) else c for c in kw["cmd"]]
            cwd = _config_arg(kw["cwd"]) if kw.get("cwd") is not None else None
            out["processes"].append(dict(name=kw["name"], cmd=cmd, cwd=cwd, when=outer + _when(kw.get("condition"))))
        else:
            raise AssertionError(f"launch file uses {kind}, which graph.py does not declare")

    for entity in ld.args[0]:
        visit(entity, [])
    return out


def expected(graph: Graph) -> dict:
    """The declaration, in the same terms (written independently of launch_builder)."""
    return {
        "arguments": [(a.name, a.default, a.description, a.choices) for a in graph.arguments],
        "nodes": [dict(package=n.package, executable=n.executable, name=n.name, files=list(n.param_files),
                       overrides=[(p.param, p.arg, p.kind, p.auto_from) for p in n.params_from_args],
                       remappings=list(n.remappings), when=list(n.when)) for n in graph.nodes],
        "processes": [dict(name=p.name, cmd=list(p.cmd), cwd=p.cwd_arg, when=list(p.when)) for p in graph.processes],
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
def test_launch_conditions_start_what_the_runner_starts(values, monkeypatch):
    """Evaluating the launch file's conditions gives the runner's process list."""
    graph = GRAPHS["deploy"]
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


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    """Structure tests need every parameter file to resolve; files another package has not written yet
    are stood in for (test_graph_runner.py checks that the real ones exist)."""
    from atk_bringup.graph import GraphError, all_param_files

    d = tmp_path / "config"
    d.mkdir()
    for name in all_param_files():
        try:
            (d / name).write_bytes(config_path(name).read_bytes())
        except GraphError:
            (d / name).write_text("{}\n")
    monkeypatch.setenv("ATK_CONFIG_DIR", str(d))
