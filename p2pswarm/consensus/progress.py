"""What a leader knows about one follower's log, and the flow control that follows from it.

A follower is in one of three states (the etcd-io/raft model):

* ``probe``: we do not know where its log matches ours; send one append at a time
  and wait for the answer (or a heartbeat answer) before the next.
* ``replicate``: logs match up to ``match``; stream appends optimistically, at most
  ``max_inflight`` unacknowledged ones (pipelining with a bounded window).
* ``snapshot``: it needs a snapshot; we send it chunk by chunk (``sending``, kept until the
  transfer ends even if we compact again meanwhile) and nothing else until it is installed.
"""

from __future__ import annotations

from collections import deque
from typing import Mapping

from p2pswarm.consensus.messages import Snapshot

PROBE, REPLICATE, SNAPSHOT = "probe", "replicate", "snapshot"


class Progress:
    __slots__ = ("match", "next", "state", "probe_sent", "inflight", "pending_snapshot", "sending",
                 "snapshot_sent_at", "recent_active", "last_active")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.pending_snapshot = 0
        self.sending: Snapshot | None = None
        self.snapshot_sent_at = 0.0
        self.recent_active = False
        self.last_active: float | None = None
        """When the leader last heard from it (None: not since this leader took office); autopilot's last
        contact, so a replica that stopped answering is never mistaken for a healthy one."""

    def become_probe(self) -> None:
        if self.state == SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state, self.probe_sent, self.pending_snapshot, self.sending = PROBE, False, 0, None
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state, self.next, self.probe_sent, self.sending = REPLICATE, self.match + 1, False, None
        self.inflight.clear()

    def become_snapshot(self, snapshot: Snapshot, now: float) -> None:
        """Start sending ``snapshot``; ``snapshot_sent_at`` moves with every chunk."""
        self.state, self.pending_snapshot, self.snapshot_sent_at = SNAPSHOT, snapshot.index, now
        self.sending = snapshot
        self.inflight.clear()

    def paused(self, max_inflight: int) -> bool:
        if self.state == PROBE:
            return self.probe_sent
        if self.state == REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def sent(self, last_index: int | None) -> None:
        """Record an append whose last entry is ``last_index`` (None: it carried no entries)."""
        if self.state == REPLICATE and last_index is not None:
            self.next = last_index + 1
            self.inflight.append(last_index)
        elif self.state == PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The follower matches up to ``index``; False if that is old news."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        self.probe_sent = False
        return True

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """The follower refused an append at prev index ``rejected``; False if the refusal is stale."""
        if self.state == REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        if rejected == self.match and hint < self.match:
            # it lacks an entry it acknowledged: its disk lost data; lower match (only delays
            # commits) and repair it, rather than probing the same index forever
            self.match = hint
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def as_dict(self, now: float) -> dict:
        return {"match": self.match, "next": self.next, "state": self.state,
                "inflight": len(self.inflight), "recent_active": self.recent_active,
                "idle_s": None if self.last_active is None else round(now - self.last_active, 3)}


def last_contacts(progress: Mapping[str, Progress]) -> dict[str, float]:
    """When the leader last heard from each follower it has heard from since it took office (autopilot's input)."""
    return {peer: pr.last_active for peer, pr in progress.items() if pr.last_active is not None}
