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

:class:`Swim` holds the driver API, the member table, the timers' schedule and the
dispatch of received messages; its two halves are mixed in from sibling modules:
probes and their verdicts (:mod:`p2pswarm.membership.probing`) and the spreading
and taking in of news, push/pull included (:mod:`p2pswarm.membership.dissemination`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, Sequence

from p2pswarm.membership.config import SwimConfig
from p2pswarm.membership.dissemination import Dissemination
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
)
from p2pswarm.membership.news import NewsQueue
from p2pswarm.membership.probing import DIRECT_RETRIES, SEQ_MOD, Probing, _Probe, _Relay
from p2pswarm.membership.probing import NACK_FRACTION as NACK_FRACTION
from p2pswarm.membership.suspicion import INF, Suspicions


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


class Swim(Probing, Dissemination):
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

    def news_queued(self) -> int:
        """News items this core queued to pass on (membership and records), replacements included."""
        return self._news.puts + self._record_news.puts

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

    # ------------------------------------------------------------ helpers

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

    def _drop_suspicion(self, node: str) -> None:
        if self._suspicions.pop(node, None) is not None:
            self._refresh_suspicion_due()

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
