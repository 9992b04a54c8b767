"""The leader's side of the pure Raft core: replicating its log and deciding what is committed.

Split from :mod:`p2pswarm.consensus.raft` because the leader's bookkeeping is a concern of its own:
a :class:`~p2pswarm.consensus.progress.Progress` per follower drives pipelined appends (at most
``max_inflight`` unacknowledged) or a snapshot sent in acknowledged chunks; the answers move the
commit index by the §5.4.2 rule; heartbeats carry the commit and ReadIndex rounds; CheckQuorum steps a
leader down that no longer hears from a quorum.  :class:`Replication` is mixed into
:class:`p2pswarm.consensus.raft.Raft`, so both work on one object; pure like the rest of the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pswarm.consensus.election import LEADER
from p2pswarm.consensus.messages import (
    AppendEntries,
    AppendResp,
    Entry,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    Propose,
    SnapshotResp,
    TimeoutNow,
)
from p2pswarm.consensus.progress import REPLICATE, SNAPSHOT, Progress

if TYPE_CHECKING:
    from p2pswarm.consensus.config import RaftConfig
    from p2pswarm.consensus.log import RaftLog
    from p2pswarm.consensus.messages import ConfState, Snapshot
    from p2pswarm.consensus.raft import _PendingRead


class Replication:
    """The leader's work in :class:`p2pswarm.consensus.raft.Raft` (see the module docstring)."""

    if TYPE_CHECKING:  # what the core provides (set in Raft.__init__ / defined on Raft or its other parts)
        id: str
        cfg: RaftConfig
        term: int
        role: str
        log: RaftLog
        conf: ConfState
        conf_index: int
        progress: dict[str, Progress]
        dropped: int
        _snapshot: Snapshot | None
        _append_pending_at: float | None
        _heartbeat_due: float
        _quorum_due: float
        _transferee: str | None
        _transfer_due: float
        _reads_waiting: list[_PendingRead]
        _read_seq: int
        _read_acks: dict[str, int]

        def _send(self, to: str, msg: Any) -> None: ...
        def _quorum(self) -> int: ...
        def _become_follower(self, now: float, term: int, lead: str | None) -> None: ...
        def _refresh_conf(self) -> None: ...
        def _leader_read(self, now: float, read: _PendingRead) -> None: ...
        def _release_reads(self) -> None: ...

    # ---------------------------------------------------------- followers' answers

    def _on_append_resp(self, now: float, m: AppendResp) -> None:
        pr = self._active_progress(now, m.source)
        if pr is None:
            return
        if m.reject:
            hint = self.log.conflict_hint(m.hint_index, m.hint_term)[0] if m.hint_term else m.hint_index
            if pr.maybe_decrease(m.index, hint):
                if pr.state == REPLICATE:
                    pr.become_probe()
                self._send_append(m.source, now, empty_ok=True)
            return
        if m.index > self.log.last_index():
            self.dropped += 1
            return
        if pr.maybe_update(m.index):
            if pr.state == SNAPSHOT:
                if pr.match >= pr.pending_snapshot:
                    pr.become_probe()
            elif pr.state != REPLICATE:
                pr.become_replicate()
            if self._maybe_commit(now):
                self._bcast_append(now, empty_ok=True)
            if m.source == self._transferee and pr.match == self.log.last_index():
                self._send(m.source, TimeoutNow(self.term, self.id))
        while self.role == LEADER and m.source in self.progress and self._send_append(m.source, now):
            pass

    def _on_snapshot_resp(self, now: float, m: SnapshotResp) -> None:
        pr = self._active_progress(now, m.source)
        if pr is None or pr.state != SNAPSHOT or (snap := pr.sending) is None:  # (set in that state)
            return
        if not m.snapshot and m.index >= snap.index:  # installed (or the follower already had it)
            pr.maybe_update(min(m.index, self.log.last_index()))
            pr.become_probe()
            self._send_append(m.source, now)
            return
        resume = m.snapshot == snap.index and m.received < len(snap.data)
        self._send_snapshot_chunk(m.source, pr, m.received if resume else 0, now)

    def _on_heartbeat_resp(self, now: float, m: HeartbeatResp) -> None:
        pr = self._active_progress(now, m.source)
        if pr is None:
            return
        pr.probe_sent = False
        if pr.state == REPLICATE and pr.paused(self.cfg.max_inflight):
            pr.inflight.popleft()  # an append may be lost: open the window by one
        if pr.state == SNAPSHOT and now - pr.snapshot_sent_at >= self.cfg.election_timeout:
            pr.become_probe()  # the snapshot was probably lost
        if pr.match < self.log.last_index():
            # an empty append at pr.next - 1 either gets acknowledged or refused; a refusal sends
            # the follower back to probing, which repairs appends lost on the way
            self._send_append(m.source, now, empty_ok=True)
        if m.read_seq and m.source in self.conf.voters:
            self._read_acks[m.source] = max(self._read_acks.get(m.source, 0), m.read_seq)
            self._release_reads()

    def _on_propose(self, now: float, m: Propose) -> None:
        if self.role != LEADER or self._transferee is not None:
            self.dropped += 1
            return
        for data in m.data:
            self._append_local("normal", data, now)

    def _active_progress(self, now: float, peer: str) -> Progress | None:
        if self.role != LEADER:
            return None
        pr = self.progress.get(peer)
        if pr is not None:
            pr.recent_active, pr.last_active = True, now
        return pr

    # ---------------------------------------------------------- timers

    def _tick_leader(self, now: float) -> None:
        if now >= self._transfer_due:
            self._transferee, self._transfer_due = None, float("inf")
        if now >= self._quorum_due:
            self._quorum_due = now + self.cfg.election_timeout
            if self.cfg.check_quorum and not self._quorum_active():
                self._become_follower(now, self.term, None)
                return
        if now >= self._heartbeat_due:
            self._heartbeat_due = now + self.cfg.heartbeat_interval
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = sum(1 for v in self.conf.voters
                     if v == self.id or (v in self.progress and self.progress[v].recent_active))
        for peer, pr in self.progress.items():
            pr.recent_active = peer == self.id
        return active >= self._quorum()

    # ---------------------------------------------------------- sending

    def _peers(self) -> list[str]:
        return [p for p in self.conf.members if p != self.id]

    def _bcast_heartbeat(self) -> None:
        for peer in self._peers():
            commit = min(self.progress[peer].match, self.log.committed)
            self._send(peer, Heartbeat(self.term, self.id, commit, self._read_seq))

    def _bcast_append(self, now: float, empty_ok: bool = False) -> None:
        if self.role != LEADER:
            return
        for peer in self._peers():
            self._send_append(peer, now, empty_ok)

    def _send_append(self, peer: str, now: float, empty_ok: bool = False) -> bool:
        """Send the next append (or a snapshot) to ``peer`` if flow control allows; True if sent."""
        pr = self.progress[peer]
        if pr.paused(self.cfg.max_inflight):
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            assert self._snapshot is not None, "entries before the log's start are in the snapshot"
            pr.become_snapshot(self._snapshot, now)
            self._send_snapshot_chunk(peer, pr, 0, now)
            return True
        entries = self.log.slice(pr.next, self.cfg.max_batch_entries, self.cfg.max_batch_bytes)
        if not entries and not empty_ok:
            return False
        self._send(peer, AppendEntries(self.term, self.id, prev, prev_term, self.log.committed, entries))
        pr.sent(entries[-1].index if entries else None)
        return bool(entries)

    def _send_snapshot_chunk(self, peer: str, pr: Progress, offset: int, now: float) -> None:
        """Send the chunk of ``pr.sending`` at ``offset``; the follower's answer asks for the next one."""
        snap = pr.sending
        assert snap is not None, "a snapshot chunk is only sent in the snapshot state"
        size = len(snap.data)
        end = min(size, offset + self.cfg.snapshot_chunk_bytes)
        pr.snapshot_sent_at = now
        self._send(peer, InstallSnapshot(self.term, self.id, snap.index, snap.term, snap.conf, size, offset,
                                         snap.data[offset:end], end == size))

    # ---------------------------------------------------------- the log and the commit index

    def _append_local(self, kind: str, data: bytes, now: float) -> tuple[int, int]:
        entry = Entry(self.term, self.log.last_index() + 1, kind, data)
        self.log.append((entry,))
        if kind == "config":
            self._refresh_conf()
            self._sync_progress(now)
        self.progress[self.id].maybe_update(entry.index)
        self._maybe_commit(now)
        if kind == "normal":
            # Group proposals: one append per follower at the next ready() carries them all.
            self._append_pending_at = now
        else:
            self._bcast_append(now)
        return entry.index, entry.term

    def _maybe_commit(self, now: float) -> bool:
        voters = self.conf.voters
        if not voters:
            return False
        matches = sorted((self.progress[v].match if v in self.progress else 0 for v in voters), reverse=True)
        index = matches[self._quorum() - 1]
        if index <= self.log.committed or not self._commit_term_ok(index):
            return False
        self.log.commit_to(index)
        self._after_commit(now)
        return True

    def _commit_term_ok(self, index: int) -> bool:
        """§5.4.2: only entries of the current term are committed by counting replicas."""
        return self.log.term(index) == self.term

    def _after_commit(self, now: float) -> None:
        if self._reads_waiting and self.log.term(self.log.committed) == self.term:
            waiting, self._reads_waiting = self._reads_waiting, []
            for read in waiting:
                self._leader_read(now, read)
        if self.id not in self.conf.voters and self.conf_index <= self.log.committed:
            self._bcast_append(now, empty_ok=True)  # let the others learn the commit first
            self._become_follower(now, self.term, None)  # our removal is committed: step aside

    def _sync_progress(self, now: float) -> None:
        """Track exactly the members of the configuration now in force (it changed)."""
        members = set(self.conf.members)
        for peer in list(self.progress):
            if peer not in members and peer != self.id:
                del self.progress[peer]
        for peer in self.conf.members:
            if peer not in self.progress:
                self.progress[peer] = Progress(self.log.last_index() + 1)
        if self._transferee is not None and self._transferee not in self.conf.voters:
            self._transferee, self._transfer_due = None, float("inf")
