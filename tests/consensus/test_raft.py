"""Scenario tests of the pure Raft core (paper sections cited where they apply)."""

import dataclasses

import pytest

from p2pswarm.consensus.messages import AppendEntries, Heartbeat, InstallSnapshot, RequestVote, TimeoutNow
from p2pswarm.consensus.raft import CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE, ConfChangeRejected, NotLeader, Raft

from .harness import CFG, Cluster

ABC = ["a", "b", "c"]


def normal(entries):
    return [e.data for e in entries if e.kind == "normal"]


def test_elects_one_leader_and_replicates():
    c = Cluster(ABC)
    c.advance(3.0)
    leader = c.leader()
    for k in range(10):
        c.propose(b"x%d" % k)
    c.advance(0.3)
    for nid in ABC:
        assert normal(c.applied[nid]) == [b"x%d" % k for k in range(10)]
    assert leader.log.entry(2).kind == "noop"  # a leader opens its term with a no-op
    assert leader.status(c.now)["progress"]["b"]["match"] == leader.log.last_index()


def test_single_voter_commits_at_once():
    c = Cluster(["solo"])
    c.elect("solo")
    index, term = c.propose(b"only")
    assert c.nodes["solo"].log.committed == index
    assert normal(c.applied["solo"]) == [b"only"]


def test_follower_refuses_proposals_with_leader_hint():
    c = Cluster(ABC)
    c.elect("a")
    with pytest.raises(NotLeader) as info:
        c.nodes["b"].propose(c.now, b"x")
    assert info.value.leader_hint == "a"


def test_prevote_keeps_a_partitioned_node_from_disrupting_the_leader():
    """Thesis §9.6: an isolated node never raises its term, so rejoining costs nothing."""
    c = Cluster(ABC)
    c.elect("a")
    term = c.nodes["a"].term
    c.isolate("c")
    c.advance(5.0)
    assert c.nodes["c"].term == term and c.nodes["c"].role in (FOLLOWER, PRE_CANDIDATE)
    c.heal()
    c.advance(2.0)
    assert c.leaders() == ["a"] and c.nodes["a"].term == term


def test_without_prevote_a_rejoining_node_deposes_the_leader():
    cfg = CFG.with_changes(pre_vote=False, check_quorum=False)
    c = Cluster(ABC, cfg=cfg)
    c.elect("a")
    term = c.nodes["a"].term
    c.isolate("c")
    c.advance(5.0)
    assert c.nodes["c"].term > term + 1
    c.heal()
    c.advance(3.0)
    assert c.nodes["a"].term > term  # the old leader was disrupted (this is what PreVote prevents)


def test_lease_ignores_vote_requests_while_leader_is_alive():
    c = Cluster(ABC)
    c.elect("a")
    b = c.nodes["b"]
    b.step(c.now, RequestVote(b.term + 5, "c", 100, b.term + 4))
    assert b.term < b.term + 5 and b.vote != "c" and not b.has_ready()


def test_check_quorum_makes_an_isolated_leader_step_down():
    c = Cluster(ABC)
    c.elect("a")
    c.isolate("a")
    c.advance(CFG.election_timeout * 2.5)
    assert c.nodes["a"].role == FOLLOWER
    with pytest.raises(NotLeader):
        c.nodes["a"].propose(c.now, b"x")


def test_without_check_quorum_an_isolated_leader_stays():
    c = Cluster(ABC, cfg=CFG.with_changes(check_quorum=False))
    c.elect("a")
    c.isolate("a")
    c.advance(CFG.election_timeout * 3)
    assert c.nodes["a"].role == LEADER


def test_candidate_with_stale_log_loses():
    """§5.4.1: votes go only to candidates whose log is at least as up to date."""
    c = Cluster(ABC, cfg=CFG.with_changes(pre_vote=False, check_quorum=False))
    c.elect("a")
    c.cut = {("a", "c")}
    c.propose(b"only-a-and-b")
    c.heal()
    c.crash("a")
    c.nodes["c"]._election_due = c.now
    c.nodes["c"].tick(c.now)
    c.flush()
    c.deliver()
    assert c.nodes["c"].role in (CANDIDATE, FOLLOWER)
    assert c.nodes["c"].role != LEADER
    c.elect("b")


def _figure8(core):
    """Raft paper Figure 8, scripted: (a) s1 replicates X to s2 only; (b) s5 wins with s3, s4 and
    writes its own entry at X's index; (c) s1 returns, wins, and gets X onto s3 (a majority) while
    its own-term no-op reaches only s2; (d) s1 fails, s5 wins again and overwrites X."""
    cfg = CFG.with_changes(pre_vote=False, check_quorum=False, max_batch_entries=1)
    ids = ["s1", "s2", "s3", "s4", "s5"]
    c = Cluster(ids, cfg=cfg, core=core)
    c.elect("s1")
    c.advance(0.3)
    i = c.nodes["s1"].log.last_index() + 1
    c.cut = {("s1", x) for x in ("s3", "s4", "s5")}
    c.propose(b"X")                                                   # (a)
    assert c.nodes["s2"].log.term(i) == c.nodes["s1"].term
    c.crash("s1")
    c.heal()
    s5 = c.nodes["s5"]
    s5._election_due = c.now
    s5.tick(c.now)
    c.flush()
    c.deliver(drop=lambda src, dst, m: src == "s5" and isinstance(m, AppendEntries))  # (b)
    assert s5.role == LEADER and s5.log.term(i) == s5.term and s5.log.entry(i).data == b""
    c.crash("s5")
    c.queue.clear()
    c.restart("s1")
    c.cut = {("s1", "s4"), ("s1", "s5")}
    s1 = c.nodes["s1"]

    def rewrite(src, dst, m):  # s3 receives X but never the new leader's own entries
        if dst == "s3" and isinstance(m, AppendEntries):
            return dataclasses.replace(m, entries=tuple(e for e in m.entries if e.term != s1.term))
        return m
    for _ in range(3):  # the first try may be in a term s3 already voted in; it then learns the term
        s1._election_due = c.now
        s1.tick(c.now)
        c.flush()
        c.deliver(rewrite=rewrite)                                    # (c)
        if s1.role == LEADER:
            break
    assert s1.role == LEADER and c.nodes["s3"].log.term(i) == c.nodes["s2"].log.term(i) < s1.term
    x_committed_by_s1 = s1.log.committed >= i
    c.crash("s1")
    c.queue.clear()
    c.heal()
    c.restart("s5")
    for _ in range(3):                                                # (d)
        c.nodes["s5"]._election_due = c.now
        c.nodes["s5"].tick(c.now)
        c.flush()
        c.deliver()
    assert c.leaders() == ["s5"]
    c.advance(0.5)
    return c, i, x_committed_by_s1


def test_figure8_old_term_entry_is_not_committed_by_counting():
    c, i, x_committed = _figure8(Raft)
    assert not x_committed
    winners = {c.nodes[n].log.entry(i).data for n in ("s2", "s3", "s4", "s5")}
    assert winners == {b""}  # X was overwritten, which is fine: it never was committed
    assert all(e.data != b"X" for n in c.applied for e in c.applied[n] if e.index == i)


def test_figure8_commit_by_counting_loses_a_committed_entry():
    class Counting(Raft):
        def _commit_term_ok(self, index):
            return True
    c, i, x_committed = _figure8(Counting)
    assert x_committed  # s1 believed X committed (and applied it) ...
    applied_at_i = {e.data for n in c.applied for e in c.applied[n] if e.index == i}
    assert applied_at_i == {b"X", b""}  # ... yet the cluster committed something else there


def test_conflicting_suffix_is_overwritten():
    """§5.3: the leader forces followers' logs to duplicate its own."""
    c = Cluster(ABC)
    c.elect("a")
    c.isolate("a")
    for k in range(5):
        c.nodes["a"].propose(c.now, b"lost%d" % k)
    c.flush()
    c.advance(3.0)  # a loses its quorum and steps down; b or c takes over
    leader = c.leader()
    assert leader.id != "a"
    for k in range(3):
        c.propose(b"kept%d" % k)
    c.heal()
    c.advance(1.0)
    logs = {n: [(e.index, e.term, e.data) for e in c.nodes[n].log.entries] for n in ABC}
    assert logs["a"] == logs["b"] == logs["c"]
    assert b"lost0" not in [d for _, _, d in logs["a"]]
    rejects = [m for s, d, m in c.sent if d == leader.id and getattr(m, "reject", False)]
    assert len(rejects) <= 3  # the conflict hint skips the whole stale term at once


def test_lagging_follower_gets_a_snapshot():
    c = Cluster(ABC)
    c.elect("a")
    c.crash("c")
    for k in range(30):
        c.propose(b"v%d" % k)
    c.compact("a")
    a = c.nodes["a"]
    assert a.log.snap_index == a.log.committed and not a.log.entries
    c.restart("c")
    c.advance(1.0)
    sent = [m for s, d, m in c.sent if d == "c" and isinstance(m, InstallSnapshot)]
    assert sent and c.restored["c"][-1].data == b"state@%d" % a.log.snap_index
    c.propose(b"after")
    c.advance(0.2)
    assert normal(c.applied["c"])[-1] == b"after"
    assert c.disks["c"].snapshot.index == a.log.snap_index


def test_restart_keeps_term_vote_and_log():
    c = Cluster(ABC)
    c.elect("a")
    c.propose(b"x")
    term, last = c.nodes["b"].term, c.nodes["b"].log.last_index()
    c.crash("b")
    c.restart("b")
    b = c.nodes["b"]
    assert (b.term, b.vote, b.log.last_index()) == (term, "a", last)
    assert normal(c.applied["b"]) == [b"x"]  # committed entries are re-applied after a restart


def test_learner_receives_the_log_but_never_votes_or_counts():
    c = Cluster(ABC)
    c.add_node("d")
    c.elect("a")
    c.nodes["a"].propose_conf_change(c.now, "add_learner", "d")
    c.flush()
    c.deliver()
    c.advance(0.3)
    d = c.nodes["d"]
    assert d.conf.learners == ("d",) and not d.promotable()
    c.cut = {("a", "b"), ("a", "c")}
    index, _ = c.nodes["a"].propose(c.now, b"needs-a-voter")
    c.flush()
    c.deliver()
    assert c.nodes["d"].log.last_index() >= index and c.nodes["a"].log.committed < index
    c.heal()
    c.advance(0.3)
    c.isolate("a")
    d._election_due = c.now
    d.tick(c.now)
    assert d.role == FOLLOWER  # learners do not campaign
    c.heal()
    c.advance(0.5)
    c.nodes[c.leaders()[0]].propose_conf_change(c.now, "promote", "d")
    c.flush()
    c.advance(0.5)
    for n in "abcd":
        assert c.nodes[n].conf.voters == ("a", "b", "c", "d") and c.nodes[n].conf.learners == ()


def test_one_membership_change_at_a_time():
    c = Cluster(ABC)
    c.add_node("d")
    c.add_node("e")
    c.elect("a")
    a = c.nodes["a"]
    c.cut = {("a", "b"), ("a", "c")}
    a.propose_conf_change(c.now, "add_learner", "d")
    with pytest.raises(ConfChangeRejected):
        a.propose_conf_change(c.now, "add_learner", "e")
    with pytest.raises(ConfChangeRejected):
        a.propose_conf_change(c.now, "remove", "zz")


def test_removed_leader_steps_down_after_commit():
    c = Cluster(ABC)
    c.elect("a")
    c.nodes["a"].propose_conf_change(c.now, "remove", "a")
    c.flush()
    c.deliver()
    assert c.nodes["a"].role == FOLLOWER and not c.nodes["a"].promotable()
    c.crash("a")
    c.advance(3.0)
    leader = c.leader()
    assert leader.id in ("b", "c") and leader.conf.voters == ("b", "c")


def test_leadership_transfer():
    c = Cluster(ABC)
    c.elect("a")
    c.crash("c")
    for k in range(5):
        c.propose(b"v%d" % k)
    c.restart("c")
    term = c.nodes["a"].term
    c.nodes["a"].transfer_leadership(c.now, "c")
    with pytest.raises(NotLeader):
        c.nodes["a"].propose(c.now, b"during-transfer")
    c.flush()
    c.advance(0.3)  # heartbeats let c catch up; far less than an election timeout
    assert c.leaders() == ["c"] and c.nodes["c"].term == term + 1
    assert any(isinstance(m, TimeoutNow) for _, d, m in c.sent if d == "c")


def test_transfer_aborts_when_target_is_gone():
    c = Cluster(ABC)
    c.elect("a")
    c.crash("c")
    c.nodes["a"].transfer_leadership(c.now, "c")
    c.flush()
    c.advance(CFG.election_timeout * 1.5)
    assert c.leaders() == ["a"]
    c.propose(b"works-again")


def test_read_index_waits_for_a_quorum_heartbeat():
    c = Cluster(ABC)
    c.elect("a")
    c.propose(b"x")
    a = c.nodes["a"]
    a.read_index(c.now, 7)
    c.flush()
    assert c.reads["a"] == []  # not before a quorum confirmed we are still the leader
    c.deliver()
    assert [(r.request, r.index) for r in c.reads["a"]] == [(7, a.log.committed)]


def test_read_index_from_follower_is_forwarded():
    c = Cluster(ABC)
    c.elect("a")
    c.propose(b"x")
    c.nodes["b"].read_index(c.now, 3)
    c.flush()
    c.deliver()
    assert [(r.request, r.index) for r in c.reads["b"]] == [(3, c.nodes["a"].log.committed)]


def test_deposed_leader_cannot_serve_read_index():
    c = Cluster(ABC)
    c.elect("a")
    c.isolate("a")
    c.nodes["a"].read_index(c.now, 1)
    c.flush()
    c.deliver()
    c.advance(3.0)
    assert c.reads["a"] == []


def test_inflight_appends_are_bounded():
    c = Cluster(ABC, cfg=CFG.with_changes(max_inflight=2, max_batch_entries=1))
    c.elect("a")
    c.cut = {("b", "a")}  # b receives but its answers are lost
    a = c.nodes["a"]
    before = len(c.sent)
    for k in range(10):
        a.propose(c.now, b"p%d" % k)
    c.flush()
    c.deliver()
    to_b = [m for s, d, m in c.sent[before:] if d == "b" and isinstance(m, AppendEntries) and m.entries]
    assert len(to_b) == 2
    c.heal()
    c.advance(0.5)
    assert c.nodes["b"].log.last_index() == a.log.last_index()


def test_batches_respect_entry_and_byte_limits():
    c = Cluster(ABC, cfg=CFG.with_changes(max_batch_entries=3, max_batch_bytes=10))
    c.elect("a")
    c.crash("b")
    for k in range(6):
        c.propose(b"12345")
    c.restart("b")
    c.advance(0.5)
    sizes = [len(m.entries) for s, d, m in c.sent if d == "b" and isinstance(m, AppendEntries)]
    assert sizes and max(sizes) <= 2


def test_core_refuses_input_between_ready_and_advance():
    c = Cluster(ABC)
    c.elect("a")
    a = c.nodes["a"]
    a.propose(c.now, b"x")
    rd = a.ready()
    with pytest.raises(RuntimeError):
        a.step(c.now, Heartbeat(a.term, "b", 0))
    a.advance(rd)


def test_status_reports_progress():
    c = Cluster(ABC)
    c.elect("a")
    st = c.nodes["a"].status(c.now)
    assert st["role"] == LEADER and st["leader"] == "a" and st["voters"] == ABC
    assert set(st["progress"]) == {"b", "c"} and st["progress"]["b"]["recent_active"] in (True, False)


def test_forwarded_proposals_are_appended_by_the_leader():
    from p2pswarm.consensus.messages import Propose
    c = Cluster(ABC)
    c.elect("a")
    a = c.nodes["a"]
    a.step(c.now, Propose(a.term, "b", (b"f1", b"f2")))
    c.flush()
    c.deliver()
    assert normal(c.applied["c"]) == [b"f1", b"f2"]


def test_undecodable_config_entry_is_refused_not_fatal():
    from p2pswarm.consensus.messages import Entry
    c = Cluster(ABC)
    c.elect("a")
    b = c.nodes["b"]
    last = b.log.last_index()
    bad = AppendEntries(b.term, "a", last, b.log.last_term(), 0, (Entry(b.term, last + 1, "config", b"junk"),))
    b.step(c.now, bad)
    assert b.log.last_index() == last and b.dropped == 1
