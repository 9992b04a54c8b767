"""Placement: even spreading, zones, constraints, resources, stable plans, global mode, bounded rebalancing."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.scheduler.flow import Room, solve
from p2pswarm.scheduler.placement import Demand, NodeInfo, Plan, plan

GiB = 1 << 30


def nodes(n: int = 3, zones: str = "", **kw) -> list[NodeInfo]:
    return [NodeInfo(f"n{i}", f"n{i}", {"zone": zones[i - 1]} if zones else {}, **kw) for i in range(1, n + 1)]


def spread_of(p: Plan, service: str = "web") -> Counter:
    return Counter(node for s, node in p.place if s == service)


def existing(*nodes_: str, service: str = "web") -> tuple[tuple[str, str], ...]:
    return tuple((f"{service}-{i}", node) for i, node in enumerate(nodes_))


def after(p: Plan, tasks: tuple[tuple[str, str], ...], service: str = "web") -> Counter:
    """Tasks per node once the plan is carried out."""
    stopped = {t for t, _ in p.stop}
    return Counter(n for t, n in tasks if t not in stopped) + spread_of(p, service)


@pytest.mark.parametrize("replicas,expected", [(6, [2, 2, 2]), (7, [3, 2, 2]), (2, [1, 1, 0]), (0, [0, 0, 0])])
def test_replicas_spread_evenly(replicas, expected):
    p = plan(nodes(3), [Demand(ServiceSpec("web", "x", replicas=replicas))])
    assert sorted(spread_of(p).values(), reverse=True) + [0] * (3 - len(spread_of(p))) == expected
    assert not p.unplaced and not p.stop


def test_zones_are_spread_before_nodes():
    # zone a has one node, zone b three: Docker-style spreading gives each zone half
    p = plan(nodes(4, zones="abbb"), [Demand(ServiceSpec("web", "x", replicas=4, spread="node.labels.zone"))])
    assert spread_of(p)["n1"] == 2 and sum(spread_of(p).values()) == 4
    assert max(spread_of(p)[n] for n in ("n2", "n3", "n4")) == 1


def test_nodes_without_the_spread_label_are_a_group_of_their_own():
    ns = nodes(2, zones="aa") + [NodeInfo("n3", "n3", {})]
    p = plan(ns, [Demand(ServiceSpec("web", "x", replicas=4, spread="node.labels.zone"))])
    assert spread_of(p)["n3"] == 2


def test_constraints_choose_nodes():
    p = plan(nodes(4, zones="abab"), [Demand(ServiceSpec("web", "x", replicas=4,
                                                         constraints=["node.labels.zone==a", "node.name!=n3"]))])
    assert spread_of(p) == Counter({"n1": 4})


def test_unsatisfiable_constraint_is_explained():
    p = plan(nodes(3, zones="aab"), [Demand(ServiceSpec("web", "x", replicas=2, constraints=["node.labels.zone==c"]))])
    assert p.unplaced == {"web": (2, "no node satisfies node.labels.zone==c")}
    contradiction = ServiceSpec("db", "x", constraints=["node.labels.zone==a", "node.labels.zone==b"])
    assert plan(nodes(3, zones="aab"), [Demand(contradiction)]).unplaced["db"] == (
        1, "no node satisfies all of node.labels.zone==a, node.labels.zone==b")


def test_memory_and_cpu_reservations_limit_tasks_per_node():
    spec = ServiceSpec("web", "x", replicas=8, reserve_memory=GiB // 2)
    p = plan(nodes(3, memory=GiB), [Demand(spec)])
    assert spread_of(p) == Counter({"n1": 2, "n2": 2, "n3": 2})
    assert p.unplaced == {"web": (2, "insufficient memory on all 3 eligible nodes")}
    cpu = plan(nodes(2, cpu=1.0), [Demand(ServiceSpec("web", "x", replicas=5, reserve_cpu=0.4))])
    assert cpu.unplaced == {"web": (1, "insufficient cpu on all 2 eligible nodes")}
    both = plan(nodes(1, cpu=1.0, memory=GiB), [Demand(ServiceSpec("web", "x", replicas=2, reserve_cpu=1,
                                                                     reserve_memory=GiB))])
    assert both.unplaced == {"web": (1, "insufficient cpu and memory on all 1 eligible nodes")}


def test_services_share_node_resources():
    a = ServiceSpec("a", "x", replicas=2, reserve_memory=GiB)
    b = ServiceSpec("b", "x", replicas=2, reserve_memory=GiB)
    p = plan(nodes(3, memory=GiB), [Demand(b), Demand(a)])
    assert len(p.place) == 3 and len(set(n for _, n in p.place)) == 3
    assert p.unplaced == {"b": (1, "insufficient memory on all 3 eligible nodes")}
    reserved = plan(nodes(3, memory=GiB), [Demand(a)], reserved={"n1": (0.0, GiB)})
    assert "n1" not in spread_of(reserved, "a")


def test_running_tasks_are_kept_and_new_ones_fill_the_gaps():
    tasks = existing("n1", "n1", "n1")
    p = plan(nodes(3), [Demand(ServiceSpec("web", "x", replicas=5), tasks)])
    assert not p.stop
    assert spread_of(p) == Counter({"n2": 1, "n3": 1})


def test_scale_down_stops_tasks_from_the_fullest_nodes():
    tasks = existing("n1", "n1", "n1", "n2", "n3")
    p = plan(nodes(3), [Demand(ServiceSpec("web", "x", replicas=3), tasks)])
    assert not p.place and {r for _, r in p.stop} == {"scaled down"}
    assert after(p, tasks) == Counter({"n1": 1, "n2": 1, "n3": 1})
    assert [t for t, _ in p.stop] == ["web-1", "web-2"]  # the least worth keeping go first


def test_tasks_on_drained_down_or_ineligible_nodes_move():
    ns = [NodeInfo("n1", availability="drain"), NodeInfo("n2", labels={"zone": "b"}), NodeInfo("n4")]
    tasks = existing("n1", "n2", "n3", "n4")
    spec = ServiceSpec("web", "x", replicas=4, constraints=["node.labels.zone!=b"])
    p = plan(ns, [Demand(spec, tasks)])
    assert dict(p.stop) == {"web-0": "node n1 is drained", "web-1": "node n2 does not satisfy node.labels.zone!=b",
                            "web-2": "node n3 is down"}
    assert spread_of(p) == Counter({"n4": 3})


def test_paused_nodes_keep_their_tasks_but_get_no_new_ones():
    ns = [NodeInfo("n1", availability="pause"), NodeInfo("n2")]
    tasks = existing("n1")
    p = plan(ns, [Demand(ServiceSpec("web", "x", replicas=3), tasks)])
    assert not p.stop and spread_of(p) == Counter({"n2": 2})
    none = plan([NodeInfo("n1", availability="pause"), NodeInfo("n2", availability="drain")],
                [Demand(ServiceSpec("web", "x"))])
    assert none.unplaced == {"web": (1, "no active node (all 2 up nodes are drained or paused)")}
    assert plan([], [Demand(ServiceSpec("web", "x"))]).unplaced == {"web": (1, "no node is up")}


def test_global_mode_runs_one_task_per_eligible_node():
    spec = ServiceSpec("agent", "x", mode="global", constraints=["node.labels.zone==a"])
    ns = nodes(4, zones="aaab")
    tasks = existing("n1", "n1", "n4", service="agent")
    p = plan(ns, [Demand(spec, tasks, hold=frozenset({"n3"}))])
    assert spread_of(p, "agent") == Counter({"n2": 1})  # n3 waits for its restart delay
    assert dict(p.stop) == {"agent-1": "one task per node", "agent-2": "node n4 does not satisfy node.labels.zone==a"}
    small = plan(nodes(2, memory=GiB), [Demand(ServiceSpec("agent", "x", mode="global", reserve_memory=2 * GiB))])
    assert small.unplaced == {"agent": (2, "insufficient memory on 2 eligible nodes (n1, n2)")}


def test_rebalancing_moves_at_most_max_moves_and_converges():
    tasks = existing("n1", "n1", "n1", "n2", "n2", "n2")
    spec = ServiceSpec("web", "x", replicas=6)
    rounds = 0
    while True:
        p = plan(nodes(3), [Demand(spec, tasks, rebalance=True)], max_moves=1)
        assert p.moves <= 1 and len(p.stop) == len(p.place) == p.moves
        if not p.moves:
            break
        stopped = {t for t, _ in p.stop}
        tasks = tuple((t, n) for t, n in tasks if t not in stopped) + tuple(
            (f"new{rounds}", n) for _, n in p.place)
        rounds += 1
    assert rounds == 2 and Counter(n for _, n in tasks) == Counter({"n1": 2, "n2": 2, "n3": 2})


def test_rebalancing_budget_is_shared_and_services_may_opt_out():
    a = Demand(ServiceSpec("a", "x", replicas=4), existing("n1", "n1", "n1", "n1", service="a"), rebalance=True)
    b = Demand(ServiceSpec("b", "x", replicas=4), existing("n1", "n1", "n1", "n1", service="b"), rebalance=True)
    p = plan(nodes(4), [a, b], max_moves=3)
    assert p.moves == 3
    opted_out = Demand(ServiceSpec("a", "x", replicas=4, rebalance=False), a.tasks, rebalance=False)
    assert plan(nodes(4), [opted_out], max_moves=3).moves == 0
    assert plan(nodes(4), [a], max_moves=0).moves == 0


def test_a_balanced_service_is_left_alone():
    tasks = existing("n1", "n1", "n2", "n3")  # 4 on 3 nodes: as even as it gets
    assert plan(nodes(3), [Demand(ServiceSpec("web", "x", replicas=4), tasks, rebalance=True)], max_moves=5) == \
        Plan((), (), {}, 0)


def test_plans_are_deterministic():
    spec = ServiceSpec("web", "x", replicas=11, spread="node.labels.zone")
    ns = nodes(6, zones="aabbcc")
    first = plan(ns, [Demand(spec)])
    assert plan(list(reversed(ns)), [Demand(spec)]) == first


def test_flow_aggregates_alike_nodes():
    rooms = [Room(f"n{i}", 0, 100, zone="a" if i < 500 else "b") for i in range(1000)]
    counts, unplaced, _ = solve(rooms, 1500, spread=True)
    assert unplaced == 0 and set(counts.values()) <= {1, 2} and sum(counts.values()) == 1500


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6), st.sampled_from("abc")), min_size=1, max_size=8),
       st.integers(0, 20), st.booleans(), st.booleans())
def test_leaving_out_unused_levels_never_changes_the_optimum(nodes_, demand, spread, stable):
    rooms = [Room(f"n{i}", keep, room, zone) for i, (keep, room, zone) in enumerate(nodes_)]
    tight = solve(rooms, demand, spread=spread, stable=stable)
    loose = solve(rooms, demand, spread=spread, stable=stable, tight=False)
    assert tight[1:] == loose[1:]  # same unplaced count, same optimal cost
    assert sum(tight[0].values()) == demand - tight[1]
