"""A task's secrets and configs as files, in a private directory that lives in memory while the task runs.

Per task, :meth:`TaskFiles.materialize` makes ``<root>/<task id>/`` holding ``secrets/`` (each secret
under its target name) and ``configs/`` (each config under its target's last part), every file
owned by the task's user with the mode its reference asks (secrets 0400 by default).  On a root
node that directory is a small tmpfs mounted for the task (mode 0700, owned by the task's user):
nothing of it ever reaches a disk, and only that user (and root) can enter it.  A node that cannot
mount (not root, no CAP_SYS_ADMIN) makes a 0700 directory on a tmpfs that exists already:
``$XDG_RUNTIME_DIR`` or ``/dev/shm``.  :meth:`TaskFiles.remove` unmounts and deletes it when the
task ends or is forgotten; :meth:`TaskFiles.remove_all_but` clears what a previous life of the
node left behind.

Runtimes use :class:`TaskDirs`: a process gets ``$P2PSWARM_SECRETS`` and ``$P2PSWARM_CONFIGS``
(:meth:`TaskDirs.env`); a container bind-mounts ``secrets`` read-only at ``/run/secrets`` and each of
``config_files`` at its target.

``<root>`` is one directory per data dir (a hash of its path), so several nodes on one machine,
whose task ids may collide, never share one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from p2pswarm.runtime.base import TaskFile, TaskSpec

log = logging.getLogger("p2pswarm.runtime")

MOUNT_BASE = Path("/run/p2pswarm-tasks")
"""Where a root node mounts its tasks' tmpfs directories."""
SHM = Path("/dev/shm")
TMPFS_MIN = 1024 * 1024
"""The smallest per-task tmpfs: its files (each rounded up to a page), plus room for the directories."""
PAGE = 4096
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MNT_DETACH = 2


class TaskFilesError(Exception):
    """The task's files could not be made (one line); the task fails to start with it."""


@dataclass(frozen=True)
class TaskDirs:
    """Where a task's secrets and configs are (None: the task has none of that kind)."""

    secrets: Path | None = None
    configs: Path | None = None
    config_files: tuple[tuple[Path, str], ...] = ()
    """(the file on the node, its target path in a container), one per config."""

    def env(self) -> dict[str, str]:
        """``P2PSWARM_SECRETS`` / ``P2PSWARM_CONFIGS`` for a process task."""
        out = {}
        if self.secrets is not None:
            out["P2PSWARM_SECRETS"] = str(self.secrets)
        if self.configs is not None:
            out["P2PSWARM_CONFIGS"] = str(self.configs)
        return out


def _private_base() -> Path:
    """A tmpfs directory of this (non-root) user: ``$XDG_RUNTIME_DIR`` when it is ours, else ``/dev/shm``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        try:
            st = os.stat(runtime)
            if st.st_uid == os.geteuid() and os.access(runtime, os.W_OK):
                return Path(runtime) / "p2pswarm-tasks"
        except OSError:
            pass
    return SHM / f"p2pswarm-tasks-{os.geteuid()}"


def _key(data_dir: str | os.PathLike[str]) -> str:
    return hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:16]


class TaskFiles:
    """The task files of one node (see the module docstring)."""

    def __init__(self, data_dir: str | os.PathLike[str], base: Path | None = None, mount: bool | None = None) -> None:
        """``base``: where the per-node directory goes (default: :data:`MOUNT_BASE` when mounting, else a
        private directory on an existing tmpfs); ``mount``: a tmpfs per task (default: when root)."""
        self.mounting = os.geteuid() == 0 if mount is None else mount
        self.root = (base or (MOUNT_BASE if self.mounting else _private_base())) / _key(data_dir)
        self.fallback = _private_base() / _key(data_dir)
        """Where files go when mounting fails on a root node (no CAP_SYS_ADMIN): a tmpfs that exists."""

    def path(self, task_id: str) -> Path:
        return self.root / task_id

    def materialize(self, spec: TaskSpec, uid: int | None = None, gid: int | None = None) -> TaskDirs:
        """Write ``spec.files`` for the task, owned by ``uid``:``gid`` (None: this process's user); a task
        without files gets no directory.  Raises TaskFilesError (one line) and leaves nothing behind."""
        if not spec.files:
            return TaskDirs()
        broken = next((f for f in spec.files if f.error), None)
        if broken is not None:
            raise TaskFilesError(f"{broken.kind} {broken.ref.name}: {broken.error}")
        self.remove(spec.task_id)  # what an earlier run of this task left
        uid = os.geteuid() if uid is None else uid
        gid = os.getegid() if gid is None else gid
        try:
            folder = self._make_private(spec.task_id, _tmpfs_size(spec.files), uid, gid)
            return _write(folder, spec.files, uid, gid)
        except OSError as exc:
            self.remove(spec.task_id)
            raise TaskFilesError(f"cannot write the task's secrets and configs: {exc.strerror or exc}") from None

    def _make_private(self, task_id: str, size: int, uid: int, gid: int) -> Path:
        """The task's directory, 0700 and ``uid``'s: a fresh tmpfs when this node mounts."""
        for level in (self.root.parent, self.root):
            level.mkdir(mode=0o711, exist_ok=True, parents=True)
            _check_ours(level)
        folder = self.path(task_id)
        folder.mkdir(mode=0o700)
        if self.mounting:
            try:
                _mount_tmpfs(folder, size, uid, gid)
                return folder
            except OSError as exc:
                log.warning("cannot mount a tmpfs for task files (%s): using private directories under %s instead",
                            exc.strerror or exc, self.fallback.parent)
                folder.rmdir()
                self.mounting, self.root = False, self.fallback
                return self._make_private(task_id, size, uid, gid)
        os.chown(folder, uid, gid)
        os.chmod(folder, 0o700)
        return folder

    def remove(self, task_id: str) -> None:
        """Unmount and delete the task's directory (nothing happens if it has none), and the node's
        directory once no task has one (so a deleted data dir leaves nothing here)."""
        for root in {self.root, self.fallback}:
            _remove(root / task_id)
            with contextlib.suppress(OSError):
                root.rmdir()

    def to_json(self) -> dict[str, list[str]]:
        """The reaper's arguments (:func:`reap`): where this node's task files are."""
        return {"roots": sorted({str(self.root), str(self.fallback)})}

    def remove_all_but(self, keep: set[str]) -> None:
        """Delete the directories of tasks not in ``keep`` (left by a previous life of this node)."""
        for root in {self.root, self.fallback}:
            try:
                entries = list(root.iterdir())
            except OSError:
                continue
            for entry in entries:
                if entry.name not in keep:
                    _remove(entry)


def reap(args: dict) -> str | None:
    """The reaper's step after the node died: unmount and delete every task's files (their tasks are dead)."""
    removed = []
    for root in map(Path, args["roots"]):
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        for entry in entries:
            _remove(entry)
            removed.append(entry.name)
        with contextlib.suppress(OSError):
            root.rmdir()
    return f"removed the secrets and configs of tasks {', '.join(removed)}" if removed else None


def _check_ours(folder: Path) -> None:
    """Refuse a directory on the way that is not ours or that others may write (e.g. made in /dev/shm by
    another user to swap our files): OSError."""
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{folder} is not a directory of this node's user that only it may write")


def _tmpfs_size(files: tuple[TaskFile, ...]) -> int:
    pages = sum(-(-len(f.data) // PAGE) + 1 for f in files)
    return max(TMPFS_MIN, (pages + 16) * PAGE)


def _write(folder: Path, files: tuple[TaskFile, ...], uid: int, gid: int) -> TaskDirs:
    dirs: dict[str, Path] = {}
    config_files = []
    for f in files:
        kind = "secrets" if f.kind == "secret" else "configs"
        if kind not in dirs:
            dirs[kind] = folder / kind
            dirs[kind].mkdir(mode=0o700)
            os.chown(dirs[kind], uid, gid)
            os.chmod(dirs[kind], 0o700 if kind == "secrets" else 0o755)
        name = f.ref.target if f.kind == "secret" else f.ref.file_name()
        if name in ("", ".", "..") or "/" in name:
            raise OSError(errno.EINVAL, f"bad file name {name!r} for {f.kind} {f.ref.name}")
        path = dirs[kind] / name
        _write_file(path, f.data, f.ref.mode, uid, gid)
        if f.kind == "config":
            config_files.append((path, f.ref.target))
    return TaskDirs(dirs.get("secrets"), dirs.get("configs"), tuple(config_files))


def _write_file(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _remove(folder: Path) -> None:
    if os.path.ismount(folder):
        _unmount(folder)
    shutil.rmtree(folder, ignore_errors=True)  # works on directory fds: a symlink the task made is not followed


_libc: ctypes.CDLL | None = None


def _call(name: str, *args: object) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if getattr(_libc, name)(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _mount_tmpfs(folder: Path, size: int, uid: int, gid: int) -> None:
    options = f"size={size},mode=0700,uid={uid},gid={gid}".encode()
    _call("mount", b"tmpfs", os.fsencode(folder), b"tmpfs", ctypes.c_ulong(_MS_NOSUID | _MS_NODEV | _MS_NOEXEC),
          options)


def _unmount(folder: Path) -> None:
    try:
        _call("umount2", os.fsencode(folder), _MNT_DETACH)
    except OSError as exc:
        log.warning("cannot unmount the task files at %s: %s", folder, exc.strerror or exc)
