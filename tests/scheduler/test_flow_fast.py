"""The placement flow's fast path: the greedy answer is network simplex's answer, common shapes never need
networkx, and a zone outage re-places exactly what ran there."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pswarm.cluster.spec import Constraint, ServiceSpec
from p2pswarm.scheduler import flow, placement
from p2pswarm.scheduler.flow import Room, level_one, solve, solve_columns
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


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["a", "b", "c", "d", None])), min_size=1, max_size=30),
       st.integers(-2, 12), st.sampled_from([1, 2, 3, 50]), st.booleans(),
       st.dictionaries(st.sampled_from(["a", "b", "c", "z"]), st.integers(0, 6), max_size=3), st.booleans())
def test_the_first_level_path_answers_what_the_flow_answers(nodes_, extra, room, spread, orphans, in_order):
    """Whenever the first-level path answers, it is the flow's answer (which network simplex decides on ties).
    (Random cases of this shape: it answers about 4 in 10.)"""
    nodes = [f"n{i:02d}" for i in range(len(nodes_))]
    keep = {n: k for n, (k, _) in zip(nodes, nodes_) if k}
    zone = {n: z for n, (_, z) in zip(nodes, nodes_)} if spread else None
    orphans = orphans if spread else {}
    demand = sum(keep.values()) + extra
    fast = level_one(nodes, demand, keep=keep, room=room, zone=zone, zones=set(zone.values()) if zone else (),
                     orphans=orphans, zone_ties_in_order=in_order)
    if fast is not None:
        changed, missing, _ = solve_columns(nodes, demand, keep=keep, room=room, zone=zone, orphans=orphans,
                                            zone_ties_in_order=in_order)
        assert (fast, 0) == (changed, missing)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 2, 3, 9])), min_size=1, max_size=30),
       st.integers(-2, 12))
def test_the_first_level_path_with_rooms_per_node_answers_what_the_flow_answers(nodes_, extra):
    nodes = [f"n{i:02d}" for i in range(len(nodes_))]
    keep = {n: k for n, (k, _) in zip(nodes, nodes_) if k}
    room = {n: r for n, (_, r) in zip(nodes, nodes_)}
    demand = sum(keep.values()) + extra
    fast = level_one(nodes, demand, keep=keep, room=room, zone=None, zones=())
    if fast is not None:
        changed, missing, _ = solve_columns(nodes, demand, keep=keep, room=room, zone=None)
        assert (fast, 0) == (changed, missing)


def test_a_zone_outage_round_places_through_the_first_level_path(monkeypatch):
    """Re-placing what a dark zone ran (orphans counted in their zone) never builds a flow."""
    nodes = cluster(500)
    specs = [ServiceSpec("plain", "x", replicas=150),
             ServiceSpec("spread", "x", replicas=150, spread="node.labels.zone")]
    first = plan(nodes, [Demand(spec) for spec in specs])
    lost = {n.id for n in nodes if n.labels["zone"] == "b"}
    demands = []
    for spec in specs:
        mine = [(f"{spec.name}.{i}", node) for i, (s, node) in enumerate(first.place) if s == spec.name]
        gone = sum(1 for _, node in mine if node in lost)
        demands.append(Demand(spec, tuple(t for t in mine if t[1] not in lost),
                              orphans={"b": gone} if spec.spread_label else {}))
    monkeypatch.setattr(placement, "solve_columns", lambda *a, **k: pytest.fail("the flow was built"))
    after = plan([n for n in nodes if n.id not in lost], demands)
    assert not after.stop and not after.unplaced
    assert Counter(s for s, _ in after.place) == {"plain": 30, "spread": 30}


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


@pytest.mark.parametrize("zone,room", [({}, 3), (None, 3), (None, {})])
def test_the_first_level_path_leaves_a_service_without_nodes_to_the_flow(zone, room):
    assert level_one([], 3, keep={}, room=room, zone=zone, zones=set()) is None
    assert solve_columns([], 3, keep={}, room=room, zone=zone)[:2] == ({}, 3)
