"""Timing and size formulas: Lifeguard's dynamic suspicion, the config formulas, the news queue.

The numbers are worked out by hand from the formulas in the docstrings of
``membership/config.py`` and ``membership/suspicion.py``:

    timeout(C) = max(min, max − (max − min) × log(C + 1) / log(K + 1))

With min = 0.6 s, max = 3.6 s (so max − min = 3.0) and K = 3 (log(K + 1) = log 4):

    C = 0:  3.6 − 3.0 × 0              = 3.6
    C = 1:  3.6 − 3.0 × log 2 / log 4  = 3.6 − 3.0 × 0.5      = 2.1
    C = 2:  3.6 − 3.0 × log 3 / log 4  = 3.6 − 3.0 × 0.792481 = 1.222556
    C = 3:  3.6 − 3.0 × 1              = 0.6
"""

from __future__ import annotations

import math
import random

import pytest

from p2pswarm.membership.config import SwimConfig
from p2pswarm.membership.messages import Ack, Alive, Gossip, MemberState, Meta, Ping, Record, Suspect
from p2pswarm.membership.news import NewsQueue
from p2pswarm.membership.suspicion import Suspicion, Suspicions
from p2pswarm.membership.swim import Swim
from p2pswarm.node.presets import PRESETS, preset
from p2pswarm.wire import encoded_size

from .swimnet import addr_of

C2 = 1.2225562489182655  # 3.6 − 3.0 × ln 3 / ln 4


# ------------------------------------------------------------------ Suspicion

def test_suspicion_shrinks_with_each_independent_confirmation():
    s = Suspicion(incarnation=4, started=10.0, low=0.6, high=3.6, expected=3, origin="b")
    assert s.deadline == pytest.approx(13.6)
    assert s.confirm("c") is True
    assert s.deadline == pytest.approx(12.1)
    assert s.confirm("d") is True
    assert s.deadline == pytest.approx(10.0 + C2)
    assert s.confirm("e") is True
    assert s.deadline == pytest.approx(10.6)
    # K confirmations reached: more changes nothing, and is not worth re-gossiping.
    assert s.confirm("f") is False
    assert s.deadline == pytest.approx(10.6)


def test_suspicion_ignores_the_originator_and_repeated_confirmations():
    s = Suspicion(0, 0.0, 0.6, 3.6, 3, origin="b")
    assert s.confirm("b") is False  # the originator is not an independent confirmation
    assert s.deadline == pytest.approx(3.6)
    assert s.confirm("c") is True
    assert s.confirm("c") is False
    assert s.deadline == pytest.approx(2.1)


def test_suspicion_with_one_expected_confirmation():
    # K = 1: log(C + 1) / log 2 is 0 then 1, so the timeout jumps from max to min.
    s = Suspicion(0, 5.0, 1.0, 6.0, 1, origin="b")
    assert s.deadline == pytest.approx(11.0)
    assert s.confirm("c") is True
    assert s.deadline == pytest.approx(6.0)


def test_suspicion_without_expected_confirmations_uses_the_minimum():
    # Plain SWIM, or a cluster too small to give K confirmations: min at once.
    s = Suspicion(0, 5.0, 0.6, 3.6, 0, origin="b")
    assert s.deadline == pytest.approx(5.6)
    assert s.confirm("c") is False
    assert s.deadline == pytest.approx(5.6)


def test_suspicions_run_out_by_deadline_and_in_the_order_they_began():
    held = Suspicions()
    held.start("late", Suspicion(0, 0.0, 0.6, 3.6, 3, origin="x"))  # 3.6
    held.start("early", Suspicion(0, 1.0, 0.6, 3.6, 3, origin="x"))  # 4.6, then confirmed down to 3.1
    held.start("gone", Suspicion(0, 0.5, 0.6, 3.6, 3, origin="x"))  # 4.1, ended before it runs out
    assert held["early"].confirm("y") is True
    held.moved("early", held["early"])
    del held["gone"]
    assert held.earliest() == pytest.approx(3.1)
    assert held.due(3.0) == []
    assert held.due(5.0) == ["late", "early"]  # both due: the order they began, not their deadlines
    assert held.earliest() == math.inf
    flat = Suspicion(0, 6.0, 1.0, 1.0, 2, origin="x")  # max = min: a confirmation leaves the deadline where it was
    held.start("flat", flat)
    assert flat.confirm("y") is True
    held.moved("flat", flat)
    assert held.due(8.0) == ["flat"]  # once


def test_confirmations_leave_the_deadline_heap_bounded_and_the_order_unchanged():
    """2,000 suspicions confirmed three times each: the heap keeps at most twice the suspicions held (plus
    slack) instead of four entries each, and they still run out in deadline order, ties in start order."""
    held = Suspicions()
    peak = 0
    for k in range(2000):
        node = f"m{k}"
        held.start(node, Suspicion(0, k * 0.001, 0.6, 3.6, 3, origin="x"))
        for by in ("a", "b", "c"):
            assert held[node].confirm(by) is True
            held.moved(node, held[node])
            peak = max(peak, len(held._heap))
    assert peak <= 2 * 2000 + 64 + 1
    assert held.earliest() == pytest.approx(0.6)
    assert held.due(0.6 + 0.0995) == [f"m{k}" for k in range(100)]
    assert held.due(10.0) == [f"m{k}" for k in range(100, 2000)]


def drive(me: Swim, start: float, end: float) -> None:
    """Tick at each deadline; every Ping we send is answered by its target (our probes succeed)."""
    now = start
    while True:
        now = max(now, me.next_deadline())
        if now > end:
            return
        me.tick(now)
        for out in me.drain_outbox():
            if type(out.msg) is Ping:
                me.receive(now, Ack(out.msg.seq, out.msg.target))


def test_core_declares_death_exactly_at_the_shrunken_deadline():
    # n = 5 with the formula's numbers: probe_interval 0.2 × suspicion_mult 3 × max(1, log10 5) = 0.6,
    # × suspicion_max_mult 6 = 3.6, K = 3 (n − 2 = 3 members can confirm).
    config = SwimConfig(probe_interval=0.2, probe_timeout=0.1, suspicion_mult=3.0, suspicion_max_mult=6.0,
                        suspicion_confirmations=3)
    me = Swim("a", addr_of("a"), Meta("a"), config, random.Random(1), 0.0)
    me.bootstrap(0.0, {p: MemberState(p, addr_of(p), 0, "alive", Meta(p)) for p in "bcde"})
    assert config.suspicion_bounds(me.live_count()) == pytest.approx((0.6, 3.6))
    me.receive(0.0, Gossip("c", addr_of("c"), (Suspect("b", 0, "c"),)))   # C = 0: due at 3.6
    drive(me, 0.0, 0.5)
    me.receive(0.5, Gossip("d", addr_of("d"), (Suspect("b", 0, "d"),)))   # C = 1: due at 2.1
    drive(me, 0.5, 1.0)
    me.receive(1.0, Gossip("e", addr_of("e"), (Suspect("b", 0, "e"),)))   # C = 2: due at 1.2226
    assert me.member("b").status == "suspect"
    assert me.next_deadline() <= C2 + 1e-9
    drive(me, 1.0, 5.0)
    deaths = [ev for ev in me.drain_events() if ev.node == "b" and ev.new == "dead"]
    assert len(deaths) == 1
    assert deaths[0].at == pytest.approx(C2)
    assert deaths[0].by == "a"


def test_membership_news_goes_before_a_burst_of_records_in_probes_and_acks():
    peers = [f"p{k:03d}" for k in range(40)]
    me = Swim("a", addr_of("a"), Meta("a"), SwimConfig(), random.Random(1), 0.0)
    me.bootstrap(0.0, {p: MemberState(p, addr_of(p), 0, "alive", Meta(p)) for p in peers})
    me.receive(0.0, Gossip("p001", addr_of("p001"), (Suspect("p000", 0, "p001"),)))
    # then every member's record changes (tasks moving after a failure): far more than one probe holds
    me.receive(0.1, Gossip("p002", addr_of("p002"), tuple(Record(p, 1, b"t" * 200) for p in peers)))
    me.drain_outbox()
    me.receive(0.2, Ping(7, "p003", addr_of("p003"), "a", ()))
    ack = me.drain_outbox()[0].msg
    assert ack.news[0] == Suspect("p000", 0, "p001")  # the newer records did not push the suspicion out
    assert any(type(item) is Record for item in ack.news)  # they fill the space left
    assert encoded_size(ack.news) <= SwimConfig().piggyback_bytes


def test_core_without_lifeguard_waits_the_minimum_whatever_the_confirmations():
    config = SwimConfig(probe_interval=0.2, probe_timeout=0.1, suspicion_mult=3.0, lifeguard=False)
    me = Swim("a", addr_of("a"), Meta("a"), config, random.Random(1), 0.0)
    me.bootstrap(0.0, {p: MemberState(p, addr_of(p), 0, "alive", Meta(p)) for p in "bcde"})
    me.receive(0.0, Gossip("c", addr_of("c"), (Suspect("b", 0, "c"),)))
    drive(me, 0.0, 5.0)
    deaths = [ev for ev in me.drain_events() if ev.node == "b" and ev.new == "dead"]
    assert [ev.at for ev in deaths] == [pytest.approx(0.6)]


# ------------------------------------------------------------------ config formulas

def test_suspicion_bounds():
    c = SwimConfig(probe_interval=0.2, suspicion_mult=3.0, suspicion_max_mult=6.0)
    assert c.suspicion_bounds(1) == pytest.approx((0.6, 3.6))    # log10 1 = 0 → max(1, 0) = 1
    assert c.suspicion_bounds(5) == pytest.approx((0.6, 3.6))    # log10 5 = 0.7 → 1
    assert c.suspicion_bounds(10) == pytest.approx((0.6, 3.6))
    assert c.suspicion_bounds(100) == pytest.approx((1.2, 7.2))  # log10 100 = 2
    assert c.suspicion_bounds(1000) == pytest.approx((1.8, 10.8))
    plain = c.with_changes(lifeguard=False)
    assert plain.suspicion_bounds(100) == pytest.approx((1.2, 1.2))
    lan = SwimConfig(probe_interval=0.5, suspicion_mult=2.0, suspicion_max_mult=6.0)
    assert lan.suspicion_bounds(10_000) == pytest.approx((4.0, 24.0))  # 2 × 4 × 0.5


def test_expected_confirmations():
    c = SwimConfig(suspicion_confirmations=3)
    assert [c.expected_confirmations(n) for n in (1, 2, 3, 4, 5, 6, 1000)] == [0, 0, 0, 0, 3, 3, 3]
    assert c.with_changes(lifeguard=False).expected_confirmations(1000) == 0


def test_retransmit_limit():
    c = SwimConfig(retransmit_mult=4)
    # 4 × ceil(log10(n + 1)), at least 4
    assert [c.retransmit_limit(n) for n in (1, 5, 9, 10, 99, 100, 999, 1000)] == [4, 4, 4, 8, 8, 12, 12, 16]


def test_push_pull_period():
    c = SwimConfig(push_pull_interval=30.0)
    # scale 1 up to 32 members, then ceil(log2 n − log2 32) + 1
    assert c.push_pull_period(1) == 30.0
    assert c.push_pull_period(32) == 30.0
    assert c.push_pull_period(33) == 60.0
    assert c.push_pull_period(64) == 60.0
    assert c.push_pull_period(65) == 90.0
    assert c.push_pull_period(1024) == 180.0


@pytest.mark.parametrize("name", ["lan", "wan", "local", "test"])
def test_presets_are_sane(name):
    c = preset(name).membership
    assert c is PRESETS[name].membership and isinstance(c, SwimConfig)
    assert 0 < c.probe_timeout < c.probe_interval
    assert c.suspicion_bounds(5)[0] >= c.probe_interval
    assert c.indirect_checks >= 1 and c.gossip_fanout >= 1 and c.retransmit_limit(1) >= 1
    assert c.join_retry_initial <= c.join_retry_max


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError) as info:
        preset("fast")
    message = str(info.value)
    assert "fast" in message and all(name in message for name in PRESETS)
    assert "\n" not in message


# ------------------------------------------------------------------ news queue

def alive(node: str, inc: int = 0) -> Alive:
    return Alive(node, inc, addr_of(node), Meta(node))


def test_news_is_taken_until_the_limit_then_dropped():
    q = NewsQueue(fresh_sends=2)
    q.put(("b", "m"), alive("b"))
    assert [q.take(10_000, limit=3) for _ in range(4)] == [[alive("b")]] * 3 + [[]]
    assert len(q) == 0 and not q


def test_newer_news_about_a_member_replaces_the_older_and_starts_over():
    q = NewsQueue(fresh_sends=2)
    q.put(("b", "m"), alive("b", 0))
    q.take(10_000, limit=3)
    q.take(10_000, limit=3)
    q.put(("b", "m"), Suspect("b", 0, "a"))
    assert q.get(("b", "m")) == Suspect("b", 0, "a")
    taken = [q.take(10_000, limit=3) for _ in range(4)]
    assert taken == [[Suspect("b", 0, "a")]] * 3 + [[]]


def test_least_sent_first_and_newest_first_among_equals():
    q = NewsQueue(fresh_sends=10)
    q.put(("b", "m"), alive("b"))
    q.take(10_000, limit=10)
    q.put(("c", "m"), alive("c"))
    q.put(("d", "m"), alive("d"))
    assert q.take(10_000, limit=10) == [alive("d"), alive("c"), alive("b")]


def test_budget_is_respected_and_oversize_news_is_skipped():
    q = NewsQueue(fresh_sends=10)
    big = Record("big", 1, b"x" * 2000)
    q.put(("big", "r"), big)
    q.put(("b", "m"), alive("b"))
    q.put(("c", "m"), alive("c"))
    small = encoded_size(alive("c"))
    assert q.take(0, limit=10) == []  # nothing fits in no budget
    assert q.take(small + 1, limit=10) == [alive("c")]  # the newest small item; then b does not fit
    both = q.take(1000, limit=10)  # the big one never fits: skipped, not blocking the others
    assert big not in both and set(both) == {alive("b"), alive("c")}
    assert q.take(10_000, limit=10)[0] == big  # least sent: first out when a message has room


def test_first_item_is_always_included_first_and_not_counted():
    q = NewsQueue(fresh_sends=10)
    buddy = Suspect("b", 0, "a")
    q.put(("c", "m"), alive("c"))
    for _ in range(5):
        out = q.take(10_000, limit=2, first=buddy)
        assert out[0] == buddy and out.count(buddy) == 1
    q.put(("b", "m"), buddy)
    assert q.take(10_000, limit=2, first=buddy) == [buddy]  # the queued copy is not sent twice


def test_only_fresh_news_earns_a_gossip_message():
    q = NewsQueue(fresh_sends=2)
    q.put(("b", "m"), alive("b"))
    assert q.has_fresh
    assert q.take_for(1, 10_000, limit=5) == [(alive("b"),)]
    assert q.take(10_000, limit=5) == [alive("b")]
    assert not q.has_fresh  # sent twice: no more gossip rounds for it
    assert q.take_for(3, 10_000, limit=5) == []
    assert q.take(10_000, limit=5) == [alive("b")]  # still rides on probes and acks
    q.put(("c", "m"), alive("c"))
    assert q.has_fresh
    assert q.take_for(1, 10_000, limit=5) == [(alive("c"),)]


def test_a_bounded_queue_drops_the_most_sent_stale_news_never_fresh_news():
    q = NewsQueue(fresh_sends=2, max_stale=2)
    for node in "bcd":
        q.put((node, "r"), alive(node))
    q.take(10_000, limit=20)
    q.take(10_000, limit=20)  # b, c, d sent twice: stale, one too many
    q.put(("e", "r"), alive("e"))
    assert q.get(("b", "r")) is None  # the oldest of the most sent goes
    assert [q.get((n, "r")) for n in "cde"] == [alive("c"), alive("d"), alive("e")]
    for node in "fghij":  # fresh news is never dropped, however much of it there is
        q.put((node, "r"), alive(node))
    assert len(q) == 8 and q.fresh == 6
    assert q.take(10_000, limit=20)[:6] == [alive(n) for n in "jihgfe"]


def test_a_gossip_round_never_sends_news_past_its_limit():
    q = NewsQueue(fresh_sends=3)
    q.put(("b", "m"), alive("b"))
    q.take(10_000, limit=4)
    q.take(10_000, limit=4)  # two sends so far: two left
    q.put(("c", "m"), alive("c"))
    rounds = q.take_for(3, 10_000, limit=4)
    assert len(rounds) == 3
    assert [r.count(alive("b")) for r in rounds].count(1) == 2  # only two of the three targets
    assert all(alive("c") in r for r in rounds)
    assert q.get(("b", "m")) is None  # spent
    assert q.take(10_000, limit=4) == [alive("c")]  # 3 + 1 = 4: now spent too
    assert len(q) == 0


def test_log_formula_matches_the_hand_computed_constant():
    assert 3.6 - 3.0 * math.log(3) / math.log(4) == pytest.approx(C2, abs=1e-12)
