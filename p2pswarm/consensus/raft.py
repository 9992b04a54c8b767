"""A pure Raft core following etcd-io/raft's Ready/Advance contract.

The core never touches the clock, the disk or the network.  Every call takes
``now`` (monotonic seconds); randomness comes from the injected ``random.Random``.
The driver loop is::

    node.tick(now) / node.step(now, msg) / node.propose(now, data) / ...
    while node.has_ready():
        rd = node.ready()
        storage.save(rd.hard_state, rd.entries, rd.snapshot)   # durable first
        send(rd.messages)                                       # only then talk
        restore rd.snapshot if it is newer than the state machine; apply rd.committed_entries
        serve rd.read_states once applied >= their index
        node.advance(rd)

Nothing may be fed to the core between ``ready()`` and ``advance()``; that keeps
the hand-off simple and is checked.

Implemented: randomized election timeouts, PreVote, CheckQuorum with leases,
pipelined replication with bounded in-flight appends, the §5.4.2 commit rule,
a no-op entry at the start of each term, snapshots sent in acknowledged chunks (InstallSnapshot;
the follower assembles them in memory, bounded by MAX_SNAPSHOT_BYTES), learners,
single-server membership changes via config entries (in force once appended),
leadership transfer (TimeoutNow) and ReadIndex reads.

:class:`Raft` is the public face: the calls above, the Ready/Advance hand-off, a follower's handling of
its leader's messages, ReadIndex and the configuration.  Two parts are mixed in from sibling modules:
:mod:`.election` (roles, elections, votes) and :mod:`.replication` (the leader's progress bookkeeping,
appends, snapshot chunks, commit and heartbeats).  Import the core's names from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

from p2pswarm.consensus.config import RaftConfig
from p2pswarm.consensus.election import CANDIDATE as CANDIDATE
from p2pswarm.consensus.election import FOLLOWER, LEADER, Election
from p2pswarm.consensus.election import PRE_CANDIDATE as PRE_CANDIDATE
from p2pswarm.consensus.election import quorum_size as quorum_size
from p2pswarm.consensus.log import RaftLog
from p2pswarm.consensus.messages import (
    MAX_ENTRY_BYTES,
    MAX_LEARNERS,
    MAX_VOTERS,
    AppendEntries,
    AppendResp,
    ConfChange,
    ConfState,
    Entry,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    Propose,
    ReadIndexReq,
    ReadIndexResp,
    RequestVote,
    Snapshot,
    SnapshotResp,
    TimeoutNow,
    VoteResp,
    decode_conf,
    encode_conf,
)
from p2pswarm.consensus.progress import Progress
from p2pswarm.consensus.replication import Replication
from p2pswarm.wire import WireError

_FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot)


class RandomSource(Protocol):
    """What the core needs of the injected ``random.Random`` (not imported: the core stays pure)."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Envelope:
    to: str
    msg: Any


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read ``request`` may be served once the state machine applied ``index``."""

    request: int
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    hard_state: HardState | None
    """Persist if not None (it changed)."""
    entries: tuple
    """Append to stable storage; they may replace a stored suffix from entries[0].index on."""
    snapshot: Snapshot | None
    """Persist; if newer than the state machine, restore the state machine from it."""
    messages: tuple
    """Envelopes to send, only after the above is durable."""
    committed_entries: tuple
    """Apply in order."""
    read_states: tuple


class RaftError(Exception):
    """A request the core refuses; the caller decides what to tell its client."""


class NotLeader(RaftError):
    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class ConfChangeRejected(RaftError):
    pass


@dataclass(slots=True)
class _PendingRead:
    request: int
    origin: str | None
    index: int
    seq: int


class _Incoming:
    """A snapshot being received: which one (leader, term, index, term, conf, size) and its bytes so far."""

    __slots__ = ("key", "data")

    def __init__(self, key: tuple) -> None:
        self.key = key
        self.data = bytearray()


class Raft(Election, Replication):
    def __init__(self, node_id: str, config: RaftConfig, rng: RandomSource, now: float, *,
                 hard_state: HardState | None = None, snapshot: Snapshot | None = None,
                 entries: tuple = (), bootstrap: tuple = ()) -> None:
        """Start from what storage holds; ``bootstrap`` voters seed a brand-new cluster.

        Bootstrapping writes the same config entry (term 1, index 1, committed) on every
        founding voter, so the membership is in the log from the very first index and a
        node that joins later learns it by replication like anything else.
        """
        self.id = node_id
        self.cfg = config
        self.rng = rng
        hs = hard_state or HardState()
        fresh = not entries and snapshot is None and hs == HardState()
        if fresh and bootstrap:
            conf = ConfState(tuple(sorted(set(bootstrap))), ())
            first = Entry(1, 1, "config", encode_conf(ConfChange("bootstrap", conf.voters[0], conf)))
            entries, hs = (first,), HardState(1, None, 1)
        self.term, self.vote = hs.term, hs.vote
        self.log = RaftLog(snapshot, entries, hs.commit)
        self._saved_hs = HardState() if fresh else hs
        if fresh:
            self.log.stabled = 0
        self._snapshot = snapshot
        self._unsaved_snapshot: Snapshot | None = None
        self.conf, self.conf_index = ConfState(), 0
        self._refresh_conf()
        self.role = FOLLOWER
        self.lead: str | None = None
        self.msgs: list[Envelope] = []
        self._append_pending_at: float | None = None
        """Set by proposals: their appends go out together at the next ready()."""
        self.read_states: list[ReadState] = []
        self.progress: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.dropped = 0
        self._leader_contact = float("-inf")
        self._term_start = 0
        self._heartbeat_due = self._quorum_due = float("inf")
        self._transferee: str | None = None
        self._transfer_due = float("inf")
        self._reads: list[_PendingRead] = []
        self._reads_waiting: list[_PendingRead] = []
        self._read_seq = 0
        self._read_acks: dict[str, int] = {}
        self._in_ready = False
        self._incoming: _Incoming | None = None
        """The snapshot a leader is sending us, while its chunks arrive."""
        self._reset_election(now)

    # ================================================================ public API

    def tick(self, now: float) -> None:
        self._check_idle()
        if self.role == LEADER:
            self._tick_leader(now)
        elif now >= self._election_due:
            self._reset_election(now)
            if self.promotable():
                self._campaign(now, pre_vote=self.cfg.pre_vote)

    def next_deadline(self) -> float:
        """When ``tick`` next has something to do (drivers may tick more often)."""
        if self.role == LEADER:
            return min(self._heartbeat_due, self._quorum_due, self._transfer_due)
        return self._election_due

    def step(self, now: float, msg: Any) -> None:
        """Handle one validated message from a peer."""
        self._check_idle()
        if msg.source == self.id:
            self.dropped += 1
            return
        if msg.term > self.term:
            if isinstance(msg, RequestVote):
                if not msg.transfer and self._in_lease(now):
                    return  # a leader we trust is alive: do not let this node disrupt it
                if not msg.pre_vote:
                    self._become_follower(now, msg.term, None)
            elif isinstance(msg, VoteResp) and msg.pre_vote and msg.granted:
                pass  # granted for the term we would campaign in, which we have not entered
            else:
                self._become_follower(now, msg.term, msg.source if isinstance(msg, _FROM_LEADER) else None)
        elif msg.term < self.term:
            if isinstance(msg, _FROM_LEADER):
                self._send(msg.source, HeartbeatResp(self.term, self.id))  # tell the stale leader
            elif isinstance(msg, RequestVote) and msg.pre_vote:
                self._send(msg.source, VoteResp(self.term, self.id, False, True))
            return
        handler = self._HANDLERS.get(type(msg))
        if handler is None:
            self.dropped += 1
            return
        handler(self, now, msg)

    def propose(self, now: float, data: bytes) -> tuple[int, int]:
        """Append a client command; returns (index, term) to watch for in committed entries."""
        self._check_idle()
        self._require_leader()
        if len(data) > MAX_ENTRY_BYTES:
            raise ValueError(f"proposal of {len(data)} bytes exceeds {MAX_ENTRY_BYTES}")
        return self._append_local("normal", data, now)

    def propose_conf_change(self, now: float, op: str, node: str) -> tuple[int, int]:
        """One single-server membership change: add_voter, add_learner, promote or remove."""
        self._check_idle()
        self._require_leader()
        if self.log.term(self.log.committed) != self.term:
            raise ConfChangeRejected("the leader has not committed an entry in its term yet")
        if self.conf_index > self.log.committed:
            raise ConfChangeRejected("another membership change is still in progress")
        voters, learners = set(self.conf.voters), set(self.conf.learners)
        known = voters | learners
        if op == "add_voter" and node not in known:
            voters.add(node)
        elif op == "add_learner" and node not in known:
            learners.add(node)
        elif op == "promote" and node in learners:
            learners.discard(node)
            voters.add(node)
        elif op == "remove" and node in known:
            if voters == {node}:
                raise ConfChangeRejected("cannot remove the last voter")
            voters.discard(node)
            learners.discard(node)
        else:
            raise ConfChangeRejected(f"{op} {node} does not apply to voters {sorted(voters)} "
                                     f"and learners {sorted(learners)}")
        if len(voters) > MAX_VOTERS or len(learners) > MAX_LEARNERS:
            raise ConfChangeRejected("too many members")
        result = ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
        return self._append_local("config", encode_conf(ConfChange(op, node, result)), now)

    def transfer_leadership(self, now: float, target: str) -> None:
        """Hand leadership to voter ``target`` once it is caught up (aborts after an election timeout)."""
        self._check_idle()
        if self.role != LEADER:
            raise NotLeader(self.lead)
        if target == self.id:
            return
        if target not in self.conf.voters:
            raise RaftError(f"{target} is not a voter")
        self._transferee, self._transfer_due = target, now + self.cfg.election_timeout
        if self.progress[target].match == self.log.last_index():
            self._send(target, TimeoutNow(self.term, self.id))
        else:
            self._send_append(target, now)

    def read_index(self, now: float, request: int) -> None:
        """Start a linearizable read; a ReadState(request, index) appears in a later Ready."""
        self._check_idle()
        if self.role == LEADER:
            self._leader_read(now, _PendingRead(request, None, 0, 0))
        elif self.lead is not None:
            self._send(self.lead, ReadIndexReq(self.term, self.id, request))
        else:
            raise NotLeader(None)

    def compact(self, now: float, index: int, data: bytes) -> Snapshot | None:
        """The state machine's image ``data`` at applied ``index`` becomes the log's new base."""
        self._check_idle()
        if index <= self.log.snap_index:
            return None
        if index > self.log.applied:
            raise ValueError(f"cannot snapshot at {index}: only {self.log.applied} applied")
        snap = Snapshot(index, self.log.entry(index).term, self._conf_at(index)[0], data)  # (in the log)
        self.log.compact(index, snap.term)
        self._snapshot = self._unsaved_snapshot = snap
        return snap

    def promotable(self) -> bool:
        return self.id in self.conf.voters

    # ---------------------------------------------------------- ready / advance

    def _flush_proposals(self) -> None:
        if self._append_pending_at is not None:
            now, self._append_pending_at = self._append_pending_at, None
            self._bcast_append(now)

    def has_ready(self) -> bool:
        return bool(self.msgs or self.read_states or self._unsaved_snapshot or self._append_pending_at is not None
                    or self.log.stabled < self.log.last_index() or self.log.applied < self.log.committed
                    or self._hard_state() != self._saved_hs)

    def ready(self) -> Ready:
        self._check_idle()
        self._flush_proposals()
        hs = self._hard_state()
        rd = Ready(hard_state=hs if hs != self._saved_hs else None, entries=self.log.unstable(),
                   snapshot=self._unsaved_snapshot, messages=tuple(self.msgs),
                   committed_entries=self.log.to_apply(), read_states=tuple(self.read_states))
        self.msgs, self.read_states = [], []
        self._in_ready = True
        return rd

    def advance(self, rd: Ready) -> None:
        if not self._in_ready:
            raise RuntimeError("advance() without a matching ready()")
        self._in_ready = False
        if rd.hard_state is not None:
            self._saved_hs = rd.hard_state
        if rd.entries:
            self.log.stabled = rd.entries[-1].index
        if rd.snapshot is not None:
            self._unsaved_snapshot = None
        if rd.committed_entries:
            self.log.applied = rd.committed_entries[-1].index

    def status(self, now: float) -> dict:
        st = {"id": self.id, "role": self.role, "term": self.term, "vote": self.vote,
              "leader": self.lead, "commit": self.log.committed, "applied": self.log.applied,
              "last_index": self.log.last_index(), "snapshot_index": self.log.snap_index,
              "voters": list(self.conf.voters), "learners": list(self.conf.learners),
              "transferee": self._transferee, "dropped": self.dropped, "progress": {}}
        if self.role == LEADER:
            st["progress"] = {p: pr.as_dict(now) for p, pr in sorted(self.progress.items()) if p != self.id}
        return st

    # ================================================================ a follower's handlers
    # (votes: election.py; the leader's: replication.py)

    def _heard_from_leader(self, now: float, m: Any) -> None:
        if self.role != FOLLOWER or self.lead != m.source:
            self._become_follower(now, m.term, m.source)
        self._leader_contact = now
        self._reset_election(now)

    def _on_append(self, now: float, m: AppendEntries) -> None:
        self._heard_from_leader(now, m)
        if m.prev_index < self.log.committed:
            self._send(m.source, AppendResp(self.term, self.id, self.log.committed))
            return
        if not all(_valid_conf(e) for e in m.entries):
            self.dropped += 1  # a config entry we could never apply: refuse it, do not crash on it
            return
        before = self.log.last_index()
        last = self.log.maybe_append(m.prev_index, m.prev_term, m.entries)
        if last is None:
            hint_index, hint_term = self.log.conflict_hint(m.prev_index, m.prev_term)
            self._send(m.source, AppendResp(self.term, self.id, m.prev_index, True, hint_index, hint_term))
            return
        if m.entries and (any(e.kind == "config" for e in m.entries) or self.log.last_index() < before
                          or m.entries[0].index <= self.conf_index):
            self._refresh_conf()
        self.log.commit_to(min(m.commit, last))
        self._send(m.source, AppendResp(self.term, self.id, last))

    def _on_heartbeat(self, now: float, m: Heartbeat) -> None:
        self._heard_from_leader(now, m)
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(m.source, HeartbeatResp(self.term, self.id, m.read_seq))

    def _on_snapshot(self, now: float, m: InstallSnapshot) -> None:
        """Assemble the leader's snapshot chunk by chunk; install it once all its bytes are here.

        A chunk that does not continue the assembly (out of order, a duplicate, another snapshot,
        leader or term) changes nothing: the reply names the offset we need, 0 to start over."""
        self._heard_from_leader(now, m)
        if m.index <= self.log.committed:
            self._incoming = None
            self._send(m.source, SnapshotResp(self.term, self.id, self.log.committed))
            return
        if self.log.match_term(m.index, m.snap_term):
            self._incoming = None
            self.log.commit_to(m.index)  # we already hold that prefix: just fast-forward
            self._send(m.source, SnapshotResp(self.term, self.id, m.index))
            return
        key = (m.source, m.term, m.index, m.snap_term, m.conf, m.size)
        inc = self._incoming
        if inc is None or inc.key != key:
            inc = self._incoming = _Incoming(key) if m.offset == 0 else None
        if inc is None or m.offset != len(inc.data):
            self._send(m.source, SnapshotResp(self.term, self.id, self.log.committed, m.index,
                                              len(inc.data) if inc else 0))
            return
        inc.data += m.data
        if len(inc.data) < m.size:
            self._send(m.source, SnapshotResp(self.term, self.id, self.log.committed, m.index, len(inc.data)))
            return
        self._incoming = None
        snap = Snapshot(m.index, m.snap_term, m.conf, bytes(inc.data))
        self.log.restore(snap)
        self._snapshot = self._unsaved_snapshot = snap
        self._refresh_conf()
        self._send(m.source, SnapshotResp(self.term, self.id, snap.index))

    # ================================================================ ReadIndex

    def _on_read_req(self, now: float, m: ReadIndexReq) -> None:
        if self.role != LEADER:
            self.dropped += 1
            return
        self._leader_read(now, _PendingRead(m.request, m.source, 0, 0))

    def _on_read_resp(self, now: float, m: ReadIndexResp) -> None:
        if m.source == self.lead:
            self.read_states.append(ReadState(m.request, m.index))

    def _leader_read(self, now: float, read: _PendingRead) -> None:
        if self.log.term(self.log.committed) != self.term:
            self._reads_waiting.append(read)  # commit index is not yet known to be current
            return
        self._read_seq += 1
        read.index, read.seq = self.log.committed, self._read_seq
        self._reads.append(read)
        self._release_reads()
        if self._reads:
            self._bcast_heartbeat()

    def _release_reads(self) -> None:
        while self._reads:
            read = self._reads[0]
            acks = sum(1 for v in self.conf.voters if v == self.id or self._read_acks.get(v, 0) >= read.seq)
            if acks < self._quorum():
                return
            self._reads.pop(0)
            if read.origin is None:
                self.read_states.append(ReadState(read.request, read.index))
            else:
                self._send(read.origin, ReadIndexResp(self.term, self.id, read.request, read.index))

    # ================================================================ config

    def _refresh_conf(self) -> None:
        """Adopt the latest configuration in the log (in force once appended, committed or not)."""
        self.conf, self.conf_index = self._conf_at(self.log.last_index())

    def _conf_at(self, index: int) -> tuple[ConfState, int]:
        """The configuration in force at ``index`` and the index of the entry that set it."""
        for idx in range(index, self.log.snap_index, -1):
            entry = self.log.entry(idx)
            if entry.kind == "config":
                return decode_conf(entry.data).result, idx
        return (self._snapshot.conf if self._snapshot else ConfState()), self.log.snap_index

    # ================================================================ helpers

    def _send(self, to: str, msg: Any) -> None:
        self.msgs.append(Envelope(to, msg))

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _require_leader(self) -> None:
        if self.role != LEADER:
            raise NotLeader(self.lead)
        if self._transferee is not None:
            raise NotLeader(self._transferee)

    def _check_idle(self) -> None:
        if self._in_ready:
            raise RuntimeError("call advance() before feeding the core again")

    _HANDLERS: ClassVar[dict[type, Callable[[Raft, float, Any], None]]] = {
        RequestVote: Election._on_vote, VoteResp: Election._on_vote_resp, AppendEntries: _on_append,
        AppendResp: Replication._on_append_resp, Heartbeat: _on_heartbeat,
        HeartbeatResp: Replication._on_heartbeat_resp, InstallSnapshot: _on_snapshot,
        SnapshotResp: Replication._on_snapshot_resp, TimeoutNow: Election._on_timeout_now,
        ReadIndexReq: _on_read_req, ReadIndexResp: _on_read_resp, Propose: Replication._on_propose,
    }


def _valid_conf(entry: Entry) -> bool:
    if entry.kind != "config":
        return True
    try:
        decode_conf(entry.data)
    except WireError:
        return False
    return True
