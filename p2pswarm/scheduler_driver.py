"""Drives the pure reconciler on the Raft leader: observe, decide, propose.

Only the leader runs a round; every other node's loop idles.  A round, when
anything it depends on changed (the applied state, a member's status, a task
digest) or a reconciler deadline (``wake_at``) passed, or every
``SchedulerConfig.resync`` seconds anyway:

1. **Register nodes.** Alive members that the cluster state does not know, or whose
   gossiped name, labels or capacity differ, get an ``update_node`` (labels are
   added, so labels set with ``node update`` survive).
2. **Observe tasks.** Each member's task digest (its SWIM record, see
   :mod:`p2pswarm.raftfacts`) is translated into ``report_task_status`` commands,
   only for tasks whose state, port or health differ from the applied state: a task
   costs Raft traffic when it changes, not while it runs.
3. **Reconcile.** If steps 1-2 proposed nothing, :func:`reconcile` plans against the
   applied state and its commands are proposed, one after the other.

Timestamps (``at``) and the reconciler's ``now`` are wall-clock time, read here: the
commands are applied on every node, and a later leader compares them with its own
clock, so a per-process monotonic clock would not do.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.model import TERMINAL, state_rank
from p2pswarm.consensus.raft import LEADER
from p2pswarm.raftfacts import decode_facts
from p2pswarm.scheduler.reconcile import reconcile

log = logging.getLogger("p2pswarm.scheduler")

AGENT_STATES = {"starting": "starting", "running": "running", "complete": "complete", "failed": "failed",
                "shutdown": "shutdown"}
"""Agent digest state -> observed task state; the others (pending, stopping) are not reported."""
HEALTH = ("starting", "healthy", "unhealthy")
MAX_REFUSED = 10_000
MAX_ERROR = 200


@dataclass(frozen=True)
class SchedulerConfig:
    interval: float = 0.1
    """Seconds between checks for a change (a check that finds none costs a few comparisons)."""
    resync: float = 5.0
    """Seconds after which a round runs even if nothing seems to have changed."""


PRESETS = {"lan": SchedulerConfig(), "wan": SchedulerConfig(interval=0.5, resync=15.0),
           "local": SchedulerConfig(), "test": SchedulerConfig(interval=0.05, resync=2.0)}


class SchedulerDriver:
    def __init__(self, host: Any, swim: Any, config: SchedulerConfig, *,
                 wall: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic) -> None:
        """``host``: the node's RaftHost (its ``driver`` appears once the node knows its cluster)."""
        self.host, self.swim, self.cfg, self.wall, self.clock = host, swim, config, wall, clock
        self.rounds = 0
        self._seen: Any = None
        self._next_round = 0.0
        self._refused: set[tuple] = set()
        """Observations the state machine refused: not proposed again (each round would repeat them)."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval)
            driver = self.host.driver
            if driver is None or driver.failed is not None or driver.raft.role != LEADER:
                self._seen = None
                continue
            try:
                await self._round(driver)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no quorum, a lost leadership: plan again on the next change
                self._seen = None
                log.debug("scheduler round failed: %s", exc)

    async def _round(self, driver: Any) -> None:
        members = self.swim.members()
        seen = (driver.cluster.applied, driver.raft.term,
                tuple((m.node, m.status, m.record_version) for m in members))
        now = self.clock()
        if seen == self._seen and now < self._next_round:
            return
        self._seen, self._next_round = seen, now + self.cfg.resync
        state, wall = driver.cluster, self.wall()
        observed = [c for c in self._register(state, members, wall) + self._observe(state, members, wall)
                    if _gist(c) not in self._refused]
        if observed:
            results = await asyncio.gather(*(self._propose(driver, c) for c in observed))
            if len(self._refused) > MAX_REFUSED:
                self._refused.clear()
            self._refused.update(_gist(c) for c, ok in zip(observed, results) if not ok)
            return
        plan = reconcile(state, {m.node: m.status for m in members}, wall, driver.raft.term)
        self.rounds += 1
        for command in plan.commands:
            await self._propose(driver, command)
        if plan.wake_at is not None:
            self._next_round = min(self._next_round, now + max(0.0, plan.wake_at - wall))

    @staticmethod
    async def _propose(driver: Any, command: dict) -> bool:
        result = await driver.write_cluster(command)
        if not result.ok:
            log.debug("%s %s refused: %s", command["op"], command["id"], result.error)
        return result.ok

    def _register(self, state: Any, members: list, wall: float) -> list[dict]:
        out = []
        for m in members:
            if m.status != "alive":
                continue
            capacity = dict(m.meta.capacity)
            cpu = float(capacity["cpus"]) if "cpus" in capacity else None
            memory = int(capacity["memory_mb"] * 2**20) if "memory_mb" in capacity else None
            labels = dict(m.meta.labels)
            node = state.nodes.get(m.node)
            if node is not None and node.name == m.meta.name and (node.cpu, node.memory) == (cpu, memory) \
                    and labels.items() <= node.label_map.items():
                continue
            if m.node in state.removed_nodes:
                continue
            out.append(cmd.update_node(_cid("node"), wall, m.node, name=m.meta.name, label_add=labels,
                                       cpu=cpu, memory=memory))
        return out

    def _observe(self, state: Any, members: list, wall: float) -> list[dict]:
        out = []
        for m in members:
            facts = decode_facts(m.record) if m.status in ("alive", "suspect") else None
            if facts is None or facts.digest is None:
                continue
            for tid, rec in sorted(facts.digest[1].items()):
                task = state.tasks.get(tid)
                report = _report(rec)
                if task is None or task.node != m.node or task.state in TERMINAL or report is None:
                    continue
                new, port, health, exit_code, error = report
                if state_rank(new) < state_rank(task.state) or (
                        new == task.state and port in (None, task.port) and health in (None, task.health)):
                    continue
                out.append(cmd.report_task_status(_cid("st"), wall, tid, new, node=m.node, port=port,
                                                  exit_code=exit_code, error=error, health=health))
        return out


def _report(rec: dict) -> tuple | None:
    """(state, port, health, exit code, error) from one digest record, None if unusable (peers are not trusted)."""
    new = AGENT_STATES.get(rec.get("s")) if isinstance(rec.get("s"), str) else None
    if new is None:
        return None
    port, health, code, error = rec.get("p"), rec.get("h"), rec.get("x"), rec.get("e")
    port = port if type(port) is int and 0 < port < 65536 else None
    health = health if health in HEALTH else None
    code = code if type(code) is int and -(2**31) <= code < 2**31 else None
    if code is None and type(rec.get("g")) is int:
        code = -rec["g"]  # killed by a signal, as Popen reports it
    error = error[:MAX_ERROR] if isinstance(error, str) else ""
    return new, port, health, code, error


def _gist(command: dict) -> tuple:
    """A command without its id and time: what makes two observations the same."""
    return tuple(sorted((k, repr(v)) for k, v in command.items() if k not in ("id", "at")))


def _cid(kind: str) -> str:
    return f"{kind}.{secrets.token_hex(8)}"
