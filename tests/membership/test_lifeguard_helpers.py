"""Lifeguard's helpers: who is asked to probe indirectly, and when a helper's nack is due.

A prober counts each nack that does not reach it in time against its own health, which then stretches
its probe period and timeouts.  These tests pin that a helper's own state (its health, or it being
suspect) cannot make a healthy prober sick: after a zone outage that spread slowness through the cluster
and delayed the detection of the dead members.
"""

from __future__ import annotations

import random

import pytest

from p2pswarm.membership.messages import Ack, Gossip, MemberState, Meta, Nack, Ping, PingReq, Suspect
from p2pswarm.membership.swim import NACK_FRACTION, Swim

from .swimnet import TEST, SwimNet, addr_of


def test_a_sick_helper_nacks_in_time_for_a_healthy_prober():
    net = SwimNet(seed=3)
    a, _, helper = net.cluster(["a", "c", "h"])
    helper.health = TEST.health_max  # its own period and waits stretch ninefold
    net.crash("c")
    assert net.run_until(lambda: a.counters.get("probe_failures", 0) >= 1, 10.0)
    asked = [s for s in net.messages(PingReq, src="a") if s.msg.target == "c"]
    assert asked, "a should have asked h to probe c"
    nacks = {s.msg.seq: s.at for s in net.messages(Nack, src="h")}
    for ask in asked:
        # Due at NACK_FRACTION of the unscaled timeout: before a stops waiting (probe_timeout × (1 + 0)).
        assert nacks[ask.msg.seq] - ask.at < TEST.probe_timeout
    assert a.counters["nacks_received"] >= len(asked)
    assert a.health == 0, "h's nack answered for the missing ack: a must not blame itself"
    assert a.member("c").status == "suspect"


def test_a_helper_still_relays_an_ack_that_comes_after_its_nack():
    me = Swim("a", addr_of("a"), Meta("a"), TEST, random.Random(1), 0.0)
    me.bootstrap(0.0, {p: MemberState(p, addr_of(p), 0, "alive", Meta(p)) for p in "bc"})
    me.health = 4
    me.receive(0.0, PingReq(77, "b", addr_of("b"), "c", addr_of("c")))
    (ping,) = [o.msg for o in me.drain_outbox() if type(o.msg) is Ping]
    nack_at = NACK_FRACTION * TEST.probe_timeout  # not scaled by our health (× 5 here)
    now = 0.0
    while now < nack_at:  # our own probes run meanwhile; nobody answers them
        now = me.next_deadline()
        me.tick(now)
        to_b = [(now, o.msg) for o in me.drain_outbox() if o.addr == addr_of("b") and type(o.msg) is not Ping]
        if to_b:
            assert to_b == [(pytest.approx(nack_at), Nack(77, "a"))]
            break
    else:
        pytest.fail("no nack")
    me.receive(0.3, Ack(ping.seq, "c"))  # c answers late: the nack was not a verdict
    assert [(o.addr, type(o.msg), o.msg.seq) for o in me.drain_outbox()] == [(addr_of("b"), Ack, 77)]


def test_suspect_members_help_only_when_too_few_are_alive():
    config = TEST.with_changes(suspicion_mult=100.0)  # every suspicion outlasts the test
    me = Swim("a", addr_of("a"), Meta("a"), config, random.Random(5), 0.0)
    peers = [f"p{i}" for i in range(10)]
    me.bootstrap(0.0, {p: MemberState(p, addr_of(p), 0, "alive", Meta(p)) for p in peers})
    me.receive(0.0, Gossip("z", addr_of("z"), tuple(Suspect(p, 0, "z") for p in peers[:3])))
    node_at = {addr_of(p): p for p in peers}
    k = config.indirect_checks
    plenty = scarce = 0
    now = 0.0
    while now < 15.0:  # nobody answers: every probe fails, goes indirect and makes its target suspect
        now = me.next_deadline()
        me.tick(now)
        asks = [o for o in me.drain_outbox() if type(o.msg) is PingReq]
        if not asks:
            continue
        target = asks[0].msg.target
        helpers = {node_at[o.addr] for o in asks}
        alive = {p for p in peers if p != target and me.member(p).status == "alive"}
        assert target not in helpers and len(helpers) == len(asks) == k
        if len(alive) >= k:
            plenty += 1
            assert helpers <= alive, f"asked suspect {sorted(helpers - alive)} while {len(alive)} were alive"
        else:
            scarce += 1  # we may be the one cut off: suspect members make up the number
            assert alive <= helpers, "every alive member should be asked before any suspect one"
    assert plenty >= 3 and scarce >= 2
