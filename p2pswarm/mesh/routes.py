"""Route choice for the routing mesh: which replica a new connection goes to (pure).

The data plane calls :func:`candidates` once per accepted connection, so it is O(b)
in the number of backends of one port and allocates little. The policy, in order:

1. **Local first.** A healthy replica on this node costs no network hop.
2. **Nearest, balanced.** Otherwise power of two choices over the remote replicas,
   each scored by expected delay::

       cost = (active_connections + 1) × (rtt + RTT_FLOOR)

   and of the two, ``a`` wins with probability ``cost_b / (cost_a + cost_b)``: a
   replica twice as far away gets about half the connections of a near one, a busy
   replica sheds load to an idle one (least connections, weighted by distance), and
   one-at-a-time clients still reach every replica instead of always the nearest.
   RTT_FLOOR keeps replicas on hosts with tiny, noisy RTTs comparable.
3. **Retry elsewhere.** The remaining replicas follow, cheapest first, so that a
   refused or failed connect moves on at once without another decision.

Backends are already filtered by the table builder (:mod:`p2pswarm.mesh.table`):
only running, healthy tasks on alive, unsuspected nodes appear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

RTT_FLOOR = 0.0005
"""Seconds added to every measured RTT (and used when none is known yet)."""

DEFAULT_LIMITS = {"max_conns": 4096, "connect_timeout": 1.0, "retries": 2, "idle_timeout": 300.0,
                  "drain_grace": 10.0}
"""Data-plane limits: open connections per node, seconds to connect, extra replicas tried after a
failed connect or an unanswered request, seconds a silent connection is kept, seconds open
connections keep going after their backend or port was removed."""


class RandomSource(Protocol):
    def randrange(self, start: int, stop: int | None = None) -> int: ...
    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Backend:
    task: str
    node: str
    addr: tuple[str, int]
    """Where the task listens."""
    local: bool
    rtt: float | None = None
    """Seconds, SWIM's smoothed round trip to the task's node; None when not measured."""
    via: tuple[str, int] | None = None
    """A relay node's relay listener, when this node cannot reach the task's node directly (or,
    with ``tls``, the TLS relay listener of the task's node or of a relay node)."""
    tls: bool = False
    """Connect to ``via`` over TLS (an ``encrypted`` port)."""

    @property
    def key(self) -> str:
        return self.task


def cost(backend: Backend, active: Mapping[str, int]) -> float:
    rtt = backend.rtt if backend.rtt is not None else 0.0
    return (active.get(backend.task, 0) + 1) * (rtt + RTT_FLOOR)


def candidates(backends: Sequence[Backend], active: Mapping[str, int], rng: RandomSource,
               limit: int = 3) -> list[Backend]:
    """Up to ``limit`` backends to try in order; empty when there is none."""
    if not backends or limit <= 0:
        return []
    local = [b for b in backends if b.local]
    tier = local or list(backends)
    first = _two_choices(tier, active, rng)
    rest = sorted((b for b in backends if b is not first), key=lambda b: (not b.local, cost(b, active), b.task))
    return [first, *rest[:limit - 1]]


def _two_choices(tier: Sequence[Backend], active: Mapping[str, int], rng: RandomSource) -> Backend:
    if len(tier) == 1:
        return tier[0]
    i = rng.randrange(len(tier))
    j = rng.randrange(len(tier) - 1)
    if j >= i:
        j += 1  # a second, different replica
    a, b = tier[i], tier[j]
    cost_a, cost_b = cost(a, active), cost(b, active)
    return a if rng.random() * (cost_a + cost_b) < cost_b else b
