"""The roles of the pure Raft core and how a node moves between them: elections and votes.

Split from :mod:`p2pswarm.consensus.raft` because who leads is a concern of its own: randomized
election timeouts, PreVote (a node that cannot win does not bump the term), the CheckQuorum lease
(a node that hears from a live leader ignores a disruptive candidate), vote counting and the
TimeoutNow of a leadership transfer.  :class:`Election` is mixed into
:class:`p2pswarm.consensus.raft.Raft`, so both work on one object; pure like the rest of the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pswarm.consensus.messages import RequestVote, TimeoutNow, VoteResp
from p2pswarm.consensus.progress import Progress

if TYPE_CHECKING:
    from p2pswarm.consensus.config import RaftConfig
    from p2pswarm.consensus.log import RaftLog
    from p2pswarm.consensus.messages import ConfState
    from p2pswarm.consensus.raft import RandomSource, _Incoming, _PendingRead

FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER = "follower", "pre_candidate", "candidate", "leader"


def quorum_size(voters: int) -> int:
    """Votes (or acknowledgements) that make a quorum of ``voters``: a strict majority, ⌊n / 2⌋ + 1, so any
    two quorums share a voter; n - quorum_size(n) = ⌊(n - 1) / 2⌋ voters may fail."""
    return voters // 2 + 1


class Election:
    """Roles, elections and votes of :class:`p2pswarm.consensus.raft.Raft` (see the module docstring)."""

    if TYPE_CHECKING:  # what the core provides (set in Raft.__init__ / defined on Raft or its other parts)
        id: str
        cfg: RaftConfig
        rng: RandomSource
        term: int
        vote: str | None
        role: str
        lead: str | None
        log: RaftLog
        conf: ConfState
        progress: dict[str, Progress]
        votes: dict[str, bool]
        _leader_contact: float
        _term_start: int
        _heartbeat_due: float
        _quorum_due: float
        _transferee: str | None
        _transfer_due: float
        _reads: list[_PendingRead]
        _reads_waiting: list[_PendingRead]
        _read_acks: dict[str, int]
        _incoming: _Incoming | None

        def promotable(self) -> bool: ...
        def _send(self, to: str, msg: Any) -> None: ...
        def _append_local(self, kind: str, data: bytes, now: float) -> tuple[int, int]: ...

    def _reset_election(self, now: float) -> None:
        self._election_due = now + self.cfg.election_timeout * (1.0 + self.rng.random())

    def _in_lease(self, now: float) -> bool:
        if not self.cfg.check_quorum or self.lead is None:
            return False
        return self.role == LEADER or now - self._leader_contact < self.cfg.election_timeout

    def _become_follower(self, now: float, term: int, lead: str | None) -> None:
        if term != self.term:
            self.term, self.vote = term, None
            self._incoming = None  # a new term's leader sends its own snapshot
        self.role, self.lead = FOLLOWER, lead
        if lead is not None:
            self._leader_contact = now
        self._reset_election(now)
        self._clear_leader_state()

    def _clear_leader_state(self) -> None:
        self.progress.clear()
        self.votes.clear()
        self._transferee, self._transfer_due = None, float("inf")
        self._heartbeat_due = self._quorum_due = float("inf")
        self._reads.clear()
        self._reads_waiting.clear()
        self._read_acks.clear()

    def _campaign(self, now: float, pre_vote: bool, transfer: bool = False) -> None:
        self._clear_leader_state()
        self.lead = None
        self._reset_election(now)
        if pre_vote:
            self.role, term = PRE_CANDIDATE, self.term + 1
        else:
            self.role, self.term, self.vote = CANDIDATE, self.term + 1, self.id
            term = self.term
        self.votes = {self.id: True}
        if self._tally() is True:
            self._won(now)
            return
        for peer in self.conf.voters:
            if peer != self.id:
                self._send(peer, RequestVote(term, self.id, self.log.last_index(), self.log.last_term(),
                                             pre_vote, transfer))

    def _won(self, now: float) -> None:
        if self.role == PRE_CANDIDATE:
            self._campaign(now, pre_vote=False)
        else:
            self._become_leader(now)

    def _tally(self) -> bool | None:
        """True: a quorum granted; False: a quorum can no longer grant; None: undecided."""
        voters = self.conf.voters
        granted = sum(1 for v in voters if self.votes.get(v) is True)
        refused = sum(1 for v in voters if self.votes.get(v) is False)
        if granted >= self._quorum():
            return True
        if refused > len(voters) - self._quorum():
            return False
        return None

    def _quorum(self) -> int:
        return quorum_size(len(self.conf.voters))

    def _become_leader(self, now: float) -> None:
        self._clear_leader_state()
        self.role, self.lead = LEADER, self.id
        last = self.log.last_index()
        for peer in self.conf.members:
            self.progress[peer] = Progress(last + 1)
        self.progress.setdefault(self.id, Progress(last + 1)).match = last
        self._heartbeat_due = now + self.cfg.heartbeat_interval
        self._quorum_due = now + self.cfg.election_timeout
        self._term_start = self._append_local("noop", b"", now)[0]

    # ---------------------------------------------------------- handlers

    def _on_vote(self, now: float, m: RequestVote) -> None:
        can_vote = (self.vote == m.source or (self.vote is None and self.lead is None)
                    or (m.pre_vote and m.term > self.term))
        if can_vote and self._log_ok_for_vote(m):
            self._send(m.source, VoteResp(m.term, self.id, True, m.pre_vote))
            if not m.pre_vote:
                self.vote = m.source
                self._reset_election(now)
        else:
            self._send(m.source, VoteResp(self.term, self.id, False, m.pre_vote))

    def _log_ok_for_vote(self, m: RequestVote) -> bool:
        return self.log.up_to_date(m.last_index, m.last_term)

    def _on_vote_resp(self, now: float, m: VoteResp) -> None:
        expected = PRE_CANDIDATE if m.pre_vote else CANDIDATE
        if self.role != expected:
            return
        self.votes[m.source] = m.granted
        outcome = self._tally()
        if outcome is True:
            self._won(now)
        elif outcome is False:
            self._become_follower(now, self.term, None)

    def _on_timeout_now(self, now: float, m: TimeoutNow) -> None:
        if self.promotable() and m.source == self.lead:
            self._campaign(now, pre_vote=False, transfer=True)
