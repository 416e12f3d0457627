"""Pool workers end when the process that started them is killed (a killed
atk-demo once left two evaluation workers simulating for 20 minutes)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

WORKER_START_TIMEOUT_S = 60.0
WORKER_EXIT_TIMEOUT_S = 20.0

# A parent that starts a 2-worker spawn pool (with or without the initializer),
# gives each worker a task that blocks, prints the workers' pids, then waits to be killed.
PARENT = textwrap.dedent("""
    import multiprocessing as mp, os, sys, time
    from atk_policy.worker_process import exit_with_parent

    def block(_):
        print("W", os.getpid(), flush=True)
        time.sleep(600)   # the work the orphan would go on doing

    if __name__ == "__main__":
        init = (exit_with_parent, (os.getpid(),)) if sys.argv[1] == "guard" else (None, ())
        pool = mp.get_context("spawn").Pool(2, *init)
        pool.map_async(block, range(2), chunksize=1)
        time.sleep(600)   # killed by the test
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _orphans_after_kill(tmp_path, mode: str) -> list[int]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    pids: list[int] = []
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while len(pids) < 2:
        line = proc.stdout.readline()   # blocks until a worker reports (or the parent ends)
        assert line and time.monotonic() < deadline, f"workers did not start ({mode})"
        if line.startswith("W "):
            pids.append(int(line.split()[1]))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)   # polling the workers' exit against a deadline
    left = [p for p in pids if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_workers_end_with_their_killed_parent(tmp_path):
    assert _orphans_after_kill(tmp_path, "guard") == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_without_the_guard_workers_outlive_their_parent(tmp_path):
    """The failure the guard exists for (so the test above can tell)."""
    assert len(_orphans_after_kill(tmp_path, "none")) == 2

