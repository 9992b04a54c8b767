"""Autopilot grows the voter set only with members the leader hears from (the simulator's zone-outage bug).

A whole zone crashes at once; SWIM takes seconds to declare its members dead, and meanwhile a caught-up
learner of that zone still looks alive.  Promoting it made 6 voters of which 3 were dead: quorum gone for good.
"""

from __future__ import annotations

from p2pswarm.consensus.autopilot import Change, Peer, next_change
from p2pswarm.consensus.config import AutopilotConfig
from p2pswarm.consensus.progress import last_contacts
from p2pswarm.consensus.raft import LEADER

from .harness import CFG as RAFT_CFG
from .harness import Cluster

CFG = AutopilotConfig(stabilization_time=5.0, max_lag=10, interval=1.0, last_contact_threshold=1.0)
CRASH = 100.0
NOW = CRASH + 4.0
"""Four seconds after zone b crashed (the simulator's seed 8)."""


def decide(peers, voters, learners, heard, match=None):
    return next_change(NOW, peers, voters, learners, leader="a1", leader_since=0.0,
                       match=match or {x: 50 for x in learners}, last_contact=heard, last_index=50, config=CFG)


def zone_outage(learner_c_caught_up=True):
    """Voters a1 (leader), a2, b1, b2, c1; learners b3 (oldest member) and c3.  Zone b crashed at CRASH:
    SWIM has declared b1 dead already, b2 and b3 still look alive; the leader last heard from zone b then."""
    peers = [Peer("a1", "alive", "a", 1), Peer("a2", "alive", "a", 2), Peer("c1", "alive", "c", 3),
             Peer("b1", "dead", "b", 4, status_since=NOW - 0.5), Peer("b2", "alive", "b", 5),
             Peer("b3", "alive", "b", 0), Peer("c3", "alive", "c", 9)]
    heard = {p.id: (CRASH if p.zone == "b" else NOW - 0.1) for p in peers}
    match = {"b3": 50, "c3": 50 if learner_c_caught_up else 10}
    return peers, ["a1", "a2", "b1", "b2", "c1"], ["b3", "c3"], heard, match


def test_a_caught_up_learner_that_stopped_answering_is_not_promoted_a_healthy_one_is():
    peers, voters, learners, heard, match = zone_outage()
    # b3 ranks first (longest uptime) and is caught up, but silent for 4 s: c3 is promoted instead
    assert decide(peers, voters, learners, heard, match) == Change("promote", "c3", "4 live voters, target 5")
    # with c3 behind, nobody is promoted: b3 is never the fallback
    peers, voters, learners, heard, match = zone_outage(learner_c_caught_up=False)
    assert decide(peers, voters, learners, heard, match) is None
    # once the leader hears from b3 again (it was only slow), it is promotable
    heard["b3"] = NOW - 0.2
    assert decide(peers, voters, learners, heard, match) == Change("promote", "b3", "4 live voters, target 5")


def test_a_suspect_learner_is_not_promoted_even_if_it_answers_raft():
    peers, voters, learners, heard, match = zone_outage()
    peers = [p if p.id != "c3" else Peer("c3", "suspect", "c", 9, status_since=NOW - 0.3) for p in peers]
    assert decide(peers, voters, learners, heard, match) is None


def test_no_promotion_while_the_grown_majority_would_depend_on_silent_voters():
    peers, voters, learners, heard, match = zone_outage()
    heard["a2"] = CRASH  # a2 is silent too: healthy a1, c1, c3 are not a majority of 6 voters
    assert decide(peers, voters, learners, heard, match) is None


def test_a_failed_voter_is_removed_before_a_learner_is_promoted():
    peers, voters, learners, heard, match = zone_outage()
    peers = [p if p.id != "b1" else Peer("b1", "dead", "b", 4, status_since=NOW - 6.0) for p in peers]
    assert decide(peers, voters, learners, heard, match) == Change("remove", "b1", "voter dead")


def test_above_target_a_silent_voter_goes_before_the_worst_ranked_healthy_one():
    # 7 members: target 5, one voter too many (a member that was down came back); v1 ranks best but is silent
    peers = [Peer(f"v{i}", "alive", "abc"[i % 3], i) for i in range(7)]
    voters, learners = [f"v{i}" for i in range(6)], ["v6"]
    heard = {p.id: NOW for p in peers} | {"v1": CRASH}
    change = next_change(NOW, peers, voters, learners, leader="v0", leader_since=0.0, match={"v6": 50},
                         last_contact=heard, last_index=50, config=CFG)
    assert change == Change("remove", "v1", "6 live voters, target 5")


def test_the_raft_core_records_when_the_leader_last_heard_from_each_follower():
    c = Cluster(["a", "b", "c", "d", "e"])
    c.elect("a")
    c.advance(0.5)
    heard = last_contacts(c.nodes["a"].progress)
    assert heard["b"] >= c.now - RAFT_CFG.heartbeat_interval and heard["c"] >= c.now - RAFT_CFG.heartbeat_interval
    c.crash("c")
    c.advance(2.0)
    heard = last_contacts(c.nodes["a"].progress)
    assert c.now - heard["c"] >= 2.0 - 1e-9 and c.now - heard["b"] <= RAFT_CFG.heartbeat_interval
    c.nodes["a"].transfer_leadership(c.now, "b")
    c.flush()
    c.deliver()
    assert c.nodes["b"].role == LEADER  # a new leader has heard from c never: a crashed follower never looks fresh
    assert "c" not in last_contacts(c.nodes["b"].progress) and "a" in last_contacts(c.nodes["b"].progress)
