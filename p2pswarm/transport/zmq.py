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
import errno
import ipaddress
import logging
import os
import socket
import sys
import time
from typing import Callable

import zmq
import zmq.asyncio

from p2pswarm.security.keys import CurveKeys
from p2pswarm.transport.addr import format_addr, parse_addr
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

REFUSED_RETRY_S = 1.0
"""After a peer refused our key at the handshake, a new connection is tried at most this often."""
CURVE_OVERHEAD = 256
"""Slack on ZMQ_MAXMSGSIZE under CURVE: libzmq checks the size of the encrypted frame (payload + box
header, nonce and MAC); the exact limit is then applied to the decrypted message in recv."""
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"p2pswarm"


def _reason(err: zmq.ZMQError) -> str:
    """A short lower-case reason without pyzmq's appended endpoint."""
    if err.errno == zmq.EADDRINUSE:
        return "address already in use; stop the other process or choose another port"
    if err.errno == zmq.EADDRNOTAVAIL:
        return "address not available on this host; use one of its own addresses"
    if err.errno == errno.ENODEV:  # (pyzmq has no zmq.ENODEV; libzmq passes the system's code)
        return "no such interface or address on this host"
    if err.errno is None:
        return str(err).splitlines()[0]
    try:
        return os.strerror(err.errno).lower()
    except (ValueError, OverflowError):
        return str(err).splitlines()[0]


class ZapHandler:
    """A ZAP (ZMTP authentication protocol, RFC 27) handler for one context, served on the event loop.

    Admits a CURVE client when ``authorize(key)`` is true and reports the key as
    the connection's User-Id (hex), which every received frame carries.  Any
    other mechanism, a malformed request or an exception in ``authorize`` is
    refused.  ``on_result(admitted)`` is called for every decision.
    """

    def __init__(self, ctx: zmq.asyncio.Context, authorize: Callable[[bytes], bool],
                 on_result: Callable[[bool], None] = lambda admitted: None) -> None:
        self._authorize, self._on_result = authorize, on_result
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self._task = asyncio.ensure_future(self._serve())

    def _decide(self, frames: list) -> tuple[bytes, bytes]:
        if len(frames) < 7 or frames[0] != b"1.0" or frames[5] != b"CURVE" or len(frames[6]) != 32:
            return b"400", b""
        key = bytes(frames[6])
        try:
            admitted = bool(self._authorize(key))
        except Exception:
            log.warning("the authorize callback failed; refusing the connection", exc_info=True)
            admitted = False
        return (b"200", key.hex().encode()) if admitted else (b"400", b"")

    async def _serve(self) -> None:
        while True:
            try:
                frames = await self._sock.recv_multipart()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError:
                return
            status, user = self._decide(frames)
            self._on_result(status == b"200")
            request_id = frames[1] if len(frames) > 1 else b""
            try:
                await self._sock.send_multipart([b"1.0", request_id, status, b"OK" if user else b"denied", user, b""])
            except zmq.ZMQError:
                return

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._sock.close(linger=0)


def secure_server(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Make ``sock`` a CURVE server that needs a ZAP handler's consent (before bind)."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def secure_client(sock: zmq.Socket, keys: CurveKeys, server_key: bytes) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is ``server_key`` (before connect)."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


def frame_key(frame: zmq.Frame) -> bytes | None:
    """The CURVE key a received frame came from (our ZAP handler's User-Id), or None."""
    try:
        user = frame.get("User-Id")  # a str for this property
        return bytes.fromhex(user) if isinstance(user, str) and user else None
    except (zmq.ZMQError, ValueError, TypeError):
        return None


_REFUSED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                   | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class _Peer:
    """The PUSH sockets for one peer address, created on first use of each channel.

    Under CURVE each socket also has a monitor (an inproc PAIR) that reports a
    failed handshake: libzmq never reconnects a socket whose handshake the server
    refused (a protocol error ends the session), so the transport replaces it.
    """

    __slots__ = ("probe", "bulk", "key", "monitors", "retry_at")

    def __init__(self) -> None:
        self.probe: zmq.Socket | None = None
        self.bulk: zmq.Socket | None = None
        self.key: bytes | None = None
        self.monitors: dict[bool, zmq.Socket] = {}
        self.retry_at = 0.0

    def refused(self, bulk: bool) -> bool:
        """True if the channel's handshake failed since we last looked (reads the pending monitor events)."""
        mon = self.monitors.get(bulk)
        failed = False
        try:
            while mon is not None and int(mon.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                event = mon.recv_multipart(zmq.NOBLOCK)[0]
                if int.from_bytes(event[:2], sys.byteorder) & _REFUSED_EVENTS:
                    failed = True
        except zmq.ZMQError:
            pass
        return failed

    def close_channel(self, bulk: bool) -> None:
        sock = self.bulk if bulk else self.probe
        if sock is not None:
            sock.close(linger=0)
        mon = self.monitors.pop(bulk, None)
        if mon is not None:
            mon.close(linger=0)
        if bulk:
            self.bulk = None
        else:
            self.probe = None

    def close(self) -> None:
        self.close_channel(False)
        self.close_channel(True)


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
        curve: CurveKeys | None = None,
        authorize: Callable[[bytes], bool] | None = None,
        peer_key: Callable[[str], bytes | None] | None = None,
    ) -> None:
        for name, value in (("max_peers", max_peers), ("probe_hwm", probe_hwm),
                            ("bulk_hwm", bulk_hwm), ("max_message_bytes", max_message_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if curve is not None and (not isinstance(curve, CurveKeys) or authorize is None or peer_key is None):
            raise ValueError("CURVE needs CurveKeys and both the authorize and peer_key callbacks")
        self._curve = curve
        self._authorize = authorize
        self._peer_key = peer_key
        self._zap: ZapHandler | None = None
        self._user_keys: dict[str, bytes] = {}
        self._monitors_made = 0
        self._bind = bind
        self._advertise = advertise
        self._local_addr = advertise or bind
        self._max_peers = max_peers
        self._probe_hwm = probe_hwm
        self._bulk_hwm = bulk_hwm
        self._max_bytes = max_message_bytes
        self._ctx: zmq.asyncio.Context | None = None
        self._pull: zmq.asyncio.Socket | None = None
        self._pull_now: zmq.Socket | None = None
        """The PULL socket's synchronous twin, for ``recv_ready``."""
        self._peers: collections.OrderedDict[str, _Peer] = collections.OrderedDict()
        self._closed = False
        self._counts = dict.fromkeys(
            ("sent", "send_dropped", "received", "bad_address", "evicted", "oversized",
             "recv_dropped"), 0)
        if curve is not None:
            self._counts.update(dict.fromkeys(("admitted_connections", "refused_connections",
                                               "unauthorized_dropped", "no_peer_key", "peer_key_changed",
                                               "handshake_refused"), 0))

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
        ctx.max_sockets = (6 if self._curve is not None else 2) * self._max_peers + 16  # + monitors
        if self._curve is not None:
            self._zap = ZapHandler(ctx, self._authorize, self._on_zap)  # type: ignore[arg-type]
        pull = ctx.socket(zmq.PULL)
        self._tune(pull)
        if self._curve is not None:
            secure_server(pull, self._curve)
        pull.setsockopt(zmq.MAXMSGSIZE, self._max_bytes + (CURVE_OVERHEAD if self._curve is not None else 0))
        pull.setsockopt(zmq.RCVHWM, self._probe_hwm)
        try:
            pull.bind(f"tcp://{f'[{ip}]' if ':' in ip else ip}:{port or '*'}")
        except zmq.ZMQError as err:
            pull.close(linger=0)
            if self._zap is not None:
                await self._zap.close()
                self._zap = None
            ctx.term()
            raise TransportError(f"cannot bind {self._bind}: {_reason(err)}") from None
        self._ctx, self._pull = ctx, pull
        self._pull_now = zmq.Socket.shadow(pull.underlying)
        real_port = int(pull.getsockopt_string(zmq.LAST_ENDPOINT).rpartition(":")[2])
        if adv is not None:
            self._local_addr = format_addr(adv[0], adv[1] or real_port)
        else:
            self._local_addr = format_addr(host, real_port)

    def _on_zap(self, admitted: bool) -> None:
        self._counts["admitted_connections" if admitted else "refused_connections"] += 1

    @property
    def curve_public(self) -> bytes | None:
        """This transport's CURVE public key (None without CURVE)."""
        return self._curve.public if self._curve is not None else None

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
            # Under CURVE a full queue may mean that the peer refused our key: that socket has no
            # connection and never gets one again, so replace it (the check costs nothing otherwise).
            if self._curve is None or not self._replace_refused(addr, bulk):
                self._counts["send_dropped"] += 1
                return False
            sock = self._socket_for(addr, bulk)
            if sock is None or not self._try_send(sock, data):
                self._counts["send_dropped"] += 1
                return False
        self._counts["sent"] += 1
        return True

    def _replace_refused(self, addr: str, bulk: bool) -> bool:
        """Close the channel to ``addr`` if its handshake was refused; True when it was."""
        peer = self._peers.get(addr)
        if peer is None or not peer.refused(bulk):
            return False
        peer.close_channel(bulk)
        peer.retry_at = time.monotonic() + REFUSED_RETRY_S
        self._counts["handshake_refused"] += 1
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
            if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLOUT:
                sock.send(data, zmq.NOBLOCK, copy=False)
                return True
        except zmq.ZMQError:
            pass
        return False

    def _socket_for(self, addr: str, bulk: bool) -> zmq.Socket | None:
        peer = self._peers.get(addr)
        if peer is None and parse_addr(addr) is None:
            self._counts["bad_address"] += 1
            log.debug("dropping message to malformed address %r", addr)
            return None
        key = self._server_key(addr) if self._curve is not None else None
        if self._curve is not None and key is None:
            return None
        if peer is None:
            if len(self._peers) >= self._max_peers:
                _, old = self._peers.popitem(last=False)
                old.close()
                self._counts["evicted"] += 1
            peer = self._peers[addr] = _Peer()
            peer.key = key
        else:
            self._peers.move_to_end(addr)
            if peer.key != key:
                peer.close()  # the node at this address has a new key: reconnect with it
                self._counts["peer_key_changed"] += 1
                peer.key = key
        sock = peer.bulk if bulk else peer.probe
        if sock is not None:
            return sock
        if self._curve is not None and time.monotonic() < peer.retry_at:
            return None  # refused recently (see _replace_refused): do not hammer the peer
        host, port = parse_addr(addr)  # type: ignore[misc]  # validated when the peer was added
        assert self._ctx is not None, "send() checked that the transport is started"
        sock = zmq.Socket(self._ctx, zmq.PUSH)
        self._tune(sock)
        sock.setsockopt(zmq.SNDHWM, self._bulk_hwm if bulk else self._probe_hwm)
        if self._curve is not None:
            secure_client(sock, self._curve, key)  # type: ignore[arg-type]
            peer.monitors[bulk] = self._monitor(sock)
        try:
            sock.connect(f"tcp://{format_addr(host, port)}")
        except zmq.ZMQError as err:
            sock.close(linger=0)
            mon = peer.monitors.pop(bulk, None)
            if mon is not None:
                mon.close(linger=0)
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

    def _monitor(self, sock: zmq.Socket) -> zmq.Socket:
        """A synchronous PAIR receiving ``sock``'s handshake-failure events (read without blocking)."""
        self._monitors_made += 1
        endpoint = f"inproc://p2pswarm-monitor-{id(self)}-{self._monitors_made}"
        sock.monitor(endpoint, _REFUSED_EVENTS)
        assert self._ctx is not None, "only called for a socket of the started transport"
        mon = zmq.Socket(self._ctx, zmq.PAIR)
        mon.setsockopt(zmq.LINGER, 0)
        mon.connect(endpoint)
        return mon

    def _server_key(self, addr: str) -> bytes | None:
        """The CURVE server key for ``addr`` from the node's callback; None (counted) when it has none."""
        try:
            key = self._peer_key(addr)  # type: ignore[misc]
        except Exception:
            log.warning("the peer_key callback failed for %r", addr, exc_info=True)
            key = None
        if type(key) is not bytes or len(key) != 32:
            self._counts["no_peer_key"] += 1
            return None
        return key

    async def recv(self) -> bytes:
        if self._curve is not None:
            return (await self.recv_with_key())[0]
        if self._pull is None or self._closed:
            raise TransportError("transport is not running")
        while True:
            parts = await self._guarded(self._pull.recv_multipart())
            if len(parts) != 1:  # we only ever send single frames
                self._counts["recv_dropped"] += 1
                continue
            self._counts["received"] += 1
            return parts[0]

    async def recv_with_key(self) -> tuple[bytes, bytes | None]:
        """The next message and the CURVE key it came from (None without CURVE).

        With CURVE, a message whose key is no longer authorized (revoked or
        expired since its connection was admitted) is dropped and counted as
        ``unauthorized_dropped``; the node can then bind the message to the
        sender's certificate (e.g. check that a message's claimed source is the
        node that key belongs to).
        """
        if self._curve is None:
            return await self.recv(), None
        if self._pull is None or self._closed:
            raise TransportError("transport is not running")
        while True:
            got = self._accept(*await self._guarded(self._next_frame()))
            if got is not None:
                return got

    def recv_ready(self, limit: int) -> list[tuple[bytes, bytes | None]]:
        """Up to ``limit`` messages that have arrived already, with their keys, without waiting.

        The node reads them before its timers run: an ack that arrived in time counts even when its loop was
        late to read it, and one loop turn handles a burst. Call it only while no ``recv`` or ``recv_with_key``
        is pending (ZeroMQ signals new messages once: a pending receive would miss the ones left queued)."""
        out: list[tuple[bytes, bytes | None]] = []
        sock = self._pull_now
        while sock is not None and not self._closed and len(out) < limit:
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
                bad = frame.more or len(frame) > self._max_bytes
                while frame.more:  # (a message's frames arrive together)
                    frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:  # Again: nothing more has arrived
                break
            got = self._accept(frame, bad)
            if got is not None:
                out.append(got)
        return out

    def _accept(self, frame: zmq.Frame, bad: bool) -> tuple[bytes, bytes | None] | None:
        """A received message and its key, or None (counted) when it is malformed or, under CURVE, from a key
        no longer authorized."""
        if bad:
            self._counts["recv_dropped"] += 1
            return None
        key = None
        if self._curve is not None:
            key = self._frame_key(frame)
            try:
                allowed = key is not None and bool(self._authorize(key))  # type: ignore[misc]
            except Exception:
                allowed = False
            if not allowed:
                self._counts["unauthorized_dropped"] += 1
                return None
        self._counts["received"] += 1
        return frame.bytes, key

    async def _next_frame(self) -> tuple[zmq.Frame, bool]:
        """The next message's (last) frame, and whether it is bad (several frames, or too large)."""
        frame = await self._pull.recv(copy=False)  # type: ignore[union-attr]
        bad = frame.more or len(frame) > self._max_bytes
        while frame.more:  # we only ever send single frames: drop the whole message
            frame = await self._pull.recv(copy=False)  # type: ignore[union-attr]
        return frame, bad

    async def _guarded(self, awaitable):
        """Await one receive: a close during the wait is TransportError, a ZMQError one line."""
        try:
            return await awaitable
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                raise TransportError("transport closed") from None
            raise
        except zmq.ZMQError as err:
            raise TransportError(f"receive failed: {_reason(err)}") from None

    def drop_refused(self) -> int:
        """Close every channel whose CURVE handshake the peer refused; returns how many.

        A refused PUSH socket is never reconnected by libzmq and silently queues what
        is sent to it until the high-water mark fills.  A peer refuses us while it does
        not know our certificate yet (a new member gossips before everyone heard of it),
        so the node calls this every so often, and right after it introduced itself:
        the next send then reconnects at once.  Without CURVE it does nothing.
        """
        if self._curve is None:
            return 0
        owners = {mon: (peer, bulk) for peer in self._peers.values() for bulk, mon in peer.monitors.items()}
        if not owners:
            return 0
        dropped = 0
        # one poll over every monitor (in C) finds the few with events: at a hundred peers, asking each in turn
        # was a good part of an idle node's CPU
        for mon, _ in zmq.zmq_poll([(mon, zmq.POLLIN) for mon in owners], 0):
            peer, bulk = owners[mon]
            if peer.refused(bulk):
                peer.close_channel(bulk)
                peer.retry_at = 0.0
                dropped += 1
        self._counts["handshake_refused"] += dropped
        return dropped

    def _frame_key(self, frame: zmq.Frame) -> bytes | None:
        try:
            user = frame.get("User-Id")  # a str for this property
        except zmq.ZMQError:
            return None
        if not isinstance(user, str):
            return None
        key = self._user_keys.get(user)
        if key is None:
            key = frame_key(frame)
            if key is not None:
                if len(self._user_keys) >= 4 * self._max_peers:
                    self._user_keys.clear()
                self._user_keys[user] = key
        return key

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
        if self._zap is not None:
            await self._zap.close()
        if self._ctx is not None:
            self._ctx.term()
