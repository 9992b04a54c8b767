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

# The service spec's parts are exactly what the runtime runs: one type, one validation.
from p2pswarm.cluster.spec import HealthCheck, PortSpec  # noqa: F401  (re-exported)
from p2pswarm.cluster.workload import FileRef, Mount

TASK_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
"""Task ids name a directory under ``<data-dir>/tasks/``: no slashes, no leading dot."""
STDOUT, STDERR = "stdout", "stderr"


@dataclass(frozen=True)
class TaskSpec:
    """One task as a runtime sees it. A run's ports (:func:`task_ports`, ``TaskHandle.ports``) are
    ``$PORT`` and ``{port}`` in the command, then ``$PORT<i>`` and ``{port<i>}`` (i ≥ 1): one per
    published port, in order, then the rest of the ``ports`` dynamic ports picked at each start."""

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
    """The service's published ports; the i-th is served on the run's i-th port (see :func:`task_ports`)."""
    image: str | None = None
    """Run as a container of this image (the container runtime); None: a process."""
    network: str = "host"
    """``host`` or ``bridge`` (containers only)."""
    user: str | None = None
    """The user to run as; None: the runtime's default (the node's task user, or the image's)."""
    limit_cpu: float = 0.0
    limit_memory: int = 0
    limit_pids: int = 0
    """Enforced limits (0: none): cores, bytes, processes."""
    stop_signal: str = "SIGTERM"
    """The signal :meth:`Runtime.stop` sends first (SIGKILL follows after ``stop_grace``)."""
    mounts: tuple[Mount, ...] = ()
    files: tuple["TaskFile", ...] = ()
    """The secrets and configs the task reads, with their contents."""
    log_retention: float = 0.0
    """Seconds its logs stay after the task is forgotten, counted from its last output (0: drop them then;
    the agent gives each task its service's ``log_retention``)."""

    def __post_init__(self) -> None:
        if not TASK_ID.fullmatch(self.task_id):
            raise ValueError(f"bad task id {self.task_id!r}: use letters, digits, '_', '.', '-'")
        if self.ports < 0 or self.stop_grace < 0:
            raise ValueError("ports and stop_grace must not be negative")
        if self.health is not None and self.health.kind != "exec" and self.ports < 1 and not self.publish:
            raise ValueError(f"a {self.health.kind} health check needs a port")
        if sum(1 for p in self.publish if fixed_port(p) is None) > self.ports:
            raise ValueError("each published port with a dynamic target needs a dynamic port")


@dataclass(frozen=True)
class TaskFile:
    """A secret or config as one task receives it. The contents never show in a repr (logs, tracebacks)."""

    kind: str
    """``secret`` or ``config``."""
    ref: FileRef
    data: bytes = field(repr=False)
    error: str = ""
    """Why this node could not open it (one line; ``data`` is then empty): the task fails to start with it."""


def fixed_port(port: PortSpec) -> int | None:
    """The node port a task on the host network (a process, or a host-network container) serves
    ``port`` on when it is not dynamic: a mode=host port's published port (the node serves it itself),
    else a fixed target (for a process, a fixed target *is* its ``$PORT``)."""
    return port.published if port.mode == "host" else port.target


def dynamic_ports_needed(publish: tuple[PortSpec, ...]) -> int:
    """Dynamic ports a task on the host network needs: one per published port without a fixed port
    (:func:`fixed_port`); one when it publishes nothing (its ``$PORT``, for health checks)."""
    return sum(1 for p in publish if fixed_port(p) is None) if publish else 1


def task_ports(spec: TaskSpec, dynamic: tuple[int, ...]) -> tuple[int, ...]:
    """A host-network run's ports ($PORT first; ``TaskHandle.ports``), given its ``dynamic`` ports: one per
    published port in order (its :func:`fixed_port`, else the next dynamic one), then the dynamic ports left."""
    free = iter(dynamic)
    out = [fixed if (fixed := fixed_port(p)) is not None else next(free) for p in spec.publish]
    return (*out, *free)


def fixed_ports(spec: TaskSpec) -> tuple[int, ...]:
    """The node ports a host-network run of ``spec`` must have (no other task of the node may hold them)."""
    return tuple(dict.fromkeys(port for p in spec.publish if (port := fixed_port(p)) is not None))


def maps_ports(spec: TaskSpec) -> bool:
    """A bridge container's ports are mapped: the run's i-th port is the node port of the i-th published
    port, whatever its target (a port inside the container); see :mod:`p2pswarm.runtime.containerspec`."""
    return spec.image is not None and spec.network == "bridge"


def published_ports(publish: tuple[PortSpec, ...], ports: tuple[int, ...]) -> list[tuple[int, int, bool]]:
    """``(published, task port, proxy protocol)`` per published port the routing mesh serves, given the
    run's ports (one per published port, in order): mode=host ports are served by their node, not the mesh."""
    return [(p.published, port, p.proxy_protocol) for p, port in zip(publish, ports) if p.mode != "host"]


def port_env(ports: tuple[int, ...]) -> dict[str, str]:
    """``PORT``, ``PORT1``, ... for the run's ports."""
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

    def forget(self, task_id: str, spec: TaskSpec | None = None) -> None:
        """Drop what is kept of a task that has ended and is no longer assigned; its logs stay for
        ``spec.log_retention`` (:meth:`p2pswarm.runtime.logs.TaskFolders.retire_task_dir`)."""

    async def adopt_or_stop_leftovers(self) -> list[str]:
        """After a node restart: deal with tasks of a previous life; returns their ids."""
