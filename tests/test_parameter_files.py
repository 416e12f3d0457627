"""The perception nodes' parameter files in atk_bringup/config stay in step
with the parameters the nodes declare: every key is a declared parameter,
and every value passes the node's own validation."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from atk_perception import camera_node, tracker_node

CONFIG = Path(__file__).resolve().parents[1] / "src" / "atk_bringup" / "config"


@pytest.mark.parametrize("module,filename", [(camera_node, "camera.yaml"), (tracker_node, "tracker.yaml")])
def test_parameter_file_matches_declared_parameters(module, filename):
    doc = yaml.safe_load((CONFIG / filename).read_text())
    assert list(doc) == [module.NODE_NAME]
    values = doc[module.NODE_NAME]["ros__parameters"]
    specs = {p.name: p for p in module.PARAMS}
    unknown = set(values) - set(specs)
    assert not unknown, f"{filename} sets parameters the node does not declare: {sorted(unknown)}"
    for name, value in values.items():
        specs[name].check(value)  # raises ParameterError quoting the value
        assert type(value) is type(specs[name].default) or (
            isinstance(value, (int, float)) and isinstance(specs[name].default, float)), name
    # every scalar parameter is listed, so the file documents the node completely
    scalars = {n for n, p in specs.items() if not isinstance(p.default, (list, tuple))}
    assert scalars <= set(values), f"{filename} misses {sorted(scalars - set(values))}"
