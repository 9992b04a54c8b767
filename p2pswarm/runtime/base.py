"""What the agent asks of a task runtime, and the small data types it speaks in.

The cluster's service spec (``p2pswarm/cluster/spec.py``) is richer; the agent maps a
task of it onto :class:`TaskSpec`, which holds only what a runtime needs to start one
process. Everything here is plain data (no I/O), so the pure agent core may import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

# The service spec's health check is exactly what the runtime runs: one type, one validation.
from p2pswarm.cluster.spec import HealthCheck, PortSpec  # noqa: F401  (re-exported)

TASK_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
"""Task ids name a directory under ``<data-dir>/tasks/``: no slashes, no leading dot."""
STDOUT, STDERR = "stdout", "stderr"


@dataclass(frozen=True)
class TaskSpec:
    """One task as a runtime sees it. ``ports`` dynamic ports are picked at each start:
    the first is ``$PORT`` and ``{port}`` in the command, the i-th (i ≥ 1) ``$PORT<i>``
    and ``{port<i>}``."""

    task_id: str
    service: str
    slot: int
    node_id: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    ports: int = 1
    health: HealthCheck | None = None
    stop_grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL when the task is stopped."""
    publish: tuple[PortSpec, ...] = ()
    """The service's published ports; the i-th with a dynamic target is served on the
    task's i-th dynamic port (see :func:`published_ports`)."""

    def __post_init__(self) -> None:
        if not TASK_ID.fullmatch(self.task_id):
            raise ValueError(f"bad task id {self.task_id!r}: use letters, digits, '_', '.', '-'")
        if self.ports < 0 or self.stop_grace < 0:
            raise ValueError("ports and stop_grace must not be negative")
        if self.health is not None and self.health.kind != "exec" and self.ports < 1:
            raise ValueError(f"a {self.health.kind} health check needs a port")
        if sum(1 for p in self.publish if p.target is None) > self.ports:
            raise ValueError("each published port with a dynamic target needs a dynamic port")


def dynamic_ports_needed(publish: tuple[PortSpec, ...]) -> int:
    """Dynamic ports a task needs: one per published port with a dynamic target, at least one."""
    return max(1, sum(1 for p in publish if p.target is None))


def published_ports(publish: tuple[PortSpec, ...], ports: tuple[int, ...]) -> list[tuple[int, int, bool]]:
    """``(published, task port, proxy protocol)`` per published port, given the run's dynamic ports."""
    dynamic = iter(ports)
    out = []
    for p in publish:
        port = p.target if p.target is not None else next(dynamic, None)
        if port is not None:
            out.append((p.published, port, p.proxy_protocol))
    return out


def port_env(ports: tuple[int, ...]) -> dict[str, str]:
    """``PORT``, ``PORT1``, ... for the given dynamic ports."""
    return {("PORT" if i == 0 else f"PORT{i}"): str(p) for i, p in enumerate(ports)}


def substitute(args: tuple[str, ...], ports: tuple[int, ...]) -> tuple[str, ...]:
    """Replace ``{port}``, ``{port1}``... in each argument. Plain replacement, not
    ``str.format``, so that other braces (JSON, shell) pass through untouched."""
    out = []
    for arg in args:
        for i, p in enumerate(ports):
            arg = arg.replace("{port}" if i == 0 else f"{{port{i}}}", str(p))
        out.append(arg)
    return tuple(out)


@dataclass(frozen=True)
class TaskExit:
    """How a run ended: an exit ``code``, or the ``signal`` that killed it, or an
    ``error`` (one readable line) when it never started."""

    code: int | None = None
    signal: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.error is None


@dataclass
class TaskHandle:
    """One run of a task. ``error`` is set (and ``pid`` is None) when it could not start;
    waiting on such a handle returns at once with that error."""

    spec: TaskSpec
    pid: int | None
    ports: tuple[int, ...]
    log_dir: Path
    error: str | None = None
    run_as: Mapping[str, Any] = field(default_factory=dict)
    """``subprocess`` keyword arguments that run a command as this task runs (its ``env``, ``cwd``,
    ``user``, ``group``...): exec health probes use them. Empty: the runtime did not say."""


class Runtime(Protocol):
    """Runs tasks on this node. Problems of a task (a missing executable, a crash) are
    reported as a :class:`TaskExit`, never raised; exceptions mean a bug."""

    async def start(self, spec: TaskSpec) -> TaskHandle: ...

    async def wait(self, handle: TaskHandle) -> TaskExit:
        """Returns when the run has ended and every process of it is gone."""

    def poll(self, handle: TaskHandle) -> TaskExit | None:
        """The exit if the run has ended, else None."""

    async def stop(self, handle: TaskHandle, grace: float) -> TaskExit:
        """SIGTERM (or the runtime's equivalent), ``grace`` seconds, then SIGKILL."""

    def log_paths(self, task_id: str) -> dict[str, list[Path]]:
        """``{"stdout": [oldest, ..., current], "stderr": [...]}`` (existing files only)."""

    def forget(self, task_id: str) -> None:
        """Drop what is kept of a task that has ended and is no longer assigned (its logs)."""

    async def adopt_or_stop_leftovers(self) -> list[str]:
        """After a node restart: deal with tasks of a previous life; returns their ids."""
