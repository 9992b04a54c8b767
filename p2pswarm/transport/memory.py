"""An in-process transport: fast, deterministic unit tests of the node driver.

A :class:`MemoryNetwork` is the hub that maps addresses to transports; sending
puts the message straight into the receiver's bounded queue, or drops it when
the queue is full or nobody listens there, as a real network would.  Both
channels share one queue, so order is kept across them too (a stronger
guarantee than the real transport gives: don't rely on it).
"""

from __future__ import annotations

import asyncio

from p2pswarm.transport.base import TransportError
from p2pswarm.transport.zmq import format_addr, parse_addr
from p2pswarm.wire import MAX_MESSAGE_BYTES

_CLOSED = object()
"""Queue sentinel that wakes a pending recv() when the transport closes."""


class MemoryNetwork:
    """The hub: which address is served by which transport, and free ports for port 0."""

    def __init__(self, first_port: int = 40000) -> None:
        self._nodes: dict[str, MemoryTransport] = {}
        self._next_port = first_port

    def _register(self, addr: str, transport: MemoryTransport) -> str:
        parsed = parse_addr(addr, allow_port_zero=True)
        if parsed is None:
            raise TransportError(f"cannot bind {addr!r}: expected host:port, e.g. 127.0.0.1:7946")
        host, port = parsed
        if port == 0:
            while format_addr(host, self._next_port) in self._nodes:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        addr = format_addr(host, port)
        if addr in self._nodes:
            raise TransportError(f"cannot bind {addr}: address already in use")
        self._nodes[addr] = transport
        return addr

    def _unregister(self, addr: str, transport: MemoryTransport) -> None:
        if self._nodes.get(addr) is transport:
            del self._nodes[addr]

    def _lookup(self, addr: str) -> MemoryTransport | None:
        return self._nodes.get(addr)


class MemoryTransport:
    """Transport over a MemoryNetwork; same contract and counters as the real one."""

    def __init__(self, network: MemoryNetwork, addr: str, *, queue_size: int = 1024,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        if queue_size < 1 or max_message_bytes < 1:
            raise ValueError("queue_size and max_message_bytes must be positive")
        self._network = network
        self._addr = addr
        self._max_bytes = max_message_bytes
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=queue_size)
        self._started = False
        self._closed = False
        self._counts = dict.fromkeys(
            ("sent", "send_dropped", "received", "bad_address", "oversized", "recv_dropped"), 0)

    @property
    def local_addr(self) -> str:
        return self._addr

    async def start(self) -> None:
        if self._started or self._closed:
            raise RuntimeError("MemoryTransport.start() called twice or after close()")
        self._addr = self._network._register(self._addr, self)
        self._started = True

    def send(self, addr: str, data: bytes, bulk: bool = False) -> bool:
        if not self._started or self._closed:
            return self._drop()
        if len(data) > self._max_bytes:
            self._counts["oversized"] += 1
            return self._drop()
        peer = self._network._lookup(addr)
        if peer is None:
            if parse_addr(addr) is None:
                self._counts["bad_address"] += 1
            return self._drop()  # nobody listens there: lost, like a dead peer
        if not peer._deliver(bytes(data)):
            return self._drop()
        self._counts["sent"] += 1
        return True

    def _drop(self) -> bool:
        self._counts["send_dropped"] += 1
        return False

    def _deliver(self, data: bytes) -> bool:
        """Called by a sender; False when this receiver cannot take the message."""
        if self._closed or len(data) > self._max_bytes or self._queue.full():
            self._counts["recv_dropped"] += 1
            return False
        self._queue.put_nowait(data)
        return True

    async def recv(self) -> bytes:
        if not self._started:
            raise TransportError("transport is not running")
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # wake any other receiver too
            raise TransportError("transport closed")
        self._counts["received"] += 1
        return item  # type: ignore[return-value]

    async def recv_with_key(self) -> tuple[bytes, bytes | None]:
        """The next message; no CURVE here, so no key."""
        return await self.recv(), None

    def recv_ready(self, limit: int) -> list[tuple[bytes, bytes | None]]:
        """Up to ``limit`` messages already queued, without waiting; no CURVE here, so no keys."""
        out: list[tuple[bytes, bytes | None]] = []
        while self._started and len(out) < limit and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _CLOSED:
                self._queue.put_nowait(_CLOSED)  # the next recv raises
                break
            self._counts["received"] += 1
            out.append((item, None))  # type: ignore[arg-type]
        return out

    def drop_refused(self) -> int:
        """Nothing is ever refused without CURVE."""
        return 0

    @property
    def curve_public(self) -> bytes | None:
        """No CURVE here."""
        return None

    def stats(self) -> dict[str, int]:
        return dict(self._counts)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._network._unregister(self._addr, self)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)
