"""atk_perception.node_params: the one parameter-spec implementation of all
nodes (type, range, choices, list checks quoting the refused value; ranges and
read-only/run-time on the ROS descriptor; --help text)."""
from __future__ import annotations

import array

import pytest

from atk_perception.node_params import ParameterError, ParamSpec, declare, format_help

SPECS = (
    ParamSpec("rate_hz", 10.0, "a rate", min=0.5, max=100.0),
    ParamSpec("count", 3, "a count", min=1, max=1000),
    ParamSpec("mode", "a", "a mode", choices=("a", "b")),
    ParamSpec("frame", "map", "a frame", nonempty=True),
    ParamSpec("flag", True, "a flag"),
    ParamSpec("gains", [1.0, 2.0, 3.0], "three gains", min=0.0, max=5.0, length=3),
    ParamSpec("tags", [""], "tags ([''] = none)", item_choices=("", "X", "Y")),
    ParamSpec("threshold", 0.5, "changeable while running", min=0.0, max=1.0, runtime=True),
    ParamSpec("limit", 2, "changeable while running", min=0, max=10, runtime=True),
    ParamSpec("ids", [], "ids (unset unless given)", array_type="integer"),
)
BY_NAME = {s.name: s for s in SPECS}


@pytest.mark.parametrize("name, value, match", [
    ("rate_hz", "fast", r"rate_hz: 'fast' is not a number"),
    ("rate_hz", True, r"rate_hz: True is not a number"),
    ("rate_hz", 200.0, r"rate_hz: 200\.0 is above the maximum 100"),
    ("rate_hz", float("inf"), r"rate_hz: inf is not a finite number"),
    ("count", 2.5, r"count: 2\.5 is not an integer"),
    ("count", 0, r"count: 0 is below the minimum 1"),
    ("mode", "c", r"mode: 'c' is not one of a, b"),
    ("frame", "", r"frame: must not be empty, got ''"),
    ("flag", "yes", r"flag: 'yes' is not true or false"),
    ("gains", [1.0, 2.0], r"gains: must have 3 values, got 2: \[1\.0, 2\.0\]"),
    ("gains", [1.0, 9.0, 1.0], r"gains: 9\.0 \(in \[1\.0, 9\.0, 1\.0\]\) is above the maximum 5"),
    ("gains", [1.0, "x", 1.0], r"gains: 'x' \(in \[1\.0, 'x', 1\.0\]\) is not a number"),
    ("gains", "1.0", r"gains: '1\.0' is not a list"),
    ("tags", ["X", "Z"], r"tags: 'Z' \(in \['X', 'Z'\]\) is not one of '', 'X', 'Y'"),
])
def test_check_refuses_quoting_the_value(name, value, match):
    with pytest.raises(ParameterError, match=match):
        BY_NAME[name].check(value)


def test_check_returns_the_normalised_value():
    assert BY_NAME["rate_hz"].check(30) == 30.0 and isinstance(BY_NAME["rate_hz"].check(30), float)
    assert BY_NAME["count"].check(1000) == 1000
    assert BY_NAME["gains"].check(array.array("d", [0.0, 1.0, 5.0])) == [0.0, 1.0, 5.0]
    assert BY_NAME["tags"].check([""]) == [""] and BY_NAME["tags"].check(("X", "Y")) == ["X", "Y"]
    assert BY_NAME["frame"].check("odom") == "odom"


def test_help_lists_defaults_ranges_and_run_time_parameters():
    text = format_help("demo_node", "Summary.", SPECS)
    assert "  rate_hz (default 10.0; 0.5..100)\n      a rate" in text
    assert "  gains (default [1.0, 2.0, 3.0]; 3 values; each 0..5)" in text
    assert "  tags (default ['']; each one of '', 'X', 'Y')" in text
    assert "  frame (default 'map'; not empty)" in text
    assert "  threshold (default 0.5; 0..1; changeable at run time)" in text
    assert "  count (default 3; 1..1000)\n" in text  # read-only: not marked


@pytest.fixture
def ros_context():
    rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source env.sh")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def test_declare_puts_ranges_and_read_only_on_the_descriptor(ros_context):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    node = Node("node_params_test", context=ros_context,
                parameter_overrides=[Parameter("rate_hz", value=30), Parameter("tags", value=["X"])])
    try:
        values = declare(node, SPECS)
        assert values["rate_hz"] == 30.0 and isinstance(values["rate_hz"], float)  # `-p rate_hz:=30`
        assert values["tags"] == ["X"] and values["gains"] == [1.0, 2.0, 3.0] and values["ids"] == []
        rate, count, thr, limit, gains = node.describe_parameters(["rate_hz", "count", "threshold", "limit",
                                                                   "gains"])
        assert [(r.from_value, r.to_value) for r in rate.floating_point_range] == [(0.5, 100.0)]
        assert [(r.from_value, r.to_value, r.step) for r in count.integer_range] == [(1, 1000, 1)]
        assert [(r.from_value, r.to_value) for r in thr.floating_point_range] == [(0.0, 1.0)]
        assert [(r.from_value, r.to_value) for r in limit.integer_range] == [(0, 10)]
        assert not gains.floating_point_range and gains.additional_constraints == "3 values; each 0..5"
        assert rate.read_only and count.read_only and gains.read_only and node.describe_parameter("ids").read_only
        assert not thr.read_only and not limit.read_only
        assert node.describe_parameter("mode").additional_constraints == "one of a, b"
        # read-only parameters cannot change; run-time ones can, within range
        assert not node.set_parameters([Parameter("count", value=5)])[0].successful
        assert node.set_parameters([Parameter("limit", value=5)])[0].successful
        refused = node.set_parameters([Parameter("limit", value=11)])[0]
        assert not refused.successful and "11" in refused.reason  # rclpy's range on the descriptor
    finally:
        node.destroy_node()


def test_check_serves_an_on_set_parameters_callback(ros_context):
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    node = Node("node_params_cb_test", context=ros_context)
    try:
        values = declare(node, SPECS)

        def on_set(params) -> SetParametersResult:
            for p in params:
                try:
                    values[p.name] = BY_NAME[p.name].check(p.value)
                except ParameterError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
            return SetParametersResult(successful=True)

        node.add_on_set_parameters_callback(on_set)
        # threshold is dynamically typed (a double): rclpy passes a string on to the callback
        refused = node.set_parameters([Parameter("threshold", value="high")])[0]
        assert not refused.successful and refused.reason == "parameter threshold: 'high' is not a number"
        assert values["threshold"] == 0.5
        assert node.set_parameters([Parameter("threshold", value=1)])[0].successful
        assert values["threshold"] == 1.0 and isinstance(values["threshold"], float)
    finally:
        node.destroy_node()


@pytest.mark.parametrize("override, match", [
    (("rate_hz", 1000.0), r"parameter rate_hz: 1000\.0 is above the maximum 100"),
    (("count", 0), r"parameter count: 0 is below the minimum 1"),
    (("gains", [1.0, 2.0]), r"parameter gains: must have 3 values, got 2"),
    (("tags", ["X", "LIGHT"]), r"parameter tags: 'LIGHT' \(in \['X', 'LIGHT'\]\) is not one of"),
    (("frame", ""), r"parameter frame: must not be empty"),
    (("count", "many"), r"parameter count: .*many"),
])
def test_declare_refuses_a_bad_startup_value_quoting_it(ros_context, override, match):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    node = Node("node_params_bad_test", context=ros_context,
                parameter_overrides=[Parameter(override[0], value=override[1])])
    try:
        with pytest.raises(ParameterError, match=match):
            declare(node, SPECS)
    finally:
        node.destroy_node()


def test_params_dataclass_fields_are_the_specs():
    """param() keeps a parameter's default, help and range in one dataclass
    field; param_specs() makes the ParamSpecs from those fields, in order."""
    from dataclasses import dataclass

    from atk_perception.node_params import param, param_specs

    @dataclass(frozen=True)
    class Demo:
        rate_hz: float = param(10.0, "a rate", min=0.5, max=100.0)
        ids: list[int] = param([], "ids (unset unless given)", array_type="integer")
        threshold: float = param(0.5, "changeable while running", min=0.0, max=1.0, runtime=True)

    assert param_specs(Demo) == (SPECS[0], SPECS[-1], SPECS[7])
    a, b = Demo(), Demo()
    assert a.ids == [] and a.ids is not b.ids  # a list default is not shared
    with pytest.raises(TypeError, match="unknown options"):
        param(1, "x", maximum=3)

    @dataclass
    class NotAParameter:
        x: int = 1

    with pytest.raises(TypeError, match="NotAParameter.x is not a parameter"):
        param_specs(NotAParameter)


def test_module_doc_reads_a_docstring_without_importing():
    import sys

    from atk_perception.node_params import module_doc

    sys.modules.pop("atk_perception.tracker_node", None)
    assert module_doc("atk_perception.tracker_node").startswith("Keypoint tracker node: runs h_C")
    assert "atk_perception.tracker_node" not in sys.modules
