"""The node's security edge: key files, admission, the join endpoint and handshake, the security record.

``node/daemon.py`` owns one :class:`SecurityHost` in a secure cluster (the default; ``up
--insecure`` runs without).  It is an I/O edge like the transport: it reads the wall
clock and the OS random source and touches the data dir; the decisions are made by
the pure modules (:mod:`.pki`, :mod:`.tokens`, :mod:`.join`, :mod:`.admission`,
:mod:`.record`).

**Key material in the data dir** (``<data-dir>/security/``, 0700, every file 0600):

* ``curve.key``    this node's CURVE key pair (X25519).  Written *before* a join asks
                   for a certificate, so a retried half-finished join presents the same key.
* ``cluster.key``  the 32-byte cluster key.  It unseals the CA key and the join-token
                   state kept in the Raft state; a sponsor hands it to each new member,
                   sealed with the token secret.
* ``state``        msgpack: cluster id, trust bundle, this node's certificate (and cross
                   chain), the certificates of the peers it admitted (so that a restarted
                   node admits its peers before anyone has gossiped to it), and, on the
                   node that created the cluster, the *genesis* security record until the
                   Raft state holds it.

A corrupt or unreadable file stops the node with one line (:class:`~p2pswarm.security.errors.KeyFileError`
or :class:`~p2pswarm.node.datadir.DataDirError`); there is no fallback to plaintext.

**Who sponsors.**  Every member whose Raft replica holds the security record and who
has the cluster key (that is every member, once it has applied the record) unseals
the CA key and serves joins on its join endpoint (gossip port + 1).  A joiner can thus
use any member as ``--peers``; no request is forwarded to the leader.  A sponsor admits
the new certificate at once and records it in the Raft state (``cert`` command).

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
holds (or that it granted itself a moment ago): a certificate minted with a stolen CA key
is refused even while that CA is trusted.

**After ``node rm``** the leader rotates the cluster key, the CA and the join token in one
entry (:mod:`.rekey`); each member opens its share of the new key with its CURVE key.
Joins are answered ``busy`` until that entry is applied.

**Introductions.**  A member admits a newcomer's key once gossip brings it the
newcomer's certificate; until then it refuses the newcomer's connections (and a
refused ZeroMQ socket silently queues what is sent to it).  So for a while after it
joined (or restarted), a node *introduces* itself to each member it sees: it sends its
certificate (a KeyReply, kind 68) to that member's join endpoint; the member admits it
if the CA signed it for exactly the CURVE key of that connection (which the CURVE
handshake proved the newcomer holds) and answers with its own.  This is what gossip
would deliver a moment later, not a new trust path.

**Leader duties** (the Raft leader only): put the genesis record into the Raft state
(any node holding it proposes it), sign a new revocation list when ``node rm`` removed
a node, and re-issue certificates due for renewal (after 2/3 of their 90 days); a node
adopts its own renewed certificate from the Raft state and re-announces its metadata.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from typing import Any, Callable

import msgpack

from p2pswarm import wire
from p2pswarm.consensus.storage import FileStorage
from p2pswarm.node.datadir import DataDir
from p2pswarm.membership.messages import Alive, Meta
from p2pswarm.consensus.facts import new_cluster_id, stored_cluster_id
from p2pswarm.security import autolock
from p2pswarm.security.admission import Admission
from p2pswarm.security.errors import CertificateError, JoinError, KeyFileError, SecurityError, TokenError
from p2pswarm.security.join import (PROTOCOL_MAX, PROTOCOL_MIN, SPONSOR_ENTROPY, Joiner, JoinResult, Sponsor,
                                    verify_key_reply)
from p2pswarm.security.joinchannel import JOIN_PORT_OFFSET, JoinServer, exchange, join_addr
from p2pswarm.security.keys import (CurveKeys, format_cluster_key_file, format_key_file, parse_cluster_key_file,
                                    parse_key_file, z85_encode)
from p2pswarm.security.meshtls import MeshTLS
from p2pswarm.security.messages import JOIN_MESSAGES, JoinGrant, JoinRefused, JoinRequest, KeyReply, KeyRequest
from p2pswarm.security.pki import (CertAuthority, NodeIdentity, RevocationList, TrustBundle, cert_digest, fingerprint,
                                   finish_rotation, read_node_certificate, rotate_ca, seal, unseal)
from p2pswarm.security.proposals import Proposals
from p2pswarm.security.record import TOKEN_CONTEXT, init_command
from p2pswarm.security.rekey import SHARES_PER_COMMAND, missing_shares, open_share, rekey_command, shares_for
from p2pswarm.security.tokens import JoinToken, TokenState, parse_token
from p2pswarm.transport.base import TransportError
from p2pswarm.transport.zmq import format_addr, parse_addr

log = logging.getLogger("p2pswarm.security")

CURVE_FILE = "curve.key"
CLUSTER_KEY_FILE = "cluster.key"
STATE_FILE = "state"
STATE_VERSION = 1

ATTEMPT_TIMEOUT = 3.0
"""Seconds a joiner waits for one join endpoint's answer per attempt."""
KEY_REQUEST_TIMEOUT = 2.0
"""Seconds a restarted node waits for a seed's certificate (KeyRequest)."""
JOIN_RETRY_INITIAL = 0.5
JOIN_RETRY_MAX = 8.0
"""Backoff between join rounds while no join endpoint answers (the node keeps trying, like SWIM's join)."""
RETRYABLE = frozenset({"unavailable", "busy", "replay", "no_answer", "bad_reply"})
"""Join outcomes worth another try (elsewhere or later); every other refusal stops the node with one line."""
SYNC_INTERVAL = 0.5
"""Seconds between scans of the gossip view and the Raft security record."""
EXPIRE_INTERVAL = 1.0
"""Seconds between expiry checks of admitted certificates."""
PERSIST_INTERVAL = 1.0
"""At most this often the admitted peers' certificates and addresses are written to the state file: a
node killed and restarted must still know its peers' keys, or they could not reach it."""
RENEW_CHECK_INTERVAL = 60.0
"""Seconds between the leader's scans for certificates due for renewal."""
RETRY_REFUSED_INTERVAL = 60.0
"""Seconds before a refused certificate is verified again (e.g. one that was not valid yet)."""
MAX_GRANTED = 1024
"""Certificates a sponsor remembers having granted until the Raft state records them."""
MAX_ISSUER_CACHE = 1024
"""Certificates whose issuer a rotation remembers (the cache starts over when full)."""

NO_TOKEN = ("joining a cluster needs its join token: pass --token P2PS-1-... (print it with "
            "`p2pswarm cluster join-token` on a member); a plaintext cluster started with --insecure is joined "
            "with --insecure")


class JoinFailed(SecurityError):
    """The join was refused for good (wrong token, other cluster, clock, revoked...): one line, the node stops."""

    code = "join"


def inspect(datadir: DataDir) -> str:
    """What a data dir is: ``member`` (holds a certificate), ``pending`` (a key, no certificate yet),
    ``plaintext`` (a Raft log without any key material: a member of an --insecure cluster) or ``fresh``."""
    if datadir.has_private(STATE_FILE):
        return "member"
    if datadir.has_private(CURVE_FILE):
        return "pending"
    if stored_cluster_id(str(datadir.path / "raft")) is not None:
        return "plaintext"
    return "fresh"


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
        self._peers_cache: dict[str, tuple[bytes, tuple, tuple]] = {}
        """node id -> (certificate, cross chain, addresses) remembered in the data dir."""
        self._record_certs: dict[str, bytes] = {}
        self._record_seen = -1
        self._removed_seen: frozenset[str] = frozenset()
        self._sealed_ca_seen = b""
        self._ca_opened = False
        """True when ``self.ca`` was unsealed from the record's current ``sealed_ca`` (our cluster key is current)."""
        self._tokens_seen = b""
        self._share_seen = b""
        self._rekeyed: frozenset[str] = frozenset()
        """Removed nodes the record's current cluster key shuts out (:mod:`.rekey`)."""
        self.key_generation = 0
        self._granted: dict[str, bytes] = {}
        """node -> the certificate this node granted it, admitted before the Raft state records it."""
        self._refused: dict[str, bytes] = {}
        """node -> the certificate refused last (not verified again until the bundle, the revocations
        or a minute changes: a not-yet-valid certificate becomes valid, an expired one never)."""
        self._next_sync = self._next_expire = self._next_renew = 0.0
        self._next_persist = 0.0
        self._next_retry_refused = 0.0
        self._dirty = False
        self.proposals = Proposals("security command", lambda driver, cmd, timeout: driver.write_security(
            cmd, timeout=timeout))
        self._warned: set[str] = set()
        self._issuers: dict[tuple[bytes, bytes], bytes] = {}
        self.mesh_tls = MeshTLS(node_id)
        self.mesh_tls_version = 0
        """Bumped when the routing mesh's TLS material or the revoked node ids change."""
        self._mesh_revoked: frozenset[str] = frozenset()

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
        self.keys = self._load_or_make_keys()
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

    def _load_or_make_keys(self) -> CurveKeys:
        path = self.datadir.security_path / CURVE_FILE
        data = autolock.open_file(self.datadir, CURVE_FILE, self.datadir.read_private(CURVE_FILE))
        if data is not None:
            return parse_key_file(data, f"the key file {path}")
        keys = CurveKeys.from_secret(self.entropy(32))
        self.datadir.write_private(CURVE_FILE, autolock.seal_file(self.datadir, CURVE_FILE,
                                                                  format_key_file(keys).encode()))
        return keys

    def _load_state(self) -> None:
        path = self.datadir.security_path / STATE_FILE
        data = self.datadir.read_private(STATE_FILE)
        hint = "; restore the data dir from a backup, or move it away to join again as a new node"
        try:
            state = msgpack.unpackb(data or b"", raw=False)
            ok = (isinstance(state, dict) and state.get("v") == STATE_VERSION
                  and isinstance(state.get("cluster_id"), str) and isinstance(state.get("bundle"), bytes)
                  and isinstance(state.get("cert"), bytes) and isinstance(state.get("peers"), dict))
        except Exception:
            ok = False
        if not ok:
            raise KeyFileError(f"the security state {path} is corrupt or truncated{hint}")
        key_path = self.datadir.security_path / CLUSTER_KEY_FILE
        raw = autolock.open_file(self.datadir, CLUSTER_KEY_FILE, self.datadir.read_private(CLUSTER_KEY_FILE))
        if raw is None:
            raise KeyFileError(f"the cluster key file {key_path} is missing{hint}")
        self.cluster_key = parse_cluster_key_file(raw, f"the cluster key file {key_path}")
        try:
            self.bundle = TrustBundle.decode(state["bundle"])
            chain = tuple(state.get("chain") or ())
            self.identity = self.bundle.verify(state["cert"], self.wall(), chain=chain, expected_key=self.keys.public,
                                               expected_node=self.node_id)
        except CertificateError as exc:
            if exc.code in ("expired", "not_yet_valid", "ca_expired"):
                raise KeyFileError(f"this node's certificate in {path} is not usable: {exc}") from None
            raise KeyFileError(f"the security state {path} does not match this node ({exc}){hint}") from None
        self.cluster_id, self.cert, self.chain = state["cluster_id"], state["cert"], chain
        self.genesis = state.get("genesis") if isinstance(state.get("genesis"), dict) else None
        for node, entry in state["peers"].items():
            if isinstance(node, str) and isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], bytes):
                addrs = tuple(a for a in entry[2] or () if isinstance(a, str))
                self._peers_cache[node] = (entry[0], tuple(entry[1] or ()), addrs)
        if self.genesis is not None:  # the creator, before the Raft state held its record: unseal from genesis
            self._adopt_secrets(self.genesis.get("sealed_ca", b""), self.genesis.get("tokens", b""))

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
            f"security.init.{cluster_id}", cluster_id, bundle=bundle.encode(),
            sealed_ca=ca.seal(cluster_key, self.entropy(12)),
            tokens=seal(cluster_key, self.entropy(12), tokens.encode(), TOKEN_CONTEXT), token_generation=1,
            revocations=revocations.sign(ca), revocations_version=0, certs={self.node_id: cert})
        self.cluster_id, self.bundle, self.cert, self.chain = cluster_id, bundle, cert, ()
        self.ca, self.tokens = ca, tokens
        self.identity = bundle.verify(cert, now)
        self._set_cluster_key(cluster_key)
        self._save()
        # the Raft group starts with this cluster id (encrypted with --autolock)
        FileStorage(raft_dir, cluster_id, cipher=autolock.cipher_for(raft_dir)).close()
        self.mode = "restart"

    def _set_cluster_key(self, key: bytes) -> None:
        """Use ``key`` from now on and keep it in the data dir (sealed under the data key with autolock)."""
        self.datadir.write_private(CLUSTER_KEY_FILE, autolock.seal_file(
            self.datadir, CLUSTER_KEY_FILE, format_cluster_key_file(key).encode()))
        self.cluster_key = key
        self._sealed_ca_seen = self._tokens_seen = b""  # unseal the record's secrets again with it
        if self.sponsor is not None:
            self.sponsor.cluster_key = key

    def activate(self) -> None:
        """Start admitting: this node's own certificate and the peers remembered in the data dir."""
        assert self.bundle is not None and self.identity is not None
        now = self.wall()
        self.revocations = self.revocations or RevocationList(self.bundle.cluster_id)
        self.admission = Admission(self.bundle, self.revocations)
        self.admission.admit(self.cert, now, self.chain)
        for node, (cert, chain, addrs) in self._peers_cache.items():
            if node != self.node_id and self._try_admit(node, cert, chain, None, now):
                for addr in addrs:
                    self.admission.bind_addr(addr, node)
        self._make_sponsor()
        self.state = "member"

    def _make_sponsor(self) -> None:
        if self.sponsor is not None or self.tokens is None or self.bundle is None or self.revocations is None:
            return
        self.sponsor = Sponsor(self.node_id, self.cert, bundle=self.bundle, tokens=self.tokens,
                               revocations=self.revocations, ca=self.ca, cluster_key=self.cluster_key,
                               known_key=self._known_key)

    def _known_key(self, node: str) -> bytes | None:
        key = self.admission.key_of(node) if self.admission is not None else None
        if key is None and node in self._record_certs:
            try:
                key = read_node_certificate(self._record_certs[node]).curve_public
            except CertificateError:
                key = None
        return key

    def meta(self, meta: Meta) -> Meta:
        """``meta`` with this node's certificate (what the cluster learns our key from)."""
        return Meta(meta.name, meta.labels, meta.capacity, meta.version, meta.started_ms, self.cert, self.chain)

    # ------------------------------------------------------------ the join endpoint

    async def start_endpoint(self, bind: str, swim_addr: str) -> None:
        """Serve joins and key requests on the gossip port + 1 of ``bind`` (its port, or the one the
        transport got for port 0; peers use the advertised port + 1, which NAT must map here)."""
        local = parse_addr(bind, allow_port_zero=True)
        real = parse_addr(swim_addr)
        if local is None or real is None:
            raise TransportError(f"cannot place the join endpoint next to {swim_addr!r}")
        addr = format_addr(local[0], (local[1] or real[1]) + JOIN_PORT_OFFSET)
        server = JoinServer(addr, self._handle_join)
        try:
            await server.start()
        except TransportError as exc:
            raise TransportError(f"{exc} (the join endpoint is the gossip port + {JOIN_PORT_OFFSET}: pick a --bind "
                                 f"port whose next port is free)") from None
        self.join_server = server

    def _handle_join(self, data: bytes, key: bytes) -> bytes | None:
        try:
            msg = wire.decode(data)
        except wire.WireError:
            self.counters["join_wire_errors"] += 1
            return None
        now = self.wall()
        if isinstance(msg, KeyReply):
            return wire.encode(self._introduction(msg, key, now))
        sponsor = self.sponsor
        if sponsor is None:
            if isinstance(msg, KeyRequest) and self.bundle is not None and self.cert:
                if msg.ca_digest not in self.bundle.digests:
                    return wire.encode(self._refusal(msg.nonce, "other_cluster", now))
                return wire.encode(KeyReply(msg.nonce, self.cert, (*self.bundle.roots, *self.bundle.cross)))
            nonce = getattr(msg, "nonce", bytes(16))
            return wire.encode(self._refusal(nonce if isinstance(nonce, bytes) and len(nonce) == 16 else bytes(16),
                                             "unavailable", now))
        if isinstance(msg, JoinRequest) and self.rekey_pending:
            self.counters["join_busy_rekey"] += 1  # the old token may be in a removed node's hands
            return wire.encode(self._refusal(msg.nonce, "busy", now))
        reply = sponsor.handle(msg, key, now, self.entropy(SPONSOR_ENTROPY))
        if isinstance(reply, JoinGrant) and isinstance(msg, JoinRequest):
            log.info("granted a certificate to node %s (%s)", msg.name, msg.node_id)
            if len(self._granted) >= MAX_GRANTED:
                self._granted.clear()
            self._granted[msg.node_id] = reply.node_cert
            self._try_admit(msg.node_id, reply.node_cert, self.chain, None, now)
            self._want_cert_recorded(msg.node_id, reply.node_cert)
        elif isinstance(reply, JoinRefused) and isinstance(msg, JoinRequest):
            log.warning("refused a join by node %s (%s): %s", msg.name, msg.node_id, reply.code)
        return wire.encode(reply)

    def _introduction(self, msg: KeyReply, key: bytes, now: float) -> Any:
        """A member introduces itself: admit its certificate if it is for the key of this connection."""
        if self.admission is None or self.bundle is None:
            return self._refusal(msg.nonce, "unavailable", now)
        try:
            ident = self.bundle.verify(msg.node_cert, now, revocations=self.revocations, chain=msg.chain,
                                       expected_key=key)
        except CertificateError as exc:
            self.counters[f"introduction_refused_{exc.code}"] += 1
            code = {"revoked": "revoked", "wrong_ca": "other_cluster", "wrong_cluster": "other_cluster",
                    "key_mismatch": "key_mismatch"}.get(exc.code, "bad_request")
            return self._refusal(msg.nonce, code, now)
        self._try_admit(ident.node_id, msg.node_cert, msg.chain, None, now)
        self.counters["introductions"] += 1
        return KeyReply(msg.nonce, self.cert, self.chain)

    async def introduce(self, node: str | None, addr: str) -> bool:
        """Tell ``node`` (at gossip address ``addr``; None: whoever is there, e.g. a seed) our certificate;
        admit the one it answers with."""
        jaddr = join_addr(addr)
        if jaddr is None or self.keys is None or not self.cert:
            return False
        nonce = self.entropy(16)
        try:
            reply = await exchange(jaddr, self.keys, KeyReply(nonce, self.cert, self.chain),
                                   timeout=KEY_REQUEST_TIMEOUT)
        except JoinError as exc:
            self.counters[f"introduce_{exc.code}"] += 1
            return False
        if not isinstance(reply, KeyReply) or reply.nonce != nonce:
            self.counters["introduce_refused"] += 1
            return False
        if node is None:
            try:
                node = read_node_certificate(reply.node_cert).node_id
            except CertificateError:
                self.counters["introduce_refused"] += 1
                return False
        self._try_admit(node, reply.node_cert, reply.chain, addr, self.wall())
        self.counters["introduced"] += 1
        return True

    @staticmethod
    def _refusal(nonce: bytes, code: str, now: float) -> JoinRefused:
        return JoinRefused(nonce, code, PROTOCOL_MIN, PROTOCOL_MAX, max(0, int(now * 1000)))

    # ------------------------------------------------------------ joining

    async def join(self, peers: tuple[str, ...], on_attempt: Callable[[int, str], None] | None = None) -> str:
        """The handshake with the first member that answers; retried with backoff while none does.

        Returns the peer that sponsored us.  Raises :class:`JoinFailed` (one line) when a member
        refuses for good (wrong, rotated, expired or other cluster's token, clock, revoked...).
        """
        assert self.keys is not None and self.token is not None
        self.state = "joining"
        delay = JOIN_RETRY_INITIAL
        while True:
            self.join_attempts += 1
            for peer in peers:
                result = await self._join_once(peer)
                if result is not None:
                    self._adopt_grant(result, peer)
                    self.last_error = None
                    return peer
            if on_attempt is not None:
                on_attempt(self.join_attempts, self.last_error or "no answer")
            await asyncio.sleep(delay)
            delay = min(delay * 2, JOIN_RETRY_MAX)

    async def _join_once(self, peer: str) -> JoinResult | None:
        addr = join_addr(peer)
        if addr is None:
            raise JoinFailed(f"cannot join via {peer!r}: no join endpoint next to it (expected host:port)")
        keys = self.keys
        assert keys is not None and self.token is not None
        joiner = Joiner(self.token, self.node_id, self.name, keys)
        try:
            reply = await exchange(addr, keys, joiner.request(self.wall(), self.entropy(16)), timeout=ATTEMPT_TIMEOUT)
            return joiner.handle(reply, self.wall())
        except JoinError as exc:
            self.counters[f"join_{exc.code}"] += 1
            if exc.code == "no_answer":
                self.last_error = (f"no answer from the join endpoint {addr} (the gossip port + {JOIN_PORT_OFFSET}) "
                                   f"within {ATTEMPT_TIMEOUT:g} s; is a member of the token's cluster running at "
                                   f"{peer}? (a plaintext cluster, started with --insecure, has none: join it with "
                                   f"--insecure)")
            else:
                self.last_error = f"{peer}: {exc}"
            if exc.code in RETRYABLE:
                return None
            raise JoinFailed(f"cannot join via {peer}: {exc}", exc.code) from None

    def _adopt_grant(self, result: JoinResult, peer: str) -> None:
        if result.cluster_key is None:
            raise JoinFailed(f"the sponsor at {peer} did not share the cluster key; run the same p2pswarm version "
                             f"as the cluster", "bad_grant")
        self.cluster_id, self.bundle, self.cert = result.cluster_id, result.bundle, result.cert
        self.chain, self.identity = result.chain, result.identity
        self._peers_cache[result.sponsor.node_id] = (result.sponsor_cert, result.chain, (peer,))
        self._set_cluster_key(result.cluster_key)
        self._save()
        self.activate()
        assert self.admission is not None
        self.admission.bind_addr(peer, result.sponsor.node_id)
        log.info("joined secure cluster %s: certificate from %s (%s), CA %s", result.cluster_id,
                 result.sponsor.name, result.sponsor.node_id, fingerprint(self.bundle.current)[:23])

    async def learn_keys(self, peers: tuple[str, ...]) -> list[str]:
        """Ask seeds whose key we do not know for their certificate (a restart with --peers,
        or seeds this node never talked to).  Returns the seeds that answered from another
        cluster (their CA is not ours)."""
        assert self.admission is not None and self.bundle is not None and self.keys is not None
        unknown = [p for p in peers if join_addr(p) is not None and self.admission.peer_key(p) is None]
        answers = await asyncio.gather(*(self._key_request(p) for p in unknown))
        return [peer for peer, answer in zip(unknown, answers) if answer == "other_cluster"]

    async def _key_request(self, peer: str) -> str:
        """Ask ``peer``'s join endpoint for its certificate and admit it; the outcome (``ok`` or a code)."""
        assert self.bundle is not None and self.keys is not None
        nonce = self.entropy(16)
        try:
            reply = await exchange(join_addr(peer), self.keys,  # type: ignore[arg-type]
                                   KeyRequest(cert_digest(self.bundle.current), nonce), timeout=KEY_REQUEST_TIMEOUT)
            ident = verify_key_reply(reply, nonce, self.bundle, self.wall(), revocations=self.revocations)
        except JoinError as exc:
            self.counters[f"key_request_{exc.code}"] += 1
            return exc.code
        self._try_admit(ident.node_id, reply.node_cert, reply.chain, peer, self.wall())
        return "ok"

    # ------------------------------------------------------------ what arrives

    def observe(self, msg: Any, sender: NodeIdentity) -> None:
        """An authenticated message from ``sender``: its address, and certificates in its news."""
        admission = self.admission
        if admission is None:
            return
        addr = getattr(msg, "source_addr", None)
        if addr is not None and admission.peer_key(addr) != sender.curve_public:
            admission.bind_addr(addr, sender.node_id)
            self._dirty = True
        now = None
        for item in getattr(msg, "news", ()):
            if type(item) is Alive and item.meta.cert:
                now = now or self.wall()
                self._learn(item.node, item.addr, item.meta, now)
        for state in getattr(msg, "members", ()):
            if state.meta.cert and state.status in ("alive", "suspect"):
                now = now or self.wall()
                self._learn(state.node, state.addr, state.meta, now)

    def _learn(self, node: str, addr: str, meta: Meta, now: float) -> None:
        admission = self.admission
        if node == self.node_id or admission is None:
            return
        current = admission.certificate(node)
        if current is not None and current[0] == meta.cert:
            if admission.peer_key(addr) != admission.key_of(node):
                admission.bind_addr(addr, node)
                self._dirty = True
            return
        self._try_admit(node, meta.cert, meta.chain, addr, now)

    @property
    def rekey_pending(self) -> frozenset[str]:
        """Removed nodes whose removal the cluster key, CA and token have not been rotated for yet."""
        return self._removed_seen - self._rekeyed

    def _recorded(self, node: str, cert: bytes) -> bool:
        """Whether ``cert`` may be admitted for ``node``: once this node has applied the security record,
        only a certificate the Raft state records (or that this node granted a moment ago) is, so a
        certificate minted outside the cluster's own paths (by a removed node that knew the CA key)
        is never admitted.  Before that (a restart, a joiner) gossip and the data dir must do."""
        return self._record_seen < 0 or self._record_certs.get(node) == cert or self._granted.get(node) == cert

    def _try_admit(self, node: str, cert: bytes, chain: tuple, addr: str | None, now: float) -> bool:
        if self.admission is None or self._refused.get(node) == cert:
            return False
        if not self._recorded(node, cert):
            self.counters["refused_cert_unrecorded"] += 1  # not cached: the record may bring it in a moment
            return False
        try:
            self.admission.admit(cert, now, tuple(chain), addr=addr, expected_node=node)
        except CertificateError as exc:
            self._refused[node] = cert
            self.counters[f"refused_cert_{exc.code}"] += 1
            log.debug("refused the certificate of %s: %s", node, exc)
            return False
        self._dirty = True
        return True

    # ------------------------------------------------------------ periodic work

    def step(self, driver: Any, swim: Any) -> None:
        """Called after every loop step; does its work at most every SYNC_INTERVAL seconds."""
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
                self._refused.clear()
            self._sync_members(swim, now)
            if driver is not None:
                self._driver_hint = driver
                self._sync_record(driver, now)
                self._duties(driver, swim, now)
            self._sync_mesh_tls(now)
        if self._dirty and now >= self._next_persist:
            self._next_persist = now + PERSIST_INTERVAL
            self._dirty = False
            self._save()

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
        for m in swim.members():
            if m.meta.cert and m.status in ("alive", "suspect"):
                self._learn(m.node, m.addr, m.meta, now)

    def _sync_record(self, driver: Any, now: float) -> None:
        rec = driver.security
        removed = frozenset(driver.cluster.removed_nodes)
        changed = rec.version != self._record_seen
        revocations_changed = False
        if changed and rec.ready:
            self._record_seen = rec.version
            if rec.cluster_id != self.cluster_id:
                self._warn("cluster", f"the Raft state's security record is for cluster {rec.cluster_id}, this "
                                      f"node's certificate for {self.cluster_id}: ignoring the record")
                return
            if self.genesis is not None:
                self.genesis = None
                self._dirty = True
            self._adopt_bundle(rec.bundle, now)
            self._adopt_share(rec)
            self._adopt_secrets(rec.sealed_ca, rec.tokens)
            if rec.revocations and self.bundle is not None:
                try:
                    signed = RevocationList.verify_signed(rec.revocations, self.bundle)
                    revocations_changed = signed != self.signed_revocations
                    self.signed_revocations = signed
                except CertificateError as exc:
                    self._warn("revocations", f"the revocation list in the Raft state is not usable: {exc}")
            self._record_certs = dict(rec.certs)
            self._granted = {n: c for n, c in self._granted.items() if n not in rec.certs}
            for node, cert in rec.certs.items():
                if node == self.node_id:
                    self._adopt_own_cert(cert, now)
                elif (self.admission.certificate(node) or (b"",))[0] != cert:  # type: ignore[union-attr]
                    # new, renewed or re-issued by a rotated CA: admitting it now means the end of
                    # a rotation (which drops old-CA certificates above) never cuts a member off
                    self._try_admit(node, cert, self.chain, None, now)
            self._make_sponsor()
        if revocations_changed or removed != self._removed_seen:
            self._removed_seen = removed
            self._apply_revocations(removed)

    def _adopt_bundle(self, encoded: bytes, now: float) -> None:
        if self.bundle is not None and encoded == self.bundle.encode():
            return
        try:
            bundle = TrustBundle.decode(encoded)
        except CertificateError as exc:
            self._warn("bundle", f"the trust bundle in the Raft state is not usable: {exc}")
            return
        self.bundle = bundle
        self._refused.clear()
        if self.chain != bundle.cross:  # present our certificate with the cross certificate while rotating
            self.chain = bundle.cross
            self.meta_changed = True
        if self.admission is not None:
            for ident in self.admission.set_bundle(bundle, now):
                log.warning("node %s (%s) is no longer trusted by the new CA bundle", ident.name, ident.node_id)
        if self.sponsor is not None:
            self.sponsor.bundle = bundle
        self._dirty = True

    def _adopt_secrets(self, sealed_ca: bytes, sealed_tokens: bytes) -> None:
        if self.cluster_key is None or self.bundle is None:
            return
        if sealed_ca and sealed_ca != self._sealed_ca_seen:
            self._sealed_ca_seen = sealed_ca
            self._ca_opened = False
            try:
                self.ca = CertAuthority.unseal(self.bundle.current, sealed_ca, self.cluster_key)
                self._ca_opened = True
            except (KeyFileError, CertificateError) as exc:
                self._warn("ca", f"cannot unseal the CA key, this node cannot sponsor joins: {exc}")
        if sealed_tokens and sealed_tokens != self._tokens_seen:
            self._tokens_seen = sealed_tokens
            try:
                self.tokens = TokenState.decode(unseal(self.cluster_key, sealed_tokens, TOKEN_CONTEXT,
                                                       "the join-token state"))
            except (KeyFileError, TokenError) as exc:
                self._warn("tokens", f"cannot read the join-token state, this node cannot sponsor joins: {exc}")
        if self.sponsor is not None:
            self.sponsor.ca, self.sponsor.tokens = self.ca, self.tokens or self.sponsor.tokens

    def _adopt_share(self, rec: Any) -> None:
        """After a rekey: open this node's share of the new cluster key and use that key from now on."""
        self._rekeyed = rec.rekeyed
        share = rec.key_shares.get(self.node_id)
        if share is None or share == self._share_seen or self.keys is None:
            return
        self._share_seen = share
        try:
            key = open_share(self.keys, share)
        except KeyFileError as exc:
            self._warn("share", f"cannot open this node's share of the new cluster key, it cannot sponsor joins: "
                                f"{exc}")
            return
        self.key_generation = rec.key_generation
        if key != self.cluster_key:
            self._set_cluster_key(key)
            log.info("now using cluster key generation %d (rotated after node rm)", rec.key_generation)

    def _adopt_own_cert(self, cert: bytes, now: float) -> None:
        if cert == self.cert or self.bundle is None or self.keys is None:
            return
        try:
            ident = self.bundle.verify(cert, now, expected_key=self.keys.public, expected_node=self.node_id)
        except CertificateError:
            return  # e.g. an older one, or issued for a key this data dir no longer has
        current = cert_digest(self.bundle.current)
        rotated = self.identity is not None and self.identity.issuer != current and ident.issuer == current
        if self.identity is not None and ident.not_after <= self.identity.not_after and not rotated:
            return
        self.cert, self.identity = cert, ident
        if self.sponsor is not None:
            self.sponsor.cert = cert
        self.admission.admit(cert, now, self.chain)  # type: ignore[union-attr]
        self.meta_changed = True
        self._dirty = True
        log.info("renewed this node's certificate (valid until %s)", time.strftime(
            "%Y-%m-%d", time.gmtime(ident.not_after)))

    def _apply_revocations(self, removed: frozenset[str]) -> None:
        if self.admission is None or self.bundle is None:
            return
        base = self.signed_revocations or RevocationList(self.bundle.cluster_id)
        effective = RevocationList(base.cluster_id, base.version, base.serials, base.nodes | removed)
        for ident in self.admission.set_revocations(effective):
            log.warning("node %s (%s) was removed: its certificate is revoked and its traffic refused",
                        ident.name, ident.node_id)
            self.counters["revoked_peers"] += 1
            self._dirty = True
        self.revocations = self.admission.revocations
        self._refused.clear()
        self._peers_cache = {n: c for n, c in self._peers_cache.items() if n not in self.revocations.nodes}
        if self.sponsor is not None:
            self.sponsor.revocations = self.revocations

    def _duties(self, driver: Any, swim: Any, now: float) -> None:
        rec = driver.security
        if not rec.ready:
            if self.genesis is not None:
                self.proposals.propose(driver, "init", dict(self.genesis))
            return
        if driver.raft.role != "leader" or self.ca is None:
            return
        self._rekey_duties(driver, rec, now)
        base = self.signed_revocations or RevocationList(rec.cluster_id)
        missing = self._removed_seen - base.nodes
        if missing and not self.proposals.busy("revocations"):
            new = base.revoke(nodes=missing)
            self.proposals.propose(driver, "revocations", {
                "id": f"security.rl.{secrets.token_hex(6)}", "op": "revocations", "signed": new.sign(self.ca),
                "version": new.version})
        self._record_unrecorded(driver, rec)
        if now >= self._next_renew:
            self._next_renew = now + RENEW_CHECK_INTERVAL
            self._renew_due(driver, rec, now)
        if self.bundle is not None and len(self.bundle.roots) > 1:
            self._rotation_duties(driver, swim, rec, now)

    def _rekey_duties(self, driver: Any, rec: Any, now: float) -> None:
        """Leader: shut removed nodes out (new cluster key, CA and token: :mod:`.rekey`), and give a share of
        the current key to every member that has none (it joined while a rekey was being committed)."""
        if not self._ca_opened or self.cluster_key is None or self.bundle is None or self.tokens is None:
            return  # our cluster key is not the record's current one (yet): another leader's job, or later
        removed = self._removed_seen
        if removed - rec.rekeyed and len(self.bundle.roots) == 1 and not self.proposals.busy("rekey"):
            cmd, _ = rekey_command(f"security.rekey.{secrets.token_hex(6)}", ca=self.ca, bundle=self.bundle,
                                   tokens=self.tokens, certs=rec.certs, removed=removed,
                                   key_generation=rec.key_generation, ca_generation=rec.ca_generation, now=now,
                                   entropy=self.entropy)
            names = ", ".join(sorted(removed - rec.rekeyed))
            log.warning("rotating the cluster key, the CA and the join token: node(s) %s were removed", names)
            self.proposals.propose(driver, "rekey", cmd)
            return
        if rec.key_generation and not self.proposals.busy("key_shares"):
            missing = missing_shares(rec.certs, rec.key_shares, removed)[:SHARES_PER_COMMAND]
            if missing:
                shares = shares_for({n: rec.certs[n] for n in missing}, self.cluster_key, self.entropy)
                self.proposals.propose(driver, "key_shares", {"id": f"security.shares.{secrets.token_hex(6)}",
                                                              "op": "key_shares", "key_generation": rec.key_generation,
                                                              "shares": shares})

    def _record_unrecorded(self, driver: Any, rec: Any) -> None:
        """Leader: record the certificate of every admitted member the Raft state lacks (a sponsor's own
        proposal can be lost), since renewal and CA rotation work from the recorded certificates."""
        assert self.admission is not None
        for ident in self.admission.identities():
            node = ident.node_id
            if node not in rec.certs and node not in self._removed_seen and not self.proposals.busy(f"cert:{node}"):
                entry = self.admission.certificate(node)
                if entry is not None:
                    self._want_cert_recorded(node, entry[0], driver)

    def _renew_due(self, driver: Any, rec: Any, now: float) -> None:
        assert self.ca is not None
        for node, cert in sorted(rec.certs.items()):
            if node in self._removed_seen or self.proposals.busy(f"cert:{node}"):
                continue
            try:
                ident = read_node_certificate(cert)
            except CertificateError:
                continue
            if ident.needs_renewal(now):
                new = self.ca.renew(ident, now, self.entropy(16))
                log.info("renewing the certificate of node %s (%s)", ident.name, node)
                self._want_cert_recorded(node, new, driver)

    # ------------------------------------------------------------ CA rotation

    async def rotate_ca(self, driver: Any) -> dict[str, Any]:
        """Begin a CA rotation: a new CA cross-signed by the current one goes into the Raft state.

        The leader then re-issues every member's certificate from the new CA and, once every
        member presents its new certificate, drops the old CA (:meth:`_rotation_duties`).
        """
        if driver is None or not driver.security.ready or self.ca is None or self.bundle is None \
                or self.cluster_key is None:
            raise SecurityError("this node cannot rotate the CA yet (it has not applied the cluster's security "
                                "record); retry in a moment or run it on another member", "unavailable")
        if len(self.bundle.roots) > 1:
            raise SecurityError("a CA rotation is already in progress: `p2pswarm cluster ca` shows which nodes it "
                                "waits for", "conflict")
        new_ca, bundle = rotate_ca(self.ca, self.bundle, self.wall(), self.entropy(32), self.entropy(16),
                                   self.entropy(16))
        result = await driver.write_security({
            "id": f"security.ca.{secrets.token_hex(6)}", "op": "ca", "bundle": bundle.encode(),
            "sealed_ca": new_ca.seal(self.cluster_key, self.entropy(12)),
            "generation": driver.security.ca_generation + 1})
        if not result.ok:
            raise SecurityError(result.error, "conflict")
        log.warning("CA rotation started: new CA %s; every member's certificate is being re-issued",
                    fingerprint(new_ca.cert_der))
        self._sync_record(driver, self.wall())  # applied here once the write returned: adopt it now
        return self.ca_view(driver, None)

    def ca_view(self, driver: Any, swim: Any) -> dict[str, Any]:
        """The trusted CAs and, during a rotation, the members it still waits for (and why)."""
        if self.bundle is None:
            raise SecurityError("this node does not hold the cluster's CA bundle yet; retry in a moment",
                                "unavailable")
        rec = driver.security if driver is not None else None
        rotating = len(self.bundle.roots) > 1
        pending: dict[str, str] = {}
        if rotating and rec is not None and rec.ready:
            pending = self.rotation_pending(swim, rec.certs, self.wall())
        return {"ca_fingerprint": fingerprint(self.bundle.current),
                "trusted": [fingerprint(r) for r in self.bundle.roots],
                "generation": rec.ca_generation if rec is not None else None,
                "rotating": rotating, "pending": pending,
                "members": len(rec.certs) - len(set(rec.certs) & self._removed_seen) if rec is not None else None,
                "token": self.join_token()["token"] if self.tokens is not None else None}

    def rotation_pending(self, swim: Any, certs: dict[str, bytes], now: float) -> dict[str, str]:
        """Members (node id -> reason) a rotation waits for: ``reissue`` (its certificate in the Raft state
        is from the old CA), ``adopting`` (it has not yet presented the new one in gossip) or ``down``.

        A member that is down blocks the end of a rotation: dropping the old CA then would lock it out
        for good.  ``node rm`` a node that will not come back.
        """
        assert self.bundle is not None
        current = cert_digest(self.bundle.current)
        presented: dict[str, tuple[str, bytes]] = {}
        if swim is not None:
            presented = {m.node: (m.status, m.meta.cert) for m in swim.members()}
        pending = {}
        for node, cert in certs.items():
            if node in self._removed_seen:
                continue
            if self._issuer_of(cert, now) != current:
                pending[node] = "reissue"
                continue
            if node == self.node_id:
                status, shown = "alive", self.cert
            else:
                status, shown = presented.get(node, ("dead", b""))
            if status not in ("alive", "suspect"):
                pending[node] = "down"
            elif self._issuer_of(shown, now) != current:
                pending[node] = "adopting"
        return pending

    def _issuer_of(self, cert: bytes, now: float) -> bytes:
        """Digest of the root that signed ``cert`` (b"" if none of ours did); cached per certificate."""
        assert self.bundle is not None
        key = (cert, self.bundle.current)
        if key not in self._issuers:
            if len(self._issuers) >= MAX_ISSUER_CACHE:
                self._issuers.clear()
            try:
                self._issuers[key] = self.bundle.verify(cert, now).issuer if cert else b""
            except CertificateError:
                self._issuers[key] = b""
        return self._issuers[key]

    def _rotation_duties(self, driver: Any, swim: Any, rec: Any, now: float) -> None:
        """Leader, during a rotation: re-issue old-CA certificates; end the rotation when none is left."""
        assert self.bundle is not None
        if self.ca is None or self.ca.digest != cert_digest(self.bundle.current):
            return  # the new CA key is not unsealed here yet
        if RevocationList.signer(rec.revocations) != self.ca.digest and not self.proposals.busy("revocations"):
            base = self.signed_revocations or RevocationList(rec.cluster_id)
            resigned = RevocationList(base.cluster_id, max(base.version, rec.revocations_version) + 1, base.serials,
                                      base.nodes | self._removed_seen)
            self.proposals.propose(driver, "revocations", {
                "id": f"security.rl.{secrets.token_hex(6)}", "op": "revocations", "signed": resigned.sign(self.ca),
                "version": resigned.version})
        pending = self.rotation_pending(swim, rec.certs, now)
        for node, why in sorted(pending.items()):
            if why == "reissue" and not self.proposals.busy(f"cert:{node}"):
                try:
                    ident = read_node_certificate(rec.certs[node])
                except CertificateError:
                    continue
                log.info("CA rotation: re-issuing the certificate of node %s (%s)", ident.name, node)
                self._want_cert_recorded(node, self.ca.renew(ident, now, self.entropy(16)), driver)
        if not pending and RevocationList.signer(rec.revocations) == self.ca.digest:
            log.warning("CA rotation finished: every member holds a certificate from CA %s; the old CA is no "
                        "longer trusted", fingerprint(self.bundle.current))
            self.proposals.propose(driver, "ca", {"id": f"security.ca.{secrets.token_hex(6)}", "op": "ca",
                                                  "bundle": finish_rotation(self.bundle).encode(),
                                                  "generation": rec.ca_generation + 1})

    def _want_cert_recorded(self, node: str, cert: bytes, driver: Any = None) -> None:
        driver = driver or self._driver_hint
        if driver is not None:
            self.proposals.propose(driver, f"cert:{node}", {"id": f"security.cert.{secrets.token_hex(6)}",
                                                            "op": "cert", "node": node, "cert": cert})

    _driver_hint: Any = None
    """The node's Raft driver, for proposals made outside step() (after a grant)."""

    def _warn(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.error("%s", message)

    # ------------------------------------------------------------ the join token (API)

    def join_token(self) -> dict[str, Any]:
        """The current join token; SecurityError when this node cannot read it (yet)."""
        if self.tokens is None or self.bundle is None:
            raise SecurityError("this node cannot read the join token yet (it has not applied the cluster's "
                                "security record); retry in a moment or ask another member", "unavailable")
        digest = cert_digest(self.bundle.current)
        return {"token": str(self.tokens.token(digest)), "generation": self.tokens.generation,
                "expires_at": self.tokens.expires_at, "ca_fingerprint": fingerprint(self.bundle.current)}

    async def rotate_token(self, driver: Any, ttl: float | None) -> dict[str, Any]:
        """Replace the token secret in the Raft state; the old token no longer admits anyone."""
        if driver is None or not driver.security.ready or self.tokens is None or self.cluster_key is None:
            raise SecurityError("this node cannot rotate the join token yet (it has not applied the cluster's "
                                "security record); retry in a moment or run it on another member", "unavailable")
        new = self.tokens.rotate(self.entropy(20), self.wall(), ttl)
        sealed = seal(self.cluster_key, self.entropy(12), new.encode(), TOKEN_CONTEXT)
        result = await driver.write_security({"id": f"security.token.{secrets.token_hex(6)}", "op": "tokens",
                                              "sealed": sealed, "generation": new.generation})
        if not result.ok:
            raise SecurityError(result.error, "conflict")
        self._adopt_secrets(b"", sealed)
        log.warning("the join token was rotated (generation %d): the old one no longer admits new nodes",
                    new.generation)
        return self.join_token()

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

    def _save(self) -> None:
        if self.bundle is None:
            return
        peers: dict[str, list] = {}
        if self.admission is not None:
            for ident in self.admission.identities():
                entry = self.admission.certificate(ident.node_id)
                if entry is not None and ident.node_id != self.node_id:
                    peers[ident.node_id] = [entry[0], list(entry[1]), self.admission.addrs_of(ident.node_id)]
        else:
            peers = {n: [c, list(ch), list(a)] for n, (c, ch, a) in self._peers_cache.items()}
        state = {"v": STATE_VERSION, "cluster_id": self.cluster_id, "bundle": self.bundle.encode(), "cert": self.cert,
                 "chain": list(self.chain), "peers": peers, "genesis": self.genesis}
        self.datadir.write_private(STATE_FILE, msgpack.packb(state, use_bin_type=True))

    async def close(self) -> None:
        await self.proposals.close()
        if self.join_server is not None:
            await self.join_server.close()
            self.join_server = None
        if self._dirty:
            try:
                self._save()
            except Exception:
                log.debug("could not save the security state at shutdown", exc_info=True)


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
