"""Pure SWIM failure detection and membership, with Lifeguard.

A plain object in the sans-IO style: the driver (node/daemon.py or the simulator)
hands it decoded messages and the current monotonic time, calls ``tick`` at
``next_deadline()``, and sends what ``drain_outbox()`` returns.  No clock, no
sockets, no global randomness: the same inputs give the same outputs.

One protocol period (probe_interval × (1 + health)):

1. Probe the next member of a randomized round-robin order with a Ping.
2. No Ack within probe_timeout × (1 + health): ask k others to probe it (PingReq);
   with Lifeguard they answer with a Nack when the target is silent to them too.
3. Still no Ack at the end of the period: suspect the target and gossip it.
4. A suspicion becomes a death when its (Lifeguard-shrinking) timeout runs out,
   unless the member refutes it with a higher incarnation.

Lifeguard's local health score rises when our own probes fail without the
expected nacks (evidence that *we* are slow) and when we must refute a
suspicion of ourselves; it stretches our timeouts so a slow node stops
accusing healthy ones.  News rides on every message (see news.py); a periodic
full-state push/pull repairs what gossip missed, and dead members and seeds
are periodically re-contacted so that the two halves of a healed partition merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, Sequence

from p2pswarm.membership.config import SwimConfig
from p2pswarm.membership.messages import (
    ALIVE,
    DEAD,
    LEFT,
    LIVE,
    SUSPECT,
    Ack,
    Alive,
    Dead,
    Gossip,
    MemberState,
    Meta,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Record,
    Suspect,
)
from p2pswarm.membership.news import NewsQueue
from p2pswarm.membership.suspicion import Suspicion, Suspicions

GONE = (DEAD, LEFT)
SEQ_MOD = 1 << 32
DIRECT_RETRIES = 3
"""Direct pings repeated, evenly spread, while helpers probe indirectly (at 5 % loss each
one divides by ~10 the chance that lost packets alone make a healthy member suspect)."""
NACK_FRACTION = 0.8
"""A helper nacks when the target has not answered it within this fraction of the (unscaled) probe timeout."""
RTT_WEIGHT = 0.2
"""Exponential moving average weight of a new round-trip sample."""
INF = float("inf")
MAX_INCARNATION = (1 << 32) - 1
MAX_RECORD_VERSION = (1 << 64) - 1
"""Wire limits: news claiming these about us cannot be outbid, so it is dropped as absurd."""


class RandomSource(Protocol):
    """What the core uses of the injected ``random.Random`` (never the global one)."""

    def random(self) -> float: ...
    def randrange(self, start: int, stop: int | None = None) -> int: ...
    def uniform(self, a: float, b: float) -> float: ...
    def choice(self, seq: Sequence[Any]) -> Any: ...


class Outgoing(NamedTuple):
    """A message for the driver to send: ``bulk`` ones go on the bulk channel."""

    addr: str
    msg: Any
    bulk: bool = False


_new_outgoing = tuple.__new__
_ACCUSED: dict[tuple, MemberState] = {}
"""Suspect and dead member states by content (bounded), shared by the cores of one process: after a zone outage
at 10,000 nodes the simulator's 8,000 cores each marked the same 2,000 members suspect, then dead (a real node
holds one core, and only misses)."""
_ACCUSED_MAX = 1 << 16


def _accused(cur: MemberState, incarnation: int, status: str) -> MemberState:
    """``cur`` marked ``status`` at ``incarnation``: an equal state already built is reused (they are immutable)."""
    key = (cur.node, incarnation, status, cur.addr, id(cur.meta))
    state = _ACCUSED.get(key)
    if state is None or state.meta is not cur.meta:
        if len(_ACCUSED) >= _ACCUSED_MAX:
            _ACCUSED.clear()
        state = _ACCUSED[key] = MemberState(cur.node, cur.addr, incarnation, status, cur.meta)
    return state
"""Builds an Outgoing from a tuple without the Python-level ``__new__`` (one per message sent)."""


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A member changed status as seen here (``old`` is None for a new member).

    ``by`` is who caused a suspicion or death (our own id when we originated it).
    """

    at: float
    node: str
    old: str | None
    new: str
    by: str = ""


@dataclass(frozen=True, slots=True)
class Member:
    """A read-only view of one member, as this node sees it."""

    node: str
    addr: str
    incarnation: int
    status: str
    meta: Meta
    status_since: float
    rtt: float | None
    record_version: int
    record: bytes


class _Probe:
    __slots__ = ("seq", "target", "addr", "sent", "ack_deadline", "retry_at", "retries", "end", "indirect",
                 "nacks", "expected_nacks", "done", "failed")

    def __init__(self, seq: int, target: str, addr: str, sent: float, ack_deadline: float,
                 end: float) -> None:
        self.seq = seq
        self.target = target
        self.addr = addr
        self.sent = sent
        self.ack_deadline = ack_deadline
        self.retries = DIRECT_RETRIES - 1
        self.retry_at = ack_deadline + (end - ack_deadline) / DIRECT_RETRIES
        self.end = end
        self.indirect = False
        self.nacks = 0
        self.expected_nacks = 0
        self.done = False
        self.failed = False


_Relay = tuple[str, int, float, bool, float]
"""A probe we make for another member: (its address, its seq, next deadline, nack still due, expiry)."""


class Swim:
    # A simulator holds thousands of cores and touches a different one at every event:
    # slots keep a core's state in one compact object (~10 % faster at 10,000 members),
    # what nearly every event reads first, so that it shares the object's first cache
    # lines.  "__dict__" stays so that anything not listed (a test's monkeypatched
    # method, a new attribute) still works, only without that benefit.
    __slots__ = ("_timers_due", "_probe_due", "_next_gossip", "_news", "_record_news", "_suspicion_due", "_relay_due",
                 "_outbox",
                 "_events", "_record_updates", "id", "addr", "leaving", "config", "_probe", "_members", "health",
                 "rng", "_seq", "counters", "_rtt", "_indirect_only", "_limit_for", "_limit_value", "_bounds_for",
                 "_bounds", "_live",
                 "incarnation", "leave_done", "joined", "join_attempts", "_meta", "_since", "_records",
                 "_record_version", "_record_payload", "track_records", "_gone", "_suspicions", "_order",
                 "_order_pos", "_relays", "_confirm_queue", "_seeds", "_join_at", "_join_delay", "_next_probe",
                 "_next_push_pull", "_next_reconnect", "_next_reap", "__dict__")

    def __init__(self, node_id: str, addr: str, meta: Meta, config: SwimConfig,
                 rng: RandomSource, now: float, incarnation: int = 0) -> None:
        self.id = node_id
        self.addr = addr
        self.config = config
        self.rng = rng
        self.incarnation = incarnation
        self.health = 0
        self.leaving = False
        self.leave_done = False
        self.joined = True
        self.join_attempts = 0
        self.counters: dict[str, int] = {}
        self.changes = 0
        """Counts changes of any member's state or record (not of RTTs): a driver that derives something from
        every member (DNS, mesh routes, admissions) rescans only when this moved, not on every loop turn."""
        self._stall_counted_until = 0.0
        """Until then a stall of our own loop does not raise our health again (see ``stalled``)."""
        self._meta = meta
        self._members: dict[str, MemberState] = {node_id: MemberState(node_id, addr, incarnation, ALIVE, meta)}
        self._since: dict[str, float] = {node_id: now}
        self._records: dict[str, Record] = {}
        self._record_version = 0
        self._record_payload = b""
        self._rtt: dict[str, float] = {}
        self._indirect_only: set[str] = set()
        """Members whose last probe was answered only through a helper: our direct link to them is down."""
        self.track_records = False
        self._record_updates: list[tuple[str, int]] = []
        self._live = 1
        self._gone: dict[str, None] = {}
        """Dead and left members, in the order they went (an ordered set: deterministic)."""
        self._suspicions = Suspicions()
        self._news = NewsQueue(config.gossip_sends)
        """Membership news (alive, suspect, dead), keyed by member id: it goes first in every message, as
        memberlist sends its own broadcasts before the delegate's, so that detection does not wait behind a
        burst of records."""
        self._record_news = NewsQueue(config.gossip_sends, config.max_stale_records)
        """Record news, keyed by member id: the space membership news leaves."""
        self._outbox: list[Outgoing] = []
        self._events: list[MemberEvent] = []
        self._order: list[str] = []
        self._order_pos = 0
        self._seq = rng.randrange(SEQ_MOD)
        self._probe: _Probe | None = None
        self._probe_due = INF
        """When the probe next needs a tick (INF: none, or done); kept here, next to the other
        deadlines, so that next_deadline reads one object."""
        self._relays: dict[int, _Relay] = {}
        self._confirm_queue: list[str] = []
        self._suspicion_due = INF
        """Earliest suspicion deadline (INF: none), kept where suspicions change."""
        self._limit_for = -1
        self._limit_value = 0
        self._bounds_for = -1
        self._bounds = (0.0, 0.0)
        self._seeds: tuple[str, ...] = ()
        self._join_at = INF
        self._join_delay = config.join_retry_initial
        # Stagger periodic work so that nodes started together do not act in lockstep.
        self._next_probe = now + rng.random() * config.probe_interval
        self._next_gossip = now
        self._next_push_pull = now + rng.uniform(0.5, 1.0) * config.push_pull_period(1)
        self._next_reconnect = now + rng.uniform(0.5, 1.0) * config.reconnect_interval
        self._next_reap = now + config.left_reap_after / 4
        self._timers_due = INF
        """Earliest of the periodic timers above (probe, push/pull, reconnect, reap, join)."""
        self._relay_due = INF
        """Earliest relay deadline (INF: none), kept where relays change."""
        self._refresh_timers()

    # ------------------------------------------------------------ driver API

    def join(self, now: float, seeds: Sequence[str]) -> None:
        """Start joining through ``seeds``; push/pull is retried with backoff until one answers."""
        self._seeds = tuple(s for s in seeds if s != self.addr)
        if not self._seeds:
            return
        self.joined = False
        self._join_at = now
        self._join_delay = self.config.join_retry_initial
        self._refresh_timers()

    def leave(self, now: float) -> None:
        """Announce a graceful leave; the driver should flush the outbox before exiting."""
        if self.leaving:
            return
        self.leaving = True
        self.incarnation += 1
        news = Dead(self.id, self.incarnation, self.id, True)
        self._set(now, MemberState(self.id, self.addr, self.incarnation, LEFT, self._meta), self.id)
        self._news.put(self.id, news)
        targets = self._sample(2 * self.config.gossip_fanout, now, include_dead=False)
        for node in targets:
            self._send(self._members[node].addr, Gossip(self.id, self.addr, (news,)))
        self.leave_done = True

    def update_meta(self, now: float, meta: Meta) -> None:
        """Change our metadata; a higher incarnation makes everyone take it."""
        self._meta = meta
        self._announce_alive(now)

    def set_record(self, now: float, payload: bytes) -> None:
        """Publish a new version of our state record (e.g. our task digest)."""
        self._record_version += 1
        self._record_payload = payload
        self._publish_record()

    def stalled(self, now: float, late: float) -> None:
        """The driver ticks us ``late`` seconds after our deadline: our own node is slow (a starved CPU, a long
        pause). Lifeguard's local health counts that as it counts a missed ack, since acks are what a late loop
        misses: while it lasts we probe less often and wait longer for answers, instead of blaming members for
        our own lateness. Counted when ``late`` is past the probe timeout, at most once per probe period (each
        successful probe takes one point off again)."""
        if not self.config.lifeguard or late <= self.config.probe_timeout or now < self._stall_counted_until:
            return
        self._stall_counted_until = now + self.config.probe_interval * (1 + self.health)
        self._count("stalls")
        self._adjust_health(1)

    def bootstrap(self, now: float, members: dict[str, MemberState], live: int | None = None) -> None:
        """Start from a known membership (a simulator's converged cluster, a saved view).

        The mapping is copied; entries are immutable and may be shared between nodes.
        ``live`` may give the number of live entries (ourselves included) to skip counting.
        """
        self._members = dict(members)
        self.changes += 1
        self._members[self.id] = MemberState(self.id, self.addr, self.incarnation, ALIVE, self._meta)
        if live is None or live != len(self._members):
            self._gone = {n: None for n, s in self._members.items() if s.status not in LIVE}
            live = len(self._members) - len(self._gone)
        self._live = live
        self._order = list(self._members)
        self._order_pos = 0
        self._next_push_pull = now + self.rng.uniform(0.5, 1.0) * self.config.push_pull_period(self._live)
        self._refresh_timers()

    def drain_record_updates(self) -> list[tuple[str, int]]:
        """(node, version) of records newly learned, if ``track_records`` is set (simulator)."""
        out, self._record_updates = self._record_updates, []
        return out

    def emit_into(self, outbox: list, events: list, record_updates: list) -> None:
        """Append what we emit (Outgoing, MemberEvent, learned records) to these lists.

        For a driver that runs many cores in one thread (the simulator): it gives them
        all the same lists and empties those after each call, instead of draining each
        core, whose own lists would be cold in the CPU cache by the time it runs again.
        The drain_* methods must not be used then.
        """
        self._outbox, self._events, self._record_updates = outbox, events, record_updates

    def members(self) -> list[Member]:
        return [self._view(node) for node in self._members]

    def member(self, node: str) -> Member | None:
        return self._view(node) if node in self._members else None

    def unreachable(self) -> tuple[str, ...]:
        """Alive members this node reaches only through helpers (the routing mesh relays to them)."""
        return tuple(sorted(n for n in self._indirect_only
                            if n in self._members and self._members[n].status in LIVE))

    def live_count(self) -> int:
        """Members alive or suspect, ourselves included (n in the config formulas)."""
        return self._live

    def drain_outbox(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    def drain_events(self) -> list[MemberEvent]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float:
        """When ``tick`` next has work to do.

        The driver asks after every message it hands us, so this only compares values
        kept up to date where they change (the periodic timers' minimum, the probe's
        next step, the earliest suspicion and relay deadlines): at 10,000 members even
        looking into the suspicion and relay tables of a core costs cache misses.
        """
        t = self._timers_due
        if self._probe_due < t:
            t = self._probe_due
        if (self._news.fresh or self._record_news.fresh) and self._next_gossip < t:
            t = self._next_gossip
        if self._suspicion_due < t:
            t = self._suspicion_due
        if self._relay_due < t:
            t = self._relay_due
        return t

    def _refresh_suspicion_due(self) -> None:
        self._suspicion_due = self._suspicions.earliest()

    def _refresh_relay_due(self) -> None:
        self._relay_due = min((r[2] for r in self._relays.values()), default=INF)

    def _refresh_timers(self) -> None:
        self._timers_due = min(self._next_probe, self._next_push_pull, self._next_reconnect, self._next_reap,
                               self._join_at)

    # ------------------------------------------------------------ timers

    def tick(self, now: float) -> None:
        if now >= self._probe_due and (probe := self._probe) is not None:  # (never None then)
            if not probe.indirect:
                self._start_indirect(now, probe)
            if now >= probe.retry_at:
                probe.retries -= 1
                probe.retry_at = probe.retry_at + (probe.end - probe.ack_deadline) / DIRECT_RETRIES \
                    if probe.retries > 0 else INF
                self._send(probe.addr, Ping(probe.seq, self.id, self.addr, probe.target, ()))
            if now >= probe.end:
                self._probe_failed(now, probe)
            else:
                self._probe_due = min(probe.retry_at, probe.end)
        if now >= self._next_probe:
            self._start_probe(now)
        if now >= self._suspicion_due:
            for node in self._suspicions.due(now):
                self._suspicion_expired(now, node)
        if now >= self._relay_due:
            self._tick_relays(now)
        if now >= self._next_gossip and (self._news.fresh or self._record_news.fresh):
            self._gossip(now)
        if now >= self._timers_due:  # (as it was before this tick) one of the rarer timers may be due
            if now >= self._join_at:
                self._join_retry(now)
            if now >= self._next_push_pull:
                self._next_push_pull = now + self.config.push_pull_period(self._live)
                self._push_pull_random(now)
            if now >= self._next_reconnect:
                self._next_reconnect = now + self.config.reconnect_period(self._live)
                self._reconnect(now)
            if now >= self._next_reap:
                self._next_reap = now + self.config.left_reap_after / 4
                self._reap(now)
        self._refresh_timers()

    def _start_probe(self, now: float) -> None:
        scale = 1 + self.health
        self._next_probe = now + self.config.probe_interval * scale
        if self.leaving:
            return
        target = (self._confirm_queue and self._next_confirmation_target()) or self._next_target()
        if target is None:
            return
        state = self._members[target]
        self._seq = (self._seq + 1) % SEQ_MOD
        ack_wait = self.config.probe_timeout * scale
        # Direct wait, then as long again for the helpers (whose nacks come at 0.8 of it),
        # but never past the end of the period.
        self._probe = _Probe(self._seq, target, state.addr, now, now + ack_wait,
                             now + min(2 * ack_wait, self.config.probe_interval * scale))
        self._probe_due = now + ack_wait
        buddy = None
        if state.status == SUSPECT and self.config.lifeguard:
            buddy = Suspect(target, state.incarnation, self.id)
        self._count("probes")
        self._send(state.addr, Ping(self._seq, self.id, self.addr, target,
                                    self._piggyback(first=buddy)))

    def _start_indirect(self, now: float, probe: _Probe) -> None:
        probe.indirect = True
        # Lifeguard (local health awareness): measure the helpers' time from when we actually
        # ask them. After a stall of our own (a starved CPU, a long GC) the scheduled end may
        # be past already, and judging the target before anyone could answer would make us
        # accuse a healthy member for our own slowness.
        wait = probe.ack_deadline - probe.sent
        if self.config.lifeguard and now + wait > probe.end:
            probe.end = now + wait
            probe.ack_deadline = now
            probe.retry_at = now + wait / DIRECT_RETRIES
            # The next probe waits for this one's verdict: starting it would drop this probe
            # unjudged, and a dead member would never be suspected.
            self._next_probe = max(self._next_probe, probe.end)
        # More direct tries, now and spread over the helpers' time (memberlist's TCP fallback
        # plays this role): a lost ping or ack should not make a healthy member suspect.
        self._send(probe.addr, Ping(probe.seq, self.id, self.addr, probe.target, ()))
        # Alive members help (memberlist asks only those): a suspect one is likely down, and its missing nack
        # would count against our own health (after a zone outage, 1 helper in 5 was such a member).  Suspect
        # ones only make up the number when too few are alive: then we may well be the one cut off.
        k = self.config.indirect_checks
        helpers = self._sample(k, now, exclude=probe.target, alive_only=True)
        if len(helpers) < k and self._suspicions:
            helpers += [n for n in self._sample(k, now, exclude=probe.target) if n not in helpers][:k - len(helpers)]
        probe.expected_nacks = len(helpers) if self.config.lifeguard else 0
        for node in helpers:
            self._count("indirect_probes")
            self._send(self._members[node].addr,
                       PingReq(probe.seq, self.id, self.addr, probe.target, probe.addr, self._piggyback()))

    def _probe_failed(self, now: float, probe: _Probe) -> None:
        probe.done = True
        probe.failed = True
        self._probe_due = INF
        self._count("probe_failures")
        if self.config.lifeguard:
            if probe.expected_nacks > 0:
                self._adjust_health(probe.expected_nacks - probe.nacks)
            else:
                self._adjust_health(1)
        state = self._members.get(probe.target)
        if state is None or state.status not in LIVE:
            return
        self._count("suspicions_started")
        self._on_suspect(now, Suspect(probe.target, state.incarnation, self.id))

    def _suspicion_expired(self, now: float, node: str) -> None:
        suspicion = self._suspicions.pop(node)
        self._refresh_suspicion_due()
        state = self._members.get(node)
        if state is None or state.status != SUSPECT or state.incarnation != suspicion.incarnation:
            return
        self._count("deaths_declared")
        self._on_dead(now, Dead(node, state.incarnation, self.id, False))

    def _tick_relays(self, now: float) -> None:
        for seq in [s for s, r in self._relays.items() if now >= r[2]]:
            origin_addr, origin_seq, deadline, nack_pending, expires = self._relays[seq]
            if nack_pending:
                self._count("nacks_sent")
                self._send(origin_addr, Nack(origin_seq, self.id))
                self._relays[seq] = (origin_addr, origin_seq, expires, False, expires)
            else:
                del self._relays[seq]
        self._refresh_relay_due()

    def _gossip(self, now: float) -> None:
        self._next_gossip = now + self.config.gossip_interval
        targets = self._sample(self.config.gossip_fanout, now, include_dead=True)
        if not targets:
            return
        batches = self._news.take_for(len(targets), self.config.gossip_bytes, self._limit())
        if self._record_news.fresh:
            left = self.config.gossip_bytes - self._news.taken_bytes
            batches = _joined(batches, self._record_news.take_for(len(targets), left, self._limit()))
        msg = None
        for node, news in zip(targets, batches):
            if news:
                if msg is None or msg.news is not news:  # messages are immutable: targets share one
                    msg = Gossip(self.id, self.addr, news)
                self._count("gossip_sent")
                self._send(self._members[node].addr, msg)

    def _join_retry(self, now: float) -> None:
        if self.joined or not self._seeds:
            self._join_at = INF
            return
        self.join_attempts += 1
        self._count("join_attempts")
        for seed in self._seeds:
            self._send(seed, self._push_pull_msg(join=True, reply=False), bulk=True)
        self._join_at = now + self._join_delay
        self._join_delay = min(self._join_delay * 2, self.config.join_retry_max)

    def _push_pull_random(self, now: float) -> None:
        targets = self._sample(1, now)
        if targets:
            self._count("push_pulls")
            self._send(self._members[targets[0]].addr, self._push_pull_msg(False, False), bulk=True)

    def _reconnect(self, now: float) -> None:
        """Re-contact one dead (not left) member, or the seeds when alone: heals partitions."""
        if self.leaving:
            return
        dead = [node for node in self._gone if self._members[node].status == DEAD]
        if dead:
            target = self._members[self.rng.choice(dead)].addr
        elif self._live <= 1 and self._seeds:
            target = self.rng.choice(self._seeds)
        else:
            return
        self._count("reconnects")
        self._send(target, self._push_pull_msg(False, False), bulk=True)

    def _reap(self, now: float) -> None:
        for node in list(self._gone):
            limit = self.config.dead_reap_after if self._members[node].status == DEAD else self.config.left_reap_after
            if node != self.id and now - self._since.get(node, now) >= limit:
                del self._members[node]
                del self._gone[node]
                self._since.pop(node, None)
                self._records.pop(node, None)
                self._rtt.pop(node, None)
                self._indirect_only.discard(node)
                self.changes += 1
                self._count("reaped")

    # ------------------------------------------------------------ receiving

    def receive(self, now: float, msg: Any) -> None:
        kind = type(msg)
        if kind is Ping:
            if msg.news:
                self._absorb(now, msg.news)
            if msg.target != self.id:
                self._count("misdirected")
                return
            if self.leaving:
                return
            self._send(msg.source_addr, Ack(msg.seq, self.id, self._piggyback()))
        elif kind is Ack:
            if msg.news:
                self._absorb(now, msg.news)
            self._on_ack(now, msg)
        elif kind is Gossip:
            self._absorb(now, msg.news)
        elif kind is PingReq:
            if msg.news:
                self._absorb(now, msg.news)
            self._on_ping_req(now, msg)
        elif kind is Nack:
            probe = self._probe
            if probe is not None and probe.seq == msg.seq and not probe.done:
                probe.nacks += 1
                self._count("nacks_received")
        elif kind is PushPull:
            self._on_push_pull(now, msg)
        else:
            self._count("unexpected_messages")

    def _on_ack(self, now: float, msg: Ack) -> None:
        probe = self._probe
        if probe is not None and probe.seq == msg.seq:
            if probe.failed and self.config.lifeguard:
                # The member we just suspected did answer, too late for us: evidence that
                # we are the slow one (Lifeguard's local health, extended to late acks).
                probe.failed = False
                self._adjust_health(1)
            if not probe.done:
                probe.done = True
                self._probe_due = INF
                if self.config.lifeguard and self.health:
                    self._adjust_health(-1)
                if msg.source != probe.target:  # relayed by a helper: only indirect probes got through
                    self._indirect_only.add(probe.target)
                else:
                    self._indirect_only.discard(probe.target)
                    sample = now - probe.sent
                    old = self._rtt.get(probe.target)
                    self._rtt[probe.target] = sample if old is None else old + RTT_WEIGHT * (sample - old)
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._refresh_relay_due()
            self._send(relay[0], Ack(relay[1], self.id, self._piggyback()))

    def _on_ping_req(self, now: float, msg: PingReq) -> None:
        if self.leaving:
            return
        self._seq = (self._seq + 1) % SEQ_MOD
        scale = 1 + self.health
        expires = now + self.config.probe_interval * scale
        # The nack is due at a fixed fraction of the *unscaled* timeout, as memberlist's is: the prober waits
        # probe_timeout × (1 + its own health), so a nack scaled by our health arrived too late for every prober
        # healthier than us, and counted as a missing nack raised its health too (one sick node spread it).
        nack_at = now + NACK_FRACTION * self.config.probe_timeout
        want_nack = self.config.lifeguard
        self._relays[self._seq] = relay = (msg.source_addr, msg.seq, nack_at if want_nack else expires,
                                           want_nack, expires)
        if relay[2] < self._relay_due:
            self._relay_due = relay[2]
        self._send(msg.target_addr, Ping(self._seq, self.id, self.addr, msg.target, self._piggyback()))

    def _on_push_pull(self, now: float, msg: PushPull) -> None:
        self._count("push_pulls_received")
        for state in msg.members:
            self._merge_state(now, state, msg.source)
        for record in msg.records:
            self._on_record(now, record)
        if msg.reply:
            if not self.joined:
                self.joined = True
                self._join_at = INF
                self._refresh_timers()
        else:
            self._send(msg.source_addr, self._push_pull_msg(False, True), bulk=True)

    def _merge_state(self, now: float, state: MemberState, source: str) -> None:
        if state.status == ALIVE:
            self._on_alive(now, Alive(state.node, state.incarnation, state.addr, state.meta))
        elif state.status == LEFT:
            self._on_dead(now, Dead(state.node, state.incarnation, source, True))
        else:
            # A remote "dead" only makes us suspect: the member gets its chance to refute.
            if state.node not in self._members:
                self._on_alive(now, Alive(state.node, state.incarnation, state.addr, state.meta))
            self._on_suspect(now, Suspect(state.node, state.incarnation, source))

    def _absorb(self, now: float, news: tuple) -> None:
        """Apply piggybacked news.

        Every item is sent retransmit_limit times (20 in a 10,000-member cluster), mostly
        to members that have it already, so news that cannot change our view (older or
        equal incarnation or record version) is recognised here, in one dictionary
        lookup.  Whatever is left, including all news about ourselves and absurd
        incarnations, goes to the handlers, which check everything.
        """
        members = self._members
        gone = self._gone
        suspicions = self._suspicions
        records = self._records
        me = self.id
        for item in news:
            kind = type(item)
            node = item.node
            if kind is Record:
                # A record sent on and on mostly repeats what we hold; a newer one about another member is
                # taken here as _on_record takes it (once per record and member: the commonest change).
                held = records.get(node)
                if node == me:
                    self._on_record(now, item)
                elif (held is None or item.version > held.version) and node in members:
                    records[node] = item
                    self.changes += 1
                    self._record_news.put(node, item)
                    if self.track_records:
                        self._record_updates.append((node, item.version))
                continue
            if kind is not Alive and item.incarnation < MAX_INCARNATION:
                # Suspicions and deaths mostly repeat what we hold: members we hold gone
                # ignore them, members we suspect count them as confirmations.  Both are
                # small dictionaries; the member table need not be touched.  (_gone holds
                # exactly the dead and left members, and a suspicion is only held while its
                # member is suspect at the suspicion's incarnation.)
                if node in gone:
                    continue
                suspicion = suspicions.get(node)
                if suspicion is not None and kind is Suspect and item.incarnation == suspicion.incarnation:
                    if not suspicion.full and item.by not in suspicion.confirmers:
                        self._confirm(suspicion, item)
                    continue
            cur = members.get(node)
            if cur is not None and node != me and item.incarnation <= cur.incarnation:
                if item.incarnation < cur.incarnation or kind is Alive or cur.status in GONE:
                    continue
            if kind is Alive:
                self._on_alive(now, item)
            elif kind is Suspect:
                self._on_suspect(now, item)
            else:
                self._on_dead(now, item)

    def _on_alive(self, now: float, news: Alive) -> None:
        if news.incarnation >= MAX_INCARNATION:
            self._count("absurd_news")  # nobody could ever outbid it
            return
        node = news.node
        if node == self.id:
            if news.incarnation > self.incarnation or (
                    news.incarnation == self.incarnation and (news.addr != self.addr or news.meta != self._meta)):
                self._refute(now, news.incarnation)
            return
        cur = self._members.get(node)
        if cur is not None and news.incarnation <= cur.incarnation:
            return
        self._drop_suspicion(node)
        self._set(now, MemberState(node, news.addr, news.incarnation, ALIVE, news.meta), "")
        if cur is None:
            self._order.append(node)  # joins the unvisited part of the current round
        self._news.put(node, news)

    def _accusation_target(self, now: float, news: Suspect | Dead) -> MemberState | None:
        """The member a suspicion or death is about, if the news can still change our view."""
        if news.incarnation >= MAX_INCARNATION:
            self._count("absurd_news")
            return None
        if news.node == self.id:
            self._rumour_about_me(now, news.incarnation)
            return None
        cur = self._members.get(news.node)
        if cur is None or news.incarnation < cur.incarnation or cur.status in GONE:
            return None
        return cur

    def _on_suspect(self, now: float, news: Suspect) -> None:
        cur = self._accusation_target(now, news)
        if cur is None:
            return
        node = news.node
        if cur.status == SUSPECT:
            suspicion = self._suspicions.get(node)
            if suspicion is not None:
                self._confirm(suspicion, news)
            return
        low, high = self._suspicion_bounds()
        if news.by != self.id and self.config.lifeguard:
            self._maybe_confirm(node)
        suspicion = Suspicion(news.incarnation, now, low, high, self.config.expected_confirmations(self._live), news.by)
        self._suspicions.start(node, suspicion)
        if suspicion.deadline < self._suspicion_due:  # (a member is suspected once at a time)
            self._suspicion_due = suspicion.deadline
        self._set(now, _accused(cur, news.incarnation, SUSPECT), news.by)
        self._news.put(node, news)

    def _confirm(self, suspicion: Suspicion, news: Suspect) -> None:
        """Someone else suspects a member we suspect: if independent, it shortens our timeout
        (Lifeguard) and is passed on."""
        if news.incarnation == suspicion.incarnation and suspicion.confirm(news.by):
            self._suspicions.moved(news.node, suspicion)
            if suspicion.deadline < self._suspicion_due:
                self._suspicion_due = suspicion.deadline  # only ever earlier: still the minimum
            self._news.put(news.node, news)

    def _on_dead(self, now: float, news: Dead) -> None:
        cur = self._accusation_target(now, news)
        if cur is None:
            return
        node = news.node
        self._drop_suspicion(node)
        status = LEFT if news.left else DEAD
        self._set(now, _accused(cur, news.incarnation, status), news.by)
        self._news.put(node, news)

    def _on_record(self, now: float, record: Record) -> None:
        if record.node == self.id:
            if record.version >= MAX_RECORD_VERSION:
                self._count("absurd_news")
                return
            if record.version >= self._record_version and (
                    record.version > self._record_version or record.payload != self._record_payload):
                # Someone holds a record from our previous life: outbid it.
                self._record_version = record.version + 1
                self._publish_record()
            return
        cur = self._records.get(record.node)
        if record.node not in self._members or (cur is not None and record.version <= cur.version):
            return
        self._records[record.node] = record
        self.changes += 1
        self._record_news.put(record.node, record)
        if self.track_records:
            self._record_updates.append((record.node, record.version))

    # ------------------------------------------------------------ helpers

    def _rumour_about_me(self, now: float, incarnation: int) -> None:
        """Someone thinks we are suspect or dead: refute, or repeat our newer incarnation."""
        if self.leaving:
            return
        if incarnation >= self.incarnation:
            self._refute(now, incarnation)
        elif self._news.get(self.id) is None:
            # A stale rumour: whoever spreads it missed our refutation; spread it again.
            self._news.put(self.id, Alive(self.id, self.incarnation, self.addr, self._meta))

    def _refute(self, now: float, incarnation: int) -> None:
        if incarnation >= MAX_INCARNATION:
            self._count("absurd_news")  # cannot be outbid on the wire: ignore it
            return
        self._count("refutes")
        if self.config.lifeguard:
            self._adjust_health(1)
        self.incarnation = incarnation + 1
        self._announce_alive(now, bump=False)

    def _announce_alive(self, now: float, bump: bool = True) -> None:
        if bump:
            self.incarnation += 1
        self._members[self.id] = MemberState(self.id, self.addr, self.incarnation, ALIVE, self._meta)
        self.changes += 1
        self._news.put(self.id, Alive(self.id, self.incarnation, self.addr, self._meta))

    def _publish_record(self) -> None:
        record = Record(self.id, self._record_version, self._record_payload)
        self._records[self.id] = record
        self.changes += 1
        self._record_news.put(self.id, record)

    def _adjust_health(self, delta: int) -> None:
        self.health = min(self.config.health_max, max(0, self.health + delta))

    def _set(self, now: float, state: MemberState, by: str) -> None:
        old = self._members.get(state.node)
        old_status = old.status if old is not None else None
        self._members[state.node] = state
        self.changes += 1
        if old_status != state.status:
            was_live = old_status in LIVE
            is_live = state.status in LIVE
            self._live += is_live - was_live
            if is_live:
                self._gone.pop(state.node, None)
            else:
                self._gone[state.node] = None
            self._since[state.node] = now
            self._events.append(MemberEvent(now, state.node, old_status, state.status, by))

    def _next_target(self) -> str | None:
        """Next member of a randomized round robin: a lazy Fisher-Yates shuffle per round."""
        order = self._order
        members = self._members
        rng = self.rng
        for _ in range(2):
            while self._order_pos < len(order):
                pos = self._order_pos
                j = rng.randrange(pos, len(order))
                order[pos], order[j] = order[j], order[pos]
                node = order[pos]
                self._order_pos = pos + 1
                state = members.get(node)
                if state is not None and state.status in LIVE and node != self.id:
                    return node
            self._order = order = list(members)
            self._order_pos = 0
        return None

    def _drop_suspicion(self, node: str) -> None:
        if self._suspicions.pop(node, None) is not None:
            self._refresh_suspicion_due()

    def _maybe_confirm(self, node: str) -> None:
        """Probe a member someone else suspects at our next period, with probability K/(n − 2).

        About K members then check it independently: their confirmations shrink the
        suspicion timeout of a member that is really gone, while a healthy member simply
        answers them.  The expected extra load per suspicion is K probes whatever n is.
        """
        others = self._live - 2
        expected = self.config.expected_confirmations(self._live)
        if others <= 0 or expected <= 0:
            return
        if expected >= others or self.rng.random() < expected / others:
            self._confirm_queue.append(node)

    def _next_confirmation_target(self) -> str | None:
        while self._confirm_queue:
            node = self._confirm_queue.pop(0)
            state = self._members.get(node)
            if state is not None and state.status == SUSPECT:
                return node
        return None

    def _sample(self, k: int, now: float, exclude: str = "", include_dead: bool = False,
                alive_only: bool = False) -> list[str]:
        """Up to ``k`` distinct random live members (only alive ones, or also recently dead ones, if asked)."""
        members = self._members
        pool = self._order if len(self._order) >= len(members) // 2 else list(members)
        if not pool or k <= 0:
            return []
        chosen: list[str] = []
        window = self.config.gossip_to_dead
        draw = self.rng.randrange
        size = len(pool)
        for _ in range(4 * k + 8):
            node = pool[draw(size)]
            if node == self.id or node == exclude or node in chosen:
                continue
            state = members.get(node)
            if state is None:
                continue
            status = state.status
            if status == ALIVE or (status == SUSPECT and not alive_only) or (
                    include_dead and status == DEAD and now - self._since.get(node, now) < window):
                chosen.append(node)
                if len(chosen) == k:
                    break
        return chosen

    def _piggyback(self, first=None) -> tuple:
        if first is None and not self._news.queued and not self._record_news.queued:
            return ()
        budget = self.config.piggyback_bytes
        if first is not None or self._news.queued:
            news = self._news.take(budget, self._limit(), first)
            budget -= self._news.taken_bytes
        else:
            news = []
        if self._record_news.queued:
            news += self._record_news.take(budget, self._limit())
        return tuple(news)

    def _suspicion_bounds(self) -> tuple[float, float]:
        """``config.suspicion_bounds(n)``, kept while n holds: every suspicion holds the two numbers, and after
        a zone outage at 10,000 nodes each node holds a suspicion of each of 2,000 members at once."""
        if self._bounds_for != self._live:
            self._bounds_for = self._live
            self._bounds = self.config.suspicion_bounds(self._live)
        return self._bounds

    def _limit(self) -> int:
        if self._limit_for != self._live:
            self._limit_for = self._live
            self._limit_value = self.config.retransmit_limit(self._live)
        return self._limit_value

    def _push_pull_msg(self, join: bool, reply: bool) -> PushPull:
        return PushPull(self.id, self.addr, join, reply, tuple(self._members.values()),
                        tuple(self._records.values()))

    def _send(self, addr: str, msg: Any, bulk: bool = False) -> None:
        self._outbox.append(_new_outgoing(Outgoing, (addr, msg, bulk)))  # = Outgoing(addr, msg, bulk)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _view(self, node: str) -> Member:
        state = self._members[node]
        record = self._records.get(node)
        return Member(node, state.addr, state.incarnation, state.status, state.meta,
                      self._since.get(node, 0.0), self._rtt.get(node),
                      record.version if record else 0, record.payload if record else b"")


def _joined(first: list[tuple], then: list[tuple]) -> list[tuple]:
    """Per gossip target, its membership news then its record news; targets that share both share one tuple."""
    if not then or not first:
        return then or first
    joined: dict[tuple[int, int], tuple] = {}
    return [joined.setdefault((id(a), id(b)), a + b) for a, b in zip(first, then)]
