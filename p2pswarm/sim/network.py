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
        """One-way delays of the copies of a message that arrive (empty: it was lost).

        Called for every message of a simulation, so the model's numbers are read
        directly and the exponential jitter is drawn as ``random.expovariate`` draws it
        (the same numbers from the same generator, without its call overhead).
        """
        self.sent += 1
        model = self.model
        rnd = self.rng.random
        if self.blocked and (self.group.get(src, -1), self.group.get(dst, -1)) in self.blocked:
            self.lost += 1
            return ()
        if model.loss and rnd() < model.loss:
            self.lost += 1
            return ()
        jitter = model.jitter
        if jitter:
            rate = 1.0 / jitter
            first = model.base_latency + -log(1.0 - rnd()) / rate
        else:
            first = model.base_latency
        if model.duplicate and rnd() < model.duplicate:
            return first, model.base_latency + -log(1.0 - rnd()) / rate if jitter else first
        return (first,)
