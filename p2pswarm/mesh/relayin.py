"""The data plane's relay listeners: connections other nodes' data planes open to reach a backend here
(or onward), speaking the RELAY protocol (:mod:`p2pswarm.mesh.relayproto`).

The plaintext listener admits only other members' hosts (:class:`PlainRelayIn`); the TLS listener
admits only current members' certificates (:class:`TlsRelaySession`, each stream a :class:`RelayIn`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from p2pswarm.mesh import proxyproto, relayproto
from p2pswarm.mesh.conn import Conn, Far, RelayError
from p2pswarm.mesh.tablecheck import canonical_host
from p2pswarm.mesh.tlsctx import peer_of
from p2pswarm.mesh.tlsmux import SERVER_IDLE_TIMEOUT, Session

if TYPE_CHECKING:
    from p2pswarm.mesh.proxy import Mesh


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
            parsed = relayproto.parse_header(self.hdr)
        except (ValueError, proxyproto.ProxyProtocolError):
            self.c.errors += 1
            self.abort()
            return
        if parsed is None:
            if len(self.hdr) > relayproto.MAX_RELAY_HEADER:
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
            self.ct.write(bytes((relayproto.RELAY_REFUSED,)) + b"target not allowed")
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
                    far = await far.through_relay(onward, target, pp, True)
                    pp = None  # the next relay delivers it
                else:
                    await mesh.loop.create_connection(lambda: far, target[0], target[1])
        except (OSError, TimeoutError, RelayError, ConnectionError):
            self.c.connect_failed += 1
            far.discard()
            if not self.done:
                self.ct.write(bytes((relayproto.RELAY_FAILED,)))
                self.close()
            return
        if self.done:
            far.discard()
            return
        self.c.relayed_in += 1
        self.ct.write(bytes((relayproto.RELAY_OK,)))
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
