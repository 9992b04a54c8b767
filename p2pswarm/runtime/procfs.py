"""Linux process facts from /proc, and the parent-death signal.

A node that dies (SIGKILL, OOM, power) must not leave its tasks serving as orphans:
each task leader asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``).
That covers the leader only; processes the task forked itself stay in the task's process
group, which is why the node records the group (``pid`` file) and, on restart, kills
every process still in it that carries the task's ``P2PSWARM_TASK_ID``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Callable

PR_SET_PDEATHSIG = 1
PROC = Path("/proc")


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()  # resolved before any fork: the child only calls it


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when the forking thread's process
    dies, or None off Linux. Note: the kernel signals when the *thread* that forked exits,
    so start tasks from the node's long-lived loop thread. If the parent died before the
    prctl took effect, the child kills itself at once."""
    if _prctl is None:
        return None
    parent = os.getpid()
    prctl = _prctl

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    out = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat_fields(int(entry.name))
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                out.append(int(entry.name))
    return out


def environ_has(pid: int, key: str, value: str) -> bool:
    """True if ``pid``'s environment holds ``key=value`` (False if unreadable or gone)."""
    try:
        data = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    return f"{key}={value}".encode() in data.split(b"\0")


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]."""
    raw = (PROC / str(pid) / "stat").read_text()
    return raw[raw.rindex(")") + 2:].split()
