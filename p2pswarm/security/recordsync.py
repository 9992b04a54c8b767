"""Adopting the Raft state's security record on this node (every member, leader or not; a worker
outside the Raft group adopts its part of it, :meth:`RecordSync.sync_worker`).

Each time the applied record changes, the node takes from it the trust bundle (the
cross chain it presents while the CA rotates), its share of a rotated cluster key
(:mod:`.rekey`), the CA key and the join-token state (unsealed with the cluster key), the
signed revocation list, and every member's recorded certificate: its own (renewed or
re-issued) and the peers' (admitted at once).  Nodes that ``node rm`` removed (the cluster
state's ``removed_nodes``) are revoked as soon as the removal is applied.  Once the record
is applied, only the certificates it holds (or one this node granted a moment ago) are
admitted: a certificate minted with a stolen CA key is refused even while that CA is trusted.

A part of :class:`~p2pswarm.security.host.SecurityHost` (``host``), whose state it updates.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from p2pswarm.security.errors import CertificateError, KeyFileError, TokenError
from p2pswarm.security.pki import CertAuthority, RevocationList, TrustBundle, cert_digest, unseal
from p2pswarm.security.record import TOKEN_CONTEXT
from p2pswarm.security.rekey import open_share
from p2pswarm.security.tokens import TokenState

if TYPE_CHECKING:
    from p2pswarm.security.host import SecurityHost

log = logging.getLogger("p2pswarm.security")


class RecordSync:
    def __init__(self, host: SecurityHost) -> None:
        self.host = host
        self.certs: dict[str, bytes] = {}
        """node id -> certificate, as the applied record holds them."""
        self.seen = -1
        """Version of the record applied last; -1 before this node applied any."""
        self.removed: frozenset[str] = frozenset()
        """The nodes ``node rm`` removed, as applied last."""
        self.sealed_ca_seen = b""
        self.ca_opened = False
        """True when ``host.ca`` was unsealed from the record's current ``sealed_ca`` (our cluster key is current)."""
        self.tokens_seen = b""
        self.share_seen = b""
        self.rekeyed: frozenset[str] = frozenset()
        """Removed nodes the record's current cluster key shuts out (:mod:`.rekey`)."""
        self.certs_known = False
        """True once this node follows a replica's whole record (``certs`` is every recorded certificate); a
        worker follows its part (:meth:`sync_worker`), which holds its own certificate only."""
        self.worker_seen = b""
        """Digest of the worker part applied last (:mod:`p2pswarm.assignments.trust`)."""

    @property
    def rekey_pending(self) -> frozenset[str]:
        """Removed nodes whose removal the cluster key, CA and token have not been rotated for yet."""
        return self.removed - self.rekeyed

    def recorded(self, node: str, cert: bytes) -> bool:
        """Whether ``cert`` may be admitted for ``node``: once this node has applied the security record,
        only a certificate the Raft state records (or that this node granted a moment ago) is, so a
        certificate minted outside the cluster's own paths (by a removed node that knew the CA key)
        is never admitted.  Before that (a restart, a joiner), and on a worker (which holds no replica), gossip
        and the data dir must do: the bundle and the revocations still decide."""
        return (not self.certs_known or self.certs.get(node) == cert
                or self.host.endpoint.granted.get(node) == cert)

    def forget_secrets(self) -> None:
        """A new cluster key: unseal the record's secrets again with it."""
        self.sealed_ca_seen = self.tokens_seen = b""

    def sync(self, driver: Any, now: float) -> None:
        host = self.host
        rec = driver.security
        removed = frozenset(driver.cluster.removed_nodes)
        changed = rec.version != self.seen
        revocations_changed = False
        if changed and rec.ready:
            self.seen = rec.version
            if rec.cluster_id != host.cluster_id:
                host.warn("cluster", f"the Raft state's security record is for cluster {rec.cluster_id}, this "
                                     f"node's certificate for {host.cluster_id}: ignoring the record")
                return
            self.adopt_common(rec.bundle, rec.rekeyed, rec.key_shares.get(host.node_id), rec.key_generation,
                              rec.sealed_ca, rec.tokens, now)
            revocations_changed = self.adopt_revocations(rec.revocations)
            self.certs, self.certs_known, self.worker_seen = dict(rec.certs), True, b""
            granted = host.endpoint.granted
            host.endpoint.granted = {n: c for n, c in granted.items() if n not in rec.certs}
            for node, cert in rec.certs.items():
                if node == host.node_id:
                    self.adopt_own_cert(cert, now)
                elif (host.admission.certificate(node) or (b"",))[0] != cert:  # type: ignore[union-attr]
                    # new, renewed or re-issued by a rotated CA: admitting it now means the end of
                    # a rotation (which drops old-CA certificates above) never cuts a member off
                    host.try_admit(node, cert, host.chain, None, now)
            host.make_sponsor()
        if revocations_changed or removed != self.removed:
            self.removed = removed
            self.apply_revocations(removed)

    def sync_worker(self, part: Any, now: float) -> None:
        """A worker outside the Raft group: adopt ``part`` (a :class:`p2pswarm.assignments.trust.WorkerTrust`) as
        :meth:`sync` adopts the whole record: bundle, cluster key share, CA key and tokens, revocations, removals
        and this node's own certificate; peers' certificates keep coming from gossip."""
        host = self.host
        digest = part.digest
        if digest == self.worker_seen:
            return
        self.worker_seen = digest
        if part.cluster_id != host.cluster_id:
            host.warn("cluster", f"a member's security record is for cluster {part.cluster_id}, this node's "
                                 f"certificate for {host.cluster_id}: ignoring it")
            return
        self.seen, self.certs, self.certs_known = -1, {}, False
        self.adopt_common(part.bundle, frozenset(part.rekeyed), part.share or None, part.key_generation,
                          part.sealed_ca, part.tokens, now)
        changed = self.adopt_revocations(part.revocations)
        if part.cert:
            self.adopt_own_cert(part.cert, now)
        host.make_sponsor()
        removed = frozenset(part.removed)
        if changed or removed != self.removed:
            self.removed = removed
            self.apply_revocations(removed)

    def adopt_common(self, bundle: bytes, rekeyed: frozenset[str], share: bytes | None, key_generation: int,
                     sealed_ca: bytes, tokens: bytes, now: float) -> None:
        """What a member and a worker adopt alike: the bundle, a rotated cluster key, the CA key and tokens."""
        host = self.host
        if host.genesis is not None:
            host.genesis = None
            host.dirty = True
        self.adopt_bundle(bundle, now)
        self.adopt_share(rekeyed, share, key_generation)
        self.adopt_secrets(sealed_ca, tokens)

    def adopt_revocations(self, signed_list: bytes) -> bool:
        """Verify and keep the CA-signed revocation list; True when it changed."""
        host = self.host
        if not signed_list or host.bundle is None:
            return False
        try:
            signed = RevocationList.verify_signed(signed_list, host.bundle)
        except CertificateError as exc:
            host.warn("revocations", f"the revocation list in the Raft state is not usable: {exc}")
            return False
        changed = signed != host.signed_revocations
        host.signed_revocations = signed
        return changed

    def adopt_bundle(self, encoded: bytes, now: float) -> None:
        host = self.host
        if host.bundle is not None and encoded == host.bundle.encode():
            return
        try:
            bundle = TrustBundle.decode(encoded)
        except CertificateError as exc:
            host.warn("bundle", f"the trust bundle in the Raft state is not usable: {exc}")
            return
        host.bundle = bundle
        host.refused.clear()
        if host.chain != bundle.cross:  # present our certificate with the cross certificate while rotating
            host.chain = bundle.cross
            host.meta_changed = True
        if host.admission is not None:
            for ident in host.admission.set_bundle(bundle, now):
                log.warning("node %s (%s) is no longer trusted by the new CA bundle", ident.name, ident.node_id)
        if host.sponsor is not None:
            host.sponsor.bundle = bundle
        host.dirty = True

    def adopt_secrets(self, sealed_ca: bytes, sealed_tokens: bytes) -> None:
        host = self.host
        if host.cluster_key is None or host.bundle is None:
            return
        if sealed_ca and sealed_ca != self.sealed_ca_seen:
            self.sealed_ca_seen = sealed_ca
            self.ca_opened = False
            try:
                host.ca = CertAuthority.unseal(host.bundle.current, sealed_ca, host.cluster_key)
                self.ca_opened = True
            except (KeyFileError, CertificateError) as exc:
                host.warn("ca", f"cannot unseal the CA key, this node cannot sponsor joins: {exc}")
        if sealed_tokens and sealed_tokens != self.tokens_seen:
            self.tokens_seen = sealed_tokens
            try:
                host.tokens = TokenState.decode(unseal(host.cluster_key, sealed_tokens, TOKEN_CONTEXT,
                                                       "the join-token state"))
            except (KeyFileError, TokenError) as exc:
                host.warn("tokens", f"cannot read the join-token state, this node cannot sponsor joins: {exc}")
        if host.sponsor is not None:
            host.sponsor.ca, host.sponsor.tokens = host.ca, host.tokens or host.sponsor.tokens

    def adopt_share(self, rekeyed: frozenset[str], share: bytes | None, key_generation: int) -> None:
        """After a rekey: open this node's share of the new cluster key and use that key from now on."""
        host = self.host
        self.rekeyed = rekeyed
        if share is None or share == self.share_seen or host.keys is None:
            return
        self.share_seen = share
        try:
            key = open_share(host.keys, share)
        except KeyFileError as exc:
            host.warn("share", f"cannot open this node's share of the new cluster key, it cannot sponsor joins: "
                               f"{exc}")
            return
        host.key_generation = key_generation
        if key != host.cluster_key:
            host.set_cluster_key(key)
            log.info("now using cluster key generation %d (rotated after node rm)", key_generation)

    def adopt_own_cert(self, cert: bytes, now: float) -> None:
        host = self.host
        if cert == host.cert or host.bundle is None or host.keys is None:
            return
        try:
            ident = host.bundle.verify(cert, now, expected_key=host.keys.public, expected_node=host.node_id)
        except CertificateError:
            return  # e.g. an older one, or issued for a key this data dir no longer has
        current = cert_digest(host.bundle.current)
        rotated = host.identity is not None and host.identity.issuer != current and ident.issuer == current
        if host.identity is not None and ident.not_after <= host.identity.not_after and not rotated:
            return
        host.cert, host.identity = cert, ident
        if host.sponsor is not None:
            host.sponsor.cert = cert
        host.admission.admit(cert, now, host.chain)  # type: ignore[union-attr]
        host.meta_changed = True
        host.dirty = True
        log.info("renewed this node's certificate (valid until %s)", time.strftime(
            "%Y-%m-%d", time.gmtime(ident.not_after)))

    def apply_revocations(self, removed: frozenset[str]) -> None:
        host = self.host
        if host.admission is None or host.bundle is None:
            return
        base = host.signed_revocations or RevocationList(host.bundle.cluster_id)
        effective = RevocationList(base.cluster_id, base.version, base.serials, base.nodes | removed)
        for ident in host.admission.set_revocations(effective):
            log.warning("node %s (%s) was removed: its certificate is revoked and its traffic refused",
                        ident.name, ident.node_id)
            host.counters["revoked_peers"] += 1
            host.dirty = True
        host.revocations = host.admission.revocations
        host.refused.clear()
        host.peers_cache = {n: c for n, c in host.peers_cache.items() if n not in host.revocations.nodes}
        if host.sponsor is not None:
            host.sponsor.revocations = host.revocations
