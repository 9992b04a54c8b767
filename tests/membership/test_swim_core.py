"""One SWIM core driven by hand: exact messages in, exact messages out.

These tests talk to a single ``Swim`` the way a peer would (the messages a test hands
to ``receive`` are what a peer could send: valid on the wire, possibly nonsense), and
check what it sends back and what it believes.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pswarm import wire
from p2pswarm.membership.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    MemberState,
    Meta,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Record,
    Suspect,
)
from p2pswarm.membership.swim import Swim

from .swimnet import TEST, addr_of

PEERS = ("b", "c", "d", "e")


def core(peers=PEERS, config=TEST, seed=1, now=0.0) -> Swim:
    """Core "a", bootstrapped into a converged cluster with ``peers`` all alive at incarnation 0."""
    me = Swim("a", addr_of("a"), Meta("a"), config, random.Random(seed), now)
    states = {p: MemberState(p, addr_of(p), 0, "alive", Meta(p)) for p in peers}
    me.bootstrap(now, states)
    return me


def run(me: Swim, start: float, end: float) -> list:
    """Tick ``me`` at each of its deadlines in [start, end); no answers come back. Returns what it sent."""
    sent = []
    now = start
    while True:
        due = me.next_deadline()
        assert due > now or now == start, "the core asked to run again at the same instant"
        now = max(now, due)
        if now >= end:
            return sent
        me.tick(now)
        sent.extend((now, o) for o in me.drain_outbox())


def wire_ok(out) -> None:
    for o in out:
        assert wire.decode(wire.encode(o.msg)) == o.msg


# ------------------------------------------------------------------ Lifeguard buddy system

@pytest.mark.parametrize("lifeguard", [True, False])
def test_suspicion_rides_first_in_the_ping_to_the_suspect_only_with_lifeguard(lifeguard):
    config = TEST.with_changes(lifeguard=lifeguard, suspicion_mult=50.0)  # b stays suspect throughout
    me = core(config=config)
    me.receive(0.0, Gossip("c", addr_of("c"), (Suspect("b", 0, "c"),)))
    assert me.member("b").status == "suspect"
    # Spend the suspicion news: each ack piggybacks it, until it has been sent retransmit_limit times.
    for seq in range(10):
        me.receive(0.0, Ping(seq, "c", addr_of("c"), "a"))
    acks = me.drain_outbox()
    carried = sum(1 for o in acks if Suspect("b", 0, "c") in o.msg.news)
    assert carried == config.retransmit_limit(5)
    pings_to_b = [o.msg for _, o in run(me, 0.0, 3.0) if type(o.msg) is Ping and o.msg.target == "b"]
    assert pings_to_b
    first = pings_to_b[0]
    if lifeguard:
        # The very first ping to b tells b it is suspected (so it can refute at once).
        assert first.news[:1] == (Suspect("b", 0, "a"),)
    else:
        assert not any(type(n) is Suspect and n.node == "b" for n in first.news)


# ------------------------------------------------------------------ malformed peer behaviour

def quiet(me: Swim) -> None:
    assert me.drain_outbox() == [] and me.drain_events() == []


def test_ack_for_an_unknown_seq_is_ignored():
    me = core()
    run(me, 0.0, 0.05)
    before = (me.health, dict(me.counters))
    for seq in (0, 1, 2**32 - 1, 12345):
        me.receive(0.1, Ack(seq, "b"))
        me.receive(0.1, Ack(seq, "x"))  # from a stranger, too
    quiet(me)
    assert (me.health, me.counters) == before
    assert me.member("x") is None


def test_ping_for_a_different_target_is_not_acked():
    me = core()
    me.receive(0.0, Ping(7, "b", addr_of("b"), "c"))
    me.receive(0.0, Ping(8, "b", addr_of("b"), "zzz"))
    quiet(me)
    assert me.counters["misdirected"] == 2
    me.receive(0.0, Ping(9, "b", addr_of("b"), "a"))  # the control: a ping for us is acked
    assert [o.msg.seq for o in me.drain_outbox() if type(o.msg) is Ack] == [9]


def test_nack_for_an_old_seq_is_ignored():
    me = core(peers=("b",))  # nobody else: no helpers, so a failed probe costs one health point
    sent = run(me, 0.0, 0.5)
    seqs = sorted({o.msg.seq for _, o in sent if type(o.msg) is Ping})
    assert len(seqs) >= 2
    me.drain_events()
    health = me.health
    for seq in seqs[:-1]:  # finished probes
        me.receive(0.5, Nack(seq, "b"))
    me.receive(0.5, Nack(seqs[-1] + 1000, "b"))  # a probe that never was
    assert "nacks_received" not in me.counters
    assert me.health == health
    quiet(me)


def test_strange_news_changes_nothing():
    me = core()
    run(me, 0.0, 0.05)
    view = {m.node: (m.status, m.incarnation) for m in me.members()}
    me.receive(0.1, Gossip("b", addr_of("b"), (
        Suspect("stranger", 5, "b"),    # about someone we never heard of
        Dead("stranger", 5, "b", False),
        Record("stranger", 3, b"r"),
    )))
    assert {m.node: (m.status, m.incarnation) for m in me.members()} == view
    assert me.member("stranger") is None
    assert me.drain_events() == []


def test_old_incarnations_are_ignored():
    me = core()
    me.receive(0.0, Gossip("b", addr_of("b"), (Alive("c", 4, addr_of("c"), Meta("c")),)))
    assert me.member("c").incarnation == 4
    me.drain_events()
    me.receive(0.0, Gossip("b", addr_of("b"), (Suspect("c", 3, "b"), Dead("c", 2, "b", False),
                                                Alive("c", 3, addr_of("c"), Meta("c-old")))))
    assert me.member("c").status == "alive" and me.member("c").meta == Meta("c")
    assert me.drain_events() == []


def test_rumours_of_our_own_death_are_refuted():
    me = core()
    for news in (Suspect("a", 0, "b"), Dead("a", 1, "b", False), Dead("a", 2, "b", True),
                 Alive("a", 3, "elsewhere:1", Meta("impostor"))):
        me.receive(0.0, Gossip("b", addr_of("b"), (news,)))
        assert me.member("a").status == "alive"
        assert me.incarnation == news.incarnation + 1
    gossip = [n for _, o in run(me, 0.0, 0.2) for n in getattr(o.msg, "news", ()) if n.node == "a"]
    assert Alive("a", 4, addr_of("a"), Meta("a")) in gossip


def test_unexpected_objects_are_counted_not_raised():
    me = core()
    me.receive(0.0, object())
    me.receive(0.0, Record("b", 1, b""))  # a news item on its own is not a message
    assert me.counters["unexpected_messages"] == 2
    quiet(me)


def test_push_pull_reply_without_asking_is_harmless():
    me = core()
    me.receive(0.0, PushPull("b", addr_of("b"), False, True,
                             (MemberState("b", addr_of("b"), 0, "alive", Meta("b")),), ()))
    assert me.drain_outbox() == []  # a reply is not answered
    assert me.member("b").status == "alive"


def test_ping_req_for_ourselves_or_strangers_does_not_raise():
    me = core()
    me.receive(0.0, PingReq(1, "b", addr_of("b"), "a", addr_of("a")))
    me.receive(0.0, PingReq(2, "b", addr_of("b"), "nobody", "nowhere:1"))
    out = me.drain_outbox()
    assert [o.addr for o in out] == [addr_of("a"), "nowhere:1"]
    wire_ok(out)
    run(me, 0.0, 1.0)  # the relay timers (nacks) run out without trouble




@pytest.mark.parametrize("stale", [Suspect("a", 0, "d"), Dead("a", 0, "d", False)], ids=["suspect", "dead"])
def test_stale_rumour_about_us_gets_our_current_incarnation_back(stale):
    me = core()
    me.receive(0.0, Gossip("b", addr_of("b"), (Suspect("a", 0, "b"),)))
    assert me.incarnation == 1
    for seq in range(10):  # the refutation is spent: sent retransmit_limit times
        me.receive(0.0, Ping(seq, "b", addr_of("b"), "a"))
    me.drain_outbox()
    # d missed the refutation and probes us with its (buddy) suspicion at our old incarnation.
    me.receive(1.0, Ping(99, "d", addr_of("d"), "a", (stale,)))
    out = me.drain_outbox() + [o for _, o in run(me, 1.0, 1.5)]
    told = [n for o in out if o.addr == addr_of("d") for n in getattr(o.msg, "news", ())]
    assert Alive("a", 1, addr_of("a"), Meta("a")) in told


# ------------------------------------------------------------------ counters at the top of their range
# Regressions: refuting Suspect(me, 2**32 - 1) once made our incarnation 2**32 (outside the wire's
# uint32: every message carrying our Alive, and every PushPull, was rejected by all peers), and
# outbidding Record(me, 2**64 - 1) once made a record version msgpack cannot encode.

def test_refuting_a_suspicion_at_the_highest_incarnation_stays_on_the_wire():
    me = core()
    me.receive(0.0, Gossip("b", addr_of("b"), (Suspect("a", 2**32 - 1, "b"),)))
    out = me.drain_outbox() + [o for _, o in run(me, 0.0, 1.0)]
    me.receive(1.0, PushPull("b", addr_of("b"), False, False, (), ()))
    out += me.drain_outbox()
    assert any(type(o.msg) is PushPull for o in out)
    wire_ok(out)
    assert me.incarnation < 2**32


def test_refuting_just_below_the_highest_incarnation_still_works():
    me = core()
    me.receive(0.0, Gossip("b", addr_of("b"), (Suspect("a", 2**32 - 2, "b"),)))
    assert me.incarnation == 2**32 - 1
    wire_ok(me.drain_outbox() + [o for _, o in run(me, 0.0, 1.0)])


def test_outbidding_the_highest_record_version_stays_on_the_wire():
    me = core()
    me.receive(0.0, Gossip("b", addr_of("b"), (Record("a", 2**64 - 1, b"forged"),)))
    me.receive(0.0, PushPull("b", addr_of("b"), False, False, (), ()))
    wire_ok(me.drain_outbox())


# ------------------------------------------------------------------ news sent at most retransmit_limit times

def test_piggybacked_then_gossiped_news_respects_the_retransmit_limit():
    # (Once failed: a gossip round sent news already piggybacked twice to 3 more members.)
    me = core()
    limit = TEST.retransmit_limit(5)
    me.set_record(0.0, b"digest")
    item = Record("a", 1, b"digest")
    for seq in range(2):  # two acks piggyback it first
        me.receive(0.0, Ping(seq, "b", addr_of("b"), "a"))
    sends = sum(1 for o in me.drain_outbox() if item in o.msg.news)
    assert sends == 2
    sends += sum(1 for _, o in run(me, 0.0, 2.0) if item in getattr(o.msg, "news", ()))
    assert sends == limit


def test_fresh_news_is_sent_exactly_retransmit_limit_times():
    me = core()
    me.set_record(0.0, b"digest")
    item = Record("a", 1, b"digest")
    sent = run(me, 0.0, 5.0)
    assert sum(1 for _, o in sent if item in getattr(o.msg, "news", ())) == TEST.retransmit_limit(5)


# ------------------------------------------------------------------ property: peers cannot break a core

IDS = ("a", "b", "c", "d", "e", "x")
small = st.integers(0, 40)
node_id = st.sampled_from(IDS)
meta = st.builds(Meta, st.sampled_from(["m", "n"]), st.just(()), st.just(()), st.sampled_from(["", "2"]))
addr = st.sampled_from([addr_of(i) for i in IDS] + ["moved:1"])
news_item = st.one_of(
    st.builds(Alive, node_id, small, addr, meta),
    st.builds(Suspect, node_id, small, node_id),
    st.builds(Dead, node_id, small, node_id, st.booleans()),
    st.builds(Record, node_id, small, st.sampled_from([b"", b"r1", b"r2"])),
)
news = st.lists(news_item, max_size=4).map(tuple)
seq = st.integers(0, 2**32 - 1)
member_state = st.builds(MemberState, node_id, addr, small,
                         st.sampled_from(["alive", "suspect", "dead", "left"]), meta)
peer_message = st.one_of(
    st.builds(Ping, seq, node_id, addr, node_id, news),
    st.builds(Ack, seq, node_id, news),
    st.builds(PingReq, seq, node_id, addr, node_id, addr, news),
    st.builds(Nack, seq, node_id),
    st.builds(Gossip, node_id, addr, news),
    st.builds(PushPull, node_id, addr, st.booleans(), st.booleans(), st.lists(member_state, max_size=4).map(tuple),
              st.lists(st.builds(Record, node_id, small, st.just(b"p")), max_size=2).map(tuple)),
)
step = st.one_of(st.tuples(st.just("tick"), st.floats(0.0, 2.0)), st.tuples(st.just("msg"), peer_message),
                 st.tuples(st.just("echo"), st.integers(0, 10)))


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(step, max_size=40), st.integers(0, 3))
def test_no_sequence_of_peer_messages_breaks_the_core(steps, seed):
    # Counters stay far below their wire limits here; the top of the range is tested above.
    me = core(seed=seed)
    now = 0.0
    outbox: list = []
    status = {m.node: m.status for m in me.members()}
    for kind, arg in steps:
        if kind == "tick":
            now += arg
            me.tick(now)
            # A late tick may leave work for one more pass at the same instant (a relay's nack and
            # then its expiry), but the core must settle: no endless "run me now".
            for _ in range(3):
                if me.next_deadline() > now:
                    break
                me.tick(now)
            assert me.next_deadline() > now, "the core keeps asking to run at the same instant"
        elif kind == "msg":
            me.receive(now, arg)
        elif outbox:  # answer with the seq of something we sent (acks, nacks for real probes)
            sent = outbox[arg % len(outbox)].msg
            if hasattr(sent, "seq"):
                me.receive(now, Ack(sent.seq, "b"))
                me.receive(now, Nack(sent.seq, "c"))
        out = me.drain_outbox()
        wire_ok(out)
        outbox = out or outbox
        for ev in me.drain_events():
            assert ev.old == status.get(ev.node), f"event {ev} does not follow {status.get(ev.node)}"
            status[ev.node] = ev.new
        members = me.members()
        status = {node: st for node, st in status.items() if me.member(node) is not None}  # reaped
        mine = me.member("a")
        assert mine.status == "alive" and mine.incarnation == me.incarnation
        assert me.live_count() == sum(1 for m in members if m.status in ("alive", "suspect"))
        assert all(status[m.node] == m.status for m in members)
        assert 0 <= me.health <= TEST.health_max
