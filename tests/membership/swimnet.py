"""A small deterministic in-memory network of pure SWIM cores, for scenario tests.

Every core is a real ``Swim``; the harness is its driver: it keeps a fake clock,
ticks each core at its ``next_deadline()``, and delivers each core's outbox to the
core listening on the destination address after a small seeded latency.  Every
message goes through the real wire codec (``encode`` then ``decode``) on its way,
so a scenario also checks that the cores only ever emit valid wire messages.

Faults: crashed nodes (no ticks, messages to them vanish), directed link cuts,
partitions into groups, and random loss.  Everything random comes from one
``random.Random(seed)``, so a scenario with the same seed replays exactly.

The harness keeps a transcript: ``sent`` (every message, with its fate) and
``events`` (every ``MemberEvent`` each core reported), for tests to query.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from p2pswarm import wire
from p2pswarm.membership.config import SwimConfig
from p2pswarm.membership.messages import MemberState, Meta
from p2pswarm.membership.swim import MemberEvent, Swim
from p2pswarm.node.presets import preset

TEST = preset("test").membership


def addr_of(node: str) -> str:
    return f"{node}.swimnet:7946"


@dataclass
class Sent:
    """One message as the harness saw it leave a core."""

    at: float
    src: str
    dst: str | None  # node id listening on the address (None: nobody)
    addr: str
    msg: Any
    bulk: bool
    fate: str = "in flight"  # "in flight", "delivered", "dropped", "rejected" (undecodable)
    cause: str = "tick"  # "tick": from a timer; "receive": answering a message; "call"; "inject" (by a test)


class SwimNet:
    def __init__(self, seed: int = 1, config: SwimConfig = TEST, latency: float = 0.002,
                 jitter: float = 0.002, loss: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.config = config
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.now = 0.0
        self.cores: dict[str, Swim] = {}
        self.by_addr: dict[str, str] = {}
        self.down: set[str] = set()
        self.cut: set[tuple[str, str]] = set()  # directed (src, dst) links that drop everything
        self.drop_if: Callable[[Sent], bool] | None = None  # extra, test-specific drop rule
        self.sent: list[Sent] = []
        self.rejected: list[Sent] = []  # delivered bytes that the receiver could not decode
        self.events: list[tuple[str, MemberEvent]] = []  # (observer, event)
        self._flight: list[tuple] = []  # (at, serial, Sent, encoded bytes)
        self._serial = 0
        self._lives: dict[str, int] = {}

    # ------------------------------------------------------------ building

    def add(self, node: str, *, config: SwimConfig | None = None, incarnation: int = 0,
            meta: Meta | None = None) -> Swim:
        """Start a core for ``node`` (a restart when the id was used before)."""
        life = self._lives.get(node, 0) + 1
        self._lives[node] = life
        rng = random.Random(f"{self.seed}/{node}/{life}")
        core = Swim(node, addr_of(node), meta or Meta(name=node), config or self.config, rng, self.now,
                    incarnation=incarnation)
        self.cores[node] = core
        self.by_addr[core.addr] = node
        self.down.discard(node)
        return core

    def cluster(self, names: Iterable[str], **kwargs) -> list[Swim]:
        """A converged cluster: every core bootstrapped with every member alive."""
        cores = [self.add(name, **kwargs) for name in names]
        states = {c.id: MemberState(c.id, c.addr, c.incarnation, "alive", c.member(c.id).meta) for c in cores}
        for core in cores:
            core.bootstrap(self.now, states)
        return cores

    # ------------------------------------------------------------ faults

    def crash(self, node: str) -> None:
        self.down.add(node)

    def resume(self, node: str) -> None:
        """Bring a crashed core back as it was (a long pause rather than a crash)."""
        self.down.discard(node)

    def block(self, a: str, b: str, both: bool = True) -> None:
        self.cut.add((a, b))
        if both:
            self.cut.add((b, a))

    def unblock(self, a: str, b: str) -> None:
        self.cut.discard((a, b))
        self.cut.discard((b, a))

    def partition(self, *groups: Iterable[str]) -> None:
        groups = [list(g) for g in groups]
        for i, left in enumerate(groups):
            for j, right in enumerate(groups):
                if i != j:
                    for a in left:
                        for b in right:
                            self.cut.add((a, b))

    def heal(self) -> None:
        self.cut.clear()

    # ------------------------------------------------------------ running

    def _next_timer(self) -> tuple[float, str] | None:
        best = None
        for node in sorted(self.cores):
            if node in self.down:
                continue
            due = (max(self.cores[node].next_deadline(), self.now), node)
            if best is None or due < best:
                best = due
        return best

    def run(self, duration: float) -> None:
        self.run_until(lambda: False, duration)

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Advance the clock until ``done()`` holds (checked after every step) or ``timeout`` passes."""
        end = self.now + timeout
        same_instant = 0
        while True:
            if done():
                return True
            timer = self._next_timer()
            msg_at = self._flight[0][0] if self._flight else float("inf")
            timer_at = timer[0] if timer else float("inf")
            at = min(msg_at, timer_at)
            if at > end:
                self.now = end
                return done()
            same_instant = same_instant + 1 if at == self.now else 0
            if same_instant > 10_000:
                raise RuntimeError(f"no progress at t={self.now}: a core keeps asking to run now")
            self.now = at
            if msg_at <= timer_at:
                _, _, sent, data = heapq.heappop(self._flight)
                self._deliver(sent, data)
            else:
                self._tick(timer[1])

    def _tick(self, node: str) -> None:
        core = self.cores[node]
        core.tick(self.now)
        self._collect(node, "tick")

    def _deliver(self, sent: Sent, data: bytes) -> None:
        dst = self.by_addr.get(sent.addr)
        if dst is None or dst in self.down or (sent.src, dst) in self.cut:
            sent.fate = "dropped"
            return
        try:
            msg = wire.decode(data)
        except wire.WireError:  # what a real node does: count and drop
            sent.fate = "rejected"
            self.rejected.append(sent)
            return
        sent.fate = "delivered"
        self.cores[dst].receive(self.now, msg)
        self._collect(dst, "receive")

    def flush(self, node: str) -> None:
        """Send what ``node`` has in its outbox now (after a direct call such as ``leave``)."""
        self._collect(node, "call")

    def _collect(self, node: str, cause: str) -> None:
        core = self.cores[node]
        for ev in core.drain_events():
            self.events.append((node, ev))
        for out in core.drain_outbox():
            data = wire.encode(out.msg)  # a core must only ever emit valid wire messages
            dst = self.by_addr.get(out.addr)
            sent = Sent(self.now, node, dst, out.addr, out.msg, out.bulk, cause=cause)
            self.sent.append(sent)
            if dst is None or (node, dst) in self.cut or (self.drop_if is not None and self.drop_if(sent)):
                sent.fate = "dropped"
                continue
            if self.loss and self.rng.random() < self.loss:
                sent.fate = "dropped"
                continue
            delay = self.latency + (self.rng.random() * self.jitter if self.jitter else 0.0)
            self._serial += 1
            heapq.heappush(self._flight, (self.now + delay, self._serial, sent, data))

    def inject(self, dst: str, msg: Any, src: str = "outsider") -> None:
        """Hand ``msg`` to ``dst`` now, as if a peer (possibly a misbehaving one) had sent it."""
        sent = Sent(self.now, src, dst, addr_of(dst), msg, False, cause="inject")
        self.sent.append(sent)
        self._deliver(sent, wire.encode(msg))

    # ------------------------------------------------------------ queries

    def up(self) -> list[str]:
        return [n for n in sorted(self.cores) if n not in self.down]

    def status(self, observer: str, node: str) -> str | None:
        member = self.cores[observer].member(node)
        return member.status if member is not None else None

    def view(self, observer: str) -> dict[str, str]:
        return {m.node: m.status for m in self.cores[observer].members()}

    def all_see(self, node: str, status: str, observers: Iterable[str] | None = None) -> bool:
        observers = self.up() if observers is None else observers
        return all(self.status(o, node) == status for o in observers if o != node)

    def converged(self, nodes: Iterable[str]) -> bool:
        """Every node in ``nodes`` sees exactly ``nodes`` and all of them alive."""
        nodes = sorted(nodes)
        want = {n: "alive" for n in nodes}
        return all(self.view(n) == want for n in nodes)

    def status_at(self, observer: str, node: str, at: float) -> str | None:
        """What ``observer`` believed about ``node`` just after time ``at`` (from its events)."""
        status = None
        for obs, ev in self.events:
            if obs == observer and ev.node == node and ev.at <= at:
                status = ev.new
        return status

    def events_about(self, node: str, new: str | None = None) -> list[tuple[str, MemberEvent]]:
        return [(o, ev) for o, ev in self.events if ev.node == node and (new is None or ev.new == new)]

    def messages(self, kind: type | None = None, src: str | None = None, dst: str | None = None,
                 since: float = 0.0) -> list[Sent]:
        return [s for s in self.sent
                if (kind is None or type(s.msg) is kind) and (src is None or s.src == src)
                and (dst is None or s.dst == dst) and s.at >= since]
