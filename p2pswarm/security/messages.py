"""Wire messages of the join handshake (kinds: :data:`p2pswarm.wire.KINDS`).

They travel only on the join endpoint (:mod:`.joinchannel`), a request/reply
channel under CURVE; the node's gossip and Raft socket never accepts them.
Byte fields have exact sizes where the protocol fixes them, so a hostile peer
cannot make a sponsor hash or parse anything larger than a certificate.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pswarm.wire import (
    MAX_ID_LEN,
    MAX_NAME_LEN,
    NODE_ID,
    Checker,
    WireError,
    WireStruct,
    blob,
    message,
    one_of,
    refine,
    seq,
    text,
    uint,
)

MAX_CERT_BYTES = 4096
"""As :data:`p2pswarm.security.pki.MAX_CERT_BYTES` (kept here so the codec needs no crypto import)."""
MAX_CHAIN_CERTS = 8
MAX_SEALED_BYTES = 256
NONCE_BYTES = 16
DIGEST_BYTES = 32
KEY_BYTES = 32
MAC_BYTES = 32

REFUSAL_CODES = ("version", "other_cluster", "bad_token", "token_rotated", "token_expired", "clock_skew",
                 "replay", "key_mismatch", "revoked", "id_taken", "unavailable", "busy", "bad_request")


def exact(size: int) -> Checker:
    def check(value: bytes) -> None:
        if len(value) != size:
            raise WireError(f"expected exactly {size} bytes")
    return refine(blob(size), check)


U16 = uint(16)
CERT = blob(MAX_CERT_BYTES)


@message(64)
@dataclass(frozen=True, slots=True)
class JoinRequest(WireStruct):
    """A new node asks for a certificate; ``proof`` = HMAC(token secret, this message with a zero proof)."""

    min_version: int
    max_version: int
    ca_digest: bytes
    node_id: str
    name: str
    curve_public: bytes
    timestamp_ms: int
    nonce: bytes
    proof: bytes
    SCHEMA = (("min_version", U16), ("max_version", U16), ("ca_digest", exact(DIGEST_BYTES)),
              ("node_id", NODE_ID), ("name", text(MAX_NAME_LEN)), ("curve_public", exact(KEY_BYTES)),
              ("timestamp_ms", uint(64)), ("nonce", exact(NONCE_BYTES)), ("proof", exact(MAC_BYTES)))


@message(65)
@dataclass(frozen=True, slots=True)
class JoinGrant(WireStruct):
    """The sponsor's answer: the node's certificate, the CA certificates, and the sealed cluster key.

    ``mac`` = HMAC(token secret, request proof + this message with a zero mac): only a
    holder of the token secret can produce it, and it answers exactly one request.
    """

    version: int
    nonce: bytes
    cluster_id: str
    node_cert: bytes
    chain: tuple
    sponsor_id: str
    sponsor_cert: bytes
    sealed_key: bytes
    mac: bytes
    SCHEMA = (("version", U16), ("nonce", exact(NONCE_BYTES)), ("cluster_id", text(MAX_ID_LEN, 1)),
              ("node_cert", CERT), ("chain", seq(CERT, MAX_CHAIN_CERTS)), ("sponsor_id", NODE_ID),
              ("sponsor_cert", CERT), ("sealed_key", blob(MAX_SEALED_BYTES)), ("mac", exact(MAC_BYTES)))


@message(66)
@dataclass(frozen=True, slots=True)
class JoinRefused(WireStruct):
    """Why not; carries no free text (the joiner words the message), only the sponsor's versions and clock."""

    nonce: bytes
    code: str
    min_version: int
    max_version: int
    now_ms: int
    SCHEMA = (("nonce", exact(NONCE_BYTES)), ("code", one_of(*REFUSAL_CODES)), ("min_version", U16),
              ("max_version", U16), ("now_ms", uint(64)))


@message(67)
@dataclass(frozen=True, slots=True)
class KeyRequest(WireStruct):
    """A member (e.g. restarted with only ``--peers``) asks a node for its certificate, to learn its CURVE key."""

    ca_digest: bytes
    nonce: bytes
    SCHEMA = (("ca_digest", exact(DIGEST_BYTES)), ("nonce", exact(NONCE_BYTES)))


@message(68)
@dataclass(frozen=True, slots=True)
class KeyReply(WireStruct):
    """The node's certificate and its CA certificates; the asker verifies them against its own bundle."""

    nonce: bytes
    node_cert: bytes
    chain: tuple
    SCHEMA = (("nonce", exact(NONCE_BYTES)), ("node_cert", CERT), ("chain", seq(CERT, MAX_CHAIN_CERTS)))


JOIN_MESSAGES = (JoinRequest, JoinGrant, JoinRefused, KeyRequest, KeyReply)
