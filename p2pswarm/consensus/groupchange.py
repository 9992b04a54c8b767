"""Leader-only reshaping of the Raft group: autopilot's changes and the removals `node rm` asks for.

Split from :mod:`p2pswarm.consensus.driver` because deciding *which* member to add, promote
or remove is a different concern from persisting and applying Readies: the pure
:mod:`p2pswarm.consensus.autopilot` decides from SWIM's view, and this mixin turns its answer
(and the cluster state's removed nodes) into configuration changes, one per round, never
one that would cost the quorum.  :class:`GroupChanges` is mixed into
:class:`p2pswarm.consensus.driver.RaftDriver`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from p2pswarm.consensus import autopilot
from p2pswarm.consensus.progress import last_contacts
from p2pswarm.consensus.raft import ConfChangeRejected, NotLeader, quorum_size
from p2pswarm.membership.messages import LIVE

if TYPE_CHECKING:
    from collections import Counter

    from p2pswarm.consensus.raft import Raft

log = logging.getLogger("p2pswarm.raft")

REMOVAL_WAIT = 10.0
"""Seconds the leader waits for a live node removed by `node rm` to replicate its removal before
taking it out of the Raft configuration anyway."""


class GroupChanges:
    """Autopilot and `node rm` removals of :class:`p2pswarm.consensus.driver.RaftDriver` (see the module docstring)."""

    if TYPE_CHECKING:  # what the driver provides (set in RaftDriver.__init__ / defined on RaftDriver)
        id: str
        swim: Any
        cluster: Any
        autopilot_cfg: Any
        counters: Counter[str]
        raft: Raft
        applied: int
        leader_since: float
        _removals: dict[str, tuple[int, float]]

        def _status(self, node: str) -> str: ...
        def _name(self, node: str | None) -> str: ...

    def _autopilot(self, now: float) -> None:
        raft = self.raft
        me = self.swim.member(self.id)
        if me is not None and me.status == "left":
            return  # a leader that is leaving must not reshape the group it leaves (it would shrink it)
        removed = self.cluster.removed_nodes
        if removed and self._drop_removed(now, removed):
            return
        # A node removed with `node rm` is invisible to autopilot: never added back, even if alive.
        peers = [autopilot.Peer(m.node, m.status, dict(m.meta.labels).get("zone", ""), m.meta.started_ms,
                                m.status_since) for m in self.swim.members() if m.node not in removed]
        change = autopilot.next_change(
            now, peers, raft.conf.voters, raft.conf.learners, leader=self.id, leader_since=self.leader_since,
            match={p: pr.match for p, pr in raft.progress.items()}, last_contact=last_contacts(raft.progress),
            last_index=raft.log.last_index(),
            config=self.autopilot_cfg, pending=raft.conf_index > raft.log.committed)
        if change is None:
            return
        try:
            raft.propose_conf_change(now, change.op, change.node)
        except (ConfChangeRejected, NotLeader) as exc:
            log.debug("autopilot change %s %s deferred: %s", change.op, change.node, exc)
            return
        self.counters["conf_changes"] += 1
        log.info("autopilot: %s %s (%s) (%s)", change.op, self._name(change.node), change.node, change.reason)

    def _drop_removed(self, now: float, removed: set) -> bool:
        """Take the Raft members that `node rm` removed from the cluster state out of the
        configuration, one change per round, a voter only while the others keep a quorum
        (until then autopilot, which no longer sees it, promotes replacements).  True when
        autopilot must wait: a change was proposed, one is in progress, or a live removed node
        has not received its removal yet."""
        for node in sorted(removed.intersection(self.raft.conf.members)):
            why = self.removal_blocker(node)
            if why is not None:  # autopilot, which does not see it, promotes a replacement meanwhile
                log.debug("removal of %s from the raft group deferred: %s", node, why)
                continue
            # A live node first receives its own removal from the cluster state (so that its agent
            # stops its tasks), then leaves the group: its replica would not hear of it afterwards.
            seen, since = self._removals.setdefault(node, (self.applied, now))
            progress = self.raft.progress.get(node)
            if node != self.id and self._status(node) in LIVE and now < since + REMOVAL_WAIT and (
                    progress is None or progress.match < seen):
                log.debug("removal of %s from the raft group waits until it has index %d", node, seen)
                return True
            try:
                self.raft.propose_conf_change(now, "remove", node)
            except (ConfChangeRejected, NotLeader) as exc:
                log.debug("removal of %s from the raft group deferred: %s", node, exc)
                return True
            self._removals.pop(node, None)
            self.counters["conf_changes"] += 1
            log.info("removing %s (%s) from the raft group (node rm)", self._name(node), node)
            return True
        return False

    def removal_blocker(self, node: str) -> str | None:
        """Why taking ``node`` out of the Raft configuration now would lose the quorum (one line),
        None when it is safe (or ``node`` is no voter): the other voters' live ones (SWIM alive or
        suspect, not removed) must be a majority of them."""
        voters = self.raft.conf.voters
        if node not in voters:
            return None
        rest = [v for v in voters if v != node]
        if not rest:
            return "it is the only voter"
        live = sum(1 for v in rest if self._status(v) in LIVE and v not in self.cluster.removed_nodes)
        quorum = quorum_size(len(rest))
        if live < quorum:
            return f"{live} of the other {len(rest)} voters are reachable, a quorum of them is {quorum}"
        return None
