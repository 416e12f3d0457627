"""``atk-graph``: start a graph of :mod:`atk_bringup.graph_tools.graph` without ``launch``.

    atk-graph deploy --help                 # arguments, defaults, choices
    atk-graph deploy sim:=true model:=models/atk_sushi
    atk-graph deploy sim:=true model:=... --dry-run   # print the command lines only

Starts the processes :func:`atk_bringup.graph_tools.graph.resolve` lists (the same ones
``ros2 launch atk_bringup <graph>.launch.py`` starts), prefixes their output
with the node name, and on Ctrl-C / SIGTERM stops them the way ``launch``
does: SIGINT, then SIGTERM after ``sigterm_timeout_s``, then SIGKILL after
``sigkill_timeout_s``.

Exit policy, the same as the launch files' (graph.py declares which
processes are ``required``; all of them are): when a required process exits
on its own, the others are stopped and the runner exits 1 naming it, as
``ros2 launch`` does through the required nodes' ``on_exit``; a process that
is not required only has its exit reported. A graph with a dead node is not
a working robot.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Optional, Sequence

from atk_bringup.graph_tools.graph import GRAPHS, GraphError, ResolvedProcess, describe, resolve


@dataclass(frozen=True)
class StopTimeouts:
    sigterm_timeout_s: float = 5.0  # after SIGINT, as launch's default
    sigkill_timeout_s: float = 5.0  # after SIGTERM

    def __post_init__(self) -> None:
        for name in ("sigterm_timeout_s", "sigkill_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"StopTimeouts.{name} must be > 0, got {getattr(self, name)!r}")


class GraphRunner:
    """Run resolved processes; output lines go to ``out`` prefixed ``[name] ``."""

    def __init__(self, processes: Sequence[ResolvedProcess], out: Optional[IO[str]] = None,
                 timeouts: StopTimeouts = StopTimeouts(), env: Optional[dict[str, str]] = None) -> None:
        self.processes = list(processes)
        self.out = sys.stdout if out is None else out  # looked up now: a redirected stdout is honoured
        self.timeouts = timeouts
        self.env = dict(os.environ if env is None else env)
        # Node output reaches the prefixer line by line instead of in 4 KiB blocks.
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.popens: dict[str, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []
        self._out_lock = threading.Lock()
        self.exited = threading.Event()  # set when a required process has exited on its own
        self.first_exit: Optional[tuple[str, int]] = None  # (name, code) of that process
        self._stopping = False

    def _print(self, line: str) -> None:
        with self._out_lock:
            self.out.write(line if line.endswith("\n") else line + "\n")
            self.out.flush()

    def _pump(self, name: str, required: bool, popen: subprocess.Popen) -> None:
        assert popen.stdout is not None  # set by start(); not a safety check
        for line in popen.stdout:
            self._print(f"[{name}] {line.rstrip()}")
        code = popen.wait()
        if self._stopping:
            return
        if not required:
            self._print(f"[atk-graph] process {name!r} exited with code {code} (not required: the graph runs on)")
            return
        if self.first_exit is None:
            self.first_exit = (name, code)
        self._print(f"[atk-graph] required process {name!r} exited with code {code}")
        self.exited.set()

    def start(self) -> None:
        for p in self.processes:
            if p.cwd:
                os.makedirs(p.cwd, exist_ok=True)
            # Own process group: a terminal's Ctrl-C reaches only the runner,
            # which then stops the children in order instead of all at once.
            popen = subprocess.Popen(p.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=p.cwd, env=self.env, start_new_session=True)
            self.popens[p.name] = popen
            self._print(f"[atk-graph] started {p.name} (pid {popen.pid}): {' '.join(p.cmd)}")
            t = threading.Thread(target=self._pump, args=(p.name, p.required, popen), daemon=True)
            t.start()
            self._threads.append(t)

    def running(self) -> list[str]:
        return [name for name, p in self.popens.items() if p.poll() is None]

    def stop(self) -> dict[str, int]:
        """Stop every process (SIGINT, SIGTERM, SIGKILL); returns the exit codes."""
        self._stopping = True
        for sig, timeout in ((signal.SIGINT, self.timeouts.sigterm_timeout_s),
                             (signal.SIGTERM, self.timeouts.sigkill_timeout_s),
                             (signal.SIGKILL, 5.0)):
            alive = [p for p in self.popens.values() if p.poll() is None]
            if not alive:
                break
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            for p in alive:
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            still = [n for n, p in self.popens.items() if p.poll() is None]
            if still and sig != signal.SIGKILL:
                self._print(f"[atk-graph] {', '.join(still)} still running {timeout:.0f} s after "
                            f"{signal.Signals(sig).name}; escalating")
        for t in self._threads:
            t.join(timeout=2.0)
        return {name: p.returncode for name, p in self.popens.items()}


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise GraphError(f"expected name:=value, got {item!r}")
        values[name] = value
    return values


def _parser() -> argparse.ArgumentParser:
    epilog = "\n\n".join(f"=== {name} ===\n{describe(g)}" for name, g in GRAPHS.items())
    p = argparse.ArgumentParser(
        prog="atk-graph", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start an atk-ros graph (the same processes as `ros2 launch atk_bringup <graph>.launch.py`) "
                    "without the launch package.", epilog=epilog)
    p.add_argument("graph", choices=sorted(GRAPHS), help="which graph")
    p.add_argument("assignments", nargs="*", metavar="name:=value", help="launch arguments")
    p.add_argument("--dry-run", action="store_true", help="print the resolved command lines and exit")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop the graph after this many seconds (0: run until Ctrl-C)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `atk-graph deploy --help`: that graph's arguments only.
    if len(argv) >= 2 and argv[0] in GRAPHS and ("-h" in argv or "--help" in argv):
        print(f"usage: atk-graph {argv[0]} [name:=value ...] [--dry-run] [--duration S]\n")
        print(describe(GRAPHS[argv[0]]))
        return 0
    args = _parser().parse_args(argv)
    notes: list[str] = []
    try:
        procs = resolve(GRAPHS[args.graph], parse_assignments(args.assignments), notes=notes)
    except GraphError as exc:
        print(f"atk-graph: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"[atk-graph] {note}", flush=True)
    if args.dry_run:
        for p in procs:
            print(f"{p.name}: {' '.join(p.cmd)}" + (f"  (in {p.cwd})" if p.cwd else ""))
        return 0

    runner = GraphRunner(procs)
    stop_requested = threading.Event()

    def on_signal(signum, _frame):
        stop_requested.set()
        runner.exited.set()  # wake the wait below

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    runner.start()
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    while not runner.exited.is_set():
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        runner.exited.wait(timeout=remaining if remaining is not None else 1.0)
    failed = runner.first_exit if not stop_requested.is_set() else None
    runner._print("[atk-graph] stopping " + ", ".join(runner.running() or ["(nothing left)"]))
    codes = runner.stop()
    runner._print("[atk-graph] exit codes: " + ", ".join(f"{n}={c}" for n, c in codes.items()))
    if failed is not None:
        print(f"atk-graph: required process {failed[0]!r} exited with code {failed[1]}, so the graph was "
              "stopped (see its output above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
