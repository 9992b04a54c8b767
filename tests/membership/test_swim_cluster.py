"""Scenario tests: small clusters of real SWIM cores on the in-memory network (swimnet.py).

Each test tells a story a user of p2pswarm cares about (joining, crashes, false
suspicions, partitions, restarts, leaving, state records) and checks what every
member ends up believing, plus the protocol facts that make it so (who sent what).
All runs use the ``test`` preset: probe_interval 0.2 s, probe_timeout 0.1 s,
suspicion_mult 3 (so for n = 5: min suspicion 0.6 s, Lifeguard max 3.6 s).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from p2pswarm.membership.messages import Ack, Alive, Dead, Gossip, Meta, Nack, Ping, PingReq, PushPull, Record, Suspect

from .swimnet import TEST, SwimNet, addr_of

FIVE = "abcde"
SEEDS = [int(x) for x in os.environ.get("SWIMNET_SEEDS", "1,2,3").split(",")]
"""Every scenario runs with these seeds; SWIMNET_SEEDS=1,2,...,200 makes a soak run."""


@pytest.fixture(params=SEEDS, ids=lambda s: f"seed{s}")
def seed(request) -> int:
    return request.param


def started(seed: int = 1, names: str = FIVE, warmup: float = 1.0, **kwargs) -> SwimNet:
    net = SwimNet(seed=seed, **kwargs)
    net.cluster(names)
    net.run(warmup)
    assert not net.events, "a converged, healthy cluster reported changes"
    return net


def statuses_seen_by(net: SwimNet, observer: str, node: str) -> list[str]:
    return [ev.new for obs, ev in net.events if obs == observer and ev.node == node]


def is_buddy(sent) -> bool:
    """Lifeguard's buddy item: a suspicion of the target put first in a Ping to it."""
    msg = sent.msg
    return (type(msg) is Ping and msg.news and type(msg.news[0]) is Suspect
            and msg.news[0].node == msg.target and msg.news[0].by == sent.src)


def assert_news_limits(net: SwimNet) -> None:
    """No core sent one piece of news more than retransmit_limit times (state exchange aside)."""
    limit = max(net.config.retransmit_limit(n) for n in range(1, len(net.cores) + 1))
    counts: Counter = Counter()
    for sent in net.sent:
        if sent.cause == "inject" or type(sent.msg) is PushPull or not getattr(sent.msg, "news", ()):
            continue
        news = sent.msg.news[1:] if is_buddy(sent) else sent.msg.news
        for item in news:
            if type(item) is Alive and item.node == sent.src:
                continue  # a member re-announces itself whenever it hears a stale rumour about it
            counts[(sent.src, item)] += 1
    over = {k: v for k, v in counts.items() if v > limit}
    assert not over, f"news sent more than {limit} times: {over}"


def assert_wire_clean(net: SwimNet) -> None:
    assert not net.rejected, f"peers could not decode: {[s.msg for s in net.rejected[:3]]}"


# ------------------------------------------------------------------ joining

def test_five_members_converge_by_joining_through_one_seed(seed):
    net = SwimNet(seed=seed)
    net.add("a")
    for name in "bcde":
        net.add(name).join(net.now, [addr_of("a")])
    assert net.run_until(lambda: net.converged(FIVE), 10.0)
    assert all(core.joined for core in net.cores.values())
    # The joiners knew only the seed: each one's first message is a join push/pull to it.
    for name in "bcde":
        first = net.messages(src=name)[0]
        assert first.dst == "a" and type(first.msg) is PushPull and first.msg.join
    # Every member learned of every other; nobody was ever suspected on the way.
    assert all(ev.new == "alive" for _, ev in net.events)
    assert {(obs, ev.node) for obs, ev in net.events} == {(o, n) for o in FIVE for n in FIVE if o != n}
    net.run(5.0)
    assert net.converged(FIVE) and all(ev.new == "alive" for _, ev in net.events)
    assert_wire_clean(net)


def test_join_retries_with_backoff_until_the_seed_answers(seed):
    net = SwimNet(seed=seed)
    net.add("a")
    net.crash("a")  # the seed is not up yet
    joiner = net.add("b")
    joiner.join(net.now, [addr_of("a")])
    net.run(3.0)
    attempts = [s.at for s in net.messages(PushPull, src="b") if s.msg.join]
    assert len(attempts) >= 3 and not joiner.joined
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps == sorted(gaps) and gaps[0] == pytest.approx(TEST.join_retry_initial)
    assert max(gaps) <= TEST.join_retry_max + 1e-9
    net.resume("a")
    assert net.run_until(lambda: net.converged("ab"), 5.0)
    assert joiner.joined


# ------------------------------------------------------------------ failure detection

def test_crashed_member_is_suspected_then_declared_dead_by_everyone(seed):
    net = started(seed=seed)
    net.crash("c")
    assert net.run_until(lambda: net.all_see("c", "dead"), 10.0)
    for observer in "abde":
        assert statuses_seen_by(net, observer, "c") == ["suspect", "dead"]
    # Only c was ever in doubt.
    assert {ev.node for _, ev in net.events} == {"c"}
    # Lifeguard: the probers were not blamed, since the helpers' nacks showed the net is fine.
    assert all(net.cores[o].health == 0 for o in "abde")
    net.run(5.0)
    assert {ev.node for _, ev in net.events} == {"c"}
    assert_wire_clean(net)


def test_suspected_member_that_is_alive_refutes_and_is_never_declared_dead(seed):
    net = started(seed=seed)
    net.crash("c")  # a pause: c neither runs nor hears anything
    assert net.run_until(lambda: bool(net.events_about("c", "suspect")), 5.0)
    net.resume("c")
    refuted = lambda: all(net.status(o, "c") == "alive" and net.cores[o].member("c").incarnation >= 1  # noqa: E731
                          for o in "abde")
    assert net.run_until(refuted, 10.0)  # gossip, or at worst the next push/pull
    c = net.cores["c"]
    assert c.incarnation >= 1 and c.counters["refutes"] >= 1
    net.run(10.0)
    assert not [ev for _, ev in net.events if ev.new == "dead"]
    assert net.converged(FIVE)
    # The refutation is the Alive news with c's new incarnation that c itself sent.
    assert any(type(item) is Alive and item.node == "c" and item.incarnation == c.incarnation
               for s in net.messages(src="c") for item in getattr(s.msg, "news", ()))
    assert_wire_clean(net)


def test_suspect_hears_of_its_suspicion_in_the_ping_sent_to_it(seed):
    # Lifeguard's buddy system, seen on the wire of a running cluster: while c is paused, every
    # member that suspects c (the originator, then those it told) puts the suspicion first in
    # the Ping that starts each of its probes of c, so c learns it from the first probe that
    # gets through.  (Relayed pings of helpers and a probe's retry carry no buddy news.)
    # A long suspicion timeout lets every member's round robin come back to c meanwhile.
    net = started(seed=seed, config=TEST.with_changes(suspicion_mult=20.0))
    net.crash("c")
    assert net.run_until(lambda: bool(net.events_about("c", "suspect")), 5.0)
    since = net.now
    net.run(2.0)
    probe_starts = {}
    for sent in net.messages(Ping, dst="c"):
        if sent.cause == "tick":
            probe_starts.setdefault((sent.src, sent.msg.seq), sent)
    by_suspecters = [s for s in probe_starts.values()
                     if s.at > since and net.status_at(s.src, "c", s.at) == "suspect"]
    assert len({s.src for s in by_suspecters}) >= 3
    for sent in by_suspecters:
        assert is_buddy(sent)
        assert sent.msg.news[0] == Suspect("c", 0, sent.src)
    net.resume("c")
    assert net.run_until(lambda: net.converged(FIVE), 2.0)
    assert not net.events_about("c", "dead")


def test_indirect_probe_through_helpers_when_only_the_direct_link_is_cut(seed):
    net = started(seed=seed)
    net.block("a", "b")
    net.run(10.0)
    assert not net.events, "a member was suspected although every member could be reached"
    a = net.cores["a"]
    assert a.counters.get("indirect_probes", 0) > 0
    # a asked helpers to probe b, and a helper relayed b's ack back under a's sequence number.
    asks = {s.msg.seq for s in net.messages(PingReq, src="a") if s.msg.target == "b"}
    relayed = [s for s in net.messages(Ack, dst="a") if s.src != "b" and s.msg.seq in asks]
    assert asks and relayed
    assert all(net.cores[o].health == 0 for o in FIVE)
    assert_wire_clean(net)


@pytest.mark.parametrize("lifeguard", [True, False])
def test_helper_that_cannot_reach_the_target_sends_a_nack(lifeguard, seed):
    net = started(seed=seed, config=TEST.with_changes(lifeguard=lifeguard))
    net.crash("c")
    assert net.run_until(lambda: net.all_see("c", "dead"), 10.0)
    net.run(1.0)  # let the last helpers' nack timers run out
    asks = [s for s in net.messages(PingReq) if s.msg.target == "c"]
    nacks = net.messages(Nack)
    assert asks
    if not lifeguard:
        assert not nacks
        return
    # Each helper asked to probe c answered its asker with a Nack for the asker's sequence number.
    answered = {(s.dst, s.src, s.msg.seq) for s in nacks}
    for ask in asks:
        assert (ask.src, ask.dst, ask.msg.seq) in answered
    assert sum(net.cores[o].counters.get("nacks_received", 0) for o in "abde") >= len(asks)


def test_local_health_rises_when_probes_fail_without_nacks_and_stretches_the_period(seed):
    net = started(seed=seed)
    for other in "bcde":
        net.block(other, "a", both=False)  # a can send but hears nothing: no acks, no nacks
    since = net.now
    net.run(8.0)
    a = net.cores["a"]
    assert a.health == TEST.health_max
    probe_starts: dict[int, float] = {}  # seq -> time of the probe's first Ping
    for sent in net.messages(Ping, src="a"):
        if sent.cause == "tick":
            probe_starts.setdefault(sent.msg.seq, sent.at)
    starts = sorted(at for at in probe_starts.values() if at >= since)
    gaps = [round(later - earlier, 9) for earlier, later in zip(starts, starts[1:])]
    assert gaps == sorted(gaps), "the probe period should only stretch while probes keep failing"
    assert gaps[0] == pytest.approx(TEST.probe_interval) or gaps[0] > TEST.probe_interval
    assert max(gaps) == pytest.approx(TEST.probe_interval * (1 + TEST.health_max))
    # Once a hears the cluster again, successful probes bring its health back down.
    net.heal()
    assert net.run_until(lambda: a.health == 0, 30.0)


# ------------------------------------------------------------------ leaving, partitions, restarts

def test_graceful_leave_shows_left_everywhere_not_dead(seed):
    net = started(seed=seed)
    c = net.cores["c"]
    c.leave(net.now)
    net.flush("c")
    net.crash("c")  # the process exits right after sending its goodbyes
    assert net.run_until(lambda: net.all_see("c", "left"), 3.0)
    net.run(10.0)
    assert all(net.status(o, "c") == "left" for o in "abde")
    assert [ev.new for obs, ev in net.events_about("c") if obs != "c"] == ["left"] * 4
    assert not [ev for _, ev in net.events if ev.new in ("suspect", "dead")]
    assert_wire_clean(net)


def test_partition_makes_each_side_declare_the_other_dead_then_heals(seed):
    net = started(seed=seed)
    left, right = "ab", "cde"
    net.partition(left, right)
    split = lambda: all(net.status(x, y) == "dead" and net.status(y, x) == "dead"  # noqa: E731
                        for x in left for y in right)
    assert net.run_until(split, 30.0)
    assert all(net.status(x, y) == "alive" for side in (left, right) for x in side for y in side)
    # Past gossip_to_dead: nobody gossips to the other side any more, so only the periodic
    # reconnect (a push/pull with a dead member) can bring the halves together.
    net.run(TEST.gossip_to_dead + 1.0)
    net.heal()
    assert net.run_until(lambda: net.converged(FIVE), 30.0)
    assert sum(net.cores[o].counters.get("reconnects", 0) for o in FIVE) > 0
    net.run(5.0)
    assert net.converged(FIVE)
    assert_wire_clean(net)


def test_restarted_node_with_same_id_and_incarnation_zero_is_accepted_again(seed):
    net = started(seed=seed)
    net.crash("c")
    assert net.run_until(lambda: net.all_see("c", "dead"), 10.0)
    reborn = net.add("c")  # same id and address, a fresh core: incarnation 0
    assert reborn.incarnation == 0
    reborn.join(net.now, [addr_of("a")])
    assert net.run_until(lambda: net.converged(FIVE), 10.0)
    # It heard of its own death from the seed's state and refuted it with a higher incarnation.
    assert reborn.incarnation >= 1 and reborn.counters["refutes"] >= 1
    net.run(5.0)
    assert net.converged(FIVE)
    assert all(net.cores[o].member("c").incarnation == reborn.incarnation for o in "abde")
    assert_wire_clean(net)


def test_quick_restart_with_new_metadata_is_learned_by_everyone(seed):
    # Restarted before anyone noticed: same incarnation 0 but new metadata. The node sees its
    # old self in the seed's state and re-announces itself with a higher incarnation.
    net = SwimNet(seed=seed)
    net.cluster(FIVE)
    net.run(1.0)
    net.crash("c")
    reborn = net.add("c", meta=Meta(name="c", version="2.0", started_ms=99))
    reborn.join(net.now, [addr_of("a")])
    fresh = lambda: all(net.cores[o].member("c").meta.version == "2.0" for o in "abde")  # noqa: E731
    assert net.run_until(fresh, 5.0)
    assert reborn.incarnation >= 1
    assert not [ev for _, ev in net.events if ev.new == "dead"]


FORGED = {
    "suspect": Suspect("c", 2**32 - 1, "b"),
    "dead": Dead("c", 2**32 - 1, "b", False),
    "alive-elsewhere": Alive("c", 2**32 - 1, "evil.example:7946", Meta("c")),
}


@pytest.mark.parametrize("forged", list(FORGED))
def test_forged_news_at_the_highest_incarnation_does_not_exile_a_live_member(forged):
    net = started(seed=1)
    for observer in "abde":
        net.inject(observer, Gossip("b", addr_of("b"), (FORGED[forged],)), src="b")
    net.run(20.0)
    assert_wire_clean(net)
    assert all(net.status(o, "c") == "alive" and net.cores[o].member("c").addr == addr_of("c") for o in "abde")


# ------------------------------------------------------------------ state records

def record_of(net: SwimNet, observer: str, node: str) -> tuple[int, bytes]:
    member = net.cores[observer].member(node)
    return member.record_version, member.record


def test_record_updates_newest_version_wins(seed):
    net = started(seed=seed)
    a = net.cores["a"]
    a.set_record(net.now, b"v1")
    a.set_record(net.now, b"v2")
    net.flush("a")
    assert net.run_until(lambda: all(record_of(net, o, "a") == (2, b"v2") for o in "bcde"), 5.0)
    # An old version arriving late changes nothing, and is not passed on.
    stale = Record("a", 1, b"v1")
    since = net.now
    net.inject("c", Gossip("b", addr_of("b"), (stale,)), src="b")
    net.run(2.0)
    assert all(record_of(net, o, "a") == (2, b"v2") for o in "bcde")
    assert not [s for s in net.messages(since=since) if s.cause != "inject" and stale in getattr(s.msg, "news", ())]
    a.set_record(net.now, b"v3")
    net.flush("a")
    assert net.run_until(lambda: all(record_of(net, o, "a") == (3, b"v3") for o in "bcde"), 5.0)


def test_restarted_nodes_record_outbids_its_old_one(seed):
    net = started(seed=seed)
    a = net.cores["a"]
    for payload in (b"old-1", b"old-2", b"old-3"):
        a.set_record(net.now, payload)
    net.flush("a")
    assert net.run_until(lambda: all(record_of(net, o, "a") == (3, b"old-3") for o in "bcde"), 5.0)
    net.crash("a")
    assert net.run_until(lambda: net.all_see("a", "dead"), 10.0)
    reborn = net.add("a")
    reborn.set_record(net.now, b"new")  # version 1: lower than what the cluster holds
    reborn.join(net.now, [addr_of("b")])
    assert net.run_until(lambda: net.converged(FIVE), 10.0)
    assert net.run_until(lambda: all(record_of(net, o, "a")[1] == b"new" for o in "bcde"), 5.0)
    versions = {record_of(net, o, "a")[0] for o in FIVE}
    assert len(versions) == 1 and versions.pop() > 3
    assert_wire_clean(net)


# ------------------------------------------------------------------ news limits

def test_each_piece_of_news_is_sent_at_most_retransmit_limit_times(seed):
    net = started(seed=seed)
    limit = TEST.retransmit_limit(5)
    assert limit == 4  # 4 × ceil(log10(5 + 1))
    a = net.cores["a"]
    a.set_record(net.now, b"digest")
    net.flush("a")
    net.run(10.0)
    item = Record("a", 1, b"digest")
    sends = Counter(s.src for s in net.sent
                    if type(s.msg) is not PushPull and item in getattr(s.msg, "news", ()))
    assert sends["a"] == limit  # the origin spends its whole budget
    assert all(n <= limit for n in sends.values())
    assert all(record_of(net, o, "a") == (1, b"digest") for o in "bcde")


def busy_history(seed: int) -> SwimNet:
    """Joins, a crash, a false suspicion, a partition and its healing, records: lots of news."""
    net = SwimNet(seed=seed)
    net.add("a")
    for name in "bcde":
        net.add(name).join(net.now, [addr_of("a")])
    assert net.run_until(lambda: net.converged(FIVE), 10.0)
    net.cores["b"].set_record(net.now, b"b1")
    net.flush("b")
    net.crash("c")
    net.run(0.5)
    net.resume("c")
    net.run(2.0)
    net.partition("ab", "cde")
    net.run(6.0)
    net.heal()
    assert net.run_until(lambda: net.converged(FIVE), 30.0)
    net.run(2.0)
    return net


def test_no_news_is_sent_more_than_retransmit_limit_times_in_a_busy_history(seed):
    # (Once failed: a gossip round sent news already piggybacked twice to 3 more members.)
    assert_news_limits(busy_history(seed))


# ------------------------------------------------------------------ determinism of the harness

def transcript(seed: int) -> list:
    net = started(seed=seed)
    net.crash("d")
    net.run(5.0)
    return [(round(s.at, 9), s.src, s.dst, s.fate, s.msg) for s in net.sent]


def test_same_seed_same_transcript():
    assert transcript(21) == transcript(21)
    assert transcript(21) != transcript(22)
