"""Drives the node's Raft core: persist (off the loop) → send → apply → advance.

The pure core (:mod:`p2pswarm.consensus.raft`) hands out Ready batches; this
module is the only code that makes them real for a running node:

* **Durable before visible.** Each Ready's hard state, entries and snapshot are
  saved (one write + one fsync) in a single-thread executor, and only then are
  its messages sent, its committed entries applied and ``advance`` called.  The
  save runs off the event loop so a slow fsync never delays a SWIM ack; exactly
  one Ready is in flight, which keeps the order Raft needs.  As in etcd
  (``MustSync``), a Ready whose only durable change is the commit index does not
  fsync: the commit index is volatile in Raft (a restarted node learns it again),
  so it is written with the next save that must sync; this spares the leader one
  fsync per commit.
* **Group commit.** Messages and proposals that arrive during a save queue up and
  are fed to the core before the next Ready, so they share its one fsync; the
  core emits one append per proposal, so consecutive appends to a peer (and the
  acks that answer them) are merged into one message before sending.
* **Writes** carry ``(client, seq)`` (see :mod:`p2pswarm.consensus.kv`): a write is
  proposed locally on the leader or forwarded in a ``Propose`` message, re-sent
  every ``retry_interval`` until applied, and applied at most once.  Each client id
  ("lane") has one write outstanding, as the KV store's session table expects.
* **Reads** go through ReadIndex and wait until the local state machine has
  applied the read index; stale reads use local state.
* **Snapshots** every ``snapshot_every`` applied entries keep the log bounded.  A follower's
  core assembles a leader's snapshot from its chunks and hands it over in one Ready, which is
  saved and restored like a local one.
* **Bad peers.** A Raft message from outside the group or with impossible fields
  is dropped and counted; a full disk (StorageError) stops Raft on this node,
  fails writes with the storage's one-line reason, and leaves gossip running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import Counter
from typing import Any, Callable

from p2pswarm import wire
from p2pswarm.consensus.groupchange import GroupChanges
from p2pswarm.consensus.messages import (
    MAX_BATCH_BYTES,
    MAX_ENTRIES,
    MAX_SNAPSHOT_BYTES,
    AppendEntries,
    AppendResp,
    InstallSnapshot,
    Propose,
    RequestVote,
)
from p2pswarm.consensus.raft import LEADER, Envelope, NotLeader, Raft, RaftError
from p2pswarm.consensus.requests import RaftRequests, RaftUnavailable, _Lane, _Pending
from p2pswarm.consensus.storage import FileStorage, StorageError
from p2pswarm.node.presets import preset as load_preset
from p2pswarm.node.record import GossipRecord, RaftFacts
from p2pswarm.node.statemachine import StateMachines

log = logging.getLogger("p2pswarm.raft")

MAX_INBOX = 10_000
"""Raft messages queued while a Ready is being saved; more are dropped (the core recovers them)."""
PROPOSE_BATCH = 64
"""Payloads per forwarded Propose message (the wire limit)."""


class RaftDriver(RaftRequests, GroupChanges):
    """One node's Raft: the Ready cycle and the network here; writes and reads come from
    :class:`RaftRequests`, group changes from :class:`GroupChanges`."""

    def __init__(self, node_id: str, cluster_id: str, raft_dir: str, preset: str, *, swim: Any, transport: Any,
                 clock: Callable[[], float], rng: Any, bootstrap: bool,
                 record: GossipRecord | None = None, observers: tuple = ()) -> None:
        """Open (or create) the raft dir and rebuild the core and state machine from it; ``record``: the
        node's gossip record (this driver sets its ``raft`` section and reads the others'; None: one that
        nobody flushes, for tests of the driver alone)."""
        self.id = node_id
        self.cluster_id = cluster_id
        settings = load_preset(preset)
        self.cfg, self.autopilot_cfg = settings.raft_driver, settings.autopilot
        self.swim, self.transport, self.clock = swim, transport, clock
        self.record = record if record is not None else GossipRecord()
        self.observers: list[Any] = list(observers)
        """Told of every applied entry, before and after it applies (``before_apply``, ``after_apply``:
        :class:`p2pswarm.events.host.EventsHost`); they must not raise."""
        self.counters: Counter[str] = Counter()
        from p2pswarm.security.autolock import cipher_for
        self.storage = FileStorage(raft_dir, cluster_id, cipher=cipher_for(raft_dir))  # None without --autolock
        stored = self.storage.load()
        self.sm = StateMachines()
        self.kv, self.cluster, self.security = self.sm.kv, self.sm.cluster, self.sm.security
        self.applied = 0
        if stored.snapshot is not None:
            self.sm.restore(stored.snapshot.data)
            self.applied = stored.snapshot.index
        now = clock()
        self.raft = Raft(node_id, settings.raft, rng, now, hard_state=stored.hard_state,
                         snapshot=stored.snapshot, entries=tuple(stored.entries),
                         bootstrap=(node_id,) if bootstrap else ())
        self.failed: str | None = None
        self.save_seconds = 0.0
        """Time spent waiting for saves (write + fsync, thread hand-off included)."""
        self._durable_hs = stored.hard_state
        self._pending_hs = stored.hard_state
        self.leader_since = now
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raft-io")
        self._kick = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._inbox: list = []
        self._proposals: list[bytes] = []
        self._read_requests: list[int] = []
        self._writes: dict[Any, _Pending] = {}
        """By (client, seq) for KV writes, by command id for cluster writes."""
        self._reads: dict[int, _Pending] = {}
        self._apply_waiters: list[tuple[int, asyncio.Future]] = []
        self._snapshot_refused_at: int | None = None
        """The applied index of the last state image over MAX_SNAPSHOT_BYTES (None: the last one fitted)."""
        self._sweep_due = float("inf")
        self._lanes: list[_Lane] = []
        self._read_seq = 0
        self._seen = (None, 0)
        self._facts: tuple = ((), 0, 0)
        self._facts_due = 0.0
        self._autopilot_due = now
        self._removals: dict[str, tuple[int, float]] = {}
        """Nodes `node rm` removed that are still Raft members -> (our applied index, time) when first seen."""
        self._observe(now)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        self._closing = True
        self._kick.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                log.error("raft loop failed", exc_info=True)
        await asyncio.get_running_loop().run_in_executor(None, self._io.shutdown)
        self.storage.close()
        self._fail_waiters("the node is shutting down")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing and self.failed is None:
            if not (self._inbox or self._proposals or self._read_requests or self.raft.has_ready()):
                delay = self._next_wake() - self.clock()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._kick.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
            self._kick.clear()
            self._guard("feed", self._feed, self.clock())
            if self.raft.has_ready():
                await self._handle_ready(loop)

    def _next_wake(self) -> float:
        wake = min(self.raft.next_deadline(), self._sweep_due)
        if self.raft.role == LEADER:
            wake = min(wake, self._autopilot_due)
        return wake

    # ------------------------------------------------------------ the Ready cycle

    def _feed(self, now: float) -> None:
        """Hand the core everything queued; one Ready then covers it all (group commit)."""
        inbox, self._inbox = self._inbox, []
        for msg in inbox:
            self._guard("step", self.raft.step, now, msg)
        self._flush_proposals(now)
        reads, self._read_requests = self._read_requests, []
        for request in reads:
            try:
                self.raft.read_index(now, request)
            except NotLeader:
                pass  # the reader retries after retry_interval
        if now >= self.raft.next_deadline():
            self.raft.tick(now)
        if now >= self._sweep_due:
            self._sweep(now)
        self._observe(now)
        if self.raft.role == LEADER and now >= self._autopilot_due:
            self._autopilot_due = now + self.autopilot_cfg.interval
            self._guard("autopilot", self._autopilot, now)

    async def _handle_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        rd = self.raft.ready()
        hs = self._pending_hs = rd.hard_state or self._pending_hs
        durable = self._durable_hs
        if rd.entries or rd.snapshot is not None or (hs.term, hs.vote) != (durable.term, durable.vote):
            started = self.clock()
            try:
                await loop.run_in_executor(self._io, self.storage.save, hs if hs != durable else None,
                                           rd.entries, rd.snapshot)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, StorageError) else f"raft storage failed: {exc!r}"
                self._fail(reason)
                return  # the core stays in this Ready: nothing it wanted durable leaves the node
            self._durable_hs = hs
            self.counters["saves"] += 1
            self.save_seconds += self.clock() - started
        for env in coalesce(rd.messages):
            self._send(env.to, env.msg)
        if rd.snapshot is not None and rd.snapshot.index > self.applied:
            self.sm.restore(rd.snapshot.data)
            self.applied = rd.snapshot.index
            self.counters["snapshots_restored"] += 1
        for entry in rd.committed_entries:
            if entry.index > self.applied:
                self._apply(entry)
        self.raft.advance(rd)
        for rs in rd.read_states:
            pending = self._reads.get(rs.request)
            if pending is not None and not pending.fut.done():
                pending.fut.set_result(rs.index)
        self._release_applied()
        now = self.clock()
        if self.applied - max(self.raft.log.snap_index, self._snapshot_refused_at or 0) >= self.cfg.snapshot_every:
            # serialized off the loop (nothing applies meanwhile: only this loop applies), so that the image of a
            # large state (100,000 tasks: 24 MB, seconds of CPU) does not stall gossip for all that time
            image = await loop.run_in_executor(self._io, self.sm.snapshot)
            now = self.clock()
            if len(image) > MAX_SNAPSHOT_BYTES:
                self._refuse_snapshot(len(image))
            elif self.raft.compact(now, self.applied, image) is not None:
                self.counters["snapshots_taken"] += 1
                if self._snapshot_refused_at is not None:
                    self._snapshot_refused_at = None
                    log.info("the replicated state fits a snapshot again (%d bytes): the raft log is compacted",
                             len(image))
        self._observe(now)

    def _refuse_snapshot(self, size: int) -> None:
        """Keep the log rather than store an image over MAX_SNAPSHOT_BYTES: this node could not read it back
        at its next start, nor could a follower install it.  Said once (an ERROR), counted, and tried again
        after another ``snapshot_every`` entries, since the state may shrink."""
        if self._snapshot_refused_at is None:
            log.error("the replicated state is %d bytes, over the %d-byte snapshot limit: the raft log is no "
                      "longer compacted and grows on disk; remove services or scale them down", size,
                      MAX_SNAPSHOT_BYTES)
        self._snapshot_refused_at = self.applied
        self.counters["snapshots_too_large"] += 1

    def _apply(self, entry: Any) -> None:
        self.applied = entry.index
        marks = [(o, o.before_apply(entry, self.sm)) for o in self.observers]
        result = None
        if entry.kind == "normal":
            key, result = self.sm.apply(entry.index, entry.term, entry.data)
            pending = self._writes.get(key) if key is not None else None
            if pending is not None and not pending.fut.done():
                pending.fut.set_result(result)
        for observer, mark in marks:
            observer.after_apply(entry, self.sm, mark, result)

    def _release_applied(self) -> None:
        if not self._apply_waiters:
            return
        keep = []
        for index, fut in self._apply_waiters:
            if index <= self.applied:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((index, fut))
        self._apply_waiters = keep

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self.counters["storage_failures"] += 1
        log.error("raft stopped on this node, gossip keeps running: %s", reason)
        self._fail_waiters(reason)

    def _fail_waiters(self, reason: str) -> None:
        for fut in [*(p.fut for p in self._writes.values()), *(p.fut for p in self._reads.values()),
                    *(f for _, f in self._apply_waiters)]:
            if not fut.done():
                fut.set_exception(RaftUnavailable(reason))

    # ------------------------------------------------------------ network

    def receive(self, msg: Any) -> None:
        """A decoded Raft message from the transport; checked, then queued for the core."""
        reason = self._reject_reason(msg)
        if reason is not None:
            self.counters[f"rejected_{reason}"] += 1
            log.debug("dropped %s from %s: %s", type(msg).__name__, msg.source, reason)
            return
        if len(self._inbox) >= MAX_INBOX or self.failed is not None:
            self.counters["inbox_dropped"] += 1
            return
        self._inbox.append(msg)
        self._kick.set()

    def _reject_reason(self, msg: Any) -> str | None:
        if msg.source == self.id or msg.term == 0 or _impossible(msg):
            return "impossible"
        if msg.source in self.raft.conf.members:
            return None
        facts = self.facts_of(msg.source)
        return None if facts is not None and facts.cluster_id == self.cluster_id else "outsider"

    def _send(self, to: str, msg: Any) -> None:
        member = self.swim.member(to)
        if member is None:
            self.counters["unroutable"] += 1
            return
        try:
            data = wire.encode(msg)
        except ValueError:
            self.counters["encode_errors"] += 1
            log.error("cannot encode %s for %s", type(msg).__name__, to, exc_info=True)
            return
        if not self.transport.send(member.addr, data, isinstance(msg, (AppendEntries, InstallSnapshot, Propose))):
            self.counters["send_dropped"] += 1

    def _flush_proposals(self, now: float) -> None:
        if not self._proposals:
            return
        props, self._proposals = self._proposals, []
        if self.raft.role == LEADER:
            for data in props:
                try:
                    self.raft.propose(now, data)
                except NotLeader:
                    return  # a transfer is under way: the writers retry
            return
        leader = self.leader_hint()
        if leader is None or leader == self.id:
            return
        # The leader drops a Propose from an older term and would step down for a newer one,
        # so a non-member (whose core has no term) uses the term the leader gossips.
        term = self.raft.term if self.raft.lead is not None else getattr(self.facts_of(leader), "term", 0)
        if term < 1:
            return
        for i in range(0, len(props), PROPOSE_BATCH):
            self._send(leader, Propose(term, self.id, tuple(props[i:i + PROPOSE_BATCH])))

    # ------------------------------------------------------------ views
    def _observe(self, now: float) -> None:
        """Count leader changes and republish our gossip facts when our role changes."""
        seen = (self.raft.lead, self.raft.term)
        if seen[0] is not None and seen != self._seen:
            self._seen = seen
            self.counters["leader_changes"] += 1
            log.info("raft leader is %s (%s), term %d", self._name(seen[0]), seen[0], seen[1])
            if seen[0] == self.id:
                self.leader_since = now
                self._autopilot_due = now
            # what the old leader may have lost goes to the new one now, not at the next retry
            for pending in [*self._writes.values(), *self._reads.values()]:
                pending.submit()
        role = (self.role_of(self.id), self.raft.term)
        applied = self.applied if role[0] != "-" else 0
        if role != self._facts[:2] or (applied != self._facts[2] and now >= self._facts_due):
            # the applied index (every state machine's, the security record's too) tells workers their
            # assignments or their part of the security record may have moved; at most every applied_gossip_interval
            self._facts, self._facts_due = (*role, applied), now + self.cfg.applied_gossip_interval
            self.record.set(RaftFacts(self.cluster_id, *role, applied))

    def facts_of(self, node: str) -> RaftFacts | None:
        """The ``raft`` section ``node`` gossips, if any."""
        member = self.swim.member(node)
        return self.record.of(member).raft if member is not None else None

    def leader_hint(self) -> str | None:
        """The leader Raft knows; else (a non-member) the live member gossiping leadership in the highest term."""
        if self.raft.lead is not None:
            return self.raft.lead
        best: tuple[int, str] | None = None
        for m in self.swim.members():
            facts = self.record.of(m).raft
            if (m.status == "alive" and facts is not None and facts.role == "leader"
                    and facts.cluster_id == self.cluster_id and (best is None or facts.term > best[0])):
                best = (facts.term, m.node)
        return best[1] if best else None

    def role_of(self, node: str) -> str:
        conf = self.raft.conf
        if not conf.voters:  # no configuration replicated here yet: trust gossip
            facts = self.facts_of(node) if node != self.id else None
            return facts.role if facts is not None and facts.cluster_id == self.cluster_id else "-"
        if node == self.raft.lead:
            return "leader"
        return "voter" if node in conf.voters else "learner" if node in conf.learners else "-"

    def status(self) -> dict[str, Any]:
        st = self.raft.status(self.clock())
        members = []
        for role, ids in (("voter", st["voters"]), ("learner", st["learners"])):
            for node in ids:
                pr = st["progress"].get(node, {})
                members.append({"id": node, "name": self._name(node), "role": role,
                                "leader": node == st["leader"], "health": self._status(node),
                                "addr": getattr(self.swim.member(node), "addr", None),
                                "match": self.raft.log.last_index() if node == self.id and st["role"] == LEADER
                                else pr.get("match")})
        return {"cluster_id": self.cluster_id, "id": self.id, "role": self.role_of(self.id),
                "leader": st["leader"], "leader_name": self._name(st["leader"]) if st["leader"] else None,
                "term": st["term"], "commit_index": st["commit"], "applied_index": self.applied,
                "last_index": st["last_index"], "snapshot_index": st["snapshot_index"],
                "members": members, "error": self.failed}

    def metrics(self) -> dict[str, Any]:
        raft = self.raft
        gauges = {"term": raft.term, "commit_index": raft.log.committed, "applied_index": self.applied,
                  "last_index": raft.log.last_index(), "snapshot_index": raft.log.snap_index,
                  "is_leader": int(raft.role == LEADER), "voters": len(raft.conf.voters),
                  "learners": len(raft.conf.learners), "storage_failed": int(self.failed is not None)}
        counters = dict(self.counters)
        counters["core_dropped"] = raft.dropped
        counters["save_seconds"] = round(self.save_seconds, 6)
        return {"gauges": gauges, "counters": counters}

    def _status(self, node: str) -> str:
        if node == self.id:
            return "alive"
        member = self.swim.member(node)
        return member.status if member is not None else "unknown"

    def _name(self, node: str | None) -> str:
        member = self.swim.member(node) if node else None
        return member.meta.name if member is not None else (node or "?")

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except (RaftError, ValueError) as exc:
            self.counters["core_errors"] += 1
            log.debug("raft %s refused: %s", what, exc)
        except Exception:
            self.counters["core_errors"] += 1
            log.error("error in raft %s (counted, node keeps running)", what, exc_info=True)


def coalesce(envelopes: tuple) -> list:
    """Merge each run of appends to one peer into one append, and a peer's acks into the highest one.

    Safe because the leader tracks a follower by the highest index it acknowledged
    (Progress.maybe_update clears every in-flight append up to it), and a merged
    append is exactly what the core would have sent with a bigger batch limit.
    """
    out: list = []
    runs: dict[str, list] = {}  # peer -> [position in out, first append, entries, payload bytes, commit]
    last_ack: dict[str, int] = {}
    for env in envelopes:
        m = env.msg
        if type(m) is AppendEntries and m.entries:
            run = runs.get(env.to)
            size = sum(len(e.data) for e in m.entries)
            if (run is not None and run[1].term == m.term and m.prev_index == run[2][-1].index
                    and len(run[2]) + len(m.entries) <= MAX_ENTRIES and run[3] + size <= MAX_BATCH_BYTES):
                run[2].extend(m.entries)
                run[3] += size
                run[4] = max(run[4], m.commit)
                continue
            runs[env.to] = [len(out), m, list(m.entries), size, m.commit]
        elif type(m) is AppendResp and not m.reject:
            pos = last_ack.get(env.to)
            if pos is not None and out[pos].msg.term == m.term:
                if m.index > out[pos].msg.index:
                    out[pos] = env
                continue
            last_ack[env.to] = len(out)
        out.append(env)
    for to, (pos, first, entries, _, commit) in runs.items():
        if len(entries) > len(first.entries):
            out[pos] = Envelope(to, AppendEntries(first.term, first.source, first.prev_index, first.prev_term,
                                                  commit, tuple(entries)))
    return out


def _impossible(msg: Any) -> bool:
    """Fields no correct peer can send: terms from the future of the message's own term."""
    term = msg.term
    if isinstance(msg, AppendEntries):
        return msg.prev_term > term or any(e.term > term for e in msg.entries)
    if isinstance(msg, InstallSnapshot):
        return msg.snap_term > term
    if isinstance(msg, RequestVote):
        return msg.last_term > term
    if isinstance(msg, AppendResp):
        return msg.hint_term > term
    return False
