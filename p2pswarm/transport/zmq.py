"""The real transport: ZeroMQ PUSH/PULL over TCP.

One PULL socket receives everything.  For each peer we talk to there are up to
two PUSH sockets, one for probes and one for bulk transfers; ZeroMQ opens a TCP
connection per socket, so a probe never queues behind a 4 MB state transfer.

Sends never block: every PUSH socket has a small send high-water mark and we
send with NOBLOCK, so a dead peer costs at most ``probe_hwm`` + ``bulk_hwm``
queued messages and then drops are counted.  We deliberately do not set
ZMQ_IMMEDIATE: with it the first messages to a cold peer (before the TCP
handshake completes) would be dropped, which SWIM would read as a failed probe.
Queued messages to a dead peer are bounded by the HWM instead.

Open peer sockets are kept in an LRU cache of ``max_peers`` entries.  Each
socket costs about two file descriptors (TCP + ZeroMQ mailbox), so the real
transport is meant for clusters of up to a few hundred nodes talking to a
bounded working set of peers; the simulator covers larger clusters.  The
process's RLIMIT_NOFILE must allow ~4 x max_peers + inbound connections.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
import re
import socket

import zmq
import zmq.asyncio

from p2pswarm.transport.base import TransportError
from p2pswarm.wire import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

RECONNECT_IVL_MS = 100
"""First reconnect attempt after a lost connection: fast, so a restarted peer is reached quickly."""
RECONNECT_IVL_MAX_MS = 2000
"""Reconnect back-off ceiling: a dead peer costs one connect attempt per 2 s at most."""
CONNECT_TIMEOUT_MS = 2000
"""Give up a connect attempt (e.g. to a black-holed address) after this and retry."""
HEARTBEAT_IVL_MS = 5000
"""ZMTP ping interval: notices a half-open connection long before TCP keepalive would."""
HEARTBEAT_TIMEOUT_MS = 15000
"""A connection with no traffic for 3 heartbeat intervals is closed (and reconnected)."""
KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTVL_S = 10
KEEPALIVE_CNT = 3
"""TCP keepalive as a second line of defence: dead after 30 + 3 x 10 s of silence."""

_PORT_RE = re.compile(r"[0-9]{1,5}")
_IPV4ISH_RE = re.compile(r"[0-9.]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAX_ADDR_LEN = 300


def parse_addr(addr: object, *, allow_port_zero: bool = False) -> tuple[str, int] | None:
    """Split ``host:port`` (IPv4, ``[IPv6]`` or a DNS name) or return None.

    Addresses come from peers' gossip, so this never raises: a malformed one
    is the caller's to count and drop.
    """
    if not isinstance(addr, str) or len(addr) > _MAX_ADDR_LEN:
        return None
    host, sep, port_s = addr.rpartition(":")
    if not sep or not _PORT_RE.fullmatch(port_s):
        return None
    port = int(port_s)
    if port > 65535 or (port == 0 and not allow_port_zero):
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        return host[1:-1], port
    if _IPV4ISH_RE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return None
        return host, port
    if len(host) <= 253 and _HOSTNAME_RE.fullmatch(host):
        return host, port
    return None


def format_addr(host: str, port: int) -> str:
    """Inverse of parse_addr: IPv6 hosts get their brackets back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(err: zmq.ZMQError) -> str:
    """A short lower-case reason without pyzmq's appended endpoint."""
    if err.errno == zmq.EADDRINUSE:
        return "address already in use; stop the other process or choose another port"
    if err.errno == zmq.EADDRNOTAVAIL:
        return "address not available on this host; use one of its own addresses"
    if err.errno == zmq.ENODEV:
        return "no such interface or address on this host"
    try:
        return os.strerror(err.errno).lower()
    except (ValueError, OverflowError):
        return str(err).splitlines()[0]


class _Peer:
    """The PUSH sockets for one peer address, created on first use of each channel."""

    __slots__ = ("probe", "bulk")

    def __init__(self) -> None:
        self.probe: zmq.Socket | None = None
        self.bulk: zmq.Socket | None = None

    def close(self) -> None:
        for sock in (self.probe, self.bulk):
            if sock is not None:
                sock.close(linger=0)
        self.probe = self.bulk = None


class ZmqTransport:
    """Transport over ZeroMQ; see the module docstring for the design."""

    def __init__(
        self,
        bind: str,
        advertise: str | None = None,
        *,
        max_peers: int = 256,
        probe_hwm: int = 64,
        bulk_hwm: int = 16,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        for name, value in (("max_peers", max_peers), ("probe_hwm", probe_hwm),
                            ("bulk_hwm", bulk_hwm), ("max_message_bytes", max_message_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._bind = bind
        self._advertise = advertise
        self._local_addr = advertise or bind
        self._max_peers = max_peers
        self._probe_hwm = probe_hwm
        self._bulk_hwm = bulk_hwm
        self._max_bytes = max_message_bytes
        self._ctx: zmq.asyncio.Context | None = None
        self._pull: zmq.asyncio.Socket | None = None
        self._peers: collections.OrderedDict[str, _Peer] = collections.OrderedDict()
        self._closed = False
        self._counts = dict.fromkeys(
            ("sent", "send_dropped", "received", "bad_address", "evicted", "oversized",
             "recv_dropped"), 0)

    @property
    def local_addr(self) -> str:
        """``advertise`` or ``bind``, with the real port once started on port 0."""
        return self._local_addr

    async def start(self) -> None:
        if self._ctx is not None or self._closed:
            raise RuntimeError("ZmqTransport.start() called twice or after close()")
        parsed = parse_addr(self._bind, allow_port_zero=True)
        if parsed is None:
            raise TransportError(f"cannot bind {self._bind!r}: expected host:port, e.g. 127.0.0.1:7946")
        adv = None
        if self._advertise is not None:
            adv = parse_addr(self._advertise, allow_port_zero=True)
            if adv is None:
                raise TransportError(
                    f"invalid advertise address {self._advertise!r}: expected host:port, e.g. 10.0.0.5:7946")
        host, port = parsed
        ip = await self._resolve_bind_host(host)
        ctx = zmq.asyncio.Context()
        ctx.max_sockets = 2 * self._max_peers + 16
        pull = ctx.socket(zmq.PULL)
        self._tune(pull)
        pull.setsockopt(zmq.MAXMSGSIZE, self._max_bytes)
        pull.setsockopt(zmq.RCVHWM, self._probe_hwm)
        try:
            pull.bind(f"tcp://{f'[{ip}]' if ':' in ip else ip}:{port or '*'}")
        except zmq.ZMQError as err:
            pull.close(linger=0)
            ctx.term()
            raise TransportError(f"cannot bind {self._bind}: {_reason(err)}") from None
        self._ctx, self._pull = ctx, pull
        real_port = int(pull.getsockopt(zmq.LAST_ENDPOINT).decode().rpartition(":")[2])
        if adv is not None:
            self._local_addr = format_addr(adv[0], adv[1] or real_port)
        else:
            self._local_addr = format_addr(host, real_port)

    async def _resolve_bind_host(self, host: str) -> str:
        """ZeroMQ binds only to IPs or interface names, so resolve a DNS name first."""
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as err:
            raise TransportError(f"cannot bind {self._bind}: cannot resolve {host!r} ({err.strerror})") from None
        return str(infos[0][4][0])

    def _tune(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IPV6, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)

    def send(self, addr: str, data: bytes, bulk: bool = False) -> bool:
        if self._pull is None or self._closed:
            self._counts["send_dropped"] += 1
            return False
        if len(data) > self._max_bytes:
            self._counts["oversized"] += 1
            self._counts["send_dropped"] += 1
            return False
        sock = self._socket_for(addr, bulk)
        if sock is None:
            self._counts["send_dropped"] += 1
            return False
        if not self._try_send(sock, data):
            self._counts["send_dropped"] += 1
            return False
        self._counts["sent"] += 1
        return True

    @staticmethod
    def _try_send(sock: zmq.Socket, data: bytes) -> bool:
        """One non-blocking send; False when the queue is full (slow or dead peer)."""
        try:
            sock.send(data, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            pass
        except zmq.ZMQError:
            return False
        # libzmq handles the "peer has read N messages" commands that free
        # queue room at most once per ~1 ms on the send path, so a burst soon
        # after the last one can look full.  Reading ZMQ_EVENTS processes
        # them now; retry once if that freed room.
        try:
            if sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
                sock.send(data, zmq.NOBLOCK, copy=False)
                return True
        except zmq.ZMQError:
            pass
        return False

    def _socket_for(self, addr: str, bulk: bool) -> zmq.Socket | None:
        peer = self._peers.get(addr)
        if peer is None:
            parsed = parse_addr(addr)
            if parsed is None:
                self._counts["bad_address"] += 1
                log.debug("dropping message to malformed address %r", addr)
                return None
            if len(self._peers) >= self._max_peers:
                _, old = self._peers.popitem(last=False)
                old.close()
                self._counts["evicted"] += 1
            peer = self._peers[addr] = _Peer()
        else:
            self._peers.move_to_end(addr)
        sock = peer.bulk if bulk else peer.probe
        if sock is not None:
            return sock
        host, port = parse_addr(addr)  # type: ignore[misc]  # validated when the peer was added
        sock = zmq.Socket(self._ctx, zmq.PUSH)
        self._tune(sock)
        sock.setsockopt(zmq.SNDHWM, self._bulk_hwm if bulk else self._probe_hwm)
        try:
            sock.connect(f"tcp://{format_addr(host, port)}")
        except zmq.ZMQError as err:
            sock.close(linger=0)
            if peer.probe is None and peer.bulk is None:
                del self._peers[addr]
            self._counts["bad_address"] += 1
            log.debug("cannot connect to %r: %s", addr, err)
            return None
        if bulk:
            peer.bulk = sock
        else:
            peer.probe = sock
        return sock

    async def recv(self) -> bytes:
        if self._pull is None or self._closed:
            raise TransportError("transport is not running")
        while True:
            try:
                parts = await self._pull.recv_multipart()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    raise TransportError("transport closed") from None
                raise
            except zmq.ZMQError as err:
                raise TransportError(f"receive failed: {_reason(err)}") from None
            if len(parts) != 1:  # we only ever send single frames
                self._counts["recv_dropped"] += 1
                continue
            self._counts["received"] += 1
            return parts[0]

    def stats(self) -> dict[str, int]:
        return {**self._counts, "peers_open": len(self._peers)}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()
        if self._pull is not None:
            self._pull.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
