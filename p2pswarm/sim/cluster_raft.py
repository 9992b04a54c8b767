"""The Raft group of the cluster simulation: the real Raft cores of the few members, each applying
the log to its own real :class:`ClusterState`, and the leader's autopilot.

Only the voters and the handful of learners autopilot keeps run a Raft core (the other nodes are
workers), so the cost does not grow with the cluster.  Messages travel over the simulation's network
(its partitions and loss apply) as CALL events; the leader's outgoing bytes are the real wire
encoding's.  Every member's SWIM record carries its applied index (the ``raft`` section's fourth element, as
the Raft driver sets it), refreshed at most every ``applied_gossip_interval`` seconds: that is what
prompts the workers to ask for their assignments.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

import msgpack

from p2pswarm.cluster.state import ClusterState
from p2pswarm.consensus import autopilot
from p2pswarm.consensus.config import RaftConfig
from p2pswarm.consensus.progress import last_contacts
from p2pswarm.consensus.raft import LEADER, Raft, RaftError
from p2pswarm.consensus.storage import MemoryStorage
from p2pswarm.node.record import RaftFacts
from p2pswarm.wire import encode

if TYPE_CHECKING:
    from p2pswarm.sim.cluster_sim import ClusterSimulation


class SimMember:
    """One Raft member: its core, storage and applied cluster state."""

    __slots__ = ("id", "index", "raft", "storage", "state", "up", "removed", "tick_at", "incarnation",
                 "published", "publish_due", "publish_pending")

    def __init__(self, node_id: str, index: int) -> None:
        self.id, self.index = node_id, index
        self.raft: Raft | None = None
        self.storage = MemoryStorage()
        self.state = ClusterState()
        self.up = False
        self.removed = False
        self.tick_at = math.inf
        self.incarnation = 0
        self.published = -1
        self.publish_due = 0.0
        """Not before this may the record announce a newer applied index."""
        self.publish_pending = False


class RaftGroup:
    def __init__(self, world: ClusterSimulation, voters: list[int], config: RaftConfig,
                 pilot: autopilot.AutopilotConfig, publish_every: float) -> None:
        """``publish_every``: the driver's ``applied_gossip_interval`` (a member's record changes at most so often)."""
        self.world, self.cfg, self.publish_every = world, config, publish_every
        self.pilot = pilot  # the preset's, max_learners included: the group a real node's autopilot keeps
        self.members: dict[str, SimMember] = {}
        self.by_index: dict[int, SimMember] = {}
        self.rng = random.Random(world.rng.random())
        self.leader_bytes = 0
        self.entries = 0
        self.entry_bytes = 0
        self.leader_since = 0.0
        self.current: SimMember | None = None
        ids = tuple(world.ids[i] for i in voters)
        for i in voters:
            self._boot(self._member(i), ids)
        world.at(self.pilot.interval, self._autopilot)

    # ------------------------------------------------------------ members

    def _member(self, index: int) -> SimMember:
        node_id = self.world.ids[index]
        member = self.members.get(node_id)
        if member is None:
            member = self.members[node_id] = self.by_index[index] = SimMember(node_id, index)
        return member

    def _boot(self, m: SimMember, bootstrap: tuple = ()) -> None:
        stored = m.storage.load()
        m.raft = Raft(m.id, self.cfg, random.Random(self.rng.getrandbits(64)), self.world.now,
                      hard_state=stored.hard_state, snapshot=stored.snapshot, entries=tuple(stored.entries),
                      bootstrap=bootstrap)
        m.state, m.up, m.tick_at, m.published = ClusterState(), True, math.inf, -1
        m.publish_due, m.publish_pending = 0.0, False
        m.incarnation += 1
        self._pump(m)

    def crash(self, index: int) -> None:
        m = self.by_index.get(index)
        if m is not None and m.up:
            m.up, m.raft = False, None
            m.storage.crash()
            if self.current is m:
                self.current = None

    def restart(self, index: int) -> None:
        m = self.by_index.get(index)
        if m is not None and not m.up and not m.removed:
            self._boot(m)

    def leader(self) -> SimMember | None:
        m = self.current
        return m if m is not None and m.up and m.raft is not None and m.raft.role == LEADER else None

    def live(self) -> list[SimMember]:
        return [m for m in self.members.values() if m.up and not m.removed]

    def propose(self, command: dict) -> tuple[int, int] | None:
        """Propose a cluster command at the leader: (index, term), or None without a leader."""
        m = self.leader()
        if m is None or m.raft is None:
            return None
        data = msgpack.packb(command, use_bin_type=True)
        try:
            ticket = m.raft.propose(self.world.now, data)
        except (RaftError, ValueError):
            return None
        self.entries += 1
        self.entry_bytes += len(data)
        self._pump(m)
        return ticket

    # ------------------------------------------------------------ the driver loop

    def _pump(self, m: SimMember) -> None:
        raft = m.raft
        world = self.world
        applied = False
        while raft is not None and raft.has_ready():
            rd = raft.ready()
            m.storage.save(rd.hard_state, rd.entries, rd.snapshot)
            leading = raft.role == LEADER
            for env in rd.messages:
                self._send(m, env.to, env.msg, leading)
            for entry in rd.committed_entries:
                if entry.kind == "normal" and entry.index > m.state.applied:
                    m.state.apply(entry.data, entry.term, entry.index)
                    world.side.follow(m.index, m.state)  # the member's own agent reads its applied state
                    applied = True
            raft.advance(rd)
        if applied:
            self._applied(m)
        if raft is None:
            return
        if raft.role == LEADER and self.current is not m:
            self.current, self.leader_since = m, world.now
            world.leader_changed(m.index)
        when = max(raft.next_deadline(), world.now)
        if when < m.tick_at:
            m.tick_at = when
            world.at(when, self._tick, m, m.incarnation)

    def _tick(self, m: SimMember, incarnation: int) -> None:
        if not m.up or m.incarnation != incarnation or self.world.now != m.tick_at or m.raft is None:
            return
        m.tick_at = math.inf
        m.raft.tick(self.world.now)
        self._pump(m)

    def _send(self, src: SimMember, dst_id: str, msg: Any, leading: bool) -> None:
        dst = self.members.get(dst_id)
        if dst is None:
            return
        if leading:
            self.leader_bytes += len(encode(msg))
        world = self.world
        for delay in world.net.delays(src.index, dst.index):
            world.at(world.now + delay, self._deliver, dst, msg)

    def _deliver(self, dst: SimMember, msg: Any) -> None:
        if dst.up and dst.raft is not None:
            dst.raft.step(self.world.now, msg)
            self._pump(dst)

    # ------------------------------------------------------------ gossip of the applied index

    def _applied(self, m: SimMember) -> None:
        """As the Raft driver does: the record announces a new applied index at once, but at most every
        ``publish_every`` seconds (a change within that waits until it is over)."""
        if self.world.now >= m.publish_due:
            self._publish(m)
        elif not m.publish_pending:
            m.publish_pending = True
            self.world.at(m.publish_due, self._publish_due, m, m.incarnation)

    def _publish_due(self, m: SimMember, incarnation: int) -> None:
        m.publish_pending = False
        if m.up and m.incarnation == incarnation and m.raft is not None and m.state.applied != m.published:
            self._publish(m)

    def _publish(self, m: SimMember) -> None:
        raft = m.raft
        if raft is None or m.removed:
            return
        m.published, m.publish_due = m.state.applied, self.world.now + self.publish_every
        role = "leader" if raft.role == LEADER else "voter" if m.id in raft.conf.voters else "learner"
        self.world.publish_raft(m.index, RaftFacts("sim", role, raft.term, m.state.applied))

    # ------------------------------------------------------------ autopilot

    def _autopilot(self) -> None:
        world = self.world
        world.at(world.now + self.pilot.interval, self._autopilot)
        m = self.leader()
        if m is None or m.raft is None:
            return
        raft = m.raft
        view = world.view_of(m.index)
        peers = [autopilot.Peer(node, status, zone, 0, since) for node, status, zone, since in view]
        match = {p: raft.progress[p].match for p in raft.progress}
        change = autopilot.next_change(world.now, peers, raft.conf.voters, raft.conf.learners, leader=m.id,
                                       leader_since=self.leader_since, match=match,
                                       last_contact=last_contacts(raft.progress), last_index=raft.log.last_index(),
                                       config=self.pilot, pending=raft.conf_index > raft.log.committed)
        if change is None:
            return
        if change.op == "add_learner":
            joiner = self._member(world.index_of[change.node])
            if not joiner.up and not world.crashed(joiner.index):
                joiner.removed = False
                self._boot(joiner)
        try:
            raft.propose_conf_change(world.now, change.op, change.node)
        except RaftError:
            return
        if change.op == "remove":
            gone = self.members.get(change.node)
            if gone is not None:
                gone.removed = True
        world.raft_changes += 1
        self._pump(m)

