"""The node's container engine: which one answers on its socket, and Docker errors as one line.

A node runs image tasks only through a Docker Engine it can reach (``up --engine-socket``,
default ``$DOCKER_HOST`` or the standard socket). :func:`probe` asks it once at start: the
result goes into the node's gossip record, so the scheduler places image tasks only on
nodes that have an engine, and ``node inspect`` says why a node has none.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
PROBE_TIMEOUT = 5.0
"""Seconds :func:`probe` waits for the engine to answer."""
ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)
"""What a call to the engine raises when it refuses, is gone, or times out."""


@dataclass(frozen=True)
class Engine:
    kind: str
    """``docker`` or ``none``."""
    detail: str
    """The engine's version, or why there is none (one line)."""

    @property
    def available(self) -> bool:
        return self.kind == "docker"


def default_socket() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def connect(socket: str | None = None, timeout: float | None = 60.0, **options: Any) -> docker.DockerClient:
    """A client of the engine at ``socket``; asks the engine its API version (raises one of :data:`ERRORS`)."""
    return docker.DockerClient(base_url=socket or default_socket(), timeout=timeout, **options)


def probe(socket: str | None = None, timeout: float = PROBE_TIMEOUT) -> Engine:
    """Which engine answers at ``socket`` (default :func:`default_socket`); never raises."""
    socket = socket or default_socket()
    try:
        with contextlib.closing(connect(socket, timeout)) as client:
            version = client.version()
    except ERRORS as exc:
        return Engine("none", f"{socket}: {describe(exc)}")
    return Engine("docker", str(version.get("Version", "unknown version")))


def describe(exc: BaseException) -> str:
    """An engine error in one line, as Docker's CLI prints it: the daemon's own message when it sent
    one (``No such image: x:1``), else what went wrong in a few words (``not reachable: Connection refused``)."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        text = str(exc.explanation)
    elif _caused_by(exc, requests.exceptions.Timeout):
        text = "did not answer in time"
    elif _caused_by(exc, requests.exceptions.ConnectionError):
        cause = _os_error(exc)
        text = "not reachable" + (f": {cause}" if cause else "")
    else:
        text = str(exc) or type(exc).__name__
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def unreachable(exc: BaseException) -> bool:
    """The engine is gone or hangs (as opposed to: it answered with an error)."""
    return not isinstance(exc, docker.errors.APIError) and _caused_by(
        exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))


def task_error(exc: BaseException) -> str:
    """What a task whose engine call failed reports: ``engine: unavailable (...)`` when the engine is
    gone, else the engine's own message."""
    return f"engine: unavailable ({describe(exc)})" if unreachable(exc) else describe(exc)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was caused by or wraps (in its causes, contexts and args)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 32:
        e = todo.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [x for x in (e.__cause__, e.__context__, *e.args) if isinstance(x, BaseException)]
    return seen


def _caused_by(exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    return any(isinstance(e, kind) for e in _chain(exc))


def _os_error(exc: BaseException) -> str:
    """The innermost OS error's text (``No such file or directory``...), or ''."""
    found = [e.strerror for e in _chain(exc) if isinstance(e, OSError) and e.strerror]
    return found[-1] if found else ""
