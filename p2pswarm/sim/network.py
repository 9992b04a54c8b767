"""A seeded simulated network: latency, loss, duplication, reordering and partitions.

Reordering falls out of per-message random latency (base + exponential jitter);
duplication sends a second copy with its own latency.  Partitions assign nodes to
groups and block chosen (from_group, to_group) directions, so asymmetric
partitions are one blocked direction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from math import log
from typing import Any, Callable


@dataclass
class NetworkModel:
    base_latency: float = 0.0005
    """Seconds every message takes at least (one way)."""
    jitter: float = 0.0005
    """Mean of the exponential extra latency, seconds."""
    loss: float = 0.0
    """Probability that a message is lost."""
    duplicate: float = 0.0
    """Probability that a message is delivered twice."""


class SimNetwork:
    def __init__(self, model: NetworkModel, rng: random.Random) -> None:
        self.model = model
        self.rng = rng
        self.group: dict[int, int] = {}
        self.blocked: set[tuple[int, int]] = set()
        self.sent = 0
        self.lost = 0

    def partition(self, groups: list[list[int]], symmetric: bool = True) -> None:
        """Split nodes into groups; messages between groups are dropped (one way if not symmetric)."""
        self.group = {node: g for g, members in enumerate(groups) for node in members}
        self.blocked = set()
        for a in range(len(groups)):
            for b in range(len(groups)):
                if a != b and (symmetric or a < b):
                    self.blocked.add((a, b))

    def heal(self) -> None:
        self.group = {}
        self.blocked = set()

    def delays(self, src: int, dst: int) -> tuple[float, ...]:
        """One-way delays of the copies of a message that arrive (empty: it was lost)."""
        self.sent += 1
        model = self.model
        rng = self.rng
        if self.blocked and (self.group.get(src, -1), self.group.get(dst, -1)) in self.blocked:
            self.lost += 1
            return ()
        if model.loss and rng.random() < model.loss:
            self.lost += 1
            return ()
        first = model.base_latency + rng.expovariate(1.0 / model.jitter) if model.jitter else model.base_latency
        if model.duplicate and rng.random() < model.duplicate:
            return first, model.base_latency + rng.expovariate(1.0 / model.jitter) if model.jitter else first
        return (first,)

    def transmitter(self, queue, kind: int) -> Callable[[float, int, int, Any], None]:
        """``send(now, src, dst, msg)``: push the copies of a message that arrive onto ``queue``.

        Each copy becomes a ``kind`` event for ``dst``, after the delays ``delays()`` would
        draw (the same draws from the same generator, the jitter drawn as
        ``random.expovariate`` draws it), in one call per message: a simulation sends
        millions of them.
        """
        push = queue.push
        draw = self.rng.random
        model = self.model

        def delay() -> float:
            if model.jitter:
                return model.base_latency + -log(1.0 - draw()) / (1.0 / model.jitter)
            return model.base_latency

        def send(now: float, src: int, dst: int, msg: Any) -> None:
            self.sent += 1
            if self.blocked and (self.group.get(src, -1), self.group.get(dst, -1)) in self.blocked:
                self.lost += 1
                return
            if model.loss and draw() < model.loss:
                self.lost += 1
                return
            if model.jitter:  # delay(), written out: this runs for every message
                push(now + (model.base_latency + -log(1.0 - draw()) / (1.0 / model.jitter)), kind, dst, msg)
            else:
                push(now + model.base_latency, kind, dst, msg)
            if model.duplicate and draw() < model.duplicate:
                push(now + delay(), kind, dst, msg)

        return send
