"""Which CURVE keys the transport admits, and which key each peer address has (pure).

The node fills an :class:`Admission` from certificates it has *verified*: its
members' certificates arrive by gossip (or a KeyReply / JoinGrant) and are checked
against the cluster's :class:`~p2pswarm.security.pki.TrustBundle` and
:class:`~p2pswarm.security.pki.RevocationList` before their key is admitted.
The transport then asks two questions, both dictionary lookups:

* :meth:`Admission.authorize` ``(key) -> bool``: the ZAP decision and the per-message
  re-check (``ZmqTransport(authorize=...)``);
* :meth:`Admission.peer_key` ``(addr) -> key | None``: the server key to connect to
  ``addr`` with (``ZmqTransport(peer_key=...)``).

Time-dependent state is refreshed explicitly: :meth:`refresh` (call it every few
seconds with wall-clock ``now``) drops expired certificates; :meth:`set_revocations`
and :meth:`set_bundle` drop revoked ones and those the bundle no longer trusts at
once, which cuts a removed node off within one call.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from p2pswarm.security.errors import CertificateError
from p2pswarm.security.pki import NodeIdentity, RevocationList, TrustBundle


@dataclass(frozen=True)
class _Admitted:
    identity: NodeIdentity
    cert: bytes
    chain: tuple


class Admission:
    def __init__(self, bundle: TrustBundle, revocations: RevocationList | None = None) -> None:
        self.bundle = bundle
        self.revocations = revocations or RevocationList(bundle.cluster_id)
        self._by_key: dict[bytes, _Admitted] = {}
        self._key_of: dict[str, bytes] = {}
        self._addr_node: dict[str, str] = {}
        self.counters: Counter[str] = Counter()

    # ---------------------------------------------------------------- the transport's questions

    def authorize(self, key: bytes) -> bool:
        ok = key in self._by_key
        if not ok:
            self.counters["unauthorized_keys"] += 1
        return ok

    def peer_key(self, addr: str) -> bytes | None:
        node = self._addr_node.get(addr)
        return self._key_of.get(node) if node is not None else None

    # ---------------------------------------------------------------- what the node tells it

    def admit(self, cert: bytes, now: float, chain: tuple = (), *, addr: str | None = None,
              expected_node: str | None = None) -> NodeIdentity:
        """Verify ``cert`` (CertificateError with a reason otherwise) and admit its key.

        A node has one admitted key: a newer certificate with another key replaces
        the old key.  ``addr`` (from the node's own SWIM record) binds the address.
        """
        try:
            identity = self.bundle.verify(cert, now, revocations=self.revocations, chain=chain,
                                          expected_node=expected_node)
        except CertificateError as exc:
            self.counters[f"refused_{exc.code}"] += 1
            raise
        old = self._key_of.get(identity.node_id)
        if old is not None:
            current = self._by_key.get(old)
            if current is not None and current.identity.not_before > identity.not_before:
                self.counters["refused_older"] += 1
                return current.identity  # an older certificate (late gossip) does not displace a newer one
            if old != identity.curve_public:
                self._by_key.pop(old, None)
        holder = self._by_key.get(identity.curve_public)
        if holder is not None and holder.identity.node_id != identity.node_id:
            self.counters["refused_key_reuse"] += 1
            raise CertificateError(f"node {identity.node_id} presents the transport key of node "
                                   f"{holder.identity.node_id}", "key_mismatch")
        self._by_key[identity.curve_public] = _Admitted(identity, cert, tuple(chain))
        self._key_of[identity.node_id] = identity.curve_public
        if addr is not None:
            self.bind_addr(addr, identity.node_id)
        self.counters["admitted"] += 1
        return identity

    def bind_addr(self, addr: str, node_id: str) -> None:
        """``addr`` is where ``node_id`` listens (from its own SWIM record)."""
        self._addr_node[addr] = node_id

    def forget(self, node_id: str) -> None:
        key = self._key_of.pop(node_id, None)
        if key is not None:
            self._by_key.pop(key, None)
        for addr in [a for a, n in self._addr_node.items() if n == node_id]:
            del self._addr_node[addr]

    def addrs_of(self, node_id: str) -> list[str]:
        """The addresses bound to ``node_id`` (to remember where a peer listens across restarts)."""
        return sorted(a for a, n in self._addr_node.items() if n == node_id)

    def identity(self, key: bytes) -> NodeIdentity | None:
        entry = self._by_key.get(key)
        return entry.identity if entry is not None else None

    def key_of(self, node_id: str) -> bytes | None:
        return self._key_of.get(node_id)

    def certificate(self, node_id: str) -> tuple[bytes, tuple] | None:
        key = self._key_of.get(node_id)
        entry = self._by_key.get(key) if key is not None else None
        return (entry.cert, entry.chain) if entry is not None else None

    def identities(self) -> list[NodeIdentity]:
        return sorted((e.identity for e in self._by_key.values()), key=lambda i: i.node_id)

    # ---------------------------------------------------------------- time and state changes

    def refresh(self, now: float) -> list[NodeIdentity]:
        """Re-verify every admitted certificate at ``now``; drop (and return) what no longer passes."""
        dropped = []
        for key, entry in list(self._by_key.items()):
            try:
                self.bundle.verify(entry.cert, now, revocations=self.revocations, chain=entry.chain)
            except CertificateError as exc:
                self.counters[f"dropped_{exc.code}"] += 1
                self._drop(key, entry)
                dropped.append(entry.identity)
        return dropped

    def expire(self, now: float) -> list[NodeIdentity]:
        """Cheap version of :meth:`refresh` (validity dates only); call it every second or so."""
        dropped = []
        for key, entry in list(self._by_key.items()):
            if not entry.identity.not_before <= now <= entry.identity.not_after:
                self.counters["dropped_expired"] += 1
                self._drop(key, entry)
                dropped.append(entry.identity)
        return dropped

    def set_revocations(self, revocations: RevocationList) -> list[NodeIdentity]:
        """Adopt a newer revocation list; drop (and return) the identities it revokes."""
        self.revocations = self.revocations.newer(revocations)
        dropped = []
        for key, entry in list(self._by_key.items()):
            if self.revocations.is_revoked(entry.identity):
                self.counters["dropped_revoked"] += 1
                self._drop(key, entry)
                dropped.append(entry.identity)
        return dropped

    def set_bundle(self, bundle: TrustBundle, now: float) -> list[NodeIdentity]:
        """Adopt a new trust bundle (CA rotation); drop what it no longer trusts."""
        self.bundle = bundle
        return self.refresh(now)

    def _drop(self, key: bytes, entry: _Admitted) -> None:
        self._by_key.pop(key, None)
        if self._key_of.get(entry.identity.node_id) == key:
            del self._key_of[entry.identity.node_id]
