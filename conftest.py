"""Test-session setup shared by every package's tests.

Each pytest run claims its own ROS_DOMAIN_ID (a lock file per id, held for
the whole run) and limits discovery to localhost, so two runs on one machine
never see each other's topics. Subprocesses started by tests inherit both.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

_DOMAIN_LOCK_DIR = Path(os.environ.get("ATK_DOMAIN_LOCK_DIR", "/tmp"))
# Fast DDS maps a domain id to UDP ports 7400 + 250 * id; ids up to 101 stay
# below the ephemeral port range on Linux.
_DOMAIN_RANGE = range(11, 101)
_held_lock = None


def _claim_domain_id() -> int:
    global _held_lock
    for domain in _DOMAIN_RANGE:
        fh = open(_DOMAIN_LOCK_DIR / f"atk-ros-domain-{domain}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        _held_lock = fh
        return domain
    raise RuntimeError(
        f"no free ROS_DOMAIN_ID in {_DOMAIN_RANGE.start}..{_DOMAIN_RANGE.stop - 1} "
        f"(lock files in {_DOMAIN_LOCK_DIR}); too many concurrent test runs?")


def pytest_configure(config: pytest.Config) -> None:
    if "ATK_TEST_DOMAIN_FIXED" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(_claim_domain_id())
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_HOME", str(Path(config.rootpath) / ".ros"))
    os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_report_header(config: pytest.Config) -> str:
    return (f"ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')} "
            f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')} "
            f"FASTDDS_DEFAULT_PROFILES_FILE={os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE')}")
