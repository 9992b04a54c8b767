"""FaultyTransport: loss, delay, cuts and isolation, and the describe/configure API.

The inner transport is the in-memory one: it delivers synchronously and in
order, so "the first message the receiver sees is the marker sent after the
faulted ones" proves that the faulted ones were dropped, without any sleeps.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from p2pswarm.transport.faults import FaultyTransport
from p2pswarm.transport.memory import MemoryNetwork, MemoryTransport

pytestmark = pytest.mark.timeout(15)

DEADLINE = 4.0


def run(scenario) -> None:
    async def main() -> None:
        net = MemoryNetwork()
        made: list = []

        async def new(faulty: bool = False, seed: int = 1):
            t = MemoryTransport(net, "127.0.0.1:0")
            if faulty:
                t = FaultyTransport(t, random.Random(seed))
            made.append(t)
            await t.start()
            return t

        try:
            await asyncio.wait_for(scenario(new), DEADLINE)
        finally:
            for t in made:
                await t.close()

    asyncio.run(main())


async def recv(t) -> bytes:
    return await asyncio.wait_for(t.recv(), DEADLINE)


async def until(cond) -> None:
    while not cond():
        await asyncio.sleep(0.001)


def test_without_faults_messages_pass_through_and_stats_merge():
    async def scenario(new):
        a, b = await new(faulty=True), await new()
        assert a.send(b.local_addr, b"hi") and a.send(b.local_addr, b"bulk", bulk=True)
        assert [await recv(b), await recv(b)] == [b"hi", b"bulk"]
        stats = a.stats()
        assert stats["sent"] == 2 and stats["fault_dropped_out"] == 0 and stats["fault_dropped_in"] == 0

    run(scenario)


def test_drop_rate_one_drops_everything_outgoing():
    async def scenario(new):
        a, b = await new(faulty=True), await new()
        a.drop_rate = 1.0
        for i in range(50):
            assert a.send(b.local_addr, b"lost", bulk=bool(i % 2))  # lost in the "network": True
        assert a.stats()["fault_dropped_out"] == 50 and a.stats()["sent"] == 0
        a.drop_rate = 0.0
        a.send(b.local_addr, b"marker")
        assert await recv(b) == b"marker"

    run(scenario)


def test_drop_rate_one_drops_everything_incoming():
    async def scenario(new):
        a, c = await new(faulty=True), await new()
        a.drop_rate = 1.0
        pending = asyncio.ensure_future(a.recv())
        for _ in range(10):
            c.send(a.local_addr, b"lost")
        await until(lambda: a.stats()["fault_dropped_in"] == 10)
        assert not pending.done()
        a.drop_rate = 0.0
        c.send(a.local_addr, b"marker")
        assert await asyncio.wait_for(pending, DEADLINE) == b"marker"

    run(scenario)


def test_partial_drop_rate_is_deterministic_for_a_seed():
    async def scenario(new):
        outcomes = []
        for _ in range(2):
            a, b = await new(faulty=True, seed=42), await new()
            a.drop_rate = 0.5
            for i in range(100):
                a.send(b.local_addr, b"%d" % i)
            outcomes.append(a.stats()["fault_dropped_out"])
        assert outcomes[0] == outcomes[1] and 20 < outcomes[0] < 80

    run(scenario)


def test_cut_blocks_only_that_peer():
    async def scenario(new):
        a, b, c = await new(faulty=True), await new(), await new()
        a.cut(b.local_addr)
        a.send(b.local_addr, b"to b")
        a.send(c.local_addr, b"to c")
        assert await recv(c) == b"to c"
        assert b.send(a.local_addr, b"b can still reach a")  # a cut is one-way
        assert await recv(a) == b"b can still reach a"
        a.uncut(b.local_addr)
        a.send(b.local_addr, b"marker")
        assert await recv(b) == b"marker"
        assert a.stats()["fault_dropped_out"] == 1

    run(scenario)


def test_isolate_blocks_in_and_out_and_heal_restores():
    async def scenario(new):
        a, b = await new(faulty=True), await new()
        a.isolate(True)
        pending = asyncio.ensure_future(a.recv())
        a.send(b.local_addr, b"out")
        b.send(a.local_addr, b"in")
        await until(lambda: a.stats()["fault_dropped_in"] == 1)
        assert a.stats()["fault_dropped_out"] == 1 and not pending.done()
        a.heal()
        b.send(a.local_addr, b"in again")
        a.send(b.local_addr, b"out again")
        assert await asyncio.wait_for(pending, DEADLINE) == b"in again"
        assert await recv(b) == b"out again"

    run(scenario)


def test_heal_clears_every_fault():
    async def scenario(new):
        a, b = await new(faulty=True), await new()
        a.configure({"drop_rate": 1.0, "delay": 5.0, "cut": [b.local_addr], "isolated": True})
        a.heal()
        assert a.describe() == {"drop_rate": 0.0, "delay": 0.0, "cut": [], "isolated": False}
        a.send(b.local_addr, b"through")
        assert await recv(b) == b"through"

    run(scenario)


def test_delay_sends_later_in_order_without_blocking():
    async def scenario(new):
        a, b = await new(faulty=True), await new()
        a.delay = 0.02
        for i in range(5):
            assert a.send(b.local_addr, b"%d" % i)
        assert a.stats()["sent"] == 0  # nothing reached the inner transport yet
        assert [await recv(b) for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]
        assert a.stats()["fault_delayed"] == 5 and a.stats()["sent"] == 5

    run(scenario)


def test_close_cancels_delayed_sends():
    async def scenario(new):
        a, b = await new(faulty=True), await new()
        a.delay = 30.0
        a.send(b.local_addr, b"never")
        await a.close()
        assert a.stats()["sent"] == 0

    run(scenario)


def test_describe_configure_round_trip():
    async def scenario(new):
        a = await new(faulty=True)
        settings = {"drop_rate": 0.25, "delay": 0.1, "cut": ["127.0.0.1:9000", "[::1]:9001"],
                    "isolated": True}
        a.configure(settings)
        described = a.describe()
        assert json.loads(json.dumps(described)) == {**settings, "cut": sorted(settings["cut"])}
        a.heal()
        a.configure(described)
        assert a.describe() == described
        a.configure({"drop_rate": 0})  # partial update leaves the rest alone
        assert a.describe() == {**described, "drop_rate": 0.0}

    run(scenario)


@pytest.mark.parametrize("bad", [
    {"drop_rate": 1.5}, {"drop_rate": -0.1}, {"drop_rate": "0.5"}, {"drop_rate": True},
    {"drop_rate": float("nan")}, {"delay": -1}, {"delay": 1e9}, {"delay": float("inf")},
    {"cut": "127.0.0.1:9000"}, {"cut": ["nope"]}, {"cut": [7]}, {"isolated": 1},
    {"bogus": 1}, ["drop_rate", 1], {"drop_rate": 0.5, "cut": ["bad"]},
])
def test_configure_rejects_bad_values_with_one_line_and_changes_nothing(bad):
    async def scenario(new):
        a = await new(faulty=True)
        before = a.describe()
        with pytest.raises(ValueError) as info:
            a.configure(bad)
        assert "\n" not in str(info.value) and str(info.value)
        assert a.describe() == before

    run(scenario)


def test_setters_and_cut_validate_too():
    async def scenario(new):
        a = await new(faulty=True)
        with pytest.raises(ValueError):
            a.drop_rate = 2
        with pytest.raises(ValueError):
            a.delay = -0.5
        with pytest.raises(ValueError):
            a.cut("not an address")

    run(scenario)
