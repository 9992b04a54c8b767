"""A node whose own loop runs late (a starved CPU: a hundred nodes on two cores) must count that against its
own health, as Lifeguard counts a missed ack, so that it probes less often and waits longer while it lasts;
and the SWIM core must tell its drivers when anything they derive from the members changed."""

from __future__ import annotations

import random

from p2pswarm.membership.messages import Alive, MemberState, Meta, Ping, Record
from p2pswarm.membership.swim import Swim

from .swimnet import TEST, addr_of


def core(config=TEST) -> Swim:
    me = Swim("a", addr_of("a"), Meta("a"), config, random.Random(1), 0.0)
    me.bootstrap(0.0, {p: MemberState(p, addr_of(p), 0, "alive", Meta(p)) for p in "bcd"})
    return me


def probe_starts(me: Swim, until: float) -> list[float]:
    """When ``me`` starts its probes (its first Ping of each) until ``until``, nobody answering."""
    starts, seqs, now = [], set(), 0.0
    while (now := me.next_deadline()) < until:
        me.tick(now)
        for out in me.drain_outbox():
            if type(out.msg) is Ping and out.msg.seq not in seqs:
                seqs.add(out.msg.seq)
                starts.append(now)
    return starts


def test_a_late_loop_raises_health_once_per_probe_period_and_stretches_the_probe_period():
    me = core()
    me.stalled(1.0, TEST.probe_timeout / 2)  # late, but not enough to have missed an ack
    assert me.health == 0
    me.stalled(1.0, TEST.probe_timeout * 3)
    me.stalled(1.0 + TEST.probe_interval / 2, TEST.probe_timeout * 3)  # the same stall, seen again
    assert me.health == 1 and me.counters["stalls"] == 1
    me.stalled(1.0 + TEST.probe_interval * 2.01, TEST.probe_timeout * 3)  # the period is 2 × interval now
    assert me.health == 2
    starts = probe_starts(me, 5.0)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= TEST.probe_interval * 2


def test_plain_swim_ignores_stalls():
    me = core(TEST.with_changes(lifeguard=False))
    me.stalled(1.0, 10.0)
    assert me.health == 0


def test_changes_moves_with_states_and_records_but_not_with_round_trip_times():
    me = core()
    seen = me.changes
    me.receive(0.1, Ping(1, "b", addr_of("b"), "a", ()))  # answered: an RTT of ours may move, no member did
    assert me.changes == seen
    me.receive(0.2, Ping(2, "b", addr_of("b"), "a", (Alive("e", 1, addr_of("e"), Meta("e")),)))
    assert me.changes > seen
    seen = me.changes
    me.receive(0.3, Ping(3, "b", addr_of("b"), "a", (Record("b", 1, b"\x80"),)))
    assert me.changes > seen
    seen = me.changes
    me.set_record(0.4, b"\x81\xa1x\x01")
    assert me.changes > seen
