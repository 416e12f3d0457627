"""One ``main()`` for every node of the workspace: start, spin, stop cleanly.

Every node executable does the same around its Node class: ``--help``
without ROS, ``rclpy.init``, build the node (an operator-fixable startup
error is printed as ``[name] cannot start: ...`` and exits 2), spin an
executor, treat Ctrl-C / an external shutdown as a clean exit (0), and on the
way out release the node's own resources, destroy it and shut rclpy down.

One case needs care, and is why this lives in one place: SIGINT shuts the
context down from the signal handler, and a message take already under way
then fails inside rclpy with a RuntimeError ("Unable to convert call argument
'0' to Python object", seen in a CI run). When the context is no longer ok
that is the clean shutdown it looks like; any other RuntimeError propagates.

Another: under ``ros2 launch`` a node gets Ctrl-C twice, once from the
terminal (launch's children share its process group) and once from launch
itself. The second SIGINT raised KeyboardInterrupt in the middle of the
teardown (a worker's join, ``destroy_node``): the tracker aborted (-6), the
simulator crashed on exit (-11) and every node printed a traceback on a
clean Ctrl-C. Only the first SIGINT interrupts; later ones, and any once
the teardown has started, are ignored (launch escalates to SIGTERM, then
SIGKILL, if a teardown hangs).

rclpy is imported inside :func:`run_node` only. Node modules import rclpy
at the top; each node's console script is the ``main`` of its ROS-free params
module, which answers ``--help`` and only then imports the node module
(:func:`help_or_run`), so ``--help`` needs no ROS environment.
"""
from __future__ import annotations

import importlib
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence


#: How long a RuntimeError from spinning waits for a shutdown in progress
#: before it counts as a real error.
SHUTDOWN_GRACE_S = 1.0
#: How long the teardown waits for callbacks still running in the executor.
EXECUTOR_SHUTDOWN_TIMEOUT_S = 2.0


def user_args(argv: Sequence[str]) -> list[str]:
    """The arguments before ``--ros-args`` (argv[0] excluded)."""
    argv = list(argv)
    return argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]


def wants_help(argv: Sequence[str]) -> bool:
    """``-h`` / ``--help`` among the user's arguments (not the ROS ones)."""
    args = user_args(argv)
    return "-h" in args or "--help" in args


def help_or_run(argv: Sequence[str] | None, print_help: Callable[[], None], node_module: str) -> int:
    """A node's console script: ``-h`` / ``--help`` is answered here, without
    ROS; otherwise ``node_module`` (which imports rclpy) is imported and its
    ``main(argv)`` runs the node."""
    if wants_help(list(sys.argv if argv is None else argv)):
        print_help()
        return 0
    return importlib.import_module(node_module).main(argv)


class _FirstSigintOnly:
    """Python's SIGINT handler (rclpy's own handler shuts the context down, then chains to it).

    The first Ctrl-C raises KeyboardInterrupt, as Python's default handler
    does. Later ones, and any once the teardown has begun, are ignored: the
    shutdown they ask for is already under way, and a KeyboardInterrupt in
    the middle of a worker's join or ``destroy_node`` is what crashed the
    nodes.
    """

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt


def _install_sigint_handler() -> tuple[_FirstSigintOnly, Any]:
    """Install the handler; returns it and the handler it replaced (None off the main thread)."""
    handler = _FirstSigintOnly()
    # signal.signal works in the main thread only (tests call run_node from others).
    if threading.current_thread() is not threading.main_thread():
        return handler, None
    return handler, signal.signal(signal.SIGINT, handler)


def _after_teardown(previous: Any, process_exits: bool) -> None:
    """SIGINT handling once rclpy is shut down (its own handler uninstalled).

    A process about to exit ignores SIGINT outright: the interpreter resets
    Python-level handlers while it finalizes, and a late second Ctrl-C then
    killed a cleanly stopped node with -2. An in-process caller (a test)
    gets its previous handler back."""
    if previous is None:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN if process_exits else previous)


def run_node(name: str, argv: Sequence[str] | None, make_node: Callable[[], Any], *,
             print_help: Callable[[], None] | None = None,
             startup_errors: tuple[type[BaseException], ...] = (ValueError,),
             threads: int = 1,
             on_exit: Callable[[Any], None] | None = None) -> int:
    """Run one node until shutdown; returns the process exit code.

    print_help: prints the node's usage (``-h`` / ``--help``, no ROS needed).
    make_node: builds the rclpy Node (after ``rclpy.init``); an exception of
    ``startup_errors`` is an operator error: printed, exit code 2.
    threads: 1 spins a SingleThreadedExecutor, more a MultiThreadedExecutor
    with that many threads. on_exit(node): releases what the node owns
    (threads, devices) before the node is destroyed.
    """
    process_exits = argv is None  # called as the process's main: it exits when this returns
    argv = list(sys.argv if argv is None else argv)
    if print_help is not None and wants_help(argv):
        print_help()
        return 0
    import rclpy  # noqa: PLC0415
    from rclpy.executors import (ExternalShutdownException, MultiThreadedExecutor,  # noqa: PLC0415
                                 SingleThreadedExecutor)

    sigint, previous_sigint = _install_sigint_handler()   # before rclpy.init, which chains to it
    rclpy.init(args=argv)
    node = None
    executor = None
    try:
        try:
            node = make_node()
        except startup_errors as exc:
            print(f"[{name}] cannot start: {exc}", file=sys.stderr, flush=True)
            return 2
        executor = SingleThreadedExecutor() if threads <= 1 else MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass   # Ctrl-C / shutdown, also while the node is still being built
    except RuntimeError:
        # The take can fail an instant before the signal handler has shut the
        # context down (seen in a clean-clone CI run: rclpy.ok() still true):
        # give the shutdown a moment before calling the error real.
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while rclpy.ok() and time.monotonic() < deadline:
            time.sleep(0.01)
        if rclpy.ok():
            raise
    finally:
        sigint.stopping = True
        if executor is not None:
            # An interrupted spin leaves the executor's wait generator holding
            # the node's handles "in use", and destroy_node() then waits for
            # them forever (seen: policy and tracker nodes still alive 5 s
            # after Ctrl-C under ros2 launch, until SIGKILL). Shutting the
            # executor down drops that generator.
            executor.shutdown(timeout_sec=EXECUTOR_SHUTDOWN_TIMEOUT_S)
        if node is not None:
            try:
                if on_exit is not None:
                    on_exit(node)
            finally:
                node.destroy_node()
        rclpy.try_shutdown()
        _after_teardown(previous_sigint, process_exits)
    return 0
