"""The node's agent: runs the tasks the cluster state assigns to this node.

Assignments are read from the cluster state this node applies itself when it is a Raft
voter or learner, and otherwise (a worker: the Raft group stays small) from its own
assignments as the Raft members hand them out (:mod:`p2pswarm.assignments`); both answer
the same queries, so :func:`assignments` reads either.  When Raft loses quorum the last
applied assignments stay, and the tasks keep running.  The agent's digest is the
``tasks`` section of this node's gossip record (:mod:`p2pswarm.node.record`), set as soon as
it changes, even before this node has a Raft driver: it is how the leader's scheduler and
every node's mesh learn where tasks run.

Restarts are the scheduler's decision (it makes a new task per restart, as Docker
does, so ``service ps`` shows the history), hence each assignment carries the
restart condition ``none``: the agent runs a task once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable

from p2pswarm.agent.core import AgentCore, Assignment, RestartPolicy
from p2pswarm.agent.driver import AgentDriver
from p2pswarm.agent.files import TaskFileSource
from p2pswarm.cluster.model import TERMINAL
from p2pswarm.node.record import GossipRecord, NodeCaps, TaskDigest
from p2pswarm.runtime import base, cgroups, engine, taskuser
from p2pswarm.runtime.container import ContainerConfig, ContainerRuntime
from p2pswarm.runtime.dispatch import DispatchRuntime
from p2pswarm.runtime.process import ProcessConfig, ProcessRuntime
from p2pswarm.runtime.reaper import Watchdog
from p2pswarm.runtime.volumes import Volumes

log = logging.getLogger("p2pswarm.agent")

FOLLOW_INTERVAL = 0.05
"""Seconds between checks of the node's Raft replica for new assignments (a check is one comparison): its
entries are applied in the Raft driver's own task, between the node's loop turns."""
FOLLOW_IDLE = 1.0
"""Seconds between those checks on a worker, whose assignments change only in the node's loop turns (a delta
received), where ``step`` looks at once: the task then only covers a source that changed without a turn."""
RUN_ONCE = RestartPolicy(condition="none")
SWEEP_INTERVAL = 60.0
"""Seconds between two sweeps of the logs kept after their tasks (a sweep lists the task folders)."""
DIGEST_LIFE = 1 << 24
"""Digest versions per incarnation: a restarted node's digest versions start above its previous life's."""


def assignments(state: Any, node_id: str, files: TaskFileSource | None = None) -> list[Assignment]:
    """This node's tasks in the cluster state, as agent assignments. Ended tasks stay
    assigned (desired shutdown) while the state keeps them in the service's history, so the
    agent keeps their log files for `service logs` until the history drops them. ``files``
    gives the tasks meant to run their secrets and configs (opened here, for them only)."""
    out = []
    used: set[tuple[str, str]] = set()
    for task in state.tasks_on(node_id):
        spec = state.spec_of(task)
        if spec is None:
            continue
        running = task.desired == "running" and task.state not in TERMINAL
        task_spec = base.TaskSpec(
            task.id, task.service, task.slot, node_id, spec.argv, dict(spec.env), spec.workdir,
            base.dynamic_ports_needed(spec.ports), spec.health, stop_grace=spec.stop_grace, publish=tuple(spec.ports),
            image=spec.image, network=spec.network_mode, user=spec.user, limit_cpu=spec.limit_cpu,
            limit_memory=spec.limit_memory, limit_pids=spec.limit_pids, stop_signal=spec.stop_signal,
            mounts=spec.mounts, files=files.files(state, spec, used) if files is not None and running else (),
            log_retention=_retention(state, task.service, spec))
        out.append(Assignment(task_spec, task.version, "running" if running else "shutdown", RUN_ONCE))
    if files is not None:
        files.keep_only(used)
    return out


def _retention(state: Any, service: str, spec: Any) -> float:
    """The service's current log retention (a change of it makes a version no task is restarted for)."""
    svc = getattr(state, "services", {}).get(service)
    return (svc.spec if svc is not None else spec).log_retention


class AgentHost:
    name = "agent"

    def __init__(self, node_id: str, data_dir: Path, raft: Any, incarnation: int,
                 task_host: str | None = None, task_user: str | None = None, *, record: GossipRecord,
                 keyring: Any = None, engine_socket: str | None = None, dns: str | None = None,
                 source: Callable[[], tuple[Any, Any] | None] | None = None) -> None:
        """``task_user``: the user a root node runs tasks as (None: the default, see
        :func:`p2pswarm.runtime.taskuser.resolve`); raises TaskUserError with one line.
        ``record``: the node's gossip record, whose ``tasks`` section this agent sets.
        ``keyring``: the secrets keyring (:class:`p2pswarm.security.secretbox.Keyring`; None: plaintext).
        ``engine_socket``: the Docker Engine's API for image tasks (None: ``$DOCKER_HOST`` or the standard one).
        ``dns``: ``HOST:PORT`` of the node's DNS, told to tasks (``P2PSWARM_DNS``; None: no DNS).
        ``source``: the (state, security record) this node's assignments are read from (the assignments
        host's :meth:`~p2pswarm.assignments.host.AssignmentsHost.agent_state`; None: the local Raft state)."""
        self.node_id, self.raft, self.record = node_id, raft, record
        self.source = source or self._raft_state
        self._security: Any = None
        """The security record (sealed keyring) of the state last read: secrets open with its keys."""
        self.files = TaskFileSource(None if keyring is None else
                                    lambda secret: keyring.open(self._security, secret))
        user, why = taskuser.resolve(task_user)
        (log.info if user is not None else log.warning)("%s", why)
        self.volumes = Volumes(None, node_id)
        """This node's named volumes (``volume ls|rm`` through the API)."""
        node_cgroups, self.isolation = cgroups.for_node(node_id)
        """What this node can enforce (``cgroup-v1``, ``cgroup-v2`` or ``none`` and why)."""
        log.info("task isolation: %s (%s)", self.isolation.kind, self.isolation.reason)
        self.watchdog = Watchdog()
        """The reaper that kills this node's tasks if the node dies; runtimes add their cleanup steps."""
        processes = ProcessRuntime(data_dir, ProcessConfig(task_host=task_host, task_user=user, dns=dns,
                                                           task_homes=taskuser.HOMES / node_id,
                                                           volumes_root=self.volumes.root,
                                                           cgroups=node_cgroups, cgroups_off=self.isolation.reason),
                                   watchdog=self.watchdog)
        self.engine_socket = engine_socket or engine.default_socket()
        self.engine = engine.Engine("none", "not probed yet")
        """The container engine image tasks run on (probed at :meth:`start`)."""
        containers = ContainerRuntime(data_dir, ContainerConfig(node_id, self.engine_socket, task_host,
                                                                volumes_root=self.volumes.root, dns=dns),
                                      processes.ports, processes.files, watchdog=self.watchdog)
        self.runtime = DispatchRuntime(processes, containers)
        self.driver = AgentDriver(self.runtime, AgentCore(digest_version=incarnation * DIGEST_LIFE),
                                  on_digest=self._on_digest, health_host=task_host or "127.0.0.1")
        self._digest: tuple[int, dict] | None = None
        self._seen: tuple[int, int] | None = None
        """(id, applied index) of the state whose assignments the agent follows now."""
        self._on_replica = True
        """The state last read is this node's Raft replica (checked often) rather than a worker's assignments."""
        self._sweep_due = 0.0
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.engine = await asyncio.to_thread(engine.probe, self.engine_socket)
        (log.info if self.engine.available else log.warning)(
            "container engine: %s", f"docker {self.engine.detail}" if self.engine.available
            else f"unavailable ({self.engine.detail}); image tasks cannot run here")
        self.record.set(NodeCaps.of(self.engine.kind, self.engine.detail, self.isolation.kind, self.isolation.reason))
        self.watchdog.start()
        left = await self.runtime.adopt_or_stop_leftovers()
        if left:
            log.info("stopped %d task(s) left over from a previous run of this node", len(left))
        self._tasks = [asyncio.ensure_future(self.driver.run()), asyncio.ensure_future(self._follow())]

    async def close(self) -> None:
        """Stop every task gracefully (SIGTERM, grace, SIGKILL) and wait for them: no orphans."""
        for task in self._tasks[1:]:
            task.cancel()
        await self.driver.shutdown()
        for task in self._tasks[:1]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.runtime.close()
        await asyncio.to_thread(self.watchdog.close)  # nothing left for it to kill: it just exits

    def step(self, now: float) -> None:
        """Follow the assignments if their state moved (a worker's delta arrives in a loop turn); and every
        ``SWEEP_INTERVAL`` delete the kept logs of forgotten tasks whose retention is over."""
        self._look()
        if now >= self._sweep_due:
            self._sweep_due = now + SWEEP_INTERVAL
            for task_id in self.runtime.sweep_retired(time.time()):
                log.info("task %s: logs deleted (their retention is over)", task_id)

    def metrics(self) -> dict[str, Any]:
        """The tasks this agent holds (``/metrics`` shows them by state from the digest)."""
        return {"tasks": len(self._digest[1]) if self._digest is not None else 0}

    def _raft_state(self) -> tuple[Any, Any] | None:
        driver = self.raft.driver
        return (driver.cluster, driver.security) if driver is not None else None

    async def _follow(self) -> None:
        """Look between the loop turns too: every FOLLOW_INTERVAL while the state is the Raft replica's,
        every FOLLOW_IDLE on a worker (an idle worker's agent should not wake 20 times a second)."""
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL if self._on_replica else FOLLOW_IDLE)
            self._look()

    def _look(self) -> None:
        """Re-read this node's assignments if the state they come from moved or is another one (a node that
        becomes a worker, or a Raft member again)."""
        source = self.source()
        if source is None:
            return
        state, self._security = source
        if (id(state), state.applied) == self._seen:
            return
        self._seen = (id(state), state.applied)
        replica = self._raft_state()
        self._on_replica = replica is not None and replica[0] is state
        try:
            self.driver.assign(assignments(state, self.node_id, self.files))
        except Exception:  # a bug must not stop the agent from following later changes
            log.error("cannot apply this node's assignments", exc_info=True)

    def _on_digest(self, digest: dict[str, Any]) -> None:
        self._digest = (digest["v"], digest["tasks"])
        self.record.set(TaskDigest(*self._digest))

    def log_paths(self, task_id: str) -> dict[str, list[Path]]:
        return self.runtime.log_paths(task_id)
