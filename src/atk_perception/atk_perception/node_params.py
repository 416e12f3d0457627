"""Parameter specs shared by the perception nodes' ``--help`` and declarations.

The spec list is ROS-free so ``--help`` can print it without starting ROS;
:func:`declare` (rclpy imported inside) declares every parameter with its
description and range, validates the values, and returns them as a dict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence


class ParameterError(ValueError):
    """A parameter value the node refuses (the message quotes it)."""


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: name, default (its type is the parameter's type),
    description, and an optional numeric range or set of choices."""

    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    #: element type of an array parameter whose default is empty:
    #: "double", "integer" or "string" (rclpy cannot infer it from []).
    array_type: str = ""

    def check(self, value: Any) -> Any:
        """Return ``value`` if it satisfies the range/choices, else raise ParameterError."""
        if self.choices and value not in self.choices:
            raise ParameterError(f"parameter {self.name}: {value!r} is not one of "
                                 f"{', '.join(self.choices)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise ParameterError(f"parameter {self.name}: {value!r} is not a finite number")
            if self.min is not None and value < self.min:
                raise ParameterError(f"parameter {self.name}: {value!r} is below the minimum {self.min:g}")
            if self.max is not None and value > self.max:
                raise ParameterError(f"parameter {self.name}: {value!r} is above the maximum {self.max:g}")
        return value

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.min is not None or self.max is not None:
            lo = "-inf" if self.min is None else f"{self.min:g}"
            hi = "inf" if self.max is None else f"{self.max:g}"
            return f"{lo}..{hi}"
        return ""


def format_help(node_name: str, summary: str, specs: Sequence[ParamSpec],
                extra: str = "") -> str:
    """Text printed by ``--help``: usage, parameters with defaults and ranges."""
    lines = [f"usage: {node_name} [--help] [--ros-args -p NAME:=VALUE ...]", "", summary, "",
             "parameters (set with --ros-args -p name:=value, or a YAML parameter file):"]
    for s in specs:
        rng = s.describe_range()
        lines.append(f"  {s.name} (default {s.default!r}{'; ' + rng if rng else ''})")
        lines.append(f"      {s.description}")
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


from .node_runner import wants_help  # noqa: E402,F401  (re-exported: the nodes' help check)


def declare(node: Any, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare ``specs`` on an rclpy node (read-only: they take effect at
    startup), validate them, and return {name: value}."""
    from rcl_interfaces.msg import ParameterDescriptor  # noqa: PLC0415 (keep the module ROS-free)
    from rclpy.exceptions import (  # noqa: PLC0415
        InvalidParameterTypeException, InvalidParameterValueException)
    from rclpy.parameter import Parameter  # noqa: PLC0415

    values: dict[str, Any] = {}
    for s in specs:
        desc = ParameterDescriptor(description=s.description, read_only=True)
        if s.choices:
            desc.additional_constraints = "one of: " + ", ".join(s.choices)
        # rclpy's ranges are enforced on declaration; we check ourselves too so
        # the message quotes the value (rclpy's does not say which bound).
        if isinstance(s.default, float):
            # Accept `-p fps:=30` as well as `30.0`; the type is checked below.
            desc.dynamic_typing = True
        default: Any = s.default
        if s.array_type:
            default = {"double": Parameter.Type.DOUBLE_ARRAY,
                       "integer": Parameter.Type.INTEGER_ARRAY,
                       "string": Parameter.Type.STRING_ARRAY}[s.array_type]
        try:
            value = node.declare_parameter(s.name, default, desc).value
        except (InvalidParameterTypeException, InvalidParameterValueException, TypeError) as exc:
            raise ParameterError(f"parameter {s.name}: {exc} (expected the type of "
                                 f"its default {s.default!r})") from exc
        if s.array_type:
            value = list(value) if value is not None else []
        elif isinstance(s.default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParameterError(f"parameter {s.name}: {value!r} is not a number")
            value = float(value)
        values[s.name] = s.check(value)
    return values


def log_effective(node: Any, values: dict[str, Any]) -> None:
    """Print the effective parameters at startup (house rule)."""
    width = max(len(k) for k in values)
    text = "\n".join(f"  {k:<{width}} = {v!r}" for k, v in values.items())
    node.get_logger().info(f"effective parameters:\n{text}")
