"""The reconciler: what the Raft leader proposes so that observed matches desired.

Pure: it reads the cluster state, the membership SWIM observes (node id -> alive,
suspect, dead or left) and ``now`` (the clock commands are stamped with), and
returns commands.  The leader proposes them; the state machine rejects any that
went stale meanwhile, and the next round plans again from the newer state.

One round:

1. tasks still marked running on dead nodes are declared ``orphaned``;
2. per service: the rolling update decides which outdated tasks to replace now
   (:mod:`updates`); the restart policy decides, for each slot whose task ended,
   whether to replace it now, later (``delay``; attempts within ``window``) or never;
3. placement plans every service at once (:mod:`placement`): replacements for tasks
   on dead, drained or no longer eligible nodes, scale up and down, global mode, and a
   bounded number of rebalancing moves; suspect nodes keep their tasks but get no new
   ones;
4. new tasks get slots (pending ones first, then restarts, then the lowest free
   number); tasks that cannot be placed are recorded as pending with the reason (at most
   ``MAX_PENDING`` per service).

Each service's decisions become ``assign_tasks`` commands of its own (a move is one
decision), split so that each fits one Raft entry (:func:`commands.assign_batches`):
a service too large for one entry converges over several, and a service whose
proposal fails holds up no other.  ``about`` names the service of each command;
``wake_at`` says when a delay ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from typing import Literal, Mapping, cast

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.model import TERMINAL, Service, Task
from p2pswarm.cluster.spec import RestartPolicy
from p2pswarm.cluster.state import ClusterState
from p2pswarm.membership.messages import LIVE
from p2pswarm.scheduler import updates
from p2pswarm.scheduler.placement import Demand, NodeInfo, plan

GONE = frozenset({"dead", "left"})
MAX_RESTART_TIMES = 64
"""Restart times a task remembers (older ones cannot matter to ``max_attempts`` beyond that)."""
MAX_PENDING = 100
"""Unplaceable tasks recorded per service (``service ps`` shows them with the reason); further slots wait
unrecorded and are planned again each round.  A task record costs about 250 bytes of every snapshot, which
each replica encodes on its event loop: 100,000 unsatisfiable replicas as records would make a 25 MB
snapshot (measured: 1.2 s to encode) for nothing a person reads; 100 rows say it all, at ~25 KB."""


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    max_moves: int = 2
    """Rebalancing moves per round, over all services (each is one stop plus one start)."""


@dataclass(frozen=True, slots=True)
class Reconciliation:
    commands: tuple[dict, ...]
    wake_at: float | None
    """Reconcile again by then even if nothing changes (a restart or update delay ends)."""
    unplaced: Mapping[str, tuple[int, str]]
    about: tuple[str, ...]
    """Per command, the service it decides about ('' for orphan reports, which must be applied first)."""


RestartDecision = (tuple[Literal["now"], tuple[float, ...]] | tuple[Literal["wait"], float]
                   | tuple[Literal["never"], None])
"""What :func:`restart_decision` says, and what goes with it: the successor's restart times, the wake time, nothing."""


def restart_decision(policy: RestartPolicy, task: Task, now: float) -> RestartDecision:
    """For a task that ended while meant to run: ``("now", restart times for its successor)``,
    ``("wait", when)`` or ``("never", None)``.  A task that went away without exiting (its node
    shut it down or died) is replaced at once and does not count as an attempt."""
    if task.state in ("shutdown", "orphaned"):
        return "now", task.restarts
    failed = task.state in ("failed", "rejected") or (task.exit_code or 0) != 0
    if policy.condition == "none" or (policy.condition == "on-failure" and not failed):
        return "never", None
    recent = [t for t in task.restarts if policy.window == 0 or t > now - policy.window]
    if policy.max_attempts and len(recent) >= policy.max_attempts:
        return ("wait", recent[0] + policy.window) if policy.window else ("never", None)
    ended = task.finished_at if task.finished_at is not None else task.updated_at
    if now < ended + policy.delay:
        return "wait", ended + policy.delay
    return "now", (task.restarts + (ended,))[-MAX_RESTART_TIMES:]


def reconcile(state: ClusterState, members: Mapping[str, str], now: float, term: int,
              config: ReconcileConfig = ReconcileConfig()) -> Reconciliation:
    return _Round(state, members, now, term, config).run()


@dataclass
class _ServiceRound:
    """What one service needs this round, between the decisions and the slot mapping."""
    service: Service
    live: list[Task]
    pending: dict
    ready: dict
    held: set
    stops: list[tuple[str, str]]


class _Round:
    def __init__(self, state: ClusterState, members: Mapping[str, str], now: float, term: int,
                 config: ReconcileConfig) -> None:
        self.state, self.members, self.now, self.config = state, members, now, config
        self.basis = (term, state.applied)
        self._ids = count()
        self.term = term
        self.commands: list[dict] = []
        self.about: list[str] = []
        self.wakes: list[float] = []

    def cid(self) -> str:
        """Deterministic per basis: re-running a round on unchanged state proposes the same ids,
        which the state machine then applies once."""
        return f"rc.{self.term}.{self.state.applied}.{next(self._ids)}"

    def up(self, node: str | None) -> bool:
        return node is not None and node in self.state.nodes and self.members.get(node) in LIVE

    def run(self) -> Reconciliation:
        self._orphan()
        rounds = [r for r in map(self._decide, sorted(self.state.services.values(), key=lambda s: s.name)) if r]
        nodes = [NodeInfo.of(n, "pause" if self.members.get(n.id) == "suspect" and n.availability == "active"
                             else None) for n in self.state.nodes.values() if self.up(n.id)]
        demands = [self._demand(r) for r in rounds]
        stopping = {task for r in rounds for task, _ in r.stops}
        result = plan(nodes, demands, max_moves=self.config.max_moves, reserved=self._reserved(demands),
                      held_ports=self._held_ports(demands, stopping))
        placed: dict[str, list[str]] = {r.service.name: [] for r in rounds}
        for service, node in result.place:
            placed[service].append(node)
        stopped = {t for t, _ in result.stop}
        moved: dict[str, list[tuple[str, str]]] = {}
        for task, reason in result.stop:
            moved.setdefault(self.state.tasks[task].service, []).append((task, reason))
        for r in rounds:
            name = r.service.name
            stops = moved.get(name, []) + r.stops
            if r.service.spec.mode == "global":
                items = self._global_items(r, placed[name], stops)
            else:
                items = self._replicated_items(r, placed[name], result.unplaced.get(name, (0, "")), stopped, stops)
            for command in cmd.assign_batches(self.cid, self.now, self.basis, items, _unique(stops)):
                self._emit(command, name)
        return Reconciliation(tuple(self.commands), min(self.wakes, default=None), result.unplaced,
                              tuple(self.about))

    def _emit(self, command: dict, service: str = "") -> None:
        self.commands.append(command)
        self.about.append(service)

    # -------------------------------------------------------------- decisions

    def _orphan(self) -> None:
        for task in sorted(self.state.tasks.values(), key=lambda t: t.id):
            if task.node is not None and task.state not in TERMINAL and self.members.get(task.node) in GONE:
                self._emit(cmd.report_task_status(self.cid(), self.now, task.id, "orphaned", node=None,
                                                  error=f"node {task.node} is down"))

    def _decide(self, svc: Service) -> _ServiceRound | None:
        tasks = self.state.tasks_of(svc.name)
        step = updates.step(svc, tasks, self.now, self.up)
        if step.wake_at is not None:
            self.wakes.append(step.wake_at)
        if step.rollback:
            self._emit(cmd.rollback_service(self.cid(), self.now, svc.name, self.basis, step.message), svc.name)
            return None  # the service changes: plan it next round, on the rolled back spec
        if step.new_state is not None:
            self._emit(cmd.set_update_state(self.cid(), self.now, svc.name, svc.version, step.new_state,
                                            step.message, self.basis), svc.name)
        replaced = set(step.replace)
        live = [t for t in tasks if t.live and t.node is not None and t.id not in replaced]
        live_keys = {t.slot_key for t in live}
        pending = {t.slot_key: t for t in tasks if t.live and t.node is None}
        ready, held, stops = {}, set(), list(step.stop)
        for task in tasks:  # newest first within a slot: the first ended task seen is the slot's latest
            key = task.slot_key
            if task.desired != "running" or task.state not in TERMINAL or key in live_keys or key in pending \
                    or key in ready or key in held:
                continue
            # a replicated service's tasks have slots 1..n, so their slot key is that number
            if svc.spec.mode == "replicated" and cast(int, key) > svc.spec.replicas:
                stops.append((task.id, "scaled down"))
                continue
            decision = restart_decision(svc.spec.restart, task, self.now)
            if decision[0] == "now":
                ready[key] = (task, decision[1])
            else:
                held.add(key)
                if decision[0] == "wait":
                    self.wakes.append(decision[1])
        return _ServiceRound(svc, live, pending, ready, held, stops)

    def _demand(self, r: _ServiceRound) -> Demand:
        spec = r.service.spec
        ordered = sorted(r.live, key=lambda t: (t.state != "running", t.slot, t.id))
        placed = tuple((t.id, t.node) for t in ordered if t.node is not None)  # all of them: live tasks are placed
        if spec.mode == "global":
            return Demand(spec, placed, hold=frozenset(r.held))
        want = spec.replicas - len(r.held)
        # Only a calm service is rebalanced: a move starts a task of the current spec, which must
        # not sneak a paused update forward or stir a service whose tasks keep failing.
        converged = (r.service.update_state not in updates.ACTIVE and not r.pending and not r.ready
                     and not r.held and len(r.live) == want
                     and all(t.state == "running" and not updates.outdated(r.service, t) for t in r.live))
        return Demand(spec, placed, want, rebalance=spec.rebalance and converged)

    def _reserved(self, demands: list[Demand]) -> dict[str, tuple[float, int]]:
        """cpu and memory held by live tasks placement is not deciding about (start-first overlaps)."""
        decided = {t for d in demands for t, _ in d.tasks}
        out: dict[str, tuple[float, int]] = {}
        for task in self.state.tasks.values():
            spec = self.state.spec_of(task)
            if task.live and task.node is not None and task.id not in decided and spec is not None:
                cpu, mem = out.get(task.node, (0.0, 0))
                out[task.node] = (cpu + spec.reserve_cpu, mem + spec.reserve_memory)
        return out

    def _held_ports(self, demands: list[Demand], stopping: set[str]) -> dict[str, list[tuple[int, str]]]:
        """Host ports held by live tasks placement is not deciding about, except those this round stops
        (a stop-first update frees its task's port for the replacement, which the node starts once it is free)."""
        decided = {t for d in demands for t, _ in d.tasks} | stopping
        out: dict[str, list[tuple[int, str]]] = {}
        for task in self.state.tasks.values():
            if task.live and task.node is not None and task.id not in decided:
                spec = self.state.spec_of(task)
                if spec is not None and spec.host_ports:
                    out.setdefault(task.node, []).extend(spec.host_ports)
        return out

    # -------------------------------------------------------------- slots

    def _replicated_items(self, r: _ServiceRound, nodes: list[str], unplaced: tuple[int, str],
                          stopped: set[str], stops: list[tuple[str, str]]) -> list[dict]:
        svc = r.service
        occupied = {t.slot for t in r.live if t.id not in stopped} | r.held
        free = [s for s in range(1, svc.spec.replicas + 1) if s not in occupied]
        free.sort(key=lambda s: (s not in r.pending, s not in r.ready, s))
        items = []
        recorded = len(r.pending)
        for i, slot in enumerate(free[:len(nodes) + unplaced[0]]):
            node = nodes[i] if i < len(nodes) else None
            message = "" if node is not None else unplaced[1]
            pending = r.pending.get(slot)
            if node is None and pending is None:
                if recorded >= MAX_PENDING:
                    break  # the rest of the free slots are unplaced too (nodes come first)
                recorded += 1
            restarts: tuple = ()
            if slot in r.ready:
                old, restarts = r.ready[slot]
                stops.append((old.id, "restarted" if old.state not in ("shutdown", "orphaned") else "replaced"))
            if pending is not None and node is None and pending.message == message:
                continue
            items.append(cmd.placement(svc.name, svc.version, slot, node, task=pending and pending.id,
                                       restarts=restarts, message=message))
        used = set(free[:len(nodes) + unplaced[0]])
        stops += [(t.id, "scaled down") for s, t in sorted(r.pending.items()) if s not in used]
        return items

    def _global_items(self, r: _ServiceRound, nodes: list[str], stops: list[tuple[str, str]]) -> list[dict]:
        items = []
        for node in nodes:
            restarts: tuple = ()
            if node in r.ready:
                old, restarts = r.ready[node]
                stops.append((old.id, "restarted"))
            items.append(cmd.placement(r.service.name, r.service.version, 0, node, restarts=restarts))
        return items


def _unique(stops: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """First reason per task, in order."""
    seen: dict[str, str] = {}
    for task, reason in stops:
        seen.setdefault(task, reason)
    return list(seen.items())
