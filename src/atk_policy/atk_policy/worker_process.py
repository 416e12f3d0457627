"""Worker processes that do not outlive the run that started them (ROS-free).

A ``multiprocessing`` worker (spawn context) holds both ends of its task pipe,
so when its parent is killed (SIGKILL, or SIGTERM without cleanup) it never
sees end-of-file and keeps simulating or propagating on its own: measured on
2026-12-02, two atk-demo evaluation workers ran on for 20 minutes after their
parent was killed. Pass :func:`exit_with_parent` as the pool's initializer
(with ``os.getpid()`` of the parent) to end a worker when its parent dies.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

#: prctl option: the signal the kernel sends this process when its parent thread exits (Linux).
PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits.

    parent_pid: the pid the parent had when it started this worker. If the
    parent is already gone (this process was re-parented before the request
    took effect), exit now. Returns False where the platform has no such
    request (not Linux): the worker then runs as before.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:
        os._exit(1)   # the parent died before the request took effect
    return True
