"""The join endpoint: one request, one reply, over ZeroMQ CURVE (an I/O edge, like the transport).

A joiner knows an address and a token, not the sponsor's key, and has no
certificate yet, so it cannot use the node's CURVE socket.  Every member
therefore also serves a small ROUTER socket at :func:`join_addr` (the gossip port
+ :data:`JOIN_PORT_OFFSET`) under a well-known CURVE server key
(:func:`p2pswarm.security.keys.join_endpoint_keys`, which explains why a public
server key is sound here).  Its ZAP handler admits every CURVE client key (the handshake itself
decides; the key is handed to the sponsor, which requires it to be the key the
request asks a certificate for); a plaintext (NULL) client is refused by the
CURVE mechanism itself.  Nothing on this port is ever plaintext.

The same endpoint answers :class:`~p2pswarm.security.messages.KeyRequest`: a
restarted member that knows only ``--peers`` learns a peer's certificate (and so
its CURVE key) there and verifies it against its own bundle.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from typing import Any, Callable

import zmq
import zmq.asyncio

from p2pswarm import wire
from p2pswarm.ratelimit import BucketsByKey, TokenBucket
from p2pswarm.security import messages as _messages  # noqa: F401  (registers the join kinds)
from p2pswarm.security.errors import JoinError
from p2pswarm.security.join import SPONSOR_ENTROPY, Sponsor
from p2pswarm.security.keys import CurveKeys, join_endpoint_keys
from p2pswarm.transport.base import TransportError
from p2pswarm.transport.ports import JOIN_PORT_OFFSET
from p2pswarm.transport.zmq import ZapHandler, _reason, format_addr, frame_key, parse_addr, secure_client, secure_server

log = logging.getLogger("p2pswarm.security")

MAX_JOIN_MESSAGE = 64 * 1024
"""Join messages are a few kB (a grant carries up to 10 certificates of < 4 kB, usually ~0.5 kB)."""
JOIN_TIMEOUT = 5.0
"""Seconds a joiner waits for the sponsor's answer."""
RCV_HWM = 64
JOIN_RATE = 50.0
"""Join-endpoint requests per second answered at most (a token bucket of JOIN_BURST): a flood of
requests, each a signature check and maybe a certificate to sign, cannot eat the node's CPU.
Requests over the rate are dropped and counted (``rate_limited``); a joiner retries."""
JOIN_BURST = 100.0
SOURCE_RATE = 10.0
"""Requests per second answered at most from one source address (a bucket of SOURCE_BURST),
checked before the endpoint's own bucket: a flood from one machine spends at most half the
endpoint's burst and a fifth of its rate, so joiners from elsewhere still get in at once (a
burst of 50 still lets a lab of 50 nodes on one host join one seed together)."""
SOURCE_BURST = 50.0
MAX_SOURCES = 4096
"""Source addresses whose buckets are remembered (the least recently seen is forgotten first)."""


def join_addr(swim_addr: str) -> str | None:
    """The join endpoint of the node whose gossip address is ``swim_addr`` (None if malformed)."""
    parsed = parse_addr(swim_addr)
    if parsed is None or parsed[1] + JOIN_PORT_OFFSET > 65535:
        return None
    return format_addr(parsed[0], parsed[1] + JOIN_PORT_OFFSET)


Handler = Callable[[bytes, bytes], "bytes | None"]


def sponsor_handler(sponsor: Sponsor, clock: Callable[[], float] = time.time,
                    entropy: Callable[[int], bytes] = secrets.token_bytes,
                    counters: Counter | None = None) -> Handler:
    """decode -> :meth:`Sponsor.handle` -> encode; undecodable requests are counted and get no answer."""
    counts = counters if counters is not None else sponsor.counters

    def handle(data: bytes, key: bytes) -> bytes | None:
        try:
            msg = wire.decode(data)
        except wire.WireError as exc:
            counts["join_wire_errors"] += 1
            log.debug("dropped a bad join message: %s", exc)
            return None
        return wire.encode(sponsor.handle(msg, key, clock(), entropy(SPONSOR_ENTROPY)))
    return handle


class JoinServer:
    """Serves the join endpoint; ``handler(request bytes, client CURVE key)`` returns the reply (or None)."""

    def __init__(self, bind: str, handler: Handler) -> None:
        self._bind, self._handler = bind, handler
        self._keys = join_endpoint_keys()
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._zap: ZapHandler | None = None
        self._task: asyncio.Task | None = None
        self.addr = bind
        self.counters: Counter[str] = Counter()
        self._bucket = TokenBucket(JOIN_RATE, JOIN_BURST, time.monotonic())
        self._sources = BucketsByKey(SOURCE_RATE, SOURCE_BURST, MAX_SOURCES)

    async def start(self) -> None:
        parsed = parse_addr(self._bind, allow_port_zero=True)
        if parsed is None:
            raise TransportError(f"cannot bind the join endpoint {self._bind!r}: expected host:port")
        ctx = zmq.asyncio.Context()
        zap = ZapHandler(ctx, lambda key: True, self._on_zap)
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_JOIN_MESSAGE)
        sock.setsockopt(zmq.RCVHWM, RCV_HWM)
        sock.setsockopt(zmq.SNDHWM, RCV_HWM)
        secure_server(sock, self._keys)
        host, port = parsed
        try:
            sock.bind(f"tcp://{f'[{host}]' if ':' in host else host}:{port or '*'}")
        except zmq.ZMQError as err:
            sock.close(linger=0)
            await zap.close()
            ctx.term()
            raise TransportError(f"cannot bind the join endpoint {self._bind}: {_reason(err)}") from None
        self._ctx, self._sock, self._zap = ctx, sock, zap
        real_port = int(sock.getsockopt(zmq.LAST_ENDPOINT).decode().rpartition(":")[2])
        self.addr = format_addr(host, real_port)
        self._task = asyncio.ensure_future(self._serve())

    def _on_zap(self, admitted: bool) -> None:
        self.counters["connections" if admitted else "refused_connections"] += 1

    async def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                frames = await self._sock.recv_multipart(copy=False)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError:
                return
            if len(frames) != 2:
                self.counters["dropped"] += 1
                continue
            key = frame_key(frames[1])
            if key is None:
                self.counters["dropped"] += 1
                continue
            self.counters["requests"] += 1
            now = time.monotonic()
            if not self._sources.take(_source(frames[1]), now):
                self.counters["source_rate_limited"] += 1
                continue
            if not self._bucket.take(now):
                self.counters["rate_limited"] += 1
                continue
            try:
                reply = self._handler(frames[1].bytes, key)
            except Exception:
                self.counters["handler_errors"] += 1
                log.error("join handler failed (counted)", exc_info=True)
                continue
            if reply is not None:
                try:
                    await self._sock.send_multipart([frames[0].bytes, reply], flags=zmq.NOBLOCK)
                    self.counters["replies"] += 1
                except zmq.ZMQError:
                    self.counters["reply_dropped"] += 1

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._zap is not None:
            await self._zap.close()
            self._zap = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None


def _source(frame: zmq.Frame) -> str:
    """The IP address a request came from ("" where ZeroMQ cannot tell: such requests share one bucket)."""
    try:
        return frame.get("Peer-Address") or ""
    except zmq.ZMQError:
        return ""


_client_ctx: zmq.asyncio.Context | None = None


def _client_context() -> zmq.asyncio.Context:
    """The context of every join request this process sends. One per request cost an I/O thread started and
    joined (``term``) on the event loop each time, and a joiner introduces itself to every member: at 100
    members, seconds in which the loop answered no probe."""
    global _client_ctx
    if _client_ctx is None or _client_ctx.closed:
        _client_ctx = zmq.asyncio.Context()
    return _client_ctx


async def exchange(addr: str, keys: CurveKeys, request: Any,
                   timeout: float = JOIN_TIMEOUT, source: str | None = None) -> Any:
    """Send one join message to the join endpoint at ``addr`` and return the decoded answer.

    ``source`` picks the local IP address to connect from (a multi-homed host; the tests'
    second loopback address).  JoinError ``no_answer`` (one line) on timeout; ``bad_reply``
    for an undecodable answer.
    """
    parsed = parse_addr(addr)
    if parsed is None:
        raise JoinError(f"cannot join via {addr!r}: expected host:port, e.g. 10.0.0.5:7947", "bad_request")
    sock = _client_context().socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_JOIN_MESSAGE)
        secure_client(sock, keys, join_endpoint_keys().public)
        origin = f"{format_addr(source, 0)};" if source else ""
        sock.connect(f"tcp://{origin}{format_addr(*parsed)}")
        await sock.send(wire.encode(request))
        try:
            data = await asyncio.wait_for(sock.recv(), timeout)
        except asyncio.TimeoutError:
            raise JoinError(f"no answer from the join endpoint {addr} within {timeout:g} s: is a member of the "
                            f"token's cluster listening there (the gossip port + {JOIN_PORT_OFFSET})?",
                            "no_answer") from None
        try:
            return wire.decode(data)
        except wire.WireError as exc:
            raise JoinError(f"the join endpoint {addr} sent an unreadable answer ({exc}); "
                            f"run the same p2pswarm version as the cluster", "bad_reply") from None
    finally:
        sock.close(linger=0)
