"""A tiny replicated key/value state machine: the first thing that runs on Raft.

Commands are msgpack arrays ``[client, seq, op, key, *args]`` with op one of put,
get, cas, delete.  Applying is deterministic (no clock, no randomness, sorted
snapshots) so every replica that applies the same log holds the same bytes.

Exactly-once: a client retrying a command through another node may get it into
the log twice.  Each client numbers its commands; the store remembers the last
sequence number and result per client and answers a duplicate from that memory
instead of applying it again (Raft thesis §6.3).  The memory is part of the
snapshot, so it survives compaction.
"""

from __future__ import annotations

from typing import Any

import msgpack

OPS = ("put", "get", "cas", "delete")


def encode_command(client: int, seq: int, op: str, key: str, *args: Any) -> bytes:
    if op not in OPS:
        raise ValueError(f"unknown kv op {op!r}")
    return msgpack.packb([client, seq, op, key, *args], use_bin_type=True)


class KVStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sessions: dict[int, tuple[int, Any]] = {}
        self.applied = 0

    def apply(self, index: int, payload: bytes) -> Any:
        """Apply the committed command at ``index``; returns its result (None for junk)."""
        self.applied = index
        try:
            client, seq, op, key, *args = msgpack.unpackb(payload, raw=False)
        except Exception:
            return None  # a malformed command is a no-op on every replica alike
        last = self.sessions.get(client)
        if last is not None and seq <= last[0]:
            return last[1] if seq == last[0] else None
        result = self._execute(op, key, args)
        self.sessions[client] = (seq, result)
        return result

    def _execute(self, op: str, key: str, args: list) -> Any:
        if op == "put" and len(args) == 1:
            self.data[key] = args[0]
            return True
        if op == "get" and not args:
            return self.data.get(key)
        if op == "cas" and len(args) == 2:
            if self.data.get(key) != args[0]:
                return False
            if args[1] is None:
                self.data.pop(key, None)
            else:
                self.data[key] = args[1]
            return True
        if op == "delete" and not args:
            return self.data.pop(key, None) is not None
        return None

    def get(self, key: str) -> Any:
        """A local read: linearizable only after a ReadIndex round and applied >= its index."""
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return msgpack.packb([self.applied, sorted(self.data.items()), sorted(self.sessions.items())],
                             use_bin_type=True)

    def restore(self, blob: bytes) -> None:
        applied, data, sessions = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        self.applied = applied
        self.data = {k: v for k, v in data}
        self.sessions = {c: (s, r) for c, (s, r) in sessions}
