"""The DNS listeners and host in-process: dnspython's resolver over UDP and TCP, bad input over the
network (oversized TCP, garbage, floods), the zone following gossip, and where ``auto`` listens."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from types import SimpleNamespace

import dns.asyncquery
import dns.asyncresolver
import dns.message
import dns.rcode
import msgpack
import pytest

from p2pswarm.dns import server as server_mod
from p2pswarm.dns.core import Responder
from p2pswarm.dns.host import DnsHost, parse_dns_addr
from p2pswarm.dns.server import DnsServer
from p2pswarm.dns.zone import MemberFacts, build
from p2pswarm.node.record import GossipRecord
from p2pswarm.testing.localcluster import free_host, free_port
from p2pswarm.transport.ports import DNS_FALLBACK_OFFSET

pytestmark = pytest.mark.timeout(60)

ZONE = build("p2pswarm", "a", [
    MemberFacts("a", "10.0.0.1", "alive", {"7.0": {"s": "running", "p": 31000, "n": "web", "m": [[80, 31000, 0]]}},
                mesh=True),
    MemberFacts("b", "10.0.0.2", "alive", {"7.1": {"s": "running", "p": 31001, "n": "web", "m": [[80, 31001, 0]]}},
                mesh=True)], version=1)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def started(host: str = "127.0.0.1") -> DnsServer:
    server = DnsServer(Responder(ZONE), host, 0)
    await server.start()
    return server


def resolver(server: DnsServer) -> dns.asyncresolver.Resolver:
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers, res.port, res.lifetime = [server.host], server.port, 5.0
    return res


def test_python_resolver_gets_a_srv_and_tasks_over_udp_and_tcp():
    async def main():
        server = await started()
        try:
            res = resolver(server)
            a = await res.resolve("web.p2pswarm.", "A")
            assert sorted(r.address for r in a) == ["10.0.0.1", "10.0.0.2"]
            srv = await res.resolve("_80._tcp.web.p2pswarm.", "SRV", tcp=True)
            assert sorted(r.port for r in srv) == [31000, 31001]
            with pytest.raises(dns.resolver.NXDOMAIN):
                await res.resolve("nope.p2pswarm.", "A")
            refused = await dns.asyncquery.udp(dns.message.make_query("example.com.", "A"), server.host, 5,
                                               server.port)
            assert refused.rcode() == dns.rcode.REFUSED
            assert server.stats()["queries"] == 4
        finally:
            await server.close()
    run(main())


def test_oversized_tcp_messages_close_the_connection_and_the_server_keeps_answering():
    async def main():
        server = await started()
        try:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(struct.pack("!H", 60000) + b"x" * 100)  # a length far over MAX_QUERY: never read
            await writer.drain()
            assert await asyncio.wait_for(reader.read(10), 5) == b""  # closed without an answer
            writer.close()
            reader, writer = await asyncio.open_connection(server.host, server.port)
            garbage = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xff\xff"
            writer.write(struct.pack("!H", len(garbage)) + garbage)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            reply = dns.message.from_wire(await reader.readexactly(length))
            assert reply.id == 7 and reply.rcode() == dns.rcode.FORMERR
            writer.close()
            answer = await dns.asyncquery.tcp(dns.message.make_query("tasks.web.p2pswarm.", "A"), server.host, 5,
                                              server.port)
            assert len(answer.answer[0]) == 2
            stats = server.stats()
            assert stats["oversized"] == 1 and stats["malformed"] == 1
        finally:
            await server.close()
    run(main())


def test_a_flood_is_rate_limited_counted_and_the_server_recovers(monkeypatch):
    monkeypatch.setattr(server_mod, "CLIENT_RATE", 200.0)
    monkeypatch.setattr(server_mod, "CLIENT_BURST", 50.0)

    async def main():
        server = await started()
        try:
            query = dns.message.make_query("web.p2pswarm.", "A").to_wire()

            def flood():
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    for i in range(3000):
                        s.sendto(query if i % 2 else b"\x00" * 300, (server.host, server.port))  # garbage, too
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"x" * (server_mod.MAX_QUERY + 1), (server.host, server.port))
                await asyncio.sleep(0.1)
            await asyncio.to_thread(flood)
            await asyncio.sleep(0.3)
            stats = server.stats()
            assert stats["rate_limited"] > 500 and stats["oversized"] == 1
            assert stats["queries"] + stats["malformed"] < 1000  # the burst and the rate, not the flood
            await asyncio.sleep(0.3)  # the bucket refills
            answer = await dns.asyncquery.udp(dns.message.make_query("web.p2pswarm.", "A"), server.host, 5,
                                              server.port)
            assert answer.rcode() == dns.rcode.NOERROR
        finally:
            await server.close()
    run(main())


class FakeSwim:
    def __init__(self, members):
        self._members = members

    def members(self):
        return self._members


def member(node, addr, status, tasks, version):
    record = msgpack.packb({"tasks": [version, tasks], "mesh": [0, []]}, use_bin_type=True)
    return SimpleNamespace(node=node, addr=addr, status=status, record=record, record_version=version)


def test_the_host_follows_gossip_and_listens_where_auto_says():
    host_ip = free_host()
    swim_port = free_port(host_ip)

    async def main():
        web = {"1.0": {"s": "running", "p": 40000, "n": "web", "m": [[80, 40000, 0]]}}
        swim = FakeSwim([member("a", f"{host_ip}:{swim_port}", "alive", web, 1),
                         member("b", "10.9.0.2:7946", "alive", {"1.1": {"s": "running", "p": 40001, "n": "web",
                                                                        "m": [[80, 40001, 0]]}}, 1)])
        state = SimpleNamespace(applied=3, services={"web": None, "idle": None}, tasks={})
        raft = SimpleNamespace(driver=SimpleNamespace(cluster=state))
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            blocker.bind((host_ip, 53))  # as root: port 53 is taken; otherwise the node may not bind it anyway
        except OSError:
            pass
        record = GossipRecord()
        host = DnsHost("a", swim, raft, record, swim_addr=f"{host_ip}:{swim_port}")
        await host.start()
        try:
            assert host.addr == f"{host_ip}:{swim_port + DNS_FALLBACK_OFFSET}"
            assert host.choice.startswith("fallback (port 53:")
            host.step(0.0)
            res = resolver(host.server)
            answer = await res.resolve("tasks.web.p2pswarm.", "A")
            assert sorted(r.address for r in answer) == sorted([host_ip, "10.9.0.2"])
            swim._members[1] = member("b", "10.9.0.2:7946", "dead", {}, 2)
            host.step(0.1)  # the next loop turn after the death: gone at once
            assert [r.address for r in await res.resolve("tasks.web.p2pswarm.", "A")] == [host_ip]
            with pytest.raises(dns.resolver.NoAnswer):  # known to the cluster state, no task running
                await res.resolve("idle.p2pswarm.", "A")
            assert host.metrics()["queries"] == 3 and host.status()["services"] == 2
        finally:
            await host.close()
            blocker.close()
    run(main())


def test_dns_addr_values_are_checked_in_one_line():
    assert parse_dns_addr("AUTO") == "auto" and parse_dns_addr("off") == "off"
    assert parse_dns_addr("127.0.0.1:5353") == "127.0.0.1:5353"
    with pytest.raises(ValueError, match="--dns-addr wants HOST:PORT"):
        parse_dns_addr("localhost")


def test_a_picked_port_whose_tcp_side_is_taken_is_given_up_for_another(monkeypatch):
    """Port 0: the kernel's UDP port may already be some socket's TCP port; the server tries another, and a port
    the operator chose is never silently changed."""
    real, calls = asyncio.start_server, []

    async def taken_once(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 1:
            raise OSError(errno.EADDRINUSE, "address already in use")
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "start_server", taken_once)

    async def main():
        server = await started()
        try:
            assert len(calls) >= 2 and server.port == calls[-1]  # (a real clash may add a try)
            answer = await dns.asyncquery.tcp(dns.message.make_query("tasks.web.p2pswarm.", "A"), server.host, 5,
                                              server.port)
            assert len(answer.answer[0]) == 2
        finally:
            await server.close()
        calls.clear()
        fixed = DnsServer(Responder(ZONE), "127.0.0.1", server.port)
        with pytest.raises(OSError):
            await fixed.start()
        assert len(calls) == 1
    run(main())
