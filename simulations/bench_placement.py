#!/usr/bin/env python3
"""Placement at scale: 100 services, 100,000 replicas, 5,000 nodes, placed from scratch.

Builds a synthetic cluster in memory (no processes) and times
``p2pswarm.scheduler.placement.plan`` placing every replica with no task running yet.

Nodes: 5,000 with ``zone`` labels a..e (round robin), cpu 16/32/64 cores and memory
64/128/256 GiB; every 16th node (313 of them) also has ``disk=ssd``.

Services (100, 1,000 replicas each, 100,000 in all), by ``i % 10``:

* 0: constraint ``node.labels.zone==a``;
* 1: constraint ``node.labels.disk==ssd``;
* 2, 3, 4: spread preference over ``node.labels.zone``;
* 5, 6: reservations of 0.5 cpu and 256 MiB per task;
* 7: spread over zone and ``node.labels.zone!=e``;
* 8, 9: no constraint, no preference, no reservation.

Outputs (JSON, last line of stdout):

* ``place_seconds``: median wall time of ``plan(...)`` over ``--repeats`` runs (3).
* ``max_over_min_per_node``: spread quality of one unconstrained spread service
  (``svc002``, spread over zone): the most tasks it has on any of its eligible nodes
  divided by the fewest on any of them (every node is eligible for it; a node with 0
  of its tasks gives ``null``).  1.0 is perfect (1,000 replicas on 5,000 nodes cannot
  give every node one, so this is reported over the nodes that got a task, with
  ``spread_nodes_used`` saying how many that is; the ideal then is 1,000 distinct nodes
  and 200 per zone, reported as ``spread_per_zone``).
* ``overall_max_over_min_per_node``: total tasks per node, max / min over nodes that got
  at least one task, all services together.
* ``unplaced``: replicas the plan could not place (expected 0).
* ``placed``: replicas placed.

Progress goes to stderr. ``--quick`` is the short run tests/simulations/ makes.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pswarm.cluster.spec import Constraint, ServiceSpec  # noqa: E402
from p2pswarm.scheduler.placement import Demand, NodeInfo, plan  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
ZONES = "abcde"
QUICK = {"nodes": 1000, "services": 20, "replicas": 20_000, "repeats": 1}
"""``--quick``: a fifth of the headline cluster, every kind of service twice, 1,000 replicas each as there (≈ 1 s)."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_nodes(count: int) -> list[NodeInfo]:
    nodes = []
    for i in range(count):
        labels = {"zone": ZONES[i % len(ZONES)]}
        if i % 16 == 0:
            labels["disk"] = "ssd"
        size = (16, 32, 64)[i % 3]
        nodes.append(NodeInfo(f"node{i:05d}", f"n{i}", labels, "active", float(size), size * 4 * GIB))
    return nodes


def make_services(count: int, total: int) -> list[ServiceSpec]:
    per = total // count
    specs = []
    for i in range(count):
        kind = i % 10
        kw: dict = {}
        if kind == 0:
            kw["constraints"] = (Constraint.parse("node.labels.zone==a"),)
        elif kind == 1:
            kw["constraints"] = (Constraint.parse("node.labels.disk==ssd"),)
        elif kind in (2, 3, 4):
            kw["spread"] = "node.labels.zone"
        elif kind in (5, 6):
            kw["reserve_cpu"], kw["reserve_memory"] = 0.5, 256 * MIB
        elif kind == 7:
            kw["spread"] = "node.labels.zone"
            kw["constraints"] = (Constraint.parse("node.labels.zone!=e"),)
        replicas = per + (total - per * count if i == count - 1 else 0)
        specs.append(ServiceSpec(name=f"svc{i:03d}", command="/bin/true", replicas=replicas, **kw))
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=100_000, help="total over all services")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help=f"a short run for the smoke test: {QUICK}")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args()

    nodes = make_nodes(args.nodes)
    specs = make_services(args.services, args.replicas)
    demands = [Demand(spec) for spec in specs]
    say(f"{len(nodes)} nodes, {len(specs)} services, {sum(s.replicas for s in specs)} replicas")

    times, result = [], None
    for r in range(args.repeats):
        started = time.perf_counter()
        result = plan(nodes, demands)
        times.append(time.perf_counter() - started)
        say(f"run {r + 1}/{args.repeats}: plan took {times[-1]:.3f} s, placed {len(result.place)}")
    assert result is not None

    per_node: collections.Counter = collections.Counter()
    spread: collections.Counter = collections.Counter()
    for service, node in result.place:
        per_node[node] += 1
        if service == "svc002":
            spread[node] += 1
    zone_of = {n.id: n.labels["zone"] for n in nodes}
    spread_zone = collections.Counter()
    for node, n in spread.items():
        spread_zone[zone_of[node]] += n
    unplaced = sum(n for n, _ in result.unplaced.values())
    for service, (n, why) in sorted(result.unplaced.items()):
        say(f"unplaced: {service}: {n} ({why})")

    report = {
        "nodes": len(nodes), "services": len(specs), "replicas": sum(s.replicas for s in specs),
        "repeats": args.repeats, "quick": args.quick,
        "place_seconds": round(statistics.median(times), 3),
        "place_seconds_runs": [round(t, 3) for t in times],
        "max_over_min_per_node": round(max(spread.values()) / min(spread.values()), 3) if spread else None,
        "spread_nodes_used": len(spread),
        "spread_per_zone": dict(sorted(spread_zone.items())),
        "overall_max_over_min_per_node": round(max(per_node.values()) / min(per_node.values()), 3)
        if per_node else None,
        "nodes_with_tasks": len(per_node),
        "placed": len(result.place),
        "unplaced": unplaced,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
