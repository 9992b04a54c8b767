"""The routing mesh's data plane: listeners, forwarding, relaying (asyncio Protocol API).

One :class:`Mesh` per data-plane process (:mod:`p2pswarm.mesh.dataplane`). It listens on
every published port of its table and forwards each accepted connection:

    accept → routes.candidates() → connect (connect_timeout) → on failure the next
    candidate (at most ``retries`` more) → pipe bytes both ways

A backend with ``via`` is reached through another node's relay listener (see RELAY below).
Small exchanges are piped by the Protocol API (uvloop when installed: measured fastest,
docs/benchmarks.md "Routing mesh"); once a connection streams bulk data it is
handed to a splicer, which moves data socket → pipe → socket with ``os.splice`` and never
copies it into Python: :class:`ThreadedSplicer` (a blocking splice loop per direction in a
thread of its own, for at most BULK_THREADS connections) or, beyond that,
:class:`Splicer` (non-blocking splices driven by the event loop). "Bulk" is detected, not
declared: ``splice_after`` reads of at least BIG_CHUNK bytes mean data arrives faster than
it is forwarded.

The hot path logs nothing and counts in plain ints. Limits (table ``limits``):
``max_conns`` open connections per data plane, above which a new connection is accepted and
closed at once (``refused_limit``); ``idle_timeout`` closes connections that moved no byte
for that long; ``drain_grace`` is how long open connections to a backend (or port) removed
from the table may continue.

RELAY protocol (data plane ↔ data plane, TCP), version 1. The first node sends::

    b"P2PR" | version (1 byte, =1) | length (2 bytes, big-endian, ≤ 255) | target "h:p" (ASCII)
    | flag (1 byte: 1 if a PROXY v2 header follows, else 0) | [PROXY v2 header]

The relay answers one byte: ``0`` connected (then both sides pipe bytes), ``1`` + a reason in
ASCII then close (target not in its ``relay_allow``), ``2`` then close (connect failed or the
target's host is blocked), so the first node can try another candidate transparently.

The plaintext relay listener admits connections only from the other members' hosts (the table's
``relay_from``, compared as canonical IP addresses, as the UDP relay does); anyone else is closed
at once without an answer and counted in ``relay_refused``. The PROXY header a relay forwards is
therefore one a member's mesh wrote (from its own client's address): a stranger cannot make a
``proxy-protocol`` backend log an address of its choosing. The opening side sends from its own
member address (it binds to the table's ``host``). As for UDP, any process on a member host can
still open a relay connection from that address; the TLS relay authenticates the member instead.

ENCRYPTED ports (``--publish 8080:80,encrypted``): the same relay protocol inside TLS 1.3 with
mutual certificates (:mod:`p2pswarm.mesh.tlsctx`), on the TLS relay listener (relay port + 1).
A remote backend of such a port has ``tls`` and ``via`` = the TLS relay of its own node (or of a
relay node, which continues over TLS to the backend's node: ``tls_next``), so clients' bytes
never cross the network in clear. Each client connection is a stream of a TLS connection
that is kept and reused for the next one to the same relay (:mod:`p2pswarm.mesh.tlsmux`: a
handshake per client connection cost more than the connection). TLS is never spliced (the
bytes must pass through the TLS layer).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import os
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from p2pswarm.mesh import proxyproto
from p2pswarm.mesh.routes import DEFAULT_LIMITS, Backend, candidates
from p2pswarm.mesh.tlsctx import TlsConfig, TlsError, parse_tls, peer_of
from p2pswarm.mesh.tlsmux import SERVER_IDLE_TIMEOUT, Session, SessionPool

COUNTERS = ("accepted", "active", "refused_limit", "connect_failed", "no_backend", "retried",
            "replayed", "relayed_out", "relayed_in", "relay_refused", "bytes_in", "bytes_out", "errors",
            "spliced", "tls_refused")
"""Per port (and the relay listener, and in total). ``active`` is a gauge, the rest count up.
``bytes_in`` flows client → backend, ``bytes_out`` backend → client."""

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
HANDING_OFF = -2
PENDING_LIMIT = 256 * 1024
"""Client bytes buffered while the backend connects; past it the client is paused."""
PIPE_SIZE = 1 << 20
"""Kernel pipe size asked for by the splicer (capped by /proc/sys/fs/pipe-max-size)."""
SPLICE_ROUNDS = 8
"""Pipe fills moved per readiness event before yielding to other connections."""
BULK_THREADS = 4
"""Spliced connections at most whose two directions each run a blocking splice loop in a
thread of their own (:class:`ThreadedSplicer`; os.splice releases the GIL, so there is no
event-loop round trip per pipe fill and the loop stays free for small requests); further
spliced connections, and all of them with ``splice_after`` 0 (nothing was detected: most are
short, and two threads per short connection cost more than they save), are spliced on the
event loop (:class:`Splicer`). 0: never use threads. Measured in docs/benchmarks.md,
"Routing mesh"."""
THREAD_STOP_WAIT = 1.0
"""Seconds Mesh.close() waits for splice threads to leave after shutting their sockets."""

BACKLOG = 1024
RELAY_MAGIC = b"P2PR"
RELAY_VERSION = 1
RELAY_OK, RELAY_REFUSED, RELAY_FAILED = 0, 1, 2
TLS_RELAY_OFFSET = 1
"""The TLS relay listener is on the relay port + 1 (as :data:`p2pswarm.mesh.table.TLS_RELAY_OFFSET`)."""
TLS_HANDSHAKE_TIMEOUT = 5.0
MAX_RELAY_HEADER = 8 + 255 + proxyproto.MAX_LEN

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_SPLICE_FLAGS_BLOCKING = getattr(os, "SPLICE_F_MOVE", 1)
HAVE_SPLICE = hasattr(os, "splice")


class TableError(ValueError):
    """A table the data plane cannot use (the previous table stays in force)."""


class CounterSet:
    """Plain-int counters as slots (the hot path does ``c.bytes_in += n``); a subclass names them
    in both ``__slots__`` and ``FIELDS``."""

    __slots__ = ()
    FIELDS: tuple[str, ...] = ()

    def __init__(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def add(self, other: "CounterSet") -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Counters(CounterSet):
    __slots__ = COUNTERS
    FIELDS = COUNTERS


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_conns: int = 4096
    connect_timeout: float = 1.0
    retries: int = 2
    idle_timeout: float = 300.0
    drain_grace: float = 10.0


@dataclass(frozen=True)
class PortSpec:
    port: int
    service: str
    proxy_protocol: bool
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class Table:
    version: int
    host: str
    relay_port: int
    relay_allow: frozenset[tuple[str, int]]
    blocked_hosts: frozenset[str]
    ports: tuple[PortSpec, ...]
    limits: Limits = field(default_factory=Limits)
    tls: Any = None
    """The raw ``tls`` section (contexts are made in :meth:`Mesh.apply`, reusing unchanged ones)."""
    tls_next: Mapping[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    """Backend address -> the TLS relay of its node, for relayed encrypted connections."""
    relay_from: frozenset[str] = frozenset()
    """The other members' hosts (canonical): the only sources the plaintext relay listener admits."""


def canonical_host(host: str) -> str:
    """An IP address as the socket layer writes it (``0:0::1`` → ``::1``), to compare senders."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def parse_addr(value: Any, what: str) -> tuple[str, int]:
    """``"h:p"`` (``"[v6]:p"`` too) → ``(h, p)``; TableError names ``what`` otherwise."""
    if not isinstance(value, str) or len(value) > 300:
        raise TableError(f"{what}: expected 'host:port', got {value!r:.60}")
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TableError(f"{what}: expected 'host:port', got {value!r:.60}")
    return host, int(port)


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TableError(f"{what}: expected an integer in {lo}..{hi}, got {value!r:.60}")
    return value


def _num(value: Any, what: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise TableError(f"{what}: expected a number in {lo}..{hi}, got {value!r:.60}")
    return float(value)


def _str(value: Any, what: str, max_len: int = 256) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise TableError(f"{what}: expected a string of at most {max_len} characters, got {value!r:.60}")
    return value


def _list(value: Any, what: str, max_len: int = 100_000) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or len(value) > max_len:
        raise TableError(f"{what}: expected a list, got {type(value).__name__}")
    return list(value)


def parse_table(t: Any) -> Table:
    """Check a table map field by field (the node is trusted, but a bad table must not
    crash the data plane: the previous table stays in force and the error is reported)."""
    if not isinstance(t, Mapping):
        raise TableError(f"table: expected a map, got {type(t).__name__}")
    version = _int(t.get("version", 0), "table.version", 0, 2**63 - 1)
    host = _str(t.get("host", "127.0.0.1"), "table.host", 100)
    relay_port = _int(t.get("relay_port", 0) or 0, "table.relay_port", 0, 65535)
    allow = frozenset(parse_addr(a, f"table.relay_allow[{i}]")
                      for i, a in enumerate(_list(t.get("relay_allow"), "table.relay_allow")))
    blocked = frozenset(_str(h, f"table.blocked_hosts[{i}]", 100)
                        for i, h in enumerate(_list(t.get("blocked_hosts"), "table.blocked_hosts")))
    relay_from = frozenset(canonical_host(_str(h, f"table.relay_from[{i}]", 100))
                           for i, h in enumerate(_list(t.get("relay_from"), "table.relay_from")))
    raw_limits = t.get("limits") or {}
    if not isinstance(raw_limits, Mapping):
        raise TableError("table.limits: expected a map")
    lim = {**DEFAULT_LIMITS, **{k: v for k, v in raw_limits.items() if k in DEFAULT_LIMITS}}
    limits = Limits(max_conns=_int(lim["max_conns"], "limits.max_conns", 1, 10_000_000),
                    connect_timeout=_num(lim["connect_timeout"], "limits.connect_timeout", 0.001, 600),
                    retries=_int(lim["retries"], "limits.retries", 0, 100),
                    idle_timeout=_num(lim["idle_timeout"], "limits.idle_timeout", 0.01, 10**7),
                    drain_grace=_num(lim["drain_grace"], "limits.drain_grace", 0, 10**6))
    ports: list[PortSpec] = []
    seen: set[int] = set()
    for i, p in enumerate(_list(t.get("ports"), "table.ports", 65535)):
        where = f"table.ports[{i}]"
        if not isinstance(p, Mapping):
            raise TableError(f"{where}: expected a map")
        number = _int(p.get("port"), f"{where}.port", 1, 65535)
        if number in seen:
            raise TableError(f"{where}.port: {number} appears twice")
        seen.add(number)
        backends = []
        for j, b in enumerate(_list(p.get("backends"), f"{where}.backends")):
            bw = f"{where}.backends[{j}]"
            if not isinstance(b, Mapping):
                raise TableError(f"{bw}: expected a map")
            rtt = b.get("rtt")
            via = b.get("via")
            backend = Backend(task=_str(b.get("task"), f"{bw}.task"), node=_str(b.get("node", ""), f"{bw}.node"),
                              addr=parse_addr(b.get("addr"), f"{bw}.addr"), local=bool(b.get("local", False)),
                              rtt=None if rtt is None else _num(rtt, f"{bw}.rtt", 0, 3600),
                              via=None if via is None else parse_addr(via, f"{bw}.via"),
                              tls=bool(b.get("tls", False)))
            if backend.via is None and backend.addr[0] in blocked:
                continue  # cut link and no relay: unreachable from here
            if backend.via is not None and backend.via[0] in blocked:
                continue
            backends.append(backend)
        ports.append(PortSpec(number, _str(p.get("service", ""), f"{where}.service"),
                              bool(p.get("proxy_protocol", False)), tuple(backends)))
    raw_next = t.get("tls_next") or {}
    if not isinstance(raw_next, Mapping):
        raise TableError("table.tls_next: expected a map")
    tls_next = {parse_addr(k, "table.tls_next key"): parse_addr(v, f"table.tls_next[{k}]") for k, v in raw_next.items()}
    return Table(version, host, relay_port, allow, blocked, tuple(ports), limits, t.get("tls"), tls_next,
                 relay_from)


# -- connections -------------------------------------------------------------------------------


class RelayError(Exception):
    pass


class Far(asyncio.Protocol):
    """The backend side (or the relay side) of a connection."""

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
        return await self.relay_to(far, b.via, b.addr, pp, b.tls)

    async def relay_to(self, far: Far, relay: tuple[str, int], target: tuple[str, int], pp: bytes | None,
                       tls: bool) -> Far:
        """Connect ``far`` to ``target`` through the relay listener at ``relay`` (over TLS when ``tls``);
        returns the Far that got connected (a new one when a reused TLS session had just closed)."""
        mesh = self.mesh
        name = f"{target[0]}:{target[1]}".encode()
        header = RELAY_MAGIC + bytes((RELAY_VERSION,)) + struct.pack(">H", len(name)) + name
        header += b"\x01" + pp if pp else b"\x00"
        if not tls:
            host = mesh.host
            local = (host, 0) if host and (":" in host) == (":" in relay[0]) else None  # relays admit members' hosts
            await mesh.loop.create_connection(lambda: far, relay[0], relay[1], local_addr=local)
            code = await self._ask(far, header)
        else:
            far, code = await self._ask_over_tls(far, relay, header)
        if code != RELAY_OK:
            raise RelayError(code)
        return far

    async def _ask_over_tls(self, far: Far, relay: tuple[str, int], header: bytes) -> tuple[Far, int]:
        """Ask over an idle TLS session to ``relay``, else over a new one; also over a new one (with a
        new Far: the old may still hear from its stream) when the idle one turns out closed."""
        mesh = self.mesh
        config = mesh.tls
        if config is None:
            raise RelayError("no mesh TLS material")
        self.splice_at = -1  # the bytes must go through the TLS layer
        reused = mesh.reuse_tls_session(far, relay, config)
        if reused is None:
            return far, await self._ask_new_session(far, relay, header, config)
        code = await self._ask(far, header)
        if code >= 0 or reused.transport is not None:  # an answer, or the relay refused this stream
            return far, code
        far.discard()
        fresh = Far(self)
        try:
            return fresh, await self._ask_new_session(fresh, relay, header, config)
        except BaseException:
            fresh.discard()  # the caller discards only the Far it passed in
            raise

    async def _ask_new_session(self, far: Far, relay: tuple[str, int], header: bytes, config: TlsConfig) -> int:
        if not await self.mesh.new_tls_session(far, relay, config):
            self.c.tls_refused += 1
            raise RelayError("the relay's certificate is revoked or of another cluster")
        return await self._ask(far, header)

    async def _ask(self, far: Far, header: bytes) -> int:
        """Send the relay header; the relay's answer code (-1: it closed without one)."""
        far.reply = self.mesh.loop.create_future()
        far.t.write(header)
        return await far.reply

    def attach(self, far: Far, task: str | None, header: bytes | None) -> None:
        mesh = self.mesh
        self.far = far
        bt = self.bt = far.t
        far.attached = True
        if task is not None:
            self.task = task
            mesh.active_by_task[task] = mesh.active_by_task.get(task, 0) + 1
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
            mesh = self.mesh
            n = mesh.active_by_task.get(self.task, 1) - 1
            if n > 0:
                mesh.active_by_task[self.task] = n
            else:
                mesh.active_by_task.pop(self.task, None)
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
            n = mesh.active_by_task.get(self.task, 1) - 1
            if n > 0:
                mesh.active_by_task[self.task] = n
            else:
                mesh.active_by_task.pop(self.task, None)

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
        try:
            cfd = os.dup(ct.get_extra_info("socket").fileno())
        except (OSError, AttributeError):
            self._stay()
            return
        try:
            bfd = os.dup(bt.get_extra_info("socket").fileno())
        except (OSError, AttributeError):
            os.close(cfd)
            self._stay()
            return
        mesh = self.mesh
        try:
            if mesh.splice_at > 0 and len(mesh.threaded) < mesh.bulk_threads:
                # streaming was detected (with splice_after 0 every connection is spliced,
                # and a thread pair per short connection costs more than it saves)
                self.splicer = ThreadedSplicer(self, cfd, bfd)
            else:
                self.splicer = Splicer(self, cfd, bfd)
        except OSError:  # out of pipes or fds: keep copying
            os.close(cfd)
            os.close(bfd)
            self._stay()
            return
        self.c.spliced += 1
        ct.abort()
        bt.abort()
        self.splicer.start()

    def _stay(self) -> None:
        self.splice_at = -1
        self.ct.resume_reading()
        self.bt.resume_reading()


class RelayIn(Conn):
    """A connection on the relay listener: read the relay header, then pipe to the target."""

    __slots__ = ("hdr", "target", "timer")

    def __init__(self, mesh: "Mesh") -> None:
        super().__init__(mesh, None)
        self.hdr: bytearray | None = bytearray()
        self.target: tuple[str, int] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.timer = self.mesh.loop.call_later(self.mesh.limits.connect_timeout, self.abort)

    def early_data(self, data: bytes) -> None:
        if self.hdr is None:
            super().early_data(data)
            return
        self.hdr += data
        try:
            parsed = _parse_relay_header(self.hdr)
        except (ValueError, proxyproto.ProxyProtocolError):
            self.c.errors += 1
            self.abort()
            return
        if parsed is None:
            if len(self.hdr) > MAX_RELAY_HEADER:
                self.c.errors += 1
                self.abort()
            return
        target, pp, used = parsed
        rest = bytes(self.hdr[used:])
        self.hdr = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ct.pause_reading()
        if rest:
            super().early_data(rest)
        mesh = self.mesh
        if target not in mesh.relay_allow:
            self.c.relay_refused += 1
            self.ct.write(bytes((RELAY_REFUSED,)) + b"target not allowed")
            self.close()
            return
        self.target = target
        self.job = mesh.loop.create_task(self.connect_target(target, pp))

    async def connect_target(self, target: tuple[str, int], pp: bytes | None) -> None:
        mesh = self.mesh
        far = Far(self)
        try:
            if target[0] in mesh.blocked_hosts:
                raise RelayError("blocked")
            onward = mesh.tls_next.get(target)
            async with asyncio.timeout(mesh.limits.connect_timeout):
                if onward is not None:  # an encrypted port's backend on another node: TLS on this hop too
                    far = await self.relay_to(far, onward, target, pp, True)
                    pp = None  # the next relay delivers it
                else:
                    await mesh.loop.create_connection(lambda: far, target[0], target[1])
        except (OSError, TimeoutError, RelayError, ConnectionError):
            self.c.connect_failed += 1
            far.discard()
            if not self.done:
                self.ct.write(bytes((RELAY_FAILED,)))
                self.close()
            return
        if self.done:
            far.discard()
            return
        self.c.relayed_in += 1
        self.ct.write(bytes((RELAY_OK,)))
        self.attach(far, None, pp)
        if not self.paused_pending:
            self.ct.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        super().connection_lost(exc)

    def key_valid(self, mesh: "Mesh") -> bool:
        return self.target is None or self.target in mesh.relay_allow


class PlainRelayIn(RelayIn):
    """A connection on the plaintext relay listener: admitted only from another member's host."""

    __slots__ = ("source",)

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        self.source = canonical_host(peer[0]) if peer else ""
        if self.source not in self.mesh.relay_from:
            self.mesh.relay_c.relay_refused += 1  # not a member's host: closed before reading a byte
            self.done = True
            transport.abort()
            return
        super().connection_made(transport)

    def key_valid(self, mesh: "Mesh") -> bool:
        return self.source in mesh.relay_from and super().key_valid(mesh)


class TlsRelaySession(Session):
    """A TLS connection accepted on the TLS relay listener; each of its streams is a :class:`RelayIn`.

    The peer's verified leaf must be a current member's, checked at the handshake and again
    whenever a table changes the revoked ids (:meth:`Mesh.apply`)."""

    def __init__(self, mesh: "Mesh") -> None:
        super().__init__(mesh.loop, self._relay_in, _nothing, mesh.tls_sessions.discard, SERVER_IDLE_TIMEOUT)
        self.mesh = mesh

    def connection_made(self, transport: Any) -> None:
        config = self.mesh.tls
        self.peer = peer_of(transport.get_extra_info("ssl_object"))
        if config is None or not config.allows(self.peer):
            self.mesh.relay_c.tls_refused += 1
            transport.abort()
            return
        if len(self.mesh.tls_sessions) >= self.mesh.limits.max_conns and not self._make_room():
            self.mesh.relay_c.refused_limit += 1
            transport.abort()
            return
        self.ctx = transport.get_extra_info("sslcontext")
        self.mesh.tls_sessions.add(self)
        super().connection_made(transport)

    def _make_room(self) -> bool:
        """At the cap (idle sessions hold no Conn, so they have one of their own): close an idle
        session, which its opener replaces if it needs one; False when every session is busy."""
        for session in self.mesh.tls_sessions:
            if session.stream is None and session.streams:  # (a brand-new one is about to carry its first)
                session.close()
                self.mesh.tls_sessions.discard(session)
                return True
        return False

    def on_protocol_error(self) -> None:
        self.mesh.relay_c.errors += 1

    def _relay_in(self, session: Session, sid: int) -> RelayIn:
        relay = RelayIn(self.mesh)
        relay.splice_at = -1
        return relay


def _nothing(session: Session) -> None:
    """An accepting session that goes idle waits for the peer's next stream."""


def _is_tls(transport: Any) -> bool:
    return transport is not None and transport.get_extra_info("sslcontext") is not None


def _parse_relay_header(buf: bytearray) -> tuple[tuple[str, int], bytes | None, int] | None:
    """``(target, proxy header or None, bytes used)``, None while incomplete; ValueError if bad."""
    if bytes(buf[:4]) != RELAY_MAGIC[:min(4, len(buf))]:
        raise ValueError("bad relay magic")
    if len(buf) < 7:
        return None
    if buf[4] != RELAY_VERSION:
        raise ValueError(f"relay version {buf[4]}")
    n = struct.unpack_from(">H", buf, 5)[0]
    if not 0 < n <= 255:
        raise ValueError("relay target length")
    if len(buf) < 8 + n:
        return None
    try:
        target = parse_addr(bytes(buf[7:7 + n]).decode("ascii"), "relay target")
    except (UnicodeDecodeError, TableError) as e:
        raise ValueError(str(e)) from None
    flag = buf[7 + n]
    used = 8 + n
    if flag == 0:
        return target, None, used
    if flag != 1:
        raise ValueError("relay flag")
    total = proxyproto.header_length(memoryview(buf)[used:])
    if total is None or len(buf) < used + total:
        return None
    pp = bytes(buf[used:used + total])
    proxyproto.parse(pp)  # validate: a relay forwards only well-formed headers
    return target, pp, used + total


# -- bulk path ---------------------------------------------------------------------------------


class _Dir:
    __slots__ = ("src", "dst", "pr", "pw", "pending", "eof", "done", "reading", "writing", "out", "total")

    def __init__(self, src: int, dst: int, out: bool) -> None:
        self.src, self.dst, self.out = src, dst, out
        self.pr, self.pw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.pw, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except (OSError, AttributeError):
            pass
        self.pending = 0
        self.total = 0
        """Bytes moved, counted by a ThreadedSplicer's thread (the loop splicer counts directly)."""
        self.eof = False
        self.done = False
        self.reading = False
        self.writing = False


def _directions(conn: "Conn", cfd: int, bfd: int) -> tuple["_Dir", "_Dir"]:
    """client → backend and backend → client, each with its pipe; a side already at EOF is done."""
    up = _Dir(cfd, bfd, False)
    try:
        down = _Dir(bfd, cfd, True)
    except OSError:
        os.close(up.pr)
        os.close(up.pw)
        raise
    if conn.c_eof:
        up.eof = up.done = True
    if conn.b_eof:
        down.eof = down.done = True
    return up, down


class Splicer:
    """Moves a connection's bytes with os.splice (socket → pipe → socket), both directions,
    on the event loop; the sockets are duplicates of the ones the transports had."""

    __slots__ = ("conn", "loop", "cfd", "bfd", "up", "down", "closed")

    def __init__(self, conn: Conn, cfd: int, bfd: int) -> None:
        self.conn = conn
        self.loop = conn.mesh.loop
        self.cfd, self.bfd = cfd, bfd
        self.closed = False
        self.up, self.down = _directions(conn, cfd, bfd)

    def start(self) -> None:
        for d in (self.up, self.down):
            if not d.done:
                self._want_read(d)

    def _want_read(self, d: _Dir) -> None:
        if not d.reading:
            d.reading = True
            self.loop.add_reader(d.src, self._readable, d)

    def _readable(self, d: _Dir) -> None:
        conn = self.conn
        c = conn.c
        for _ in range(SPLICE_ROUNDS):
            try:
                n = os.splice(d.src, d.pw, PIPE_SIZE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                c.errors += 1
                self.close()
                return
            if n == 0:
                d.eof = True
                self.loop.remove_reader(d.src)
                d.reading = False
                self._flush(d)
                return
            d.pending += n
            conn.moved += n
            if d.out:
                c.bytes_out += n
            else:
                c.bytes_in += n
            if not self._flush(d):
                return

    def _flush(self, d: _Dir) -> bool:
        """Move the pipe's bytes to dst; False when dst is full (then wait for writable)."""
        while d.pending:
            try:
                m = os.splice(d.pr, d.dst, d.pending, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                if d.reading:
                    self.loop.remove_reader(d.src)
                    d.reading = False
                if not d.writing:
                    d.writing = True
                    self.loop.add_writer(d.dst, self._writable, d)
                return False
            except OSError:
                self.conn.c.errors += 1
                self.close()
                return False
            d.pending -= m
        if d.writing:
            d.writing = False
            self.loop.remove_writer(d.dst)
        if d.eof:
            self._half_close(d)
            return False
        return True

    def _writable(self, d: _Dir) -> None:
        if self._flush(d) and not d.eof:
            self._want_read(d)
            self._readable(d)

    def _half_close(self, d: _Dir) -> None:
        d.done = True
        try:
            _shutdown_wr(d.dst)
        except OSError:
            pass
        if self.up.done and self.down.done:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for d in (self.up, self.down):
            if d.reading:
                self.loop.remove_reader(d.src)
            if d.writing:
                self.loop.remove_writer(d.dst)
            os.close(d.pr)
            os.close(d.pw)
        os.close(self.cfd)
        os.close(self.bfd)
        self.conn.splicer = None
        self.conn.teardown()


class ThreadedSplicer:
    """Like :class:`Splicer`, but each direction is a tight blocking loop in a thread of its
    own: splice(src → pipe) then splice(pipe → dst) until EOF, then shutdown(dst, SHUT_WR).

    Only the owning thread touches a direction's fds while it runs; the loop thread stops
    both with shutdown(SHUT_RDWR) (which wakes blocked splices) and closes the fds once both
    threads have left (``_finish``, posted to the loop). Threads count bytes in ``d.pending``
    (their own int); :meth:`sync`, on the loop thread, adds them to the counters (at each
    tick, each status and at the end), so the counters have a single writer."""

    __slots__ = ("conn", "loop", "cfd", "bfd", "up", "down", "closed", "lock", "running", "failed",
                 "counted")

    def __init__(self, conn: Conn, cfd: int, bfd: int) -> None:
        self.conn = conn
        self.loop = conn.mesh.loop
        self.cfd, self.bfd = cfd, bfd
        self.closed = False
        self.lock = threading.Lock()
        self.running = 0
        self.failed = False
        self.counted = [0, 0]
        self.up, self.down = _directions(conn, cfd, bfd)

    def start(self) -> None:
        """Called once the transports let go of their sockets: from here the fds block."""
        for d in (self.up, self.down):
            os.set_blocking(d.pr, True)
            os.set_blocking(d.pw, True)
        os.set_blocking(self.cfd, True)
        os.set_blocking(self.bfd, True)
        self.conn.mesh.threaded.add(self)
        todo = [d for d in (self.up, self.down) if not d.done]
        self.running = len(todo)
        if not todo:
            self.loop.call_soon(self._finish)
            return
        for d in todo:
            try:
                threading.Thread(target=self._run, args=(d,), name="p2pswarm-splice", daemon=True).start()
            except RuntimeError:  # no thread: end this direction as if it failed
                self.failed = True
                self._stop()
                self._left()

    def _run(self, d: _Dir) -> None:
        src, dst, pr, pw = d.src, d.dst, d.pr, d.pw
        splice = os.splice
        size = PIPE_SIZE
        flags = _SPLICE_FLAGS_BLOCKING
        try:
            while True:
                n = splice(src, pw, size, flags=flags)
                if n == 0:
                    break
                d.total += n
                while n:
                    n -= splice(pr, dst, n, flags=flags)
            d.eof = True
            if not self.closed:
                try:
                    _shutdown_wr(dst)
                except OSError:
                    pass
        except OSError:
            with self.lock:
                if not self.closed:
                    self.failed = True
            self._stop()
        self._left()

    def _left(self) -> None:
        with self.lock:
            self.running -= 1
            last = self.running == 0
        if last:
            try:
                self.loop.call_soon_threadsafe(self._finish)
            except RuntimeError:  # the loop is gone (process ending): just release the fds
                self._release()

    def _stop(self) -> None:
        """Wake and end both threads (any thread may call this)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for fd in (self.cfd, self.bfd):
            try:
                _shutdown(fd, socket.SHUT_RDWR)
            except OSError:
                pass

    def sync(self) -> None:
        """Add the bytes the threads moved since the last call to the counters (loop thread)."""
        conn = self.conn
        c = conn.c
        n_in = self.up.total - self.counted[0]
        n_out = self.down.total - self.counted[1]
        if n_in or n_out:
            self.counted[0] += n_in
            self.counted[1] += n_out
            c.bytes_in += n_in
            c.bytes_out += n_out
            conn.moved += n_in + n_out

    def close(self) -> None:
        self._stop()

    def _release(self) -> None:
        for d in (self.up, self.down):
            os.close(d.pr)
            os.close(d.pw)
        os.close(self.cfd)
        os.close(self.bfd)

    def _finish(self) -> None:
        self.sync()
        self.closed = True
        self._release()
        conn = self.conn
        conn.mesh.threaded.discard(self)
        if self.failed:
            conn.c.errors += 1
        conn.splicer = None
        conn.teardown()


def _shutdown(fd: int, how: int) -> None:
    s = socket.socket(fileno=fd)
    try:
        s.shutdown(how)
    finally:
        s.detach()


def _shutdown_wr(fd: int) -> None:
    s = socket.socket(fileno=fd)
    try:
        s.shutdown(socket.SHUT_WR)
    finally:
        s.detach()


# -- the data plane ----------------------------------------------------------------------------


class Port:
    __slots__ = ("number", "service", "proxy_protocol", "backends", "only", "tasks", "server", "error", "c")

    def __init__(self, spec: PortSpec) -> None:
        self.number = spec.port
        self.c = Counters()
        self.server: Any = None
        self.error: str | None = None
        self.update(spec)

    def update(self, spec: PortSpec) -> None:
        self.service = spec.service
        self.proxy_protocol = spec.proxy_protocol
        self.backends = spec.backends
        self.only = spec.backends if len(spec.backends) == 1 else None
        """With one backend candidates() always returns it: skip the call."""
        self.tasks = frozenset(b.task for b in spec.backends)


def bind_error(e: OSError, host: str, port: int) -> str:
    where = f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return f"address in use: {where}"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"address not available on this machine: {where}"
    if e.errno == errno.EACCES:
        return f"permission denied (ports below 1024 need privileges): {where}"
    return f"{(e.strerror or str(e)).lower()}: {where}"


def bound_socket(host: str, port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A non-blocking socket bound to ``host:port``: listening (TCP) or ready for datagrams (UDP)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(BACKLOG)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class Mesh:
    """One data plane: the table in force, its listeners and connections, the counters."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, *, rng: random.Random | None = None,
                 splice_after: int = SPLICE_AFTER, bulk_threads: int | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.bulk_threads = BULK_THREADS if bulk_threads is None else bulk_threads
        self.threaded: set[ThreadedSplicer] = set()
        self.rng = rng or random.Random()
        self.splice_at = -1 if splice_after < 0 or not HAVE_SPLICE else splice_after
        self.limits = Limits()
        self.version: int | None = None
        self.host: str | None = None
        self.ports: dict[int, Port] = {}
        self.draining: list[Port] = []
        self.retired = Counters()
        self.relay_c = Counters()
        self.relay_port = 0
        self.relay_server: Any = None
        self.relay_error: str | None = None
        self.relay_allow: frozenset[tuple[str, int]] = frozenset()
        self.relay_from: frozenset[str] = frozenset()
        self.blocked_hosts: frozenset[str] = frozenset()
        self.tls: TlsConfig | None = None
        self.tls_next: Mapping[tuple[str, int], tuple[str, int]] = {}
        self.tls_server: Any = None
        self.tls_server_config: TlsConfig | None = None
        self.tls_error: str | None = None
        self.tls_pool = SessionPool(self.loop)
        """TLS sessions this data plane opened to other nodes' TLS relays (idle ones are reused)."""
        self.tls_sessions: set[TlsRelaySession] = set()
        """TLS sessions other nodes opened to this one's TLS relay listener."""
        self.conns: set[Conn] = set()
        self.active_by_task: dict[str, int] = {}
        self.n_active = 0
        self.table_error: str | None = None
        self.tables_applied = 0
        self._ticker: asyncio.TimerHandle | None = None
        self._last_bind_retry = 0.0

    async def apply(self, raw: Any) -> None:
        """Install a new table; on a bad one keep the old and report ``table_error``."""
        try:
            table = parse_table(raw)
            tls = parse_tls(table.tls, self.tls)
        except (TableError, TlsError) as e:
            self.table_error = str(e)
            return
        self.table_error = None
        self._check_tls_sessions(tls)
        self.tls, self.tls_next = tls, table.tls_next
        self.tables_applied += 1
        self.version = table.version
        self.limits = table.limits
        self.relay_allow, self.relay_from = table.relay_allow, table.relay_from
        self.blocked_hosts = table.blocked_hosts
        if table.host != self.host:
            for port in self.ports.values():
                self._stop_listening(port)
            if self.relay_server is not None:
                self.relay_server.close()
                self.relay_server = None
            self._stop_tls_relay()
            self.host = table.host
        wanted = {spec.port: spec for spec in table.ports}
        for number in [n for n in self.ports if n not in wanted]:
            port = self.ports.pop(number)
            self._stop_listening(port)
            self.draining.append(port)
        for number, spec in wanted.items():
            port = self.ports.get(number)
            if port is None:
                self.ports[number] = Port(spec)
            else:
                port.update(spec)
        if table.relay_port != self.relay_port and self.relay_server is not None:
            self.relay_server.close()
            self.relay_server = None
        if table.relay_port != self.relay_port or tls is None or (
                self.tls_server_config is not None and tls.server is not self.tls_server_config.server):
            self._stop_tls_relay()  # new material (a CA rotation, a renewal): listen again with it
        self.relay_port = table.relay_port
        await self._bind_all()
        now = time.monotonic()
        for conn in list(self.conns):
            if conn.key_valid(self):
                conn.drain_at = None
            elif conn.drain_at is None:
                conn.drain_at = now + self.limits.drain_grace
        self._schedule_tick()

    def reuse_tls_session(self, far: Far, relay: tuple[str, int], config: TlsConfig) -> Session | None:
        """Open ``far`` as a stream of an idle TLS session to ``relay`` (that session; None: there is none)."""
        session = self.tls_pool.take(relay, lambda s: s.ctx is config.client and config.allows(s.peer))
        if session is not None:
            session.open_stream(far)
        return session

    async def new_tls_session(self, far: Far, relay: tuple[str, int], config: TlsConfig) -> bool:
        """Open ``far`` as the first stream of a new TLS session to ``relay``; False when the relay's
        certificate is not a current member's."""
        session = await self.tls_pool.connect(relay, config.client, TLS_HANDSHAKE_TIMEOUT)
        session.ctx, session.peer = config.client, peer_of(session.ssl_object())
        now = self.tls  # a table may have revoked the peer, or brought new material, during the handshake
        if now is None or not now.allows(session.peer) or now.client is not config.client:
            session.abort()
            return False
        if not session.idle():
            raise RelayError("the relay closed the new TLS connection")
        session.open_stream(far)
        return True

    def _check_tls_sessions(self, tls: TlsConfig | None) -> None:
        """Cut off the sessions of peers that are no longer admitted (revoked) at once; sessions made
        with older TLS material finish their stream and take no other."""
        accepted, opened = list(self.tls_sessions), self.tls_pool.all_sessions()
        for sessions, ctx in ((accepted, tls and tls.server), (opened, tls and tls.client)):
            for session in sessions:
                if tls is None or not tls.allows(session.peer):
                    session.abort()
                elif session.ctx is not ctx:
                    session.retire()

    def _stop_tls_relay(self) -> None:
        if self.tls_server is not None:
            self.tls_server.close()  # open connections continue
            self.tls_server = None
        self.tls_server_config = None
        self.tls_error = None

    def _stop_listening(self, port: Port) -> None:
        if port.server is not None:
            port.server.close()
            port.server = None
        port.error = None

    async def _bind_all(self) -> None:
        assert self.host is not None
        self._last_bind_retry = time.monotonic()
        for port in self.ports.values():
            if port.server is None:
                try:
                    sock = bound_socket(self.host, port.number)
                except OSError as e:
                    port.error = bind_error(e, self.host, port.number)
                    continue
                port.error = None
                port.server = await self.loop.create_server(lambda p=port: Conn(self, p), sock=sock)
        if self.relay_port and self.relay_server is None:
            try:
                sock = bound_socket(self.host, self.relay_port)
            except OSError as e:
                self.relay_error = bind_error(e, self.host, self.relay_port)
            else:
                self.relay_error = None
                self.relay_server = await self.loop.create_server(lambda: PlainRelayIn(self), sock=sock)
        elif not self.relay_port:
            self.relay_error = None
        if self.relay_port and self.tls is not None and self.tls_server is None:
            tls_port = self.relay_port + TLS_RELAY_OFFSET
            try:
                sock = bound_socket(self.host, tls_port)
            except OSError as e:
                self.tls_error = bind_error(e, self.host, tls_port)
            else:
                self.tls_error = None
                self.tls_server_config = self.tls
                self.tls_server = await self.loop.create_server(
                    lambda: TlsRelaySession(self), sock=sock, ssl=self.tls.server,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)

    def _schedule_tick(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        lim = self.limits
        interval = max(0.05, min(1.0, lim.idle_timeout / 4, (lim.drain_grace or 1.0) / 4))
        self._ticker = self.loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        """Close idle and drained connections, retry failed binds, retire drained ports."""
        now = time.monotonic()
        idle = self.limits.idle_timeout
        for sp in self.threaded:
            sp.sync()
        for conn in list(self.conns):
            if conn.drain_at is not None and now >= conn.drain_at:
                conn.abort()
            elif conn.moved != conn.seen:
                conn.seen = conn.moved
                conn.idle_since = now
            elif now - conn.idle_since >= idle:
                conn.abort()
        for port in list(self.draining):
            if port.c.active <= 0:
                self.draining.remove(port)
                port.c.active = 0
                self.retired.add(port.c)
        if self.host is not None and now - self._last_bind_retry >= 2.0 and (
                any(p.server is None for p in self.ports.values())
                or (self.relay_port and self.relay_server is None)
                or (self.relay_port and self.tls is not None and self.tls_server is None)):
            self.loop.create_task(self._bind_all())
        self._schedule_tick()

    def status(self) -> dict[str, Any]:
        for sp in self.threaded:
            sp.sync()
        total = Counters()
        total.add(self.retired)
        total.add(self.relay_c)
        ports = {}
        for port in self.ports.values():
            total.add(port.c)
            ports[str(port.number)] = {**port.c.as_dict(), "service": port.service,
                                       "backends": len(port.backends), "listening": port.server is not None}
        for port in self.draining:
            total.add(port.c)
        return {
            "version": self.version, "pid": os.getpid(), "host": self.host,
            "listening": sorted(p.number for p in self.ports.values() if p.server is not None),
            "bind_errors": {str(p.number): p.error for p in self.ports.values() if p.error},
            "relay": {"port": self.relay_port, "listening": self.relay_server is not None,
                      "error": self.relay_error, **self.relay_c.as_dict()},
            "tls_relay": {"port": self.relay_port + TLS_RELAY_OFFSET if self.tls is not None else 0,
                          "listening": self.tls_server is not None, "error": self.tls_error,
                          "sessions_in": len(self.tls_sessions), "sessions_out": len(self.tls_pool.addr_of),
                          "sessions_opened": self.tls_pool.opened, "sessions_reused": self.tls_pool.reused},
            "ports": ports, "total": total.as_dict(), "active": self.n_active,
            "backends": dict(self.active_by_task), "table_error": self.table_error,
            "tables_applied": self.tables_applied,
        }

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for port in self.ports.values():
            self._stop_listening(port)
        if self.relay_server is not None:
            self.relay_server.close()
            self.relay_server = None
        self._stop_tls_relay()
        for conn in list(self.conns):
            conn.abort()
        for session in [*self.tls_sessions, *self.tls_pool.all_sessions()]:
            session.abort()
        deadline = time.monotonic() + THREAD_STOP_WAIT
        while self.threaded and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
