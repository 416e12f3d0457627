"""Parameter specs shared by every node's ``--help`` and declarations.

Each node's parameters are written once, as the fields of a frozen dataclass
in the node's ROS-free params module (``camera_params``, ``tracker_params``,
...): :func:`param` makes such a field (its default, and the help text and
range in its metadata) and :func:`param_specs` turns the dataclass into the
node's :class:`ParamSpec` list. The YAML files in ``atk_bringup/config`` are
the operator-facing copy; tests/test_parameter_files.py keeps them in step.

The spec list is ROS-free so ``--help`` can print it without starting ROS;
:func:`declare` (rclpy imported inside) declares every parameter with its
description and range, validates the values, and returns them as a dict.
:meth:`ParamSpec.check` is the one validation: at startup (``declare``) and
for parameters changeable at run time, from the node's on-set-parameters
callback (it raises :class:`ParameterError`; the callback returns a failed
SetParametersResult with its message).
"""
from __future__ import annotations

import array
import ast
import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Sequence


class ParameterError(ValueError):
    """A parameter value the node refuses (the message quotes it)."""


#: element kinds of array parameters (ParamSpec.array_type) -> rclpy Parameter.Type names
_ARRAY_TYPES = {"double": "DOUBLE_ARRAY", "integer": "INTEGER_ARRAY", "string": "STRING_ARRAY",
                "bool": "BOOL_ARRAY"}


def _kind_of(value: Any) -> str:
    """"bool", "integer", "double" or "string": the ROS type of a scalar default."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    return "string"


def _bound(x: float) -> str:
    """A range bound for messages: whole numbers in full (2147483647, not 2.14748e+09)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: name, default (its type is the parameter's type),
    description, and optionally a numeric range (per entry for an array),
    a set of choices, and whether it may change while the node runs."""

    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    #: element type of an array parameter whose default is empty:
    #: "double", "integer", "string" or "bool" (rclpy cannot infer it from []).
    array_type: str = ""
    #: may be changed while the node runs (``ros2 param set``); the node
    #: validates the new value with :meth:`check` in its on-set-parameters
    #: callback. False: declared read-only.
    runtime: bool = False
    #: array parameters: every entry must be one of these.
    item_choices: tuple[str, ...] = ()
    #: array parameters: exactly this many entries (0: any number).
    length: int = 0
    #: string parameters: the empty string is refused.
    nonempty: bool = False

    @property
    def is_array(self) -> bool:
        return bool(self.array_type) or isinstance(self.default, (list, tuple))

    @property
    def kind(self) -> str:
        """The scalar type, of the parameter or of its entries: bool, integer, double or string."""
        if self.array_type:
            return self.array_type
        if self.is_array:
            return _kind_of(self.default[0]) if self.default else "double"
        return _kind_of(self.default)

    def _fail(self, text: str) -> ParameterError:
        return ParameterError(f"parameter {self.name}: {text}")

    def _typed(self, value: Any, where: str = "") -> Any:
        """``value`` as the parameter's scalar type (an int for a double is
        converted), or ParameterError quoting it."""
        kind = self.kind
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise self._fail(f"{value!r}{where} is not true or false")
        if kind == "string":
            if isinstance(value, str):
                return value
            raise self._fail(f"{value!r}{where} is not a string")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(f"{value!r}{where} is not a number")
        if kind == "integer":
            if not isinstance(value, int):
                raise self._fail(f"{value!r}{where} is not an integer")
            return value
        return float(value)

    def _in_range(self, value: Any, where: str = "") -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise self._fail(f"{value!r}{where} is not a finite number")
        if self.min is not None and value < self.min:
            raise self._fail(f"{value!r}{where} is below the minimum {_bound(self.min)}")
        if self.max is not None and value > self.max:
            raise self._fail(f"{value!r}{where} is above the maximum {_bound(self.max)}")

    def check(self, value: Any) -> Any:
        """Return ``value`` if it has the parameter's type and satisfies its
        range/choices, else raise ParameterError quoting it. The value comes
        back normalised: an int given for a double parameter as a float, an
        array (rclpy's array.array included) as a list."""
        if self.is_array:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, array.array)):
                raise self._fail(f"{value!r} is not a list")
            shown = list(value)
            items = [self._typed(v, f" (in {shown!r})") for v in value]
            if self.length and len(items) != self.length:
                raise self._fail(f"must have {self.length} values, got {len(items)}: {shown!r}")
            for v in items:
                if self.item_choices and v not in self.item_choices:
                    raise self._fail(f"{v!r} (in {shown!r}) is not one of "
                                     f"{', '.join(map(repr, self.item_choices))}")
                if self.kind in ("integer", "double"):
                    self._in_range(v, f" (in {shown!r})")
            return items
        value = self._typed(value)
        if self.choices and value not in self.choices:
            raise self._fail(f"{value!r} is not one of {', '.join(self.choices)}")
        if self.nonempty and value == "":
            raise self._fail(f"must not be empty, got {value!r}")
        if self.kind in ("integer", "double"):
            self._in_range(value)
        return value

    def describe_range(self) -> str:
        parts = []
        if self.length:
            parts.append(f"{self.length} values")
        if self.choices:
            parts.append("one of " + ", ".join(self.choices))
        if self.item_choices:
            parts.append("each one of " + ", ".join(map(repr, self.item_choices)))
        if self.min is not None or self.max is not None:
            lo = "-inf" if self.min is None else _bound(self.min)
            hi = "inf" if self.max is None else _bound(self.max)
            parts.append(("each " if self.is_array else "") + f"{lo}..{hi}")
        if self.nonempty:
            parts.append("not empty")
        return "; ".join(parts)


#: ParamSpec fields that param() accepts as keywords (kept in the field's metadata).
_SPEC_OPTIONS = ("min", "max", "choices", "array_type", "runtime", "item_choices", "length", "nonempty")


def param(default: Any, help: str, **options: Any) -> Any:  # noqa: A002 (the metadata key the brief names)
    """A dataclass field that is a node parameter: ``default`` (a list default
    gets a fresh copy per instance), the ``help`` text, and the ParamSpec
    options (min, max, choices, ...) in the field's metadata."""
    unknown = set(options) - set(_SPEC_OPTIONS)
    if unknown:
        raise TypeError(f"param(): unknown options {sorted(unknown)}; known: {', '.join(_SPEC_OPTIONS)}")
    metadata = {"help": help, **options}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def param_specs(config: type) -> tuple[ParamSpec, ...]:
    """The ParamSpecs of a params dataclass, in field order (see :func:`param`)."""
    specs = []
    for f in dataclasses.fields(config):
        if "help" not in f.metadata:
            raise TypeError(f"{config.__name__}.{f.name} is not a parameter: declare it with param()")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        options = {k: v for k, v in f.metadata.items() if k != "help"}
        specs.append(ParamSpec(f.name, default, f.metadata["help"], **options))
    return tuple(specs)


def config_from_params(config: type, values: dict[str, Any]) -> Any:
    """A library config dataclass (e.g. SessionConfig, GateConfig) from a node's
    parameter values: every field the node exposes under the same name is
    taken from ``values``, the others keep the library's default. So a node
    parameter that configures a library is written once, in the node's params
    dataclass; tests check that the shared names have the same defaults."""
    return config(**{f.name: values[f.name] for f in dataclasses.fields(config) if f.name in values})


def module_doc(module: str) -> str:
    """The docstring of ``module``, read from its file without importing it:
    a node module imports rclpy, and ``--help`` prints its docstring without ROS."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"module {module} not found")
    with open(spec.origin, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read(), filename=spec.origin)) or ""


def format_help(node_name: str, summary: str, specs: Sequence[ParamSpec],
                extra: str = "") -> str:
    """Text printed by ``--help``: usage, parameters with defaults and ranges,
    and which ones can be changed while the node runs."""
    lines = [f"usage: {node_name} [--help] [--ros-args -p NAME:=VALUE ...]", "", summary, "",
             "parameters (set with --ros-args -p name:=value, or a YAML parameter file):"]
    for s in specs:
        rng = s.describe_range()
        live = "; changeable at run time" if s.runtime else ""
        lines.append(f"  {s.name} (default {s.default!r}{'; ' + rng if rng else ''}{live})")
        lines.append(f"      {s.description}")
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


from .node_runner import help_or_run, wants_help  # noqa: E402,F401  (wants_help re-exported: the nodes' help check)


@dataclass(frozen=True)
class NodeCommand:
    """A node's console script, in its ROS-free params module.

    ``main`` answers ``--help`` from ``params`` without ROS and otherwise
    imports ``node_module`` (which imports rclpy) and runs its ``main``.
    ``summary`` empty: the node module's docstring, read without importing it.
    """

    executable: str
    node_module: str
    params: Sequence[ParamSpec]
    summary: str = ""
    extra: str = ""

    def print_help(self) -> None:
        print(format_help(self.executable, self.summary or module_doc(self.node_module), self.params,
                          self.extra))

    def main(self, argv: Sequence[str] | None = None) -> int:
        return help_or_run(argv, self.print_help, self.node_module)


def _descriptor(s: ParamSpec, ranges: bool, read_only: bool) -> Any:
    """The ParameterDescriptor of ``s``, with or without its numeric range."""
    from rcl_interfaces.msg import (  # noqa: PLC0415 (keep the module ROS-free)
        FloatingPointRange, IntegerRange, ParameterDescriptor)

    desc = ParameterDescriptor(description=s.description, read_only=read_only,
                               additional_constraints=s.describe_range())
    if s.kind == "double" and not s.is_array:
        # Accept `-p fps:=30` as well as `30.0`; check() converts and refuses non-numbers.
        desc.dynamic_typing = True
    if ranges and s.kind == "double":
        desc.floating_point_range = [FloatingPointRange(
            from_value=-math.inf if s.min is None else float(s.min),
            to_value=math.inf if s.max is None else float(s.max), step=0.0)]
    elif ranges and s.kind == "integer":
        desc.integer_range = [IntegerRange(
            from_value=-2 ** 63 if s.min is None else math.ceil(s.min),
            to_value=2 ** 63 - 1 if s.max is None else math.floor(s.max), step=1)]
    return desc


def declare(node: Any, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare ``specs`` on an rclpy node, validate them, and return {name: value}.

    A parameter is read-only unless its spec says ``runtime``. The range of a
    number goes on its descriptor (integer_range / floating_point_range: shown
    by ``ros2 param describe``, enforced by rclpy on later sets), but only
    after :meth:`ParamSpec.check` has passed the startup value, so a refused
    one gets our message, which quotes the value and names the bound (rclpy
    would refuse it first, without saying which bound). Array ranges are
    checked per entry by :meth:`ParamSpec.check` only (ROS ranges are scalar)."""
    from rclpy.exceptions import (  # noqa: PLC0415 (keep the module ROS-free)
        InvalidParameterTypeException, InvalidParameterValueException)
    from rclpy.parameter import Parameter  # noqa: PLC0415

    values: dict[str, Any] = {}
    for s in specs:
        ranged = not s.is_array and s.kind in ("integer", "double") and (s.min is not None or s.max is not None)
        # A ranged parameter is declared writable without its range, then gets
        # its final descriptor (set_descriptor refuses a read-only parameter).
        desc = _descriptor(s, ranges=False, read_only=not s.runtime and not ranged)
        default: Any = s.default
        if s.array_type and not s.default:
            default = getattr(Parameter.Type, _ARRAY_TYPES[s.array_type])
        try:
            value = node.declare_parameter(s.name, default, desc).value
        except (InvalidParameterTypeException, InvalidParameterValueException, TypeError) as exc:
            raise ParameterError(f"parameter {s.name}: {exc} (expected the type of "
                                 f"its default {s.default!r})") from exc
        if value is None and s.is_array:
            value = []
        values[s.name] = s.check(value)
        if ranged:
            final = _descriptor(s, ranges=True, read_only=not s.runtime)
            final.type = node.describe_parameter(s.name).type
            node.set_descriptor(s.name, final)
    return values


def log_effective(node: Any, values: dict[str, Any]) -> None:
    """Print the effective parameters at startup (house rule)."""
    width = max(len(k) for k in values)
    text = "\n".join(f"  {k:<{width}} = {v!r}" for k, v in values.items())
    node.get_logger().info(f"effective parameters:\n{text}")
