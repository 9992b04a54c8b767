"""Raft timing and flow-control settings (the presets: :mod:`p2pswarm.node.presets`).

Times are seconds, sizes bytes.  Formulas (as implemented in :mod:`p2pswarm.consensus.raft`):

* election timeout (randomized) = uniform[election_timeout, 2 × election_timeout), redrawn on
  every reset, so that split votes resolve quickly (Raft §5.2)
* leader lease / CheckQuorum window = election_timeout: a leader that has not heard from a
  quorum of voters within it steps down; a voter that heard from a leader within it refuses
  (pre-)votes, so a rejoining node cannot depose a healthy leader
* heartbeat period = heartbeat_interval (must be well below election_timeout; 1/10 is usual)
* appends in flight per follower ≤ max_inflight (pipelining), each ≤ max_batch_entries entries
  and ≤ max_batch_bytes payload bytes (one oversized entry still travels alone)
* leadership transfer aborts after election_timeout if the target never caught up
* a snapshot travels in chunks of snapshot_chunk_bytes, one in flight per follower (the follower
  acknowledges each), so installing S bytes takes ⌈S / snapshot_chunk_bytes⌉ round trips; a
  transfer is abandoned and restarted when no chunk was acknowledged for an election_timeout
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from p2pswarm.consensus.messages import MAX_BATCH_BYTES, MAX_ENTRIES, MAX_SNAPSHOT_CHUNK


@dataclass(frozen=True)
class RaftConfig:
    election_timeout: float = 1.0
    """Base election timeout; actual timeouts are uniform in [T, 2T)."""
    heartbeat_interval: float = 0.1
    """Seconds between leader heartbeats (carry commit index and ReadIndex rounds)."""
    max_inflight: int = 64
    """Unacknowledged AppendEntries per follower in replicate state (flow control window)."""
    max_batch_entries: int = 256
    """Entries in one AppendEntries."""
    max_batch_bytes: int = 1024 * 1024
    """Entry payload bytes in one AppendEntries."""
    snapshot_chunk_bytes: int = 1024 * 1024
    """Snapshot bytes per InstallSnapshot chunk: big enough that a 50 MB state needs only 50 round
    trips, half the wire limit (MAX_SNAPSHOT_CHUNK) so a chunk never nears a message's size cap."""
    pre_vote: bool = True
    """Campaign only after a pre-vote round shows a quorum would elect us (Raft thesis §9.6)."""
    check_quorum: bool = True
    """Leader steps down without quorum contact within an election timeout; voters honour leases."""

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.election_timeout:
            raise ValueError("heartbeat_interval must be positive and below election_timeout")
        if not 1 <= self.max_batch_entries <= MAX_ENTRIES:
            raise ValueError(f"max_batch_entries must be within 1..{MAX_ENTRIES}")
        if not 1 <= self.max_batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"max_batch_bytes must be within 1..{MAX_BATCH_BYTES}")
        if not 1 <= self.snapshot_chunk_bytes <= MAX_SNAPSHOT_CHUNK:
            raise ValueError(f"snapshot_chunk_bytes must be within 1..{MAX_SNAPSHOT_CHUNK}")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")

    def with_changes(self, **changes) -> "RaftConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DriverConfig:
    """The Raft driver's (consensus/driver.py) snapshot and write-retry settings."""

    snapshot_every: int = 10_000
    """Applied entries between snapshots; the log on disk stays around this long."""
    write_timeout: float = 10.0
    """Seconds a write (or linearizable read) may wait for commit before failing with one line."""
    retry_interval: float = 1.0
    """Seconds between re-submissions of a write or read that has not completed (a lost forward)."""
    applied_gossip_interval: float = 0.2
    """Seconds between updates of the applied index in this member's gossip record (workers read it
    to notice that their assignments moved; a faster one only churns the record)."""


@dataclass(frozen=True)
class AutopilotConfig:
    stabilization_time: float = 5.0
    """Seconds a member must be alive before promotion, and dead before its voter is replaced."""
    max_lag: int = 256
    """A learner is caught up when its match index is within this many entries of the leader's last."""
    interval: float = 0.5
    """Seconds between the leader's autopilot rounds (one change per round at most)."""
    last_contact_threshold: float = 0.5
    """Seconds within which the leader must have heard from a member (any Raft answer) for it to be healthy:
    about 5 × the Raft ``heartbeat_interval``, since a live follower answers every heartbeat."""
    max_learners: int = 4
    """Live non-voters kept as learners (standby replicas that also serve workers); at most the wire's
    MAX_LEARNERS.  Every other live node is a worker outside the Raft configuration."""
