"""How many of one service's replicas each node gets: a min-cost flow on networkx.

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
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Sequence

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


def allocate(rooms: Sequence[Room], demand: int, *, spread: bool, stable: bool = True) -> tuple[dict[str, int], int]:
    """``(tasks per node, unplaced count)`` for ``demand`` replicas; ``rooms`` least loaded first."""
    counts, unplaced, _ = solve(rooms, demand, spread=spread, stable=stable)
    return counts, unplaced


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
    """``allocate`` plus the optimal cost.  ``tight`` leaves out the levels no optimum uses:

    an optimum fills zones, then the nodes of a zone, like water: a zone gets at most
    ``T_z = max(kept_z, min(cap_z, W_zones)) + 1`` tasks and a node at most
    ``max(kept_n, W_z) + 1``, where the W are :func:`water_level` of the zone (node)
    capacities for ``demand`` (``T_z``) tasks.  That keeps the graph small when many
    nodes share few replicas (100,000 replicas on 5,000 nodes: a level or two each)."""
    counts = {r.node: 0 for r in rooms}
    if demand <= 0 or not rooms:
        return counts, max(demand, 0), 0
    d = demand
    wz = d + 1 if spread else 0
    a, b = (1, wz * d + d + 1) if stable else (d + 1, 1)
    unplaced_cost = a * (wz * d + d) + b + 1

    caps = {r.node: min(r.keep + r.room, d) for r in rooms}
    zones: dict[Hashable, list[Room]] = {}
    for r in rooms:
        if caps[r.node] > 0:
            zones.setdefault(r.zone if spread else None, []).append(r)
    zone_cap = {z: sum(caps[r.node] for r in members) for z, members in zones.items()}
    zone_level = water_level(list(Counter(zone_cap.values()).items()), d)
    share, level = {}, {}
    for z, members in zones.items():
        kept = sum(min(r.keep, caps[r.node]) for r in members)
        share[z] = min(zone_cap[z], d, max(kept, min(zone_cap[z], zone_level)) + 1) if tight else min(zone_cap[z], d)
        # Nodes with equal capacity are one (capacity, count) pair: the search stays cheap.
        w = water_level(list(Counter(caps[r.node] for r in members).items()), share[z])
        for r in members:
            level[r.node] = min(caps[r.node], max(r.keep, w) + 1) if tight else caps[r.node]

    classes: dict[tuple, list[Room]] = {}
    for z, members in zones.items():
        for r in members:
            classes.setdefault((z, min(r.keep, level[r.node]), level[r.node]), []).append(r)

    g = nx.MultiDiGraph()
    g.add_node("src", demand=-d)
    g.add_node("sink", demand=d)
    g.add_edge("src", "sink", capacity=d, weight=unplaced_cost)
    for c, ((zone, keep, cap), members) in enumerate(classes.items()):
        m = len(members)
        g.add_edge(("zone", zone), ("class", c), capacity=m * cap, weight=0)
        for k in range(1, cap + 1):
            g.add_edge(("class", c), "sink", capacity=m, weight=a * k + (b if k > keep else 0))
    for zone in zones:
        if spread:
            for j in range(1, share[zone] + 1):
                g.add_edge("src", ("zone", zone), capacity=1, weight=a * wz * j)
        else:
            g.add_edge("src", ("zone", zone), capacity=share[zone], weight=0)

    cost, flow = nx.network_simplex(g)
    for c, members in enumerate(classes.values()):
        full, extra = divmod(sum(flow[("class", c)]["sink"].values()), len(members))
        for i, r in enumerate(members):
            counts[r.node] = full + (1 if i < extra else 0)
    return counts, sum(flow["src"]["sink"].values()), cost
