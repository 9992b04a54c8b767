"""The replicated state machines behind the one Raft log: the KV store and the cluster state.

Each log entry names its machine.  KV commands keep their original form (a msgpack
array ``[client, seq, op, key, ...]``), so logs written before the cluster state
existed apply unchanged; a cluster command is the msgpack map
``{"sm": "cluster", "cmd": {...}}`` (:mod:`p2pswarm.cluster.commands`); a security
command is ``{"sm": "security", "cmd": {...}}`` (:mod:`p2pswarm.security.record`: the
trust bundle, the sealed CA key and join-token state, the signed revocation list, the
issued certificates); an access command is ``{"sm": "access", "cmd": {...}}``
(:mod:`p2pswarm.security.access`: remote clients' certificates, revocations, the audit
log).  Any other map is a no-op on every replica alike.  A snapshot holds all four
machines; a bare KV snapshot (older logs) restores with an empty cluster state, one
without ``security`` or ``access`` with an empty security or access record.

Applying is deterministic (both machines are), and each applied entry yields the
key its writer waits on: ``(client, seq)`` for KV, the command id for the cluster.
"""

from __future__ import annotations

from typing import Any, Hashable

import msgpack

from p2pswarm.cluster.state import ClusterState, Result
from p2pswarm.consensus.kv import KVStore
from p2pswarm.security.access import AccessRecord
from p2pswarm.security.record import SecurityRecord

CLUSTER = "cluster"
SECURITY = "security"
ACCESS = "access"


def encode_cluster(command: dict) -> bytes:
    return msgpack.packb({"sm": CLUSTER, "cmd": command}, use_bin_type=True)


def encode_security(command: dict) -> bytes:
    return msgpack.packb({"sm": SECURITY, "cmd": command}, use_bin_type=True)


def encode_access(command: dict) -> bytes:
    return msgpack.packb({"sm": ACCESS, "cmd": command}, use_bin_type=True)


class StateMachines:
    def __init__(self) -> None:
        self.kv = KVStore()
        self.cluster = ClusterState()
        self.security = SecurityRecord()
        self.access = AccessRecord()

    def apply(self, index: int, term: int, data: bytes) -> tuple[Hashable | None, Any]:
        """Apply one committed normal entry; returns (the waiter's key or None, the result)."""
        try:
            decoded = msgpack.unpackb(data, raw=False)
        except Exception:
            decoded = None
        if isinstance(decoded, dict):
            command = decoded.get("cmd")
            if decoded.get("sm") not in (CLUSTER, SECURITY, ACCESS) or not isinstance(command, dict):
                return None, None
            cid = command.get("id")
            if decoded["sm"] in (SECURITY, ACCESS):
                ok, error = (self.security if decoded["sm"] == SECURITY else self.access).apply(command)
                return (cid if isinstance(cid, str) else None), Result(ok, error)
            try:
                result = self.cluster.apply(command, term, index)
            except (TypeError, KeyError, AttributeError) as exc:  # junk the checks missed: same on every replica
                result = Result(False, f"bad command: {type(exc).__name__}")
            return (cid if isinstance(cid, str) else None), result
        result = self.kv.apply(index, data)
        key = tuple(decoded[:2]) if isinstance(decoded, list) and len(decoded) >= 2 else None
        try:
            hash(key)
        except TypeError:
            key = None
        return key, result

    def snapshot(self) -> bytes:
        data: dict[str, bytes | dict] = {"kv": self.kv.snapshot(), CLUSTER: self.cluster.snapshot()}
        security = self.security.snapshot()
        if security is not None:
            data[SECURITY] = security
        access = self.access.snapshot()
        if access is not None:
            data[ACCESS] = access
        return msgpack.packb(data, use_bin_type=True)

    def restore(self, blob: bytes) -> None:
        """Replace every machine's state in place (readers hold references to them)."""
        data = msgpack.unpackb(blob, raw=False)
        if isinstance(data, dict):
            self.kv.restore(data["kv"])
            self.cluster.restore(data[CLUSTER])
            self.security.restore(data.get(SECURITY))
            self.access.restore(data.get(ACCESS))
        else:
            self.kv.restore(blob)
            self.cluster.__init__()  # type: ignore[misc]
            self.security.restore(None)
            self.access.restore(None)
