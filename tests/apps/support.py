"""Helpers shared by the runtime and agent tests (imported as tests.apps.support; the apps beside it run as scripts)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parent
PY = sys.executable
DEADLINE = 15.0
"""Generous: these are deadlines for conditions, never timing assertions."""


def app(name: str) -> str:
    return str(APPS / name)


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as gone: nobody may reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def eventually(predicate, timeout: float = DEADLINE, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def aeventually(predicate, timeout: float = DEADLINE, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def kill_all(pids) -> None:
    """Teardown: SIGKILL each pid's group and the pid itself, ignoring the gone ones."""
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def pids():
    """Pids to SIGKILL (with their groups) at teardown, whatever the test did."""
    found: list[int] = []
    yield found
    kill_all(found)
