"""Lifeguard's dynamic suspicion timeout.

A suspicion starts with the maximum timeout and shrinks as distinct members
independently confirm it, down to the minimum after K confirmations:

    timeout(C) = max(min, max − (max − min) × log(C + 1) / log(K + 1))

so a member that only one slow or isolated node doubts has time to refute,
while a member that many agree is gone is declared dead quickly.
"""

from __future__ import annotations

import math
from heapq import heapify, heappop, heappush

INF = float("inf")
COMPACT_SLACK = 64
"""Stale heap entries always tolerated: a node holding a few suspicions never rebuilds."""


class Suspicion:
    __slots__ = ("incarnation", "started", "low", "high", "expected", "confirmers", "deadline", "full", "serial")

    def __init__(self, incarnation: int, started: float, low: float, high: float,
                 expected: int, origin: str) -> None:
        self.incarnation = incarnation
        self.started = started
        self.low = low
        self.high = high
        self.expected = expected
        # The originator of the suspicion is not an independent confirmation.  A tuple, not a set: it
        # never holds more than expected + 1 members, and after a zone outage at 10,000 nodes every node
        # holds a suspicion of each of 2,000 members at once (a set cost 200 bytes more per suspicion).
        self.confirmers: tuple[str, ...] = (origin,)
        self.deadline = started + self._timeout(0)
        self.full = expected < 1
        """No further confirmation can count (the common case once news has spread): callers
        check it, and ``confirmers``, before calling ``confirm`` for a repeat."""
        self.serial = 0
        """Set by :meth:`Suspicions.start`: the order in which suspicions began."""

    def _timeout(self, confirmations: int) -> float:
        if self.expected < 1:
            return self.low
        frac = math.log(confirmations + 1) / math.log(self.expected + 1)
        return max(self.low, self.high - (self.high - self.low) * frac)

    def confirm(self, by: str) -> bool:
        """Count a confirmation from ``by``; True if it was new (worth re-gossiping)."""
        if by in self.confirmers or self.full:
            return False
        self.confirmers += (by,)
        self.deadline = self.started + self._timeout(len(self.confirmers) - 1)
        self.full = len(self.confirmers) > self.expected
        return True


class Suspicions(dict[str, Suspicion]):
    """The suspicions a node holds, by member, with their deadlines in a heap.

    After a zone outage every node holds a suspicion for each of hundreds or thousands of members,
    and ends one at each death it hears of: finding the earliest remaining deadline by a scan each
    time cost the whole cluster O(n^2) per node.  Heap entries are (deadline, serial, member); one
    whose suspicion has ended or whose deadline moved is stale and dropped when it reaches the top.
    """

    __slots__ = ("_heap", "_serial")

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int, str]] = []
        self._serial = 0

    def start(self, node: str, suspicion: Suspicion) -> None:
        self.pop(node, None)  # (never held: the member was not suspect) keeps insertion order = serial order
        self._serial += 1
        suspicion.serial = self._serial
        self[node] = suspicion
        self._push(node, suspicion)

    def moved(self, node: str, suspicion: Suspicion) -> None:
        """``suspicion``'s deadline came earlier (a confirmation)."""
        self._push(node, suspicion)

    def _push(self, node: str, suspicion: Suspicion) -> None:
        """Queue ``suspicion``'s deadline, and rebuild the heap from the suspicions held once stale entries
        outnumber them: each confirmation leaves one behind, and at 10,000 nodes the stale entries of a
        zone outage's 2,000 suspicions per node were most of the memory the outage cost.  Serials are
        unique, so the rebuilt heap pops in the same order."""
        heap = self._heap
        heappush(heap, (suspicion.deadline, suspicion.serial, node))
        if len(heap) > 2 * len(self) + COMPACT_SLACK:
            heap[:] = [(held.deadline, held.serial, member) for member, held in self.items()]
            heapify(heap)

    def _current(self, entry: tuple[float, int, str]) -> bool:
        held = self.get(entry[2])
        return held is not None and held.serial == entry[1] and held.deadline == entry[0]

    def earliest(self) -> float:
        """The earliest deadline of the suspicions held (INF: none)."""
        heap = self._heap
        while heap:
            if self._current(heap[0]):
                return heap[0][0]
            heappop(heap)
        return INF

    def due(self, now: float) -> list[str]:
        """The members whose suspicion has run out at ``now``, in the order their suspicions began."""
        heap = self._heap
        out: dict[int, str] = {}  # by serial: a confirmation that left the deadline as it was pushed it twice
        while heap and heap[0][0] <= now:
            entry = heappop(heap)
            if self._current(entry):
                out[entry[1]] = entry[2]
        return [out[serial] for serial in sorted(out)]
