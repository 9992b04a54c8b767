"""The routing mesh's UDP data plane (p2pswarm.mesh.udp), in process, on 127.0.0.1.

Each test runs a UdpMesh and tiny UDP echo backends that prefix every reply with their
name, so a test sees which backend answered. Also: the UDP part of the table builder, the
agent's digest entries for UDP ports, and the data-plane process serving a UDP port.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import pytest

from p2pswarm.agent.core import _mesh_entries
from p2pswarm.cluster.spec import PortSpec
from p2pswarm.mesh.control import DataPlane
from p2pswarm.mesh.table import Peer, build
from p2pswarm.mesh.tablecheck import TableError
from p2pswarm.mesh.udp import UdpMesh, parse_udp

from .meshtest import LOOPS, arun, eventually, free_port

HOST = "127.0.0.1"


def free_udp_port() -> int:
    return free_port(HOST, socket.SOCK_DGRAM)


class Echo(asyncio.DatagramProtocol):
    """A UDP backend: answers each datagram with ``name:`` + the datagram; remembers senders."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.sources: list[tuple[str, int]] = []
        self.transport: Any = None
        self.port = 0

    async def start(self) -> "Echo":
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(HOST, 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sources.append(addr)
        self.transport.sendto(self.name + b":" + data, addr)

    def close(self) -> None:
        self.transport.close()


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: Any = None

    @classmethod
    async def open(cls, port: int) -> "Client":
        loop = asyncio.get_running_loop()
        client = cls()
        await loop.create_datagram_endpoint(lambda: client, remote_addr=(HOST, port))
        return client

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)

    async def ask(self, data: bytes, timeout: float = 2.0) -> bytes:
        self.transport.sendto(data)
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        self.transport.close()


def backend(task: str, port: int, local: bool = False, rtt: float | None = 0.001, **extra: Any) -> dict:
    return {"task": task, "node": "n-" + task, "addr": f"{HOST}:{port}", "local": local, "rtt": rtt,
            "via": None, **extra}


def table(ports: dict[int, list[dict]], **limits: Any) -> dict:
    return {"version": 1, "host": HOST, "relay_port": 0, "relay_allow": [], "blocked_hosts": [], "ports": [],
            "udp": [{"port": p, "service": "dns", "backends": bs} for p, bs in ports.items()],
            "limits": {"idle_timeout": 60.0, **limits}}


@pytest.mark.parametrize("loop", LOOPS)
def test_round_trip(loop: str) -> None:
    async def main() -> None:
        b1 = await Echo("b1").start()
        mesh = UdpMesh()
        port = free_udp_port()
        await mesh.apply(table({port: [backend("t1", b1.port, local=True)]}))
        client = await Client.open(port)
        for i in range(20):
            assert await client.ask(f"ping {i}".encode()) == f"b1:ping {i}".encode()
        big = bytes(range(256)) * 200  # 51200 bytes in one datagram
        assert await client.ask(big) == b"b1:" + big
        st = mesh.status()
        assert st["listening"] == [port] and st["bind_errors"] == {}
        c = st["ports"][str(port)]
        assert (c["datagrams_in"], c["datagrams_out"], c["sessions"], c["sessions_started"]) == (21, 21, 1, 1)
        assert c["bytes_out"] == c["bytes_in"] + 3 * 21 and c["errors"] == 0 and c["dropped"] == 0
        assert len(set(b1.sources)) == 1  # one session: one backend socket
        client.close()
        await mesh.close()
        b1.close()
    arun(main(), loop)


def test_two_clients_get_separate_sessions() -> None:
    async def main() -> None:
        b1 = await Echo("b1").start()
        mesh = UdpMesh()
        port = free_udp_port()
        await mesh.apply(table({port: [backend("t1", b1.port, local=True)]}))
        c1, c2 = await Client.open(port), await Client.open(port)
        assert await c1.ask(b"one") == b"b1:one"
        assert await c2.ask(b"two") == b"b1:two"
        assert await c1.ask(b"one again") == b"b1:one again"  # replies go to the right client
        assert c1.queue.empty() and c2.queue.empty()
        assert mesh.status()["ports"][str(port)]["sessions"] == 2
        assert len(set(b1.sources)) == 2 and b1.sources[0] == b1.sources[2]
        c1.close(), c2.close()
        await mesh.close()
        b1.close()
    arun(main())


def test_sessions_are_balanced_over_remote_backends() -> None:
    async def main() -> None:
        b1, b2 = await Echo("b1").start(), await Echo("b2").start()
        mesh = UdpMesh()
        port = free_udp_port()
        await mesh.apply(table({port: [backend("t1", b1.port), backend("t2", b2.port)]}))
        clients = [await Client.open(port) for _ in range(20)]
        answers = [(await c.ask(b"x")).split(b":")[0] for c in clients]
        assert answers.count(b"b1") >= 5 and answers.count(b"b2") >= 5
        for c in clients:
            c.close()
        await mesh.close()
        b1.close(), b2.close()
    arun(main())


def test_idle_sessions_expire() -> None:
    async def main() -> None:
        b1 = await Echo("b1").start()
        mesh = UdpMesh(idle_timeout=0.2)
        port = free_udp_port()
        await mesh.apply(table({port: [backend("t1", b1.port, local=True)]}))
        client = await Client.open(port)
        assert await client.ask(b"a") == b"b1:a"
        await eventually(lambda: mesh.status()["ports"][str(port)]["expired"] == 1, timeout=3)
        assert mesh.status()["ports"][str(port)]["sessions"] == 0
        assert await client.ask(b"b") == b"b1:b"  # a new session, a new backend socket
        c = mesh.status()["ports"][str(port)]
        assert c["sessions"] == 1 and c["sessions_started"] == 2
        assert len(set(b1.sources)) == 2
        client.close()
        await mesh.close()
        b1.close()
    arun(main())


def test_idle_timeout_and_cap_from_the_table() -> None:
    async def main() -> None:
        mesh = UdpMesh()
        await mesh.apply(table({free_udp_port(): []}, udp_idle_timeout=1.5, udp_max_sessions=7))
        assert (mesh.idle_timeout, mesh.max_sessions) == (1.5, 7)
        await mesh.apply(table({}))
        assert (mesh.idle_timeout, mesh.max_sessions) == (30.0, 4096)
        await mesh.close()
    arun(main())


def test_the_least_recently_active_session_is_evicted_at_the_cap() -> None:
    async def main() -> None:
        b1 = await Echo("b1").start()
        mesh = UdpMesh(max_sessions=2)
        port = free_udp_port()
        await mesh.apply(table({port: [backend("t1", b1.port, local=True)]}))
        c1, c2, c3 = [await Client.open(port) for _ in range(3)]
        assert await c1.ask(b"1") == b"b1:1"
        assert await c2.ask(b"2") == b"b1:2"
        assert await c1.ask(b"1") == b"b1:1"  # c2 is now the least recently active
        assert await c3.ask(b"3") == b"b1:3"  # evicts c2's session
        c = mesh.status()["ports"][str(port)]
        assert (c["sessions"], c["evicted"], c["sessions_started"]) == (2, 1, 3)
        assert await c1.ask(b"1") == b"b1:1"  # c1 kept its session
        assert mesh.status()["ports"][str(port)]["sessions_started"] == 3
        assert await c2.ask(b"2") == b"b1:2"  # c2 gets a new one (evicting c3, now the oldest)
        c = mesh.status()["ports"][str(port)]
        assert (c["sessions"], c["evicted"], c["sessions_started"]) == (2, 2, 4)
        for cl in (c1, c2, c3):
            cl.close()
        await mesh.close()
        b1.close()
    arun(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_backend_removed_from_the_table_moves_the_session(loop: str) -> None:
    async def main() -> None:
        b1, b2 = await Echo("b1").start(), await Echo("b2").start()
        mesh = UdpMesh()
        port = free_udp_port()
        await mesh.apply(table({port: [backend("t1", b1.port, local=True), backend("t2", b2.port)]}))
        client = await Client.open(port)
        assert await client.ask(b"x") == b"b1:x"  # the local replica first
        assert await client.ask(b"y") == b"b1:y"  # and the session stays there
        await mesh.apply(table({port: [backend("t2", b2.port)]}))
        assert await client.ask(b"z") == b"b2:z"
        c = mesh.status()["ports"][str(port)]
        assert c["switched"] == 1 and c["sessions"] == 1 and c["sessions_started"] == 1
        # the same task with a new address (restarted on another port) moves too
        await mesh.apply(table({port: [backend("t2", b1.port)]}))
        assert await client.ask(b"w") == b"b1:w"
        assert mesh.status()["ports"][str(port)]["switched"] == 2
        client.close()
        await mesh.close()
        b1.close(), b2.close()
    arun(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_unreachable_backend_sends_the_next_datagram_elsewhere(loop: str) -> None:
    async def main() -> None:
        b2 = await Echo("b2").start()
        dead = free_udp_port()  # nothing listens: ICMP port unreachable
        mesh = UdpMesh()
        port = free_udp_port()
        await mesh.apply(table({port: [backend("dead", dead, local=True), backend("t2", b2.port)]}))
        client = await Client.open(port)
        client.transport.sendto(b"lost")  # goes to the local (dead) replica first
        await eventually(lambda: mesh.status()["ports"][str(port)]["backend_errors"] >= 1)
        assert await client.ask(b"again") == b"b2:again"
        c = mesh.status()["ports"][str(port)]
        assert c["switched"] == 1 and c["sessions"] == 1
        # a new client skips the held-off backend although it is local
        other = await Client.open(port)
        assert await other.ask(b"new") == b"b2:new"
        client.close(), other.close()
        await mesh.close()
        b2.close()
    arun(main(), loop)


def test_no_backend_counts_and_recovers() -> None:
    async def main() -> None:
        b1 = await Echo("b1").start()
        mesh = UdpMesh()
        port = free_udp_port()
        await mesh.apply(table({port: []}))
        client = await Client.open(port)
        client.transport.sendto(b"nobody")
        await eventually(lambda: mesh.status()["ports"][str(port)]["no_backend"] == 1)
        await mesh.apply(table({port: [backend("t1", b1.port)]}))
        assert await client.ask(b"now") == b"b1:now"
        assert mesh.status()["ports"][str(port)]["switched"] == 0
        client.close()
        await mesh.close()
        b1.close()
    arun(main())


def test_port_in_use_is_reported_and_retried() -> None:
    async def main() -> None:
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind((HOST, 0))
        busy = taken.getsockname()[1]
        mesh = UdpMesh()
        await mesh.apply(table({busy: []}))
        st = mesh.status()
        assert st["listening"] == [] and st["bind_errors"] == {str(busy): f"address in use: {HOST}:{busy}"}
        assert st["ports"][str(busy)]["listening"] is False
        taken.close()
        await eventually(lambda: mesh.status()["listening"] == [busy], timeout=5)
        assert mesh.status()["bind_errors"] == {}
        await mesh.close()
    arun(main())


def test_removed_port_stops_listening_and_keeps_its_counts() -> None:
    async def main() -> None:
        b1 = await Echo("b1").start()
        mesh = UdpMesh()
        port = free_udp_port()
        await mesh.apply(table({port: [backend("t1", b1.port)]}))
        client = await Client.open(port)
        assert await client.ask(b"x") == b"b1:x"
        await mesh.apply(table({}))
        st = mesh.status()
        assert st["listening"] == [] and st["ports"] == {}
        assert st["total"]["datagrams_in"] == 1 and st["total"]["sessions"] == 0
        await mesh.apply(table({port: [backend("t1", b1.port)]}))  # back at once: rebound at once
        assert mesh.status()["listening"] == [port]
        assert await client.ask(b"y") == b"b1:y"
        await mesh.apply(table({}))
        await asyncio.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, port))  # released
        client.close()
        await mesh.close()
        b1.close()
    arun(main())


def test_bad_table_keeps_the_old_one() -> None:
    async def main() -> None:
        b1 = await Echo("b1").start()
        mesh = UdpMesh()
        port = free_udp_port()
        await mesh.apply(table({port: [backend("t1", b1.port)]}))
        bad = table({port: [backend("t1", b1.port)]})
        bad["udp"][0]["backends"][0]["addr"] = "nowhere"
        await mesh.apply(bad)
        assert "table.udp[0].backends[0].addr" in mesh.status()["table_error"]
        client = await Client.open(port)
        assert await client.ask(b"x") == b"b1:x"
        client.close()
        await mesh.close()
        b1.close()
    arun(main())


def test_parse_keeps_relayed_and_skips_blocked_backends() -> None:
    t = table({53: [backend("a", 1000), backend("b", 1001, via="127.0.0.9:7947"),
                    {**backend("c", 1002), "addr": "10.9.9.9:1002"}, backend("d", 1003, via="10.9.9.9:7947")]})
    t["blocked_hosts"] = ["10.9.9.9"]
    [spec] = parse_udp(t).ports
    assert [(b.task, b.via) for b in spec.backends] == [("a", None), ("b", ("127.0.0.9", 7947))]
    for broken in ({"udp": "x"}, {"udp": [{"port": 0}]}, {"udp": [{"port": 53}, {"port": 53}]},
                   {"udp": [], "limits": {"udp_max_sessions": 0}}):
        with pytest.raises(TableError):
            parse_udp(broken)
    assert parse_udp({"ports": [{"port": 80}]}).ports == ()  # a TCP-only table


# -- the table builder and the agent's digest entries ------------------------------------------


def test_table_puts_udp_ports_in_their_own_list() -> None:
    both = {"s": "running", "v": 1, "n": "dns", "m": [[53, 21001, False], [53, 21002, False, "udp"]]}
    peers = [Peer("a", "node-1", "127.0.0.11", "alive", relay_port=7947, tasks={"t1": both}),
             Peer("b", "node-2", "127.0.0.12", "alive", rtt=0.0004, relay_port=7947,
                  tasks={"t2": {"s": "running", "v": 1, "n": "dns", "m": [[53, 21003, False, "udp"]]}}),
             Peer("c", "node-3", "127.0.0.13", "alive", rtt=0.0006, relay_port=7947,
                  tasks={"t3": {"s": "running", "m": [[54, 21004, False, "sctp"], [55, 21005, True, "udp", 1]]}})]
    table, routes = build("a", peers)
    assert [p["port"] for p in table["ports"]] == [53]
    assert [b["addr"] for b in table["ports"][0]["backends"]] == ["127.0.0.11:21001"]
    [udp] = table["udp"]
    assert udp["port"] == 53 and udp["service"] == "dns" and "proxy_protocol" not in udp
    assert {b["addr"]: b["local"] for b in udp["backends"]} == {"127.0.0.11:21002": True, "127.0.0.12:21003": False}
    assert {(r.port, r.protocol, r.task) for r in routes} == {(53, "tcp", "t1"), (53, "udp", "t1"),
                                                             (53, "udp", "t2")}
    assert table["udp_relay_allow"] == ["127.0.0.11:21002", "127.0.0.12:21003"]  # what a's relay forwards to
    assert table["relay_from"] == ["127.0.0.12", "127.0.0.13"]  # from whom (members' hosts)
    # with the link to b cut, its UDP backend is reached through c's relay, like TCP
    table, routes = build("a", peers, unreachable={"b"})
    assert {b["task"]: b["via"] for b in table["udp"][0]["backends"]} == {"t1": None, "t2": "127.0.0.13:7947"}
    assert any(r.task == "t2" and r.protocol == "udp" and r.route == "via node-3" for r in routes)
    assert table["udp_relay_allow"] == ["127.0.0.11:21002"]  # a no longer reaches b's task itself
    # a TCP-only table has no udp list at all (unchanged format)
    tcp_only = [Peer("a", "node-1", "127.0.0.11", "alive", tasks={"t1": {"s": "running", "m": [[80, 2100, False]]}})]
    assert "udp" not in build("a", tcp_only)[0]


def test_a_table_built_from_digest_records_serves_udp() -> None:
    async def main() -> None:
        b1, b2 = await Echo("b1").start(), await Echo("b2").start()
        port = free_udp_port()

        def peers(local_state: str) -> list[Peer]:
            rec = {"v": 1, "n": "dns"}
            return [Peer("a", "node-1", HOST, "alive",
                         tasks={"t1": {**rec, "s": local_state, "m": [[port, b1.port, False, "udp"]]}}),
                    Peer("b", "node-2", HOST, "alive", rtt=0.0004,
                         tasks={"t2": {**rec, "s": "running", "m": [[port, b2.port, False, "udp"]]}})]
        mesh = UdpMesh()
        await mesh.apply(build("a", peers("running"))[0])
        client = await Client.open(port)
        assert await client.ask(b"q") == b"b1:q"  # t1 is local to "a"
        await mesh.apply(build("a", peers("stopping"))[0])
        assert await client.ask(b"r") == b"b2:r"  # the local task drains: the session moves
        client.close()
        await mesh.close()
        b1.close(), b2.close()
    arun(main())


def test_agent_digest_entries_mark_udp_ports() -> None:
    publish = (PortSpec(53, None, protocol="udp"), PortSpec(8080, 80), PortSpec(53, None))
    assert _mesh_entries(publish, (21000, 80, 21001)) == ((53, 21000, False, "udp"), (8080, 80, False),
                                                          (53, 21001, False))


# -- the data-plane process ---------------------------------------------------------------------


def test_dataplane_process_serves_udp_and_reports_it() -> None:
    async def main() -> None:
        b1 = await Echo("b1").start()
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind((HOST, 0))
        busy = taken.getsockname()[1]
        good = free_udp_port()
        dp = DataPlane(HOST)
        await dp.start()
        try:
            t = table({good: [backend("t1", b1.port, local=True)], busy: []})
            dp.push(t)
            st = await dp.wait_status(lambda s: s.get("version") == 1 and "udp" in s)
            assert st["udp"]["listening"] == [good]
            assert st["bind_errors"] == {f"{busy}/udp": f"address in use: {HOST}:{busy}"}
            client = await Client.open(good)
            assert await client.ask(b"ping") == b"b1:ping"
            st = await dp.wait_status(lambda s: s["udp"]["total"]["datagrams_out"] == 1)
            assert st["udp"]["ports"][str(good)]["sessions"] == 1
            client.close()
        finally:
            await dp.close()
            taken.close()
            b1.close()
    arun(main())


# -- relayed UDP --------------------------------------------------------------------------------

RELAY_HOST = "127.0.8.2"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_backend_behind_a_cut_link_is_reached_through_a_relay_and_back(loop: str) -> None:
    from p2pswarm.mesh.udp import relay_header

    async def main() -> None:
        b1 = await Echo("b1").start()
        port, relay_port = free_udp_port(), free_port(RELAY_HOST, socket.SOCK_DGRAM)
        relay = UdpMesh()  # node R: a direct link to the task's node; A's link to it is cut
        await relay.apply({**table({port: [backend("t1", b1.port)]}), "host": RELAY_HOST, "relay_port": relay_port,
                           "udp_relay_allow": [f"{HOST}:{b1.port}"], "relay_from": [HOST]})
        mesh = UdpMesh()
        via = f"{RELAY_HOST}:{relay_port}"
        await mesh.apply(table({port: [backend("t1", b1.port, via=via)]}))
        client = await Client.open(port)
        for i in range(5):
            assert await client.ask(b"hi %d" % i) == b"b1:hi %d" % i
        st = relay.status()["relay"]  # every datagram went through R, both ways
        assert st["listening"] and st["datagrams_in"] == 5 and st["datagrams_out"] == 5 and st["sessions"] == 1

        # R forwards only from members' hosts, and only to targets it reaches itself
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.5", 0))
        stranger.sendto(relay_header((HOST, b1.port)) + b"spoofed", (RELAY_HOST, relay_port))
        member = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        member.bind((HOST, 0))
        member.sendto(relay_header((HOST, 9)) + b"elsewhere", (RELAY_HOST, relay_port))
        member.sendto(b"not a relayed datagram", (RELAY_HOST, relay_port))
        await eventually(lambda: relay.status()["relay"]["relay_refused"] == 3)
        assert len(b1.sources) == 5
        stranger.close(), member.close()

        # the link comes back: the session moves to the direct route at its next datagram
        await mesh.apply({**table({port: [backend("t1", b1.port)]}), "version": 2})
        assert await client.ask(b"direct") == b"b1:direct"
        assert relay.status()["relay"]["datagrams_in"] == 5 and mesh.status()["ports"][str(port)]["switched"] == 1
        client.close()
        await mesh.close()
        await relay.close()
        b1.close()
    arun(main(), loop)


def test_a_relayed_backend_that_is_down_fails_over_like_a_direct_one() -> None:
    async def main() -> None:
        b1 = await Echo("b1").start()
        dead = free_udp_port()  # nothing listens there: the relay's socket gets port unreachable
        port, relay_port = free_udp_port(), free_port(RELAY_HOST, socket.SOCK_DGRAM)
        relay = UdpMesh()
        await relay.apply({**table({port: []}), "host": RELAY_HOST, "relay_port": relay_port,
                           "udp_relay_allow": [f"{HOST}:{dead}"], "relay_from": [HOST]})
        mesh = UdpMesh(rng=random.Random(3))
        via = f"{RELAY_HOST}:{relay_port}"
        await mesh.apply(table({port: [backend("gone", dead, via=via), backend("t1", b1.port)]}))
        answered = 0
        for i in range(8):  # 8 clients: about half start on the relayed, dead backend
            client = await Client.open(port)
            for attempt in range(3):
                try:
                    assert await client.ask(b"q%d" % i, timeout=0.5) == b"b1:q%d" % i
                    answered += 1
                    break
                except asyncio.TimeoutError:
                    continue  # the first datagram to the dead backend is lost; the next one moves
            client.close()
        assert answered == 8
        c = mesh.status()["ports"][str(port)]
        assert c["backend_errors"] >= 1 and c["switched"] >= 1  # the relay told the sender, as ICMP would
        assert relay.status()["relay"]["backend_errors"] >= 1
        await mesh.close()
        await relay.close()
        b1.close()
    arun(main())


def test_relay_headers_name_any_target_or_refuse_it() -> None:
    from p2pswarm.mesh.udp import parse_relay_header, relay_header
    for target in (("127.0.0.1", 53), ("::1", 5353), ("fd00::1:2", 65535)):
        header = relay_header(target)
        assert parse_relay_header(header + b"payload") == (target, len(header))
    with pytest.raises(ValueError):
        relay_header(("h" * 300, 53))
    with pytest.raises(ValueError):
        relay_header(("höst", 53))
    assert parse_relay_header(b"P2PU\x01\x20short") is None and parse_relay_header(b"P2PX\x01\x00") is None
    assert parse_udp({"udp": [], "relay_from": ["0:0:0:0:0:0:0:1"]}).relay_from == {"::1"}


def test_a_session_keeps_its_replica_when_only_the_route_to_it_changes() -> None:
    async def main() -> None:
        b1, b2 = await Echo("b1").start(), await Echo("b2").start()
        port, relay_port = free_udp_port(), free_port(RELAY_HOST, socket.SOCK_DGRAM)
        relay = UdpMesh()
        await relay.apply({**table({port: []}), "host": RELAY_HOST, "relay_port": relay_port,
                           "udp_relay_allow": [f"{HOST}:{b1.port}", f"{HOST}:{b2.port}"], "relay_from": [HOST]})
        mesh = UdpMesh()
        via = f"{RELAY_HOST}:{relay_port}"
        await mesh.apply(table({port: [backend("t1", b1.port, via=via), backend("t2", b2.port, via=via)]}))
        client = await Client.open(port)
        first = (await client.ask(b"a")).split(b":")[0]
        await mesh.apply({**table({port: [backend("t1", b1.port), backend("t2", b2.port)]}), "version": 2})
        for i in range(5):  # the links healed: the same replica, now directly
            assert (await client.ask(b"b%d" % i)).split(b":")[0] == first
        assert relay.status()["relay"]["datagrams_in"] == 1
        client.close()
        await mesh.close()
        await relay.close()
        b1.close(), b2.close()
    arun(main())
