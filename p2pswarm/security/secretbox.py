"""Sealing the cluster's secrets: the keyring in the security record, and each secret under one of its keys.

**Design.**  A secret is sealed (ChaCha20-Poly1305, :func:`~p2pswarm.security.pki.seal`) by the node
that receives ``secret create``, *before* it is proposed, so no Raft entry, snapshot or applied state
ever holds it in clear.  The key is a random 32-byte keyring key; the associated data binds the
sealed bytes to the secret's name and id, so a sealed blob cannot be passed off as another secret.
The keyring lives in the security record (``secret_keys``: key id -> key sealed under the cluster
key), next to the sealed CA key: a replica, snapshot or log on disk holds nothing usable without the
cluster key of a member's data dir.  Only the agent of a node that runs a task using a secret opens
it (:mod:`p2pswarm.agent.files`).

**Rekey.**  After ``node rm`` the leader's rekey (:mod:`.rekey`) re-seals every keyring key under the
new cluster key and adds a fresh key that new secrets use: the removed node's data dir opens the
old keys (and so the secrets it could already read) but none created after its removal.

**Plaintext clusters** (``up --insecure``) have no cluster key and refuse ``secret create`` with one
line: their Raft traffic is not encrypted either, so a "secret" there would be one in name only.
Configs need no key and work in every cluster.
"""

from __future__ import annotations

import logging
import secrets as _os_random
from typing import TYPE_CHECKING, Any, Callable, Mapping

from p2pswarm.consensus.requests import command_id
from p2pswarm.security.errors import KeyFileError, SecurityError
from p2pswarm.security.pki import KEK_BYTES, NONCE_BYTES, seal, unseal
from p2pswarm.security.record import encode_keyring

if TYPE_CHECKING:
    from p2pswarm.cluster.objects import StoredObject
    from p2pswarm.security.host import SecurityHost

log = logging.getLogger("p2pswarm.security")

KEYRING_CONTEXT = b"secrets-key|"
SECRET_CONTEXT = b"secret|"
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
ID_LENGTH = 25
"""Characters of a secret's or config's id (Docker's length)."""


def new_object_id(entropy: Callable[[int], bytes] = _os_random.token_bytes) -> str:
    """A random id of :data:`ID_LENGTH` lowercase letters and digits."""
    return "".join(ID_ALPHABET[b % len(ID_ALPHABET)] for b in entropy(ID_LENGTH))


def _ring_context(key_id: int) -> bytes:
    return KEYRING_CONTEXT + str(key_id).encode()


def _secret_context(name: str, object_id: str) -> bytes:
    return SECRET_CONTEXT + name.encode() + b"|" + object_id.encode()


def seal_ring_key(cluster_key: bytes, key_id: int, key: bytes, nonce: bytes) -> bytes:
    return seal(cluster_key, nonce, key, _ring_context(key_id))


def open_ring_key(cluster_key: bytes, key_id: int, sealed: bytes) -> bytes:
    key = unseal(cluster_key, sealed, _ring_context(key_id), f"secrets key {key_id}")
    if len(key) != KEK_BYTES:
        raise KeyFileError(f"secrets key {key_id} is corrupt (wrong length)")
    return key


def seal_secret(key: bytes, nonce: bytes, name: str, object_id: str, data: bytes) -> bytes:
    return seal(key, nonce, data, _secret_context(name, object_id))


def open_secret(key: bytes, name: str, object_id: str, sealed: bytes) -> bytes:
    """The clear data; KeyFileError (one line) for a wrong key, another secret's blob, or corrupt data."""
    return unseal(key, sealed, _secret_context(name, object_id), f"secret {name}")


def resealed_ring(keys: Mapping[int, bytes], cluster_key: bytes,
                  entropy: Callable[[int], bytes]) -> tuple[list[list], int]:
    """For a rekey: every key of ``keys`` (id -> clear key) sealed under the new ``cluster_key``, plus a
    fresh key under the next id when the ring is not empty; and the newest id it was computed from."""
    seen = max(keys, default=0)
    ring = {key_id: seal_ring_key(cluster_key, key_id, key, entropy(NONCE_BYTES)) for key_id, key in keys.items()}
    if keys:
        ring[seen + 1] = seal_ring_key(cluster_key, seen + 1, entropy(KEK_BYTES), entropy(NONCE_BYTES))
    return encode_keyring(ring), seen


class Keyring:
    """This node's view of the record's keyring: keys opened with its cluster key, on demand (cached per
    sealed blob, so a rekey's re-sealed keys are opened again with the new cluster key)."""

    def __init__(self, host: SecurityHost) -> None:
        self.host = host
        self._open: dict[tuple[int, bytes], bytes] = {}

    def key(self, rec: Any, key_id: int) -> bytes:
        """The clear keyring key ``key_id``; SecurityError (one line) when this node cannot open it (yet)."""
        sealed = rec.secret_keys.get(key_id)
        if sealed is None:
            raise SecurityError(f"the secrets keyring has no key {key_id} (this node's Raft state may be behind; "
                                "retry in a moment)", "unavailable")
        cached = self._open.get((key_id, sealed))
        if cached is not None:
            return cached
        if self.host.cluster_key is None:
            raise SecurityError("this node does not hold the cluster key yet; retry in a moment", "unavailable")
        try:
            key = open_ring_key(self.host.cluster_key, key_id, sealed)
        except KeyFileError as exc:
            raise SecurityError(f"{exc} (this node may not have adopted the current cluster key yet; retry in a "
                                "moment)", "unavailable") from None
        self._open = {k: v for k, v in self._open.items() if k[0] != key_id}
        self._open[(key_id, sealed)] = key
        return key

    def all(self, rec: Any) -> dict[int, bytes]:
        """Every key of the ring, clear (the leader's rekey re-seals them)."""
        return {key_id: self.key(rec, key_id) for key_id in sorted(rec.secret_keys)}

    def open(self, rec: Any, obj: StoredObject) -> bytes:
        """A secret's clear data (the agent, for a task of this node that uses it)."""
        return open_secret(self.key(rec, obj.key), obj.name, obj.id, obj.data)

    async def seal(self, driver: Any, name: str, object_id: str, data: bytes) -> tuple[bytes, int]:
        """``data`` sealed with the newest keyring key, and that key's id; the ring's first key is made here
        when the cluster has none yet.  SecurityError (one line) when this node cannot do it now."""
        rec = driver.security
        if not rec.secret_keys:
            await self._first_key(driver)
        key_id = max(rec.secret_keys)
        nonce = self.host.entropy(NONCE_BYTES)
        return seal_secret(self.key(rec, key_id), nonce, name, object_id, data), key_id

    async def _first_key(self, driver: Any) -> None:
        host, rec = self.host, driver.security
        if not rec.ready or host.cluster_key is None or not host.record.ca_opened:
            raise SecurityError("this node has not adopted the cluster's current key yet; retry in a moment",
                                "unavailable")
        sealed = seal_ring_key(host.cluster_key, 1, host.entropy(KEK_BYTES), host.entropy(NONCE_BYTES))
        result = await driver.write_security({"id": command_id("security", "secret-key"), "op": "secret_key",
                                              "key_id": 1, "sealed": sealed, "key_generation": rec.key_generation})
        if not result.ok and not rec.secret_keys:  # refused because another node made it first: use that one
            raise SecurityError(result.error, "conflict")
        if result.ok:
            log.info("created the cluster's secrets key")
