"""TLS sessions between meshes carry client connections one after another (p2pswarm.mesh.tlsmux):
reuse, half-close, resets, revocation, and a peer that breaks the framing."""

from __future__ import annotations

import asyncio
import os

import pytest

from p2pswarm.mesh import tlsmux
from p2pswarm.mesh.proxy import Mesh

from .meshtest import LOOPS, arun, eventually, free_port
from .test_proxy import BACK_1, BACK_2, MESH_A, MESH_B, Backend, hello, table
from .test_tls import encrypted, relay_ports, tls


async def pair(target: Backend, b_tls: dict | None = None, **b_extra) -> tuple[Mesh, Mesh, int, int]:
    """Node B runs the replica behind its TLS relay; node A publishes an encrypted port to it."""
    rp_b = relay_ports(MESH_B)
    node_b = Mesh()
    await node_b.apply(table(MESH_B, {}, relay_port=rp_b, relay_allow=[target.addr], tls=b_tls or tls("node-b"),
                             **b_extra))
    node_a = Mesh()
    port = free_port(MESH_A)
    await node_a.apply(table(MESH_A, {port: [encrypted("t1", target, f"{MESH_B}:{rp_b + 1}")]}, tls=tls("node-a")))
    return node_a, node_b, port, rp_b


async def stop(target: Backend, *meshes: Mesh) -> None:
    for mesh in meshes:
        await mesh.close()
    await target.stop()


@pytest.mark.parametrize("loop", LOOPS)
def test_new_client_connections_reuse_one_tls_session_and_half_close_crosses(loop: str) -> None:
    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        b_tls = tls("node-b")
        node_a, node_b, port, rp_b = await pair(target, b_tls)
        for i in range(5):
            name, r, w = await hello(MESH_A, port)
            assert name == "behind"
            data = os.urandom(1000 + 100_000 * i)
            w.write(data)
            w.write_eof()  # the backend sees the client's EOF (a stream carries half-closes)...
            assert await r.read() == data  # ...echoes everything, then ends its side: EOF back to the client
            w.close()
            if i == 2:  # a new table with the same TLS material keeps the sessions
                await node_b.apply(table(MESH_B, {}, version=2, relay_port=rp_b, relay_allow=[target.addr],
                                         tls=b_tls))
        status = node_a.status()["tls_relay"]
        assert status["sessions_opened"] == 1 and status["sessions_reused"] == 4  # one handshake for five
        assert node_b.status()["tls_relay"]["sessions_in"] == 1
        assert node_b.status()["relay"]["relayed_in"] == 5 and target.accepted == 5
        await eventually(lambda: node_b.status()["active"] == 0 and node_a.status()["active"] == 0)
        await stop(target, node_a, node_b)
    arun(main(), loop)


def test_concurrent_connections_open_sessions_as_needed_and_reuse_them_later() -> None:
    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        node_a, node_b, port, _ = await pair(target)

        async def one(i: int) -> bytes:
            name, r, w = await hello(MESH_A, port)
            w.write(b"%d" % i)
            w.write_eof()
            got = await r.read()
            w.close()
            return got
        for _ in range(2):
            assert await asyncio.gather(*(one(i) for i in range(20))) == [b"%d" % i for i in range(20)]
            await eventually(lambda: node_a.status()["active"] == 0)
        status = node_a.status()["tls_relay"]
        assert status["sessions_opened"] <= 20 and status["sessions_opened"] + status["sessions_reused"] == 40
        assert status["sessions_reused"] >= 20  # the second round found every session idle
        await stop(target, node_a, node_b)
    arun(main())


def test_a_client_that_resets_mid_stream_closes_the_backend_and_frees_the_session() -> None:
    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        node_a, node_b, port, _ = await pair(target)
        name, r, w = await hello(MESH_A, port)
        w.write(b"x" * 10_000)
        await r.readexactly(10_000)
        w.transport.abort()  # the client vanishes mid-stream (RST)
        await eventually(lambda: node_b.status()["active"] == 0 and node_a.status()["active"] == 0)
        name, r, w = await hello(MESH_A, port)  # the next client gets the same TLS session
        w.write(b"again")
        w.write_eof()
        assert await r.read() == b"again"
        w.close()
        assert node_a.status()["tls_relay"]["sessions_opened"] == 1
        await stop(target, node_a, node_b)
    arun(main())


def test_a_stream_the_relay_refuses_leaves_its_session_usable() -> None:
    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        other = await Backend("other", BACK_2).start()  # not in B's relay_allow
        node_a, node_b, port, rp_b = await pair(target)
        bad = free_port(MESH_A)
        via = f"{MESH_B}:{rp_b + 1}"
        await node_a.apply(table(MESH_A, {port: [encrypted("t1", target, via)], bad: [encrypted("t2", other, via)]},
                                 version=2, tls=tls("node-a")))
        for p, expect in ((port, "behind"), (bad, ""), (port, "behind"), (bad, ""), (port, "behind")):
            name, r, w = await hello(MESH_A, p)
            assert name == expect  # B paused reading, then refused the target: its session must go on
            w.close()
            await eventually(lambda: node_b.status()["active"] == 0 and node_a.status()["active"] == 0)
        assert node_b.status()["relay"]["relay_refused"] == 2 and other.accepted == 0
        assert node_b.status()["tls_relay"]["sessions_in"] <= 2
        await other.stop()
        await stop(target, node_a, node_b)
    arun(main())


def test_revoking_a_node_cuts_its_open_session_at_once() -> None:
    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        node_a, node_b, port, rp_b = await pair(target)
        name, r, w = await hello(MESH_A, port)  # a long-lived client connection through the session
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        await node_b.apply(table(MESH_B, {}, version=2, relay_port=rp_b, relay_allow=[target.addr],
                                 tls=tls("node-b", revoked=("node-a",))))
        try:
            assert await asyncio.wait_for(r.read(), 5) == b""  # closed by B, not left open
        except ConnectionResetError:
            pass
        w.close()
        assert node_b.status()["tls_relay"]["sessions_in"] == 0
        r, w = await asyncio.open_connection(MESH_A, port)  # and a new session is refused
        assert await r.read() == b""
        w.close()
        assert node_b.status()["relay"]["tls_refused"] >= 1
        await stop(target, node_a, node_b)
    arun(main())


# -- the framing, without sockets ----------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = self.aborted = False

    def write(self, data) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return default

    def frames(self) -> list[tuple[int, int, bytes]]:
        out, pos = [], 0
        while pos < len(self.out):
            sid, kind, n = tlsmux.HEADER.unpack_from(self.out, pos)
            out.append((sid, kind, bytes(self.out[pos + 9:pos + 9 + n])))
            pos += 9 + n
        self.out.clear()
        return out


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list = []
        self.t = None

    def connection_made(self, t) -> None:
        self.t = t

    def data_received(self, data) -> None:
        self.events.append(("data", data))

    def eof_received(self) -> bool:
        self.events.append("eof")
        return True

    def connection_lost(self, exc) -> None:
        self.events.append(("lost", type(exc).__name__ if exc else None))


def frame(sid: int, kind: int, payload: bytes = b"") -> bytes:
    return tlsmux.HEADER.pack(sid, kind, len(payload)) + payload


def accepting() -> tuple[tlsmux.Session, FakeTransport, list[Recorder]]:
    made: list[Recorder] = []

    def on_stream(session, sid):
        made.append(Recorder())
        return made[-1]
    loop = asyncio.new_event_loop()
    session = tlsmux.Session(loop, on_stream, lambda s: None, lambda s: None, 60.0)
    t = FakeTransport()
    session.connection_made(t)
    return session, t, made


def run_soon(session: tlsmux.Session) -> None:
    session.loop.call_soon(session.loop.stop)
    session.loop.run_forever()


def test_a_stream_ends_when_each_side_has_sent_an_end_and_late_frames_are_dropped() -> None:
    session, t, made = accepting()
    session.data_received(frame(1, tlsmux.DATA, b"hel") + frame(1, tlsmux.DATA, b"lo")[:5])  # split frames
    session.data_received(frame(1, tlsmux.DATA, b"lo")[5:] + frame(1, tlsmux.EOF))
    rec = made[0]
    assert rec.events == [("data", b"hel"), ("data", b"lo"), "eof"] and session.stream is not None
    rec.t.write(b"answer")
    rec.t.write_eof()
    assert t.frames() == [(1, tlsmux.DATA, b"answer"), (1, tlsmux.EOF, b"")]
    assert session.stream is None  # both ends sent: ready for stream 2
    run_soon(session)
    assert rec.events[-1] == ("lost", None)
    session.data_received(frame(1, tlsmux.RESET))  # a late frame of stream 1: dropped
    session.data_received(frame(2, tlsmux.DATA, b"next"))
    assert made[1].events == [("data", b"next")] and not t.aborted
    session.loop.close()


def test_a_reset_is_answered_and_ends_the_protocol() -> None:
    session, t, made = accepting()
    session.data_received(frame(7, tlsmux.DATA, b"x") + frame(7, tlsmux.RESET))
    assert t.frames() == [(7, tlsmux.RESET, b"")] and session.stream is None
    run_soon(session)
    assert made[0].events == [("data", b"x"), ("lost", None)]
    session.loop.close()


@pytest.mark.parametrize("bad", [
    frame(1, 9, b""),                                     # unknown kind
    frame(1, tlsmux.EOF, b"x"),                           # an end with a payload
    tlsmux.HEADER.pack(1, tlsmux.DATA, tlsmux.MAX_FRAME + 1),  # oversized
    frame(1, tlsmux.DATA, b"a") + frame(2, tlsmux.DATA, b"b"),  # a new stream before the last ended
    frame(1, tlsmux.DATA, b"a") + frame(1, tlsmux.EOF) + frame(1, tlsmux.DATA, b"b"),  # data after the end
])
def test_a_peer_that_breaks_the_framing_loses_its_session(bad: bytes) -> None:
    session, t, made = accepting()
    session.data_received(bad)
    assert t.aborted and session.protocol_errors == 1
    session.loop.close()


def test_sessions_from_other_meshes_are_capped_like_connections() -> None:
    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        node_a, node_b, port, _ = await pair(target, limits={"max_conns": 1})
        name, r1, w1 = await hello(MESH_A, port)  # holds B's only session (and its only connection)
        assert name == "behind"
        r2, w2 = await asyncio.open_connection(MESH_A, port)  # needs a second session: refused by B
        assert await asyncio.wait_for(r2.read(), 5) == b""
        assert node_b.status()["relay"]["refused_limit"] >= 1
        w1.write(b"still")
        assert await r1.readexactly(5) == b"still"  # the first is untouched
        for w in (w1, w2):
            w.close()
        await stop(target, node_a, node_b)
    arun(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_new_tls_material_retires_the_old_sessions_and_traffic_goes_on(loop: str) -> None:
    from p2pswarm.testing.meshtls import throwaway_ca

    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        node_a, node_b, port, rp_b = await pair(target)
        name, r, w = await hello(MESH_A, port)  # an open connection on the old session
        w.write(b"old")
        assert await r.readexactly(3) == b"old"
        rotated = throwaway_ca("c1", b"\x07")  # a CA rotation: both sides get new material
        await node_b.apply(table(MESH_B, {}, version=2, relay_port=rp_b, relay_allow=[target.addr],
                                 tls=tls("node-b", rotated)))
        await node_a.apply(table(MESH_A, {port: [encrypted("t1", target, f"{MESH_B}:{rp_b + 1}")]}, version=2,
                                 tls=tls("node-a", rotated)))
        w.write(b"still")  # the open connection finishes on its old session...
        assert await r.readexactly(5) == b"still"
        w.close()
        await eventually(lambda: node_a.status()["tls_relay"]["sessions_out"] == 0)  # ...which then closes
        name, r, w = await hello(MESH_A, port)  # a new connection: a new session with the new material
        w.write(b"new")
        w.write_eof()
        assert name == "behind" and await r.read() == b"new"
        w.close()
        assert node_a.status()["tls_relay"]["sessions_opened"] == 2
        await stop(target, node_a, node_b)
    arun(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_member_speaking_another_framing_inside_tls_is_refused(loop: str) -> None:
    from p2pswarm.mesh.tlsctx import parse_tls

    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        node_a, node_b, port, rp_b = await pair(target)
        other = parse_tls(tls("node-x")).client  # a valid member certificate...
        other.set_alpn_protocols(["p2pswarm-mesh/0"])  # ...but a protocol version B does not speak
        r, w = await asyncio.open_connection(MESH_B, rp_b + 1, ssl=other, server_hostname="")
        w.write(b"P2PR\x01")
        try:
            assert await asyncio.wait_for(r.read(), 5) == b""
        except (ConnectionResetError, OSError):
            pass
        w.close()
        assert node_b.status()["relay"]["tls_refused"] == 1 and target.accepted == 0
        await stop(target, node_a, node_b)
    arun(main(), loop)
