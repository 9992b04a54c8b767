"""A zone going dark: replacements for its orphaned tasks avoid the zone for ``orphan_grace``, then may return."""

from __future__ import annotations

from collections import Counter

from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.scheduler.reconcile import ReconcileConfig

from .schedbox import Box

ZONES = {"a1": {"zone": "a"}, "a2": {"zone": "a"}, "b1": {"zone": "b"}, "b2": {"zone": "b"},
         "c1": {"zone": "c"}, "c2": {"zone": "c"}}


def zone_b_loses_a_node(grace: float) -> Box:
    """Six replicas spread over zones a, b, c (one per node); b1 is declared dead while b2 still looks alive."""
    box = Box(ZONES)
    box.config = ReconcileConfig(max_moves=2, orphan_grace=grace)
    box.create(ServiceSpec("web", "srv", replicas=6, spread="node.labels.zone"))
    box.settle(3)
    assert box.per_node("web") == Counter(dict.fromkeys(ZONES, 1))
    box.members["b1"] = "dead"
    box.round()
    box.round()
    return box


def zone_of(node: str) -> str:
    return ZONES[node]["zone"]


def test_replacements_avoid_a_zone_that_just_lost_tasks_during_the_grace():
    box = zone_b_loses_a_node(grace=5.0)
    assert len(box.running("web")) == 6
    assert box.per_node("web")["b2"] == 1  # b2 (maybe as dead as b1) got no replacement
    assert Counter(map(zone_of, box.per_node("web").elements())) in (Counter(a=3, b=1, c=2), Counter(a=2, b=1, c=3))


def test_without_the_grace_the_replacement_goes_back_to_the_zone():
    box = zone_b_loses_a_node(grace=0.0)
    assert box.per_node("web")["b2"] == 2  # the failure the grace prevents: the fewest tasks, so zone b again


def test_after_the_grace_spreading_uses_the_zone_again():
    box = zone_b_loses_a_node(grace=5.0)
    box.settle(8)  # past the grace (a round per second): rebalancing evens the zones out again
    assert Counter(map(zone_of, box.per_node("web").elements())) == Counter(a=2, b=2, c=2)
    assert box.per_node("web")["b2"] == 2


def test_tied_replacements_go_to_zones_that_lost_nothing():
    """Three of zone b's four nodes die: its three orphans still count there, so every zone holds four and the
    three replacements are a tie over all five zones. They go to three zones that lost nothing (least loaded
    first), never to b4, which may be as dead as its neighbours."""
    nodes = {f"{z}{i}": {"zone": z} for z in "abcde" for i in range(1, 5)}
    box = Box(nodes)
    box.config = ReconcileConfig(max_moves=2, orphan_grace=5.0)
    box.create(ServiceSpec("web", "srv", replicas=20, spread="node.labels.zone"))
    box.settle(3)
    assert box.per_node("web") == Counter(dict.fromkeys(nodes, 1))
    for dead in ("b1", "b2", "b3"):
        box.members[dead] = "dead"
    box.round()
    box.round()
    per_node = box.per_node("web")
    assert len(box.running("web")) == 20 and per_node["b4"] == 1
    zones = Counter(nodes[n]["zone"] for n in per_node.elements())
    assert zones["b"] == 1 and sorted(zones[z] for z in "acde") == [4, 5, 5, 5]
