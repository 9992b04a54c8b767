"""The bulk path of the data plane (p2pswarm.mesh.splice): ThreadedSplicer and its fallback.

A connection that streams is handed to a splicer; at most ``bulk_threads`` connections get
a thread per direction (blocking os.splice), the others are spliced on the event loop. Both
must keep the Protocol path's behaviour: half-close, resets, idle timeout, drain, counters,
the PROXY header before any data, and a clean stop. Real loopback sockets on 127.0.7.x.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from typing import Awaitable, Callable

import pytest

from p2pswarm.mesh import proxyproto, splice
from p2pswarm.mesh.proxy import Mesh

from .meshtest import LOOPS, arun, eventually, free_port

pytestmark = pytest.mark.skipif(not splice.HAVE_SPLICE, reason="needs os.splice (Linux)")

MESH = "127.0.7.3"
BACK = "127.0.7.13"
MB = 1 << 20


def splice_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "p2pswarm-splice")


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    async def guarded(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await handler(r, w)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()
    server = await asyncio.start_server(guarded, BACK, 0)
    return server, server.sockets[0].getsockname()[1]


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(256 * 1024):
        w.write(data)
        await w.drain()
    w.write_eof()


async def mesh_for(backend_port: int, *, bulk_threads: int | None = None, splice_after: int = 4,
                   proxy_protocol: bool = False, **limits: float) -> tuple[Mesh, int]:
    mesh = Mesh(splice_after=splice_after, bulk_threads=bulk_threads)
    port = free_port(MESH)
    await mesh.apply(table(port, backend_port, proxy_protocol, **limits))
    return mesh, port


def table(port: int, backend_port: int | None, proxy_protocol: bool = False, version: int = 1,
          **limits: float) -> dict:
    backends = [] if backend_port is None else [
        {"task": "t1", "node": "n1", "addr": f"{BACK}:{backend_port}", "local": True, "rtt": None, "via": None}]
    return {"version": version, "host": MESH, "relay_port": 0, "relay_allow": [], "blocked_hosts": [],
            "ports": [{"port": port, "service": "svc", "proxy_protocol": proxy_protocol, "backends": backends}],
            "limits": {"max_conns": 100, "connect_timeout": 1.0, "retries": 2, "idle_timeout": 60.0,
                       "drain_grace": 5.0, **limits}}


async def send_all(w: asyncio.StreamWriter, data: bytes) -> None:
    for i in range(0, len(data), MB):
        w.write(data[i:i + MB])
        await w.drain()
    w.write_eof()


async def read_all(r: asyncio.StreamReader) -> bytes:
    chunks = []
    while chunk := await r.read(MB):
        chunks.append(chunk)
    return b"".join(chunks)


def digest(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


@pytest.mark.parametrize("loop", LOOPS)
def test_threaded_bulk_is_intact_both_ways_and_counted(loop: str) -> None:
    async def main() -> None:
        server, bport = await serve(echo)
        mesh, port = await mesh_for(bport)
        r, w = await asyncio.open_connection(MESH, port)
        data = os.urandom(16 * MB)
        sender = asyncio.create_task(send_all(w, data))
        got = await read_all(r)
        await sender
        assert digest(got) == digest(data)
        w.close()
        await eventually(lambda: mesh.n_active == 0)
        c = mesh.status()["total"]
        assert (c["spliced"], c["bytes_in"], c["bytes_out"], c["errors"]) == (1, len(data), len(data), 0)
        assert not mesh.threaded
        await eventually(lambda: splice_threads() == 0)
        await mesh.close()
        server.close()
    arun(main(), loop)


def test_counters_advance_while_a_threaded_connection_streams() -> None:
    """Counters (and the idle clock) see the threads' bytes before the connection ends."""
    async def main() -> None:
        server, bport = await serve(echo)
        mesh, port = await mesh_for(bport)
        r, w = await asyncio.open_connection(MESH, port)
        w.write(os.urandom(4 * MB))
        await r.readexactly(4 * MB)
        await eventually(lambda: len(mesh.threaded) == 1)
        await eventually(lambda: mesh.status()["total"]["bytes_out"] == 4 * MB)
        assert mesh.status()["total"]["bytes_in"] == 4 * MB and mesh.n_active == 1
        w.close()
        await eventually(lambda: mesh.n_active == 0)
        await mesh.close()
        server.close()
    arun(main())


def test_at_most_bulk_threads_connections_get_threads_the_rest_splice_on_the_loop() -> None:
    async def main() -> None:
        server, bport = await serve(echo)
        mesh, port = await mesh_for(bport, bulk_threads=1)
        conns = [await asyncio.open_connection(MESH, port) for _ in range(3)]
        for r, w in conns:  # start streaming on every connection, keep them open
            w.write(os.urandom(2 * MB))
            await r.readexactly(2 * MB)
        await eventually(lambda: sum(c.splicer is not None for c in mesh.conns) == 3)
        kinds = sorted(type(c.splicer).__name__ for c in mesh.conns)
        assert kinds == ["Splicer", "Splicer", "ThreadedSplicer"]
        assert splice_threads() == 2
        datas = [os.urandom(3 * MB) for _ in conns]
        results = await asyncio.gather(*(asyncio.gather(send_all(w, d), read_all(r))
                                         for (r, w), d in zip(conns, datas)))
        assert [digest(got) for _, got in results] == [digest(d) for d in datas]
        for _, w in conns:
            w.close()
        await eventually(lambda: mesh.n_active == 0)
        c = mesh.status()["total"]
        assert c["spliced"] == 3 and c["bytes_in"] == c["bytes_out"] == 3 * 2 * MB + 3 * 3 * MB
        await mesh.close()
        server.close()
    arun(main())


@pytest.mark.parametrize("bulk_threads", [4, 0])
def test_half_close_either_side_first(bulk_threads: int) -> None:
    """Client EOF then a big answer; backend EOF then a big upload: nothing is cut short."""
    up = os.urandom(6 * MB)
    answer = os.urandom(6 * MB)
    seen: dict[str, bytes] = {}

    async def answers_after_eof(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got = await read_all(r)
        w.write(digest(got))
        await send_all(w, answer)

    async def closes_then_reads(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(2 * MB)  # the connection is streaming (spliced) by now
        w.write_eof()
        got = await r.read(MB)
        while chunk := await r.read(MB):
            got += chunk
        seen["after_eof"] = got

    async def main() -> None:
        server, bport = await serve(answers_after_eof)
        mesh, port = await mesh_for(bport, bulk_threads=bulk_threads, splice_after=1)
        r, w = await asyncio.open_connection(MESH, port)
        await send_all(w, up)
        got = await read_all(r)
        assert got[:32] == digest(up) and digest(got[32:]) == digest(answer)
        w.close()
        await eventually(lambda: mesh.n_active == 0)
        await mesh.close()
        server.close()

        server, bport = await serve(closes_then_reads)
        mesh, port = await mesh_for(bport, bulk_threads=bulk_threads, splice_after=1)
        r, w = await asyncio.open_connection(MESH, port)
        w.write(up[:2 * MB])
        assert await r.read() == b""  # the backend's EOF came through
        w.write(up[2 * MB:])
        await w.drain()
        w.write_eof()
        await eventually(lambda: mesh.n_active == 0 and "after_eof" in seen)
        assert digest(seen["after_eof"]) == digest(up[2 * MB:])
        c = mesh.status()["total"]
        assert c["spliced"] == 1 and c["bytes_in"] == len(up) and c["errors"] == 0
        w.close()
        await mesh.close()
        server.close()
    arun(main())


@pytest.mark.parametrize("bulk_threads", [4, 0])
def test_backend_reset_mid_stream_ends_the_connection_and_counts_an_error(bulk_threads: int) -> None:
    async def resets(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(os.urandom(2 * MB))
        await w.drain()
        await r.readexactly(MB)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        w.transport.abort()

    async def main() -> None:
        server, bport = await serve(resets)
        mesh, port = await mesh_for(bport, bulk_threads=bulk_threads, splice_after=1)
        r, w = await asyncio.open_connection(MESH, port)
        await r.readexactly(2 * MB)
        await eventually(lambda: any(c.splicer is not None for c in mesh.conns))
        w.write(os.urandom(MB))
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await r.readexactly(1)
        await eventually(lambda: mesh.n_active == 0)
        assert mesh.status()["total"]["errors"] == 1
        await eventually(lambda: splice_threads() == 0)
        w.close()
        await mesh.close()
        server.close()
    arun(main())


@pytest.mark.parametrize("bulk_threads", [4, 0])
def test_idle_spliced_connection_is_closed(bulk_threads: int) -> None:
    """A spliced connection whose peers both stall (here: the client stops reading, so a
    thread blocks in splice) is closed after idle_timeout and its threads leave."""
    async def floods(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            w.write(b"z" * MB)
            await w.drain()

    async def main() -> None:
        server, bport = await serve(floods)
        mesh, port = await mesh_for(bport, bulk_threads=bulk_threads, idle_timeout=0.5)
        r, w = await asyncio.open_connection(MESH, port)
        await r.readexactly(2 * MB)
        await eventually(lambda: any(c.splicer is not None for c in mesh.conns))
        w.transport.pause_reading()  # stop reading: everything fills up, nothing moves
        await eventually(lambda: mesh.n_active == 0, timeout=8)
        await eventually(lambda: splice_threads() == 0)
        assert not mesh.threaded
        w.close()
        await mesh.close()
        server.close()
    arun(main())


def test_busy_threaded_connection_outlives_the_idle_timeout() -> None:
    async def main() -> None:
        server, bport = await serve(echo)
        mesh, port = await mesh_for(bport, idle_timeout=1.0)
        r, w = await asyncio.open_connection(MESH, port)
        chunk = os.urandom(256 * 1024)
        loop = asyncio.get_running_loop()
        end = loop.time() + 3.0
        while loop.time() < end:  # three idle timeouts of steady traffic
            w.write(chunk)
            assert await r.readexactly(len(chunk)) == chunk
            await asyncio.sleep(0.02)
        assert len(mesh.threaded) == 1 and mesh.n_active == 1
        w.close()
        await eventually(lambda: mesh.n_active == 0)
        await mesh.close()
        server.close()
    arun(main())


def test_removed_backend_drains_a_threaded_connection_after_the_grace() -> None:
    async def main() -> None:
        server, bport = await serve(echo)
        mesh, port = await mesh_for(bport, drain_grace=2.0)
        r, w = await asyncio.open_connection(MESH, port)
        w.write(os.urandom(2 * MB))
        await r.readexactly(2 * MB)
        await eventually(lambda: len(mesh.threaded) == 1)
        await mesh.apply(table(port, None, version=2, drain_grace=2.0))
        w.write(b"still here")
        assert await r.readexactly(10) == b"still here"  # within the grace
        assert await asyncio.wait_for(r.read(), 8) == b""
        await eventually(lambda: mesh.n_active == 0)
        await eventually(lambda: splice_threads() == 0)
        w.close()
        await mesh.close()
        server.close()
    arun(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_mesh_close_stops_threads_blocked_in_splice(loop: str) -> None:
    async def main() -> None:
        server, bport = await serve(echo)
        mesh, port = await mesh_for(bport)
        r, w = await asyncio.open_connection(MESH, port)
        w.write(os.urandom(2 * MB))
        await r.readexactly(2 * MB)
        await eventually(lambda: len(mesh.threaded) == 1)
        await mesh.close()
        assert not mesh.threaded and mesh.n_active == 0
        await eventually(lambda: splice_threads() == 0)
        assert await asyncio.wait_for(r.read(), 3) == b""
        w.close()
        server.close()
    arun(main(), loop)


@pytest.mark.parametrize("bulk_threads", [4, 0])
def test_proxy_header_precedes_spliced_data(bulk_threads: int) -> None:
    async def reads_header(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readexactly(16)
        head += await r.readexactly(proxyproto.header_length(head) - 16)
        hdr, _ = proxyproto.parse(head)
        w.write(f"{hdr.src[0]}\n".encode())
        await echo(r, w)

    async def main() -> None:
        server, bport = await serve(reads_header)
        mesh, port = await mesh_for(bport, bulk_threads=bulk_threads, splice_after=1, proxy_protocol=True)
        r, w = await asyncio.open_connection(MESH, port, local_addr=("127.0.7.51", 0))
        data = os.urandom(4 * MB)
        sender = asyncio.create_task(send_all(w, data))
        assert await r.readline() == b"127.0.7.51\n"
        got = await read_all(r)
        await sender
        assert digest(got) == digest(data)
        w.close()
        await eventually(lambda: mesh.n_active == 0)
        assert mesh.status()["total"]["spliced"] == 1
        await mesh.close()
        server.close()
    arun(main())


def test_splice_after_zero_splices_on_the_loop_without_threads() -> None:
    """Nothing was detected as bulk: short connections must not pay for a thread pair."""
    async def main() -> None:
        server, bport = await serve(echo)
        mesh, port = await mesh_for(bport, splice_after=0)
        r, w = await asyncio.open_connection(MESH, port)
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        await eventually(lambda: any(c.splicer is not None for c in mesh.conns))
        assert [type(c.splicer).__name__ for c in mesh.conns] == ["Splicer"] and not mesh.threaded
        assert splice_threads() == 0
        w.close()
        await eventually(lambda: mesh.n_active == 0)
        await mesh.close()
        server.close()
    arun(main())
