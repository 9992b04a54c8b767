"""One node's I/O for the assignment protocol: a member answers workers, a worker follows its delta.

* **Member side.** An :class:`AssignmentsRequest` is queued (one per worker: a newer request
  replaces the older) and answered in :meth:`AssignmentsDriver.step` from the last applied
  state, quorum or not, at most ``serve_per_turn`` answers and ``serve_budget`` seconds per loop
  turn, so workers never hold up Raft.  Past ``max_queued`` waiting workers, or on a node that
  is not a member, a request is shed at once: "busy, ask X" (X by rendezvous over the others).
* **Worker side.** The members gossip their applied index (the ``raft`` record section).  When
  it is above the version this worker holds, the worker asks :func:`choose_server` over the
  members that have applied that far, one request at a time, and applies the reply's delta to
  its :class:`WorkerState`.  A member that does not answer within ``request_timeout`` is avoided
  for ``avoid_for``; a busy one's redirect is asked next.  The request names the digest of the
  security part the worker holds; a reply carries the member's part when it differs
  (:mod:`p2pswarm.assignments.trust`), and the node's security host follows it (:meth:`worker_trust`).
* **Which state the agent reads** (:meth:`agent_state`): the local Raft state on a voter or
  leader, and on a learner whose state keeps up with the gossiped index; else the worker state
  once it has a first answer (until then the local state, if any: tasks never stop for a switch).

Malformed replies and requests from unknown nodes are dropped and counted, never trusted.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import Counter
from typing import Any, Callable

from p2pswarm import wire
from p2pswarm.assignments.config import AssignmentsConfig
from p2pswarm.assignments.core import WorkerState, choose_server, delta_since
from p2pswarm.assignments.messages import AssignmentsReply, AssignmentsRequest, decode_body, reply_of
from p2pswarm.assignments.trust import WorkerTrust, trust_for
from p2pswarm.membership.messages import LIVE
from p2pswarm.security.access import AccessRecord

log = logging.getLogger("p2pswarm.assignments")

MEMBER_ROLES = ("leader", "voter", "learner")


class AssignmentsDriver:
    def __init__(self, node_id: str, raft: Any, swim: Any, record: Any, transport: Any,
                 config: AssignmentsConfig = AssignmentsConfig(), clock: Callable[[], float] = time.monotonic) -> None:
        """``raft``: the node's RaftHost (its ``driver`` may be None); ``swim``: members and records."""
        self.node_id, self.raft, self.swim, self.record = node_id, raft, swim, record
        self.transport, self.config, self.clock = transport, config, clock
        self.state = WorkerState(node_id)
        self.counters: Counter[str] = Counter()
        self._queue: dict[str, AssignmentsRequest] = {}
        self._ids = itertools.count(1)
        self._outstanding: tuple[int, str, float] | None = None
        """(request id, member asked, deadline) of this worker's request in flight."""
        self._avoid: dict[str, float] = {}
        self._redirect = ""
        self._next_check = 0.0
        self._synced = False
        self._fresh_at: float | None = None
        self._use_raft = False
        """This node reads its assignments from its own replica (see :meth:`uses_raft_state`)."""
        self._access: tuple[bytes, AccessRecord | None] = (b"", None)
        """(digest of the security part, the access record restored from it): see :meth:`worker_access`."""
        self._members: tuple[Any, dict[str, int]] = (None, {})
        """((the SWIM core's ``changes``, our cluster id) when last scanned, what ``members`` found then)."""

    # ------------------------------------------------------------ roles

    def role(self) -> str:
        driver = self.raft.driver
        return driver.role_of(self.node_id) if driver is not None else "-"

    def members(self) -> dict[str, int]:
        """Live Raft members of our cluster (from gossip) -> the applied index each says it has (a copy; scanned
        again only when SWIM's ``changes`` counter moved, as a worker looks every ``check_interval``)."""
        driver = self.raft.driver
        cluster = driver.cluster_id if driver is not None else None
        changes = getattr(self.swim, "changes", None)
        if changes is not None and self._members[0] == (changes, cluster):
            return dict(self._members[1])
        out = {}
        for m in self.swim.members():
            facts = self.record.of(m).raft if m.status in LIVE else None
            if facts is not None and facts.role in MEMBER_ROLES and (cluster is None or facts.cluster_id == cluster):
                out[m.node] = facts.applied
        self._members = ((changes, cluster), out)
        return dict(out)

    def uses_raft_state(self, now: float) -> bool:
        """Does this node read its assignments from its own replica? (voter, leader, or a learner that keeps up)"""
        role = self.role()
        if role in ("leader", "voter"):
            return True
        if role != "learner":
            return False
        newest = max(self.members().values(), default=0)
        if self.raft.driver.applied >= newest:
            self._fresh_at = now
        return self._fresh_at is not None and now - self._fresh_at < self.config.stale_after

    def agent_state(self) -> tuple[Any, Any] | None:
        """(state, security record) the agent reads its assignments from; None: nothing yet."""
        driver = self.raft.driver
        if self._use_raft or (not self._synced and driver is not None and driver.cluster.applied):
            return (driver.cluster, driver.security) if driver is not None else None
        return (self.state, self.state.security) if self._synced else None

    def worker_trust(self) -> WorkerTrust | None:
        """The security part this node follows as a worker (None: it follows its own replica's record, or has
        no part yet): see :mod:`p2pswarm.assignments.trust`."""
        return self.state.trust if self._synced and not self._use_raft else None

    def worker_access(self) -> AccessRecord | None:
        """The access record a worker checks remote API clients by (from its security part; rebuilt only when
        the part changes); None on a member (it reads its replica's) or before a part arrived."""
        trust = self.worker_trust()
        if trust is None:
            return None
        if self._access[0] != trust.digest:
            self._access = (trust.digest, trust.access_record())
        return self._access[1]

    # ------------------------------------------------------------ the loop

    def step(self, now: float) -> None:
        """Serve waiting workers (bounded); every ``check_interval``, see which state the agent reads and,
        as a worker, whether to ask (a scan of the members: not on every loop turn)."""
        self._serve(now)
        if now < self._next_check:
            return
        self._next_check = now + self.config.check_interval
        self._use_raft = self.uses_raft_state(now)
        if self._use_raft and self._synced:  # a member again: a later switch starts from a fresh resync,
            self.state, self._synced = WorkerState(self.node_id), False  # never from assignments long gone
            self._outstanding = None
        if not self._use_raft:
            self._follow(now)

    def receive(self, msg: Any) -> None:
        if isinstance(msg, AssignmentsRequest):
            self._enqueue(msg)
        elif isinstance(msg, AssignmentsReply):
            self._on_reply(msg)

    # ------------------------------------------------------------ member side

    def _enqueue(self, request: AssignmentsRequest) -> None:
        member = self.swim.member(request.source)
        if member is None or member.status not in LIVE or request.source == self.node_id:
            self.counters["requests_refused"] += 1
            return
        if self.role() not in MEMBER_ROLES:
            self._shed(request, "not_member")
        elif request.source in self._queue or len(self._queue) < self.config.max_queued:
            self._queue.pop(request.source, None)
            self._queue[request.source] = request
        else:
            self._shed(request, "shed")

    def _shed(self, request: AssignmentsRequest, why: str) -> None:
        self.counters[f"requests_{why}"] += 1
        others = [m for m in self.members() if m not in (self.node_id, request.source)]
        self._send(request.source, AssignmentsReply(request.request, self.node_id, 0, request.since, False,
                                                    busy=True, redirect=choose_server(request.source, others) or ""))

    def _serve(self, now: float) -> None:
        driver = self.raft.driver
        if not self._queue or driver is None:
            return
        started = self.clock()
        for _ in range(self.config.serve_per_turn):
            if not self._queue or self.clock() - started > self.config.serve_budget:
                break
            source = next(iter(self._queue))
            request = self._queue.pop(source)
            delta = delta_since(driver.cluster, source, request.since, driver.security.secret_keys, driver.applied)
            trust = trust_for(driver.security, driver.cluster.removed_nodes, source, driver.sm.access)
            if trust is not None and trust.digest != request.trust:
                delta = dataclasses.replace(delta, trust=trust)
                self.counters["trust_served"] += 1
            self.counters["full_resyncs_served" if delta.full else "deltas_served"] += 1
            try:
                self._send(source, reply_of(request.request, self.node_id, delta))
            except ValueError as exc:  # a delta over the message limit: a bug to fix, not the worker's
                self.counters["replies_too_large"] += 1
                log.error("cannot send %s its assignments: %s", source, exc)

    # ------------------------------------------------------------ worker side

    def _follow(self, now: float) -> None:
        members = self.members()
        members.pop(self.node_id, None)
        if not members:
            return
        if self._outstanding is not None:
            if now < self._outstanding[2]:
                return
            self.counters["requests_timed_out"] += 1
            self._avoid[self._outstanding[1]] = now + self.config.avoid_for
            self._outstanding = None
        newest = max(members.values())
        if self._synced and self.state.version >= newest:
            return
        usable = [m for m in members if self._avoid.get(m, 0.0) <= now] or list(members)
        caught_up = [m for m in usable if members[m] >= newest] or usable
        server = self._redirect if self._redirect in members else choose_server(self.node_id, caught_up)
        self._redirect = ""
        if server is None:
            return
        request = next(self._ids)
        self._outstanding = (request, server, now + self.config.request_timeout)
        self.counters["requests_sent"] += 1
        trust = self.state.trust.digest if self._synced and self.state.trust is not None else b""
        self._send(server, AssignmentsRequest(request, self.node_id, self.state.version if self._synced else 0, trust))

    def _on_reply(self, reply: AssignmentsReply) -> None:
        outstanding = self._outstanding
        if outstanding is None or outstanding[:2] != (reply.request, reply.source):
            self.counters["unexpected_replies"] += 1
            return
        self._outstanding = None
        if reply.busy:
            self.counters["redirected"] += 1
            self._redirect = reply.redirect
            self._avoid[reply.source] = self.clock() + self.config.avoid_for
            self._next_check = 0.0  # ask the redirect at the next turn
            return
        try:
            delta = decode_body(reply)
        except wire.WireError as err:
            self.counters["malformed_replies"] += 1
            log.debug("dropped a malformed assignments reply from %s: %s", reply.source, err)
            return
        if self.state.apply(delta):
            self._synced = True
            self.counters["full_resyncs" if delta.full else "deltas_applied"] += 1
            if delta.trust is not None:
                self.counters["trust_updates"] += 1
        else:
            self.counters["stale_replies"] += 1

    # ------------------------------------------------------------ transport

    def _send(self, node: str, msg: Any) -> None:
        member = self.swim.member(node)
        if member is None or not self.transport.send(member.addr, wire.encode(msg), True):
            self.counters["sends_dropped"] += 1

    def metrics(self) -> dict[str, Any]:
        """``/metrics``: gauges (version held as a worker, workers waiting here, whether this node reads its
        assignments as a worker) and counters."""
        return {"gauges": {"version": self.state.version, "queued": len(self._queue),
                           "worker": int(not self._use_raft)}, "counters": dict(self.counters)}
