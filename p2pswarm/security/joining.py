"""Both sides of joining, over the join endpoint (gossip port + 1): the sponsor and the joiner.

**Who sponsors.**  Every member whose Raft replica holds the security record and who
has the cluster key (that is every member, once it has applied the record) unseals
the CA key and serves joins on its join endpoint.  A joiner can thus use any member as
``--peers``; no request is forwarded to the leader.  A sponsor admits the new certificate
at once and records it in the Raft state (``cert`` command).  Joins are answered ``busy``
while a rekey after ``node rm`` is not applied (the old token may be in the removed node's hands).

**Introductions.**  A member admits a newcomer's key once gossip brings it the
newcomer's certificate; until then it refuses the newcomer's connections (and a
refused ZeroMQ socket silently queues what is sent to it).  So for a while after it
joined (or restarted), a node *introduces* itself to each member it sees: it sends its
certificate (a KeyReply, kind 68) to that member's join endpoint; the member admits it
if the CA signed it for exactly the CURVE key of that connection (which the CURVE
handshake proved the newcomer holds) and answers with its own.  This is what gossip
would deliver a moment later, not a new trust path.

The decisions are the pure :mod:`.join`'s; these classes are the I/O around them, parts of
:class:`~p2pswarm.security.host.SecurityHost` (``host``), whose state they read and update.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any, Callable

from p2pswarm import wire
from p2pswarm.security.errors import CertificateError, JoinError, SecurityError
from p2pswarm.security.join import PROTOCOL_MAX, PROTOCOL_MIN, SPONSOR_ENTROPY, Joiner, JoinResult, verify_key_reply
from p2pswarm.security.joinchannel import JOIN_PORT_OFFSET, JoinServer, exchange, join_addr
from p2pswarm.security.keys import CurveKeys
from p2pswarm.security.messages import JOIN_MESSAGES, JoinGrant, JoinRefused, JoinRequest, KeyReply, KeyRequest
from p2pswarm.security.pki import cert_digest, fingerprint, read_node_certificate
from p2pswarm.transport.base import TransportError
from p2pswarm.transport.zmq import format_addr, parse_addr

if TYPE_CHECKING:
    from p2pswarm.security.host import SecurityHost

log = logging.getLogger("p2pswarm.security")

ATTEMPT_TIMEOUT = 3.0
"""Seconds a joiner waits for one join endpoint's answer per attempt."""
KEY_REQUEST_TIMEOUT = 2.0
"""Seconds a restarted node waits for a seed's certificate (KeyRequest)."""
JOIN_RETRY_INITIAL = 0.5
JOIN_RETRY_MAX = 8.0
"""Backoff between join rounds while no join endpoint answers (the node keeps trying, like SWIM's join)."""
RETRYABLE = frozenset({"unavailable", "busy", "replay", "no_answer", "bad_reply"})
"""Join outcomes worth another try (elsewhere or later); every other refusal stops the node with one line."""
MAX_GRANTED = 1024
"""Certificates a sponsor remembers having granted until the Raft state records them."""


class JoinFailed(SecurityError):
    """The join was refused for good (wrong token, other cluster, clock, revoked...): one line, the node stops."""

    code = "join"


def refusal(nonce: bytes, code: str, now: float) -> JoinRefused:
    return JoinRefused(nonce, code, PROTOCOL_MIN, PROTOCOL_MAX, max(0, int(now * 1000)))


class JoinEndpoint:
    """The member's side: serves joins (as a sponsor), key requests and introductions."""

    def __init__(self, host: SecurityHost) -> None:
        self.host = host
        self.granted: dict[str, bytes] = {}
        """node -> the certificate this node granted it, admitted before the Raft state records it."""

    async def start(self, bind: str, swim_addr: str) -> None:
        """Serve on the gossip port + 1 of ``bind`` (its port, or the one the transport got for port 0;
        peers use the advertised port + 1, which NAT must map here)."""
        local = parse_addr(bind, allow_port_zero=True)
        real = parse_addr(swim_addr)
        if local is None or real is None:
            raise TransportError(f"cannot place the join endpoint next to {swim_addr!r}")
        addr = format_addr(local[0], (local[1] or real[1]) + JOIN_PORT_OFFSET)
        server = JoinServer(addr, self.handle)
        try:
            await server.start()
        except TransportError as exc:
            raise TransportError(f"{exc} (the join endpoint is the gossip port + {JOIN_PORT_OFFSET}: pick a --bind "
                                 f"port whose next port is free)") from None
        self.host.join_server = server

    def handle(self, data: bytes, key: bytes) -> bytes | None:
        host = self.host
        try:
            msg = wire.decode(data)
        except wire.WireError:
            host.counters["join_wire_errors"] += 1
            return None
        now = host.wall()
        if isinstance(msg, KeyReply):
            return wire.encode(self.introduction(msg, key, now))
        sponsor = host.sponsor
        if sponsor is None:
            if isinstance(msg, KeyRequest) and host.bundle is not None and host.cert:
                if msg.ca_digest not in host.bundle.digests:
                    return wire.encode(refusal(msg.nonce, "other_cluster", now))
                return wire.encode(KeyReply(msg.nonce, host.cert, (*host.bundle.roots, *host.bundle.cross)))
            nonce = getattr(msg, "nonce", bytes(16))
            return wire.encode(refusal(nonce if isinstance(nonce, bytes) and len(nonce) == 16 else bytes(16),
                                       "unavailable", now))
        if isinstance(msg, JoinRequest) and host.rekey_pending:
            host.counters["join_busy_rekey"] += 1  # the old token may be in a removed node's hands
            return wire.encode(refusal(msg.nonce, "busy", now))
        reply = sponsor.handle(msg, key, now, host.entropy(SPONSOR_ENTROPY))
        if isinstance(reply, JoinGrant) and isinstance(msg, JoinRequest):
            log.info("granted a certificate to node %s (%s)", msg.name, msg.node_id)
            if len(self.granted) >= MAX_GRANTED:
                self.granted.clear()
            self.granted[msg.node_id] = reply.node_cert
            host.try_admit(msg.node_id, reply.node_cert, host.chain, None, now)
            host.duties.want_cert_recorded(msg.node_id, reply.node_cert)
        elif isinstance(reply, JoinRefused) and isinstance(msg, JoinRequest):
            log.warning("refused a join by node %s (%s): %s", msg.name, msg.node_id, reply.code)
        return wire.encode(reply)

    def introduction(self, msg: KeyReply, key: bytes, now: float) -> Any:
        """A member introduces itself: admit its certificate if it is for the key of this connection."""
        host = self.host
        if host.admission is None or host.bundle is None:
            return refusal(msg.nonce, "unavailable", now)
        try:
            ident = host.bundle.verify(msg.node_cert, now, revocations=host.revocations, chain=msg.chain,
                                       expected_key=key)
        except CertificateError as exc:
            host.counters[f"introduction_refused_{exc.code}"] += 1
            code = {"revoked": "revoked", "wrong_ca": "other_cluster", "wrong_cluster": "other_cluster",
                    "key_mismatch": "key_mismatch"}.get(exc.code, "bad_request")
            return refusal(msg.nonce, code, now)
        host.try_admit(ident.node_id, msg.node_cert, msg.chain, None, now)
        host.counters["introductions"] += 1
        return KeyReply(msg.nonce, host.cert, host.chain)


class JoinClient:
    """This node asking others: the join handshake, key requests to seeds, introductions."""

    def __init__(self, host: SecurityHost) -> None:
        self.host = host

    async def join(self, peers: tuple[str, ...], on_attempt: Callable[[int, str], None] | None = None) -> str:
        """The handshake with the first member that answers; retried with backoff while none does.

        Returns the peer that sponsored us.  Raises :class:`JoinFailed` (one line) when a member
        refuses for good (wrong, rotated, expired or other cluster's token, clock, revoked...).
        """
        host = self.host
        assert host.keys is not None and host.token is not None
        host.state = "joining"
        delay = JOIN_RETRY_INITIAL
        while True:
            host.join_attempts += 1
            for peer in peers:
                result = await self.join_once(peer)
                if result is not None:
                    self.adopt_grant(result, peer)
                    host.last_error = None
                    return peer
            if on_attempt is not None:
                on_attempt(host.join_attempts, host.last_error or "no answer")
            await asyncio.sleep(delay)
            delay = min(delay * 2, JOIN_RETRY_MAX)

    async def join_once(self, peer: str) -> JoinResult | None:
        host = self.host
        addr = join_addr(peer)
        if addr is None:
            raise JoinFailed(f"cannot join via {peer!r}: no join endpoint next to it (expected host:port)")
        keys = host.keys
        assert keys is not None and host.token is not None
        joiner = Joiner(host.token, host.node_id, host.name, keys)
        try:
            reply = await exchange(addr, keys, joiner.request(host.wall(), host.entropy(16)), timeout=ATTEMPT_TIMEOUT)
            return joiner.handle(reply, host.wall())
        except JoinError as exc:
            host.counters[f"join_{exc.code}"] += 1
            if exc.code == "no_answer":
                host.last_error = (f"no answer from the join endpoint {addr} (the gossip port + {JOIN_PORT_OFFSET}) "
                                   f"within {ATTEMPT_TIMEOUT:g} s; is a member of the token's cluster running at "
                                   f"{peer}? (a plaintext cluster, started with --insecure, has none: join it with "
                                   f"--insecure)")
            else:
                host.last_error = f"{peer}: {exc}"
            if exc.code in RETRYABLE:
                return None
            raise JoinFailed(f"cannot join via {peer}: {exc}", exc.code) from None

    def adopt_grant(self, result: JoinResult, peer: str) -> None:
        host = self.host
        if result.cluster_key is None:
            raise JoinFailed(f"the sponsor at {peer} did not share the cluster key; run the same p2pswarm version "
                             f"as the cluster", "bad_grant")
        host.cluster_id, host.bundle, host.cert = result.cluster_id, result.bundle, result.cert
        host.chain, host.identity = result.chain, result.identity
        host.peers_cache[result.sponsor.node_id] = (result.sponsor_cert, result.chain, (peer,))
        host.set_cluster_key(result.cluster_key)
        host.save()
        host.activate()
        assert host.admission is not None
        host.admission.bind_addr(peer, result.sponsor.node_id)
        log.info("joined secure cluster %s: certificate from %s (%s), CA %s", result.cluster_id,
                 result.sponsor.name, result.sponsor.node_id, fingerprint(host.bundle.current)[:23])

    async def learn_keys(self, peers: tuple[str, ...]) -> list[str]:
        """Ask seeds whose key we do not know for their certificate (a restart with --peers,
        or seeds this node never talked to).  Returns the seeds that answered from another
        cluster (their CA is not ours)."""
        host = self.host
        assert host.admission is not None and host.bundle is not None and host.keys is not None
        unknown = [p for p in peers if join_addr(p) is not None and host.admission.peer_key(p) is None]
        answers = await asyncio.gather(*(self.key_request(p) for p in unknown))
        return [peer for peer, answer in zip(unknown, answers) if answer == "other_cluster"]

    async def key_request(self, peer: str) -> str:
        """Ask ``peer``'s join endpoint for its certificate and admit it; the outcome (``ok`` or a code)."""
        host = self.host
        assert host.bundle is not None and host.keys is not None
        nonce = host.entropy(16)
        try:
            reply = await exchange(join_addr(peer), host.keys,  # type: ignore[arg-type]
                                   KeyRequest(cert_digest(host.bundle.current), nonce), timeout=KEY_REQUEST_TIMEOUT)
            ident = verify_key_reply(reply, nonce, host.bundle, host.wall(), revocations=host.revocations)
        except JoinError as exc:
            host.counters[f"key_request_{exc.code}"] += 1
            return exc.code
        host.try_admit(ident.node_id, reply.node_cert, reply.chain, peer, host.wall())
        return "ok"

    async def introduce(self, node: str | None, addr: str) -> bool:
        """Tell ``node`` (at gossip address ``addr``; None: whoever is there, e.g. a seed) our certificate;
        admit the one it answers with."""
        host = self.host
        jaddr = join_addr(addr)
        if jaddr is None or host.keys is None or not host.cert:
            return False
        nonce = host.entropy(16)
        try:
            reply = await exchange(jaddr, host.keys, KeyReply(nonce, host.cert, host.chain),
                                   timeout=KEY_REQUEST_TIMEOUT)
        except JoinError as exc:
            host.counters[f"introduce_{exc.code}"] += 1
            return False
        if not isinstance(reply, KeyReply) or reply.nonce != nonce:
            host.counters["introduce_refused"] += 1
            return False
        if node is None:
            try:
                node = read_node_certificate(reply.node_cert).node_id
            except CertificateError:
                host.counters["introduce_refused"] += 1
                return False
        host.try_admit(node, reply.node_cert, reply.chain, addr, host.wall())
        host.counters["introduced"] += 1
        return True


def is_join_message(msg: Any) -> bool:
    """Kinds 64-68 belong to the join endpoint only; the node's gossip socket drops them."""
    return isinstance(msg, JOIN_MESSAGES)


async def probe_secure(peers: tuple[str, ...], timeout: float = KEY_REQUEST_TIMEOUT) -> str | None:
    """The first peer whose join endpoint answers (so its cluster is secure), or None.

    Used by an ``--insecure`` node to refuse, with one line, joining a secure cluster
    (whose CURVE socket would silently ignore its plaintext).
    """
    keys = CurveKeys.from_secret(secrets.token_bytes(32))
    for peer in peers:
        addr = join_addr(peer)
        if addr is None:
            continue
        try:
            await exchange(addr, keys, KeyRequest(bytes(32), secrets.token_bytes(16)), timeout=timeout)
        except JoinError:
            continue
        return peer
    return None
