"""A node's data directory: its identity, its lock, its pid and its API socket.

Layout of ``<data dir>`` (default ``$P2PSWARM_DATA_DIR``, else
``~/.local/share/p2pswarm``; mode 0700, set at every start)::

    node.json   {"id": "<16 hex>", "name": ..., "incarnation": N}; the id is made once and never reused
    node.lock   held with an exclusive fcntl lock while a node runs on this dir
    node.pid    the running node's pid (informational; the lock is the truth)
    api.sock    the local control API (unix socket, mode 0600 from its bind)
    node.log    output of a node started with ``p2pswarm up --detach`` (mode 0600; never holds a secret)
    security/   (0700) a secure cluster's key material, every file mode 0600
                (see :mod:`p2pswarm.security.host`): ``curve.key`` (this node's CURVE key
                pair), ``cluster.key`` (the 32-byte cluster key), ``state`` (this node's
                certificate, the trust bundle, known peers' certificates)

Only :mod:`p2pswarm.node.daemon` and the CLI touch this; protocol cores never see disk.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO

ENV_VAR = "P2PSWARM_DATA_DIR"
MAX_SOCKET_PATH = 107
"""Linux limit for a unix socket path (sun_path is 108 bytes with the NUL)."""


class DataDirError(Exception):
    """The data dir cannot be used; the message is one line saying what to do."""


def default_data_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "p2pswarm"


def default_lab_dir() -> Path:
    """Where `p2pswarm lab up` keeps its nodes' data dirs (``node-1`` …): ``$P2PSWARM_LAB_DIR`` or beside the
    default data dir."""
    env = os.environ.get("P2PSWARM_LAB_DIR")
    return Path(env) if env else Path.home() / ".local" / "share" / "p2pswarm" / "lab"


def running_lab_node(lab: Path | None = None) -> Path | None:
    """The data dir of a lab node that has an API socket (the lab is up), or None: what to suggest to a
    user whose command found no node at the default data dir."""
    lab = lab or default_lab_dir()
    try:
        nodes = sorted(p for p in lab.iterdir() if p.name.startswith("node-") and (p / "api.sock").exists())
    except OSError:
        return None
    return nodes[0] if nodes else None


def new_node_id() -> str:
    """16 random hex characters: unique with overwhelming probability, never derived from names."""
    return secrets.token_hex(8)


class DataDir:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser().absolute() if path else default_data_dir().absolute()
        self.node_json = self.path / "node.json"
        self.lock_path = self.path / "node.lock"
        self.pid_path = self.path / "node.pid"
        self.api_sock = self.path / "api.sock"
        self.log_path = self.path / "node.log"
        self.security_path = self.path / "security"
        self._lock_fd: int | None = None
        self.loosened: list[str] = []
        """Key files found readable by others (and tightened to 0600) by read_private."""

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Create the dir, make it private (0700, at every start: a dir made by hand or by an older
        version may be 0755) and prove it is writable, or raise one clear line.

        Private means tasks and other users can read no key, no log and cannot open ``api.sock``;
        ``node.log`` (which may predate this rule) is tightened to 0600 too."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(f"cannot create data dir {self.path}: {exc.strerror or exc}; "
                               f"pass a writable --data-dir or set {ENV_VAR}") from None
        if not self.path.is_dir():
            raise DataDirError(f"data dir {self.path} is not a directory; pass another --data-dir")
        for path, mode in ((self.path, 0o700), (self.security_path, 0o700), (self.log_path, 0o600)):
            try:
                if path == self.path or path.exists():
                    os.chmod(path, mode)
            except OSError as exc:
                raise DataDirError(f"cannot make {path} private (mode {mode:o}): {exc.strerror or exc}; "
                                   f"pass a --data-dir owned by the user running p2pswarm") from None
        probe = self.path / f".write-test-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DataDirError(f"data dir {self.path} is not writable: {exc.strerror or exc}; "
                               f"pass a writable --data-dir or set {ENV_VAR}") from None
        if len(os.fsencode(str(self.api_sock))) > MAX_SOCKET_PATH:
            raise DataDirError(f"data dir path {self.path} is too long for a unix socket "
                               f"(max {MAX_SOCKET_PATH - 9} characters); pass a shorter --data-dir")

    # ------------------------------------------------------------ lock and pid

    def lock(self) -> None:
        """Take the exclusive lock; a second node on the same dir gets a clear error."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = self.read_pid()
                who = f" (pid {pid})" if pid else ""
                raise DataDirError(f"another p2pswarm node{who} is already running with data dir {self.path}; "
                                   f"stop it with `p2pswarm down --data-dir {self.path}` "
                                   f"or use another --data-dir") from None
            raise
        self._lock_fd = fd

    def is_locked(self) -> bool:
        """True while some process (a running node) holds the lock."""
        if self._lock_fd is not None:
            return True
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing releases a lock we may have taken
        return False

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def open_log(self) -> BinaryIO:
        """``node.log`` for appending, mode 0600 (see :func:`open_private_append`)."""
        return open_private_append(self.log_path)

    def write_pid(self) -> None:
        _atomic_write(self.pid_path, f"{os.getpid()}\n")

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def remove_pid(self) -> None:
        if self.read_pid() == os.getpid():
            self.pid_path.unlink(missing_ok=True)

    # ------------------------------------------------------------ identity

    def load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.node_json.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise DataDirError(f"{self.node_json} is unreadable ({exc}); "
                               f"move it away to start as a new node") from None
        if not isinstance(state, dict) or not isinstance(state.get("id"), str) or not state["id"]:
            raise DataDirError(f"{self.node_json} has no node id; move it away to start as a new node")
        return state

    def identity(self, name: str | None) -> tuple[str, str, int]:
        """(node id, name, incarnation to start with), creating the id on first use.

        A restart starts one incarnation above the last one recorded, so that its
        alive news overrides the death the cluster may have declared meanwhile.
        """
        state = self.load_state()
        node_id = state.get("id") or new_node_id()
        name = name or state.get("name") or f"node-{node_id[:6]}"
        incarnation = int(state.get("incarnation", -1)) + 1 if state else 0
        self.save_state({"id": node_id, "name": name, "incarnation": incarnation})
        return node_id, name, incarnation

    def save_incarnation(self, incarnation: int) -> None:
        state = self.load_state()
        if state and state.get("incarnation") != incarnation:
            state["incarnation"] = incarnation
            self.save_state(state)

    def save_state(self, state: dict[str, Any]) -> None:
        _atomic_write(self.node_json, json.dumps(state, sort_keys=True) + "\n")

    # ------------------------------------------------------------ key material

    def write_private(self, name: str, data: bytes) -> None:
        """Write ``security/<name>`` atomically with mode 0600 (the dir is 0700)."""
        try:
            self.security_path.mkdir(mode=0o700, exist_ok=True)
            _atomic_write(self.security_path / name, data, mode=0o600)
        except OSError as exc:
            raise DataDirError(f"cannot write {self.security_path / name}: {exc.strerror or exc}; "
                               f"check the data dir's permissions and free space") from None

    def read_private(self, name: str) -> bytes | None:
        """``security/<name>``, None when absent; an unreadable file is one line (DataDirError).

        A file readable by others is tightened to 0600 (and said so in the log by the caller's
        ``loose`` list): key material must not stay world-readable.
        """
        path = self.security_path / name
        try:
            data = path.read_bytes()
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DataDirError(f"cannot read the key file {path}: {exc.strerror or exc}; the node refuses to "
                               f"start without it (fix its permissions or restore it from a backup)") from None
        if mode & 0o077:
            try:
                os.chmod(path, 0o600)
            except OSError:
                pass
            self.loosened.append(str(path))
        return data

    def has_private(self, name: str) -> bool:
        return (self.security_path / name).exists()


def open_private_append(path: Path) -> BinaryIO:
    """``path`` opened for appending bytes with mode 0600, made so before any byte is written
    (an existing looser file too): logs name addresses, tasks and errors only their owner should read."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def fsync_dirs(*dirs: Path) -> None:
    """Make renames and new files in ``dirs`` durable (a file's fsync does not cover its name)."""
    for d in dirs:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, content: str | bytes, mode: int | None = None) -> None:
    """Write via a temp file, fsync and rename: a crash leaves the old or the new file, never half.

    With ``mode`` the temp file has exactly that mode before any byte is written (a 0600 file is
    never readable by others, not even for a moment); without it the umask decides, as for open().
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; 0600 must be 0600
        with os.fdopen(fd, "wb", closefd=True) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
