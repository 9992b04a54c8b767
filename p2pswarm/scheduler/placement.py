"""Placement: which node runs each task, for every service at once.

Per service (in name order, resources consumed as we go):

1. *Eligibility.*  A task may stay on a node that is up, not drained, satisfies the
   constraints and has what the task needs (:func:`lacks`: a container engine for an image,
   task isolation for a process with limits or another user; unknown counts as missing); a
   new task also needs the node ``active`` and room for its reservation:
   ``room = min(⌊free cpu / reserved cpu⌋, ⌊free memory / reserved memory⌋)``, and none of its
   host ports (:attr:`ServiceSpec.host_ports`) taken there, which makes the room at most 1.
   Tasks on other nodes are stopped (they move), and so is a kept task whose host port an
   earlier kept task of the node holds.
2. *Allocation.*  The min-cost flow of :mod:`flow` (stable mode): tasks already running
   cost nothing to keep, new ones spread evenly over zones then nodes.  Replicated
   services only; a global service gets one task on every eligible node.
3. *Rebalancing* (optional per service, bounded by ``max_moves`` per plan overall):
   the flow in spread mode gives the even target; tasks move one at a time from the
   node most above its target to the node most below it.  Docker Swarm never does this.

Tasks that cannot be placed are counted with one line saying why, for ``service ps``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import repeat
from operator import add, attrgetter, itemgetter, mul
from typing import Iterable, Mapping, Sequence, cast

from p2pswarm.cluster.capabilities import can_isolate, has_engine
from p2pswarm.cluster.model import Node
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.scheduler.flow import level_one, solve_columns


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node that is up (alive or suspect), as placement needs it."""
    id: str
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    availability: str = "active"
    cpu: float | None = None
    memory: int | None = None
    engine: str | None = None
    isolation: str | None = None
    """Capability kinds (:mod:`p2pswarm.cluster.capabilities`; None = not reported)."""

    @classmethod
    def of(cls, node: Node, availability: str | None = None) -> "NodeInfo":
        return cls(node.id, node.name, node.label_map, availability or node.availability, node.cpu, node.memory,
                   node.engine, node.isolation)

    def satisfies(self, spec: ServiceSpec) -> bool:
        return all(c.matches(self.id, self.name, self.labels, self.engine, self.isolation) for c in spec.constraints)


NEEDS = {"engine": ("a container engine (node.engine==docker)", "has a container engine (node.engine==docker)"),
         "isolation": ("task isolation (node.isolation!=none)",
                       "can isolate tasks (node.isolation!=none), which limits and --user need")}
"""What a node may lack: (as a node lacks it, as no node has it)."""


def lacks(node: NodeInfo, spec: ServiceSpec) -> str | None:
    """The capability (a key of NEEDS) ``node`` lacks to run tasks of ``spec``, or None."""
    if spec.image is not None:
        return None if has_engine(node.engine) else "engine"
    if (spec.limited or spec.user is not None) and not can_isolate(node.isolation):
        return "isolation"
    return None


def fit_key(spec: ServiceSpec) -> tuple:
    """What decides which nodes may run tasks of ``spec``: services alike in it share one eligibility check."""
    return spec.constraints, spec.image is not None, spec.limited or spec.user is not None


VerdictMemo = dict[tuple, dict[str, tuple[NodeInfo, "str | None"]]]
"""Per kind of service (:func:`fit_key`), each node's :meth:`_Planner.why_not_here` answer and the NodeInfo it was
for: a constraint is checked on every node for every plan, and a leader's plans mostly see the same nodes."""


@dataclass(frozen=True, slots=True)
class Demand:
    spec: ServiceSpec
    tasks: tuple[tuple[str, str], ...] = ()
    """``(task id, node)`` of the live tasks placement decides about, most worth keeping first."""
    replicas: int | None = None
    """Tasks wanted; None = ``spec.replicas`` (fewer when some slots wait for a restart delay)."""
    rebalance: bool = False
    """May move tasks toward an even spread this round (the service opted in and has converged)."""
    hold: frozenset[str] = frozenset()
    """Global services: nodes that get no new task now (one waits for its restart delay, or ended)."""
    orphans: Mapping[str, int] = field(default_factory=dict)
    """Spread zone -> tasks recently orphaned there, which still count toward the zone's spread (the
    reconciler's ``orphan_grace``): replacements go to the other zones first."""


@dataclass(frozen=True, slots=True)
class Plan:
    place: tuple[tuple[str, str], ...]
    """``(service, node)``: one new task each."""
    stop: tuple[tuple[str, str], ...]
    """``(task id, reason)``."""
    unplaced: Mapping[str, tuple[int, str]]
    """service -> (tasks that could not be placed, why)."""
    moves: int = 0
    """Rebalancing moves in this plan (each is one stop plus one placement)."""


def plan(nodes: Sequence[NodeInfo], demands: Iterable[Demand], *, max_moves: int = 0,
         reserved: Mapping[str, tuple[float, int]] | None = None,
         held_ports: Mapping[str, Iterable[tuple[int, str]]] | None = None,
         held_tasks: Mapping[str, int] | None = None, verdicts: VerdictMemo | None = None) -> Plan:
    """Plan every service; ``reserved`` is cpu and memory held on a node by tasks not in ``demands``,
    ``held_ports`` the host ports (port, protocol) they hold, ``held_tasks`` how many of them count toward
    a node's load (the services an incremental reconcile leaves alone: spreading sees them as a full plan would).
    ``verdicts``: kept between plans by the caller, which passes the same NodeInfo objects for unchanged nodes."""
    return _Planner(nodes, list(demands), max_moves, reserved or {}, held_ports or {}, held_tasks or {},
                    verdicts).run()


class _Planner:
    def __init__(self, nodes: Sequence[NodeInfo], demands: list[Demand], max_moves: int,
                 reserved: Mapping[str, tuple[float, int]], held_ports: Mapping[str, Iterable[tuple[int, str]]],
                 held_tasks: Mapping[str, int], memo: VerdictMemo | None = None) -> None:
        self.nodes = {n.id: n for n in sorted(nodes, key=attrgetter("id"))}
        self._memo = memo
        self.demands = sorted(demands, key=lambda d: d.spec.name)
        self.budget = max_moves
        self.free: dict[str, list[float]] = {}
        for n in self.nodes.values():
            cpu, mem = reserved.get(n.id, (0.0, 0))
            self.free[n.id] = [math.inf if n.cpu is None else n.cpu - cpu,
                               math.inf if n.memory is None else n.memory - mem]
        self._per_task = max(1, len(self.nodes))
        self.load = {n: held_tasks.get(n, 0) * self._per_task + rank for rank, n in enumerate(self.nodes)}
        """Tasks on each node, as one int that sorts in (tasks, id) order: tasks x nodes + its rank by id."""
        self._by_load: dict[tuple, list[str]] = {}
        self.ports: dict[str, Counter[tuple[int, str]]] = defaultdict(Counter, {
            n: Counter(ports) for n, ports in held_ports.items() if n in self.nodes})
        """Tasks holding each host port of a node."""
        self._host_ports: dict[int, tuple[tuple[int, str], ...]] = {}
        self._eligible: dict[tuple, tuple[list[str], set[str]]] = {}
        self._verdicts: dict[tuple, dict[str, str | None]] = {}
        self._zones: dict[str, dict[str, str | None]] = {}
        self._zone_sets: dict[tuple, set[str | None]] = {}
        self._room_cache: dict[tuple, tuple[dict[str, int], int]] = {}
        self._changed: list[str] = []
        """Nodes whose free cpu or memory changed, in order (:meth:`rooms` catches up from where it was)."""
        self._on = [Counter(map(itemgetter(1), d.tasks)) for d in self.demands]
        """Per demand, its tasks per node."""
        self._fits: dict[tuple, set[str]] = {}
        for d, on in zip(self.demands, self._on):
            self._take_all(d.spec, on)
        self.place: list[tuple[str, str]] = []
        self.stop: list[tuple[str, str]] = []
        self.unplaced: dict[str, tuple[int, str]] = {}
        self.moves = 0

    def _take(self, node: str, spec: ServiceSpec, count: int) -> None:
        free = self.free.get(node)
        if free is not None:
            if spec.reserve_cpu or spec.reserve_memory:
                self._changed.append(node)
            for _ in range(abs(count)) if spec.reserve_cpu else ():  # one task at a time, as always (floats)
                free[0] -= spec.reserve_cpu if count > 0 else -spec.reserve_cpu
            free[1] -= spec.reserve_memory * count
            self.load[node] += count * self._per_task
            for port in self.host_ports(spec):
                self.ports[node][port] += count

    def _take_all(self, spec: ServiceSpec, tasks: Mapping[str, int]) -> None:
        """:meth:`_take` for ``tasks`` per node, in one pass (every running task of a large cluster)."""
        if self.host_ports(spec):
            for node, count in tasks.items():
                self._take(node, spec, count)
            return
        free, load, cpu, memory = self.free, self.load, spec.reserve_cpu, spec.reserve_memory
        if not (cpu or memory):  # only the load changes: in C-level steps (every task of a large cluster)
            here = list(tasks.keys() & free.keys())
            added = map(mul, map(tasks.__getitem__, here), repeat(self._per_task))
            load.update(zip(here, map(add, map(load.__getitem__, here), added)))
            return
        self._changed.extend(tasks)
        for node, count in tasks.items():
            if node in free:
                held = free[node]
                for _ in range(count) if cpu else ():  # one task at a time, as always (floats)
                    held[0] -= cpu
                held[1] -= memory * count
                load[node] += count * self._per_task

    def host_ports(self, spec: ServiceSpec) -> tuple[tuple[int, str], ...]:
        """``spec.host_ports``, worked out once per service (the planner asks per task)."""
        ports = self._host_ports.get(id(spec))
        if ports is None:
            ports = self._host_ports[id(spec)] = spec.host_ports
        return ports

    def eligible(self, spec: ServiceSpec) -> tuple[list[str], set[str]]:
        """The nodes a new task of ``spec`` may go to (ids in order, and as a set), once per kind of service."""
        key = fit_key(spec)
        found = self._eligible.get(key)
        if found is None:
            verdicts = self.verdicts(spec)
            if self.nodes.keys() - verdicts.keys():  # (a kind that asks only for an active node has them all)
                memo = self._memo if self._memo is not None else {}
                known, fresh = memo.get(key, {}), False
                for n, info in self.nodes.items():
                    if n not in verdicts:
                        hit = known.get(n)
                        if hit is not None and hit[0] is info:
                            verdicts[n] = hit[1]
                        else:
                            verdicts[n], fresh = self.why_not_here(n, spec), True
                if fresh:
                    memo[key] = {n: (info, verdicts[n]) for n, info in self.nodes.items()}
            ids = [n.id for n in self.nodes.values() if n.availability == "active" and verdicts[n.id] is None]
            found = self._eligible[key] = (ids, set(ids))
        return found

    def fits(self, spec: ServiceSpec) -> set[str]:
        """The up nodes where tasks of ``spec`` may stay (:meth:`why_not_here` has no objection), once per kind."""
        key = fit_key(spec)
        found = self._fits.get(key)
        if found is None:
            self.eligible(spec)  # every node's verdict, worked out
            found = self._fits[key] = {n for n, why in self.verdicts(spec).items() if why is None}
        return found

    def by_load(self, spec: ServiceSpec) -> list[str]:
        """:meth:`eligible` nodes least loaded first (ties by id).  One list per kind of service, sorted again
        each time: after a service placed its tasks, few loads changed, and sorting an almost sorted list is a
        pass over it, not a sort (thousands of nodes, a hundred services).  Valid until the next call."""
        key = fit_key(spec)
        order = self._by_load.get(key)
        if order is None:
            order = self._by_load[key] = list(self.eligible(spec)[0])
        order.sort(key=self.load.__getitem__)
        return order

    def verdict(self, node: str, spec: ServiceSpec) -> str | None:
        """:meth:`why_not_here`, remembered per node and kind of service."""
        verdicts = self.verdicts(spec)
        if node not in verdicts:
            verdicts[node] = self.why_not_here(node, spec)
        return verdicts[node]

    def verdicts(self, spec: ServiceSpec) -> dict[str, str | None]:
        """The :meth:`why_not_here` answers known so far for services of this kind, by node."""
        key = fit_key(spec)
        found = self._verdicts.get(key)
        if found is None:
            found = self._verdicts[key] = {}
            if key == (tuple(), False, False):  # nothing asked of a node but being up and not drained
                found.update((n.id, f"node {n.id} is drained" if n.availability == "drain" else None)
                             for n in self.nodes.values())
        return found

    def zones_of(self, spec: ServiceSpec) -> set[str | None]:
        """The values of ``spec``'s spread label among the nodes eligible for it, once per kind of service."""
        key = (fit_key(spec), spec.spread_label)
        found = self._zone_sets.get(key)
        if found is None:
            zone = self.zones(cast(str, spec.spread_label))
            found = self._zone_sets[key] = set(map(zone.get, self.eligible(spec)[0]))
        return found

    def zones(self, label: str) -> dict[str, str | None]:
        """Each node's value of the spread label ``label`` (None: it lacks it)."""
        if label not in self._zones:
            self._zones[label] = {n.id: n.labels.get(label) for n in self.nodes.values()}
        return self._zones[label]

    def taken(self, node: str, spec: ServiceSpec) -> list[tuple[int, str]]:
        """The host ports of ``spec`` some task already holds on ``node``."""
        held = self.ports[node]
        return [p for p in self.host_ports(spec) if held[p] > 0]

    def room(self, node: str, spec: ServiceSpec) -> int | float:
        cpu, mem = self.free[node]
        fits = [math.inf]  # a node that does not report cpu or memory is not limited by it
        if spec.reserve_cpu > 0 and cpu != math.inf:
            fits.append(max(0, math.floor(cpu / spec.reserve_cpu + 1e-9)))
        if spec.reserve_memory > 0 and mem != math.inf:
            fits.append(max(0, int(mem // spec.reserve_memory)))
        if self.host_ports(spec):
            fits.append(0 if self.taken(node, spec) else 1)
        return min(fits)

    def rooms(self, nodes: list[str], spec: ServiceSpec) -> dict[str, int]:
        """:meth:`room` of each of ``nodes`` (the same for every call of a kind of service), bounded by
        :data:`ROOMY` only.  Remembered per kind of reservation: the next service alike recomputes only the
        nodes whose free cpu or memory changed since.  Do not change the answer; copy it."""
        if self.host_ports(spec):  # held ports change with every placement of any service
            return self._rooms(nodes, spec)
        key = (fit_key(spec), spec.reserve_cpu, spec.reserve_memory)
        cached = self._room_cache.get(key)
        if cached is None:
            rooms = self._rooms(nodes, spec)
        else:
            rooms, seen = cached
            rooms.update(self._rooms([n for n in set(self._changed[seen:]) if n in rooms], spec))
        self._room_cache[key] = (rooms, len(self._changed))
        return rooms

    def _rooms(self, nodes: list[str], spec: ServiceSpec) -> dict[str, int]:
        cpu_each, memory_each, ports, free = spec.reserve_cpu, spec.reserve_memory, self.host_ports(spec), self.free
        fits = [ROOMY] * len(nodes)
        if cpu_each > 0:
            cpus = [free[n][0] for n in nodes]
            fits = [f if c == math.inf else min(f, max(0, math.floor(c / cpu_each + 1e-9))) for f, c in zip(fits, cpus)]
        if memory_each > 0:
            mems = [free[n][1] for n in nodes]
            fits = [f if m == math.inf else min(f, max(0, int(m // memory_each))) for f, m in zip(fits, mems)]
        if ports:
            fits = [0 if self.taken(n, spec) else min(f, 1) for f, n in zip(fits, nodes)]
        return dict(zip(nodes, fits))

    def why_not_here(self, node: str, spec: ServiceSpec) -> str | None:
        """Why a task of ``spec`` may not stay on ``node`` (None: it may)."""
        info = self.nodes.get(node)
        if info is None:
            return f"node {node} is down"
        if info.availability == "drain":
            return f"node {node} is drained"
        for c in spec.constraints:
            if not c.matches(info.id, info.name, info.labels, info.engine, info.isolation):
                return f"node {node} does not satisfy {c}"
        lack = lacks(info, spec)
        return None if lack is None else f"node {node} lacks {NEEDS[lack][0]}"

    def run(self) -> Plan:
        holders: dict[str, Counter[tuple[int, str]]] = {}  # host ports of the tasks kept so far, per node
        # first free what must move anyway, so every service can use it
        kept = {d.spec.name: self._keep(d, on, holders) for d, on in zip(self.demands, self._on)}
        for d in self.demands:
            if d.spec.mode == "global":
                self._global(d, kept[d.spec.name])
            else:
                self._replicated(d, kept[d.spec.name])
        return Plan(tuple(self.place), tuple(self.stop), self.unplaced, self.moves)

    def _keep(self, d: Demand, on: Counter[str], holders: dict[str, Counter[tuple[int, str]]]) -> _Kept:
        """Which of ``d``'s tasks stay; the others are stopped (their node is down or no longer eligible for
        them, or a task kept before holds their host port)."""
        if self.host_ports(d.spec):  # task by task: who keeps a port depends on who came first
            mine: dict[str, list[str]] = {}
            for task, node in d.tasks:
                reason = self.verdict(node, d.spec) or self._port_clash(holders, node, d.spec)
                if reason is None:
                    mine.setdefault(node, []).append(task)
                else:
                    self.stop.append((task, reason))
                    self._take(node, d.spec, -1)
            return _Kept({node: len(tasks) for node, tasks in mine.items()}, (), mine)
        leave = on.keys() - self.fits(d.spec)  # nodes, not tasks: a service keeps tens of thousands
        if not leave:
            return _Kept(on, d.tasks)
        why = {node: cast(str, self.verdict(node, d.spec)) for node in leave}
        self.stop += [(task, why[node]) for task, node in d.tasks if node in why]
        for node in leave:
            self._take(node, d.spec, -on[node])
        return _Kept({node: n for node, n in on.items() if node not in leave}, d.tasks)

    def _port_clash(self, holders: dict[str, Counter[tuple[int, str]]], node: str, spec: ServiceSpec) -> str | None:
        """Why a kept task of ``spec`` on ``node`` cannot stay there: a task kept before it holds its host port."""
        ports = self.host_ports(spec)
        if not ports:
            return None
        held = holders.setdefault(node, Counter())
        clash = [p for p in ports if held[p]]
        if clash:
            return f"{ports_text(clash)} is taken on node {node}"
        held.update(ports)
        return None

    def _new_ok(self, node: NodeInfo, spec: ServiceSpec) -> bool:
        return node.id in self.eligible(spec)[1]

    # -------------------------------------------------------------- replicated

    def _replicated(self, d: Demand, kept: _Kept) -> None:
        spec, want = d.spec, spec_replicas(d)
        label = spec.spread_label
        ids, open_ = self.eligible(spec)
        stuck = list(kept.counts.keys() - open_)  # may keep their tasks, get no new one (paused, say)
        order = sorted(ids + stuck, key=self.load.__getitem__) if stuck else self.by_load(spec)
        reserves = spec.reserve_cpu > 0 or spec.reserve_memory > 0 or bool(self.host_ports(spec))
        room: dict[str, int] | int = want
        if reserves or stuck:
            room = self.rooms(ids, spec) if reserves else dict.fromkeys(ids, want)
            if stuck:
                room = {**room, **dict.fromkeys(stuck, 0)}
        keep = kept.counts
        zone = self.zones(label) if label else None
        fast = level_one(order, want, keep=keep, room=room, zone=zone, zones=self.zones_of(spec) if zone else (),
                         orphans=d.orphans)
        if fast is not None:
            counts, missing = fast, 0
        else:  # orphans weigh on their zone's spread and send ties elsewhere (network simplex would ignore that)
            counts, missing, _ = solve_columns(order, want, keep=keep, room=room, zone=zone, orphans=d.orphans)
        if d.rebalance and self.budget > 0 and not missing:
            counts = self._rebalance(d, order, room, zone, counts, kept)
        surplus_reason = "scaled down" if sum(keep.values()) > want else "rebalanced"
        added: dict[str, int] = {}
        for node in sorted(n for n, c in counts.items() if c != keep.get(n, 0)):  # the nodes that change
            here = keep.get(node, 0)
            for task in kept.on(node)[counts[node]:] if counts[node] < here else ():
                self.stop.append((task, surplus_reason))
                self._take(node, spec, -1)
            new = counts[node] - here
            if new > 0:
                self.place.extend([(spec.name, node)] * new)
                added[node] = new
        self._take_all(spec, added)
        if missing:
            self.unplaced[spec.name] = (missing, self.explain(spec))

    def _rebalance(self, d: Demand, order: list[str], room: dict[str, int] | int, zone: Mapping[str, str | None] | None,
                   planned: dict[str, int], kept: _Kept) -> dict[str, int]:
        """Move kept tasks toward the spread-mode target, at most ``self.budget`` of them: the tasks per node
        after, over the nodes that hold some or have room (in columns: a rebalancing service is planned again
        whenever a node joins, over every node)."""
        want, keep = spec_replicas(d), kept.counts
        if isinstance(room, int):
            nodes = order if room else [n for n in order if keep.get(n)]
            rooms: dict[str, int] | int = room
        else:
            rooms = {n: min(room[n], want) for n in order}
            nodes = [n for n in order if keep.get(n) or rooms[n]]
        counts = {n: planned.get(n, keep.get(n, 0)) for n in nodes}
        target = {n: min(keep.get(n, 0), counts[n]) for n in nodes}
        moved, _, _ = solve_columns(nodes, want, keep={n: k for n, k in target.items() if k}, room=rooms,
                                    zone=zone if d.spec.spread_label is not None else None, stable=False)
        target.update(moved)
        while self.budget > 0:
            over = [(counts[n] - target[n], n) for n in counts if counts[n] > target[n]]
            under = [(target[n] - counts[n], n) for n in counts if counts[n] < target[n]]
            if not over or not under:
                break
            source, dest = max(over)[1], max(under)[1]
            if counts[source] <= keep.get(source, 0):  # a running task moves (else a new one goes elsewhere)
                self.budget -= 1
                self.moves += 1
            counts[source] -= 1
            counts[dest] += 1
        return counts

    # -------------------------------------------------------------- global

    def _global(self, d: Demand, kept: _Kept) -> None:
        spec, missing, short = d.spec, 0, []
        for node in self.nodes.values():
            here = kept.counts.get(node.id, 0)
            for task in kept.on(node.id)[1:] if here > 1 else ():
                self.stop.append((task, "one task per node"))
                self._take(node.id, spec, -1)
            if here or node.id in d.hold or not self._new_ok(node, spec):
                continue
            if self.room(node.id, spec) >= 1:
                self.place.append((spec.name, node.id))
                self._take(node.id, spec, +1)
            else:
                missing += 1
                short.append(node.id)
        if missing:
            self.unplaced[spec.name] = (missing, self.explain(spec, short))

    # -------------------------------------------------------------- explanations

    def explain(self, spec: ServiceSpec, candidates: Sequence[str] | None = None) -> str:
        """One line: why no (further) task of ``spec`` fits anywhere."""
        if not self.nodes:
            return "no node is up"
        active = [n for n in self.nodes.values() if n.availability == "active"]
        if not active:
            states = sorted({PAST[n.availability] for n in self.nodes.values()})
            return f"no active node (all {len(self.nodes)} up nodes are {' or '.join(states)})"
        for c in spec.constraints:
            if not any(c.matches(n.id, n.name, n.labels, n.engine, n.isolation) for n in active):
                return f"no node satisfies {c}"
        for need, (_, phrase) in NEEDS.items():
            if all(lacks(n, spec) == need for n in active):
                return f"no node {phrase}"
        eligible = [n.id for n in active if self._new_ok(n, spec)] if candidates is None else list(candidates)
        if not eligible:
            needs = [f"{c}" for c in spec.constraints] + [NEEDS[k][0] for k in NEEDS
                                                           if any(lacks(n, spec) == k for n in active)]
            return "no node satisfies all of " + ", ".join(needs)
        port_short = {n: taken for n in eligible if (taken := self.taken(n, spec))}
        if len(port_short) == len(eligible):
            ports = sorted({p for held in port_short.values() for p in held})
            where = "every eligible node" if candidates is None else _scope(eligible, True)
            return f"{ports_text(ports)} {'is' if len(ports) == 1 else 'are'} taken on {where}"
        rest = [n for n in eligible if n not in port_short]
        cpu_short = [n for n in rest if spec.reserve_cpu > self.free[n][0] + 1e-9]
        mem_short = [n for n in rest if spec.reserve_memory > self.free[n][1]]
        what = ("cpu and memory" if len(cpu_short) == len(mem_short) == len(rest) else
                "memory" if len(mem_short) == len(rest) else
                "cpu" if len(cpu_short) == len(rest) else "cpu or memory")
        if port_short:
            return f"insufficient {what} on {_scope(rest, True)}, host ports taken on the other {len(port_short)}"
        return f"insufficient {what} on {_scope(rest, candidates is not None)}"


class _Kept:
    """One service's tasks that stay where they are: how many per node, and which ones (:meth:`on`), worked
    out only when some node has to give some up (a plan keeps tens of thousands and moves a few)."""
    __slots__ = ("counts", "_tasks", "_by_node")

    def __init__(self, counts: Mapping[str, int], tasks: Sequence[tuple[str, str]],
                 by_node: dict[str, list[str]] | None = None) -> None:
        self.counts = counts
        self._tasks = tasks
        self._by_node = by_node

    def on(self, node: str) -> list[str]:
        """The tasks kept on ``node``, most worth keeping first."""
        if self._by_node is None:
            self._by_node = {}
            for task, where in self._tasks:
                if where in self.counts:
                    self._by_node.setdefault(where, []).append(task)
        return self._by_node.get(node, [])


def _scope(nodes: Sequence[str], listed: bool) -> str:
    if not listed:
        return f"all {len(nodes)} eligible nodes"
    return f"{len(nodes)} eligible node{'s' if len(nodes) > 1 else ''} ({', '.join(nodes[:5])})"


def ports_text(ports: Sequence[tuple[int, str]]) -> str:
    """``host port 8000`` / ``host ports 53/udp, 8000``."""
    shown = [f"{port}/udp" if protocol == "udp" else str(port) for port, protocol in ports]
    return f"host port{'s' if len(shown) > 1 else ''} {', '.join(shown)}"


PAST = {"pause": "paused", "drain": "drained", "active": "active"}
ROOMY = 1 << 62
"""Room of a node no reservation limits (the flow caps every node at the service's replicas anyway)."""


def spec_replicas(d: Demand) -> int:
    return d.spec.replicas if d.replicas is None else d.replicas
