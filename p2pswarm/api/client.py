"""The CLI's way to a node: http.client over the data dir's unix socket, or HTTPS to a remote one.

A remote target (``--host``/``--context``, :func:`use_remote`; :mod:`p2pswarm.api.remote_client`)
replaces the default data dir; an explicit ``--data-dir`` other than the default wins over it.
Every failure becomes :class:`ApiError` with one line a person can act on.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pswarm.api.server import MAX_BODY_BYTES
from p2pswarm.node.datadir import DataDir, running_lab_node

if TYPE_CHECKING:  # imported when a remote target is used: it loads the TLS and certificate code
    from p2pswarm.api.remote_client import Remote

_remote: list[Remote | None] = [None]
"""The remote target the CLI chose for this run (None: the local node)."""


def use_remote(target: Remote | None) -> None:
    """Send this process's API calls to ``target`` instead of the default data dir's node."""
    _remote[0] = target


class ApiError(Exception):
    """The node answered with an error, or could not be reached (one line)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NodeNotRunning(ApiError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    def __init__(self, data_dir: str | Path | DataDir | None = None, timeout: float = 5.0) -> None:
        self.datadir = data_dir if isinstance(data_dir, DataDir) else DataDir(data_dir)
        self.timeout = timeout
        self.remote = _remote[0] if _remote[0] is not None and self.datadir.path == DataDir().path else None

    def not_running(self) -> NodeNotRunning:
        lab = running_lab_node() if self.datadir.path == DataDir().path else None
        hint = (f"the lab is up: add `--data-dir {lab}` or `export P2PSWARM_DATA_DIR={lab}`" if lab is not None
                else "start one with `p2pswarm up`")
        return NodeNotRunning(f"no p2pswarm node is running with data dir {self.datadir.path} ({hint})")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; returns the decoded JSON (or text for non-JSON replies)."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if payload is not None and len(payload) > MAX_BODY_BYTES:
            raise ApiError(f"the request is {len(payload)} bytes; the API takes at most {MAX_BODY_BYTES} "
                           f"(make it smaller, e.g. split a stack file)")
        if self.remote is not None:
            from p2pswarm.api.remote_client import RemoteConnection, RemoteError, explain
            remote = None
            try:
                remote = RemoteConnection(self.remote, self.timeout)
                remote.request(method, path, body=payload, headers=headers)
                resp = remote.getresponse()
                raw = resp.read()
            except (RemoteError, OSError, http.client.HTTPException) as exc:
                raise ApiError(explain(self.remote, exc)) from None
            finally:
                if remote is not None:
                    remote.close()
            return self._reply(resp, raw, method, path)
        conn = _UnixConnection(str(self.datadir.api_sock), self.timeout)
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError):
            raise self.not_running() from None
        except socket.timeout:
            raise ApiError(f"the p2pswarm node with data dir {self.datadir.path} did not answer "
                           f"within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(f"cannot talk to the p2pswarm node with data dir {self.datadir.path}: "
                           f"{exc or type(exc).__name__}") from None
        finally:
            conn.close()
        return self._reply(resp, raw, method, path)

    @staticmethod
    def _reply(resp: http.client.HTTPResponse, raw: bytes, method: str, path: str) -> Any:
        is_json = resp.getheader("Content-Type", "").startswith("application/json")
        data = _decode(raw) if is_json else raw.decode("utf-8", "replace")
        if resp.status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise ApiError(str(message or f"HTTP {resp.status} from {method} {path}").splitlines()[0], resp.status)
        return data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, {} if body is None else body)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError("the node sent a reply that is not JSON") from None
