"""The leader's security duties, and the rotations an operator starts on any member.

**Leader duties** (the Raft leader only): put the genesis record into the Raft state
(any node holding it proposes it), sign a new revocation list when ``node rm`` removed
a node, rotate the cluster key, the CA, the join token and the secrets keyring in one entry after
``node rm`` (:mod:`.rekey`; each member opens its share of the new key with its CURVE key), record the
certificates the Raft state lacks, and re-issue certificates due for renewal (after 2/3 of
their 90 days); a node adopts its own renewed certificate from the Raft state
(:mod:`.recordsync`) and re-announces its metadata.  During a CA rotation the leader
re-issues every old-CA certificate and ends the rotation once every member presents a new one.

Every write is a background proposal (:class:`~.proposals.Proposals`), at most one per purpose.
A part of :class:`~p2pswarm.security.host.SecurityHost` (``host``), whose state it reads.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from p2pswarm.consensus.requests import command_id
from p2pswarm.membership.messages import LIVE
from p2pswarm.security.errors import CertificateError, SecurityError
from p2pswarm.security.pki import (
    RevocationList,
    cert_digest,
    fingerprint,
    finish_rotation,
    read_node_certificate,
    rotate_ca,
    seal,
)
from p2pswarm.security.proposals import Proposals
from p2pswarm.security.record import TOKEN_CONTEXT
from p2pswarm.security.rekey import SHARES_PER_COMMAND, missing_shares, rekey_command, shares_for

if TYPE_CHECKING:
    from p2pswarm.security.host import SecurityHost

log = logging.getLogger("p2pswarm.security")

RENEW_CHECK_INTERVAL = 60.0
"""Seconds between the leader's scans for certificates due for renewal."""
MAX_ISSUER_CACHE = 1024
"""Certificates whose issuer a rotation remembers (the cache starts over when full)."""


class Duties:
    def __init__(self, host: SecurityHost) -> None:
        self.host = host
        self.proposals = Proposals("security command", lambda driver, cmd, timeout: driver.write_security(
            cmd, timeout=timeout))
        self.next_renew = 0.0
        self.issuers: dict[tuple[bytes, bytes], bytes] = {}
        self.driver_hint: Any = None
        """The node's Raft driver, for proposals made outside step() (after a grant)."""

    def run(self, driver: Any, swim: Any, now: float) -> None:
        host = self.host
        rec = driver.security
        if not rec.ready:
            if host.genesis is not None:
                self.proposals.propose(driver, "init", dict(host.genesis))
            return
        if driver.raft.role != "leader" or host.ca is None:
            return
        self.rekey(driver, rec, now)
        base = host.signed_revocations or RevocationList(rec.cluster_id)
        missing = host.record.removed - base.nodes
        if missing and not self.proposals.busy("revocations"):
            new = base.revoke(nodes=missing)
            self.proposals.propose(driver, "revocations", {
                "id": command_id("security", "rl"), "op": "revocations", "signed": new.sign(host.ca),
                "version": new.version})
        self.record_unrecorded(driver, rec)
        if now >= self.next_renew:
            self.next_renew = now + RENEW_CHECK_INTERVAL
            self.renew_due(driver, rec, now)
        if host.bundle is not None and len(host.bundle.roots) > 1:
            self.rotation(driver, swim, rec, now)

    def rekey(self, driver: Any, rec: Any, now: float) -> None:
        """Leader: shut removed nodes out (new cluster key, CA and token: :mod:`.rekey`), and give a share of
        the current key to every member that has none (it joined while a rekey was being committed)."""
        host = self.host
        if not host.record.ca_opened or host.cluster_key is None or host.bundle is None or host.tokens is None:
            return  # our cluster key is not the record's current one (yet): another leader's job, or later
        removed = host.record.removed
        if removed - rec.rekeyed and len(host.bundle.roots) == 1 and not self.proposals.busy("rekey"):
            try:
                ring = host.keyring.all(rec)
            except SecurityError as exc:
                host.warn("rekey-keyring", f"cannot rekey after node rm: {exc}")
                return
            cmd, _ = rekey_command(command_id("security", "rekey"), ca=host.ca, bundle=host.bundle,
                                   tokens=host.tokens, certs=rec.certs, removed=removed,
                                   key_generation=rec.key_generation, ca_generation=rec.ca_generation, now=now,
                                   entropy=host.entropy, secret_keys=ring)
            names = ", ".join(sorted(removed - rec.rekeyed))
            log.warning("rotating the cluster key, the CA and the join token: node(s) %s were removed", names)
            self.proposals.propose(driver, "rekey", cmd)
            return
        if rec.key_generation and not self.proposals.busy("key_shares"):
            missing = missing_shares(rec.certs, rec.key_shares, removed)[:SHARES_PER_COMMAND]
            if missing:
                shares = shares_for({n: rec.certs[n] for n in missing}, host.cluster_key, host.entropy)
                self.proposals.propose(driver, "key_shares", {"id": command_id("security", "shares"),
                                                              "op": "key_shares", "key_generation": rec.key_generation,
                                                              "shares": shares})

    def record_unrecorded(self, driver: Any, rec: Any) -> None:
        """Leader: record the certificate of every admitted member the Raft state lacks (a sponsor's own
        proposal can be lost), since renewal and CA rotation work from the recorded certificates."""
        host = self.host
        assert host.admission is not None
        for ident in host.admission.identities():
            node = ident.node_id
            if node not in rec.certs and node not in host.record.removed and not self.proposals.busy(f"cert:{node}"):
                entry = host.admission.certificate(node)
                if entry is not None:
                    self.want_cert_recorded(node, entry[0], driver)

    def renew_due(self, driver: Any, rec: Any, now: float) -> None:
        host = self.host
        assert host.ca is not None
        for node, cert in sorted(rec.certs.items()):
            if node in host.record.removed or self.proposals.busy(f"cert:{node}"):
                continue
            try:
                ident = read_node_certificate(cert)
            except CertificateError:
                continue
            if ident.needs_renewal(now):
                new = host.ca.renew(ident, now, host.entropy(16))
                log.info("renewing the certificate of node %s (%s)", ident.name, node)
                self.want_cert_recorded(node, new, driver)

    def want_cert_recorded(self, node: str, cert: bytes, driver: Any = None) -> None:
        driver = driver or self.driver_hint
        if driver is not None:
            self.proposals.propose(driver, f"cert:{node}", {"id": command_id("security", "cert"),
                                                            "op": "cert", "node": node, "cert": cert})

    # ------------------------------------------------------------ CA rotation

    async def rotate_ca(self, driver: Any) -> dict[str, Any]:
        """Begin a CA rotation: a new CA cross-signed by the current one goes into the Raft state.

        The leader then re-issues every member's certificate from the new CA and, once every
        member presents its new certificate, drops the old CA (:meth:`rotation`).
        """
        host = self.host
        if driver is None or not driver.security.ready or host.ca is None or host.bundle is None \
                or host.cluster_key is None:
            raise SecurityError("this node cannot rotate the CA yet (it has not applied the cluster's security "
                                "record); retry in a moment or run it on another member", "unavailable")
        if len(host.bundle.roots) > 1:
            raise SecurityError("a CA rotation is already in progress: `p2pswarm cluster ca` shows which nodes it "
                                "waits for", "conflict")
        new_ca, bundle = rotate_ca(host.ca, host.bundle, host.wall(), host.entropy(32), host.entropy(16),
                                   host.entropy(16))
        result = await driver.write_security({
            "id": command_id("security", "ca"), "op": "ca", "bundle": bundle.encode(),
            "sealed_ca": new_ca.seal(host.cluster_key, host.entropy(12)),
            "generation": driver.security.ca_generation + 1})
        if not result.ok:
            raise SecurityError(result.error, "conflict")
        log.warning("CA rotation started: new CA %s; every member's certificate is being re-issued",
                    fingerprint(new_ca.cert_der))
        host.record.sync(driver, host.wall())  # applied here once the write returned: adopt it now
        return self.ca_view(driver, None)

    def ca_view(self, driver: Any, swim: Any) -> dict[str, Any]:
        """The trusted CAs and, during a rotation, the members it still waits for (and why)."""
        host = self.host
        if host.bundle is None:
            raise SecurityError("this node does not hold the cluster's CA bundle yet; retry in a moment",
                                "unavailable")
        rec = driver.security if driver is not None else None
        rotating = len(host.bundle.roots) > 1
        pending: dict[str, str] = {}
        if rotating and rec is not None and rec.ready:
            pending = self.rotation_pending(swim, rec.certs, host.wall())
        removed = host.record.removed
        return {"ca_fingerprint": fingerprint(host.bundle.current),
                "trusted": [fingerprint(r) for r in host.bundle.roots],
                "generation": rec.ca_generation if rec is not None else None,
                "rotating": rotating, "pending": pending,
                "members": len(rec.certs) - len(set(rec.certs) & removed) if rec is not None else None,
                "token": self.join_token()["token"] if host.tokens is not None else None}

    def rotation_pending(self, swim: Any, certs: dict[str, bytes], now: float) -> dict[str, str]:
        """Members (node id -> reason) a rotation waits for: ``reissue`` (its certificate in the Raft state
        is from the old CA), ``adopting`` (it has not yet presented the new one in gossip) or ``down``.

        A member that is down blocks the end of a rotation: dropping the old CA then would lock it out
        for good.  ``node rm`` a node that will not come back.
        """
        host = self.host
        assert host.bundle is not None
        current = cert_digest(host.bundle.current)
        presented: dict[str, tuple[str, bytes]] = {}
        if swim is not None:
            presented = {m.node: (m.status, m.meta.cert) for m in swim.members()}
        pending = {}
        for node, cert in certs.items():
            if node in host.record.removed:
                continue
            if self.issuer_of(cert, now) != current:
                pending[node] = "reissue"
                continue
            if node == host.node_id:
                status, shown = "alive", host.cert
            else:
                status, shown = presented.get(node, ("dead", b""))
            if status not in LIVE:
                pending[node] = "down"
            elif self.issuer_of(shown, now) != current:
                pending[node] = "adopting"
        return pending

    def issuer_of(self, cert: bytes, now: float) -> bytes:
        """Digest of the root that signed ``cert`` (b"" if none of ours did); cached per certificate."""
        bundle = self.host.bundle
        assert bundle is not None
        key = (cert, bundle.current)
        if key not in self.issuers:
            if len(self.issuers) >= MAX_ISSUER_CACHE:
                self.issuers.clear()
            try:
                self.issuers[key] = bundle.verify(cert, now).issuer if cert else b""
            except CertificateError:
                self.issuers[key] = b""
        return self.issuers[key]

    def rotation(self, driver: Any, swim: Any, rec: Any, now: float) -> None:
        """Leader, during a rotation: re-issue old-CA certificates; end the rotation when none is left."""
        host = self.host
        assert host.bundle is not None
        if host.ca is None or host.ca.digest != cert_digest(host.bundle.current):
            return  # the new CA key is not unsealed here yet
        if RevocationList.signer(rec.revocations) != host.ca.digest and not self.proposals.busy("revocations"):
            base = host.signed_revocations or RevocationList(rec.cluster_id)
            resigned = RevocationList(base.cluster_id, max(base.version, rec.revocations_version) + 1, base.serials,
                                      base.nodes | host.record.removed)
            self.proposals.propose(driver, "revocations", {
                "id": command_id("security", "rl"), "op": "revocations", "signed": resigned.sign(host.ca),
                "version": resigned.version})
        pending = self.rotation_pending(swim, rec.certs, now)
        for node, why in sorted(pending.items()):
            if why == "reissue" and not self.proposals.busy(f"cert:{node}"):
                try:
                    ident = read_node_certificate(rec.certs[node])
                except CertificateError:
                    continue
                log.info("CA rotation: re-issuing the certificate of node %s (%s)", ident.name, node)
                self.want_cert_recorded(node, host.ca.renew(ident, now, host.entropy(16)), driver)
        if not pending and RevocationList.signer(rec.revocations) == host.ca.digest:
            log.warning("CA rotation finished: every member holds a certificate from CA %s; the old CA is no "
                        "longer trusted", fingerprint(host.bundle.current))
            self.proposals.propose(driver, "ca", {"id": command_id("security", "ca"), "op": "ca",
                                                  "bundle": finish_rotation(host.bundle).encode(),
                                                  "generation": rec.ca_generation + 1})

    # ------------------------------------------------------------ the join token (API)

    def join_token(self) -> dict[str, Any]:
        """The current join token; SecurityError when this node cannot read it (yet)."""
        host = self.host
        if host.tokens is None or host.bundle is None:
            raise SecurityError("this node cannot read the join token yet (it has not applied the cluster's "
                                "security record); retry in a moment or ask another member", "unavailable")
        digest = cert_digest(host.bundle.current)
        return {"token": str(host.tokens.token(digest)), "generation": host.tokens.generation,
                "expires_at": host.tokens.expires_at, "ca_fingerprint": fingerprint(host.bundle.current)}

    async def rotate_token(self, driver: Any, ttl: float | None) -> dict[str, Any]:
        """Replace the token secret in the Raft state; the old token no longer admits anyone."""
        host = self.host
        if driver is None or not driver.security.ready or host.tokens is None or host.cluster_key is None:
            raise SecurityError("this node cannot rotate the join token yet (it has not applied the cluster's "
                                "security record); retry in a moment or run it on another member", "unavailable")
        new = host.tokens.rotate(host.entropy(20), host.wall(), ttl)
        sealed = seal(host.cluster_key, host.entropy(12), new.encode(), TOKEN_CONTEXT)
        result = await driver.write_security({"id": command_id("security", "token"), "op": "tokens",
                                              "sealed": sealed, "generation": new.generation})
        if not result.ok:
            raise SecurityError(result.error, "conflict")
        host.record.adopt_secrets(b"", sealed)
        log.warning("the join token was rotated (generation %d): the old one no longer admits new nodes",
                    new.generation)
        return self.join_token()
