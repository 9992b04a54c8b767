"""The data plane's forwarding (p2pswarm.mesh.proxy), in process, on real loopback sockets.

Each test runs a Mesh (or two) and tiny asyncio backends on 127.0.7.x addresses with free
ports. The process-level behaviour (control channel, exit on stdin EOF) is in
test_dataplane.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from typing import Any

import pytest

from p2pswarm.mesh import proxyproto
from p2pswarm.mesh.proxy import Mesh
from p2pswarm.mesh.tablecheck import TableError, parse_table

from .meshtest import LOOPS, arun, eventually, free_port

MESH_A = "127.0.7.1"
MESH_B = "127.0.7.2"
BACK_1 = "127.0.7.11"
BACK_2 = "127.0.7.12"
CLIENT = "127.0.7.50"
STRANGER = "127.0.7.66"
"""Not a member's host: the relay listener must not admit it."""



class Backend:
    """An echo server that first sends its name and a newline (so tests see who answered)."""

    def __init__(self, name: str, host: str, proxy_protocol: bool = False) -> None:
        self.name, self.host, self.proxy_protocol = name, host, proxy_protocol
        self.port = 0
        self.server: asyncio.Server | None = None
        self.accepted = 0
        self.headers: list[proxyproto.ProxyHeader] = []

    async def start(self, port: int = 0) -> "Backend":
        self.server = await asyncio.start_server(self.handle, self.host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            if self.proxy_protocol:
                head = await r.readexactly(16)
                n = proxyproto.header_length(head)
                head += await r.readexactly(n - 16)
                hdr, _ = proxyproto.parse(head)
                self.headers.append(hdr)
                w.write(f"{self.name} {hdr.src[0]}:{hdr.src[1]}\n".encode())
            else:
                w.write(self.name.encode() + b"\n")
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def backend(task: str, b: Backend | str, local: bool = False, rtt: float | None = None,
            via: str | None = None) -> dict:
    addr = b if isinstance(b, str) else b.addr
    return {"task": task, "node": "n-" + task, "addr": addr, "local": local, "rtt": rtt, "via": via}


def table(host: str, ports: dict[int, list[dict]], version: int = 1, proxy: bool = False, **extra: Any) -> dict:
    t = {"version": version, "host": host, "relay_port": 0, "relay_allow": [], "blocked_hosts": [],
         "ports": [{"port": p, "service": f"svc{p}", "proxy_protocol": proxy, "backends": bs}
                   for p, bs in ports.items()],
         "limits": {"max_conns": 100, "connect_timeout": 1.0, "retries": 2, "idle_timeout": 60.0,
                    "drain_grace": 5.0}}
    limits = extra.pop("limits", {})
    t["limits"].update(limits)
    t.update(extra)
    return t


async def hello(host: str, port: int, src: str | None = None) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection(host, port, local_addr=(src, 0) if src else None)
    line = await r.readline()
    return line.decode().strip(), r, w


async def who(host: str, port: int) -> str:
    name, r, w = await hello(host, port)
    w.close()
    return name


@pytest.mark.parametrize("loop", LOOPS)
def test_forwards_both_ways_with_half_close(loop: str) -> None:
    async def main() -> None:
        b1 = await Backend("b1", BACK_1).start()
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t1", b1, local=True)]}))
        name, r, w = await hello(MESH_A, port)
        assert name == "b1"
        for i in range(50):
            msg = f"ping {i}\n".encode() * 10
            w.write(msg)
            assert await r.readexactly(len(msg)) == msg
        w.write(b"last words")
        w.write_eof()  # half-close: the reply must still come back
        assert await r.read() == b"last words"
        w.close()
        await eventually(lambda: mesh.n_active == 0)
        st = mesh.status()
        assert st["listening"] == [port]
        assert st["total"]["accepted"] == 1 and st["total"]["errors"] == 0
        assert st["ports"][str(port)]["bytes_in"] == st["ports"][str(port)]["bytes_out"] - 3
        assert st["backends"] == {}
        await mesh.close()
        await b1.stop()
    arun(main(), loop)


def test_local_replica_first_then_balanced() -> None:
    async def main() -> None:
        local = await Backend("local", BACK_1).start()
        far1 = await Backend("far1", BACK_2).start()
        far2 = await Backend("far2", BACK_2).start()
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t-far1", far1, rtt=0.001),
                                               backend("t-local", local, local=True),
                                               backend("t-far2", far2, rtt=0.001)]}))
        assert {await who(MESH_A, port) for _ in range(20)} == {"local"}
        # without the local replica, open connections spread over the remote ones
        await mesh.apply(table(MESH_A, {port: [backend("t-far1", far1, rtt=0.001), backend("t-far2", far2, rtt=0.001)]},
                               version=2))
        held = [await hello(MESH_A, port) for _ in range(10)]
        names = [n for n, _, _ in held]
        assert 3 <= names.count("far1") <= 7, names
        assert mesh.status()["backends"] == {"t-far1": names.count("far1"), "t-far2": names.count("far2")}
        for _, _, w in held:
            w.close()
        await mesh.close()
    arun(main())


def test_refused_connect_is_retried_transparently() -> None:
    async def main() -> None:
        alive = await Backend("alive", BACK_2).start()
        dead = f"{BACK_1}:{free_port(BACK_1)}"  # nothing listens there: connect is refused
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t-dead", dead, local=True),
                                               backend("t-alive", alive, rtt=0.001)]}))
        names = [await who(MESH_A, port) for _ in range(20)]
        assert names == ["alive"] * 20  # no client saw an error
        c = mesh.status()["total"]
        assert c["connect_failed"] == 20 and c["retried"] == 20 and c["errors"] == 0
        # all candidates dead: the client is closed, counted, nobody else is affected
        await mesh.apply(table(MESH_A, {port: [backend("t-dead", dead, local=True)]}, version=2))
        r, w = await asyncio.open_connection(MESH_A, port)
        assert await r.read() == b""
        w.close()
        await mesh.close()
    arun(main())


class Crashing:
    """A backend whose host dies mid-request: it reads the request, then resets without a byte
    (``answer_first``: after answering part of it, which the client must then see fail)."""

    def __init__(self, host: str, answer_first: bool = False) -> None:
        self.host, self.answer_first, self.port, self.got = host, answer_first, 0, b""

    async def start(self) -> "Crashing":
        self.server = await asyncio.start_server(self.handle, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.got += await r.readuntil(b"\n\n")
        if self.answer_first:
            w.write(b"HTTP/1.0 200 OK\n")
            await w.drain()
        w.transport.abort()


def test_request_to_a_backend_that_dies_before_answering_is_replayed_elsewhere() -> None:
    async def main() -> None:
        crashing = await Crashing(BACK_1).start()
        alive = await Backend("alive", BACK_2).start()
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t-crash", f"{BACK_1}:{crashing.port}", local=True),
                                               backend("t-alive", alive, rtt=0.001)]}))
        r, w = await asyncio.open_connection(MESH_A, port)
        w.write(b"GET / HTTP/1.0\n\n")
        assert await r.readline() == b"alive\n"  # the answer comes from the other replica
        assert await r.readexactly(16) == b"GET / HTTP/1.0\n\n"  # which got the whole request
        w.close()
        assert crashing.got == b"GET / HTTP/1.0\n\n"
        c = mesh.status()["total"]
        assert c["replayed"] == 1 and c["errors"] == 0
        # a backend that answered before dying is not replayed: the client sees the failure
        crashing.answer_first = True
        await mesh.apply(table(MESH_A, {port: [backend("t-crash", f"{BACK_1}:{crashing.port}", local=True),
                                               backend("t-alive", alive, rtt=0.001)]}, version=2))
        r, w = await asyncio.open_connection(MESH_A, port)
        w.write(b"GET / HTTP/1.0\n\n")
        assert await r.read() == b"HTTP/1.0 200 OK\n"
        w.close()
        assert mesh.status()["total"]["replayed"] == 1
        await mesh.close()
        await alive.stop()
        crashing.server.close()
    arun(main())


def test_connect_timeout_moves_on() -> None:
    async def main() -> None:
        alive = await Backend("alive", BACK_2).start()
        # a listener that never accepts: a full backlog makes connects hang (SYNs dropped)
        black = socket.socket()
        black.bind((BACK_1, 0))
        black.listen(0)
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(black.getsockname())
            fillers.append(s)
        await asyncio.sleep(0.05)
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t-black", f"{BACK_1}:{black.getsockname()[1]}", local=True),
                                               backend("t-alive", alive, rtt=0.001)]},
                               limits={"connect_timeout": 0.2}))
        assert await who(MESH_A, port) == "alive"
        await mesh.close()
        for s in fillers:
            s.close()
        black.close()
    arun(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_relay_end_to_end_and_refusal(loop: str) -> None:
    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        other = await Backend("other", BACK_2).start()
        relay_port = free_port(MESH_B)
        relay = Mesh()  # node B: may reach `target` for others, not `other`
        await relay.apply(table(MESH_B, {}, relay_port=relay_port, relay_allow=[target.addr], relay_from=[MESH_A]))
        front = Mesh()  # node A: its link to BACK_1 is cut, so it goes via B
        port, port2 = free_port(MESH_A), free_port(MESH_A)
        via = f"{MESH_B}:{relay_port}"
        await front.apply(table(MESH_A, {
            port: [backend("t-behind", target, rtt=0.001, via=via)],
            port2: [backend("t-other", other, rtt=0.0001, via=via), backend("t-behind", target, rtt=0.002, via=via)],
        }, blocked_hosts=[BACK_1]))
        name, r, w = await hello(MESH_A, port)
        assert name == "behind"
        data = os.urandom(200_000)
        w.write(data)
        assert await r.readexactly(len(data)) == data
        w.close()
        st = relay.status()
        assert st["relay"]["listening"] and st["relay"]["relayed_in"] == 1
        assert front.status()["total"]["relayed_out"] == 1
        # `other` is not in B's relay_allow: B refuses, A moves on to the next candidate
        for _ in range(5):
            assert await who(MESH_A, port2) == "behind"
        assert relay.status()["relay"]["relay_refused"] >= 1
        assert other.accepted == 0
        await front.close()
        await relay.close()
    arun(main(), loop)


def test_relay_rejects_garbage_and_unknown_targets() -> None:
    async def main() -> None:
        target = await Backend("t", BACK_1).start()
        relay_port = free_port(MESH_B)
        relay = Mesh()
        await relay.apply(table(MESH_B, {}, relay_port=relay_port, relay_allow=[target.addr], relay_from=[MESH_A],
                                limits={"connect_timeout": 0.3}))
        member = (MESH_A, 0)  # a member's host sends these
        r, w = await asyncio.open_connection(MESH_B, relay_port, local_addr=member)
        w.write(b"GET / HTTP/1.0\r\n\r\n")
        assert await r.read() == b""  # closed, no answer
        w.close()
        r, w = await asyncio.open_connection(MESH_B, relay_port, local_addr=member)
        tgt = f"{BACK_2}:80".encode()
        w.write(b"P2PR\x01" + len(tgt).to_bytes(2, "big") + tgt + b"\x00")
        reply = await r.read()
        assert reply[:1] == b"\x01" and b"not allowed" in reply
        w.close()
        r, w = await asyncio.open_connection(MESH_B, relay_port, local_addr=member)  # silent: closed after timeout
        assert await r.read() == b""
        w.close()
        st = relay.status()["relay"]
        assert st["relay_refused"] == 1 and st["errors"] >= 1
        await relay.close()
    arun(main())


def test_proxy_protocol_carries_the_client_address_direct_and_relayed() -> None:
    async def main() -> None:
        b = await Backend("pp", BACK_1, proxy_protocol=True).start()
        relay_port = free_port(MESH_B)
        relay = Mesh()
        await relay.apply(table(MESH_B, {}, relay_port=relay_port, relay_allow=[b.addr], relay_from=[MESH_A]))
        front = Mesh()
        direct, relayed = free_port(MESH_A), free_port(MESH_A)
        await front.apply(table(MESH_A, {direct: [backend("t1", b, local=True)],
                                         relayed: [backend("t1", b, via=f"{MESH_B}:{relay_port}")]}, proxy=True))
        for port in (direct, relayed):
            name, r, w = await hello(MESH_A, port, src=CLIENT)
            client_port = w.get_extra_info("sockname")[1]
            assert name == f"pp {CLIENT}:{client_port}"
            w.write(b"after the header")
            assert await r.readexactly(16) == b"after the header"
            w.close()
        assert [h.dst for h in b.headers] == [(MESH_A, direct), (MESH_A, relayed)]
        await front.close()
        await relay.close()
    arun(main())


def relay_request(target: str, pp: bytes | None) -> bytes:
    tgt = target.encode()
    return b"P2PR\x01" + len(tgt).to_bytes(2, "big") + tgt + (b"\x01" + pp if pp else b"\x00")


def test_relay_admits_only_members_so_a_stranger_cannot_forge_the_client_address() -> None:
    """Finding: a non-member sent a PROXY header with source 6.6.6.6 through the relay port and the
    proxy-protocol backend logged it. Now the stranger is closed unanswered; a member still relays."""
    async def main() -> None:
        b = await Backend("pp", BACK_1, proxy_protocol=True).start()
        relay_port = free_port(MESH_B)
        relay = Mesh()
        await relay.apply(table(MESH_B, {}, relay_port=relay_port, relay_allow=[b.addr], relay_from=[MESH_A]))
        forged = proxyproto.encode(("6.6.6.6", 4444), (MESH_B, 80))
        r, w = await asyncio.open_connection(MESH_B, relay_port, local_addr=(STRANGER, 0))
        w.write(relay_request(b.addr, forged) + b"GET / HTTP/1.0\r\n\r\n")
        assert await r.read() == b""  # closed without an answer byte
        w.close()
        await eventually(lambda: relay.status()["relay"]["relay_refused"] == 1)
        assert b.accepted == 0 and b.headers == []
        # a member's mesh (its own address) is admitted, and its header reaches the backend as written
        genuine = proxyproto.encode((CLIENT, 5555), (MESH_A, 80))
        r, w = await asyncio.open_connection(MESH_B, relay_port, local_addr=(MESH_A, 0))
        w.write(relay_request(b.addr, genuine))
        assert await r.readexactly(1) == b"\x00"
        assert (await r.readline()).decode().strip() == f"pp {CLIENT}:5555"
        w.close()
        assert [h.src for h in b.headers] == [(CLIENT, 5555)]
        # a member that left: its host is no longer admitted
        await relay.apply(table(MESH_B, {}, version=2, relay_port=relay_port, relay_allow=[b.addr]))
        r, w = await asyncio.open_connection(MESH_B, relay_port, local_addr=(MESH_A, 0))
        w.write(relay_request(b.addr, genuine))
        assert await r.read() == b""
        w.close()
        assert relay.status()["relay"]["relay_refused"] == 2 and b.accepted == 1
        await relay.close()
        await b.stop()
    arun(main())


def test_port_in_use_is_reported_and_other_ports_serve() -> None:
    async def main() -> None:
        b1 = await Backend("b1", BACK_1).start()
        taken = socket.socket()
        taken.bind((MESH_A, 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        free = free_port(MESH_A)
        mesh = Mesh()
        await mesh.apply(table(MESH_A, {busy: [backend("t1", b1, local=True)], free: [backend("t1", b1, local=True)]}))
        st = mesh.status()
        assert st["bind_errors"] == {str(busy): f"address in use: {MESH_A}:{busy}"}
        assert st["listening"] == [free]
        assert await who(MESH_A, free) == "b1"
        taken.close()  # freed: the data plane binds it on a later retry
        mesh._last_bind_retry = 0
        await eventually(lambda: busy in mesh.status()["listening"], timeout=5)
        assert await who(MESH_A, busy) == "b1"
        await mesh.close()
    arun(main())


def test_garbage_and_midstream_disconnects_do_not_affect_others() -> None:
    async def main() -> None:
        b1 = await Backend("b1", BACK_1).start()
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t1", b1, local=True)]}))
        name, r, w = await hello(MESH_A, port)  # a well-behaved long-lived client
        for i in range(30):
            # a client that sends garbage and resets mid-stream
            s = socket.socket()
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, (MESH_A, port))
            s.send(os.urandom(5000))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # RST
            # a client that disconnects in the middle of a bulk download
            _, r2, w2 = await hello(MESH_A, port)
            w2.write(os.urandom(300_000))
            await r2.readexactly(1000)
            w2.transport.abort()
            msg = f"still fine {i}\n".encode()
            w.write(msg)
            assert await r.readexactly(len(msg)) == msg
        w.close()
        await eventually(lambda: mesh.n_active == 0)
        assert mesh.status()["total"]["active"] == 0
        await mesh.close()
    arun(main())


def test_max_conns_refuses_excess_cleanly() -> None:
    async def main() -> None:
        b1 = await Backend("b1", BACK_1).start()
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t1", b1, local=True)]}, limits={"max_conns": 5}))
        held = [await hello(MESH_A, port) for _ in range(5)]
        for _ in range(20):  # the excess: accepted and closed at once
            r, w = await asyncio.open_connection(MESH_A, port)
            assert await r.read() == b""
            w.close()
        st = mesh.status()
        assert st["active"] == 5 and st["total"]["refused_limit"] == 20
        held.pop()[2].close()
        await eventually(lambda: mesh.n_active == 4)
        assert await who(MESH_A, port) == "b1"  # room again
        for _, _, w in held:
            msg = b"held connections still work"
            w.write(msg)
        for _, r, _ in held:
            assert await r.readexactly(27) == b"held connections still work"
        await mesh.close()
    arun(main())


def test_removed_backend_drains_and_removed_port_stops_listening() -> None:
    async def main() -> None:
        old = await Backend("old", BACK_1).start()
        new = await Backend("new", BACK_2).start()
        mesh = Mesh()
        port, port2 = free_port(MESH_A), free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t-old", old, local=True)],
                                        port2: [backend("t-old", old, local=True)]}))
        name, r, w = await hello(MESH_A, port)
        assert name == "old"
        await mesh.apply(table(MESH_A, {port: [backend("t-new", new, local=True)]}, version=2,
                               limits={"drain_grace": 3.0}))
        assert await who(MESH_A, port) == "new"  # no new connections to the removed task
        w.write(b"during grace\n")  # the open one keeps working during the grace period
        assert await r.readline() == b"during grace\n"
        with pytest.raises(OSError):
            await asyncio.open_connection(MESH_A, port2)
        async with asyncio.timeout(8):  # then it is closed
            assert await r.read() == b""
        w.close()
        await eventually(lambda: mesh.n_active == 0)
        assert mesh.status()["listening"] == [port]
        assert mesh.status()["total"]["accepted"] == 2
        await mesh.close()
    arun(main())


def test_idle_connections_are_closed() -> None:
    async def main() -> None:
        b1 = await Backend("b1", BACK_1).start()
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t1", b1, local=True)]}, limits={"idle_timeout": 1.5}))
        _, r_busy, w_busy = await hello(MESH_A, port)
        _, r_idle, w_idle = await hello(MESH_A, port)
        for _ in range(30):  # 3 s of traffic on one (twice the idle timeout), silence on the other
            w_busy.write(b"x")
            assert await r_busy.readexactly(1) == b"x"
            await asyncio.sleep(0.1)
        async with asyncio.timeout(5):
            assert await r_idle.read() == b""
        assert mesh.n_active == 1
        w_busy.close()
        w_idle.close()
        await mesh.close()
    arun(main())


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("splice_after", [0, 4])
def test_bulk_is_spliced_and_intact(loop: str, splice_after: int) -> None:
    async def main() -> None:
        b1 = await Backend("b1", BACK_1).start()
        mesh = Mesh(splice_after=splice_after)
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t1", b1, local=True)]}))
        name, r, w = await hello(MESH_A, port)
        data = os.urandom(8 << 20)

        async def send() -> None:
            for i in range(0, len(data), 1 << 20):
                w.write(data[i:i + (1 << 20)])
                await w.drain()
            w.write_eof()

        sender = asyncio.create_task(send())
        got = hashlib.sha256()
        n = 0
        while chunk := await r.read(1 << 20):
            got.update(chunk)
            n += len(chunk)
        await sender
        assert n == len(data) and got.digest() == hashlib.sha256(data).digest()
        w.close()
        await eventually(lambda: mesh.n_active == 0)
        c = mesh.status()["total"]
        assert c["spliced"] == 1 and c["bytes_in"] == len(data) and c["bytes_out"] == len(data) + 3
        await mesh.close()
    arun(main(), loop)


def test_request_response_traffic_stays_on_the_protocol_path() -> None:
    async def main() -> None:
        b1 = await Backend("b1", BACK_1).start()
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t1", b1, local=True)]}))
        _, r, w = await hello(MESH_A, port)
        for _ in range(3000):  # 3 MB in small exchanges
            w.write(b"y" * 1000)
            await r.readexactly(1000)
        assert mesh.status()["total"]["spliced"] == 0
        w.close()
        await mesh.close()
    arun(main())


def test_bad_table_keeps_the_old_one() -> None:
    async def main() -> None:
        b1 = await Backend("b1", BACK_1).start()
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t1", b1, local=True)]}))
        bad = table(MESH_A, {port: [backend("t1", "no-port-here", local=True)]}, version=2)
        await mesh.apply(bad)
        st = mesh.status()
        assert st["version"] == 1 and "backends[0].addr" in st["table_error"]
        assert await who(MESH_A, port) == "b1"
        await mesh.close()
    arun(main())


@pytest.mark.parametrize("bad, where", [
    ({"ports": [{"port": 0}]}, "ports[0].port"),
    ({"ports": [{"port": 80, "backends": [{"task": 5, "addr": "h:1"}]}]}, "backends[0].task"),
    ({"ports": "x"}, "table.ports"),
    ({"relay_allow": ["nohost"]}, "relay_allow[0]"),
    ({"limits": {"max_conns": -1}}, "limits.max_conns"),
    ({"ports": [{"port": 80}, {"port": 80}]}, "appears twice"),
])
def test_parse_table_names_the_bad_field(bad: dict, where: str) -> None:
    with pytest.raises(TableError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_table({"version": 1, "host": MESH_A, **bad})


def test_parse_table_drops_backends_behind_cut_links() -> None:
    t = parse_table({"version": 1, "host": MESH_A, "blocked_hosts": [BACK_1], "ports": [{"port": 80, "backends": [
        backend("cut", f"{BACK_1}:1"), backend("relayed", f"{BACK_1}:1", via=f"{MESH_B}:2"),
        backend("fine", f"{BACK_2}:1")]}]})
    assert [b.task for b in t.ports[0].backends] == ["relayed", "fine"]


def test_a_thousand_idle_connections_do_not_exhaust_the_data_plane() -> None:
    async def main() -> None:
        b1 = await Backend("b1", BACK_1).start()
        mesh = Mesh()
        port = free_port(MESH_A)
        await mesh.apply(table(MESH_A, {port: [backend("t1", b1, local=True)]}, limits={"max_conns": 300}))
        flood = []
        for _ in range(1000):  # an idle flood: connect, send nothing, keep the socket
            s = socket.socket()
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, (MESH_A, port))
            flood.append(s)
        await eventually(lambda: mesh.status()["total"]["accepted"] + mesh.status()["total"]["refused_limit"] == 1000)
        st = mesh.status()
        assert st["active"] == 300 and st["total"]["refused_limit"] == 700
        for s in flood[:50]:  # some of the flood leaves: room for real clients again
            s.close()
        await eventually(lambda: mesh.n_active < 300)
        assert await who(MESH_A, port) == "b1"
        for s in flood[50:]:
            s.close()
        await eventually(lambda: mesh.n_active == 0)
        await mesh.close()
    arun(main())
