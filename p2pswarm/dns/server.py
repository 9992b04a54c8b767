"""The DNS listeners: UDP and TCP on the node's address, on the node's event loop (asyncio).

Each query is answered by the pure :class:`~p2pswarm.dns.core.Responder`; this module only moves
bytes and keeps the network's load within bounds, so that a flood of queries cannot starve the
node's loop (SWIM acks share it):

* a token bucket per client address and one for all of them: a query over either is dropped
  and counted (``rate_limited``); a legitimate resolver retries;
* a UDP query is at most ``MAX_QUERY`` bytes; a TCP message's 2-byte length is checked against
  it before anything is read, and the connection is closed (``oversized``);
* answers that are not in the responder's cache (made afresh: ~100 times the cost of a cached one)
  at most ``MISS_RATE`` per second: a flood of ever new questions is dropped (``dropped_busy``);
* at most ``MAX_TCP_CLIENTS`` TCP connections at once, each closed after ``IDLE`` seconds without
  a query or when a message does not arrive whole within ``READ_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import struct
import time
from collections import Counter
from typing import Any, Callable

from p2pswarm.dns.core import Responder
from p2pswarm.ratelimit import BucketsByKey, TokenBucket

log = logging.getLogger("p2pswarm.dns")

PICK_ATTEMPTS = 8
"""Ports tried when the kernel picks one (``port`` 0) and its TCP side is taken."""
MAX_QUERY = 4096
"""Bytes of one query at most (a real one is under 300); longer ones are dropped."""
MAX_TCP_CLIENTS = 64
IDLE = 10.0
"""Seconds a TCP connection may wait between queries."""
READ_TIMEOUT = 2.0
"""Seconds one TCP message may take to arrive once its length came."""
RATE, BURST = 20000.0, 4000.0
"""Queries per second (and at once) the node answers from all clients together."""
CLIENT_RATE, CLIENT_BURST = 10000.0, 2000.0
"""... and from one client address."""
MISS_RATE, MISS_BURST = 500.0, 200.0
"""Answers made afresh per second (and at once), for all clients: at most a fraction of the loop's time."""
MAX_CLIENTS = 4096
"""Client addresses whose buckets are kept (the least recently seen is forgotten first)."""


class DnsServer:
    def __init__(self, responder: Responder, host: str, port: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.responder, self.host, self.port, self.clock = responder, host, port, clock
        self.counters: Counter[str] = Counter()
        self._all = TokenBucket(RATE, BURST, clock())
        self._clients = BucketsByKey(CLIENT_RATE, CLIENT_BURST, MAX_CLIENTS)
        self._misses = TokenBucket(MISS_RATE, MISS_BURST, clock())
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_open = 0
        self._conns: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Bind UDP, then TCP on the same port (the UDP port when ``port`` is 0); raises OSError.

        With ``port`` 0 the UDP port the kernel picks may be taken for TCP (another socket's ephemeral port
        on that address): then both are given up and another port tried, up to ``PICK_ATTEMPTS`` times."""
        wanted = self.port
        for attempt in range(1, PICK_ATTEMPTS + 1):
            try:
                await self._bind(wanted)
                return
            except OSError as e:
                if wanted != 0 or e.errno != errno.EADDRINUSE or attempt == PICK_ATTEMPTS:
                    raise

    async def _bind(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, port))
        self._udp = transport
        self.port = transport.get_extra_info("sockname")[1]
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port, reuse_address=True)
        except OSError:
            transport.close()
            self._udp = None
            raise

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    def admit(self, client: Any) -> bool:
        now = self.clock()
        if not (self._clients.take(client, now) and self._all.take(now)):
            self.counters["rate_limited"] += 1
            return False
        return True

    def answer(self, data: bytes, tcp: bool) -> bytes | None:
        try:
            return self.responder.respond(data, tcp, self._miss_allowed)
        except Exception:  # a bug of ours, never the client's to pay for with the node
            self.counters["errors"] += 1
            log.error("answering a DNS query failed (counted, dropped)", exc_info=True)
            return None

    def _miss_allowed(self) -> bool:
        return self._misses.take(self.clock())

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_open >= MAX_TCP_CLIENTS:
            self.counters["tcp_refused"] += 1
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        self._tcp_open += 1
        self.counters["tcp_connections"] += 1
        client = writer.get_extra_info("peername", ("?", 0))[0]
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), IDLE)
                (length,) = struct.unpack("!H", head)
                if length > MAX_QUERY:
                    self.counters["oversized"] += 1
                    return
                data = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
                if not self.admit(client):
                    continue
                wire = self.answer(data, tcp=True)
                if wire is not None:
                    writer.write(struct.pack("!H", len(wire)) + wire)
                    await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass  # the client went away or stalled: its connection ends, nothing else does
        finally:
            self._tcp_open -= 1
            if task is not None:
                self._conns.discard(task)
            writer.close()

    def stats(self) -> dict[str, int]:
        return {**self.responder.counters, **self.counters, "tcp_open": self._tcp_open}


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        server = self.server
        if len(data) > MAX_QUERY:
            server.counters["oversized"] += 1
            return
        if not server.admit(addr[0]):
            return
        wire = server.answer(data, tcp=False)
        if wire is not None and self.transport is not None:
            self.transport.sendto(wire, addr)

    def error_received(self, exc: Exception) -> None:
        self.server.counters["udp_errors"] += 1
