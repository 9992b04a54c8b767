"""One conformance suite for every Transport: ZeroMQ, in-memory, and ZeroMQ behind a no-fault wrapper.

Behavioural checks only: nothing here asserts a duration (deadlines only stop
a broken transport from hanging the run).
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Awaitable, Callable

import pytest

from p2pswarm.security.keys import CurveKeys
from p2pswarm.transport.base import TransportError
from p2pswarm.transport.faults import FaultyTransport
from p2pswarm.transport.memory import MemoryNetwork, MemoryTransport
from p2pswarm.transport.zmq import ZmqTransport, parse_addr
from p2pswarm.wire import MAX_MESSAGE_BYTES

pytestmark = pytest.mark.timeout(15)

KINDS = ["zmq", "memory", "faulty-zmq", "curve-zmq"]
DEADLINE = 4.0
STRANGER = CurveKeys.from_secret(bytes(range(32)))


class Net:
    """Makes transports of one kind on loopback and closes them all afterwards."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.memory = MemoryNetwork()
        self.made: list = []

    def make(self, addr: str = "127.0.0.1:0", **kw):
        if self.kind == "memory":
            t = MemoryTransport(self.memory, addr, **kw)
        elif self.kind == "zmq":
            t = ZmqTransport(addr, **kw)
        elif self.kind == "curve-zmq":
            # Every transport of the net is admitted and each address has its transport's key;
            # an address of no transport gets a stranger's key (sends queue, as to a dead peer).
            t = ZmqTransport(addr, curve=CurveKeys.from_secret(random.randbytes(32)), authorize=self.admitted,
                             peer_key=self.key_of, **kw)
        else:
            t = FaultyTransport(ZmqTransport(addr, **kw), random.Random(1))
        self.made.append(t)
        return t

    def admitted(self, key: bytes) -> bool:
        return any(t.curve_public == key for t in self.made)

    def key_of(self, addr: str) -> bytes:
        return next((t.curve_public for t in self.made if t.local_addr == addr), STRANGER.public)

    async def new(self, addr: str = "127.0.0.1:0", **kw):
        t = self.make(addr, **kw)
        await t.start()
        return t

    async def close_all(self) -> None:
        for t in self.made:
            await t.close()


def run(kind: str, scenario: Callable[[Net], Awaitable[None]]) -> None:
    async def main() -> None:
        net = Net(kind)
        try:
            await asyncio.wait_for(scenario(net), DEADLINE)
        finally:
            await net.close_all()

    asyncio.run(main())


async def recv(t) -> bytes:
    return await asyncio.wait_for(t.recv(), DEADLINE)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", KINDS)
def test_local_addr_reports_the_real_port(kind):
    async def scenario(net: Net) -> None:
        a = await net.new()
        host, port = parse_addr(a.local_addr)
        assert host == "127.0.0.1" and port > 0

    run(kind, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_messages_arrive_intact_and_in_order_per_channel(kind):
    async def scenario(net: Net) -> None:
        a, b = await net.new(), await net.new()
        expected: list[bytes] = []
        got: list[bytes] = []
        # Bursts of 25 stay within the default high-water marks (libzmq frees
        # queue room in steps of half the HWM, so a burst of HWM can drop).
        for burst in range(8):
            sent = []
            for i in range(burst * 25, burst * 25 + 25):
                sent.append(b"p%d" % i)
                assert a.send(b.local_addr, sent[-1])
                if i % 10 == 0:
                    sent.append(b"b%d:" % i + bytes(range(256)) * 64)
                    assert a.send(b.local_addr, sent[-1], bulk=True)
            got += [await recv(b) for _ in sent]
            expected += sent
        assert sorted(got) == sorted(expected)
        probes = [m for m in got if m.startswith(b"p")]
        bulks = [m for m in got if m.startswith(b"b")]
        assert probes == [m for m in expected if m.startswith(b"p")]
        assert bulks == [m for m in expected if m.startswith(b"b")]
        assert a.stats()["sent"] == len(expected)
        assert b.stats()["received"] == len(expected)

    run(kind, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_probe_after_a_max_size_bulk_message_arrives(kind):
    async def scenario(net: Net) -> None:
        a, b = await net.new(), await net.new()
        big = bytes(random.Random(7).getrandbits(8) for _ in range(4096)) * (MAX_MESSAGE_BYTES // 4096)
        assert len(big) == MAX_MESSAGE_BYTES
        assert a.send(b.local_addr, big, bulk=True)
        assert a.send(b.local_addr, b"probe")
        got = [await recv(b), await recv(b)]
        assert sorted(got, key=len) == [b"probe", big]  # either order: separate channels

    run(kind, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_send_to_a_dead_peer_never_blocks_and_eventually_drops(kind):
    async def scenario(net: Net) -> None:
        a = await net.new()
        dead = f"127.0.0.1:{unused_port()}"
        results = [a.send(dead, b"x" * 100) for _ in range(1000)]  # finishing is the point
        assert False in results
        assert a.stats()["send_dropped"] == results.count(False)

    run(kind, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_oversized_messages_are_not_delivered_and_the_receiver_keeps_working(kind):
    async def scenario(net: Net) -> None:
        a, b = await net.new(), await net.new(max_message_bytes=1024)
        a.send(b.local_addr, b"X" * 4096, bulk=True)
        a.send(b.local_addr, b"Y" * 4096)

        async def keep_sending() -> None:
            # A peer that sent an oversized message is disconnected; its
            # sockets reconnect, so small messages get through again.
            while True:
                a.send(b.local_addr, b"ok-probe")
                a.send(b.local_addr, b"ok-bulk", bulk=True)
                await asyncio.sleep(0.02)

        seen: list[bytes] = []
        sender = asyncio.ensure_future(keep_sending())
        try:
            while not {b"ok-probe", b"ok-bulk"} <= set(seen):
                seen.append(await recv(b))
        finally:
            sender.cancel()
        # Both channels work again; anything oversized would have come before
        # these end markers, since each channel keeps its order.
        assert a.send(b.local_addr, b"end-probe") and a.send(b.local_addr, b"end-bulk", bulk=True)
        while not {b"end-probe", b"end-bulk"} <= set(seen):
            seen.append(await recv(b))
        assert max(len(m) for m in seen) <= 1024
        assert b.send(a.local_addr, b"still alive")
        assert await recv(a) == b"still alive"

    run(kind, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_binding_an_address_in_use_raises_a_one_line_transport_error(kind):
    async def scenario(net: Net) -> None:
        a = await net.new()
        b = net.make(a.local_addr)
        with pytest.raises(TransportError) as info:
            await b.start()
        msg = str(info.value)
        assert "\n" not in msg and a.local_addr in msg and "in use" in msg

    run(kind, scenario)


BAD_ADDRESSES = ["", "nohost", "host:", ":7946", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http",
                 "127.0.0.1: 80", "::1:7946", "[::1]", "[not-ipv6]:80", "a b:80", "999.1.1.1:80",
                 "tcp://127.0.0.1:80", "-bad-.example:80", "x" * 400 + ":80"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_malformed_address_is_counted_and_dropped(kind):
    async def scenario(net: Net) -> None:
        a, b = await net.new(), await net.new()
        for addr in BAD_ADDRESSES:
            assert a.send(addr, b"x") is False, addr
        assert a.stats()["bad_address"] == len(BAD_ADDRESSES)
        assert a.send(b.local_addr, b"fine")
        assert await recv(b) == b"fine"

    run(kind, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_close_wakes_a_pending_recv_with_transport_error(kind):
    async def scenario(net: Net) -> None:
        a = await net.new()
        pending = asyncio.ensure_future(a.recv())
        await asyncio.sleep(0.01)
        await a.close()
        with pytest.raises(TransportError):
            await asyncio.wait_for(pending, DEADLINE)
        assert a.send("127.0.0.1:9", b"x") is False
        await a.close()  # idempotent

    run(kind, scenario)


# ZeroMQ specifics ---------------------------------------------------------------


def test_zmq_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")

    async def scenario(net: Net) -> None:
        a, b = await net.new("[::1]:0"), await net.new("[::1]:0")
        assert a.local_addr.startswith("[::1]:")
        assert a.send(b.local_addr, b"six") and a.send(b.local_addr, b"bulk six", bulk=True)
        assert sorted([await recv(b), await recv(b)]) == [b"bulk six", b"six"]

    run("zmq", scenario)


def test_zmq_peer_cache_is_bounded_and_evicts_the_least_recently_used():
    async def scenario(net: Net) -> None:
        a = await net.new(max_peers=2)
        b = await net.new()
        dead = [f"127.0.0.1:{unused_port()}" for _ in range(2)]
        a.send(b.local_addr, b"1")
        a.send(dead[0], b"x")
        a.send(b.local_addr, b"2")  # b is now the most recently used
        a.send(dead[1], b"x")  # evicts dead[0]
        stats = a.stats()
        assert stats["peers_open"] == 2 and stats["evicted"] == 1
        assert a.send(b.local_addr, b"3")
        assert [await recv(b) for _ in range(3)] == [b"1", b"2", b"3"]

    run("zmq", scenario)


def test_zmq_advertise_port_zero_takes_the_bound_port():
    async def scenario(net: Net) -> None:
        a = await net.new("127.0.0.1:0", advertise="127.0.0.2:0")
        assert a.local_addr.startswith("127.0.0.2:") and not a.local_addr.endswith(":0")

    run("zmq", scenario)


@pytest.mark.parametrize("bind", ["nonsense", "127.0.0.1", "127.0.0.1:70000"])
def test_zmq_malformed_bind_address_is_a_one_line_error(bind):
    async def scenario(net: Net) -> None:
        with pytest.raises(TransportError) as info:
            await net.make(bind).start()
        assert "\n" not in str(info.value) and "cannot bind" in str(info.value)

    run("zmq", scenario)


def test_zmq_send_before_start_is_dropped():
    t = ZmqTransport("127.0.0.1:0")
    assert t.send("127.0.0.1:9", b"x") is False
    assert t.stats()["send_dropped"] == 1
    asyncio.run(t.close())


@pytest.mark.parametrize("kind", KINDS)
def test_what_arrived_while_the_reader_was_busy_is_read_at_once_and_then_nothing_waits(kind):
    async def scenario(net: Net) -> None:
        a, b = await net.new(), await net.new()
        for i in range(5):
            assert a.send(b.local_addr, b"m%d" % i)
        got = [await recv(b)]  # the first wakes the reader; the rest arrive meanwhile
        while len(got) < 5:
            ready = b.recv_ready(2)
            assert len(ready) <= 2
            got += [data for data, _ in ready]
            await asyncio.sleep(0.01)
        assert got == [b"m%d" % i for i in range(5)]
        assert b.recv_ready(10) == []
        assert a.send(b.local_addr, b"later")  # a receive after a drain still wakes for the next message
        assert await recv(b) == b"later"

    run(kind, scenario)
