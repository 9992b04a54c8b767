"""The routing mesh's UDP data plane: published UDP ports, a session per client address.

One :class:`UdpMesh` per data-plane process, next to the TCP :class:`~p2pswarm.mesh.proxy.Mesh`
(:mod:`p2pswarm.mesh.dataplane` feeds both the same table; this one reads its ``udp`` list)::

    "udp": [{"port": 5353, "service": "dns",
             "backends": [{"task": "t1", "node": "n1", "addr": "10.0.0.5:21000", "local": true,
                           "rtt": 0.0004, "via": null}, ...]}]

For each published UDP port a :class:`asyncio.DatagramProtocol` endpoint is bound on the
mesh host. The first datagram from a client address starts a **session**: a backend is
chosen with the same pure route choice as TCP (:func:`p2pswarm.mesh.routes.candidates`:
a local replica first, else power of two choices weighted by RTT and open sessions), and
one connected UDP socket to it is opened. Datagrams from the client go out on that socket;
datagrams the backend sends back on it go to the client from the published port.

* Sessions idle for :data:`SESSION_IDLE` seconds are closed (``expired``); at most
  :data:`MAX_SESSIONS` per port, a new client evicts the least recently active one
  (``evicted``).
* A session whose backend left the table moves to another backend at its next datagram
  (``switched``).
* An error on a backend socket (ICMP port unreachable arrives as ECONNREFUSED on the
  connected socket) marks the session and holds the backend off for
  :data:`BACKEND_HOLDOFF` seconds; the session's next datagram goes to another backend
  (``backend_errors``, ``switched``). A send that fails that way is retried once elsewhere.
* **Relayed** backends (``via``: a relay node's relay port, for a task on a node this one has
  no direct link to) get their datagrams through that node's UDP relay listener, which
  listens on the same port number as the TCP relay. Each datagram to it carries a header::

      b"P2PU" | version (1 byte, =1) | length (1 byte) | target "h:p" (ASCII) | payload

  The relay (:class:`UdpRelay`) forwards the payload to the target from a socket of its own
  per sending socket (a session, as above) and sends back each reply behind one byte,
  ``0`` (the sender's session socket is connected to the relay, so whatever arrives on it is
  the session's). A lone ``1`` byte says the target failed (an ICMP error on the relay's
  socket, or a target the relay refuses): the sender treats it as its own socket's error and
  moves the session, so a relayed backend fails over like a direct one. A relay takes
  datagrams only from cluster members' hosts (``relay_from``: a spoofed source elsewhere
  would make it reflect traffic; within a member host any process can send from its address,
  as it can to any published port) for targets it reaches itself (``udp_relay_allow``);
  others are dropped and counted (``relay_refused``). The header makes the largest relayed
  datagram smaller than a direct one by its length (6 bytes + the target's "h:p"). Backends
  on a blocked host are skipped.

The per-datagram path is a dict lookup, a membership test and a ``send``: no route graph,
no logging, counters in plain ints. A datagram is at most 65535 bytes (the IP limit), so
one ``recv`` of :data:`MAX_DATAGRAM` always reads a whole one.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

from p2pswarm.mesh.counters import CounterSet
from p2pswarm.mesh.routes import Backend, candidates
from p2pswarm.mesh.sockets import bind_error, bound_socket
from p2pswarm.mesh.tablecheck import TableError, canonical_host, parse_addr

SESSION_IDLE = 30.0
"""Seconds without a datagram either way after which a UDP session is closed (its backend
socket too). DNS-like request/response traffic needs a few seconds; 30 s also keeps
keep-alive'd protocols (QUIC, WireGuard: 25 s) on one backend. Table ``limits.udp_idle_timeout``
overrides it."""
MAX_SESSIONS = 4096
"""Sessions (one backend socket each) per published UDP port; a new client past it evicts the
least recently active session. Table ``limits.udp_max_sessions`` overrides it."""
BACKEND_HOLDOFF = 5.0
"""Seconds a backend that answered with an error (ICMP port unreachable) is skipped by new
choices while other backends remain."""
MAX_DATAGRAM = 65535
"""Largest UDP datagram (16-bit length); one recv of this size reads any datagram whole."""
READ_BURST = 64
"""Datagrams read from one backend socket per readiness event before yielding."""
REPLY_BACKLOG = 1 << 20
"""Bytes of replies queued on a published port's socket (kernel buffer full) before more are dropped."""
BIND_RETRY = 2.0
"""Seconds between attempts to bind a published UDP port that could not be bound."""
RELAY_MAGIC = b"P2PU"
RELAY_VERSION = 1
RELAY_REPLY, RELAY_FAILED = b"\x00", b"\x01"
"""What precedes a reply from a relay, and what a relay sends when its target failed."""

COUNTERS = ("datagrams_in", "datagrams_out", "bytes_in", "bytes_out", "sessions", "sessions_started",
            "expired", "evicted", "switched", "backend_errors", "no_backend", "dropped", "errors",
            "relay_refused")
"""Per port and in total. ``sessions`` is a gauge, the rest count up. ``datagrams_in`` /
``bytes_in`` flow client → backend, ``*_out`` backend → client; ``no_backend`` and
``dropped`` count datagrams lost (no backend; a socket buffer full or a send error)."""


class Counters(CounterSet):
    __slots__ = COUNTERS
    FIELDS = COUNTERS


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UdpPortSpec:
    port: int
    service: str
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class UdpTable:
    host: str
    ports: tuple[UdpPortSpec, ...]
    idle_timeout: float | None = None
    max_sessions: int | None = None
    relay_port: int = 0
    relay_allow: frozenset[tuple[str, int]] = frozenset()
    relay_from: frozenset[str] = frozenset()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise TableError(message)


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _is_num(v: Any, lo: float, hi: float) -> bool:
    return type(v) in (int, float) and lo <= v <= hi


def parse_udp(t: Any) -> UdpTable:
    """The UDP part of a table (the node is trusted, but a bad table must not crash the
    data plane: TableError, the previous table stays in force and the error is reported)."""
    _check(isinstance(t, Mapping), f"table: expected a map, got {type(t).__name__}")
    host = t.get("host", "127.0.0.1")
    _check(isinstance(host, str) and 0 < len(host) <= 100, "table.host: expected a host")
    blocked = t.get("blocked_hosts") or ()
    _check(isinstance(blocked, (list, tuple)), "table.blocked_hosts: expected a list")
    blocked = frozenset(h for h in blocked if isinstance(h, str))
    limits = t.get("limits") or {}
    _check(isinstance(limits, Mapping), "table.limits: expected a map")
    idle = limits.get("udp_idle_timeout")
    _check(idle is None or _is_num(idle, 0.01, 10**7), "limits.udp_idle_timeout: expected seconds 0.01..1e7")
    cap = limits.get("udp_max_sessions")
    _check(cap is None or _is_int(cap, 1, 10**6), "limits.udp_max_sessions: expected an integer 1..1000000")
    raw = t.get("udp") or []
    _check(isinstance(raw, (list, tuple)) and len(raw) <= 65535, "table.udp: expected a list")
    ports: list[UdpPortSpec] = []
    seen: set[int] = set()
    for i, p in enumerate(raw):
        where = f"table.udp[{i}]"
        _check(isinstance(p, Mapping), f"{where}: expected a map")
        number = p.get("port")
        _check(_is_int(number, 1, 65535), f"{where}.port: expected an integer 1..65535, got {number!r:.60}")
        _check(number not in seen, f"{where}.port: {number} appears twice")
        seen.add(number)
        service = p.get("service", "")
        _check(isinstance(service, str) and len(service) <= 256, f"{where}.service: expected a string")
        raw_backends = p.get("backends") or []
        _check(isinstance(raw_backends, (list, tuple)), f"{where}.backends: expected a list")
        backends = []
        for j, b in enumerate(raw_backends):
            bw = f"{where}.backends[{j}]"
            _check(isinstance(b, Mapping), f"{bw}: expected a map")
            task, node, rtt = b.get("task"), b.get("node", ""), b.get("rtt")
            _check(isinstance(task, str) and 0 < len(task) <= 256, f"{bw}.task: expected a string")
            _check(isinstance(node, str) and len(node) <= 256, f"{bw}.node: expected a string")
            _check(rtt is None or _is_num(rtt, 0, 3600), f"{bw}.rtt: expected seconds or null")
            addr = parse_addr(b.get("addr"), f"{bw}.addr")
            via = None if b.get("via") is None else parse_addr(b.get("via"), f"{bw}.via")
            if (via or addr)[0] in blocked:
                continue  # unreachable from here
            backends.append(Backend(task=task, node=node, addr=addr, local=bool(b.get("local", False)),
                                    rtt=None if rtt is None else float(rtt), via=via))
        ports.append(UdpPortSpec(number, service, tuple(backends)))
    relay_port = t.get("relay_port") or 0
    _check(_is_int(relay_port, 0, 65535), "table.relay_port: expected an integer 0..65535")
    allow = t.get("udp_relay_allow") or []
    members = t.get("relay_from") or []
    _check(isinstance(allow, (list, tuple)) and isinstance(members, (list, tuple)),
           "table.udp_relay_allow / relay_from: expected lists")
    _check(all(isinstance(h, str) for h in members), "table.relay_from: expected host strings")
    return UdpTable(host, tuple(ports), None if idle is None else float(idle), cap, relay_port,
                    frozenset(parse_addr(a, "table.udp_relay_allow[]") for a in allow),
                    frozenset(canonical_host(h) for h in members))


def relay_header(target: tuple[str, int]) -> bytes:
    """What precedes each datagram sent through a UDP relay to ``target`` (ValueError for a
    target that cannot be named in 255 ASCII bytes)."""
    name = f"[{target[0]}]:{target[1]}" if ":" in target[0] else f"{target[0]}:{target[1]}"
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"relay target {name!r:.80} is not ASCII") from None
    if len(raw) > 255:
        raise ValueError("relay target longer than 255 bytes")
    return RELAY_MAGIC + bytes((RELAY_VERSION, len(raw))) + raw


def parse_relay_header(data: bytes) -> tuple[tuple[str, int], int] | None:
    """``(target, payload offset)`` of a relayed datagram, or None when it is not one."""
    if len(data) < 6 or data[:4] != RELAY_MAGIC or data[4] != RELAY_VERSION:
        return None
    end = 6 + data[5]
    if len(data) < end:
        return None
    try:
        return parse_addr(data[6:end].decode("ascii"), "relay target"), end
    except (UnicodeDecodeError, TableError):
        return None


# -- sessions ----------------------------------------------------------------------------------


class Session:
    """One client address on one published port: a connected socket to its backend."""
    __slots__ = ("port", "client", "backend", "key", "sock", "fd", "failed", "last", "prefix")

    def __init__(self, port: "UdpPort", client: Any) -> None:
        self.port = port
        self.client = client
        self.backend: Backend | None = None
        self.key: tuple[str, tuple[str, int], tuple[str, int] | None] | None = None
        """(task, address, relay): a session moves when its backend leaves or changes its route."""
        self.sock: socket.socket | None = None
        self.fd = -1
        self.failed = False
        self.last = 0.0
        self.prefix = b""
        """The relay header of each datagram, for a backend reached through a relay."""

    def connect(self, backend: Backend) -> None:
        """Open a connected socket to ``backend`` (or its relay; UDP connect is immediate); OSError on failure."""
        to = backend.via or backend.addr
        prefix = relay_header(backend.addr) if backend.via else b""  # (raises ValueError before any socket)
        sock = socket.socket(socket.AF_INET6 if ":" in to[0] else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            host = self.port.mesh.host
            if backend.via and host and (":" in host) == (":" in to[0]):
                sock.bind((host, 0))  # the relay takes datagrams from members' addresses only: send from ours
            sock.connect(to)
            self.port.loop.add_reader(sock.fileno(), self.readable)
        except BaseException:
            sock.close()
            raise
        self.sock, self.fd = sock, sock.fileno()
        self.backend, self.key, self.failed = backend, (backend.task, backend.addr, backend.via), False
        self.prefix = prefix

    def disconnect(self) -> None:
        if self.sock is not None:
            try:
                self.port.loop.remove_reader(self.fd)
            except (OSError, ValueError, RuntimeError):
                pass
            self.sock.close()
            self.sock, self.fd = None, -1
        self.backend, self.key = None, None

    def readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        port = self.port
        for _ in range(READ_BURST):
            try:
                data = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable and the like, reported on the connected socket
                port.backend_failed(self)
                return
            if self.prefix:  # from a relay: a reply behind its marker byte, or the target's failure
                if data[:1] != RELAY_REPLY:
                    port.backend_failed(self)
                    return
                data = data[1:]
            port.reply(self, data)


# -- published ports ---------------------------------------------------------------------------


class UdpPort(asyncio.DatagramProtocol):
    """A published UDP port: its socket, sessions by client address (least recently active
    first), backends, counters."""

    def __init__(self, mesh: "UdpMesh", spec: UdpPortSpec) -> None:
        self.mesh = mesh
        self.loop = mesh.loop
        self.number = spec.port
        self.c = Counters()
        self.transport: asyncio.DatagramTransport | None = None
        self.error: str | None = None
        self.sessions: OrderedDict[Any, Session] = OrderedDict()
        self.active: dict[str, int] = {}
        """Open sessions per backend task (the route choice's load)."""
        self.holdoff: dict[str, float] = {}
        """Backend task → monotonic time until which new choices skip it."""
        self.update(spec)

    def update(self, spec: UdpPortSpec) -> None:
        self.service = spec.service
        self.backends = spec.backends
        self.keys = frozenset((b.task, b.addr, b.via) for b in spec.backends)

    # -- asyncio.DatagramProtocol (the published port)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and self.transport.is_closing():
            self.transport = None  # (a transport closed by close() is already forgotten; a newer one stays)

    def error_received(self, exc: Exception) -> None:
        self.c.errors += 1  # e.g. ICMP for a reply to a client that is gone

    def datagram_received(self, data: bytes, addr: Any) -> None:
        c = self.c
        sess = self.sessions.get(addr)
        if sess is None:
            sess = self._new_session(addr)
        else:
            self.sessions.move_to_end(addr)
            if sess.sock is None:
                self._route(sess, None)  # there was no backend at its last datagram
            elif sess.failed or sess.key not in self.keys:
                self._switch(sess)
        sess.last = time.monotonic()
        if sess.sock is None:
            c.no_backend += 1
            return
        self._deliver(sess, data)

    def _deliver(self, sess: Session, data: Any) -> None:
        """Send ``data`` on the session's socket; on an error, once more on another backend if any."""
        c = self.c
        for attempt in (0, 1):
            try:
                sess.sock.send(sess.prefix + data if sess.prefix else data)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                c.dropped += 1
                return
            except OSError as e:
                if attempt or not self._send_failed(sess, e):
                    c.dropped += 1
                    return
                continue
            c.datagrams_in += 1
            c.bytes_in += len(data)
            return

    # -- sessions

    def _new_session(self, addr: Any) -> Session:
        self._make_room()
        sess = self._add(Session(self, addr))
        self._route(sess, exclude=None)
        return sess

    def _make_room(self) -> None:
        """At the session cap, evict the least recently active sessions."""
        while len(self.sessions) >= self.mesh.max_sessions:
            _, old = self.sessions.popitem(last=False)
            self._close(old)
            self.c.evicted += 1

    def _add(self, sess: Session) -> Session:
        self.sessions[sess.client] = sess
        self.c.sessions += 1
        self.c.sessions_started += 1
        return sess

    def _route(self, sess: Session, exclude: str | None) -> None:
        """Connect ``sess`` to a backend chosen by :func:`candidates` (not ``exclude``, not
        held off, unless nothing else is left)."""
        backends = self.backends
        if not backends:
            return
        now = time.monotonic()
        pool = [b for b in backends if b.task != exclude and self.holdoff.get(b.task, 0.0) <= now]
        if not pool:
            pool = [b for b in backends if b.task != exclude] or list(backends)
        for backend in candidates(pool, self.active, self.mesh.rng, limit=len(pool)):
            try:
                sess.connect(backend)
            except (OSError, ValueError):
                self.c.errors += 1
                continue
            self.active[backend.task] = self.active.get(backend.task, 0) + 1
            return

    def _unroute(self, sess: Session) -> str | None:
        task = sess.backend.task if sess.backend is not None else None
        if task is not None:
            n = self.active.get(task, 0) - 1
            if n > 0:
                self.active[task] = n
            else:
                self.active.pop(task, None)
        sess.disconnect()
        return task

    def _switch(self, sess: Session) -> None:
        """Move ``sess`` to another backend: its own failed or left the table (or, when only the
        route to its task changed, say a cut link healed, to the same task by the new route)."""
        old = self._unroute(sess) if sess.sock is not None else None
        same = None if sess.failed else next((b for b in self.backends if b.task == old), None)
        if same is not None:
            try:
                sess.connect(same)
                self.active[same.task] = self.active.get(same.task, 0) + 1
            except (OSError, ValueError):
                same = None
        if same is None:
            self._route(sess, exclude=old if sess.failed else None)
        sess.failed = False
        self.c.switched += 1

    def _send_failed(self, sess: Session, exc: OSError) -> bool:
        """A send error on the backend socket: mark the backend, move the session; True when
        there is another backend to send the datagram to."""
        if exc.errno == errno.EMSGSIZE:
            return False  # too big for the path: another backend would not help
        self.backend_failed(sess)
        if len(self.backends) < 2:
            return False
        self._switch(sess)
        return sess.sock is not None

    def backend_failed(self, sess: Session) -> None:
        self.c.backend_errors += 1
        sess.failed = True
        if sess.backend is not None:
            self.holdoff[sess.backend.task] = time.monotonic() + BACKEND_HOLDOFF

    def reply(self, sess: Session, data: bytes) -> None:
        t = self.transport
        c = self.c
        if t is None or t.get_write_buffer_size() > REPLY_BACKLOG:
            c.dropped += 1
            return
        t.sendto(data, sess.client)
        c.datagrams_out += 1
        c.bytes_out += len(data)
        sess.last = time.monotonic()
        self.sessions.move_to_end(sess.client)

    def _close(self, sess: Session) -> None:
        self._unroute(sess)
        self.c.sessions -= 1

    def expire(self, now: float, idle: float) -> None:
        """Close sessions idle for ``idle`` seconds (oldest first: stop at the first recent one)."""
        sessions = self.sessions
        while sessions:
            addr, sess = next(iter(sessions.items()))
            if now - sess.last < idle:
                break
            del sessions[addr]
            self._close(sess)
            self.c.expired += 1
        for task in [t for t, until in self.holdoff.items() if until <= now]:
            del self.holdoff[task]

    def close(self) -> None:
        for sess in self.sessions.values():
            self._close(sess)
        self.sessions.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class UdpRelay(UdpPort):
    """This node's UDP relay listener: relayed datagrams from other members' meshes (see the
    module docstring), a session per sending socket, replies sent back as they are."""

    def __init__(self, mesh: "UdpMesh", number: int) -> None:
        super().__init__(mesh, UdpPortSpec(number, "", ()))
        self.allow: frozenset[tuple[str, int]] = frozenset()
        self.members: frozenset[str] = frozenset()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        c = self.c
        if addr[0] not in self.members:
            c.relay_refused += 1  # not a member's address: no answer at all (it may be spoofed)
            return
        parsed = parse_relay_header(data)
        if parsed is None or parsed[0] not in self.allow:
            c.relay_refused += 1
            self._tell_failed(addr)
            return
        target, offset = parsed
        sess = self.sessions.get(addr)
        if sess is not None and (sess.backend is None or sess.backend.addr != target or sess.failed):
            del self.sessions[addr]
            self._close(sess)
            sess = None
        if sess is None:
            sess = self._relay_session(addr, target)
            if sess is None:
                return
        else:
            self.sessions.move_to_end(addr)
        sess.last = time.monotonic()
        self._deliver(sess, memoryview(data)[offset:])  # (no other backend: an error is told the sender)

    def reply(self, sess: Session, data: bytes) -> None:
        super().reply(sess, RELAY_REPLY + data)

    def backend_failed(self, sess: Session) -> None:
        super().backend_failed(sess)
        self._tell_failed(sess.client)

    def _tell_failed(self, addr: Any) -> None:
        """Tell a member's session that its target failed here, so it moves (as on an ICMP error)."""
        if self.transport is not None:
            self.transport.sendto(RELAY_FAILED, addr)

    def _relay_session(self, addr: Any, target: tuple[str, int]) -> Session | None:
        self._make_room()
        sess = Session(self, addr)
        try:
            sess.connect(Backend(task=f"{target[0]}:{target[1]}", node="", addr=target, local=True))
        except OSError:
            self.c.errors += 1
            return None
        return self._add(sess)


class UdpMesh:
    """The UDP side of one data plane: published UDP ports of the table in force."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, *, rng: random.Random | None = None,
                 idle_timeout: float = SESSION_IDLE, max_sessions: int = MAX_SESSIONS) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.rng = rng or random.Random()
        self.default_idle, self.default_cap = idle_timeout, max_sessions
        self.idle_timeout, self.max_sessions = idle_timeout, max_sessions
        self.host: str | None = None
        self.ports: dict[int, UdpPort] = {}
        self.relay: UdpRelay | None = None
        self.retired = Counters()
        self.table_error: str | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._last_bind = 0.0
        self._binding = False

    async def apply(self, raw: Any) -> None:
        """Install the ``udp`` list of a table; on a bad one keep the old and report ``table_error``."""
        try:
            table = parse_udp(raw)
        except TableError as e:
            self.table_error = str(e)
            return
        self.table_error = None
        self.idle_timeout = table.idle_timeout if table.idle_timeout is not None else self.default_idle
        self.max_sessions = table.max_sessions if table.max_sessions is not None else self.default_cap
        closed = False
        relay = self.relay
        if relay is not None and (table.host != self.host or table.relay_port != relay.number or not table.ports):
            self._retire(relay)  # (no published UDP port: nothing to relay for)
            self.relay = relay = None
            closed = True
        if table.host != self.host:
            for port in self.ports.values():
                closed = closed or port.transport is not None
                port.close()
            self.host = table.host
        wanted = {spec.port: spec for spec in table.ports}
        for number in [n for n in self.ports if n not in wanted]:
            self._retire(self.ports.pop(number))  # UDP has no connections to drain
            closed = True
        if closed:
            await asyncio.sleep(0)  # a closed transport releases its socket on the next loop turn
        for number, spec in wanted.items():
            port = self.ports.get(number)
            if port is None:
                self.ports[number] = UdpPort(self, spec)
            else:
                port.update(spec)
        if relay is None and table.relay_port and table.ports:
            self.relay = relay = UdpRelay(self, table.relay_port)
        if relay is not None:
            relay.allow, relay.members = table.relay_allow, table.relay_from
        await self._bind_all()
        self._schedule_tick()

    def _retire(self, port: UdpPort) -> None:
        port.close()
        self.retired.add(port.c)

    async def _bind_all(self) -> None:
        if self.host is None or self._binding:
            return
        self._binding = True
        try:
            self._last_bind = time.monotonic()
            for port in self._endpoints():
                if port.transport is not None:
                    continue
                try:
                    sock = bound_socket(self.host, port.number, socket.SOCK_DGRAM)
                except OSError as e:
                    port.error = bind_error(e, self.host, port.number)
                    continue
                port.error = None
                await self.loop.create_datagram_endpoint(lambda p=port: p, sock=sock)
                if port not in self._endpoints():  # removed meanwhile
                    port.close()
        finally:
            self._binding = False

    def _endpoints(self) -> list[UdpPort]:
        """The published ports and the relay listener."""
        return [*self.ports.values(), *([self.relay] if self.relay is not None else [])]

    def _schedule_tick(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if not self.ports:
            self._ticker = None
            return
        interval = max(0.05, min(1.0, self.idle_timeout / 4))
        self._ticker = self.loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        """Expire idle sessions, retry failed binds."""
        now = time.monotonic()
        endpoints = self._endpoints()
        for port in endpoints:
            port.expire(now, self.idle_timeout)
        if now - self._last_bind >= BIND_RETRY and any(p.transport is None for p in endpoints):
            self.loop.create_task(self._bind_all())
        self._schedule_tick()

    def status(self) -> dict[str, Any]:
        """``{"listening": [...], "bind_errors": {"5353": "..."}, "ports": {"5353": {...}},
        "total": COUNTERS, "table_error": ...}``"""
        total = Counters()
        total.add(self.retired)
        ports = {}
        for port in self.ports.values():
            total.add(port.c)
            ports[str(port.number)] = {**port.c.as_dict(), "service": port.service,
                                       "backends": len(port.backends), "listening": port.transport is not None}
        relay = self.relay
        if relay is not None:
            total.add(relay.c)
        return {"listening": sorted(p.number for p in self.ports.values() if p.transport is not None),
                "bind_errors": {str(p.number): p.error for p in self.ports.values() if p.error},
                "ports": ports, "total": total.as_dict(), "table_error": self.table_error,
                "idle_timeout": self.idle_timeout, "max_sessions": self.max_sessions,
                "relay": None if relay is None else {"port": relay.number, "listening": relay.transport is not None,
                                                     "error": relay.error, **relay.c.as_dict()}}

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for port in self._endpoints():
            port.close()
