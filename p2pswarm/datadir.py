"""A node's data directory: its identity, its lock, its pid and its API socket.

Layout of ``<data dir>`` (default ``$P2PSWARM_DATA_DIR``, else
``~/.local/share/p2pswarm``)::

    node.json   {"id": "<16 hex>", "name": ..., "incarnation": N}; the id is made once and never reused
    node.lock   held with an exclusive fcntl lock while a node runs on this dir
    node.pid    the running node's pid (informational; the lock is the truth)
    api.sock    the local control API (unix socket, mode 0600)
    node.log    output of a node started with ``p2pswarm up --detach``

Only :mod:`p2pswarm.node` and the CLI touch this; protocol cores never see disk.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Any

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
        self._lock_fd: int | None = None

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Create the dir (mode 0700) and prove it is writable, or raise one clear line."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(f"cannot create data dir {self.path}: {exc.strerror or exc}; "
                               f"pass a writable --data-dir or set {ENV_VAR}") from None
        if not self.path.is_dir():
            raise DataDirError(f"data dir {self.path} is not a directory; pass another --data-dir")
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


def _atomic_write(path: Path, content: str) -> None:
    """Write via a temp file, fsync and rename: a crash leaves the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
