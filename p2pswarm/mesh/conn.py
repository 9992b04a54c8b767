"""The data plane's connections: a client on a published port (:class:`Conn`) and its far side
(:class:`Far`: a backend, or a relay on another node that connects to the backend).

    accept → routes.candidates() → connect (connect_timeout) → on failure the next
    candidate (at most ``retries`` more) → pipe bytes both ways

Small exchanges are piped by the Protocol API; once a connection streams bulk data it is
handed to a splicer (:mod:`p2pswarm.mesh.splice`). The hot path logs nothing and counts in
plain ints (:mod:`p2pswarm.mesh.counters`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from p2pswarm.mesh import proxyproto, relayproto
from p2pswarm.mesh.counters import Counters
from p2pswarm.mesh.routes import Backend, candidates
from p2pswarm.mesh.splice import HAVE_SPLICE, Splicer, ThreadedSplicer, splicer_for
from p2pswarm.mesh.tlsctx import TlsConfig

if TYPE_CHECKING:
    from p2pswarm.mesh.proxy import Mesh, Port

REPLAY_LIMIT = 64 * 1024
"""Client bytes kept until the backend's first byte: when a backend dies before answering
(its node crashed mid-request), they are replayed to another replica, so the client never
sees the crash. A request larger than this is not replayed. Like HAProxy's ``retry-on
empty-response``, a request the dead backend had acted on without answering runs twice."""

SPLICE_AFTER = 4
"""Reads of at least BIG_CHUNK bytes (data streaming in faster than it is forwarded) after
which a connection is handed to the splicer; 0 splices right after connecting, -1 never.
Request/response traffic reads small chunks and stays on the Protocol path however long
the connection lives."""
BIG_CHUNK = 64 * 1024
"""A read at least this large counts toward SPLICE_AFTER (request/response reads are smaller)."""
HANDING_OFF = -2
"""``splice_at`` while the sockets are handed to a splicer (both sides paused meanwhile)."""
PENDING_LIMIT = 256 * 1024
"""Client bytes buffered while the backend connects; past it the client is paused."""


class RelayError(Exception):
    """A relay refused, failed or could not be asked (the next candidate is tried)."""


class Far(asyncio.Protocol):
    """The backend side (or the relay side) of a connection; reaching a backend through a relay,
    it asks the relay for it first (:meth:`through_relay`)."""

    __slots__ = ("conn", "t", "attached", "early", "early_eof", "lost", "reply", "full")

    def __init__(self, conn: "Conn") -> None:
        self.conn = conn
        self.t: Any = None
        self.attached = False
        self.early: list[bytes] = []
        self.early_eof = False
        self.lost = False
        self.reply: asyncio.Future[int] | None = None
        self.full = False
        """Its transport asked us to stop writing before we were attached (a TLS session's
        buffer still full from the last stream): the client is paused once attached."""

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        if self.attached:
            conn = self.conn
            conn.replay = None  # the backend answered: from here on its failure is the client's
            conn.ct.write(data)
            n = len(data)
            conn.c.bytes_out += n
            conn.moved += n
            if n >= BIG_CHUNK:
                conn.big_chunk()
            return
        reply = self.reply
        if reply is not None and not reply.done():
            reply.set_result(data[0])
            data = data[1:]
            if not data:
                return
        self.early.append(data)
        if sum(map(len, self.early)) > PENDING_LIMIT:
            self.t.pause_reading()

    def eof_received(self) -> bool:
        if self.attached:
            return self.conn.far_eof() and not _is_tls(self.t)
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(-1)
        self.early_eof = True
        return not _is_tls(self.t)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(-1)
        if self.attached:
            self.conn.far_lost(exc)

    def pause_writing(self) -> None:
        if self.attached:
            self.conn.ct.pause_reading()
        else:
            self.full = True

    def resume_writing(self) -> None:
        self.full = False
        if self.attached and self.conn.splice_at != HANDING_OFF:
            self.conn.ct.resume_reading()

    def discard(self) -> None:
        if self.t is not None:
            self.t.abort()

    # reaching the target through a relay (RELAY protocol: p2pswarm.mesh.relayproto)

    async def through_relay(self, relay: tuple[str, int], target: tuple[str, int], pp: bytes | None,
                            tls: bool) -> Far:
        """Connect to ``target`` through the relay listener at ``relay`` (over TLS when ``tls``);
        returns the Far that got connected (a new one when a reused TLS session had just closed)."""
        mesh = self.conn.mesh
        header = relayproto.encode_header(target, pp)
        far = self
        if not tls:
            host = mesh.host
            local = (host, 0) if host and (":" in host) == (":" in relay[0]) else None  # relays admit members' hosts
            await mesh.loop.create_connection(lambda: self, relay[0], relay[1], local_addr=local)
            code = await self.ask(header)
        else:
            far, code = await self._ask_over_tls(relay, header)
        if code != relayproto.RELAY_OK:
            raise RelayError(code)
        return far

    async def _ask_over_tls(self, relay: tuple[str, int], header: bytes) -> tuple[Far, int]:
        """Ask over an idle TLS session to ``relay``, else over a new one; also over a new one (with a
        new Far: the old may still hear from its stream) when the idle one turns out closed."""
        conn = self.conn
        mesh = conn.mesh
        config = mesh.tls
        if config is None:
            raise RelayError("no mesh TLS material")
        conn.splice_at = -1  # the bytes must go through the TLS layer
        reused = mesh.reuse_tls_session(self, relay, config)
        if reused is None:
            return self, await self._ask_new_session(relay, header, config)
        code = await self.ask(header)
        if code >= 0 or reused.transport is not None:  # an answer, or the relay refused this stream
            return self, code
        self.discard()
        fresh = Far(conn)
        try:
            return fresh, await fresh._ask_new_session(relay, header, config)
        except BaseException:
            fresh.discard()  # the caller discards only the Far it started with
            raise

    async def _ask_new_session(self, relay: tuple[str, int], header: bytes, config: TlsConfig) -> int:
        if not await self.conn.mesh.new_tls_session(self, relay, config):
            self.conn.c.tls_refused += 1
            raise RelayError("the relay's certificate is revoked or of another cluster")
        return await self.ask(header)

    async def ask(self, header: bytes) -> int:
        """Send the relay header; the relay's answer code (-1: it closed without one)."""
        self.reply = self.conn.mesh.loop.create_future()
        self.t.write(header)
        return await self.reply

class Conn(asyncio.Protocol):
    """A client connection on a published port, and then its pipe to a backend."""

    __slots__ = ("mesh", "port", "c", "ct", "bt", "far", "pending", "pending_n", "c_eof", "b_eof",
                 "task", "moved", "seen", "idle_since", "drain_at", "splice_at", "splicer", "done",
                 "paused_pending", "job", "expired", "replay", "replay_n", "tried")

    def __init__(self, mesh: "Mesh", port: "Port | None") -> None:
        self.mesh = mesh
        self.port = port
        self.c: Counters = port.c if port is not None else mesh.relay_c
        self.ct: Any = None
        self.bt: Any = None
        self.far: Far | None = None
        self.pending: list[bytes] | None = None
        self.pending_n = 0
        self.c_eof = False
        self.b_eof = False
        self.task: str | None = None
        self.moved = 0
        self.seen = -1
        self.idle_since = 0.0
        self.drain_at: float | None = None
        self.splice_at = mesh.splice_at
        self.splicer: Splicer | ThreadedSplicer | None = None
        self.done = False
        self.paused_pending = False
        self.job: asyncio.Task[None] | None = None  # a strong reference: the loop keeps weak ones
        self.expired = False
        self.replay: list[bytes] | None = None
        """Client bytes sent to a backend that has not answered yet (None: not replayable)."""
        self.replay_n = 0
        self.tried: set[str] = set()
        """Tasks tried for this connection (a replay goes elsewhere)."""

    # client side callbacks

    def connection_made(self, transport: Any) -> None:
        mesh = self.mesh
        if mesh.n_active >= mesh.limits.max_conns:
            self.c.refused_limit += 1
            self.done = True
            transport.close()
            return
        mesh.n_active += 1
        self.c.accepted += 1
        self.c.active += 1
        self.ct = transport
        mesh.conns.add(self)
        self.start()

    def start(self) -> None:
        self.job = self.mesh.loop.create_task(self.connect())

    def data_received(self, data: bytes) -> None:
        bt = self.bt
        if bt is not None:
            bt.write(data)
            n = len(data)
            if self.replay is not None:
                self._keep(data)
            self.c.bytes_in += n
            self.moved += n
            if n >= BIG_CHUNK:
                self.big_chunk()
            return
        self.early_data(data)

    def early_data(self, data: bytes) -> None:
        if self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)
        self.pending_n += len(data)
        if self.pending_n > PENDING_LIMIT and not self.paused_pending:
            self.paused_pending = True
            self.ct.pause_reading()

    def eof_received(self) -> bool:
        self.c_eof = True
        if self.bt is not None:
            if self.b_eof or self.bt.is_closing():
                self.close()
                return False
            if self.bt.can_write_eof():
                self.bt.write_eof()
            elif not _is_tls(self.bt):
                self.close()
            # else: TLS cannot carry a half-close (asyncio's TLS closes both ways), so the client's
            # EOF is not passed on: the answer still comes back and the backend's close ends it
        return not _is_tls(self.ct)  # a TLS side closes itself after EOF whatever we return

    def connection_lost(self, exc: Exception | None) -> None:
        if self.splicer is not None or self.done:
            return
        if exc is not None:
            self.c.errors += 1
        if self.bt is not None:
            self.bt.close()
        self.teardown()

    def pause_writing(self) -> None:
        if self.bt is not None:
            self.bt.pause_reading()

    def resume_writing(self) -> None:
        if self.bt is not None and self.splice_at != HANDING_OFF:
            self.bt.resume_reading()

    # backend side events

    def far_eof(self) -> bool:
        if self.replay is not None and self._replay_elsewhere():
            return False
        self.b_eof = True
        if self.c_eof or self.ct.is_closing():  # both sides done, or the client already went away
            self.close()
            return False
        if self.ct.can_write_eof():
            self.ct.write_eof()
        else:
            self.close()
        return True

    def far_lost(self, exc: Exception | None) -> None:
        if self.splicer is not None or self.done:
            return
        if self.replay is not None and self._replay_elsewhere():
            return
        if exc is not None:
            self.c.errors += 1
        self.ct.close()
        self.teardown()

    # connecting

    async def connect(self) -> None:
        mesh = self.mesh
        port = self.port
        assert port is not None
        c = self.c
        loop = mesh.loop
        timeout = mesh.limits.connect_timeout
        tried = 0
        for b in port.only or candidates(port.backends, mesh.active_by_task, mesh.rng, mesh.limits.retries + 1):
            if self.done:
                return
            if b.task in self.tried:
                continue
            if tried:
                c.retried += 1
            tried += 1
            self.tried.add(b.task)
            far = Far(self)
            timer = loop.call_later(timeout, self.expire)
            try:
                if b.via is None:
                    await loop.create_connection(lambda: far, b.addr[0], b.addr[1])
                else:
                    far = await self.via(far, b)
            except (OSError, RelayError):
                c.connect_failed += 1
                far.discard()
                continue
            except asyncio.CancelledError:
                far.discard()
                if not self.expired:
                    raise
                self.expired = False
                self.job.uncancel()  # type: ignore[union-attr]
                c.connect_failed += 1
                continue
            except BaseException:
                far.discard()
                raise
            finally:
                timer.cancel()
            if self.done:  # the client left while we connected
                far.discard()
                return
            if b.via is not None:
                c.relayed_out += 1
            header = None
            if port.proxy_protocol and b.via is None:
                header = self.proxy_header()
            self.attach(far, b.task, header)
            return
        if not tried:
            c.no_backend += 1
        self.close()

    def expire(self) -> None:
        """connect_timeout passed: cancel the attempt (connect() moves on to the next)."""
        if self.job is not None and not self.job.done():
            self.expired = True
            self.job.cancel()

    def proxy_header(self) -> bytes | None:
        src = self.ct.get_extra_info("peername")
        dst = self.ct.get_extra_info("sockname")
        if not src or not dst:
            return None
        return proxyproto.encode(src[:2], dst[:2])

    async def via(self, far: Far, b: Backend) -> Far:
        assert b.via is not None
        pp = self.proxy_header() if self.port is not None and self.port.proxy_protocol else None
        return await far.through_relay(b.via, b.addr, pp, b.tls)

    def attach(self, far: Far, task: str | None, header: bytes | None) -> None:
        mesh = self.mesh
        self.far = far
        bt = self.bt = far.t
        far.attached = True
        if task is not None:
            self.task = task
            mesh.task_started(task)
        if header:
            bt.write(header)
        if self.port is not None and len(self.tried) <= self.mesh.limits.retries:
            self.replay, self.replay_n = [], 0  # a later retry has this many attempts left
        if self.pending:
            bt.writelines(self.pending)
            if self.replay is not None:
                for chunk in self.pending:
                    self._keep(chunk)
            self.c.bytes_in += self.pending_n
            self.moved += self.pending_n
            self.pending = None
        if self.paused_pending:
            self.paused_pending = False
            self.ct.resume_reading()
        if far.full:
            self.ct.pause_reading()  # resumed by the far side's resume_writing
        if far.early:
            n = sum(map(len, far.early))
            self.ct.writelines(far.early)
            self.c.bytes_out += n
            self.moved += n
            far.early = []
            far.t.resume_reading()
        if self.c_eof:
            if bt.can_write_eof():
                bt.write_eof()
            else:
                self.close()
        if far.early_eof:
            self.far_eof()
        if far.lost:
            self.far_lost(None)
        elif self.splice_at == 0:
            self.start_splice()

    # replaying a request whose backend died before answering

    def _keep(self, data: bytes) -> None:
        self.replay_n += len(data)
        if self.replay_n > REPLAY_LIMIT:
            self.replay = None
        else:
            self.replay.append(data)  # type: ignore[union-attr]

    def _replay_elsewhere(self) -> bool:
        """The backend closed before its first byte: send what the client sent to another replica."""
        if self.done or self.splicer is not None or self.c_eof and not self.replay:
            return False
        replay, self.replay = self.replay, None
        far, self.far, self.bt = self.far, None, None
        if far is not None:
            far.attached = False
            far.discard()
        if self.task is not None:
            self.mesh.task_ended(self.task)
            self.task = None
        self.pending = (replay or []) + (self.pending or [])
        self.pending_n = sum(map(len, self.pending))
        self.c.replayed += 1
        self.c.bytes_in -= self.pending_n  # counted again when the next backend gets them
        self.start()
        return True

    # ending

    def close(self) -> None:
        """Close both sides after their buffered data is written."""
        self._shut("close")

    def abort(self) -> None:
        """Close both sides at once (idle, drained, stopping)."""
        if self._shut("abort"):
            self.teardown()

    def _shut(self, how: str) -> bool:
        """``close`` or ``abort`` both transports; False when the splicer owns the sockets (it ends them)."""
        if self.splicer is not None:
            self.splicer.close()
            return False
        for transport in (self.ct, self.bt):
            if transport is not None:
                getattr(transport, how)()
        return True

    def teardown(self) -> None:
        if self.done:
            return
        self.done = True
        mesh = self.mesh
        mesh.n_active -= 1
        self.c.active -= 1
        mesh.conns.discard(self)
        if self.task is not None:
            mesh.task_ended(self.task)

    def key_valid(self, table: "Mesh") -> bool:
        """Whether this connection's backend is still in the table (else it drains)."""
        port = self.port
        if port is None or table.ports.get(port.number) is not port:
            return False
        return self.task is None or self.task in port.tasks

    # bulk: hand the sockets to the splicer

    def big_chunk(self) -> None:
        if self.splice_at > 0:
            self.splice_at -= 1
            if self.splice_at == 0:
                self.start_splice()

    def start_splice(self) -> None:
        self.splice_at = -1
        if not HAVE_SPLICE or self.bt is None or self.done:
            return
        self.splice_at = HANDING_OFF
        self.ct.pause_reading()
        self.bt.pause_reading()
        self._handoff()

    def _handoff(self) -> None:
        if self.done:
            return
        ct, bt = self.ct, self.bt
        if ct.is_closing() or bt.is_closing():
            self.splice_at = -1
            return  # ending anyway: stay on the Protocol path
        if ct.get_write_buffer_size() or bt.get_write_buffer_size():
            self.mesh.loop.call_later(0.0005, self._handoff)
            return
        mesh = self.mesh
        # threads only where streaming was detected (with splice_after 0 every connection is
        # spliced, and a thread pair per short connection costs more than it saves)
        splicer = splicer_for(self, mesh.splice_at > 0 and len(mesh.threaded) < mesh.bulk_threads)
        if splicer is None:
            self._stay()
            return
        self.splicer = splicer
        self.c.spliced += 1
        ct.abort()
        bt.abort()
        self.splicer.start()

    def _stay(self) -> None:
        self.splice_at = -1
        self.ct.resume_reading()
        self.bt.resume_reading()


def _is_tls(transport: Any) -> bool:
    return transport is not None and transport.get_extra_info("sslcontext") is not None
