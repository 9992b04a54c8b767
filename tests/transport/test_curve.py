"""ZmqTransport with CURVE: only authorized keys get through, nothing travels in plaintext.

Behavioural checks only: deadlines stop a broken transport from hanging the run,
and "nothing arrived" is checked after a later message from an authorized peer
did arrive (plus a short grace), never by asserting a duration.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from p2pswarm.security.keys import CurveKeys
from p2pswarm.transport.zmq import ZmqTransport

pytestmark = pytest.mark.timeout(20)

DEADLINE = 5.0
GRACE = 0.3
"""Seconds we keep listening for a message that must not arrive."""


def keys() -> CurveKeys:
    return CurveKeys.from_secret(os.urandom(32))


class Net:
    """CURVE transports on loopback sharing one 'cluster view': admitted keys and the key of each address."""

    def __init__(self) -> None:
        self.admitted: set[bytes] = set()
        self.addr_key: dict[str, bytes] = {}
        self.made: list[ZmqTransport] = []

    async def new(self, admitted: bool = True, k: CurveKeys | None = None, **kw) -> ZmqTransport:
        k = k or keys()
        t = ZmqTransport("127.0.0.1:0", curve=k, authorize=kw.pop("authorize", self.admitted.__contains__),
                         peer_key=kw.pop("peer_key", self.addr_key.get), **kw)
        self.made.append(t)
        await t.start()
        self.addr_key[t.local_addr] = k.public
        if admitted:
            self.admitted.add(k.public)
        return t

    async def plain(self) -> ZmqTransport:
        t = ZmqTransport("127.0.0.1:0")
        self.made.append(t)
        await t.start()
        return t

    async def close(self) -> None:
        for t in self.made:
            await t.close()


def run(scenario) -> None:
    async def main() -> None:
        net = Net()
        try:
            await asyncio.wait_for(scenario(net), DEADLINE * 2)
        finally:
            await net.close()
    asyncio.run(main())


async def until(cond, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def nothing_more(t: ZmqTransport) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(t.recv(), GRACE)


def test_authorized_peers_talk_both_ways_and_see_each_others_keys():
    async def scenario(net: Net) -> None:
        a, b = await net.new(), await net.new()
        assert a.send(b.local_addr, b"ping") and b.send(a.local_addr, b"ack", bulk=True)
        data, key = await asyncio.wait_for(b.recv_with_key(), DEADLINE)
        assert (data, key) == (b"ping", a.curve_public)
        assert await asyncio.wait_for(a.recv(), DEADLINE) == b"ack"
        assert b.stats()["admitted_connections"] >= 1 and b.stats()["refused_connections"] == 0
    run(scenario)


def test_an_unauthorized_key_gets_nothing_through():
    async def scenario(net: Net) -> None:
        server, friend = await net.new(), await net.new()
        intruder = await net.new(admitted=False)  # a valid CURVE key, but no certificate: not admitted
        for i in range(10):
            assert intruder.send(server.local_addr, b"evil%d" % i)  # queued locally: the network decides
        await until(lambda: server.stats()["refused_connections"] >= 1, "the ZAP refusal")
        friend.send(server.local_addr, b"good")
        assert await asyncio.wait_for(server.recv(), DEADLINE) == b"good"
        await nothing_more(server)
        st = server.stats()
        assert st["received"] == 1 and st["refused_connections"] >= 1
    run(scenario)


def test_plaintext_never_crosses_a_curve_server_nor_reaches_a_plaintext_one():
    async def scenario(net: Net) -> None:
        server, friend = await net.new(), await net.new()
        plain = await net.plain()
        for i in range(5):
            plain.send(server.local_addr, b"plaintext%d" % i)
        # and a CURVE client never falls back to plaintext towards a plaintext server
        net.addr_key[plain.local_addr] = keys().public
        friend.send(plain.local_addr, b"secret")
        friend.send(server.local_addr, b"good")
        assert await asyncio.wait_for(server.recv(), DEADLINE) == b"good"
        await nothing_more(server)
        await nothing_more(plain)
        assert server.stats()["received"] == 1 and plain.stats()["received"] == 0
    run(scenario)


def test_a_key_that_loses_its_authorization_is_cut_off_at_once():
    async def scenario(net: Net) -> None:
        server, member = await net.new(), await net.new()
        member.send(server.local_addr, b"before")
        assert await asyncio.wait_for(server.recv(), DEADLINE) == b"before"
        net.admitted.discard(member.curve_public)  # node rm: the certificate is revoked
        receiving = asyncio.ensure_future(server.recv())  # the node's loop is always receiving
        for i in range(5):
            member.send(server.local_addr, b"after%d" % i)
        await until(lambda: server.stats()["unauthorized_dropped"] >= 5, "the revoked key's messages dropped")
        assert not receiving.done()
        receiving.cancel()
        assert server.stats()["received"] == 1
    run(scenario)


def test_no_key_for_an_address_means_no_send():
    async def scenario(net: Net) -> None:
        a = await net.new()
        assert not a.send("127.0.0.1:9", b"x")
        st = a.stats()
        assert st["no_peer_key"] == 1 and st["send_dropped"] == 1 and st["sent"] == 0
    run(scenario)


def test_wrong_server_key_gets_nothing_through_and_a_new_key_reconnects():
    async def scenario(net: Net) -> None:
        server, client = await net.new(), await net.new()
        real = net.addr_key[server.local_addr]
        net.addr_key[server.local_addr] = keys().public  # an impostor's key for that address
        client.send(server.local_addr, b"to-the-wrong-key")
        await nothing_more(server)
        net.addr_key[server.local_addr] = real
        client.send(server.local_addr, b"to-the-right-key")
        assert await asyncio.wait_for(server.recv(), DEADLINE) == b"to-the-right-key"
        assert client.stats()["peer_key_changed"] == 1
    run(scenario)


def test_a_failing_authorize_callback_refuses():
    def boom(key: bytes) -> bool:
        raise RuntimeError("bug")

    async def scenario(net: Net) -> None:
        server = await net.new(authorize=boom)
        client = await net.new()
        client.send(server.local_addr, b"x")
        await until(lambda: server.stats()["refused_connections"] >= 1, "the refusal")
        await nothing_more(server)
    run(scenario)


def test_curve_needs_both_callbacks():
    with pytest.raises(ValueError):
        ZmqTransport("127.0.0.1:0", curve=keys())
    with pytest.raises(ValueError):
        ZmqTransport("127.0.0.1:0", curve=keys(), authorize=lambda k: True)


def test_the_plaintext_transport_is_unchanged():
    t = ZmqTransport("127.0.0.1:0")
    assert set(t.stats()) == {"sent", "send_dropped", "received", "bad_address", "evicted", "oversized",
                              "recv_dropped", "peers_open"}
    assert t.curve_public is None


def test_a_peer_that_refused_us_is_retried_once_it_admits_us():
    # A new member probes someone who has not learned its certificate yet: refused at first,
    # then admitted; libzmq would never retry that socket on its own.
    async def scenario(net: Net) -> None:
        server = await net.new()
        late = await net.new(admitted=False)
        late.send(server.local_addr, b"too early")
        await until(lambda: server.stats()["refused_connections"] >= 1, "the refusal")
        net.admitted.add(late.curve_public)

        async def keep_sending() -> None:
            while True:
                late.send(server.local_addr, b"admitted now")
                await asyncio.sleep(0.05)
        sender = asyncio.ensure_future(keep_sending())
        try:
            assert await asyncio.wait_for(server.recv(), DEADLINE) == b"admitted now"
        finally:
            sender.cancel()
        assert late.stats()["handshake_refused"] >= 1
    run(scenario)
