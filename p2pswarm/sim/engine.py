"""The simulator's virtual clock and event queue.

Events are (time, serial, kind, target, payload) tuples, processed in
(time, serial) order; the serial breaks time ties in insertion order, which
(with seeded randomness) makes every run with the same seed produce the same
event trace.

The queue is a calendar queue rather than one binary heap: events fall into
buckets of ``width`` seconds; only the bucket being processed is kept sorted,
while future events are merely appended to theirs.  A 10,000-member run holds
tens of thousands of pending events (mostly timers a protocol period ahead),
and a heap over all of them paid ~15 scattered tuple comparisons per event; a
bucket holds the few hundred events of one millisecond.  The order is exactly
the heap's: (time, serial) is unique, so any correct priority queue yields the
same trace.
"""

from __future__ import annotations

import heapq
from bisect import insort
from itertools import chain

NEVER_BUCKET = 1 << 62
"""Bucket of events at infinite (or absurdly far) times: they sort after everything else."""


class EventHeap:
    __slots__ = ("now", "_serial", "_scale", "_buckets", "_bucket_ids", "_current", "_current_id", "_pos",
                 "_done")

    def __init__(self, width: float = 0.001) -> None:
        self.now = 0.0
        self._serial = 0
        self._scale = 1.0 / width
        self._buckets: dict[int, list[tuple]] = {}
        """Future buckets, unsorted, by index (floor of time / width)."""
        self._bucket_ids: list[int] = []
        """Min-heap of the indices in ``_buckets``."""
        self._current: list[tuple] = []
        """The bucket being processed, sorted; events before ``_pos`` are done."""
        self._current_id = -1
        self._pos = 0
        self._done = 0
        """Events popped from buckets before the current one."""

    @property
    def processed(self) -> int:
        """Events popped so far."""
        return self._done + self._pos

    def push(self, at: float, kind: int, target: int, payload=None) -> None:
        self._serial += 1
        event = (at, self._serial, kind, target, payload)
        scaled = at * self._scale
        index = int(scaled) if scaled < NEVER_BUCKET else NEVER_BUCKET
        if index <= self._current_id:
            # Due within (or, if a caller schedules into the past, before) the bucket being
            # processed: keep it sorted among the events still to come.
            insort(self._current, event, self._pos)
            return
        bucket = self._buckets.get(index)
        if bucket is None:
            self._buckets[index] = [event]
            heapq.heappush(self._bucket_ids, index)
        else:
            bucket.append(event)

    def pop_until(self, end: float):
        """Yield events in time order up to ``end``, advancing the clock.

        Events pushed while iterating are seen, in order, as with a heap.
        """
        while True:
            current = self._current
            pos = self._pos
            while pos < len(current):  # ``current`` may grow while we yield
                event = current[pos]
                if event[0] > end:
                    self.now = end
                    return
                self._pos = pos = pos + 1
                self.now = event[0]
                yield event
            if not self._advance():
                break
        self.now = end

    def events_until(self, end: float):
        """The events up to ``end`` in order, as pop_until yields them, for hotter loops.

        Whole buckets are handed out as lists and iterated in C; a plain ``for`` over a
        list sees the events pushed into it meanwhile, in order.  Two differences from
        pop_until: ``now`` is only brought up to date bucket by bucket, and an event must
        never be scheduled before the one being handled (a list iterator cannot go back).
        Every event handed out must be handled (do not break out of the loop).
        """
        return chain(chain.from_iterable(self._buckets_before(end)), self.pop_until(end))

    def _buckets_before(self, end: float):
        """The sorted buckets before the one ``end`` falls in (that one is left to pop_until)."""
        scaled = end * self._scale
        last = int(scaled) if scaled < NEVER_BUCKET else NEVER_BUCKET
        while self._pos < len(self._current) or self._advance():
            if self._current_id >= last:
                return
            current = self._current
            if self._pos:  # a bucket pop_until began: drop what it handled
                self._done += self._pos
                del current[:self._pos]
                self._pos = 0
            yield current
            self._pos = len(current)
            self.now = current[-1][0]

    def _advance(self) -> bool:
        """Make the next non-empty bucket the current one (sorted); False if there is none."""
        if not self._bucket_ids:
            return False
        index = heapq.heappop(self._bucket_ids)
        current = self._buckets.pop(index)
        current.sort()
        self._done += len(self._current)
        self._current, self._current_id, self._pos = current, index, 0
        return True

    def __len__(self) -> int:
        return self._serial - self.processed
