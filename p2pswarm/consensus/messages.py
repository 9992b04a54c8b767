"""Raft wire messages (their kind range: :data:`p2pswarm.wire.KINDS`) and the structures they carry.

Log entries, snapshots and configuration changes are wire structs too, so the
core, the storage and the network all share one strictly checked definition:
an entry that a peer sends and an entry read back from disk pass the same
validation.  Limits bound what one message can make a node allocate.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from p2pswarm.wire import (
    NODE_ID,
    WireError,
    WireStruct,
    blob,
    boolean,
    decode_struct,
    message,
    nested,
    one_of,
    refine,
    seq,
    struct,
    uint,
)

MAX_ENTRIES = 1024
"""Entries in one AppendEntries (config.max_batch_entries must not exceed it)."""
MAX_ENTRY_BYTES = 1024 * 1024
"""Payload of one log entry; larger proposals are refused by the leader."""
MAX_BATCH_BYTES = 3 * 1024 * 1024
"""Entry payload bytes in one AppendEntries; leaves headroom under wire.MAX_MESSAGE_BYTES."""
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
"""Largest state machine image a node stores or assembles from chunks: what a leader can make a
follower buffer (64 × the 4 MiB wire message; the state machine lives in memory anyway)."""
MAX_SNAPSHOT_CHUNK = 2 * 1024 * 1024
"""Snapshot bytes in one InstallSnapshot: half of wire.MAX_MESSAGE_BYTES, the rest is headroom."""
MAX_VOTERS = 9
MAX_LEARNERS = 64

ENTRY_KINDS = ("normal", "config", "noop")
CONF_OPS = ("bootstrap", "add_voter", "add_learner", "promote", "remove")

U64 = uint(64)


@struct
@dataclass(frozen=True, slots=True)
class Entry(WireStruct):
    term: int
    index: int
    kind: str
    data: bytes = b""
    SCHEMA = (("term", U64), ("index", U64), ("kind", one_of(*ENTRY_KINDS)),
              ("data", blob(MAX_ENTRY_BYTES)))


def _entries_in_order(entries: tuple) -> None:
    """Entries of one message: consecutive indexes, non-decreasing terms, bounded bytes."""
    total = 0
    for prev, cur in zip(entries, entries[1:]):
        if cur.index != prev.index + 1 or cur.term < prev.term:
            raise WireError("entries are not consecutive with non-decreasing terms")
    for e in entries:
        total += len(e.data)
    if total > MAX_BATCH_BYTES:
        raise WireError(f"entries carry {total} bytes, over {MAX_BATCH_BYTES}")


_checked_entries = refine(seq(nested(Entry), MAX_ENTRIES), _entries_in_order)


@struct
@dataclass(frozen=True, slots=True)
class ConfState(WireStruct):
    """A configuration: who votes and who only receives the log (sorted, disjoint)."""

    voters: tuple = ()
    learners: tuple = ()
    SCHEMA = (("voters", seq(NODE_ID, MAX_VOTERS)), ("learners", seq(NODE_ID, MAX_LEARNERS)))

    def __post_init__(self) -> None:
        if set(self.voters) & set(self.learners):
            raise WireError("a node is both voter and learner")
        if tuple(sorted(set(self.voters))) != self.voters or tuple(sorted(set(self.learners))) != self.learners:
            raise WireError("voters and learners must be sorted and unique")

    @property
    def members(self) -> tuple:
        return tuple(sorted(self.voters + self.learners))


@struct
@dataclass(frozen=True, slots=True)
class ConfChange(WireStruct):
    """Payload of a config entry: the single-server change and the resulting configuration.

    Carrying the result (not only the delta) makes replay from any point trivially
    idempotent and lets a joining node learn the whole membership from one entry.
    """

    op: str
    node: str
    result: ConfState
    SCHEMA = (("op", one_of(*CONF_OPS)), ("node", NODE_ID), ("result", nested(ConfState)))


def encode_conf(change: ConfChange) -> bytes:
    return msgpack.packb([change.op, change.node, [list(change.result.voters), list(change.result.learners)]],
                         use_bin_type=True)


def decode_conf(data: bytes) -> ConfChange:
    """Decode a config entry's payload; raises WireError on anything malformed."""
    return decode_struct(ConfChange, data, "config change")


@struct
@dataclass(frozen=True, slots=True)
class Snapshot(WireStruct):
    """State machine image at ``index`` (whose entry had ``term``), with the config then in force.

    Stored by storage (checked when read back); it travels as InstallSnapshot chunks."""

    index: int
    term: int
    conf: ConfState
    data: bytes
    SCHEMA = (("index", U64), ("term", U64), ("conf", nested(ConfState)),
              ("data", blob(MAX_SNAPSHOT_BYTES)))


# ------------------------------------------------------------------ messages
# Every message carries the sender's term and id; ``source`` is checked by the
# driver against the authenticated transport identity, never trusted alone.

@message(32)
@dataclass(frozen=True, slots=True)
class AppendEntries(WireStruct):
    term: int
    source: str
    prev_index: int
    prev_term: int
    commit: int
    entries: tuple = ()
    SCHEMA = (("term", U64), ("source", NODE_ID), ("prev_index", U64), ("prev_term", U64),
              ("commit", U64), ("entries", _checked_entries))

    def __post_init__(self) -> None:
        if self.entries and self.entries[0].index != self.prev_index + 1:
            raise WireError("first entry does not follow prev_index")


@message(33)
@dataclass(frozen=True, slots=True)
class AppendResp(WireStruct):
    """``index``: on success the last index now known to match; on reject the prev_index refused.

    A reject also carries a hint: the follower's best guess of the last index that
    could match (its last index, or the end of an earlier term), so the leader skips
    whole conflicting terms instead of one entry per round trip.
    """

    term: int
    source: str
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0
    SCHEMA = (("term", U64), ("source", NODE_ID), ("index", U64), ("reject", boolean),
              ("hint_index", U64), ("hint_term", U64))


@message(34)
@dataclass(frozen=True, slots=True)
class RequestVote(WireStruct):
    """A (pre-)vote request; ``transfer`` marks a campaign started by TimeoutNow (bypasses leases)."""

    term: int
    source: str
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False
    SCHEMA = (("term", U64), ("source", NODE_ID), ("last_index", U64), ("last_term", U64),
              ("pre_vote", boolean), ("transfer", boolean))


@message(35)
@dataclass(frozen=True, slots=True)
class VoteResp(WireStruct):
    term: int
    source: str
    granted: bool
    pre_vote: bool = False
    SCHEMA = (("term", U64), ("source", NODE_ID), ("granted", boolean), ("pre_vote", boolean))


@message(36)
@dataclass(frozen=True, slots=True)
class InstallSnapshot(WireStruct):
    """One chunk of the leader's snapshot (``index``/``snap_term``/``conf``, ``size`` bytes in all):
    ``data`` is its bytes from ``offset``; ``done`` marks the last chunk.  The follower assembles
    the chunks in order and installs the snapshot once it holds all ``size`` bytes."""

    term: int
    source: str
    index: int
    snap_term: int
    conf: ConfState
    size: int
    offset: int
    data: bytes
    done: bool
    SCHEMA = (("term", U64), ("source", NODE_ID), ("index", U64), ("snap_term", U64),
              ("conf", nested(ConfState)), ("size", U64), ("offset", U64),
              ("data", blob(MAX_SNAPSHOT_CHUNK)), ("done", boolean))

    def __post_init__(self) -> None:
        end = self.offset + len(self.data)
        if self.size > MAX_SNAPSHOT_BYTES:
            raise WireError(f"snapshot of {self.size} bytes is over {MAX_SNAPSHOT_BYTES}")
        if end > self.size or (not self.data and self.size):
            raise WireError("snapshot chunk is empty or reaches past the snapshot's size")
        if self.done != (end == self.size):
            raise WireError("snapshot chunk's done flag disagrees with its offset and size")


@message(37)
@dataclass(frozen=True, slots=True)
class SnapshotResp(WireStruct):
    """``index``: where the follower's log surely matches the leader's (its commit index; the
    snapshot's index once installed).

    While chunks are arriving, ``snapshot`` names the snapshot being assembled and ``received``
    how many of its bytes the follower holds, i.e. the offset of the chunk it wants next (0 asks
    the leader to start over); ``snapshot`` is 0 once it is installed or not needed."""

    term: int
    source: str
    index: int
    snapshot: int = 0
    received: int = 0
    SCHEMA = (("term", U64), ("source", NODE_ID), ("index", U64), ("snapshot", U64), ("received", U64))


@message(38)
@dataclass(frozen=True, slots=True)
class Heartbeat(WireStruct):
    """``commit`` is min(follower's match, leader commit), so it never points past a matching entry."""

    term: int
    source: str
    commit: int
    read_seq: int = 0
    SCHEMA = (("term", U64), ("source", NODE_ID), ("commit", U64), ("read_seq", U64))


@message(39)
@dataclass(frozen=True, slots=True)
class HeartbeatResp(WireStruct):
    term: int
    source: str
    read_seq: int = 0
    SCHEMA = (("term", U64), ("source", NODE_ID), ("read_seq", U64))


@message(40)
@dataclass(frozen=True, slots=True)
class TimeoutNow(WireStruct):
    """Leadership transfer: the leader tells an up-to-date voter to campaign at once."""

    term: int
    source: str
    SCHEMA = (("term", U64), ("source", NODE_ID))


@message(41)
@dataclass(frozen=True, slots=True)
class ReadIndexReq(WireStruct):
    """A follower forwards a linearizable read to the leader; ``request`` is the follower's id for it."""

    term: int
    source: str
    request: int
    SCHEMA = (("term", U64), ("source", NODE_ID), ("request", U64))


@message(42)
@dataclass(frozen=True, slots=True)
class ReadIndexResp(WireStruct):
    term: int
    source: str
    request: int
    index: int
    SCHEMA = (("term", U64), ("source", NODE_ID), ("request", U64), ("index", U64))


@message(43)
@dataclass(frozen=True, slots=True)
class Propose(WireStruct):
    """A follower forwards client payloads to the leader (fire and forget: outcomes show in the log)."""

    term: int
    source: str
    data: tuple
    SCHEMA = (("term", U64), ("source", NODE_ID), ("data", seq(blob(MAX_ENTRY_BYTES), 64)))


RAFT_MESSAGES = (AppendEntries, AppendResp, RequestVote, VoteResp, InstallSnapshot, SnapshotResp,
                 Heartbeat, HeartbeatResp, TimeoutNow, ReadIndexReq, ReadIndexResp, Propose)
