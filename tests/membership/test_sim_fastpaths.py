"""The shortcuts that make the simulator fast must not change what it computes.

Each structure kept for speed is checked against the plain version it replaces:
the calendar event queue against a binary heap, the network's per-message sender
against ``delays()``, the gossip queue's kept order and counted-once sends against
sorting and counting on every message, and the SWIM core's cached deadlines
against recomputing them from scratch after every step.
"""

from __future__ import annotations

import heapq
import random

import pytest

from p2pswarm.membership.messages import Alive, Meta, Record, Suspect
from p2pswarm.membership.news import NewsQueue
from p2pswarm.sim.engine import EventHeap
from p2pswarm.sim.network import NetworkModel, SimNetwork
from p2pswarm.wire import encoded_size

from .swimnet import SwimNet, addr_of

# ------------------------------------------------------------------ event queue


def _drive(queue: EventHeap, seed: int, fast: bool) -> list[tuple]:
    """Pop everything up to t=5 (then to t=9) while pushing more, as a simulator does."""
    rng = random.Random(seed)
    for n in range(3000):
        queue.push(rng.choice([0.0, 0.5, 1.0, rng.uniform(0, 3), 1e9]), 1, n, None)
    seen = []
    for end in (2.0005, 5.0007, 9.0):
        events = queue.events_until(end) if fast else queue.pop_until(end)
        for event in events:
            seen.append(event[:4])
            at = event[0]
            for _ in range(rng.choice([0, 0, 1, 2])):
                # now (a tie), within the same millisecond, or later
                queue.push(at + rng.choice([0.0, 1e-9, rng.uniform(0, 0.002), rng.uniform(0, 1)]), 2, 0, None)
    return seen


def _heap_order(seed: int) -> tuple[list[tuple], int]:
    """What a binary heap of (time, serial) does with the same pushes; and how many are left."""
    rng = random.Random(seed)
    heap, serial = [], 0
    for n in range(3000):
        serial += 1
        heapq.heappush(heap, (rng.choice([0.0, 0.5, 1.0, rng.uniform(0, 3), 1e9]), serial, 1, n))
    seen = []
    for end in (2.0005, 5.0007, 9.0):
        while heap and heap[0][0] <= end:
            event = heapq.heappop(heap)
            seen.append(event)
            for _ in range(rng.choice([0, 0, 1, 2])):
                serial += 1
                heapq.heappush(heap, (event[0] + rng.choice([0.0, 1e-9, rng.uniform(0, 0.002), rng.uniform(0, 1)]),
                                      serial, 2, 0))
    return seen, len(heap)


@pytest.mark.parametrize("fast", [False, True], ids=["pop_until", "events_until"])
def test_calendar_queue_pops_in_heap_order(fast):
    for seed in range(8):
        queue = EventHeap()
        order, left = _heap_order(seed)
        assert _drive(queue, seed, fast) == order
        assert (queue.processed, len(queue), queue.now) == (len(order), left, 9.0)


def test_calendar_queue_counts_what_is_left():
    queue = EventHeap()
    for at in (0.1, 0.2, 7.0, float("inf")):
        queue.push(at, 0, 0)
    assert [e[0] for e in queue.pop_until(1.0)] == [0.1, 0.2]
    assert (queue.processed, len(queue), queue.now) == (2, 2, 1.0)
    assert [e[0] for e in queue.events_until(10.0)] == [7.0]
    assert (queue.processed, len(queue)) == (3, 1)


def test_the_networks_sender_draws_what_delays_draws():
    model = NetworkModel(base_latency=0.001, jitter=0.002, loss=0.2, duplicate=0.3)
    plain, fast = SimNetwork(model, random.Random(3)), SimNetwork(model, random.Random(3))
    plain.partition([[0, 1], [2, 3]], symmetric=False)
    fast.partition([[0, 1], [2, 3]], symmetric=False)
    queue = EventHeap()
    send = fast.transmitter(queue, 7)
    expected = []
    for n in range(2000):
        src, dst, now = n % 4, (n * 7) % 4, n * 0.01
        expected += [(now + delay, 7, dst, n) for delay in plain.delays(src, dst)]
        send(now, src, dst, n)
    got = [(at, kind, dst, n) for at, _, kind, dst, n in queue.pop_until(float("inf"))]
    assert got == sorted(expected, key=lambda e: e[0]) and len(got) > 1000
    assert (fast.sent, fast.lost) == (plain.sent, plain.lost)


# ------------------------------------------------------------------ news queue


class PlainQueue:
    """The gossip queue's rules, sorted and counted item by item on every message."""

    def __init__(self, fresh_sends: int) -> None:
        self.fresh_sends = fresh_sends
        self.items: dict[tuple, list] = {}  # key -> [item, sends, serial]
        self.serial = 0

    def put(self, key, item) -> None:
        self.serial += 1
        self.items[key] = [item, 0, self.serial]

    def _ordered(self):
        return sorted(self.items.items(), key=lambda kv: (kv[1][1], -kv[1][2]))

    def _count(self, key, sends, limit) -> None:
        self.items[key][1] += sends
        if self.items[key][1] >= limit:
            del self.items[key]

    def take(self, budget, limit, first=None):
        out = [first] if first is not None else []
        budget -= encoded_size(first) if first is not None else 0
        used, picked = 0, []
        for key, (item, _, _) in self._ordered():
            size = encoded_size(item)
            if item is first:
                continue
            if used + size > budget:
                if size > budget:
                    continue
                break
            used += size
            picked.append(key)
            out.append(item)
        for key in picked:
            self._count(key, 1, limit)
        return out

    def take_for(self, targets, budget, limit):
        used, copies = 0, []
        for key, (item, sends, _) in self._ordered():
            if sends >= self.fresh_sends:
                break
            size = encoded_size(item)
            if used + size > budget:
                if size > budget:
                    continue
                break
            used += size
            copies.append((key, item, min(targets, limit - sends)))
        for key, _, n in copies:
            self._count(key, n, limit)
        return [tuple(item for _, item, n in copies if n > j) for j in range(targets)] if copies else []

    def fresh(self) -> int:
        return sum(1 for _, sends, _ in self.items.values() if sends < self.fresh_sends)


def _news(rng: random.Random):
    node = f"n{rng.randrange(8)}"
    kind = rng.random()
    if kind < 0.3:
        return (node, "m"), Alive(node, rng.randrange(5), addr_of(node), Meta(node))
    if kind < 0.6:
        return (node, "m"), Suspect(node, rng.randrange(5), f"n{rng.randrange(8)}")
    return (node, "r"), Record(node, rng.randrange(5), b"x" * rng.choice([1, 5, 50, 300]))


def test_news_queue_takes_what_sorting_every_time_would():
    for seed in range(400):
        rng = random.Random(seed)
        fresh_sends = rng.randint(1, 4)
        fast, plain = NewsQueue(fresh_sends), PlainQueue(fresh_sends)
        for _ in range(80):
            op = rng.random()
            if op < 0.4:
                key, item = _news(rng)
                fast.put(key, item)
                plain.put(key, item)
            elif op < 0.8:
                budget, limit = rng.choice([0, 20, 40, 100, 400, 2000]), rng.randint(1, 8)
                first = None
                if rng.random() < 0.2:  # a buddy suspicion, sometimes one that is queued
                    first = rng.choice([v[0] for v in plain.items.values()] or [None]) if rng.random() < 0.5 \
                        else Suspect("n1", 0, "n2")
                taken = fast.take(budget, limit, first)
                assert taken == plain.take(budget, limit, first), seed
                # the size the core budgets the record queue with, instead of encoding the items again
                assert fast.taken_bytes == sum(map(encoded_size, taken)), seed
            else:
                targets, budget, limit = rng.randint(1, 4), rng.choice([20, 100, 2000]), rng.randint(1, 8)
                batches = fast.take_for(targets, budget, limit)
                assert batches == plain.take_for(targets, budget, limit), seed
                assert fast.taken_bytes == sum(map(encoded_size, batches[0] if batches else ())), seed
            assert len(fast) == len(plain.items)
            assert fast.fresh == plain.fresh() and fast.has_fresh == (plain.fresh() > 0)


# ------------------------------------------------------------------ cached deadlines


def _deadline_from_scratch(core) -> float:
    """next_deadline() as it was computed before it kept its inputs up to date."""
    t = core._next_probe
    probe = core._probe
    if probe is not None and not probe.done:
        t = min(t, min(probe.retry_at, probe.end) if probe.indirect else probe.ack_deadline)
    if core._next_gossip < t and core._news.has_fresh:
        t = core._next_gossip
    t = min(t, core._next_push_pull, core._next_reconnect, core._next_reap, core._join_at)
    for suspicion in core._suspicions.values():
        t = min(t, suspicion.deadline)
    for relay in core._relays.values():
        t = min(t, relay[2])
    return t


def test_cached_deadlines_match_a_fresh_computation_after_every_step():
    net = SwimNet(seed=4, loss=0.15)
    net.cluster([f"m{i}" for i in range(8)])
    late = net.add("late")
    late.join(net.now, [addr_of("m0")])
    steps = 0

    def check() -> bool:
        nonlocal steps
        steps += 1
        for name, core in net.cores.items():
            if name not in net.down:
                assert core.next_deadline() == _deadline_from_scratch(core), (name, net.now)
        return False

    net.run_until(check, 3.0)
    net.crash("m3")
    net.run_until(check, 6.0)
    net.partition(["m0", "m1", "m2", "late"], ["m4", "m5", "m6", "m7"])
    net.run_until(check, 10.0)
    net.heal()
    net.run_until(check, 10.0)
    assert steps > 5000
