"""Confining a task's process before it runs a line of its own code.

The hook runs in the forked child, still root, just before exec: it enters the task's cgroup (so
nothing the task ever forks is outside it: children inherit the cgroup, and only root may move a
process out), makes the task's read-only mounts read-only in a mount namespace of its own (:mod:`.mountns`),
drops to the task's user (no supplementary groups, then gid, then uid), and asks the
kernel for SIGKILL when the node dies (after the uid change, which would clear that request).
``subprocess``'s own ``user=`` cannot be used: it switches users before running the hook, and an
unprivileged process may not enter a root-owned cgroup.

A failure in the hook makes the start fail (``subprocess`` raises SubprocessError in the parent)
rather than run a task outside its cgroup or as the wrong user.
"""

from __future__ import annotations

import os
from typing import Callable

from p2pswarm.runtime import mountns, procfs
from p2pswarm.runtime.taskuser import TaskUser


def preexec(procs_files: tuple[str, ...], user: TaskUser | None,
            readonly: tuple[str, ...] = ()) -> Callable[[], None] | None:
    """The child's last steps before exec; ``procs_files`` are the cgroup's ``cgroup.procs`` (none: no cgroup);
    ``readonly``: node paths the task sees read-only, in a mount namespace of its own (:mod:`.mountns`)."""
    die_with_node = procfs.die_with_parent_hook()
    if not procs_files and user is None and not readonly:
        return die_with_node

    def hook() -> None:
        for path in procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # 0: the writing process itself
            finally:
                os.close(fd)
        if readonly:
            mountns.enter_readonly_view(readonly)
        if user is not None:
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
        if die_with_node is not None:
            die_with_node()

    return hook
