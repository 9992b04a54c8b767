"""The simulator's virtual clock and event heap.

Events are (time, serial, kind, target, payload) tuples; the serial breaks time
ties in insertion order, which (with seeded randomness) makes every run with the
same seed produce the same event trace.
"""

from __future__ import annotations

import heapq


class EventHeap:
    __slots__ = ("now", "_heap", "_serial", "processed")

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple] = []
        self._serial = 0
        self.processed = 0

    def push(self, at: float, kind: int, target: int, payload=None) -> None:
        self._serial += 1
        heapq.heappush(self._heap, (at, self._serial, kind, target, payload))

    def pop_until(self, end: float):
        """Yield events in time order up to ``end``, advancing the clock."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= end:
            event = pop(heap)
            self.now = event[0]
            self.processed += 1
            yield event
        self.now = end

    def __len__(self) -> int:
        return len(self._heap)
