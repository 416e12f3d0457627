"""The one main() all six nodes use: help, startup errors, clean and unclean stops."""
from __future__ import annotations

import pytest

from atk_perception.node_runner import run_node, user_args, wants_help


def test_help_is_found_before_ros_args_only():
    assert wants_help(["node", "--help"]) and wants_help(["node", "-h", "--ros-args"])
    assert not wants_help(["node", "--ros-args", "-h"])
    assert user_args(["node", "a", "--ros-args", "-p", "x:=1"]) == ["a"]


def test_help_prints_without_starting_ros(capsys):
    built = []
    rc = run_node("n", ["n", "--help"], lambda: built.append(1), print_help=lambda: print("usage: n"))
    assert rc == 0 and built == [] and "usage: n" in capsys.readouterr().out


def test_a_startup_error_is_reported_and_exits_2(capsys):
    def bad():
        raise ValueError("model_dir /nope does not exist")

    assert run_node("tracker", ["tracker"], bad) == 2
    assert "[tracker] cannot start: model_dir /nope does not exist" in capsys.readouterr().err
    import rclpy

    assert not rclpy.ok()   # the context was shut down on the way out


def _node_raising(after_shutdown: bool):
    from rclpy.node import Node
    import rclpy

    class N(Node):
        def __init__(self):
            super().__init__("runner_test")
            self.create_timer(0.01, self.tick)

        def tick(self):
            if after_shutdown:
                rclpy.try_shutdown()   # what SIGINT's handler does ...
            raise RuntimeError("Unable to convert call argument '0' to Python object")  # ... mid-take

    return N


def test_a_runtime_error_after_shutdown_is_the_clean_stop_it_looks_like():
    exits = []
    rc = run_node("policy", ["policy"], _node_raising(True), on_exit=lambda n: exits.append(type(n).__name__))
    assert rc == 0 and exits == ["N"]


def test_a_runtime_error_while_running_is_not_swallowed():
    exits = []
    with pytest.raises(RuntimeError, match="Unable to convert"):
        run_node("policy", ["policy"], _node_raising(False), on_exit=lambda n: exits.append(1))
    assert exits == [1]   # resources released all the same


def test_ctrl_c_while_the_node_is_being_built_is_a_clean_exit():
    """SIGINT may arrive while the node loads its model (seen in a test of atk-graph)."""
    exits = []

    def interrupted():
        raise KeyboardInterrupt

    assert run_node("policy", ["policy"], interrupted, on_exit=exits.append) == 0
    assert exits == []   # no node was built, so none to release


def test_only_the_first_sigint_interrupts():
    """Under `ros2 launch` a node gets Ctrl-C twice (the terminal's process group and launch): the
    second KeyboardInterrupt used to land in the teardown (a join, destroy_node) and crash the node."""
    from atk_perception.node_runner import _FirstSigintOnly

    handler = _FirstSigintOnly()
    with pytest.raises(KeyboardInterrupt):
        handler(2, None)
    assert handler(2, None) is None and handler(2, None) is None  # ignored from now on
    stopping = _FirstSigintOnly()
    stopping.stopping = True  # the teardown has begun (run_node's finally)
    assert stopping(2, None) is None


def test_help_or_run_imports_the_node_module_only_to_run_it(capsys, monkeypatch):
    import sys
    import types

    from atk_perception.node_runner import help_or_run

    ran = []
    node_module = types.ModuleType("atk_fake_node")
    node_module.main = lambda argv: ran.append(argv) or 7
    monkeypatch.setitem(sys.modules, "atk_fake_node", node_module)
    assert help_or_run(["n", "--help"], lambda: print("usage: n"), "atk_no_such_module") == 0
    assert capsys.readouterr().out == "usage: n\n" and not ran
    assert help_or_run(["n", "--ros-args"], lambda: None, "atk_fake_node") == 7 and ran == [["n", "--ros-args"]]
