"""Autopilot keeps the Raft group small: a handful of zone-spread learners; everyone else is a worker."""

from __future__ import annotations

from p2pswarm.consensus.autopilot import Peer, next_change
from p2pswarm.consensus.config import AutopilotConfig

NOW = 100.0


def heard(peers):
    """The leader heard from every member just now."""
    return {p.id: NOW for p in peers}


def converge(peers, voters, learners, config, rounds=500):
    """Apply autopilot's changes (every learner caught up) until it has none: the configuration it keeps."""
    voters, learners = list(voters), list(learners)
    for _ in range(rounds):
        change = next_change(NOW, peers, voters, learners, leader=voters[0], leader_since=0.0,
                             match={n: 50 for n in learners}, last_contact=heard(peers), last_index=50,
                             config=config)
        if change is None:
            return voters, learners
        if change.op == "add_learner":
            learners.append(change.node)
        elif change.op == "promote":
            learners.remove(change.node)
            voters.append(change.node)
        else:
            (voters if change.node in voters else learners).remove(change.node)
    raise AssertionError("autopilot did not settle")


def fleet(n, zones):
    return [Peer(f"n{i:03d}", "alive", zones[i % len(zones)], started_ms=i) for i in range(n)]


def test_a_hundred_nodes_keep_five_voters_and_the_configured_learners():
    peers = fleet(100, "abcde")
    voters, learners = converge(peers, ["n000"], [], AutopilotConfig(stabilization_time=0.0))
    assert len(voters) == 5 and len(learners) == 4  # the default: a handful, not every node
    assert len({p.zone for p in peers if p.id in voters}) == 5  # one voter per zone
    small = AutopilotConfig(stabilization_time=0.0, max_learners=1)
    voters, learners = converge(peers, ["n000"], [], small)
    assert len(voters) == 5 and len(learners) == 1


def test_learners_spread_over_the_zones_the_voters_leave_uncovered():
    # 6 members: 3 voters in zones a, b, c; the learners go to d and e, not to the longest-running x1 (zone a)
    peers = [Peer("v1", "alive", "a"), Peer("v2", "alive", "b"), Peer("v3", "alive", "c"),
             Peer("x1", "alive", "a", 0), Peer("d1", "alive", "d", 50), Peer("e1", "alive", "e", 60)]
    cfg = AutopilotConfig(stabilization_time=0.0, max_learners=2)
    voters, learners = converge(peers, ["v1", "v2", "v3"], [], cfg)
    assert voters == ["v1", "v2", "v3"] and sorted(learners) == ["d1", "e1"]


def test_a_learner_in_a_covered_zone_makes_room_for_an_uncovered_zone():
    peers = [Peer("v1", "alive", "a"), Peer("v2", "alive", "b"), Peer("v3", "alive", "c"),
             Peer("l1", "alive", "a", 1), Peer("z1", "alive", "z", 99)]
    cfg = AutopilotConfig(stabilization_time=0.0, max_learners=1)
    change = next_change(NOW, peers, ["v1", "v2", "v3"], ["l1"], leader="v1", leader_since=0.0,
                         match={"l1": 50}, last_contact=heard(peers), last_index=50, config=cfg)
    assert change is not None and (change.op, change.node) == ("remove", "l1")
    voters, learners = converge(peers, ["v1", "v2", "v3"], ["l1"], cfg)
    assert learners == ["z1"]


def test_a_lowered_cap_removes_the_surplus_learners():
    peers = fleet(10, "ab")
    cfg = AutopilotConfig(stabilization_time=0.0, max_learners=1)
    voters, learners = converge(peers, ["n000", "n001", "n002", "n003", "n004"],
                                ["n005", "n006", "n007", "n008"], cfg)
    assert len(voters) == 5 and len(learners) == 1


def test_without_learners_a_dead_voter_is_still_replaced():
    peers = [Peer(f"n{i}", "alive", "", i) for i in range(8)]
    peers[3] = Peer("n3", "dead", "", 3, status_since=0.0)
    cfg = AutopilotConfig(stabilization_time=1.0, max_learners=0)
    voters, learners = converge(peers, ["n0", "n1", "n2", "n3", "n4"], [], cfg)
    assert "n3" not in voters and len(voters) == 5 and learners == []
