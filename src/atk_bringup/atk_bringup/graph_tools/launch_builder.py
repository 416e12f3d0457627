"""Build a ``launch.LaunchDescription`` from a graph of :mod:`atk_bringup.graph_tools.graph`.

Used by ``launch/*.launch.py``. ``launch`` and ``launch_ros`` are imported
inside :func:`build_launch_description` only, so this module imports on a
machine without them (the launch-free runner never calls it).

Mapping from the declaration:

* :class:`~atk_bringup.graph_tools.graph.LaunchArgument` -> ``DeclareLaunchArgument``
  (default, description, choices);
* :class:`~atk_bringup.graph_tools.graph.NodeSpec` -> ``launch_ros.actions.Node`` with
  the parameter files (resolved to paths exactly as the runner resolves
  them), typed parameter overrides ``ParameterValue(LaunchConfiguration(arg),
  value_type=...)`` (an ``IfElseSubstitution`` for an argument whose
  value ``auto`` defers to another, e.g. use_sim_time -> sim), remappings and ``ros_arguments=['--log-level', ...]``;
* each :class:`~atk_bringup.graph_tools.graph.When` -> ``IfCondition(EqualsSubstitution
  (LaunchConfiguration(arg), value))`` (``NotEqualsSubstitution`` when
  negated); a node with several is nested in one ``GroupAction`` per extra
  condition (all must hold);
* :class:`~atk_bringup.graph_tools.graph.ProcessSpec` -> ``ExecuteProcess``;
* every ``required`` node or process gets ``on_exit=[OpaqueFunction(
  required_exit)]``: when it exits while the launch is not already shutting
  down, :func:`required_exit` raises :class:`RequiredProcessExited`, which
  ``launch`` reports in one line ("Caught exception in launch ...: required
  node 'tracker' exited with code 2 ...") before it shuts the whole launch
  down and exits 1, the same as ``atk-graph``. (``Shutdown()`` alone would
  stop the graph but exit 0.)
* one ``OpaqueFunction(prepare_arguments)`` after the argument declarations
  runs :func:`atk_bringup.graph_tools.graph.prepare_values` on the launch configurations
  before any node starts: a missing required argument is refused in one line,
  ``model:=latest`` and ``sim_width:=auto`` are replaced by their values (and
  printed).
"""
from __future__ import annotations

from typing import Any

from atk_bringup.graph_tools.graph import Graph, GraphError, ParamFromArg, When, config_path, prepare_values

_TYPES = {"str": str, "bool": bool, "int": int, "float": float}


class RequiredProcessExited(RuntimeError):
    """A required node or process of a launched graph exited on its own."""


def prepare_arguments(context: Any, graph: Graph) -> list:
    """OpaqueFunction body: finish the graph's launch arguments in ``context`` (see module docstring).

    Raises GraphError (launch prints it in one line and exits 1)."""
    configs = context.launch_configurations
    values = {a.name: configs[a.name] for a in graph.arguments if a.name in configs}
    notes: list[str] = []
    try:
        prepared = prepare_values(graph, values, notes=notes)
    except GraphError as exc:
        raise GraphError(f"{graph.name}.launch.py: {exc}") from None
    for name, value in prepared.items():
        configs[name] = value
    for note in notes:
        print(f"[{graph.name}.launch.py] {note}", flush=True)
    return []


def required_exit(context: Any, name: str, kind: str) -> list:
    """OpaqueFunction body run on a required process's exit: stop the launch unless it is stopping anyway."""
    if context.is_shutdown:
        return []  # Ctrl-C or another process's exit: this exit is part of the shutdown
    event = getattr(context.locals, "event", None)
    code = getattr(event, "returncode", None)
    raise RequiredProcessExited(f"required {kind} {name!r} exited with code {code}, so the graph is stopped "
                                "(see its output above)")


def build_launch_description(graph: Graph) -> Any:
    """The ``LaunchDescription`` that starts ``graph`` (see module docstring)."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, ExecuteProcess, GroupAction, OpaqueFunction
    from launch.conditions import IfCondition
    from launch.substitutions import EqualsSubstitution, IfElseSubstitution, LaunchConfiguration, \
        NotEqualsSubstitution
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    def condition(w: When) -> Any:
        cls = NotEqualsSubstitution if w.negate else EqualsSubstitution
        return IfCondition(cls(LaunchConfiguration(w.arg), w.value))

    def guarded(action_factory, when: tuple[When, ...]) -> Any:
        # The innermost condition goes on the action itself; every further one
        # wraps it in a GroupAction, so all of them must hold.
        if not when:
            return action_factory(None)
        action = action_factory(condition(when[-1]))
        for w in reversed(when[:-1]):
            action = GroupAction([action], condition=condition(w))
        return action

    def arg_value(p: ParamFromArg) -> Any:
        if p.auto_from is None:
            return LaunchConfiguration(p.arg)
        # use_sim_time:=auto follows sim:=...
        return IfElseSubstitution(EqualsSubstitution(LaunchConfiguration(p.arg), "auto"),
                                  LaunchConfiguration(p.auto_from), LaunchConfiguration(p.arg))

    entities: list[Any] = []
    for a in graph.arguments:
        kwargs = {"default_value": a.default, "description": a.description}
        if a.choices is not None:
            kwargs["choices"] = list(a.choices)
        entities.append(DeclareLaunchArgument(a.name, **kwargs))
    entities.append(OpaqueFunction(function=prepare_arguments, args=[graph]))

    def on_exit(name: str, kind: str, required: bool) -> Any:
        return [OpaqueFunction(function=required_exit, args=[name, kind])] if required else None

    for n in graph.nodes:
        parameters: list[Any] = [str(config_path(f)) for f in n.param_files]
        if n.params_from_args:
            parameters.append({p.param: ParameterValue(arg_value(p), value_type=_TYPES[p.kind])
                               for p in n.params_from_args})

        def make_node(cond, n=n, parameters=parameters):
            return Node(package=n.package, executable=n.executable, name=n.name, output="screen",
                        parameters=parameters, remappings=list(n.remappings),
                        ros_arguments=["--log-level", LaunchConfiguration("log_level")], condition=cond,
                        on_exit=on_exit(n.name, "node", n.required))

        entities.append(guarded(make_node, n.when))

    for p in graph.processes:
        cmd = [LaunchConfiguration(part[1:-1]) if part.startswith("{") and part.endswith("}") else part
               for part in p.cmd]

        def make_process(cond, p=p, cmd=cmd):
            return ExecuteProcess(cmd=cmd, name=p.name, output="screen",
                                  cwd=LaunchConfiguration(p.cwd_arg) if p.cwd_arg else None, condition=cond,
                                  on_exit=on_exit(p.name, "process", p.required))

        entities.append(guarded(make_process, p.when))

    return LaunchDescription(entities)
