"""Dissemination in the pure SWIM core: how what members know spreads, and how it is taken in.

Split from :mod:`p2pswarm.membership.swim` because spreading news is a concern of its own:
infection-style gossip rounds and the news piggybacked on every probe and ack (membership news
first, records in the space it leaves), applying news (alive, suspect, dead, records; a suspicion
started here, confirmations that shrink it), refuting rumours about ourselves, and the full-state
push/pull that repairs what gossip missed: joining through seeds, re-contacting dead members so that
healed partitions merge, reaping the long gone.  Who is down is found by
:mod:`p2pswarm.membership.probing`.  :class:`Dissemination` is mixed into
:class:`p2pswarm.membership.swim.Swim`, so both work on one object; pure like the rest of the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pswarm.membership.messages import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    Alive,
    Dead,
    Gossip,
    MemberState,
    PushPull,
    Record,
    Suspect,
)
from p2pswarm.membership.suspicion import INF, Suspicion

if TYPE_CHECKING:
    from p2pswarm.membership.config import SwimConfig
    from p2pswarm.membership.messages import Meta
    from p2pswarm.membership.news import NewsQueue
    from p2pswarm.membership.suspicion import Suspicions
    from p2pswarm.membership.swim import RandomSource

GONE = (DEAD, LEFT)
MAX_INCARNATION = (1 << 32) - 1
MAX_RECORD_VERSION = (1 << 64) - 1
"""Wire limits: news claiming these about us cannot be outbid, so it is dropped as absurd."""

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


class Dissemination:
    """Gossip, news and push/pull in :class:`p2pswarm.membership.swim.Swim` (see the module docstring)."""

    # Empty, and hidden from mypy, for the reasons given in probing.py.
    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:  # what the core provides (set in Swim.__init__ / defined on Swim or its other part)
        id: str
        addr: str
        config: SwimConfig
        rng: RandomSource
        incarnation: int
        leaving: bool
        joined: bool
        join_attempts: int
        changes: int
        track_records: bool
        _meta: Meta
        _members: dict[str, MemberState]
        _since: dict[str, float]
        _gone: dict[str, None]
        _live: int
        _order: list[str]
        _records: dict[str, Record]
        _record_version: int
        _record_payload: bytes
        _record_updates: list[tuple[str, int]]
        _rtt: dict[str, float]
        _indirect_only: set[str]
        _suspicions: Suspicions
        _suspicion_due: float
        _news: NewsQueue
        _record_news: NewsQueue
        _next_gossip: float
        _seeds: tuple[str, ...]
        _join_at: float
        _join_delay: float
        _limit_for: int
        _limit_value: int
        _bounds_for: int
        _bounds: tuple[float, float]

        def _send(self, addr: str, msg: Any, bulk: bool = False) -> None: ...
        def _count(self, name: str) -> None: ...
        def _set(self, now: float, state: MemberState, by: str) -> None: ...
        def _sample(self, k: int, now: float, exclude: str = "", include_dead: bool = False,
                    alive_only: bool = False) -> list[str]: ...
        def _adjust_health(self, delta: int) -> None: ...
        def _announce_alive(self, now: float, bump: bool = True) -> None: ...
        def _publish_record(self) -> None: ...
        def _drop_suspicion(self, node: str) -> None: ...
        def _refresh_timers(self) -> None: ...
        def _maybe_confirm(self, node: str) -> None: ...

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


def _joined(first: list[tuple], then: list[tuple]) -> list[tuple]:
    """Per gossip target, its membership news then its record news; targets that share both share one tuple."""
    if not then or not first:
        return then or first
    joined: dict[tuple[int, int], tuple] = {}
    return [joined.setdefault((id(a), id(b)), a + b) for a, b in zip(first, then)]
