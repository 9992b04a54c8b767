"""Where a task's mounts are on its node: named local volumes and bind mounts.

A **named volume** is a directory ``<root>/<node id>/<name>``, made the first time a task on the node
mounts it and kept across task restarts, updates and node restarts until ``volume rm`` (refused while
a task of the node uses it).  ``<root>`` is :data:`ROOT` on a root node, outside every data dir: a task
must reach its volume and must not traverse the data dir.  A node that is not root keeps them under
``$XDG_DATA_HOME/p2pswarm-volumes`` (``~/.local/share/...``).  ``<root>`` and ``<root>/<node id>`` are
the node's, mode 0711: a task reaches the volume it is given but lists nobody's.  A volume is owned by
the user its task runs as, mode 0700 (a task that runs as another user takes the directory over; the
files inside keep their owners).  With no user known (a container running as its image's user) it is
the node's, mode 0755, as a new Docker volume is.

A **bind mount** is a path of the node; it must exist when the task starts, else the task fails with
one line (``bind source path does not exist: /srv/x``, Docker's words).  The API node also checks it
at create (:func:`refusal`): other nodes can only check when a task starts there.

A container gets each mount at its target through the engine (:func:`resolve`), read-only when asked.
A **process** sees the node's file system: it finds each mount's host path in
``P2PSWARM_MOUNT_<NAME>`` (:func:`env_name`: the target without its leading '/', every run of
characters other than letters and digits made one '_', upper-cased: ``/data`` -> ``DATA``,
``/var/lib/x`` -> ``VAR_LIB_X``, ``/my-data.d`` -> ``MY_DATA_D``).  ``readonly`` holds for a process
through a mount namespace of its own where those paths are read-only (:mod:`.mountns`), on a node that
can make one (root with CAP_SYS_ADMIN); elsewhere it is not enforced and the node logs a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from p2pswarm.cluster.workload import OBJECT_NAME, Mount
from p2pswarm.runtime import mountns
from p2pswarm.runtime.base import TaskSpec

log = logging.getLogger("p2pswarm.runtime")

ROOT = Path("/var/lib/p2pswarm-volumes")
"""Parent of each node's named volumes on a root node."""
ENV_PREFIX = "P2PSWARM_MOUNT_"
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_SIZE_ENTRIES = 100_000
"""Files counted at most to size one volume for ``volume ls`` (a larger one is shown as at least that)."""


class MountError(Exception):
    """A mount a task cannot have on this node (one line: the task fails with it)."""


@dataclass(frozen=True)
class ResolvedMount:
    """One mount as the runtime makes it: the node's ``source`` path at ``target`` in the task."""

    source: Path
    target: str
    readonly: bool


def default_root() -> Path:
    """:data:`ROOT` for a root node, else the user's ``$XDG_DATA_HOME/p2pswarm-volumes``."""
    if os.geteuid() == 0:
        return ROOT
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "p2pswarm-volumes"


class Volumes:
    """The named volumes of one node: ``<root>/<node id>/<name>``."""

    def __init__(self, root: Path | None, node_id: str) -> None:
        if not NODE_ID.fullmatch(node_id):
            raise ValueError(f"bad node id {node_id!r}")  # the caller's bug: ids are generated
        self.root = Path(root) if root is not None else default_root()
        self.dir = self.root / node_id

    def path(self, name: str) -> Path:
        if not OBJECT_NAME.fullmatch(name):
            raise ValueError(f"bad volume name {name!r}")  # checked in the spec; never a path
        return self.dir / name

    def ensure(self, name: str, uid: int | None, gid: int | None) -> Path:
        """The volume's directory, made on first use and owned by ``uid``:``gid``; raises OSError."""
        for parent in (self.root, self.dir):
            parent.mkdir(mode=0o711, exist_ok=True, parents=True)
            st = os.lstat(parent)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise OSError(f"{parent} is not a directory of the node's user")
            if stat.S_IMODE(st.st_mode) != 0o711:
                os.chmod(parent, 0o711)
        path = self.path(name)
        try:
            path.mkdir(mode=0o700 if uid is not None else 0o755)
            created = True
        except FileExistsError:
            created = False
        st = os.lstat(path)  # only the node writes in self.dir: no race between the checks and the chown
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(f"{path} is not a directory")
        if created:
            os.chmod(path, 0o700 if uid is not None else 0o755)  # whatever the umask
            log.info("volume %s created at %s", name, path)
        if uid is not None and os.geteuid() == 0 and (st.st_uid != uid or gid not in (None, st.st_gid)):
            os.chown(path, uid, gid if gid is not None else -1)
        return path

    def names(self) -> list[str]:
        """The volumes this node has, by name."""
        try:
            entries = list(os.scandir(self.dir))
        except OSError:
            return []
        return sorted(e.name for e in entries if OBJECT_NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False))

    def size(self, name: str) -> tuple[int, bool]:
        """``(bytes on disk, complete)``: the files of the volume, up to :data:`MAX_SIZE_ENTRIES` of them."""
        total, seen, todo = 0, 0, [str(self.path(name))]
        while todo:
            try:
                entries = list(os.scandir(todo.pop()))
            except OSError:
                continue
            for entry in entries:
                seen += 1
                if seen > MAX_SIZE_ENTRIES:
                    return total, False
                try:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
                except OSError:
                    continue
        return total, True

    def remove(self, name: str) -> bool:
        """Delete a volume and its files; False when it did not exist. rmtree works on directory fds:
        a symlink a task left inside is removed, never followed."""
        path = self.path(name)
        if not path.is_dir() or path.is_symlink():
            return False
        shutil.rmtree(path)
        return True


def resolve(spec: TaskSpec, node_id: str, uid: int | None, gid: int | None,
            root: Path | None = None) -> list[ResolvedMount]:
    """Each of ``spec``'s mounts on this node, named volumes made (owned by ``uid``:``gid``; None: see the
    module docstring); raises :class:`MountError` (one line) for a bind source that does not exist."""
    volumes = Volumes(root, node_id)
    out = []
    for mount in spec.mounts:
        if mount.type == "bind":
            source = Path(mount.source)
            if not os.path.exists(source):
                raise MountError(f"bind source path does not exist: {mount.source}")
        else:
            try:
                source = volumes.ensure(mount.source, uid, gid)
            except OSError as exc:
                raise MountError(f"cannot make volume {mount.source} in {volumes.dir}: "
                                 f"{exc.strerror or exc}") from None
        out.append(ResolvedMount(source, mount.target, mount.readonly))
    return out


def env_name(target: str) -> str:
    """``P2PSWARM_MOUNT_<NAME>`` for a mount target (the rule is in the module docstring)."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]+", "_", target.lstrip("/")).upper()


def mount_env(mounts: Iterable[ResolvedMount]) -> dict[str, str]:
    return {env_name(m.target): str(m.source) for m in mounts}


@dataclass(frozen=True)
class ProcessMounts:
    """What a process task gets of its mounts."""

    env: dict[str, str]
    """``P2PSWARM_MOUNT_<NAME>``: each mount's host path."""
    readonly: tuple[str, ...]
    """Host paths the task must see read-only (:mod:`.mountns`; empty where the node cannot do it)."""


def for_process(spec: TaskSpec, uid: int | None, gid: int | None, root: Path | None = None) -> ProcessMounts:
    """``spec``'s mounts for a process task (see :func:`resolve`; raises :class:`MountError`)."""
    resolved = resolve(spec, spec.node_id, uid, gid, root)
    readonly = tuple(str(m.source) for m in resolved if m.readonly)
    if readonly and not mountns.available():
        log.warning("task %s: its read-only mounts (%s) are writable: this node cannot give a task a mount "
                    "namespace of its own (it needs root and CAP_SYS_ADMIN)", spec.task_id,
                    ", ".join(m.target for m in resolved if m.readonly))
        readonly = ()
    return ProcessMounts(mount_env(resolved), readonly)


def refusal(mounts: Iterable[Mount], process: bool) -> str | None:
    """Why the node receiving a create or update refuses these mounts (one line), or None: a bind source
    missing here, or (for a process service) two targets that give the same environment variable."""
    names: dict[str, str] = {}
    for mount in mounts:
        if mount.type == "bind" and not os.path.exists(mount.source):
            return (f"mounts: bind source path does not exist: {mount.source} (on the node that received this "
                    f"request; other nodes check it when a task starts there)")
        name = env_name(mount.target)
        if process and name in names:
            return (f"mounts: targets {names[name]} and {mount.target} both give a process task ${name}; "
                    f"change one of them")
        names[name] = mount.target
    return None


def remove_volumes_of(data_dir: Path, root: Path | None = None) -> None:
    """Delete the named volumes of the node whose data dir this is (for tools that delete data dirs,
    like the lab and test clusters: the volumes live outside them)."""
    try:
        node_id = json.loads((Path(data_dir) / "node.json").read_text())["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(node_id, str) and NODE_ID.fullmatch(node_id):
        shutil.rmtree(Volumes(root, node_id).dir, ignore_errors=True)
