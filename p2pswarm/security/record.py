"""The security record: the cluster's security state inside the Raft state (pure, deterministic).

One record per cluster, applied on every replica like the KV store and the cluster
state (:mod:`p2pswarm.node.statemachine` routes ``{"sm": "security", "cmd": {...}}`` here):

* ``bundle``      the trust bundle (:meth:`~p2pswarm.security.pki.TrustBundle.encode`): the CA certificates
* ``sealed_ca``   the current CA's private key, sealed under the 32-byte cluster key
                  (:meth:`~p2pswarm.security.pki.CertAuthority.seal`)
* ``tokens``      the join-token state (:class:`~p2pswarm.security.tokens.TokenState`), sealed under the
                  cluster key (context :data:`TOKEN_CONTEXT`), with its ``token_generation`` in clear
                  so that two concurrent rotations cannot both win
* ``revocations`` the revocation list signed by the CA (:meth:`~p2pswarm.security.pki.RevocationList.sign`),
                  with its ``revocations_version`` in clear; a list only ever replaces an older one
* ``certs``       every issued node certificate (DER) by node id (the latest one per node)
* ``ca_generation`` bumped by each ``ca`` command (a rotation starting or finishing), so that two
                  concurrent rotations, or a finish computed from an older bundle, cannot both win
* ``key_generation``, ``key_shares``, ``rekeyed``  after ``node rm`` (:mod:`p2pswarm.security.rekey`): the
                  cluster key's generation (0: the key made at creation), the current key sealed to each
                  member's CURVE key (node id -> share), and the removed nodes the current key shuts out
* ``secret_keys`` the keyring that seals the cluster's secrets (:mod:`p2pswarm.security.secretbox`): key id ->
                  a random 32-byte key sealed under the cluster key.  The first ``secret create`` adds key 1
                  (``secret_key``); each rekey re-seals every key under the new cluster key and adds a new
                  one, so a secret created after a removal is sealed with a key the removed node never had

The cluster key itself is never here: it is in each member's data dir (0600).  So a
replica, a snapshot or a Raft log on disk holds no usable secret without it.

Applying never raises and never reads a clock or a key: commands are checked for
shape only (they come from authenticated members through Raft; the node verifies
signatures and certificates when it *uses* the record).  Each change bumps
``version``, which lets the node notice changes with one comparison.
"""

from __future__ import annotations

from typing import Any

from p2pswarm.cluster.checks import is_bytes, is_count, is_text
from p2pswarm.wire import MAX_ID_LEN

MAX_CERT = 4096
MAX_BLOB = 64 * 1024
MAX_CERTS = 10_000
MAX_SHARE = 256
"""A share is 32 + 4 + 12 + 32 + 16 = 96 bytes (ephemeral key, seal magic, nonce, key, tag)."""
MAX_REKEYED = 100_000
"""Removed node ids a record remembers as rekeyed (as many as a revocation list holds)."""
TOKEN_CONTEXT = b"join-token"
MAX_SECRET_KEYS = 10_000
"""Keyring keys a record holds (one per rekey, each about 64 bytes sealed)."""
OPS = ("init", "tokens", "revocations", "cert", "ca", "rekey", "key_shares", "secret_key")


def decode_keyring(value: Any) -> dict[int, bytes] | None:
    """``[[key id, sealed key], ...]`` (msgpack maps only take text keys) as a dict; None if malformed."""
    if not isinstance(value, list) or len(value) > MAX_SECRET_KEYS:
        return None
    ring: dict[int, bytes] = {}
    for item in value:
        if (not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int or not 1 <= item[0] <= 2**31
                or not is_bytes(item[1], MAX_SHARE) or item[0] in ring):
            return None
        ring[item[0]] = item[1]
    return ring


def encode_keyring(ring: dict[int, bytes]) -> list[list]:
    return [[key_id, ring[key_id]] for key_id in sorted(ring)]


def _shares(value: Any) -> bool:
    return (isinstance(value, dict) and len(value) <= MAX_CERTS
            and all(is_text(k, MAX_ID_LEN) and is_bytes(v, MAX_SHARE) for k, v in value.items()))


class SecurityRecord:
    __slots__ = ("cluster_id", "bundle", "sealed_ca", "tokens", "token_generation", "revocations",
                 "revocations_version", "certs", "ca_generation", "key_generation", "key_shares", "rekeyed",
                 "secret_keys", "version")

    def __init__(self) -> None:
        self.cluster_id: str | None = None
        self.bundle = b""
        self.sealed_ca = b""
        self.tokens = b""
        self.token_generation = 0
        self.revocations = b""
        self.revocations_version = 0
        self.certs: dict[str, bytes] = {}
        self.ca_generation = 0
        self.key_generation = 0
        self.key_shares: dict[str, bytes] = {}
        self.rekeyed: frozenset[str] = frozenset()
        self.secret_keys: dict[int, bytes] = {}
        self.version = 0

    @property
    def ready(self) -> bool:
        """True once the creator's ``init`` is applied."""
        return self.cluster_id is not None

    # ------------------------------------------------------------ apply

    def apply(self, cmd: dict) -> tuple[bool, str]:
        """Apply one command; (ok, one-line reason when refused).  Same result on every replica."""
        op = cmd.get("op")
        if op not in OPS:
            return False, f"unknown security command {str(op)[:20]!r}"
        if op == "init":
            return self._init(cmd)
        if not self.ready:
            return False, "the cluster's security record is not initialised yet; retry in a moment"
        if op == "tokens":
            sealed, generation = cmd.get("sealed"), cmd.get("generation")
            if not is_bytes(sealed, MAX_BLOB) or type(generation) is not int:
                return False, "bad join-token command"
            if generation != self.token_generation + 1:
                return False, (f"the join token changed meanwhile (generation {self.token_generation}); "
                               f"run the command again")
            self.tokens, self.token_generation = sealed, generation
        elif op == "ca":
            bundle, sealed, generation = cmd.get("bundle"), cmd.get("sealed_ca"), cmd.get("generation")
            if (not is_bytes(bundle, MAX_BLOB) or (sealed is not None and not is_bytes(sealed, MAX_BLOB))
                    or type(generation) is not int):
                return False, "bad CA command"
            if generation != self.ca_generation + 1:
                return False, (f"the cluster CA changed meanwhile (generation {self.ca_generation}); "
                               f"check `p2pswarm cluster ca` and run the command again")
            self.bundle, self.ca_generation = bundle, generation
            if sealed is not None:
                self.sealed_ca = sealed
        elif op == "rekey":
            ok, error = self._rekey(cmd)
            if not ok:
                return ok, error
        elif op == "key_shares":
            shares = cmd.get("shares")
            if cmd.get("key_generation") != self.key_generation or not _shares(shares):
                return False, "stale or bad key-share command"
            if len(set(self.key_shares) | set(shares)) > MAX_CERTS:
                return False, f"the security record holds at most {MAX_CERTS} key shares"
            self.key_shares.update(shares)
        elif op == "secret_key":
            ok, error = self._secret_key(cmd)
            if not ok:
                return ok, error
        elif op == "revocations":
            signed, version = cmd.get("signed"), cmd.get("version")
            if not is_bytes(signed, 8 * 1024 * 1024) or not is_count(version):
                return False, "bad revocation command"
            if version <= self.revocations_version:
                return True, ""  # an older or equal list: the newer one stays (idempotent)
            self.revocations, self.revocations_version = signed, version
        else:  # cert
            node, cert = cmd.get("node"), cmd.get("cert")
            if not is_text(node, MAX_ID_LEN) or not is_bytes(cert, MAX_CERT):
                return False, "bad certificate command"
            if node not in self.certs and len(self.certs) >= MAX_CERTS:
                return False, f"the security record holds at most {MAX_CERTS} certificates"
            if self.certs.get(node) == cert:
                return True, ""
            self.certs[node] = cert
        self.version += 1
        return True, ""

    def _secret_key(self, cmd: dict) -> tuple[bool, str]:
        """The next keyring key, sealed under the cluster key of ``key_generation`` (which must be current)."""
        key_id, sealed = cmd.get("key_id"), cmd.get("sealed")
        if type(key_id) is not int or not is_bytes(sealed, MAX_SHARE):
            return False, "bad secret-key command"
        if cmd.get("key_generation") != self.key_generation or key_id != max(self.secret_keys, default=0) + 1:
            return False, "the secrets keyring or the cluster key changed meanwhile; run the command again"
        if len(self.secret_keys) >= MAX_SECRET_KEYS:
            return False, f"the secrets keyring holds at most {MAX_SECRET_KEYS} keys"
        self.secret_keys[key_id] = sealed
        return True, ""

    def _rekey(self, cmd: dict) -> tuple[bool, str]:
        """A new cluster key (as shares), CA and token secret at once: each generation must be the next one."""
        bundle, sealed, tokens = cmd.get("bundle"), cmd.get("sealed_ca"), cmd.get("tokens")
        excluded, shares = cmd.get("excluded"), cmd.get("shares")
        if (not all(is_bytes(b, MAX_BLOB) for b in (bundle, sealed, tokens)) or not _shares(shares)
                or not isinstance(excluded, list) or len(excluded) > MAX_REKEYED
                or not all(is_text(n, MAX_ID_LEN) for n in excluded)):
            return False, "bad rekey command"
        if (cmd.get("key_generation") != self.key_generation + 1 or cmd.get("ca_generation") != self.ca_generation + 1
                or cmd.get("token_generation") != self.token_generation + 1):
            return False, "the cluster key, CA or join token changed meanwhile; the leader computes the rekey again"
        ring = decode_keyring(cmd.get("secret_keys", []))
        if cmd.get("secret_keys_seen", 0) != max(self.secret_keys, default=0):
            return False, "the secrets keyring changed meanwhile; the leader computes the rekey again"
        if ring is None or not set(self.secret_keys) <= set(ring):  # each key re-sealed under the new cluster key
            return False, "bad rekey command"
        self.secret_keys = ring
        self.bundle, self.sealed_ca, self.tokens = bundle, sealed, tokens
        self.key_generation, self.ca_generation, self.token_generation = (
            cmd["key_generation"], cmd["ca_generation"], cmd["token_generation"])
        self.key_shares, self.rekeyed = dict(shares), frozenset(excluded)
        return True, ""

    def _init(self, cmd: dict) -> tuple[bool, str]:
        if self.ready:
            return (True, "") if cmd.get("cluster_id") == self.cluster_id else \
                (False, "the security record belongs to another cluster")
        cluster_id, certs = cmd.get("cluster_id"), cmd.get("certs", {})
        fields = (cmd.get("bundle"), cmd.get("sealed_ca"), cmd.get("tokens"))
        if (not is_text(cluster_id, MAX_ID_LEN) or not all(is_bytes(f, MAX_BLOB) for f in fields)
                or not isinstance(certs, dict)
                or not all(is_text(k, MAX_ID_LEN) and is_bytes(v, MAX_CERT) for k, v in certs.items())
                or not is_count(cmd.get("token_generation")) or not is_count(cmd.get("revocations_version"))
                or not is_bytes(cmd.get("revocations"), MAX_BLOB, 0)):
            return False, "bad security init command"
        self.cluster_id = cluster_id
        self.bundle, self.sealed_ca, self.tokens = fields
        self.token_generation = cmd["token_generation"]
        self.revocations, self.revocations_version = cmd["revocations"], cmd["revocations_version"]
        self.certs = dict(certs)
        generation = cmd.get("ca_generation", 0)
        self.ca_generation = generation if is_count(generation) else 0
        # a snapshot's rekey state (an init command never carries one)
        key_generation, shares = cmd.get("key_generation", 0), cmd.get("key_shares", {})
        rekeyed = cmd.get("rekeyed", [])
        if (is_count(key_generation) and _shares(shares) and isinstance(rekeyed, list)
                and all(is_text(n, MAX_ID_LEN) for n in rekeyed)):
            self.key_generation, self.key_shares, self.rekeyed = key_generation, dict(shares), frozenset(rekeyed)
        self.secret_keys = decode_keyring(cmd.get("secret_keys", [])) or {}
        self.version += 1
        return True, ""

    # ------------------------------------------------------------ snapshot

    def snapshot(self) -> dict | None:
        if not self.ready:
            return None
        return {"cluster_id": self.cluster_id, "bundle": self.bundle, "sealed_ca": self.sealed_ca,
                "tokens": self.tokens, "token_generation": self.token_generation,
                "revocations": self.revocations, "revocations_version": self.revocations_version,
                "certs": dict(self.certs), "ca_generation": self.ca_generation,
                "key_generation": self.key_generation, "key_shares": dict(self.key_shares),
                "rekeyed": sorted(self.rekeyed), "secret_keys": encode_keyring(self.secret_keys),
                "version": self.version}

    def restore(self, data: Any) -> None:
        """Replace the state in place (a snapshot, or None for an empty record)."""
        self.__init__()  # type: ignore[misc]
        if isinstance(data, dict):
            self._init({**data})
            self.version = int(data.get("version", 1)) if type(data.get("version")) is int else 1


def init_command(cid: str, cluster_id: str, *, bundle: bytes, sealed_ca: bytes, tokens: bytes,
                 token_generation: int, revocations: bytes, revocations_version: int,
                 certs: dict[str, bytes]) -> dict:
    return {"id": cid, "op": "init", "cluster_id": cluster_id, "bundle": bundle, "sealed_ca": sealed_ca,
            "tokens": tokens, "token_generation": token_generation, "revocations": revocations,
            "revocations_version": revocations_version, "certs": dict(certs)}
