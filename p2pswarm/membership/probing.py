"""Failure detection in the pure SWIM core: probes, their helpers and their verdicts.

Split from :mod:`p2pswarm.membership.swim` because finding out who is down is a concern of its own:
the randomized round robin of probe targets (suspects others doubt first, Lifeguard's confirmations),
the direct Ping with its spread retries, the PingReq to k helpers and the Nack they owe us, the relays
we run for other probers, round-trip times and members reached only through helpers, and the verdicts:
a failed probe starts a suspicion, an expired suspicion declares a death.  How that news spreads is
:mod:`p2pswarm.membership.dissemination`.  :class:`Probing` is mixed into
:class:`p2pswarm.membership.swim.Swim`, so both work on one object; pure like the rest of the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pswarm.membership.messages import LIVE, SUSPECT, Ack, Dead, Nack, Ping, PingReq, Suspect
from p2pswarm.membership.suspicion import INF

if TYPE_CHECKING:
    from p2pswarm.membership.config import SwimConfig
    from p2pswarm.membership.messages import MemberState
    from p2pswarm.membership.suspicion import Suspicions
    from p2pswarm.membership.swim import RandomSource

SEQ_MOD = 1 << 32
DIRECT_RETRIES = 3
"""Direct pings repeated, evenly spread, while helpers probe indirectly (at 5 % loss each
one divides by ~10 the chance that lost packets alone make a healthy member suspect)."""
NACK_FRACTION = 0.8
"""A helper nacks when the target has not answered it within this fraction of the (unscaled) probe timeout."""
RTT_WEIGHT = 0.2
"""Exponential moving average weight of a new round-trip sample."""


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


class Probing:
    """Probes and their verdicts in :class:`p2pswarm.membership.swim.Swim` (see the module docstring)."""

    # Swim's __slots__ lists every attribute of the core, and "__dict__": a base without __slots__ would bring
    # its own __dict__ (a TypeError).  Hidden from mypy, which would hold our assignments to this empty one.
    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:  # what the core provides (set in Swim.__init__ / defined on Swim or its other part)
        id: str
        addr: str
        config: SwimConfig
        rng: RandomSource
        health: int
        leaving: bool
        _members: dict[str, MemberState]
        _live: int
        _order: list[str]
        _order_pos: int
        _seq: int
        _probe: _Probe | None
        _probe_due: float
        _next_probe: float
        _relays: dict[int, _Relay]
        _relay_due: float
        _confirm_queue: list[str]
        _suspicions: Suspicions
        _rtt: dict[str, float]
        _indirect_only: set[str]

        def _send(self, addr: str, msg: Any, bulk: bool = False) -> None: ...
        def _count(self, name: str) -> None: ...
        def _adjust_health(self, delta: int) -> None: ...
        def _sample(self, k: int, now: float, exclude: str = "", include_dead: bool = False,
                    alive_only: bool = False) -> list[str]: ...
        def _refresh_relay_due(self) -> None: ...
        def _refresh_suspicion_due(self) -> None: ...
        def _piggyback(self, first=None) -> tuple: ...
        def _on_suspect(self, now: float, news: Suspect) -> None: ...
        def _on_dead(self, now: float, news: Dead) -> None: ...

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
