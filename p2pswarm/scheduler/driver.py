"""Drives the pure reconciler on the Raft leader: observe, decide, propose.

Only the leader runs a round; every other node's loop idles.  A round, when
anything it depends on changed (the applied state, a member's status, a task
digest) or a reconciler deadline (``wake_at``) passed, or every
``SchedulerConfig.resync`` seconds anyway:

1. **Register nodes.** Alive members that the cluster state does not know, or whose
   gossiped name, labels, capacity or capabilities (engine, isolation: the ``caps``
   section of their record) differ, get an ``update_node`` (labels are added, so labels
   set with ``node update`` survive).
2. **Observe tasks.** Each member's task digest (its SWIM record, see
   section ``tasks``, see :mod:`p2pswarm.node.record`) is translated into task reports, only for tasks whose
   state, port or health differ from the applied state (a task costs Raft traffic when it changes, not while
   it runs), batched into ``report_tasks`` commands under the Raft entry limit.
3. **Reconcile.** If steps 1-2 proposed nothing, the :class:`~p2pswarm.scheduler.incremental.Reconciler`
   plans against the applied state, only the services whose inputs changed (a full pass on the first round
   of a leadership and every ``ReconcileConfig.full_every`` seconds); its orphan reports are proposed first
   (side by side), then each service's commands (in order within a service, services side by side, each
   command under the Raft entry limit).

**Failures.**  A service whose proposal fails (refused for another reason than a stale
plan, too large, timed out) is logged as one WARNING line naming it (its retries, while
the error stays the same, log at DEBUG: a stuck service does not flood the log), noted in
the cluster state (``service ps`` and ``service inspect`` show ``scheduling: ...``) and left
alone for a back-off that doubles per consecutive failure; the other services are
scheduled meanwhile.  A round that fails as a whole (no quorum) backs off the same way
instead of planning again every ``interval``.

Timestamps (``at``) and the reconciler's ``now`` are wall-clock time, read here: the
commands are applied on every node, and a later leader compares them with its own
clock, so a per-process monotonic clock would not do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.model import TERMINAL, state_rank
from p2pswarm.cluster.spec import SpecError
from p2pswarm.consensus.raft import LEADER
from p2pswarm.consensus.requests import command_id
from p2pswarm.membership.messages import LIVE
from p2pswarm.node.record import GossipRecord, NodeCaps
from p2pswarm.scheduler.config import SchedulerConfig
from p2pswarm.scheduler.incremental import Reconciler

log = logging.getLogger("p2pswarm.scheduler")

AGENT_STATES = {"preparing": "preparing", "starting": "starting", "running": "running", "complete": "complete",
                "failed": "failed", "shutdown": "shutdown"}
"""Agent digest state -> observed task state; the others (pending, stopping) are not reported."""
HEALTH = ("starting", "healthy", "unhealthy")
MAX_REFUSED = 10_000
FOLLOWER_CHECK = 1.0
"""Seconds a node that does not lead waits for ``step`` to say it leads before it looks itself: every node runs
this driver, and most never lead, so they should not wake every ``interval`` for nothing."""
MAX_ERROR = 200


@dataclass
class _Failure:
    """A service's consecutive failed attempts: what went wrong last and when to try again."""
    error: str
    count: int
    retry_at: float


class SchedulerDriver:
    name = "scheduler"

    def __init__(self, raft: Any, swim: Any, config: SchedulerConfig, *,
                 wall: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic,
                 record: GossipRecord | None = None) -> None:
        """``raft``: the node's RaftHost (its ``driver`` appears once the node knows its cluster);
        ``record``: the node's gossip record, which reads members' task digests (None: a fresh reader)."""
        self.raft, self.swim, self.cfg, self.wall, self.clock = raft, swim, config, wall, clock
        self.record = record if record is not None else GossipRecord()
        self.rounds = 0
        self._seen: Any = None
        self._next_round = 0.0
        self._refused: set[tuple] = set()
        """Observations the state machine refused: not proposed again (each round would repeat them)."""
        self.failures: dict[str, _Failure] = {}
        """Services whose last scheduling proposal failed (name -> failure), until one succeeds."""
        self._round_failures = 0
        self._hold_until = 0.0
        self._task: asyncio.Task | None = None
        self._leading = asyncio.Event()
        """Set by ``step`` once this node leads: wakes ``run`` from its wait."""
        self.reconciler = Reconciler()
        """Remembers what its last round saw, to plan only what changed (a new one per leadership)."""

    # ------------------------------------------------------------ the node's component protocol

    async def start(self) -> None:
        """Run the rounds in a task of their own (a round awaits Raft commits)."""
        self._task = asyncio.ensure_future(self.run())

    def step(self, now: float) -> None:
        """Wake ``run`` when this node has become the leader (it checks for changes every ``interval`` then)."""
        if not self._leading.is_set() and self._leads(self.raft.driver):
            self._leading.set()

    @staticmethod
    def _leads(driver: Any) -> bool:
        return driver is not None and driver.failed is None and driver.raft.role == LEADER

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def metrics(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "full_rounds": self.reconciler.full_rounds,
                "failing_services": len(self.failures)}

    async def run(self) -> None:
        while True:
            if not self._leads(self.raft.driver):
                self._seen, self.failures, self._round_failures = None, {}, 0
                self.reconciler = Reconciler()  # a new one per leadership
                self._leading.clear()
                try:
                    await asyncio.wait_for(self._leading.wait(), FOLLOWER_CHECK)
                except asyncio.TimeoutError:
                    pass
            await asyncio.sleep(self.cfg.interval)
            driver = self.raft.driver
            if not self._leads(driver):
                continue  # the next turn forgets this leadership's state and waits
            if self.clock() < self._hold_until:
                continue
            try:
                await self._round(driver)
                self._round_failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no quorum, a lost leadership: plan again after a back-off
                self._seen = None
                self._round_failures += 1
                wait = self._backoff(self._round_failures)
                self._hold_until = self.clock() + wait
                log.warning("scheduler round failed: %s; retrying in %g s", _line(exc), wait)

    async def _round(self, driver: Any) -> None:
        members = self.swim.members()
        seen = (driver.cluster.applied, driver.raft.term,
                tuple((m.node, m.status, m.record_version) for m in members))
        now = self.clock()
        if seen == self._seen and now < self._next_round:
            return
        self._seen, self._next_round = seen, now + self.cfg.resync
        state, wall = driver.cluster, self.wall()
        observed = self.observations(state, members, wall)
        if observed:
            results = await asyncio.gather(*(self._propose(driver, c) for c in observed))
            if len(self._refused) > MAX_REFUSED:
                self._refused.clear()
            self._refused.update(g for c, result in zip(observed, results) for g in _refused_gists(c, result))
            return
        plan = self.reconciler.reconcile(state, {m.node: m.status for m in members}, wall, driver.raft.term)
        self.rounds += 1
        groups: dict[str, list[dict]] = {}
        for command, service in zip(plan.commands, plan.about, strict=True):
            groups.setdefault(service, []).append(command)
        # orphan reports, one per task of a dead node (thousands for a big service), commit together: side by
        # side they share the leader's group commit instead of paying one round trip each
        await asyncio.gather(*(self._propose(driver, command) for command in groups.pop("", [])))
        self.failures = {name: f for name, f in self.failures.items() if name in state.services}
        due = [name for name in groups if name not in self.failures or self.failures[name].retry_at <= now]
        await asyncio.gather(*(self._schedule(driver, name, groups[name]) for name in due))
        errors = {name: f.error for name, f in self.failures.items()}
        await asyncio.gather(*(self._note(driver, name, errors.get(name, ""))
                               for name, svc in sorted(state.services.items())
                               if svc.scheduling_error != errors.get(name, "")))
        if self.failures:
            self._next_round = min([self._next_round] + [f.retry_at for f in self.failures.values()])
        if plan.wake_at is not None:
            self._next_round = min(self._next_round, now + max(0.0, plan.wake_at - wall))

    async def _schedule(self, driver: Any, service: str, commands: list[dict]) -> None:
        """Propose one service's commands in order; stop at the first failure and back off."""
        for command in commands:
            try:
                result = await driver.write_cluster(command)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # too large, no quorum, timed out, leadership lost
                error = f"scheduling: proposal failed: {_line(exc)}"
            else:
                if result.ok or result.stale:  # a stale plan is simply made again on the newer state
                    if not result.ok:
                        log.debug("%s %s refused: %s", command["op"], command["id"], result.error)
                    continue
                error = f"scheduling: refused: {result.error}"
            failure, error = self.failures.get(service), error[:cmd.MAX_MESSAGE]
            count = failure.count + 1 if failure is not None else 1
            wait = self._backoff(count)
            self.failures[service] = _Failure(error, count, self.clock() + wait)
            repeated = failure is not None and failure.error == error  # warned already; `service ps` shows it
            log.log(logging.DEBUG if repeated else logging.WARNING, "service %s: %s (%s %s); retrying in %g s",
                    service, error, command["op"], command["id"], wait)
            return
        if self.failures.pop(service, None) is not None:
            log.info("service %s: scheduling succeeds again", service)

    async def _note(self, driver: Any, service: str, error: str) -> None:
        """Record (or clear) ``service``'s scheduling error in the cluster state, best effort."""
        try:
            await driver.write_cluster(cmd.set_scheduling_error(_cid("se"), self.wall(), service, error))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the failure is already logged; the next round tries again
            log.debug("could not note the scheduling error of %s: %s", service, exc)

    def _backoff(self, failures: int) -> float:
        return min(self.cfg.backoff_max, self.cfg.backoff * 2 ** min(failures - 1, 32))

    @staticmethod
    async def _propose(driver: Any, command: dict) -> Any:
        result = await driver.write_cluster(command)
        if not result.ok:
            log.debug("%s %s refused: %s", command["op"], command["id"], result.error)
        return result

    def observations(self, state: Any, members: list, wall: float) -> list[dict]:
        """Steps 1-2: the ``update_node`` commands, then the task reports batched into ``report_tasks`` commands
        (a zone's replacements start together: thousands of reports in a few entries), leaving out what the state
        machine refused before."""
        registered = [c for c in self._register(state, members, wall) if _gist(c) not in self._refused]
        reports = []
        for report in self._observe(state, members):
            gist = _gist(report)
            if gist in self._refused:
                continue
            try:
                cmd.check_report(report)
            except SpecError as exc:  # one odd digest must not sink the batch it would ride in
                log.debug("task report %s not proposed: %s", report["task"], exc)
                self._refused.add(gist)
                continue
            reports.append(report)
        return registered + list(cmd.report_batches(lambda: _cid("st"), wall, reports))

    def _register(self, state: Any, members: list, wall: float) -> list[dict]:
        out = []
        for m in members:
            if m.status != "alive":
                continue
            capacity = dict(m.meta.capacity)
            cpu = float(capacity["cpus"]) if "cpus" in capacity else None
            memory = int(capacity["memory_mb"] * 2**20) if "memory_mb" in capacity else None
            labels = dict(m.meta.labels)
            caps = self.record.of(m).caps
            engine = None if caps is None else (caps.engine, caps.engine_detail)
            isolation = None if caps is None else (caps.isolation, caps.isolation_detail)
            node = state.nodes.get(m.node)
            if node is not None and node.name == m.meta.name and (node.cpu, node.memory) == (cpu, memory) \
                    and labels.items() <= node.label_map.items() and (caps is None or _caps_of(node) == caps):
                continue
            if m.node in state.removed_nodes:
                continue
            out.append(cmd.update_node(_cid("node"), wall, m.node, name=m.meta.name, label_add=labels,
                                       cpu=cpu, memory=memory, engine=engine, isolation=isolation))
        return out

    def _observe(self, state: Any, members: list) -> list[dict]:
        out = []
        for m in members:
            digest = self.record.of(m).tasks if m.status in LIVE else None
            if digest is None:
                continue
            for tid, rec in sorted(digest.tasks.items()):
                task = state.tasks.get(tid)
                report = _report(rec)
                if task is None or task.node != m.node or task.state in TERMINAL or report is None:
                    continue
                new, port, health, exit_code, error = report
                if state_rank(new) < state_rank(task.state) or (
                        new == task.state and port in (None, task.port) and health in (None, task.health)):
                    continue
                out.append(cmd.task_report(tid, new, node=m.node, port=port, exit_code=exit_code, error=error,
                                           health=health))
        return out


def _caps_of(node: Any) -> NodeCaps:
    """A registered node's capabilities, as its record would carry them."""
    return NodeCaps(node.engine, node.engine_detail, node.isolation, node.isolation_detail)


def _report(rec: dict) -> tuple | None:
    """(state, port, health, exit code, error) from one digest record, None if unusable (peers are not trusted)."""
    state = rec.get("s")
    new = AGENT_STATES.get(state) if isinstance(state, str) else None
    if new is None:
        return None
    port, health, code, error = rec.get("p"), rec.get("h"), rec.get("x"), rec.get("e")
    port = port if type(port) is int and 0 < port < 65536 else None
    health = health if health in HEALTH else None
    code = code if type(code) is int and -cmd.MAX_EXIT_CODE <= code <= cmd.MAX_EXIT_CODE else None
    signal = rec.get("g")
    if code is None and type(signal) is int and 0 < signal <= cmd.MAX_EXIT_CODE:
        code = -signal  # killed by a signal, as Popen reports it
    error = error[:MAX_ERROR] if isinstance(error, str) else ""
    return new, port, health, code, error


def _line(exc: BaseException) -> str:
    """An exception as one line (its first), named by its type when it says nothing."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _gist(command: dict) -> tuple:
    """A command (or a report of a batch) without its id and time: what makes two observations the same."""
    return tuple(sorted((k, repr(v)) for k, v in command.items() if k not in ("id", "at")))


def _refused_gists(command: dict, result: Any) -> list[tuple]:
    """The observations of ``command`` that the state machine refused: a batch's refused reports (a batch refused
    whole names none: its reports were checked one by one, so they are tried again rather than all dropped)."""
    if result.ok:
        return []
    if command["op"] != "report_tasks":
        return [_gist(command)]
    refused = set(result.value.get("refused") or ()) if isinstance(result.value, dict) else set()
    return [_gist(r) for i, r in enumerate(command["reports"]) if i in refused]


def _cid(kind: str) -> str:
    return command_id(kind)
