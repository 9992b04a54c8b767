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

* ``place_seconds``: median wall time of ``plan(...)`` over ``--repeats`` runs (3); ``place_cpu_seconds``
  the median cpu time of this process in it (what a busy shared machine does not inflate).
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
* ``zone_outage_replace_seconds``: median wall time (over ``--repeats``) of the leader's reconcile round
  (:class:`p2pswarm.scheduler.incremental.Reconciler`, the code the Raft leader runs) after ``--outage``
  nodes (400; the first of zone b) go dead, on a cluster state built as the Raft log builds it (nodes
  registered, services created, every task placed by the reconciler and reported running, one settling
  round): the round orphans the tasks on the dead nodes and re-plans only the services that had one
  there.  ``zone_outage_replace_cpu_seconds``: its cpu time (what other load on the machine inflates less).
* ``zone_outage_replaced``: tasks it placed (as many as ran on the lost nodes), ``zone_outage_services``
  the services it planned, ``zone_outage_moved`` tasks on live nodes it stopped (expected 0: only what ran
  there moves), ``zone_outage_unplaced``, ``zone_outage_orphan_reports`` its orphan reports,
  ``zone_outage_orphan_entries`` the Raft entries (``report_tasks`` commands) that carry them.
* ``zone_outage_full_pass_seconds`` (cpu): the same round as a full pass (every service planned, the
  periodic safety net); ``zone_outage_same_as_full``: whether both propose the same commands.

Progress goes to stderr. ``--quick`` is the short run tests/simulations/ makes.
"""

from __future__ import annotations

import argparse
import collections
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pswarm.cluster import commands as cmd  # noqa: E402
from p2pswarm.cluster.spec import Constraint, ServiceSpec  # noqa: E402
from p2pswarm.cluster.state import ClusterState  # noqa: E402
from p2pswarm.scheduler.incremental import Reconciler  # noqa: E402
from p2pswarm.scheduler.placement import Demand, NodeInfo, plan  # noqa: E402
from p2pswarm.scheduler.reconcile import Reconciliation, reconcile  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
ZONES = "abcde"
QUICK = {"nodes": 1000, "services": 20, "replicas": 20_000, "repeats": 1, "outage": 80}
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


class Log:
    """A cluster state fed one command per index, as Raft applies them (one term)."""
    TERM = 1

    def __init__(self) -> None:
        self.state = ClusterState()

    def apply(self, command: dict) -> None:
        result = self.state.apply(command, self.TERM, self.state.applied + 1)
        if not result.ok:
            raise SystemExit(f"{command['op']} {command['id']} refused: {result.error}")


def running_cluster(nodes: list[NodeInfo], specs: list[ServiceSpec], reconciler: Reconciler) -> Log:
    """Nodes registered, services created, every task placed by ``reconciler`` and reported running."""
    log = Log()
    for n in nodes:
        log.apply(cmd.update_node(f"node.{n.id}", 0.0, n.id, name=n.name, labels=dict(n.labels), cpu=n.cpu,
                                  memory=n.memory))
    for spec in specs:
        log.apply(cmd.create_service(f"create.{spec.name}", 0.0, spec))
    members = {n.id: "alive" for n in nodes}
    for command in reconciler.reconcile(log.state, members, 1.0, log.TERM).commands:
        log.apply(command)
    for tid, task in sorted(log.state.tasks.items()):
        log.apply(cmd.report_task_status(f"run.{tid}", 2.0, tid, "running", node=task.node, port=20000))
    if reconciler.reconcile(log.state, members, 3.0, log.TERM).commands:
        raise SystemExit("the cluster did not settle")
    return log


def without_ids(plan: Reconciliation) -> list[dict]:
    return [{k: v for k, v in c.items() if k != "id"} for c in plan.commands]


def zone_outage(nodes: list[NodeInfo], specs: list[ServiceSpec], size: int, repeats: int) -> dict:
    """Take ``size`` nodes of zone b down once every task runs, and time the leader's reconcile round."""
    say("zone outage: building the running cluster's state")
    settled = Reconciler()
    log = running_cluster(nodes, specs, settled)
    state = log.state
    lost = set(sorted(n.id for n in nodes if n.labels["zone"] == "b")[:size])
    members = {n.id: "dead" if n.id in lost else "alive" for n in nodes}
    times, cpu = [], []
    result: Reconciliation | None = None
    for _ in range(repeats):
        reconciler = copy.copy(settled)  # the leader as it was before the outage (a round replaces its memory)
        gc.collect()  # what the last rounds left is long-lived in a leader, not young objects for the collector
        started, cpu_started = time.perf_counter(), time.process_time()
        result = reconciler.reconcile(state, members, 4.0, log.TERM)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    assert result is not None
    cpu_started = time.process_time()
    full = reconcile(state, members, 4.0, log.TERM)
    full_cpu = time.process_time() - cpu_started
    placed = [p for c in result.commands if c["op"] == "assign_tasks" for p in c["place"] if p["node"] is not None]
    stopped = [tid for c in result.commands if c["op"] == "assign_tasks" for tid, _ in c["stop"]]
    say(f"zone outage: {len(lost)} nodes down, {len(result.planned)} services re-planned in "
        f"{', '.join(f'{t:.3f}' for t in times)} s (cpu {', '.join(f'{t:.3f}' for t in cpu)}); full pass "
        f"{full_cpu:.3f} s cpu")
    return {"zone_outage_nodes": len(lost),
            "zone_outage_lost_tasks": sum(1 for t in state.tasks.values() if t.live and t.node in lost),
            "zone_outage_replace_seconds": round(statistics.median(times), 3),
            "zone_outage_replace_seconds_runs": [round(t, 3) for t in times],
            "zone_outage_replace_cpu_seconds": round(statistics.median(cpu), 3),
            "zone_outage_services": len(result.planned), "zone_outage_replaced": len(placed),
            "zone_outage_moved": sum(1 for tid in stopped if state.tasks[tid].node not in lost),
            "zone_outage_unplaced": sum(n for n, _ in result.unplaced.values()),
            "zone_outage_orphan_reports": sum(len(c["reports"]) for c in result.commands if c["op"] == "report_tasks"),
            "zone_outage_orphan_entries": sum(1 for c in result.commands if c["op"] == "report_tasks"),
            "zone_outage_full_pass_seconds": round(full_cpu, 3),
            "zone_outage_same_as_full": without_ids(result) == without_ids(full)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=100_000, help="total over all services")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--outage", type=int, default=400, help="nodes of zone b that go down (incremental reconcile)")
    parser.add_argument("--quick", action="store_true", help=f"a short run for the smoke test: {QUICK}")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args()

    nodes = make_nodes(args.nodes)
    specs = make_services(args.services, args.replicas)
    demands = [Demand(spec) for spec in specs]
    say(f"{len(nodes)} nodes, {len(specs)} services, {sum(s.replicas for s in specs)} replicas")

    times, cpu, result = [], [], None
    for r in range(args.repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = plan(nodes, demands)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
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
        "place_cpu_seconds": round(statistics.median(cpu), 3),
        "max_over_min_per_node": round(max(spread.values()) / min(spread.values()), 3) if spread else None,
        "spread_nodes_used": len(spread),
        "spread_per_zone": dict(sorted(spread_zone.items())),
        "overall_max_over_min_per_node": round(max(per_node.values()) / min(per_node.values()), 3)
        if per_node else None,
        "nodes_with_tasks": len(per_node),
        "placed": len(result.place),
        "unplaced": unplaced,
        **zone_outage(nodes, specs, args.outage, args.repeats),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
