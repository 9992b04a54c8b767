"""Lifeguard's dynamic suspicion timeout.

A suspicion starts with the maximum timeout and shrinks as distinct members
independently confirm it, down to the minimum after K confirmations:

    timeout(C) = max(min, max − (max − min) × log(C + 1) / log(K + 1))

so a member that only one slow or isolated node doubts has time to refute,
while a member that many agree is gone is declared dead quickly.
"""

from __future__ import annotations

import math


class Suspicion:
    __slots__ = ("incarnation", "started", "low", "high", "expected", "confirmers", "deadline", "full")

    def __init__(self, incarnation: int, started: float, low: float, high: float,
                 expected: int, origin: str) -> None:
        self.incarnation = incarnation
        self.started = started
        self.low = low
        self.high = high
        self.expected = expected
        # The originator of the suspicion is not an independent confirmation.
        self.confirmers = {origin}
        self.deadline = started + self._timeout(0)
        self.full = expected < 1
        """No further confirmation can count (the common case once news has spread): callers
        check it, and ``confirmers``, before calling ``confirm`` for a repeat."""

    def _timeout(self, confirmations: int) -> float:
        if self.expected < 1:
            return self.low
        frac = math.log(confirmations + 1) / math.log(self.expected + 1)
        return max(self.low, self.high - (self.high - self.low) * frac)

    def confirm(self, by: str) -> bool:
        """Count a confirmation from ``by``; True if it was new (worth re-gossiping)."""
        if by in self.confirmers or self.full:
            return False
        self.confirmers.add(by)
        self.deadline = self.started + self._timeout(len(self.confirmers) - 1)
        self.full = len(self.confirmers) > self.expected
        return True
