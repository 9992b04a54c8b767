"""Which Raft cluster a node belongs to, and when its Raft driver starts.

* A node started without ``--peers`` on a fresh data dir creates a cluster: a new
  cluster id and a one-voter configuration (itself).
* A joiner on a fresh data dir starts Raft only once gossip tells it the cluster
  id (from any member's ``raft`` record section); it then waits, outside the configuration, until
  the leader's autopilot adds it.
* A data dir that already holds a Raft log keeps its cluster id.  If it was started
  with ``--peers`` and the live peers all gossip another cluster id, the node
  refuses to run: its log belongs to a different cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any, Callable

from p2pswarm.consensus.driver import RaftDriver
from p2pswarm.consensus.facts import new_cluster_id, stored_cluster_id
from p2pswarm.node.record import GossipRecord

log = logging.getLogger("p2pswarm.raft")

CHECK_INTERVAL = 0.5
"""Seconds between scans of gossip records (for the cluster id, or a mismatch)."""


class ClusterMismatch(Exception):
    """This data dir's Raft log belongs to another cluster than the peers' (one line)."""


class RaftHost:
    name = "raft"

    def __init__(self, node_id: str, data_dir: Path, preset: str, joining: bool, *, swim: Any, transport: Any,
                 clock: Callable[[], float], seed: int, fatal: Callable[[Exception], None],
                 record: GossipRecord, max_learners: int | None = None) -> None:
        """``max_learners``: the learners autopilot keeps when this node leads (None: the preset's)."""
        self.record = record
        self.max_learners = max_learners
        self.node_id, self.preset, self.joining = node_id, preset, joining
        self.raft_dir = str(Path(data_dir) / "raft")
        self.swim, self.transport, self.clock, self.seed = swim, transport, clock, seed
        self.fatal = fatal
        self.driver: RaftDriver | None = None
        self.observers: list[Any] = []
        """Given to the driver when it opens: told of every applied entry (see ``RaftDriver.observers``)."""
        self._confirmed = not joining
        self._next_check = 0.0

    async def start(self) -> None:
        cluster_id = stored_cluster_id(self.raft_dir)
        if cluster_id is None and not self.joining:
            cluster_id = new_cluster_id()
            log.info("created raft cluster %s with this node as its only voter", cluster_id)
        if cluster_id is not None:
            self._open(cluster_id)
        else:
            log.info("waiting to learn the raft cluster id from gossip")

    def step(self, now: float) -> None:
        """Called after every loop step: learn the cluster id, or check that it matches the peers'."""
        if (self.driver is not None and self._confirmed) or now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL
        theirs = set()
        for m in self.swim.members():
            facts = self.record.of(m).raft if m.node != self.node_id and m.status == "alive" else None
            if facts is not None:
                theirs.add(facts.cluster_id)
        if not theirs:
            return
        if self.driver is None:
            self._confirmed = True
            self._open(sorted(theirs)[0] if len(theirs) == 1 else self._leaders_cluster(theirs))
        elif self.driver.cluster_id in theirs:
            self._confirmed = True
        else:
            self.fatal(ClusterMismatch(
                f"data dir {Path(self.raft_dir).parent} holds raft cluster {self.driver.cluster_id}, but the peers "
                f"are in cluster {', '.join(sorted(theirs))}; use another --data-dir to join them "
                f"(or remove {self.raft_dir} to leave the old cluster)"))

    def _leaders_cluster(self, ids: set) -> str:
        for m in self.swim.members():
            facts = self.record.of(m).raft
            if facts is not None and facts.role == "leader" and m.status == "alive":
                return facts.cluster_id
        return sorted(ids)[0]

    def _open(self, cluster_id: str) -> None:
        try:
            self.driver = RaftDriver(self.node_id, cluster_id, self.raft_dir, self.preset, swim=self.swim,
                                     transport=self.transport, clock=self.clock, rng=random.Random(self.seed + 2),
                                     bootstrap=not self.joining, record=self.record,
                                     observers=tuple(self.observers))
        except Exception as exc:
            self.fatal(exc)
            return
        if self.max_learners is not None:
            self.driver.autopilot_cfg = dataclasses.replace(self.driver.autopilot_cfg, max_learners=self.max_learners)
        self.driver.start()

    def receive(self, msg: Any) -> bool:
        """Hand a Raft message to the driver; False when Raft is not running here yet."""
        if self.driver is None:
            return False
        self.driver.receive(msg)
        return True

    async def close(self) -> None:
        if self.driver is not None:
            await self.driver.close()

    def metrics(self) -> dict[str, Any]:
        """The driver's gauges and counters; none while this node has not learned its cluster."""
        return self.driver.metrics() if self.driver is not None else {}
