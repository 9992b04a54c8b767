"""The security files of a data dir (``<data-dir>/security/``, 0700, every file 0600).

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

With ``--autolock`` the two key files are sealed under the data key (:mod:`.autolock`).  A
corrupt or unreadable file stops the node with one line (:class:`~p2pswarm.security.errors.KeyFileError`
or :class:`~p2pswarm.node.datadir.DataDirError`); there is no fallback to plaintext.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

import msgpack

from p2pswarm.consensus.facts import stored_cluster_id
from p2pswarm.node.datadir import DataDir
from p2pswarm.security import autolock
from p2pswarm.security.errors import CertificateError, KeyFileError
from p2pswarm.security.keys import (
    CurveKeys,
    format_cluster_key_file,
    format_key_file,
    parse_cluster_key_file,
    parse_key_file,
)
from p2pswarm.security.pki import NodeIdentity, TrustBundle

CURVE_FILE = "curve.key"
CLUSTER_KEY_FILE = "cluster.key"
STATE_FILE = "state"
STATE_VERSION = 1

PeerEntry = tuple[bytes, tuple, tuple]
"""A remembered peer: (certificate, cross chain, addresses)."""

RESTORE_HINT = "; restore the data dir from a backup, or move it away to join again as a new node"


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


log = logging.getLogger("p2pswarm.security")


@dataclass(frozen=True)
class Stored:
    """What a member's data dir holds, checked: its certificate verified against the stored bundle."""

    cluster_id: str
    bundle: TrustBundle
    cert: bytes
    chain: tuple
    identity: NodeIdentity
    cluster_key: bytes
    peers: dict[str, PeerEntry]
    genesis: dict | None


class Keystore:
    """Reads and writes the files above; decides nothing about what they mean for the cluster."""

    def __init__(self, datadir: DataDir) -> None:
        self.datadir = datadir
        self._writing: asyncio.Future | None = None
        """The state file write in flight off the loop (:meth:`save` with ``background``)."""
        self._pending: bytes | None = None
        """The newest state waiting for that write to finish (only the newest is written)."""

    def load_or_make_keys(self, entropy: Callable[[int], bytes]) -> CurveKeys:
        path = self.datadir.security_path / CURVE_FILE
        data = autolock.open_file(self.datadir, CURVE_FILE, self.datadir.read_private(CURVE_FILE))
        if data is not None:
            return parse_key_file(data, f"the key file {path}")
        keys = CurveKeys.from_secret(entropy(32))
        self.datadir.write_private(CURVE_FILE, autolock.seal_file(self.datadir, CURVE_FILE,
                                                                  format_key_file(keys).encode()))
        return keys

    def load(self, keys: CurveKeys, node_id: str, now: float) -> Stored:
        """The state file and the cluster key of a member; KeyFileError (one line) when either is unusable
        or the certificate is not this node's (another node's data dir, or a key file swapped)."""
        path = self.datadir.security_path / STATE_FILE
        data = self.datadir.read_private(STATE_FILE)
        try:
            state = msgpack.unpackb(data or b"", raw=False)
            ok = (isinstance(state, dict) and state.get("v") == STATE_VERSION
                  and isinstance(state.get("cluster_id"), str) and isinstance(state.get("bundle"), bytes)
                  and isinstance(state.get("cert"), bytes) and isinstance(state.get("peers"), dict))
        except Exception:
            ok = False
        if not ok:
            raise KeyFileError(f"the security state {path} is corrupt or truncated{RESTORE_HINT}")
        key_path = self.datadir.security_path / CLUSTER_KEY_FILE
        raw = autolock.open_file(self.datadir, CLUSTER_KEY_FILE, self.datadir.read_private(CLUSTER_KEY_FILE))
        if raw is None:
            raise KeyFileError(f"the cluster key file {key_path} is missing{RESTORE_HINT}")
        cluster_key = parse_cluster_key_file(raw, f"the cluster key file {key_path}")
        try:
            bundle = TrustBundle.decode(state["bundle"])
            chain = tuple(state.get("chain") or ())
            identity = bundle.verify(state["cert"], now, chain=chain, expected_key=keys.public,
                                     expected_node=node_id)
        except CertificateError as exc:
            if exc.code in ("expired", "not_yet_valid", "ca_expired"):
                raise KeyFileError(f"this node's certificate in {path} is not usable: {exc}") from None
            raise KeyFileError(f"the security state {path} does not match this node ({exc}){RESTORE_HINT}") from None
        peers: dict[str, PeerEntry] = {}
        for node, entry in state["peers"].items():
            if isinstance(node, str) and isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], bytes):
                addrs = tuple(a for a in entry[2] or () if isinstance(a, str))
                peers[node] = (entry[0], tuple(entry[1] or ()), addrs)
        genesis = state.get("genesis") if isinstance(state.get("genesis"), dict) else None
        return Stored(state["cluster_id"], bundle, state["cert"], chain, identity, cluster_key, peers, genesis)

    def write_cluster_key(self, key: bytes) -> None:
        """Keep ``key`` in the data dir (sealed under the data key with autolock)."""
        self.datadir.write_private(CLUSTER_KEY_FILE, autolock.seal_file(
            self.datadir, CLUSTER_KEY_FILE, format_cluster_key_file(key).encode()))

    def save(self, cluster_id: str | None, bundle: TrustBundle, cert: bytes, chain: tuple,
             peers: dict[str, PeerEntry], genesis: dict | None, *, background: bool = False) -> None:
        """Write the state file. ``background`` (the node's periodic save, on its loop): encode it here, write
        and fsync it in a thread, one write at a time, so that the loop never waits for the disk; a save
        made meanwhile is written after it (only the newest). :meth:`settle` waits for it."""
        encoded = {n: [c, list(ch), list(a)] for n, (c, ch, a) in peers.items()}
        state = {"v": STATE_VERSION, "cluster_id": cluster_id, "bundle": bundle.encode(), "cert": cert,
                 "chain": list(chain), "peers": encoded, "genesis": genesis}
        payload = msgpack.packb(state, use_bin_type=True)
        if not background:
            self.datadir.write_private(STATE_FILE, payload)
        elif self._writing is not None and not self._writing.done():
            self._pending = payload
        else:
            self._write_in_thread(payload)

    def _write_in_thread(self, payload: bytes) -> None:
        self._writing = asyncio.get_running_loop().run_in_executor(None, self.datadir.write_private, STATE_FILE,
                                                                   payload)
        self._writing.add_done_callback(self._written)

    def _written(self, done: asyncio.Future) -> None:
        if not done.cancelled() and done.exception() is not None:  # the next periodic save tries again
            log.warning("cannot save the security state: %s", done.exception())
        if self._pending is not None:
            payload, self._pending = self._pending, None
            self._write_in_thread(payload)

    async def settle(self) -> None:
        """Wait until the background writes are done (before a final save, which must come last)."""
        while self._writing is not None and not self._writing.done():
            await asyncio.gather(self._writing, return_exceptions=True)
