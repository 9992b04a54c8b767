"""Who a task runs as: an unprivileged user when the node is root, and the task's own home.

Tasks are untrusted code. Running as the node's user, a task could read the node's keys
(``<data-dir>/security``) and drive the cluster through ``api.sock``. So a root node runs
every task as :data:`DEFAULT_USER` (a system user it creates, else :data:`FALLBACK_USER`),
and its data dir is 0700 (:meth:`p2pswarm.node.datadir.DataDir.prepare`): the task's uid can
open nothing in it. The node still writes the task's logs (they are fed from pipes).

A task's home and default working directory, ``HOMES/<node id>/<task id>`` (0700, the task
user's), cannot live in the data dir, which the task cannot even traverse; ``HOMES/<node id>``
is root's 0711, so tasks reach their own home but list nobody's. All tasks of a node share
one uid: they are isolated from the node, not from each other.

A node that is not root cannot switch users; its tasks run as itself (isolation is off, and
the node says so once in its log).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_USER = "p2pswarm-task"
"""The dedicated system user tasks run as (created with ``useradd --system`` when missing)."""
FALLBACK_USER = "nobody"
"""Used when :data:`DEFAULT_USER` cannot be created (no useradd, read-only /etc)."""
HOMES = Path("/var/lib/p2pswarm-tasks")
"""Parent of each node's task homes (outside any data dir: tasks must reach their home)."""
USERADD_TIMEOUT = 10.0
"""Seconds ``useradd`` may take (it locks /etc/passwd; a stuck lock must not hang the node's start)."""
NOLOGIN = "/usr/sbin/nologin"


class TaskUserError(Exception):
    """The configured task user cannot be used (one line saying what to do)."""


@dataclass(frozen=True)
class TaskUser:
    name: str
    uid: int
    gid: int

    def popen_options(self) -> dict[str, Any]:
        """``subprocess`` keyword arguments that drop to this user: its uid and gid, and no
        supplementary group of the node (``extra_groups=[]`` calls setgroups with none)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def env(self, home: Path) -> dict[str, str]:
        return {"HOME": str(home), "USER": self.name, "LOGNAME": self.name}


def resolve(name: str | None) -> tuple[TaskUser | None, str]:
    """(the user tasks run as, or None to run them as the node; one line for the node's log).

    ``name`` None means the default (:data:`DEFAULT_USER`, created if possible, else
    :data:`FALLBACK_USER`); a named user must exist. Raises TaskUserError otherwise."""
    if os.geteuid() != 0:
        return None, (f"task isolation is off: the node runs as uid {os.geteuid()}, not root, so it cannot run "
                      f"tasks as another user (they can read this node's data dir; run the node as root to "
                      f"isolate them)")
    if name is None:
        entry = _lookup(DEFAULT_USER) or _create(DEFAULT_USER) or _lookup(FALLBACK_USER)
        if entry is None:
            raise TaskUserError(f"neither the task user {DEFAULT_USER} (useradd failed) nor {FALLBACK_USER} "
                                f"exists; create one, or pass --task-user NAME")
    else:
        entry = _lookup(name)
        if entry is None:
            raise TaskUserError(f"task user {name!r} does not exist; create it (useradd --system {name}) "
                                f"or pass another --task-user")
    if entry.pw_uid == 0:
        return None, f"task isolation is off: --task-user {entry.pw_name} runs tasks as root"
    user = TaskUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    return user, (f"tasks run as user {user.name} (uid {user.uid}): they cannot read this node's data dir, "
                  f"its keys or its API socket")


def lookup(text: str) -> TaskUser:
    """A service's ``--user``: ``name``, ``uid``, ``name:group`` or ``uid:gid``. A name must exist here; a
    bare uid takes its passwd group, or the gid of the same number. Raises TaskUserError (one line)."""
    who, _, group = text.partition(":")
    entry = _lookup(who) if not who.isdigit() else _by_uid(int(who))
    if entry is None and not who.isdigit():
        raise TaskUserError(f"user {who!r} does not exist on this node")
    uid = entry.pw_uid if entry is not None else int(who)
    name = entry.pw_name if entry is not None else who
    if uid == 0:
        raise TaskUserError(f"user {text!r} is root: tasks run as an unprivileged user")
    if not group:
        gid = entry.pw_gid if entry is not None else uid
    elif group.isdigit():
        gid = int(group)
    else:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise TaskUserError(f"group {group!r} does not exist on this node") from None
    return TaskUser(name, uid, gid)


def _by_uid(uid: int) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        return None


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _create(name: str) -> pwd.struct_passwd | None:
    shell = NOLOGIN if os.path.exists(NOLOGIN) else "/bin/false"
    try:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", shell, name], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=USERADD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _lookup(name)


class Homes:
    """The task homes of one node: ``root/<task id>``, each its task's user's, 0700."""

    def __init__(self, root: Path, user: TaskUser | None) -> None:
        self.root, self.user = root, user

    def path(self, task_id: str) -> Path:
        return self.root / task_id

    def prepare(self, task_id: str, user: TaskUser | None = None) -> Path:
        """The task's home, created (or reused) and owned by ``user`` (default: the task user); raises OSError."""
        owner = user or self.user
        if owner is None:
            raise ValueError("a task home needs a user")  # the caller's bug
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{self.root} is not a directory of the node's user")
        os.chmod(self.root, 0o711)
        home = self.path(task_id)
        home.mkdir(mode=0o700, exist_ok=True)
        if not stat.S_ISDIR(os.lstat(home).st_mode):  # only the node writes in root: no race here
            raise OSError(f"{home} is not a directory")
        os.chown(home, owner.uid, owner.gid)
        os.chmod(home, 0o700)
        return home

    def remove(self, task_id: str) -> None:
        """Delete a task's home (rmtree works on directory fds: a symlink the task left is not followed)."""
        shutil.rmtree(self.path(task_id), ignore_errors=True)

    def remove_all_but(self, keep: set[str]) -> None:
        """Delete the homes of tasks this node no longer knows (forgotten while it was down)."""
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.name not in keep:
                self.remove(entry.name)


def runnable_by_others(path: str) -> bool:
    """True if users other than its owner and group can reach and execute ``path`` (every
    directory above it searchable by others, the file executable by others)."""
    real = Path(os.path.realpath(path))
    try:
        return all(os.stat(d).st_mode & stat.S_IXOTH for d in (real, *real.parents))
    except OSError:
        return False


def own_interpreter_args(interpreter: str) -> list[str]:
    """``up`` options for clusters started by p2pswarm itself (``lab``, test clusters) whose tasks run
    ``interpreter``: a root node's task user must be able to run it; when it cannot (a Python installed
    under /root, which is 0700), those nodes run tasks as root, without isolation (they say so in their log)."""
    if os.geteuid() == 0 and not runnable_by_others(interpreter):
        return ["--task-user", "root"]
    return []


def remove_homes_of(data_dir: Path) -> None:
    """Delete the task homes of the node whose data dir this is (for tools that delete data dirs:
    the homes live outside them). A dir with no node id has none."""
    try:
        node_id = json.loads((Path(data_dir) / "node.json").read_text())["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(node_id, str) and node_id.isalnum():
        shutil.rmtree(HOMES / node_id, ignore_errors=True)
