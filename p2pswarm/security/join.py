"""The join handshake, both sides, as plain objects (pure: ``now`` and entropy are passed in).

::

    joiner                                            sponsor (any member)
      JoinRequest(versions, ca_digest, node_id, name,
                  curve_public, timestamp, nonce,
                  proof = HMAC(secret, request))   ──►  version overlap?   ca_digest one of our roots?
                                                         proof by the current secret (else rotated/wrong)?
                                                         token expired?   |timestamp - now| <= JOIN_WINDOW?
                                                         nonce not seen?  CURVE key of the connection = curve_public?
                                                         node id not revoked, not someone else's?
                                                   ◄──  JoinGrant(version, nonce, cluster_id, node cert,
                                                                  CA certs, sponsor cert, sealed cluster key,
                                                                  mac = HMAC(secret, proof + grant))
      nonce ours?  MAC (the sponsor knows the secret)?    or JoinRefused(nonce, code, versions, sponsor clock)
      CA certs contain the root the token pins?
      node cert: pinned CA, our id, name and key, valid now?
      sponsor cert valid?  unseal the cluster key
      ──► JoinResult

The sponsor never raises on peer input: :meth:`Sponsor.handle` returns a grant or
a refusal (and counts it).  The joiner raises only :class:`JoinError`, one line,
``code`` one of :data:`JOIN_CODES`.  Replays are refused twice over: the nonce
cache covers the time window, and the window bounds how long a nonce must be
remembered.  A refusal is not authenticated (anyone on the path could forge one);
it can only make a join fail, never succeed.

Times: ``now`` is wall-clock UNIX seconds (timestamps and certificates are compared
across machines).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from p2pswarm import wire
from p2pswarm.security.errors import CertificateError, JoinError, KeyFileError, TokenError
from p2pswarm.security.keys import CurveKeys
from p2pswarm.security.messages import (
    DIGEST_BYTES,
    MAC_BYTES,
    NONCE_BYTES,
    REFUSAL_CODES,
    JoinGrant,
    JoinRefused,
    JoinRequest,
    KeyReply,
    KeyRequest,
)
from p2pswarm.security.pki import NONCE_BYTES as SEAL_NONCE_BYTES
from p2pswarm.security.pki import SERIAL_ENTROPY, CertAuthority, NodeIdentity, RevocationList, TrustBundle, seal, unseal
from p2pswarm.security.tokens import JoinToken, TokenState

PROTOCOL_MIN = 1
PROTOCOL_MAX = 1
"""Join protocol versions this code speaks; a request whose range does not overlap is refused."""
JOIN_WINDOW = 120.0
"""Seconds a request's timestamp may differ from the sponsor's clock (clock skew plus transit)."""
MAX_SEEN = 4096
"""Nonces remembered per sponsor (each for 2 x JOIN_WINDOW at most); when full, new joins wait (busy)."""
SPONSOR_ENTROPY = SERIAL_ENTROPY + SEAL_NONCE_BYTES
"""Bytes of fresh entropy :meth:`Sponsor.handle` needs per request."""

JOIN_CODES = REFUSAL_CODES + ("ca_mismatch", "bad_grant", "bad_reply", "no_answer")
"""Every ``JoinError.code``: the sponsor's refusals, then the joiner's own findings
(``no_answer`` is the driver's, for a timeout)."""

_ZERO = bytes(MAC_BYTES)
_REQ_CONTEXT = b"p2pswarm-join-request-v1|"
_GRANT_CONTEXT = b"p2pswarm-join-grant-v1|"
_SEAL_CONTEXT = b"p2pswarm-join-seal-v1|"
_GET_TOKEN = "get the current token with `p2pswarm cluster join-token` on a member"


def request_proof(secret: bytes, req: JoinRequest) -> bytes:
    """HMAC-SHA256 under the token secret over the request with its proof zeroed."""
    return hmac.new(secret, _REQ_CONTEXT + wire.encode(dataclasses.replace(req, proof=_ZERO)),
                    hashlib.sha256).digest()


def grant_mac(secret: bytes, proof: bytes, grant: JoinGrant) -> bytes:
    return hmac.new(secret, _GRANT_CONTEXT + proof + wire.encode(dataclasses.replace(grant, mac=_ZERO)),
                    hashlib.sha256).digest()


def _seal_key(secret: bytes, nonce: bytes, node_id: str) -> bytes:
    return hmac.new(secret, _SEAL_CONTEXT + nonce + node_id.encode(), hashlib.sha256).digest()


def _seal_context(cluster_id: str, node_id: str) -> bytes:
    return b"join|" + cluster_id.encode() + b"|" + node_id.encode()


def refusal_message(code: str, *, ours: tuple[int, int] = (PROTOCOL_MIN, PROTOCOL_MAX),
                    theirs: tuple[int, int] | None = None, offset: float | None = None,
                    node_id: str = "") -> str:
    """The one line a joiner shows for a sponsor's refusal ``code``."""
    if code == "version":
        t = f"{theirs[0]}..{theirs[1]}" if theirs else "other versions"
        return (f"protocol version mismatch: the cluster speaks join protocol {t}, this node {ours[0]}..{ours[1]}; "
                f"run the same p2pswarm version as the cluster")
    if code == "clock_skew":
        if offset is None:
            return "this node's clock differs too much from the sponsor's; fix the clock (NTP) and retry"
        return (f"this node's clock is {abs(offset):.0f} s {'ahead of' if offset > 0 else 'behind'} the sponsor's "
                f"(at most {JOIN_WINDOW:.0f} s allowed); fix the clock (NTP) and retry")
    return {
        "other_cluster": "the join token is for another cluster: this peer's CA is not the one the token pins; "
                         "use a token of the cluster you want to join",
        "bad_token": f"the join token's secret is wrong; {_GET_TOKEN}",
        "token_rotated": f"the join token was rotated and no longer admits new nodes; {_GET_TOKEN}",
        "token_expired": "the join token has expired; make a new one with `p2pswarm cluster join-token --rotate`",
        "replay": "the sponsor has seen this join request before (a replay); retry the join",
        "key_mismatch": "the join request did not come from the transport key it asks a certificate for; "
                        "check that nothing rewrites the connection, and retry",
        "revoked": f"node id {node_id} was removed from the cluster and cannot rejoin; "
                   f"start with a fresh --data-dir to join as a new node",
        "id_taken": f"node id {node_id} already belongs to another member; start with a fresh --data-dir",
        "unavailable": "the sponsor cannot issue certificates right now (its CA key is locked); "
                       "join through another member or unlock the cluster",
        "busy": "the sponsor is handling too many joins; retry in a minute",
        "bad_request": "the sponsor could not read the join request; run the same p2pswarm version as the cluster",
    }.get(code, f"the join was refused ({code})")


# ------------------------------------------------------------------ the joiner

@dataclass(frozen=True)
class JoinResult:
    """What a successful join leaves the new node with (the driver stores it in the data dir, 0600)."""

    cluster_id: str
    version: int
    identity: NodeIdentity
    cert: bytes
    bundle: TrustBundle
    chain: tuple
    """The cross certificates to present with ``cert`` (for members still trusting only an older root)."""
    sponsor: NodeIdentity
    sponsor_cert: bytes
    cluster_key: bytes | None
    """The 32-byte cluster key (unseals the CA key and token in the Raft state), or None if not shared."""


class Joiner:
    """The new node's side: one request, then ``handle`` the reply."""

    def __init__(self, token: JoinToken, node_id: str, name: str, keys: CurveKeys, *,
                 versions: tuple[int, int] = (PROTOCOL_MIN, PROTOCOL_MAX)) -> None:
        self.token, self.node_id, self.name, self.keys = token, node_id, name, keys
        self.versions = versions
        self.sent: JoinRequest | None = None

    def request(self, now: float, nonce: bytes) -> JoinRequest:
        """The request to send (a fresh ``nonce`` of 16 random bytes each time)."""
        if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
            raise ValueError(f"a join nonce is {NONCE_BYTES} bytes")
        req = JoinRequest(self.versions[0], self.versions[1], self.token.ca_digest, self.node_id, self.name,
                          self.keys.public, max(0, int(now * 1000)), nonce, _ZERO)
        self.sent = dataclasses.replace(req, proof=request_proof(self.token.secret, req))
        return self.sent

    def handle(self, msg: Any, now: float) -> JoinResult:
        """Check the sponsor's reply; JoinError (one line) unless it is a sound grant for our request."""
        req = self.sent
        if req is None:
            raise RuntimeError("Joiner.handle() before request()")
        if isinstance(msg, JoinRefused):
            if not hmac.compare_digest(msg.nonce, req.nonce):
                raise JoinError("the peer answered another join request; retry the join", "bad_reply")
            offset = now - msg.now_ms / 1000 if msg.code == "clock_skew" else None
            raise JoinError(refusal_message(msg.code, ours=self.versions, theirs=(msg.min_version, msg.max_version),
                                            offset=offset, node_id=self.node_id), msg.code)
        if not isinstance(msg, JoinGrant):
            raise JoinError("the peer did not answer with a join grant; is it a p2pswarm node of the same version?",
                            "bad_reply")
        if not hmac.compare_digest(msg.nonce, req.nonce):
            raise JoinError("the peer answered another join request; retry the join", "bad_reply")
        if not hmac.compare_digest(grant_mac(self.token.secret, req.proof, msg), msg.mac):
            raise JoinError("the join grant is not from a holder of the token's secret (bad MAC); "
                            "the peer is not a member of the token's cluster", "bad_grant")
        if not max(self.versions[0], req.min_version) <= msg.version <= self.versions[1]:
            raise JoinError(refusal_message("version", ours=self.versions, theirs=(msg.version, msg.version)),
                            "version")
        try:
            bundle = TrustBundle.pinned(msg.cluster_id, msg.chain, self.token.ca_digest, now)
        except CertificateError as exc:
            raise JoinError(f"refusing the cluster: {exc}", "ca_mismatch") from None
        try:
            identity = bundle.verify(msg.node_cert, now, chain=msg.chain, expected_key=self.keys.public,
                                     expected_node=self.node_id)
            sponsor = bundle.verify(msg.sponsor_cert, now, chain=msg.chain, expected_node=msg.sponsor_id)
        except CertificateError as exc:
            code = "clock_skew" if exc.code == "not_yet_valid" else "bad_grant"
            raise JoinError(f"the join grant's certificate is not acceptable: {exc}", code) from None
        if identity.name != self.name:
            raise JoinError("the join grant's certificate names this node differently; retry the join", "bad_grant")
        cluster_key = None
        if msg.sealed_key:
            try:
                cluster_key = unseal(_seal_key(self.token.secret, req.nonce, self.node_id), msg.sealed_key,
                                     _seal_context(msg.cluster_id, self.node_id), "the cluster key")
            except KeyFileError as exc:
                raise JoinError(f"the join grant is damaged: {exc}", "bad_grant") from None
            if len(cluster_key) != 32:
                raise JoinError("the join grant's cluster key has the wrong size", "bad_grant")
        chain = tuple(c for c in bundle.cross)
        return JoinResult(msg.cluster_id, msg.version, identity, msg.node_cert, bundle, chain, sponsor,
                          msg.sponsor_cert, cluster_key)


def verify_key_reply(reply: Any, nonce: bytes, bundle: TrustBundle, now: float, *,
                     revocations: RevocationList | None = None, expected_node: str | None = None) -> NodeIdentity:
    """A KeyReply checked against our own bundle: the peer's verified identity (and so its CURVE key)."""
    if isinstance(reply, JoinRefused):
        raise JoinError(refusal_message(reply.code), reply.code)
    if not isinstance(reply, KeyReply) or not hmac.compare_digest(reply.nonce, nonce):
        raise JoinError("the peer did not answer the key request", "bad_reply")
    try:
        return bundle.verify(reply.node_cert, now, revocations=revocations, chain=reply.chain,
                             expected_node=expected_node)
    except CertificateError as exc:
        raise JoinError(f"the peer's certificate is not acceptable: {exc}", "bad_grant") from None


# ------------------------------------------------------------------ the sponsor

class Sponsor:
    """A member's side of the handshake.  The driver keeps its fields current from the applied Raft state:

    ``bundle``, ``tokens``, ``revocations``, ``ca`` (None while the CA key is locked:
    joins are refused as ``unavailable``), ``cert``/``chain`` (this node's own), and
    ``known_key(node_id)`` (the key a node id already holds a certificate for).
    """

    def __init__(self, node_id: str, cert: bytes, *, bundle: TrustBundle, tokens: TokenState,
                 revocations: RevocationList, ca: CertAuthority | None, cluster_key: bytes | None,
                 known_key: Callable[[str], bytes | None] = lambda node_id: None,
                 versions: tuple[int, int] = (PROTOCOL_MIN, PROTOCOL_MAX)) -> None:
        self.node_id, self.cert = node_id, cert
        self.bundle, self.tokens, self.revocations, self.ca = bundle, tokens, revocations, ca
        self.cluster_key = cluster_key
        self.known_key = known_key
        self.versions = versions
        self.counters: Counter[str] = Counter()
        self._seen: dict[bytes, float] = {}
        self._next_prune = 0.0

    @property
    def chain(self) -> tuple:
        return (*self.bundle.roots, *self.bundle.cross)

    def handle(self, msg: Any, peer_key: bytes | None, now: float, entropy: bytes) -> Any:
        """The reply to a decoded request.  Never raises on peer input.

        ``peer_key``: the CURVE public key the request arrived from (ZAP's User-Id);
        ``entropy``: :data:`SPONSOR_ENTROPY` fresh random bytes.
        """
        if isinstance(msg, KeyRequest):
            if not any(hmac.compare_digest(msg.ca_digest, d) for d in self.bundle.digests):
                return self._refuse(msg.nonce, "other_cluster", now)
            self.counters["key_replies"] += 1
            return KeyReply(msg.nonce, self.cert, self.chain)
        if not isinstance(msg, JoinRequest):
            nonce = getattr(msg, "nonce", None)
            return self._refuse(nonce if type(nonce) is bytes and len(nonce) == NONCE_BYTES else bytes(NONCE_BYTES),
                                "bad_request", now)
        code = self._check(msg, peer_key, now)
        if code is not None:
            return self._refuse(msg.nonce, code, now)
        try:
            return self._grant(msg, now, entropy)
        except (ValueError, CertificateError):  # e.g. a name our own certificate builder refuses
            return self._refuse(msg.nonce, "bad_request", now)

    def _check(self, req: JoinRequest, peer_key: bytes | None, now: float) -> str | None:
        lo, hi = max(req.min_version, self.versions[0]), min(req.max_version, self.versions[1])
        if lo > hi:
            return "version"
        if len(req.ca_digest) != DIGEST_BYTES or \
                not any(hmac.compare_digest(req.ca_digest, d) for d in self.bundle.digests):
            return "other_cluster"
        try:
            self.tokens.match(lambda secret: hmac.compare_digest(request_proof(secret, req), req.proof), now)
        except TokenError as exc:
            return {"expired": "token_expired", "rotated": "token_rotated"}.get(exc.code, "bad_token")
        if abs(req.timestamp_ms / 1000 - now) > JOIN_WINDOW:
            return "clock_skew"
        self._prune(now)
        if req.nonce in self._seen:
            return "replay"
        if len(self._seen) >= MAX_SEEN:
            return "busy"
        self._seen[req.nonce] = max(now, req.timestamp_ms / 1000) + JOIN_WINDOW
        if peer_key is None or not hmac.compare_digest(peer_key, req.curve_public):
            return "key_mismatch"
        if req.node_id in self.revocations.nodes:
            return "revoked"
        held = self.known_key(req.node_id)
        if held is not None and not hmac.compare_digest(held, req.curve_public):
            return "id_taken"
        if self.ca is None:
            return "unavailable"
        return None

    def _prune(self, now: float) -> None:
        if now < self._next_prune and len(self._seen) < MAX_SEEN:
            return
        self._next_prune = now + JOIN_WINDOW / 4
        self._seen = {n: until for n, until in self._seen.items() if until > now}

    def _grant(self, req: JoinRequest, now: float, entropy: bytes) -> JoinGrant:
        if type(entropy) is not bytes or len(entropy) < SPONSOR_ENTROPY:
            raise RuntimeError(f"Sponsor.handle needs {SPONSOR_ENTROPY} bytes of entropy")  # our bug: raise
        assert self.ca is not None
        cert = self.ca.issue(req.node_id, req.name, req.curve_public, now, entropy[:SERIAL_ENTROPY])
        sealed = b""
        if self.cluster_key is not None:
            seal_nonce = entropy[SERIAL_ENTROPY:SPONSOR_ENTROPY]
            sealed = seal(_seal_key(self._secret_for(req), req.nonce, req.node_id), seal_nonce, self.cluster_key,
                          _seal_context(self.bundle.cluster_id, req.node_id))
        version = min(req.max_version, self.versions[1])
        grant = JoinGrant(version, req.nonce, self.bundle.cluster_id, cert, self.chain, self.node_id, self.cert,
                          sealed, _ZERO)
        grant = dataclasses.replace(grant, mac=grant_mac(self._secret_for(req), req.proof, grant))
        self.counters["granted"] += 1
        return grant

    def _secret_for(self, req: JoinRequest) -> bytes:
        return self.tokens.secret  # _check accepted only the current secret

    def _refuse(self, nonce: bytes, code: str, now: float) -> JoinRefused:
        self.counters[f"refused_{code}"] += 1
        return JoinRefused(nonce, code, self.versions[0], self.versions[1], max(0, int(now * 1000)))
