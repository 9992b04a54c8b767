"""Rekeying after ``node rm`` (pure: entropy and time come in).

**Why.**  Every member holds the cluster key, and with it it can unseal the CA key and the
join-token state that the Raft state keeps.  A removed node's data dir must be assumed to be
in an attacker's hands, so revoking its certificate is not enough: from that dir one could
mint a certificate for a new node id, or join again with the token it knew.  So once a
removal is applied, the Raft leader rotates all three in one Raft command (``rekey``):

* a **new cluster key**, handed to every remaining member as a *share*: the key sealed to
  that member's CURVE public key (from its recorded certificate).  The share is an X25519
  exchange between a fresh ephemeral key and the member's key, stretched by HKDF-SHA256
  into a one-use key that seals the cluster key (:func:`p2pswarm.security.pki.seal`).  Only
  the holder of the member's ``curve.key`` opens it; the removed node gets no share;
* a **new CA**, cross-signed by the old one (an ordinary CA rotation: the leader re-issues
  every member's certificate and drops the old CA once every member presents a new one),
  its key sealed under the new cluster key;
* a **new join-token secret**, sealed under the new cluster key;
* the **secrets keyring** re-sealed under the new cluster key, with a fresh key for the secrets
  created from now on (:mod:`.secretbox`).

Members that join later receive the new cluster key in their grant, as always; a member
whose certificate was not recorded when the rekey was made gets its share later
(``key_shares``, :func:`missing_shares`).  While a removal is not yet rekeyed, sponsors
refuse joins as ``busy`` (the joiner retries), so the old token cannot be used in between.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pswarm.security.errors import CertificateError, KeyFileError
from p2pswarm.security.keys import CurveKeys
from p2pswarm.security.pki import (
    KEK_BYTES,
    NONCE_BYTES,
    CertAuthority,
    TrustBundle,
    read_node_certificate,
    rotate_ca,
    seal,
    unseal,
)
from p2pswarm.security.record import TOKEN_CONTEXT
from p2pswarm.security.secretbox import resealed_ring
from p2pswarm.security.tokens import TokenState

SHARE_CONTEXT = b"cluster-key-share"
"""Binds a sealed share to its purpose (a share can never be opened as another sealed secret)."""
_KDF_INFO = b"p2pswarm-cluster-key-share-v1|"
_PUBLIC_BYTES = 32
SHARES_PER_COMMAND = 2000
"""Shares carried by one ``rekey`` or ``key_shares`` command: about 110 bytes each, so a command
stays near 220 kB, well under the Raft entry limit; the rest follow in further commands."""


def _share_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    info = _KDF_INFO + ephemeral_public + recipient_public
    return HKDF(algorithm=hashes.SHA256(), length=KEK_BYTES, salt=None, info=info).derive(shared)


def seal_share(recipient_public: bytes, cluster_key: bytes, ephemeral_secret: bytes, nonce: bytes) -> bytes:
    """``cluster_key`` sealed so that only the holder of ``recipient_public``'s secret opens it.

    Layout: ephemeral X25519 public key (32 bytes) | :func:`~p2pswarm.security.pki.seal` blob.
    """
    ephemeral = x25519.X25519PrivateKey.from_private_bytes(ephemeral_secret)
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(recipient_public))
    kek = _share_key(shared, ephemeral_public, recipient_public)
    return ephemeral_public + seal(kek, nonce, cluster_key, SHARE_CONTEXT)


def open_share(keys: CurveKeys, blob: bytes) -> bytes:
    """Inverse of :func:`seal_share` with this node's CURVE keys; KeyFileError (one line) otherwise."""
    what = "this node's share of the new cluster key"
    if type(blob) is not bytes or len(blob) <= _PUBLIC_BYTES:
        raise KeyFileError(f"{what} is corrupt or truncated")
    ephemeral_public = blob[:_PUBLIC_BYTES]
    try:
        shared = x25519.X25519PrivateKey.from_private_bytes(keys.secret).exchange(
            x25519.X25519PublicKey.from_public_bytes(ephemeral_public))
    except ValueError:  # a low-order point: no key agreement
        raise KeyFileError(f"{what} is corrupt") from None
    key = unseal(_share_key(shared, ephemeral_public, keys.public), blob[_PUBLIC_BYTES:], SHARE_CONTEXT, what)
    if len(key) != KEK_BYTES:
        raise KeyFileError(f"{what} does not hold a {KEK_BYTES}-byte key")
    return key


def shares_for(certs: Mapping[str, bytes], cluster_key: bytes, entropy: Callable[[int], bytes],
               exclude: Iterable[str] = ()) -> dict[str, bytes]:
    """A share of ``cluster_key`` for each node of ``certs`` (id -> recorded certificate) not excluded.

    A certificate that does not parse gets no share (that node then cannot follow the rekey;
    it is reported by :func:`missing_shares` forever, which is the honest answer).
    """
    excluded = set(exclude)
    out: dict[str, bytes] = {}
    for node, cert in sorted(certs.items()):
        if node in excluded:
            continue
        try:
            public = read_node_certificate(cert).curve_public
        except CertificateError:
            continue
        out[node] = seal_share(public, cluster_key, entropy(32), entropy(NONCE_BYTES))
    return out


def missing_shares(certs: Mapping[str, bytes], shares: Mapping[str, bytes], removed: Iterable[str]) -> list[str]:
    """Recorded, not removed members without a share of the current cluster key (sorted)."""
    gone = set(removed)
    return sorted(n for n in certs if n not in shares and n not in gone)


def rekey_command(cid: str, *, ca: CertAuthority, bundle: TrustBundle, tokens: TokenState,
                  certs: Mapping[str, bytes], removed: Iterable[str], key_generation: int, ca_generation: int,
                  now: float, entropy: Callable[[int], bytes],
                  secret_keys: Mapping[int, bytes] | None = None) -> tuple[dict, bytes]:
    """The ``rekey`` command that shuts ``removed`` out, and the new cluster key it distributes.

    ``key_generation``/``ca_generation`` are the record's current values (the command carries
    the next ones, so a concurrent rotation makes it fail rather than both win); ``secret_keys`` the
    record's keyring, opened (id -> key).
    """
    gone = sorted(set(removed))
    cluster_key = entropy(KEK_BYTES)
    new_ca, new_bundle = rotate_ca(ca, bundle, now, entropy(32), entropy(16), entropy(16))
    new_tokens = tokens.rotate(entropy(20), now, None if tokens.expires_at is None else
                               max(0.0, tokens.expires_at - tokens.issued_at))
    ring, seen = resealed_ring(secret_keys or {}, cluster_key, entropy)
    shares = shares_for(certs, cluster_key, entropy, exclude=gone)
    first = dict(list(shares.items())[:SHARES_PER_COMMAND])
    cmd = {"id": cid, "op": "rekey", "key_generation": key_generation + 1, "shares": first, "excluded": gone,
           "bundle": new_bundle.encode(), "sealed_ca": new_ca.seal(cluster_key, entropy(NONCE_BYTES)),
           "ca_generation": ca_generation + 1,
           "tokens": seal(cluster_key, entropy(NONCE_BYTES), new_tokens.encode(), TOKEN_CONTEXT),
           "token_generation": new_tokens.generation, "secret_keys": ring, "secret_keys_seen": seen}
    return cmd, cluster_key
