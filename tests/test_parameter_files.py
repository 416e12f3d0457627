"""Every node's parameter file in atk_bringup/config stays in step with the
parameters the node declares (issue 14): the file lists exactly the node's
parameters, in the order of its params dataclass, each with the dataclass
default, and each value passes the node's own validation. And every node's
console script answers ``--help`` without rclpy."""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atk_bringup import recorder_params, sim_params
from atk_bringup.driver import driver_params
from atk_perception import camera_params, tracker_params
from atk_policy import policy_params

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "src" / "atk_bringup" / "config"

#: (params module, its dataclass, parameter file, console script) of every node of the workspace
NODES = [
    (camera_params, camera_params.CameraParams, "camera.yaml", "camera_node"),
    (tracker_params, tracker_params.TrackerParams, "tracker.yaml", "tracker_node"),
    (policy_params, policy_params.PolicyParams, "policy.yaml", "policy_node"),
    (sim_params, sim_params.SimParams, "sim.yaml", "sim_node"),
    (driver_params, driver_params.DriverParams, "ur_driver.yaml", "ur_driver_node"),
    (recorder_params, recorder_params.RecorderParams, "recorder.yaml", "recorder_node"),
]
IDS = [n[3] for n in NODES]


def _unset_in_files(spec) -> bool:
    """Array parameters with an empty default: ROS 2 parameter files cannot
    type an empty list, so the files leave them out (and say so)."""
    return spec.is_array and not spec.default


def _console_scripts() -> dict[str, str]:
    """console script -> 'module:function', from the packages' setup.py files."""
    scripts = {}
    for setup in ROOT.glob("src/*/setup.py"):
        for node in ast.walk(ast.parse(setup.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and " = " in node.value \
                    and ":" in node.value:
                name, _, target = node.value.partition(" = ")
                scripts[name.strip()] = target.strip()
    return scripts


def test_every_node_is_listed():
    """A new node (a console script named *_node) needs a row in NODES."""
    nodes = {name for name in _console_scripts() if name.endswith("_node")}
    assert nodes == set(IDS)


@pytest.mark.parametrize("module,config,filename,script", NODES, ids=IDS)
def test_parameter_file_lists_the_declared_parameters_with_their_defaults(module, config, filename, script):
    doc = yaml.safe_load((CONFIG / filename).read_text())
    assert list(doc) == [module.NODE_NAME]
    values = doc[module.NODE_NAME]["ros__parameters"]
    # the specs are the dataclass's fields, so the dataclass is what the file must match
    assert [s.name for s in module.PARAMS] == [f.name for f in dataclasses.fields(config)]
    defaults = dataclasses.asdict(config())
    listed = [s.name for s in module.PARAMS if not _unset_in_files(s)]
    assert list(values) == listed, (f"{filename} must list exactly the parameters of {config.__name__}, "
                                    f"in its order (left out: {sorted(set(listed) - set(values))}, "
                                    f"unknown: {sorted(set(values) - set(listed))})")
    for spec in module.PARAMS:
        if spec.name not in values:
            continue
        value = values[spec.name]
        spec.check(value)  # raises ParameterError quoting the value
        assert value == defaults[spec.name] == spec.default, (
            f"{filename}: {spec.name} is {value!r}, the node's default is {defaults[spec.name]!r}")
        assert type(value) is type(spec.default), f"{filename}: {spec.name} has the wrong ROS type"


@pytest.mark.parametrize("script", IDS)
def test_help_needs_no_rclpy(script):
    """The console script's main answers --help with rclpy not importable at all."""
    module, _, attr = _console_scripts()[script].partition(":")
    code = ("import importlib, sys\n"
            "for name in ('rclpy', 'rcl_interfaces', 'sensor_msgs', 'atk_msgs'):\n"
            "    sys.modules[name] = None  # importing it raises ImportError\n"
            f"main = importlib.import_module({module!r})\n"
            f"for part in {attr.split('.')!r}:\n"
            "    main = getattr(main, part)\n"
            f"sys.exit(main([{script!r}, '--help']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    params = dict((n[3], n[0]) for n in NODES)[script].PARAMS
    for spec in params:
        assert f"  {spec.name} (default" in out.stdout


@pytest.mark.parametrize("params_module, params_class, config_module, config_class", [
    ("atk_perception.tracker_params", "TrackerParams", "atk_perception.tracking_session", "SessionConfig"),
    ("atk_policy.policy_params", "PolicyParams", "atk_policy.gating", "GateConfig"),
])
def test_node_parameters_configure_their_library_with_the_same_defaults(params_module, params_class,
                                                                         config_module, config_class):
    """A node parameter that configures a library config (config_from_params) has the library's name and
    default, so the node's defaults are the library's (what the in-process evaluation uses)."""
    import dataclasses
    import importlib

    from atk_perception.node_params import config_from_params

    params = getattr(importlib.import_module(params_module), params_class)
    config = getattr(importlib.import_module(config_module), config_class)
    node = {f.name: f.default for f in dataclasses.fields(params)}
    lib = {f.name: f.default for f in dataclasses.fields(config)}
    shared = sorted(set(node) & set(lib))
    assert len(shared) >= 7, shared
    assert {k: node[k] for k in shared} == {k: lib[k] for k in shared}
    assert config_from_params(config, node) == config()
