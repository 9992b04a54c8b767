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
   ones; tasks orphaned within ``orphan_grace`` still count toward their spread zone;
4. new tasks get slots (pending ones first, then restarts, then the lowest free
   number); tasks that cannot be placed are recorded as pending with the reason (at most
   ``MAX_PENDING`` per service).

Each service's decisions become ``assign_tasks`` commands of its own (a move is one
decision), split so that each fits one Raft entry (:func:`commands.assign_batches`):
a service too large for one entry converges over several, and a service whose
proposal fails holds up no other.  ``about`` names the service of each command;
``wake_at`` says when a delay ends.

:func:`reconcile` is a full pass: every service planned.  A round may also plan only some
services (:class:`~p2pswarm.scheduler.incremental.Reconciler` picks those whose inputs changed)
with what the others hold on each node (:class:`Held`) reserved, so that the planned ones are
placed as a full pass would place them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import compress, count, filterfalse
from operator import attrgetter, not_
from typing import Iterable, Literal, Mapping, cast

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.model import TERMINAL, Node, Service, Task
from p2pswarm.cluster.spec import RestartPolicy
from p2pswarm.cluster.state import ClusterState, slot_order
from p2pswarm.membership.messages import LIVE
from p2pswarm.scheduler import updates
from p2pswarm.scheduler.placement import Demand, NodeInfo, VerdictMemo, plan

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
    full_every: float = 60.0
    """Seconds between full passes of the incremental reconciler (every service planned whatever changed):
    the safety net for what change tracking does not see (other services' reservations shifting where a
    rebalancing service would spread its tasks, a clock that jumped)."""
    orphan_grace: float = 5.0
    """Seconds a service's task orphaned in a zone (its node declared dead) still counts toward that zone's
    spread, so replacements go to the other zones first: a dark zone's nodes are declared dead one by one
    (SWIM's suspicion timeout is at least 2 x log10(n) x 0.5 s, 5 s at 100,000 members), and a replacement
    sent to one still seen alive would be lost again.  After it, spreading (and rebalancing) may use the zone
    again.  Measured (2,000 nodes, zone-outage): 5 s gave restore p99 10.26 s, 10 s 10.33 s.  0 disables it."""


@dataclass(frozen=True, slots=True)
class Reconciliation:
    commands: tuple[dict, ...]
    wake_at: float | None
    """Reconcile again by then even if nothing changes (a restart or update delay ends)."""
    unplaced: Mapping[str, tuple[int, str]]
    about: tuple[str, ...]
    """Per command, the service it decides about ('' for orphan reports, which must be applied first)."""
    planned: tuple[str, ...] = ()
    """The services this round planned, by name (a full pass: every one)."""


@dataclass(frozen=True, slots=True)
class Held:
    """What the live tasks of the services a round leaves alone hold, per node."""
    tasks: Mapping[str, int] = field(default_factory=dict)
    """Tasks (they count toward a node's load, as spreading sees it)."""
    reserved: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    """cpu and memory."""
    ports: Mapping[str, list[tuple[int, str]]] = field(default_factory=dict)
    """Host ports, once per task holding one."""


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
    """A full pass: every service planned."""
    return Round(state, members, now, term, config).run()


@dataclass
class ServiceRound:
    """What one service needs this round, between the decisions and the slot mapping."""
    service: Service
    live: list[Task]
    """Its live tasks on a node that placement decides about, the ones worth keeping first (running, by slot)."""
    starting: bool
    """Some of ``live`` do not run yet."""
    pending: dict
    ready: dict
    held: set
    stops: list[tuple[str, str]]
    waits: bool
    """A delay (restart or update) ends later: plan the service again then."""
    orphans: Counter[str]
    """Its tasks orphaned within ``orphan_grace``, per zone (value of its spread label)."""


class Round:
    """One round over ``services`` (None: all), with what every other service holds (``held``) reserved.

    After :meth:`run`, ``settled`` holds, per planned service that needs nothing more now (it got no
    command, nothing waits or is unplaced), the tasks per node it keeps: what it holds while it stays
    unchanged."""

    def __init__(self, state: ClusterState, members: Mapping[str, str], now: float, term: int,
                 config: ReconcileConfig, services: Iterable[Service] | None = None, held: Held = Held(),
                 infos: Mapping[str, tuple[Node, str | None, NodeInfo]] | None = None,
                 known: Mapping[str, ServiceRound] | None = None, verdicts: VerdictMemo | None = None) -> None:
        """``infos``: the last round's :attr:`infos`, reused for the nodes whose record did not change;
        ``known``: :attr:`settled_readings` of an earlier round, for services whose record and tasks have not
        changed since; ``verdicts``: kept from round to round by the caller (:func:`placement.plan`)."""
        self.state, self.members, self.now, self.config = state, members, now, config
        self._known_infos = infos or {}
        self.infos: dict[str, tuple[Node, str | None, NodeInfo]] = {}
        """Each up node's record, availability override and what placement made of them."""
        self.services = sorted(state.services.values() if services is None else services, key=lambda s: s.name)
        self.held = held
        self.settled: dict[str, Counter[str]] = {}
        self.settled_readings: dict[str, ServiceRound] = {}
        """The settled services' readings (what :meth:`_decide` made of their tasks)."""
        self._known = known or {}
        self._verdicts = verdicts
        self._undecided: list[Task] = []
        """Live tasks on a node that placement does not decide about: an update's outdated tasks being replaced,
        a service's that rolls back this round."""
        self.basis = (term, state.applied)
        self._ids = map(f"rc.{term}.{state.applied}.".__add__, map(str, count()))
        self.commands: list[dict] = []
        self.about: list[str] = []
        self.wakes: list[float] = []
        self._dying: dict[str, list[Task]] = {}
        """Per service, its tasks this round declares orphaned (they count as orphaned now)."""
        self._zones: dict[tuple[str | None, str], str | None] = {}

    def cid(self) -> str:
        """Deterministic per basis: re-running a round on unchanged state proposes the same ids,
        which the state machine then applies once."""
        return next(self._ids)

    def up(self, node: str | None) -> bool:
        return node is not None and node in self.state.nodes and self.members.get(node) in LIVE

    def run(self) -> Reconciliation:
        self._orphan()
        rounds = [r for r in map(self._decide, self.services) if r]
        nodes = [self._info(n) for n in self.state.nodes.values() if self.up(n.id)]
        demands = [self._demand(r) for r in rounds]
        stopping = {task for r in rounds for task, _ in r.stops}
        result = plan(nodes, demands, max_moves=self.config.max_moves, reserved=self._reserved(),
                      held_ports=self._held_ports(stopping), held_tasks=self.held.tasks, verdicts=self._verdicts)
        placed: dict[str, list[str]] = {r.service.name: [] for r in rounds}
        for service, node in result.place:
            placed[service].append(node)
        moved: dict[str, list[tuple[str, str]]] = {}
        for task, reason in result.stop:
            moved.setdefault(self.state.tasks[task].service, []).append((task, reason))
        for r in rounds:
            name = r.service.name
            stops = moved.get(name, []) + r.stops
            if r.service.spec.mode == "global":
                items = self._global_items(r, placed[name], stops)
            else:
                items = self._replicated_items(r, placed[name], result.unplaced.get(name, (0, "")),
                                               moved.get(name, []), stops)
            for command in cmd.assign_batches(self.cid, self.now, self.basis, items, _unique(stops)):
                self._emit(command, name)
        self._settle(rounds, result.unplaced, result.moves)
        return Reconciliation(tuple(self.commands), min(self.wakes, default=None), result.unplaced,
                              tuple(self.about), tuple(s.name for s in self.services))

    def _settle(self, rounds: list[ServiceRound], unplaced: Mapping[str, tuple[int, str]], moves: int) -> None:
        """Note the planned services that are settled, and what they hold."""
        about = set(self.about)
        exhausted = 0 < self.config.max_moves <= moves  # a rebalancing service after the last move was not looked at
        for r in rounds:
            name = r.service.name
            if not (name in about or name in unplaced or r.pending or r.ready or r.waits
                    or r.service.update_state in updates.ACTIVE or (exhausted and r.service.spec.rebalance)):
                self.settled[name] = Counter(map(_NODE, r.live))
                self.settled_readings[name] = r

    def _info(self, node: Node) -> NodeInfo:
        """The node as placement sees it: a suspect node is paused (it keeps its tasks, gets no new one)."""
        override = "pause" if self.members.get(node.id) == "suspect" and node.availability == "active" else None
        known = self._known_infos.get(node.id)
        if known is None or known[0] is not node or known[1] != override:
            known = (node, override, NodeInfo.of(node, override))
        self.infos[node.id] = known
        return known[2]

    def _emit(self, command: dict, service: str = "") -> None:
        self.commands.append(command)
        self.about.append(service)

    # -------------------------------------------------------------- decisions

    def _orphan(self) -> None:
        gone = [task for node, status in self.members.items() if status in GONE
                for task in self.state.tasks_on(node, ordered=False) if task.state not in TERMINAL]
        report = cmd.task_report("", "orphaned", node=None)  # the same but for two fields
        reports = [dict(report, task=task.id, error=f"node {task.node} is down") for task in sorted(gone, key=_ID)]
        for command in cmd.report_batches(self.cid, self.now, reports):
            self._emit(command)
        for task in gone:
            self._dying.setdefault(task.service, []).append(task)

    def _decide(self, svc: Service) -> ServiceRound | None:
        known = self._known.get(svc.name)
        if known is not None:
            return self._decide_known(svc, known)
        tasks = self.state.tasks_of(svc.name, ordered=svc.update_state in updates.ACTIVE)  # only updates need it
        waits = len(self.wakes)
        step = updates.step(svc, tasks, self.now, self.up)
        if step.wake_at is not None:
            self.wakes.append(step.wake_at)
        if step.rollback:
            self._emit(cmd.rollback_service(self.cid(), self.now, svc.name, self.basis, step.message), svc.name)
            self._undecided += [t for t in tasks if t.live and t.node is not None]
            return None  # the service changes: plan it next round, on the rolled back spec
        if step.new_state is not None:
            self._emit(cmd.set_update_state(self.cid(), self.now, svc.name, svc.version, step.new_state,
                                            step.message, self.basis), svc.name)
        replaced = set(step.replace)
        # most tasks run and stay: picked out in one quick pass, the few others one by one
        running = [t for t in tasks if t.state == "running" and t.desired == "running" and t.id not in replaced]
        starting, unplaced, ended = [], [], []
        orphans = self._new_orphans(svc)
        for t in tasks if len(running) < len(tasks) else ():
            if t.state == "orphaned":
                self._count_orphan(svc, t, orphans)
            if t.desired != "running" or (t.state == "running" and t.id not in replaced):
                continue
            if t.state in TERMINAL:
                ended.append(t)
            elif t.node is None:
                unplaced.append(t)
            elif t.id in replaced:
                self._undecided.append(t)
            else:
                starting.append(t)  # on its node, not running yet
        live = sorted(running, key=_SLOT_ID) + sorted(starting, key=_SLOT_ID)
        live_keys = set(map(_SLOT, live)) if svc.spec.mode == "replicated" else set(map(_NODE, live))
        pending = {t.slot_key: t for t in sorted(unplaced, key=slot_order)}
        ready, held, stops = {}, set(), list(step.stop)
        live = self._without_dying(svc, live, stops)
        for task in sorted(ended, key=slot_order):  # newest first within a slot: the first seen is the latest
            key = task.slot_key
            if key in live_keys or key in pending or key in ready or key in held:
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
        return ServiceRound(svc, live, bool(starting), pending, ready, held, stops, len(self.wakes) > waits, orphans)

    def _decide_known(self, svc: Service, known: ServiceRound) -> ServiceRound:
        """:meth:`_decide` for a service settled last round whose record and tasks have not changed since: the
        same reading (nothing in it depends on the time), less the tasks this round orphans."""
        waits = len(self.wakes)
        orphans = self._new_orphans(svc)
        stops: list[tuple[str, str]] = []
        live = self._without_dying(svc, known.live, stops)
        return ServiceRound(svc, live, known.starting, {}, {}, known.held, stops, len(self.wakes) > waits, orphans)

    def _new_orphans(self, svc: Service) -> Counter[str]:
        """The tasks this round orphans, per zone of ``svc``'s spread label (all within the grace)."""
        orphans: Counter[str] = Counter()
        label = svc.spec.spread_label
        if label is not None and self.config.orphan_grace > 0:
            zones = [self._zone(t.node, label) for t in self._dying.get(svc.name, ())]
            orphans.update(z for z in zones if z is not None)
            if orphans:
                self.wakes.append(self.now + self.config.orphan_grace)
        return orphans

    def _without_dying(self, svc: Service, live: list[Task], stops: list[tuple[str, str]]) -> list[Task]:
        """``live`` less the tasks this round orphans, whose stops go first in ``stops``: stopped here, not by
        placement, which would look at every task to find them on no up node."""
        dying = {t.id for t in self._dying.get(svc.name, ())}
        if not dying:
            return live
        lost = list(map(dying.__contains__, map(_ID, live)))
        stops[:0] = [(t.id, f"node {t.node} is down") for t in compress(live, lost)]
        return list(compress(live, map(not_, lost)))

    def _zone(self, node: str | None, label: str) -> str | None:
        """``node``'s value of ``label`` (None: no such node or label), once per round."""
        key = (node, label)
        if key not in self._zones:
            record = self.state.nodes.get(node or "")
            self._zones[key] = None if record is None else record.label_map.get(label)
        return self._zones[key]

    def _count_orphan(self, svc: Service, task: Task, orphans: Counter[str]) -> None:
        """Count ``task`` toward its zone while the grace runs (and plan the service again when it ends)."""
        label, node = svc.spec.spread_label, self.state.nodes.get(task.node or "")
        orphaned_at = self.now if task.state != "orphaned" else \
            task.finished_at if task.finished_at is not None else task.updated_at
        ends = orphaned_at + self.config.orphan_grace
        if label is None or node is None or not self.now < ends:
            return
        zone = node.label_map.get(label)
        if zone is not None:
            orphans[zone] += 1
            self.wakes.append(ends)

    def _demand(self, r: ServiceRound) -> Demand:
        spec = r.service.spec
        placed = tuple(zip(map(_ID, r.live), map(_NODE, r.live)))
        if spec.mode == "global":
            return Demand(spec, placed, hold=frozenset(r.held))
        want = spec.replicas - len(r.held)
        # Only a calm service is rebalanced: a move starts a task of the current spec, which must
        # not sneak a paused update forward or stir a service whose tasks keep failing or whose nodes died.
        # while orphans count toward their zone the even target is not the plain one: rebalance after the grace
        rebalance = (spec.rebalance and not r.orphans and r.service.update_state not in updates.ACTIVE
                     and not r.pending and not r.ready and not r.held and len(r.live) == want and not r.starting
                     and all(map("alive".__eq__, map(self.members.get, set(map(_NODE, r.live)))))
                     and not any(updates.outdated_version(r.service, v) for v in set(map(_VERSION, r.live))))
        return Demand(spec, placed, want, rebalance=rebalance, orphans=dict(r.orphans))

    def _reserved(self) -> dict[str, tuple[float, int]]:
        """cpu and memory held by live tasks placement is not deciding about (start-first overlaps, the
        services this round leaves alone)."""
        out: dict[str, tuple[float, int]] = dict(self.held.reserved)
        for task in self._undecided:
            spec = self.state.spec_of(task)
            if spec is not None and task.node is not None:
                cpu, mem = out.get(task.node, (0.0, 0))
                out[task.node] = (cpu + spec.reserve_cpu, mem + spec.reserve_memory)
        return out

    def _held_ports(self, stopping: set[str]) -> dict[str, list[tuple[int, str]]]:
        """Host ports held by live tasks placement is not deciding about, except those this round stops
        (a stop-first update frees its task's port for the replacement, which the node starts once it is free)."""
        out: dict[str, list[tuple[int, str]]] = {node: list(ports) for node, ports in self.held.ports.items()}
        for task in self._undecided:
            if task.node is not None and task.id not in stopping:
                spec = self.state.spec_of(task)
                if spec is not None and spec.host_ports:
                    out.setdefault(task.node, []).extend(spec.host_ports)
        return out

    # -------------------------------------------------------------- slots

    def _replicated_items(self, r: ServiceRound, nodes: list[str], unplaced: tuple[int, str],
                          moved: list[tuple[str, str]], stops: list[tuple[str, str]]) -> list[dict]:
        """``moved``: the service's tasks placement stops (their slots free up unless another live task holds it)."""
        svc = r.service
        occupied = set(map(_SLOT, r.live))
        if moved:
            holders = Counter(map(_SLOT, r.live))
            for task, _ in moved:
                slot = self.state.tasks[task].slot
                holders[slot] -= 1
                if not holders[slot]:
                    occupied.discard(slot)
        occupied |= r.held
        free = list(filterfalse(occupied.__contains__, range(1, svc.spec.replicas + 1)))
        if r.pending or r.ready:
            free.sort(key=lambda s: (s not in r.pending, s not in r.ready, s))
        if not (r.pending or r.ready or unplaced[0]):  # the usual case: new tasks for free slots, nothing else
            return cmd.new_placements(svc.name, svc.version, free, nodes)
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

    def _global_items(self, r: ServiceRound, nodes: list[str], stops: list[tuple[str, str]]) -> list[dict]:
        items = []
        for node in nodes:
            restarts: tuple = ()
            if node in r.ready:
                old, restarts = r.ready[node]
                stops.append((old.id, "restarted"))
            items.append(cmd.placement(r.service.name, r.service.version, 0, node, restarts=restarts))
        return items


_ID, _NODE, _SLOT, _SLOT_ID, _VERSION = (attrgetter("id"), attrgetter("node"), attrgetter("slot"),
                                         attrgetter("slot", "id"), attrgetter("version"))


def _unique(stops: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """First reason per task, in order."""
    seen: dict[str, str] = {}
    for task, reason in stops:
        seen.setdefault(task, reason)
    return list(seen.items())
