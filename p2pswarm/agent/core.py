"""The agent's pure core: what this node's tasks should be doing, and what to tell others.

Inputs are the node's last known assignments (from the Raft group, pushed or pulled) and
what the runtime observed (a run started, exited, changed health), each with ``now``.
Outputs are :class:`Start` / :class:`Stop` / :class:`Forget` actions (taken with
:meth:`AgentCore.take_actions`) and the task digest this node gossips. Assignments are
kept until replaced, so tasks go on running and restarting while Raft has no quorum.

Every start of a task is a *run*, numbered from 1; events name their run, so a late
event from an old run cannot touch the current one. A task has one run at a time: a new
run starts only after the previous one has exited.

Task states: ``pending`` (assigned, not started), ``starting``, ``preparing`` (the runtime said that
the start waits for something slow: an image pull), ``running``, ``stopping``,
``restarting`` (waiting out the restart delay), and the final ``complete`` (exit 0),
``failed`` and ``shutdown`` (stopped because it was no longer wanted). A task that ended
stays ended unless its spec version changes; new runs beyond the restart policy are the
scheduler's business (it makes new tasks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from p2pswarm.runtime.base import TaskSpec

PENDING, STARTING, RUNNING, STOPPING, RESTARTING = "pending", "starting", "running", "stopping", "restarting"
PREPARING = "preparing"
LAUNCHING = frozenset({STARTING, PREPARING})
"""A run asked of the runtime that has not started yet."""
COMPLETE, FAILED, SHUTDOWN = "complete", "failed", "shutdown"
FINAL = frozenset({COMPLETE, FAILED, SHUTDOWN})
CONDITIONS = ("any", "on-failure", "none")
DESIRED = ("running", "shutdown")
ERROR_MAX = 200
"""Characters of a task error kept in the digest (gossip records must stay small)."""


@dataclass(frozen=True)
class RestartPolicy:
    """Docker Swarm's restart policy. ``max_attempts`` restarts at most (0: no limit)
    within the last ``window`` seconds (0: over the task's whole life)."""

    condition: str = "any"
    delay: float = 5.0
    max_attempts: int = 0
    window: float = 0.0

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(f"restart condition must be one of {', '.join(CONDITIONS)}, not {self.condition!r}")
        if self.delay < 0 or self.max_attempts < 0 or self.window < 0:
            raise ValueError("restart delay, max_attempts and window must not be negative")


@dataclass(frozen=True)
class Assignment:
    """A task the cluster wants on this node, at spec ``version``, in state ``desired``."""

    spec: TaskSpec
    version: int
    desired: str = "running"
    restart: RestartPolicy = RestartPolicy()

    def __post_init__(self) -> None:
        if self.desired not in DESIRED:
            raise ValueError(f"desired state must be running or shutdown, not {self.desired!r}")


@dataclass(frozen=True)
class Start:
    task_id: str
    run: int
    spec: TaskSpec


@dataclass(frozen=True)
class Stop:
    task_id: str
    run: int
    grace: float


@dataclass(frozen=True)
class Forget:
    """The task is unassigned and ended: the runtime may drop its files (its logs after their retention)."""

    task_id: str
    spec: TaskSpec | None = field(default=None, compare=False)


@dataclass
class _Task:
    assignment: Assignment
    state: str = PENDING
    run: int = 0
    version: int | None = None
    """Spec version of the current or last run."""
    port: int | None = None
    mesh: tuple[tuple, ...] = ()
    """(published port, task port, proxy protocol[, "udp"]) while the run serves the routing mesh."""
    health: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    restarts: list[float] = field(default_factory=list)
    """When the restarts that count against the policy happened."""
    restart_total: int = 0
    restart_at: float | None = None
    stop_reason: str | None = None
    removed: bool = False


class AgentCore:
    def __init__(self, digest_version: int = 0) -> None:
        """``digest_version``: where the digest's version counter starts. A node should
        start above anything it gossiped before a restart (e.g. from its incarnation)."""
        self.tasks: dict[str, _Task] = {}
        self.halted = False
        self._actions: list[Start | Stop | Forget] = []
        self._version = digest_version
        self._digest_tasks: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ inputs

    def assign(self, now: float, assignments: Iterable[Assignment]) -> None:
        """The full set of tasks this node should have; anything else is removed."""
        wanted = {a.spec.task_id: a for a in assignments}
        for task_id, a in wanted.items():
            if task_id in self.tasks:
                self.tasks[task_id].assignment = a
            else:
                self.tasks[task_id] = _Task(a)
        for task_id, t in self.tasks.items():
            t.removed = task_id not in wanted
        self._reconcile_all(now)

    def preparing(self, now: float, task_id: str, run: int) -> None:
        """The runtime prepares the run's start (pulls its image)."""
        t = self._current(task_id, run)
        if t is not None and t.state == STARTING:
            t.state = PREPARING
            self._changed()

    def started(self, now: float, task_id: str, run: int, ports: tuple[int, ...]) -> None:
        t = self._current(task_id, run)
        if t is None or t.state not in LAUNCHING | {STOPPING}:
            return
        spec = t.assignment.spec
        t.port = ports[0] if ports else None
        t.mesh = _mesh_entries(spec.publish, ports)
        t.health = "starting" if spec.health else None
        if t.state in LAUNCHING:
            t.state = RUNNING
        self._changed()

    def exited(self, now: float, task_id: str, run: int, code: int | None = None,
               signal: int | None = None, error: str | None = None) -> None:
        t = self._current(task_id, run)
        if t is None or t.state not in LAUNCHING | {RUNNING, STOPPING}:
            return
        t.exit_code, t.signal, t.port, t.health, t.mesh = code, signal, None, None, ()
        reason, t.stop_reason = t.stop_reason, None
        if reason == "unhealthy":
            t.error = t.error or "unhealthy"
        else:
            t.error = error[:ERROR_MAX] if error else None
        failed = t.error is not None or code != 0
        if not self._wanted(t):
            t.state = SHUTDOWN
        elif reason in ("update", "shutdown"):  # a new spec, or wanted again before it ended
            t.restarts.clear()  # a new spec starts with a fresh restart budget
            self._start(t)
        else:
            self._after_exit(now, t, failed)
        self._reconcile(now, t)
        self._changed()

    def health(self, now: float, task_id: str, run: int, status: str, detail: str = "") -> None:
        t = self._current(task_id, run)
        if t is None or t.state != RUNNING or t.health == status:
            return
        t.health = status
        if status == "unhealthy":
            t.error = f"unhealthy: {detail}"[:ERROR_MAX]
            self._stop(t, "unhealthy")
        self._changed()

    def tick(self, now: float) -> None:
        """Start the restarts that are due."""
        self._reconcile_all(now)

    def halt(self, now: float) -> None:
        """The node is stopping: stop every task and start none."""
        self.halted = True
        self._reconcile_all(now)

    # ------------------------------------------------------------------ outputs

    def take_actions(self) -> list[Start | Stop | Forget]:
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do."""
        due = [t.restart_at for t in self.tasks.values() if t.restart_at is not None]
        return min(due) if due else None

    def digest(self) -> dict[str, Any]:
        """``{"v": version, "tasks": {task_id: record}}``, msgpack-able; the version grows
        whenever a record changes. A record holds ``s`` state and ``v`` spec version, and
        only when set: ``p`` port, ``h`` health, ``x`` exit code, ``g`` signal, ``e``
        error, ``r`` restarts so far, and for a run serving published ports ``n`` the
        service and ``m`` ``[[published, task port, proxy protocol], ...]``, a UDP port with a
        4th element ``"udp"`` (nodes that predate UDP skip those entries) (the mesh's
        backends come from these alone, so the mesh works without Raft), and ``u`` the published ports
        that stay in user space when there are some. Read-only: it is shared until the next change."""
        return {"v": self._version, "tasks": self._digest_tasks}

    # ------------------------------------------------------------------ decisions

    def _wanted(self, t: _Task) -> bool:
        return not (self.halted or t.removed) and t.assignment.desired == "running"

    def _reconcile_all(self, now: float) -> None:
        for t in list(self.tasks.values()):
            self._reconcile(now, t)
        self._changed()

    def _reconcile(self, now: float, t: _Task) -> None:
        wanted, fresh = self._wanted(t), t.version != t.assignment.version
        if t.state in LAUNCHING | {RUNNING}:
            if not wanted:
                self._stop(t, "shutdown")
            elif fresh:
                self._stop(t, "update")
        elif t.state == RESTARTING:
            if not wanted:
                t.state, t.restart_at = SHUTDOWN, None
            elif fresh:
                t.restarts.clear()
                self._start(t)
            elif now >= t.restart_at:
                t.restarts.append(now)
                t.restart_total += 1
                self._start(t)
        elif t.state == PENDING:
            if wanted:
                self._start(t)
            elif not t.removed:
                t.state = SHUTDOWN
        elif wanted and fresh:  # a final task revived by a new spec version
            t.restarts.clear()
            self._start(t)
        if t.removed and t.state in FINAL | {PENDING}:
            del self.tasks[t.assignment.spec.task_id]
            self._actions.append(Forget(t.assignment.spec.task_id, t.assignment.spec))

    def _after_exit(self, now: float, t: _Task, failed: bool) -> None:
        policy = t.assignment.restart
        restart = policy.condition == "any" or (policy.condition == "on-failure" and failed)
        if restart and policy.max_attempts:
            recent = [s for s in t.restarts if not policy.window or s > now - policy.window]
            t.restarts[:] = recent
            if len(recent) >= policy.max_attempts:
                restart = False
                if failed:
                    t.error = f"{_describe(t)}; gave up after {len(recent)} restarts"[:ERROR_MAX]
        if restart:
            t.state, t.restart_at = RESTARTING, now + policy.delay
        else:
            t.state = FAILED if failed else COMPLETE

    def _start(self, t: _Task) -> None:
        t.run += 1
        t.state, t.version, t.restart_at = STARTING, t.assignment.version, None
        t.exit_code = t.signal = t.error = None
        self._actions.append(Start(t.assignment.spec.task_id, t.run, t.assignment.spec))

    def _stop(self, t: _Task, reason: str) -> None:
        t.state, t.stop_reason = STOPPING, reason
        self._actions.append(Stop(t.assignment.spec.task_id, t.run, t.assignment.spec.stop_grace))

    def _current(self, task_id: str, run: int) -> _Task | None:
        t = self.tasks.get(task_id)
        return t if t is not None and t.run == run else None

    def _changed(self) -> None:
        records = {task_id: _record(t) for task_id, t in self.tasks.items()}
        if records != self._digest_tasks:
            self._digest_tasks = records
            self._version += 1


def _record(t: _Task) -> dict[str, Any]:
    rec: dict[str, Any] = {"s": t.state, "v": t.version if t.version is not None else t.assignment.version}
    for key, value in (("p", t.port), ("h", t.health), ("x", t.exit_code), ("g", t.signal),
                       ("e", t.error), ("r", t.restart_total or None)):
        if value is not None:
            rec[key] = value
    if t.mesh:
        rec["n"] = t.assignment.spec.service
        rec["m"] = [list(entry) for entry in t.mesh]
        userspace = _userspace_keys(t.assignment.spec.publish)
        if userspace:
            rec["u"] = userspace
    return rec


def _userspace_keys(publish: tuple) -> list:
    """The published ports whose service asks the routing mesh to stay in user space (the ``userspace``
    publish option): ``8080`` for TCP, ``"5353/udp"`` for UDP (:mod:`p2pswarm.mesh.table`)."""
    return [p.published if p.protocol == "tcp" else f"{p.published}/udp"
            for p in publish if p.userspace and p.mode != "host"]


def _mesh_entries(publish: tuple, ports: tuple[int, ...]) -> tuple[tuple, ...]:
    """:func:`p2pswarm.runtime.base.published_ports`, with ``"udp"`` appended to the entries of UDP ports
    and ``"tls"`` to those of encrypted TCP ports. ``ports`` are the run's: one per published port, in order
    (a process's $PORT..., a bridge container's mapped node ports); mode=host ports are left to their node."""
    out = []
    for p, port in zip(publish, ports):
        if p.mode != "host":
            if p.protocol == "udp":
                out.append((p.published, port, p.proxy_protocol, "udp"))
            elif p.encrypted:
                out.append((p.published, port, p.proxy_protocol, "tls"))
            else:
                out.append((p.published, port, p.proxy_protocol))
    return tuple(out)


def _describe(t: _Task) -> str:
    if t.error:
        return t.error
    return f"killed by signal {t.signal}" if t.signal is not None else f"exit code {t.exit_code}"
