"""Autopilot worked examples: one view in, the one change a leader should make out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pswarm.consensus.autopilot import Change, Peer, _View, next_change, target_voters
from p2pswarm.consensus.config import AutopilotConfig

CFG = AutopilotConfig(stabilization_time=5.0, max_lag=10, interval=0.5)
NOW = 100.0


def peer(node, status="alive", zone="", started=0, since=0.0):
    return Peer(node, status, zone, started, since)


def decide(peers, voters, learners=(), match=None, last=50, leader="a", leader_since=0.0, pending=False,
           heard=None):
    """``heard``: when the leader last heard from each member (default: everyone just now)."""
    return next_change(NOW, peers, voters, learners, leader=leader, leader_since=leader_since,
                       match=match or {}, last_contact={p.id: NOW for p in peers} if heard is None else heard,
                       last_index=last, config=CFG, pending=pending)


@pytest.mark.parametrize("members,target", [(1, 1), (2, 1), (3, 3), (6, 3), (7, 5), (50, 5)])
def test_target_voters(members, target):
    assert target_voters(members) == target


def test_two_nodes_keep_one_voter_but_the_other_becomes_a_learner():
    peers = [peer("a"), peer("b")]
    assert decide(peers, ["a"]) == Change("add_learner", "b", "1 live voters, target 1")
    assert decide(peers, ["a"], ["b"], match={"b": 50}) is None


def test_learners_are_capped():
    peers = [peer(n) for n in "abcde"]  # e stays out: one learner already
    small = AutopilotConfig(stabilization_time=5.0, max_lag=10, max_learners=1)
    assert next_change(NOW, peers, ["a", "b", "c"], ["d"], leader="a", leader_since=0.0, match={"d": 0},
                       last_contact={}, last_index=50, config=small) is None


def test_third_node_learner_is_promoted_only_when_caught_up_and_stable():
    peers = [peer("a"), peer("b", since=0.0), peer("c", since=0.0)]
    # c is far behind (match 10, last 50, lag allowed 10): not yet
    assert decide(peers, ["a", "b"], ["c"], match={"c": 10}) is None
    assert decide(peers, ["a", "b"], ["c"], match={"c": 40}).op == "promote"
    # caught up but alive for only 2 s of the required 5
    young = [peer("a"), peer("b"), peer("c", since=NOW - 2.0)]
    assert decide(young, ["a", "b"], ["c"], match={"c": 50}) is None


def test_one_change_at_a_time():
    assert decide([peer("a"), peer("b"), peer("c")], ["a"], pending=True) is None


def test_zones_first_then_uptime_then_id():
    peers = [peer("a", zone="z1"), peer("b", zone="z1", started=1), peer("c", zone="z2", started=9),
             peer("d", zone="z2", started=5), peer("e", started=0)]
    # voters a (z1); the first new zone is z2; inside it, d started earlier than c
    assert decide(peers, ["a"], []).node == "d"
    # with uptime equal, the id decides
    same = [peer("a"), peer("x", started=3), peer("m", started=3), peer("q", started=3)]
    assert decide(same, ["a"], []).node == "m"


def test_dead_voter_is_replaced_learner_promoted_first_then_the_dead_one_removed():
    peers = [peer(n) for n in "abcdefg"]
    voters = ["a", "b", "c", "d", "e"]
    dead = [p if p.id != "c" else peer("c", "dead", since=NOW - 1.0) for p in peers]
    # c just died: f (best non-member) becomes a learner at once...
    assert decide(dead, voters) == Change("add_learner", "f", "4 live voters, target 5")
    # ...and is promoted once caught up (its own stability is long established)
    assert decide(dead, voters, ["f"], match={"f": 50}).op == "promote"
    # c dead for 1 s only: not removed yet
    assert decide(dead, voters + ["f"], ["g"], match={"g": 50}) is None
    long_dead = [p if p.id != "c" else peer("c", "dead", since=NOW - 6.0) for p in peers]
    assert decide(long_dead, sorted(voters + ["f"]), ["g"], match={"g": 50}) == Change("remove", "c", "voter dead")


def test_a_member_that_left_is_removed_at_once():
    peers = [peer("a"), peer("b"), peer("c", "left", since=NOW)]
    assert decide(peers, ["a", "b", "c"]) == Change("remove", "c", "voter left")


def test_never_remove_a_voter_if_that_loses_quorum():
    # 5 voters, 3 dead long ago: live a, b are not a majority of the 4 that would remain
    peers = [peer("a"), peer("b")] + [peer(n, "dead", since=0.0) for n in "cde"]
    assert decide(peers, ["a", "b", "c", "d", "e"]) is None
    # 3 voters, 1 dead: removing it leaves a, b: 2 live of 2
    peers = [peer("a"), peer("b"), peer("c", "dead", since=0.0)]
    assert decide(peers, ["a", "b", "c"]) == Change("remove", "c", "voter dead")


def test_suspect_voter_is_neither_removed_nor_replaced():
    peers = [peer("a"), peer("b"), peer("c", "suspect", since=0.0), peer("d")]
    assert decide(peers, ["a", "b", "c"], ["d"], match={"d": 50}) is None


def test_unknown_voter_is_removed_only_after_the_leader_waited_the_stabilization_time():
    peers = [peer("a"), peer("b")]  # c is in the config but SWIM has never heard of it
    assert decide(peers, ["a", "b", "c"], leader_since=NOW - 1.0) is None
    assert decide(peers, ["a", "b", "c"], leader_since=NOW - 10.0) == Change("remove", "c", "voter unknown")


def test_shrinks_when_members_left_but_never_removes_the_leader():
    peers = [peer(n, started=i) for i, n in enumerate("abcde")] + [peer(n, "left") for n in "fgh"]
    # 5 members not left -> target 3; the leader e is kept, the youngest other voter goes
    change = decide(peers, ["a", "b", "c", "d", "e"], leader="e")
    assert change == Change("remove", "d", "5 live voters, target 3")


def test_dead_learner_is_dropped():
    peers = [peer("a"), peer("b", "dead", since=0.0)]
    assert decide(peers, ["a"], ["b"]) == Change("remove", "b", "learner dead")


def test_no_decision_when_this_leader_is_not_a_voter():
    assert decide([peer("a"), peer("b")], ["b"], ["a"]) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "a", "b", "c", "d"]), st.integers(0, 5)), min_size=1, max_size=25),
       st.sets(st.sampled_from(["", "a", "b", "c"]), max_size=3))
def test_ranking_is_the_greedy_order_new_zones_then_uptime_then_id(shapes, chosen_zones):
    """The one-pass ranking equals choosing, step by step, the best node by (zone already chosen or unset, start
    time, id) and counting its zone as chosen."""
    peers = [peer(f"n{i:02d}", zone=zone, started=started) for i, (zone, started) in enumerate(shapes)]
    chosen = [peer(f"c{i}", zone=z) for i, z in enumerate(sorted(chosen_zones))]
    view = _View(NOW, {p.id: p for p in peers + chosen}, "leader", 0.0, CFG, {})
    zones, left, greedy = {z for z in chosen_zones if z}, [p.id for p in peers], []
    while left:
        best = min(left, key=lambda n: (view.zone(n) in zones or view.zone(n) == "", view._started(n), n))
        greedy.append(best)
        left.remove(best)
        zones.add(view.zone(best))
    assert view.rank([p.id for p in peers], [c.id for c in chosen]) == greedy


def test_a_late_zone_gets_a_voter_once_its_learner_is_ready():
    zones = {"a": "z0", "b": "z0", "c": "z0", "d": "z2", "e": "z2", "f": "z1", "g": "z1"}
    peers = [peer(n, zone=z, started=i) for i, (n, z) in enumerate(zones.items())]
    voters, learners = ["a", "b", "c", "d", "e"], ["f", "g"]
    late = {"f": 50, "g": 50}
    swap = decide(peers, voters, learners, match=late)
    assert swap == Change("remove", "e", "voter zone z2 is covered; learner f of zone z1 is not")
    voters.remove(swap.node)
    assert decide(peers, voters, learners, match=late) == Change("promote", "f", "4 live voters, target 5")
    voters.append("f")
    assert decide(peers, voters, ["g"], match=late) == Change("add_learner", "e", "5 live voters, target 5")
    late["e"] = 50
    assert decide(peers, voters, ["g", "e"], match=late) is None  # every zone has a voter: nothing more to swap
    # not while the learner is behind or was not alive long enough, nor when no zone has two voters
    assert decide(peers, ["a", "b", "c", "d", "e"], learners, match={"f": 1, "g": 1}) is None
    fresh = [p if p.id not in "fg" else peer(p.id, zone=p.zone, since=NOW - 1) for p in peers]
    assert decide(fresh, ["a", "b", "c", "d", "e"], learners, match=late) is None
