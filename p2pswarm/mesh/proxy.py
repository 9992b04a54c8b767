"""The routing mesh's data plane: the table in force, its listeners and connections (asyncio Protocol API).

One :class:`Mesh` per data-plane process (:mod:`p2pswarm.mesh.dataplane`). It checks each table
it is given (:mod:`p2pswarm.mesh.tablecheck`), listens on every published port of it and
forwards each accepted connection (:class:`~p2pswarm.mesh.conn.Conn`):

    accept → routes.candidates() → connect (connect_timeout) → on failure the next
    candidate (at most ``retries`` more) → pipe bytes both ways

A backend with ``via`` is reached through another node's relay listener (RELAY protocol:
:mod:`p2pswarm.mesh.relayproto`; listeners: :mod:`p2pswarm.mesh.relayin`).
Small exchanges are piped by the Protocol API (uvloop when installed: measured fastest,
docs/benchmarks.md "Routing mesh"); once a connection streams bulk data it is
handed to a splicer (:mod:`p2pswarm.mesh.splice`), which moves data socket → pipe → socket with
``os.splice`` and never copies it into Python: a ThreadedSplicer (a blocking splice loop per
direction in a thread of its own, for at most BULK_THREADS connections) or, beyond that, a
Splicer (non-blocking splices driven by the event loop). "Bulk" is detected, not
declared: ``splice_after`` reads of at least BIG_CHUNK bytes mean data arrives faster than
it is forwarded.

The hot path logs nothing and counts in plain ints. Limits (table ``limits``):
``max_conns`` open connections per data plane, above which a new connection is accepted and
closed at once (``refused_limit``); ``idle_timeout`` closes connections that moved no byte
for that long; ``drain_grace`` is how long open connections to a backend (or port) removed
from the table may continue.

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
import os
import random
import time
from typing import Any, Mapping

from p2pswarm.mesh.conn import SPLICE_AFTER, Conn, Far, RelayError
from p2pswarm.mesh.counters import Counters
from p2pswarm.mesh.relayin import PlainRelayIn, TlsRelaySession
from p2pswarm.mesh.sockets import bind_error, bound_socket
from p2pswarm.mesh.splice import HAVE_SPLICE, ThreadedSplicer
from p2pswarm.mesh.tablecheck import Limits, PortSpec, TableError, parse_table
from p2pswarm.mesh.tlsctx import TlsConfig, TlsError, parse_tls, peer_of
from p2pswarm.mesh.tlsmux import Session, SessionPool
from p2pswarm.transport.ports import TLS_RELAY_OFFSET

BULK_THREADS = 4
"""Spliced connections at most whose two directions each run a blocking splice loop in a
thread of their own (:class:`~p2pswarm.mesh.splice.ThreadedSplicer`; os.splice releases the GIL, so there is no
event-loop round trip per pipe fill and the loop stays free for small requests); further
spliced connections, and all of them with ``splice_after`` 0 (nothing was detected: most are
short, and two threads per short connection cost more than they save), are spliced on the
event loop (:class:`~p2pswarm.mesh.splice.Splicer`). 0: never use threads. Measured in docs/benchmarks.md,
"Routing mesh"."""
THREAD_STOP_WAIT = 1.0
"""Seconds Mesh.close() waits for splice threads to leave after shutting their sockets."""

TLS_HANDSHAKE_TIMEOUT = 5.0
"""Seconds a TLS relay handshake may take (both ways) before the connection is given up."""


class Port:
    """A published port: its listener, its backends and its counters (kept while it drains)."""

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

    def task_started(self, task: str) -> None:
        """A connection was attached to ``task``'s backend (counted for least-connections choice)."""
        self.active_by_task[task] = self.active_by_task.get(task, 0) + 1

    def task_ended(self, task: str) -> None:
        """A connection to ``task``'s backend ended or moved elsewhere."""
        n = self.active_by_task.get(task, 1) - 1
        if n > 0:
            self.active_by_task[task] = n
        else:
            self.active_by_task.pop(task, None)

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
