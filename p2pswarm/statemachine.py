"""The replicated state machines behind the one Raft log: the KV store and the cluster state.

Each log entry names its machine.  KV commands keep their original form (a msgpack
array ``[client, seq, op, key, ...]``), so logs written before the cluster state
existed apply unchanged; a cluster command is the msgpack map
``{"sm": "cluster", "cmd": {...}}`` (:mod:`p2pswarm.cluster.commands`).  Any other
map is a no-op on every replica alike.  A snapshot holds both machines; a bare KV
snapshot (older logs) restores with an empty cluster state.

Applying is deterministic (both machines are), and each applied entry yields the
key its writer waits on: ``(client, seq)`` for KV, the command id for the cluster.
"""

from __future__ import annotations

from typing import Any, Hashable

import msgpack

from p2pswarm.cluster.state import ClusterState, Result
from p2pswarm.consensus.kv import KVStore

CLUSTER = "cluster"


def encode_cluster(command: dict) -> bytes:
    return msgpack.packb({"sm": CLUSTER, "cmd": command}, use_bin_type=True)


class StateMachines:
    def __init__(self) -> None:
        self.kv = KVStore()
        self.cluster = ClusterState()

    def apply(self, index: int, term: int, data: bytes) -> tuple[Hashable | None, Any]:
        """Apply one committed normal entry; returns (the waiter's key or None, the result)."""
        try:
            decoded = msgpack.unpackb(data, raw=False)
        except Exception:
            decoded = None
        if isinstance(decoded, dict):
            command = decoded.get("cmd")
            if decoded.get("sm") != CLUSTER or not isinstance(command, dict):
                return None, None
            cid = command.get("id")
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
        return msgpack.packb({"kv": self.kv.snapshot(), CLUSTER: self.cluster.snapshot()}, use_bin_type=True)

    def restore(self, blob: bytes) -> None:
        """Replace both machines' state in place (readers hold references to them)."""
        data = msgpack.unpackb(blob, raw=False)
        if isinstance(data, dict):
            self.kv.restore(data["kv"])
            self.cluster.restore(data[CLUSTER])
        else:
            self.kv.restore(blob)
            self.cluster.__init__()  # type: ignore[misc]
