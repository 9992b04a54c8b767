"""Read-only mounts for a process task: a mount namespace of its own in which those paths are read-only.

A process task sees the node's file system, so ``readonly`` on one of its mounts needs a view of
that file system that only the task has.  In the forked child, still root and before it drops to the
task's user (:mod:`.confine`), :func:`enter_readonly_view` unshares the mount namespace, makes every
mount a slave of the node's (nothing done here propagates back; mounts the node makes later still
appear), and bind-mounts each path onto itself read-only.  The bind is not recursive: a mount below
such a path is hidden in the task's view rather than left writable.  The namespace ends with the task's
last process; the node's own view never changes.

Only a root node with the right to make mount namespaces can do this (not root, or a container without
CAP_SYS_ADMIN, cannot): :func:`available` finds out once, by doing it in a throwaway child.  Where it is
not available, ``readonly`` is not enforced for processes, and the node says so for each such task.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_SLAVE = 0x1, 0x20, 0x1000, 0x4000, 0x80000
PROBE_TIMEOUT = 10.0
"""Seconds the one-time probe may take (a fork and an exec of ``true``)."""


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        libc.unshare.argtypes = [ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()  # resolved before any fork: the child only calls it


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_readonly_view(paths: tuple[str, ...]) -> None:
    """In a forked child that is root: a mount namespace of its own where each of ``paths`` is read-only.
    Raises OSError (the start then fails rather than run the task with a writable mount)."""
    if _libc is None:
        raise OSError("mount namespaces need Linux")
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "mount --make-rslave /")
    for path in paths:
        raw = os.fsencode(path)
        _check(_libc.mount(raw, raw, None, MS_BIND, None), f"bind {path}")
        _check(_libc.mount(None, raw, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None), f"remount {path} read-only")


@functools.cache
def available() -> bool:
    """True when this node can give a task a read-only view (root, and mount namespaces allowed)."""
    if os.geteuid() != 0 or _libc is None:
        return False
    try:
        done = subprocess.run(["true"], preexec_fn=lambda: enter_readonly_view(("/",)), timeout=PROBE_TIMEOUT,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
