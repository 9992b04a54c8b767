"""The placement flow's fast path: the greedy answer is network simplex's answer, common shapes never need
networkx, and a zone outage re-places exactly what ran there."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pswarm.cluster.spec import Constraint, ServiceSpec
from p2pswarm.scheduler import flow
from p2pswarm.scheduler.flow import Room, solve
from p2pswarm.scheduler.placement import Demand, NodeInfo, plan


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6), st.sampled_from(["a", "b", "c", None])),
                min_size=1, max_size=10),
       st.integers(0, 25), st.booleans(), st.booleans(), st.booleans())
def test_the_greedy_flow_answers_what_network_simplex_answers(nodes_, demand, spread, stable, tight):
    rooms = [Room(f"n{i}", keep, room, zone) for i, (keep, room, zone) in enumerate(nodes_)]
    fast = solve(rooms, demand, spread=spread, stable=stable, tight=tight)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flow, "cheapest", lambda *args: None)  # always network simplex
        assert solve(rooms, demand, spread=spread, stable=stable, tight=tight) == fast


def cluster(count: int) -> list[NodeInfo]:
    return [NodeInfo(f"n{i:04d}", f"n{i}", {"zone": "abcde"[i % 5]}, cpu=float((4, 8, 16)[i % 3]),
                     memory=(4, 8, 16)[i % 3] << 30) for i in range(count)]


def services() -> list[ServiceSpec]:
    return [ServiceSpec("plain", "x", replicas=700),
            ServiceSpec("spread", "x", replicas=500, spread="node.labels.zone"),
            ServiceSpec("pinned", "x", replicas=300, constraints=(Constraint.parse("node.labels.zone!=e"),)),
            ServiceSpec("sized", "x", replicas=400, reserve_cpu=0.5, reserve_memory=256 << 20)]


def test_common_shapes_are_planned_without_network_simplex(monkeypatch):
    def refuse(*args):
        raise AssertionError("network simplex was asked")
    monkeypatch.setattr(flow, "_simplex", refuse)
    result = plan(cluster(1000), [Demand(spec) for spec in services()])
    assert len(result.place) == 1900 and not result.unplaced


def test_a_zone_outage_replaces_exactly_the_tasks_that_ran_there():
    nodes = cluster(500)
    first = plan(nodes, [Demand(spec) for spec in services()])
    tasks = {spec.name: [(f"{spec.name}.{i}", node) for i, (s, node) in enumerate(first.place) if s == spec.name]
             for spec in services()}
    lost = {n.id for n in nodes if n.labels["zone"] == "b"}
    survivors = {name: tuple(t for t in ts if t[1] not in lost) for name, ts in tasks.items()}
    after = plan([n for n in nodes if n.id not in lost], [Demand(spec, survivors[spec.name]) for spec in services()])
    assert not after.stop and not after.unplaced  # nothing that survived moves
    placed = {name: sum(1 for s, _ in after.place if s == name) for name in tasks}
    assert placed == {name: len(ts) - len(survivors[name]) for name, ts in tasks.items()}
    assert not {node for _, node in after.place} & lost
    zone = {n.id: n.labels["zone"] for n in nodes}
    per_zone = Counter(zone[node] for _, node in survivors["spread"])
    per_zone.update(zone[node] for s, node in after.place if s == "spread")
    assert sorted(per_zone) == ["a", "c", "d", "e"] and max(per_zone.values()) - min(per_zone.values()) <= 1
