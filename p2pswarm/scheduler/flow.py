"""How many of one service's replicas each node gets: a min-cost flow, solved greedily (networkx for ties).

::

    src ──(unit edges, cost A·Wz·j for the j-th task of zone z)──► zone z ──► class c ──┐
     │                                                                                  │ level edges k = 1..cap,
     └──────────────(capacity d, cost U: "cannot be placed")──────────────► sink ◄──────┘ capacity m, cost A·k (+B)

Replicas are one commodity (supply ``d``), so the graph does not grow with them
one node per replica.  Nodes that look alike to this service (same zone, same
number of its tasks kept, same room) form a *class* of ``m`` nodes; the class's
k-th level edge carries the k-th task of each of its nodes.  Costs rise with the
level, so the flow fills level k on every node before level k+1 on any (convex
spreading cost), and a class's flow ``F`` splits into ``F // m`` per node plus one
for the first ``F % m`` nodes (callers order nodes least loaded first).

Costs, for ``d`` replicas (all integers, so the optimum is exact):

* zone weight ``Wz = d + 1`` with a spread preference, else 0: one task moved to a
  fuller zone costs more than any node-level imbalance it could fix;
* stable mode (normal planning): ``A = 1``, ``B = Wz·d + d + 1`` per *new* task: keeping a
  running task is worth more than any spreading gain, so plans are stable;
* spread mode (rebalancing target): ``A = d + 1``, ``B = 1``: evenness first, and only
  among equally even answers the one that keeps most tasks where they are;
* ``U = A·(Wz·d + d) + B + 1`` per unplaced task: above any placement's cost.

Solving: every cost is convex, so taking the cheapest unit costs one at a time is optimal
(:func:`cheapest`, a few milliseconds for 5,000 nodes).  Where several optima differ per class
(equal costs straddle the cut), network simplex on the graph above picks, as it always did: the
answers stay exactly the ones plans have always had.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from itertools import chain, compress, filterfalse, groupby, islice, repeat
from operator import eq, not_
from typing import Collection, Hashable, Iterable, Iterator, Mapping, Sequence

import networkx as nx


@dataclass(frozen=True, slots=True)
class Room:
    """A node as one service's flow sees it."""
    node: str
    keep: int
    """Tasks of the service already there that may stay."""
    room: int
    """New tasks of the service that still fit there."""
    zone: Hashable = None
    """Value of the spread label (None: the node lacks the label, a group of its own)."""


def water_level(caps: Sequence[tuple[int, int]], total: int) -> int:
    """Smallest ``W`` with ``Σ m·min(cap, W) ≥ total`` over ``(cap, m)`` pairs (the highest cap if none)."""
    lo, hi = 0, max((c for c, _ in caps), default=0)
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(m * min(c, mid) for c, m in caps) >= total:
            hi = mid
        else:
            lo = mid + 1
    return lo


def solve(rooms: Sequence[Room], demand: int, *, spread: bool, stable: bool = True,
          tight: bool = True) -> tuple[dict[str, int], int, int]:
    """``(tasks per node, unplaced count, optimal cost)`` for ``demand`` replicas, ``rooms`` least loaded first
    (:func:`solve_columns` on a list of rooms; the tests state flows this way)."""
    counts = {r.node: r.keep for r in rooms}
    found, unplaced, cost = solve_columns([r.node for r in rooms], demand,
                                          keep={r.node: r.keep for r in rooms if r.keep},
                                          room={r.node: r.room for r in rooms},
                                          zone={r.node: r.zone for r in rooms} if spread else None,
                                          stable=stable, tight=tight)
    counts.update(found)
    return counts, unplaced, cost


def solve_columns(nodes: Sequence[str], demand: int, *, keep: Mapping[str, int], room: Mapping[str, int] | int,
                  zone: Mapping[str, Hashable] | None, stable: bool = True, tight: bool = True,
                  zone_ties_in_order: bool = False,
                  orphans: Mapping[str, int] | None = None) -> tuple[dict[str, int], int, int]:
    """``(tasks per node whose count changes from what it keeps, unplaced count, optimal cost)``.

    ``nodes`` least loaded first; ``keep`` the tasks that may stay (absent: none; every such node is one of
    ``nodes``); ``room`` per node, or one
    number for all; ``zone`` the spread label's value per node (None: no spread preference).  Columns rather
    than :class:`Room` objects, and nodes grouped before any per-class work: the planner calls this once per
    service over thousands of nodes.

    ``orphans`` (with ``zone``): tasks per zone that still count toward its spread while on no node.  Each
    zone's are kept on a stand-in node of that zone that takes nothing new (the demand grows by them), the
    zones holding orphans rank after the others, and ties between zones go in that order
    (``zone_ties_in_order``): replacements go to zones that lost nothing, least loaded first.

    ``tight`` leaves out the levels no optimum uses:

    an optimum fills zones, then the nodes of a zone, like water: a zone gets at most
    ``T_z = max(kept_z, min(cap_z, W_zones)) + 1`` tasks and a node at most
    ``max(kept_n, W_z) + 1``, where the W are :func:`water_level` of the zone (node)
    capacities for ``demand`` (``T_z``) tasks.  That keeps the graph small when many
    nodes share few replicas (100,000 replicas on 5,000 nodes: a level or two each)."""
    if demand <= 0 or not nodes:
        return dict.fromkeys(keep, 0), max(demand, 0), 0
    orphans = orphans if orphans and zone is not None else {}
    d = demand + sum(orphans.values())
    spread = zone is not None
    wz = d + 1 if spread else 0
    a, b = (1, wz * d + d + 1) if stable else (d + 1, 1)
    unplaced_cost = a * (wz * d + d) + b + 1

    groups = _groups(nodes, d, keep, room, zone)
    for j, (where, n) in enumerate(sorted(orphans.items())):  # stand-ins: positions past the last node
        if n > 0:
            groups.setdefault((where, n, n), []).append(len(nodes) + j)
    zone_cap: dict[Hashable, int] = {}
    zone_kept: Counter[Hashable] = Counter()
    for (z, k, cap), members in groups.items():
        zone_cap[z] = zone_cap.get(z, 0) + cap * len(members)
        zone_kept[z] += min(k, cap) * len(members)
    zone_level = water_level(list(Counter(zone_cap.values()).items()), d)
    share: dict[Hashable, int] = {}
    for z, cap_z in zone_cap.items():
        share[z] = min(cap_z, d, max(zone_kept[z], min(cap_z, zone_level)) + 1) if tight else min(cap_z, d)
    caps_of: dict[Hashable, Counter[int]] = {}
    for (z, _, cap), members in groups.items():
        caps_of.setdefault(z, Counter())[cap] += len(members)
    water = {z: water_level(list(caps.items()), share[z]) for z, caps in caps_of.items()}

    merged: dict[tuple, list[int]] = {}
    mixed = set()  # classes some member of which keeps more than the class's level
    for (z, k, cap), members in groups.items():
        level = min(cap, max(k, water[z]) + 1) if tight else cap
        merged.setdefault((z, min(k, level), level), []).extend(members)
        if k > level:
            mixed.add((z, level, level))
    # Zones in order of their least loaded node, classes likewise within a zone: the order the
    # graph always had, which decides network simplex's pick among equal optima.
    first = {z: (z in orphans, min(members[0] for (gz, _, _), members in groups.items() if gz == z))
             for z in zone_cap}
    order = sorted(merged, key=lambda key: (first[key[0]], min(merged[key])))
    shapes = [(z, k, cap, len(merged[(z, k, cap)])) for z, k, cap in order]
    zones = sorted(zone_cap, key=first.__getitem__)
    flows = cheapest(shapes, share, d, a, b, a * wz, zone_ties_in_order or bool(orphans))
    if flows is None:  # several optima differ: network simplex picks one, as it always has
        flows = _simplex(shapes, zones, share, d, a, b, wz, unplaced_cost)
    changed: dict[str, int] = {}
    for flow, key in zip(flows, order):
        full, extra = divmod(flow, len(merged[key]))
        if full == key[1] and not extra and key not in mixed:
            continue  # every node of the class keeps what it has
        members = sorted(merged[key]) if len(merged[key]) > 1 else merged[key]
        members = [i for i in members if i < len(nodes)] if orphans else members  # not the stand-ins
        for i in members[:extra]:
            changed[nodes[i]] = full + 1
        if full != key[1] or key in mixed:
            for i in members[extra:]:
                changed[nodes[i]] = full
    return changed, d - sum(flows), _cost(shapes, flows, d, a, b, a * wz, unplaced_cost)


def level_one(nodes: Sequence[str], demand: int, *, keep: Mapping[str, int], room: Mapping[str, int] | int,
              zone: Mapping[str, Hashable] | None, zones: Collection[Hashable],
              orphans: Mapping[str, int] | None = None, zone_ties_in_order: bool = False) -> dict[str, int] | None:
    """:func:`solve_columns`'s stable answer when every new task lands on a node holding none of the service's
    tasks (its first level), found without building the flow: the new tasks per node, or None when the answer
    may be another (a zone runs out of such nodes, a tie at the cut spans zones, the service shrinks).

    ``zones``: the spread label's values among ``nodes``.  A zone outage re-plans dozens of services of
    thousands of tasks each, and each needs only its lost tasks placed: this costs steps in the nodes it
    places on, where the flow costs steps in every node.  Why it is the same answer, with ``d`` the demand
    (orphans included), ``step = d + 1`` a zone's per-task cost and ``B > step·d + d`` the cost of a new task:
    a kept task's unit costs at most ``step·d + d``, less than any new one, so every kept task stays; a new
    task on a node without one costs ``step·j + 1 + B`` as the zone's j-th task, less than a second task on
    any node of that zone, so zones fill like water (fewest first, ties by rank: zones with orphans last, then
    by their least loaded node), and within a zone the least loaded such nodes come first.  Ties at the cut
    between zones are network simplex's to break unless ``zone_ties_in_order`` or orphans.

    Rooms per node (reservations) only without a spread label, and only when no node has room for just one
    task and at least ``d`` nodes without a task have room for two: the flow then leaves out every level above
    the second (``tight``), so all those nodes are one class and take the new tasks in order."""
    kept = sum(keep.values())
    need = demand - kept
    if need < 0 or (isinstance(room, int) and room < 1):
        return None
    if need == 0:
        return {}
    candidates: Iterable[str] = nodes
    if not isinstance(room, int):
        rooms = list(map(room.__getitem__, nodes))
        if zone is not None or 1 in rooms or len(rooms) - rooms.count(0) - len(keep) < demand:
            return None
        candidates = compress(nodes, rooms)  # (no room, no class: the flow never sees them)
    if zone is None:  # one zone: the least loaded nodes without a task, in order
        first_free = list(islice(filterfalse(keep.__contains__, candidates), need))
        return dict.fromkeys(first_free, 1) if len(first_free) == need else None
    orphans = orphans or {}
    per_node = map(zone.get, keep)  # (one task per node, the common case, counts the nodes themselves)
    held: Counter[Hashable] = Counter(per_node if len(keep) == kept else
                                      chain.from_iterable(map(repeat, per_node, keep.values())))
    held.update(orphans)
    first: dict[Hashable, int] = {}
    for i, node in enumerate(nodes):
        first.setdefault(zone.get(node), i)
        if len(first) == len(zones):
            break
    heap = [(held[z], (z in orphans, i), z) for z, i in first.items()]
    if not heap:
        return None  # no node at all
    heapq.heapify(heap)
    new: dict[Hashable, int] = {}
    for _ in range(need):  # one task at a time to the zone with fewest
        total, rank, z = heapq.heappop(heap)
        new[z] = new.get(z, 0) + 1
        heapq.heappush(heap, (total + 1, rank, z))
    cut = total + 1
    if heap[0][0] == cut - 1 and not (zone_ties_in_order or orphans):
        return None  # another zone's next task would cost the same as the last one taken
    chosen = {}
    for node in filterfalse(keep.__contains__, nodes):
        z = zone.get(node)
        if new.get(z):
            new[z] -= 1
            chosen[node] = 1
            if len(chosen) == need:
                return chosen
    return None  # a zone has fewer nodes without a task than it should get


def _groups(nodes: Sequence[str], d: int, keep: Mapping[str, int], room: Mapping[str, int] | int,
            zone: Mapping[str, Hashable] | None) -> dict[tuple[Hashable, int, int], list[int]]:
    """Positions of the nodes with any capacity, in order, by (zone, kept, capacity): the classes before levels.

    Thousands of nodes per service, most keeping none of its tasks: those are grouped by capacity with a
    sort and by zone with a pass per zone (C-level steps); only the nodes keeping tasks go one by one."""
    kept_at: list[int] = []
    free = list(range(len(nodes)))
    if keep:
        kept_here = list(map(keep.__contains__, nodes))
        kept_at = list(compress(free, kept_here))
        free = list(compress(free, map(not_, kept_here)))
    groups: dict[tuple[Hashable, int, int], list[int]] = {}
    if isinstance(room, int):
        by_cap = [(min(room, d), free)] if free else []
    else:
        caps = [r if r < d else d for r in map(room.__getitem__, map(nodes.__getitem__, free))]
        ranked = sorted(range(len(free)), key=caps.__getitem__)
        by_cap = [(cap, list(map(free.__getitem__, run))) for cap, run in groupby(ranked, caps.__getitem__)]
    for cap, members in by_cap:
        if cap <= 0:
            continue
        if zone is None:
            groups[(None, 0, cap)] = members
            continue
        zones = list(map(zone.get, map(nodes.__getitem__, members)))
        for z in dict.fromkeys(zones):  # a C-level pass per zone, not a Python step per node
            groups[(z, 0, cap)] = list(compress(members, map(eq, zones, repeat(z))))
    kept_nodes = list(map(nodes.__getitem__, kept_at))
    kept = list(map(keep.__getitem__, kept_nodes))
    rooms = repeat(room) if isinstance(room, int) else map(room.__getitem__, kept_nodes)
    caps = [k + r if k + r < d else d for k, r in zip(kept, rooms)]
    zones_kept = map(zone.get, kept_nodes) if zone is not None else repeat(None)
    for key, i in zip(zip(zones_kept, kept, caps), kept_at):  # one step per node keeping tasks, in order
        if key[2] > 0:
            groups.setdefault(key, []).append(i)
    return groups


Shape = tuple[Hashable, int, int, int]
"""A class of alike nodes: (zone, tasks kept on each, levels open on each, nodes)."""


def _levels(shape: Shape, a: int, b: int) -> list[int]:
    """Cost of the k-th task on a node of the class, k = 1..levels (rising: the flow fills level by level)."""
    _, keep, cap, _ = shape
    return [a * k + (b if k > keep else 0) for k in range(1, cap + 1)]


def _cost(shapes: list[Shape], flows: list[int], d: int, a: int, b: int, step: int, unplaced_cost: int) -> int:
    """The flow's cost: levels filled from the cheapest, ``step·j`` for a zone's j-th task, the rest unplaced."""
    cost, per_zone = 0, Counter[Hashable]()
    for shape, flow in zip(shapes, flows):
        per_zone[shape[0]] += flow
        for level in _levels(shape, a, b):
            cost += level * min(shape[3], flow)
            flow -= min(shape[3], flow)
    cost += sum(step * x * (x + 1) // 2 for x in per_zone.values())
    return cost + (d - sum(flows)) * unplaced_cost


def cheapest(shapes: list[Shape], share: Mapping[Hashable, int], demand: int, a: int, b: int,
             step: int, zone_ties_in_order: bool = False) -> list[int] | None:
    """Flow per class of the min-cost flow, found greedily; None when the optimum is not unique per class.

    Every cost is convex (a node's levels rise, a zone's j-th task costs ``step·j`` more), so the
    cheapest ``demand`` unit costs are an optimum: per zone its units cost ``step·j + μ_j`` (μ the
    zone's levels, cheapest first), and zones are merged cheapest unit first.  When units of equal
    cost straddle the cut in different zones (or classes), other optima exist and network simplex's
    choice among them is what plans have always followed, so the caller asks it instead."""
    zones: dict[Hashable, list[tuple[int, int, int]]] = {}
    for c, shape in enumerate(shapes):
        zones.setdefault(shape[0], []).extend((cost, c, shape[3]) for cost in _levels(shape, a, b))
    totals = _zone_totals({z: sorted(e) for z, e in zones.items()}, share, demand, step, zone_ties_in_order)
    if totals is None:
        return None
    flows = [0] * len(shapes)
    for zone, entries in zones.items():
        if not _split(sorted(entries), totals[zone], flows):
            return None
    return flows


def _zone_totals(zones: dict[Hashable, list[tuple[int, int, int]]], share: Mapping[Hashable, int], demand: int,
                 step: int, in_order: bool = False) -> dict[Hashable, int] | None:
    """Tasks per zone: the ``demand`` cheapest zone units (None if a tie at the cut spans zones, unless
    ``in_order``: then equal units go to the zones in order)."""
    if len(zones) == 1:
        [(zone, entries)] = zones.items()
        return {zone: min(demand, share[zone], sum(m for _, _, m in entries))}
    units = {z: _units(entries, share[z], step) for z, entries in zones.items()}
    heads = [(cost, i, z) for i, (z, it) in enumerate(units.items()) if (cost := next(it)) is not None]
    heapq.heapify(heads)
    totals = dict.fromkeys(zones, 0)
    last_cost: dict[Hashable, int] = {}
    cut = None
    while heads and demand:
        cut, i, z = heapq.heappop(heads)
        totals[z] += 1
        last_cost[z] = cut
        demand -= 1
        following = next(units[z])
        if following is not None:
            heapq.heappush(heads, (following, i, z))
    taken = {z for z, cost in last_cost.items() if cost == cut}
    left = {z for cost, _, z in heads if cost == cut}
    return None if not in_order and _straddles(taken, left) else totals


def _units(entries: list[tuple[int, int, int]], share: int, step: int) -> Iterator[int | None]:
    """A zone's unit costs, cheapest first (None once it has no more)."""
    j = 0
    for cost, _, m in entries:
        for _ in range(min(m, share - j)):
            j += 1
            yield step * j + cost
    while True:
        yield None


def _split(entries: list[tuple[int, int, int]], total: int, flows: list[int]) -> bool:
    """Add a zone's ``total`` tasks to ``flows``, cheapest level first; False if a tie at the cut spans classes."""
    taken: set[int] = set()
    left: set[int] = set()
    cut = None
    for cost, c, m in entries:
        if total == 0 and (cut is None or cost > cut):
            break
        take = min(m, total)
        if take:
            flows[c] += take
            total -= take
            if cost != cut:
                taken.clear()
            cut = cost
            taken.add(c)
        if take < m and cost == cut:
            left.add(c)
    return not _straddles(taken, left)


def _straddles(taken: set, left: set) -> bool:
    """Whether units of the cut's cost were taken from one group and left in another."""
    return bool(left) and (len(left) > 1 or bool(taken - left))


def _simplex(shapes: list[Shape], zones: list[Hashable], share: dict[Hashable, int], d: int,
             a: int, b: int, wz: int, unplaced_cost: int) -> list[int]:
    """Flow per class by networkx's network simplex on the module's graph, for the ties :func:`cheapest` leaves."""
    g = nx.MultiDiGraph()
    g.add_node("src", demand=-d)
    g.add_node("sink", demand=d)
    g.add_edge("src", "sink", capacity=d, weight=unplaced_cost)
    for c, (zone, keep, cap, m) in enumerate(shapes):
        g.add_edge(("zone", zone), ("class", c), capacity=m * cap, weight=0)
        for k in range(1, cap + 1):
            g.add_edge(("class", c), "sink", capacity=m, weight=a * k + (b if k > keep else 0))
    for zone in zones:
        if wz:
            for j in range(1, share[zone] + 1):
                g.add_edge("src", ("zone", zone), capacity=1, weight=a * wz * j)
        else:
            g.add_edge("src", ("zone", zone), capacity=share[zone], weight=0)

    _, flow = nx.network_simplex(g)
    return [sum(flow[("class", c)]["sink"].values()) for c in range(len(shapes))]
