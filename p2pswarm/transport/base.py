"""The Transport protocol: how a node moves opaque messages to peer addresses.

Addresses are ``"host:port"`` strings. A transport never blocks its caller on a
slow or dead peer: ``send`` queues (bounded) or drops, and says which. Small
protocol messages (probes) and bulk transfers (full-state push/pull, Raft
snapshots) travel on separate connections so that a probe never waits behind a
large transfer; that is what the ``bulk`` flag selects.
"""

from __future__ import annotations

from typing import Protocol


class TransportError(Exception):
    """The transport cannot start or run (e.g. the address is in use)."""


class Transport(Protocol):
    @property
    def local_addr(self) -> str:
        """The address peers use to reach this node."""

    async def start(self) -> None:
        """Bind and begin receiving; raises TransportError with a one-line reason."""

    def send(self, addr: str, data: bytes, bulk: bool = False) -> bool:
        """Queue ``data`` for ``addr`` without blocking; False when it was dropped."""

    async def recv(self) -> bytes:
        """Wait for the next incoming message."""

    async def recv_with_key(self) -> tuple[bytes, bytes | None]:
        """The next message and the CURVE key it came from (None without CURVE): what the node's loop reads,
        so that it can bind a message to its sender's certificate."""

    def recv_ready(self, limit: int) -> list[tuple[bytes, bytes | None]]:
        """Up to ``limit`` messages (and keys) that have arrived already, without waiting; only while no receive
        is pending. The node reads them before its timers run, so that a late loop does not judge a probe
        whose ack is waiting to be read."""

    def drop_refused(self) -> int:
        """Close the channels whose CURVE handshake a peer refused, so that the next send reconnects; how many
        (always 0 without CURVE)."""

    @property
    def curve_public(self) -> bytes | None:
        """This transport's CURVE public key (None without CURVE)."""

    def stats(self) -> dict[str, int]:
        """Counters: sent, send_dropped, received, and implementation specifics."""

    async def close(self) -> None:
        """Stop receiving and drop anything still queued (linger 0)."""
