"""The node's security edge: key files, admission, the join endpoint and handshake, the security record.

``node/daemon.py`` owns one :class:`SecurityHost` in a secure cluster (the default; ``up
--insecure`` runs without).  It is an I/O edge like the transport: it reads the wall
clock and the OS random source and touches the data dir; the decisions are made by
the pure modules (:mod:`.pki`, :mod:`.tokens`, :mod:`.join`, :mod:`.admission`,
:mod:`.record`).  It is the one object the node, the API and :mod:`.apicahost` hold, and
it holds this node's security state; its parts each do one job on that state:

* :mod:`.keystore`   the key files and the state file in the data dir (``keystore``)
* :mod:`.joining`    the join endpoint, sponsoring and introductions (``endpoint``), and this
                     node's own join, key requests and introductions (``joining``)
* :mod:`.recordsync` adopting the Raft state's security record (``record``)
* :mod:`.duties`     the leader's duties and the CA and token rotations (``duties``)

What stays here: the mode decision, cluster creation, admission fed from gossip and the
data dir, the periodic step, the routing mesh's TLS material, views and shutdown.

**Admission.**  A peer's CURVE key is admitted only with a certificate that the
cluster CA signed, for the node id that presents it, valid now and not revoked.
Certificates arrive in the members' gossip metadata (``Meta.cert``: Alive news and
push/pull member states, so a newcomer's certificate travels with the news of the
newcomer), in the Raft state, in a join grant (the sponsor's), in a KeyReply (the
seeds of a restarted node) and from the data dir.  An address is bound to a node by
that node's own authenticated messages (``source_addr``) or by gossip of its
certificate-bearing Alive.  Revoked: the signed list in the Raft state plus every node
``node rm`` removed (the cluster state's ``removed_nodes``, applied on each replica),
so a removed node's traffic is refused as soon as each member applies the removal.
Once a member has applied the security record it admits only certificates the record
holds (or that it granted itself a moment ago): see :mod:`.recordsync`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from typing import Any, Callable

from p2pswarm.consensus.facts import new_cluster_id, stored_cluster_id
from p2pswarm.consensus.requests import command_id
from p2pswarm.consensus.storage import FileStorage
from p2pswarm.membership.messages import LIVE, Alive, Meta
from p2pswarm.node.datadir import DataDir
from p2pswarm.security import autolock
from p2pswarm.security.admission import Admission
from p2pswarm.security.duties import Duties
from p2pswarm.security.errors import CertificateError, SecurityError, TokenError
from p2pswarm.security.join import Sponsor
from p2pswarm.security.joinchannel import JoinServer
from p2pswarm.security.joining import JoinClient, JoinEndpoint, JoinFailed, is_join_message, probe_secure
from p2pswarm.security.keys import CurveKeys, z85_encode
from p2pswarm.security.keystore import CLUSTER_KEY_FILE, CURVE_FILE, Keystore, PeerEntry, inspect
from p2pswarm.security.meshtls import MeshTLS
from p2pswarm.security.pki import (
    CertAuthority,
    NodeIdentity,
    RevocationList,
    TrustBundle,
    fingerprint,
    read_node_certificate,
    seal,
)
from p2pswarm.security.record import TOKEN_CONTEXT, init_command
from p2pswarm.security.recordsync import RecordSync
from p2pswarm.security.secretbox import Keyring
from p2pswarm.security.tokens import JoinToken, TokenState, parse_token

__all__ = ["SecurityHost", "JoinFailed", "inspect", "is_join_message", "probe_secure", "CURVE_FILE",
           "CLUSTER_KEY_FILE"]
"""What the node and the tests import from here (all but SecurityHost live in :mod:`.joining` and :mod:`.keystore`)."""

log = logging.getLogger("p2pswarm.security")

SYNC_INTERVAL = 0.5
"""Seconds between scans of the gossip view and the Raft security record."""
EXPIRE_INTERVAL = 1.0
"""Seconds between expiry checks of admitted certificates."""
PERSIST_INTERVAL = 1.0
"""At most this often the admitted peers' certificates and addresses are written to the state file: a
node killed and restarted must still know its peers' keys, or they could not reach it."""
RETRY_REFUSED_INTERVAL = 60.0
MEMBER_RESCAN = 5.0
"""Seconds at most between two scans of every member's certificate when gossip brought no change and the last
scan found every member admitted (each SYNC_INTERVAL otherwise): at a hundred members a scan is most of what an
idle node's security step costs."""
"""Seconds before a refused certificate is verified again (e.g. one that was not valid yet)."""

NO_TOKEN = ("joining a cluster needs its join token: pass --token P2PS-1-... (print it with "
            "`p2pswarm cluster join-token` on a member); a plaintext cluster started with --insecure is joined "
            "with --insecure")


class SecurityHost:
    def __init__(self, datadir: DataDir, node_id: str, name: str, *,
                 wall: Callable[[], float] = time.time, entropy: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.datadir, self.node_id, self.name = datadir, node_id, name
        self.wall, self.entropy = wall, entropy
        self.mode = "off"
        """``create``, ``join`` or ``restart`` once :meth:`prepare` decided."""
        self.state = "starting"
        """For people: ``joining`` while the handshake runs, ``member`` once the node holds a certificate."""
        self.keys: CurveKeys | None = None
        self.token: JoinToken | None = None
        self.cluster_id: str | None = None
        self.bundle: TrustBundle | None = None
        self.cert = b""
        self.chain: tuple = ()
        self.identity: NodeIdentity | None = None
        self.cluster_key: bytes | None = None
        self.admission: Admission | None = None
        self.sponsor: Sponsor | None = None
        self.ca: CertAuthority | None = None
        self.tokens: TokenState | None = None
        self.signed_revocations: RevocationList | None = None
        self.revocations: RevocationList | None = None
        self.genesis: dict | None = None
        self.join_server: JoinServer | None = None
        self.counters: Counter[str] = Counter()
        self.join_attempts = 0
        self.last_error: str | None = None
        self.meta_changed = False
        """Set when this node's certificate changed (renewal): the node re-announces its metadata."""
        self.token_created = False
        """True on the node that created the cluster in this run (it logs the join token)."""
        self.key_generation = 0
        self.peers_cache: dict[str, PeerEntry] = {}
        """node id -> (certificate, cross chain, addresses) remembered in the data dir."""
        self.refused: dict[str, bytes] = {}
        """node -> the certificate refused last (not verified again until the bundle, the revocations
        or a minute changes: a not-yet-valid certificate becomes valid, an expired one never)."""
        self.dirty = False
        """Set when what the state file holds changed; written at most every PERSIST_INTERVAL."""
        self._next_sync = self._next_expire = 0.0
        self._next_persist = 0.0
        self._next_retry_refused = 0.0
        self._members_seen: tuple[Any, ...] = ()
        """(SWIM's ``changes``, our admission, True) after a scan that left nothing to admit; see ``_sync_members``."""
        self._next_member_scan = 0.0
        self._warned: set[str] = set()
        self.mesh_tls = MeshTLS(node_id)
        self.mesh_tls_version = 0
        """Bumped when the routing mesh's TLS material or the revoked node ids change."""
        self._mesh_revoked: frozenset[str] = frozenset()
        self.keystore = Keystore(datadir)
        self.endpoint = JoinEndpoint(self)
        self.joining = JoinClient(self)
        self.record = RecordSync(self)
        self.duties = Duties(self)
        self.keyring = Keyring(self)
        """The secrets keyring (:mod:`.secretbox`), opened with this node's cluster key."""
        self.proposals = self.duties.proposals
        """The background Raft proposals of the security duties (awaited on close)."""

    # ------------------------------------------------------------ transport callbacks

    def authorize(self, key: bytes) -> bool:
        admission = self.admission
        return admission is not None and admission.authorize(key)

    def peer_key(self, addr: str) -> bytes | None:
        admission = self.admission
        return admission.peer_key(addr) if admission is not None else None

    def identity_of(self, key: bytes | None) -> NodeIdentity | None:
        admission = self.admission
        return admission.identity(key) if admission is not None and key is not None else None

    # ------------------------------------------------------------ start-up

    def prepare(self, peers: tuple[str, ...], token: str | None) -> str:
        """Decide create / join / restart from the data dir and the flags; load or make the CURVE keys.

        Raises one line (SecurityError / DataDirError) for a plaintext data dir, a missing or
        malformed token, or a corrupt or unreadable key file.  Logs nothing (the caller may
        still fail to bind its port, which must stay the only line then).
        """
        what = inspect(self.datadir)
        if what == "plaintext":
            raise SecurityError(f"data dir {self.datadir.path} belongs to a plaintext cluster (started with "
                                f"--insecure): restart it with --insecure, or use a fresh --data-dir for a secure "
                                f"cluster", "plaintext")
        self.keys = self.keystore.load_or_make_keys(self.entropy)
        if what == "member":
            self._load_state()
            self.mode = "restart"
            if token:
                self.counters["token_ignored"] += 1
        elif peers:
            if not token:
                raise SecurityError(NO_TOKEN, "no_token")
            try:
                self.token = parse_token(token)
            except TokenError as exc:
                raise SecurityError(str(exc), exc.code) from None
            self.mode = "join"
        else:
            self.mode = "create"
        return self.mode

    def _load_state(self) -> None:
        assert self.keys is not None
        stored = self.keystore.load(self.keys, self.node_id, self.wall())
        self.cluster_key, self.bundle, self.identity = stored.cluster_key, stored.bundle, stored.identity
        self.cluster_id, self.cert, self.chain = stored.cluster_id, stored.cert, stored.chain
        self.genesis = stored.genesis
        self.peers_cache.update(stored.peers)
        if self.genesis is not None:  # the creator, before the Raft state held its record: unseal from genesis
            self.record.adopt_secrets(self.genesis.get("sealed_ca", b""), self.genesis.get("tokens", b""))

    def create(self, raft_dir: str) -> None:
        """A new cluster: CA, this node's certificate, cluster key, token state, genesis record (saved, 0600)."""
        assert self.keys is not None
        now = self.wall()
        cluster_id = stored_cluster_id(raft_dir) or new_cluster_id()
        ca = CertAuthority.create(cluster_id, now, self.entropy(32), self.entropy(16))
        bundle = TrustBundle(cluster_id, [ca.cert_der])
        cluster_key = self.entropy(32)
        cert = ca.issue(self.node_id, self.name, self.keys.public, now, self.entropy(16))
        tokens = TokenState.create(self.entropy(20), now)
        revocations = RevocationList(cluster_id)
        self.genesis = init_command(
            command_id("security", "init", unique=cluster_id), cluster_id, bundle=bundle.encode(),
            sealed_ca=ca.seal(cluster_key, self.entropy(12)),
            tokens=seal(cluster_key, self.entropy(12), tokens.encode(), TOKEN_CONTEXT), token_generation=1,
            revocations=revocations.sign(ca), revocations_version=0, certs={self.node_id: cert})
        self.cluster_id, self.bundle, self.cert, self.chain = cluster_id, bundle, cert, ()
        self.ca, self.tokens = ca, tokens
        self.identity = bundle.verify(cert, now)
        self.set_cluster_key(cluster_key)
        self.save()
        # the Raft group starts with this cluster id (encrypted with --autolock)
        FileStorage(raft_dir, cluster_id, cipher=autolock.cipher_for(raft_dir)).close()
        self.mode = "restart"

    def set_cluster_key(self, key: bytes) -> None:
        """Use ``key`` from now on and keep it in the data dir (sealed under the data key with autolock)."""
        self.keystore.write_cluster_key(key)
        self.cluster_key = key
        self.record.forget_secrets()
        if self.sponsor is not None:
            self.sponsor.cluster_key = key

    def activate(self) -> None:
        """Start admitting: this node's own certificate and the peers remembered in the data dir."""
        assert self.bundle is not None and self.identity is not None
        now = self.wall()
        self.revocations = self.revocations or RevocationList(self.bundle.cluster_id)
        self.admission = Admission(self.bundle, self.revocations)
        self.admission.admit(self.cert, now, self.chain)
        for node, (cert, chain, addrs) in self.peers_cache.items():
            if node != self.node_id and self.try_admit(node, cert, chain, None, now):
                for addr in addrs:
                    self.admission.bind_addr(addr, node)
        self.make_sponsor()
        self.state = "member"

    def make_sponsor(self) -> None:
        if self.sponsor is not None or self.tokens is None or self.bundle is None or self.revocations is None:
            return
        self.sponsor = Sponsor(self.node_id, self.cert, bundle=self.bundle, tokens=self.tokens,
                               revocations=self.revocations, ca=self.ca, cluster_key=self.cluster_key,
                               known_key=self._known_key)

    def _known_key(self, node: str) -> bytes | None:
        key = self.admission.key_of(node) if self.admission is not None else None
        certs = self.record.certs
        if key is None and node in certs:
            try:
                key = read_node_certificate(certs[node]).curve_public
            except CertificateError:
                key = None
        return key

    def meta(self, meta: Meta) -> Meta:
        """``meta`` with this node's certificate (what the cluster learns our key from)."""
        return Meta(meta.name, meta.labels, meta.capacity, meta.version, meta.started_ms, self.cert, self.chain)

    # ------------------------------------------------------------ joining and the join endpoint (:mod:`.joining`)

    async def start_endpoint(self, bind: str, swim_addr: str) -> None:
        """Serve joins and key requests on the gossip port + 1 (:meth:`.joining.JoinEndpoint.start`)."""
        await self.endpoint.start(bind, swim_addr)

    async def join(self, peers: tuple[str, ...], on_attempt: Callable[[int, str], None] | None = None) -> str:
        """The handshake with the first member that answers (:meth:`.joining.JoinClient.join`)."""
        return await self.joining.join(peers, on_attempt)

    async def learn_keys(self, peers: tuple[str, ...]) -> list[str]:
        """Ask seeds for their certificates; the seeds that answered from another cluster."""
        return await self.joining.learn_keys(peers)

    async def introduce(self, node: str | None, addr: str) -> bool:
        """Tell ``node`` at ``addr`` our certificate and admit the one it answers with."""
        return await self.joining.introduce(node, addr)

    # ------------------------------------------------------------ what arrives

    def observe(self, msg: Any, sender: NodeIdentity) -> None:
        """An authenticated message from ``sender``: its address, and certificates in its news."""
        admission = self.admission
        if admission is None:
            return
        addr = getattr(msg, "source_addr", None)
        if addr is not None and admission.peer_key(addr) != sender.curve_public:
            admission.bind_addr(addr, sender.node_id)
            self.dirty = True
        now = None
        for item in getattr(msg, "news", ()):
            if type(item) is Alive and item.meta.cert:
                now = now or self.wall()
                self._learn(item.node, item.addr, item.meta, now)
        for state in getattr(msg, "members", ()):
            if state.meta.cert and state.status in LIVE:
                now = now or self.wall()
                self._learn(state.node, state.addr, state.meta, now)

    def _learn(self, node: str, addr: str, meta: Meta, now: float) -> bool:
        """Admit ``node``'s certificate unless it is admitted already; True when it was (nothing left to do)."""
        admission = self.admission
        if node == self.node_id or admission is None:
            return True
        current = admission.certificate(node)
        if current is not None and current[0] == meta.cert:
            if admission.peer_key(addr) != admission.key_of(node):
                admission.bind_addr(addr, node)
                self.dirty = True
            return True
        self.try_admit(node, meta.cert, meta.chain, addr, now)
        return False

    @property
    def rekey_pending(self) -> frozenset[str]:
        """Removed nodes whose removal the cluster key, CA and token have not been rotated for yet."""
        return self.record.rekey_pending

    def try_admit(self, node: str, cert: bytes, chain: tuple, addr: str | None, now: float) -> bool:
        if self.admission is None or self.refused.get(node) == cert:
            return False
        if not self.record.recorded(node, cert):
            self.counters["refused_cert_unrecorded"] += 1  # not cached: the record may bring it in a moment
            return False
        try:
            self.admission.admit(cert, now, tuple(chain), addr=addr, expected_node=node)
        except CertificateError as exc:
            self.refused[node] = cert
            self.counters[f"refused_cert_{exc.code}"] += 1
            log.debug("refused the certificate of %s: %s", node, exc)
            return False
        self.dirty = True
        return True

    # ------------------------------------------------------------ periodic work

    def step(self, driver: Any, swim: Any, worker_trust: Any = None) -> None:
        """Called after every loop step; does its work at most every SYNC_INTERVAL seconds.  ``worker_trust``: on
        a worker outside the Raft group, the part of the security record it follows instead of its replica's
        (:mod:`p2pswarm.assignments.trust`)."""
        if self.admission is None:
            return
        now = self.wall()
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_INTERVAL
            for ident in self.admission.expire(now):
                log.warning("the certificate of node %s (%s) expired: its traffic is refused", ident.name,
                            ident.node_id)
        if now >= self._next_sync:
            self._next_sync = now + SYNC_INTERVAL
            if now >= self._next_retry_refused:
                self._next_retry_refused = now + RETRY_REFUSED_INTERVAL
                self.refused.clear()
            self._sync_members(swim, now)
            if worker_trust is not None:
                self.record.sync_worker(worker_trust, now)
            if driver is not None:
                self.duties.driver_hint = driver
                if worker_trust is None:
                    self.record.sync(driver, now)
                self.duties.run(driver, swim, now)
            self._sync_mesh_tls(now)
        if self.dirty and now >= self._next_persist:
            self._next_persist = now + PERSIST_INTERVAL
            self.dirty = False
            self.save(background=True)  # its fsync off the loop: a slow disk must not delay a probe's ack

    def _sync_mesh_tls(self, now: float) -> None:
        revoked = self.revocations.nodes if self.revocations is not None else frozenset()
        if self.mesh_tls.refresh(self.ca, self.bundle, now, self.entropy) or revoked != self._mesh_revoked:
            self._mesh_revoked = revoked
            self.mesh_tls_version += 1

    def mesh_tls_table(self) -> dict[str, Any] | None:
        """The routing mesh's TLS material (PEM) and the revoked node ids, or None before this node
        holds the CA key (then encrypted ports are served only by local replicas)."""
        material = self.mesh_tls.material
        if material is None:
            return None
        return {**material.as_dict(), "revoked": sorted(self._mesh_revoked)}

    def _sync_members(self, swim: Any, now: float) -> None:
        """Admit the live members' certificates; skipped while SWIM's ``changes`` counter stands still and the
        last scan left nothing to admit (at most MEMBER_RESCAN seconds)."""
        seen = (getattr(swim, "changes", None), id(self.admission), True)
        if seen[0] is not None and seen == self._members_seen and now < self._next_member_scan:
            return
        settled = True
        for m in swim.members():
            if m.meta.cert and m.status in LIVE:
                settled = self._learn(m.node, m.addr, m.meta, now) and settled
        self._members_seen = seen if settled else ()
        self._next_member_scan = now + MEMBER_RESCAN

    def warn(self, what: str, message: str) -> None:
        """Log ``message`` once per ``what`` (a record that stays unusable would repeat it every step)."""
        if what not in self._warned:
            self._warned.add(what)
            log.error("%s", message)

    # ------------------------------------------------------------ rotations and the join token (:mod:`.duties`)

    async def rotate_ca(self, driver: Any) -> dict[str, Any]:
        """Begin a CA rotation (:meth:`.duties.Duties.rotate_ca`)."""
        return await self.duties.rotate_ca(driver)

    def ca_view(self, driver: Any, swim: Any) -> dict[str, Any]:
        """The trusted CAs and, during a rotation, the members it still waits for (and why)."""
        return self.duties.ca_view(driver, swim)

    def rotation_pending(self, swim: Any, certs: dict[str, bytes], now: float) -> dict[str, str]:
        """Members (node id -> reason) a CA rotation waits for (:meth:`.duties.Duties.rotation_pending`)."""
        return self.duties.rotation_pending(swim, certs, now)

    def join_token(self) -> dict[str, Any]:
        """The current join token; SecurityError when this node cannot read it (yet)."""
        return self.duties.join_token()

    async def rotate_token(self, driver: Any, ttl: float | None) -> dict[str, Any]:
        """Replace the token secret in the Raft state; the old token no longer admits anyone."""
        return await self.duties.rotate_token(driver, ttl)

    # ------------------------------------------------------------ views, persistence, shutdown

    def view(self) -> dict[str, Any]:
        ident = self.identity
        admitted = self.admission.identities() if self.admission is not None else []
        return {
            "secure": True, "state": self.state, "cluster_id": self.cluster_id,
            "node_key": z85_encode(self.keys.public) if self.keys is not None else None,
            "ca_fingerprint": fingerprint(self.bundle.current) if self.bundle is not None else None,
            "cert": None if ident is None else {"serial": f"{ident.serial:x}", "not_before": ident.not_before,
                                                "not_after": ident.not_after},
            "admitted": [{"id": i.node_id, "name": i.name, "not_after": i.not_after} for i in admitted],
            "revoked_nodes": sorted(self.revocations.nodes) if self.revocations is not None else [],
            "sponsor": self.sponsor is not None and self.ca is not None,
            "join_endpoint": self.join_server.addr if self.join_server is not None else None,
            "token_generation": self.tokens.generation if self.tokens is not None else None,
            "key_generation": self.key_generation, "rekey_pending": sorted(self.rekey_pending),
            "join_attempts": self.join_attempts, "last_error": self.last_error,
            "counters": self.stats(),
        }

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        if self.admission is not None:
            out.update({f"admission_{k}": v for k, v in self.admission.counters.items()})
        if self.sponsor is not None:
            out.update({f"sponsor_{k}": v for k, v in self.sponsor.counters.items()})
        if self.join_server is not None:
            out.update({f"endpoint_{k}": v for k, v in self.join_server.stats().items()})
        return out

    def save(self, background: bool = False) -> None:
        """Write the state file: the admitted peers (or, before admission starts, the remembered ones);
        ``background``: see :meth:`Keystore.save`."""
        if self.bundle is None:
            return
        peers: dict[str, PeerEntry] = {}
        if self.admission is not None:
            for ident in self.admission.identities():
                entry = self.admission.certificate(ident.node_id)
                if entry is not None and ident.node_id != self.node_id:
                    peers[ident.node_id] = (entry[0], tuple(entry[1]), tuple(self.admission.addrs_of(ident.node_id)))
        else:
            peers = dict(self.peers_cache)
        self.keystore.save(self.cluster_id, self.bundle, self.cert, self.chain, peers, self.genesis,
                           background=background)

    async def close(self) -> None:
        await self.proposals.close()
        if self.join_server is not None:
            await self.join_server.close()
            self.join_server = None
        await self.keystore.settle()
        if self.dirty:
            try:
                self.save()
            except Exception:
                log.debug("could not save the security state at shutdown", exc_info=True)
