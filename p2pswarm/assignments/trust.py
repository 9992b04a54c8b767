"""What a worker outside the Raft group needs of the security record to keep talking (pure).

A Raft member adopts the security record as it applies the log (:mod:`p2pswarm.security.recordsync`);
a worker holds no replica, so without this it would keep the trust bundle, cluster key and
revocations it joined with: after a ``node rm`` it would go on admitting the removed node, and
after the rekey it could open no secret sealed under the new cluster key.  :func:`trust_for` cuts
from the member's applied state the part one worker needs, and the assignment protocol carries it:

* the trust bundle (CA rotations), the signed revocation list and the nodes ``node rm`` removed:
  what the worker refuses peers by;
* the worker's own share of the current cluster key and its key generation (a rekey), the CA key
  and join-token state sealed under that key (so it sponsors joins with the current ones, never a
  rotated token), and the removed nodes that rekey shut out (sponsors wait for the rest);
* the worker's own recorded certificate (renewals, re-issues during a CA rotation);
* the access record's checking part (API CA, issued client certificates: see
  :meth:`p2pswarm.security.access.AccessRecord.checking_part`), so a worker serving ``--api-addr``
  admits exactly the remote clients a member admits.

Peers' certificates are not sent (the whole set is the size of the cluster): a worker admits a
peer's certificate from gossip when the bundle verifies it and it is not revoked.

The part travels whole, when its :attr:`WorkerTrust.digest` differs from the one the worker says
it holds (a few kB, and it changes only with the security record or a removal); it rides on the
delta's version, so a lagging member can never roll it back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable

import msgpack

from p2pswarm.security.access import AccessRecord

DIGEST_BYTES = 16


@dataclass(frozen=True)
class WorkerTrust:
    cluster_id: str
    bundle: bytes
    sealed_ca: bytes
    tokens: bytes
    revocations: bytes
    """The revocation list signed by the CA (verified against the bundle by the worker)."""
    removed: tuple[str, ...]
    """Nodes ``node rm`` removed (the cluster state's ``removed_nodes``), sorted: refused at once."""
    rekeyed: tuple[str, ...]
    """Removed nodes the current cluster key shuts out, sorted."""
    key_generation: int
    share: bytes
    """The current cluster key sealed to this worker's CURVE key (b"": none yet)."""
    cert: bytes
    """This worker's certificate as the record holds it (b"": none)."""
    access: bytes = b""
    """The access record's checking part, msgpack (b"": the cluster has none yet)."""

    def fields(self) -> list[Any]:
        return [self.cluster_id, self.bundle, self.sealed_ca, self.tokens, self.revocations, list(self.removed),
                list(self.rekeyed), self.key_generation, self.share, self.cert, self.access]

    def access_record(self) -> AccessRecord | None:
        """The access record this worker checks remote clients by (None: the cluster has none yet)."""
        if not self.access:
            return None
        record = AccessRecord()
        try:
            record.restore(msgpack.unpackb(self.access, raw=False))
        except (ValueError, TypeError):  # a member's bug, not a reason to stop: no record, clients refused
            return None
        return record

    @property
    def digest(self) -> bytes:
        """What the worker tells its member it holds: the member sends the part only when its own differs."""
        return hashlib.blake2b(msgpack.packb(self.fields(), use_bin_type=True), digest_size=DIGEST_BYTES).digest()


def trust_for(record: Any, removed_nodes: Iterable[str], node_id: str,
              access: AccessRecord | None = None) -> WorkerTrust | None:
    """``node_id``'s part of ``record`` (a SecurityRecord), the removed nodes and ``access``'s checking part;
    None before the record is initialised (a plaintext cluster, or a member that has not applied the
    creator's ``init``)."""
    if not record.ready:
        return None
    checking = access.checking_part() if access is not None else None
    return WorkerTrust(record.cluster_id, record.bundle, record.sealed_ca, record.tokens, record.revocations,
                       tuple(sorted(removed_nodes)), tuple(sorted(record.rekeyed)), record.key_generation,
                       record.key_shares.get(node_id, b""), record.certs.get(node_id, b""),
                       b"" if checking is None else msgpack.packb(checking, use_bin_type=True))
