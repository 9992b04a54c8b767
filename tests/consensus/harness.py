"""A synchronous in-memory cluster for scenario tests of the pure Raft core.

Messages are delivered in FIFO order when the test calls ``deliver``; a test can
cut links, drop messages, or advance the clock.  Persistence is modelled by
keeping what each Ready asked to persist, so a "restart" rebuilds a core from it.
"""

from __future__ import annotations

import random

from p2pswarm.consensus.config import RaftConfig
from p2pswarm.consensus.raft import LEADER, HardState, Raft

CFG = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1, max_inflight=4, max_batch_entries=8,
                 snapshot_chunk_bytes=4)
"""Tiny snapshot chunks: the test snapshots ("state@N") travel in several, under every fault the tests inject."""


class Disk:
    """What a node has persisted: hard state, snapshot and log entries."""

    def __init__(self) -> None:
        self.hs = HardState()
        self.snapshot = None
        self.entries: list = []

    def save(self, rd) -> None:
        if rd.snapshot is not None:
            snap = rd.snapshot
            keep = [e for e in self.entries if e.index > snap.index]
            same = any(e.index == snap.index and e.term == snap.term for e in self.entries)
            self.snapshot, self.entries = snap, keep if same else []
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hs = rd.hard_state


class Cluster:
    def __init__(self, ids, *, cfg: RaftConfig = CFG, seed: int = 1, voters=None, core=Raft) -> None:
        self.cfg = cfg
        self.core = core
        self.now = 0.0
        self.rng = random.Random(seed)
        self.disks = {i: Disk() for i in ids}
        voters = tuple(voters if voters is not None else ids)
        self.nodes = {i: core(i, cfg, random.Random(seed * 100 + k), self.now,
                              bootstrap=voters if i in voters else ())
                      for k, i in enumerate(ids)}
        self.queue: list = []  # (from, to, msg)
        self.cut: set = set()   # directed (from, to) pairs that drop messages
        self.down: set = set()
        self.applied = {i: [] for i in ids}
        self.reads = {i: [] for i in ids}
        self.restored = {i: [] for i in ids}  # snapshots each node's state machine was restored from
        self.app_index = {i: 0 for i in ids}
        self.sent: list = []
        self.flush()

    # --------------------------------------------------------------- driving

    def flush(self) -> None:
        """Process every pending Ready: persist, queue messages, apply."""
        progress = True
        while progress:
            progress = False
            for nid, node in self.nodes.items():
                if nid in self.down or not node.has_ready():
                    continue
                rd = node.ready()
                self.disks[nid].save(rd)
                if rd.snapshot is not None and rd.snapshot.index > self.app_index[nid]:
                    self.restored[nid].append(rd.snapshot)
                    self.app_index[nid] = rd.snapshot.index
                if rd.committed_entries:
                    self.app_index[nid] = rd.committed_entries[-1].index
                for env in rd.messages:
                    self.sent.append((nid, env.to, env.msg))
                    self.queue.append((nid, env.to, env.msg))
                self.applied[nid].extend(rd.committed_entries)
                self.reads[nid].extend(rd.read_states)
                node.advance(rd)
                progress = True

    def deliver(self, max_rounds: int = 1000, drop=None, rewrite=None) -> int:
        """Deliver queued messages (and the ones they cause) until quiet.

        ``drop(src, dst, msg)`` may discard a message; ``rewrite`` may replace it."""
        count = 0
        for _ in range(max_rounds):
            if not self.queue:
                break
            batch, self.queue = self.queue, []
            for src, dst, msg in batch:
                if (src, dst) in self.cut or dst in self.down or src in self.down or dst not in self.nodes:
                    continue
                if drop is not None and drop(src, dst, msg):
                    continue
                if rewrite is not None:
                    msg = rewrite(src, dst, msg)
                self.nodes[dst].step(self.now, msg)
                count += 1
                self.flush()
        return count

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Move the clock, ticking every node and delivering messages as we go."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            for nid, node in self.nodes.items():
                if nid not in self.down:
                    node.tick(self.now)
            self.flush()
            self.deliver()

    def isolate(self, nid) -> None:
        for other in self.nodes:
            if other != nid:
                self.cut.update({(nid, other), (other, nid)})

    def heal(self) -> None:
        self.cut.clear()

    def crash(self, nid) -> None:
        self.down.add(nid)

    def add_node(self, nid) -> None:
        """A fresh node that knows no configuration: it waits to be added and replicated to."""
        self.disks[nid] = Disk()
        self.nodes[nid] = self.core(nid, self.cfg, random.Random(len(self.nodes)), self.now)
        for table in (self.applied, self.reads, self.restored):
            table[nid] = []
        self.app_index[nid] = 0
        self.flush()

    def restart(self, nid, seed: int = 99) -> None:
        disk = self.disks[nid]
        self.nodes[nid] = self.core(nid, self.cfg, random.Random(seed), self.now, hard_state=disk.hs,
                               snapshot=disk.snapshot, entries=tuple(disk.entries))
        self.down.discard(nid)
        snap = disk.snapshot
        self.applied[nid] = []
        self.restored[nid] = [snap] if snap is not None else []
        self.app_index[nid] = snap.index if snap is not None else 0
        self.flush()

    # --------------------------------------------------------------- queries

    def compact(self, nid) -> None:
        """The app snapshots its state (here: just its applied index) and the core truncates."""
        node = self.nodes[nid]
        node.compact(self.now, node.log.applied, b"state@%d" % node.log.applied)
        self.flush()

    def leaders(self) -> list:
        return [i for i, n in self.nodes.items() if n.role == LEADER and i not in self.down]

    def leader(self):
        leaders = self.leaders()
        assert len(leaders) == 1, leaders
        return self.nodes[leaders[0]]

    def elect(self, nid, timeout: float = 10.0) -> None:
        """Make ``nid`` campaign now (as if its timer fired) and settle."""
        node = self.nodes[nid]
        node._election_due = self.now
        node.tick(self.now)
        self.flush()
        self.deliver()
        assert node.role == LEADER, node.status(self.now)

    def propose(self, data: bytes):
        idx = self.leader().propose(self.now, data)
        self.flush()
        self.deliver()
        return idx
