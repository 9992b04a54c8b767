"""The gossip queue: news waiting to be piggybacked, each sent a limited number of times.

SWIM spreads membership changes infection-style: every piece of news rides on
outgoing messages until it has been sent ``limit`` times (retransmit_mult ×
ceil(log10(n + 1)); enough for every member to hear it with high probability).
Newer news about a member replaces older news about it, and when space is
short the least-sent news goes first, newest first among equals.

News sent fewer than ``fresh_sends`` times is *fresh*: only fresh news earns a
dedicated gossip message; older news rides on probes and acks for free.

Every probe and ack asks the queue for news, so the queue keeps its entries in
that order (least sent, then newest) instead of sorting them for each message:
new news goes in front, and a message that takes every entry (the usual case)
adds one send to each, which keeps the order.  Such a message costs one list
copy: an entry's sends are counted as ``offset + takes``, and ``takes`` counts
the messages that took every entry.  A message that takes some entries and not
others (short budget, a gossip round) counts them one by one and puts just those
back in order (a bisection each), so a long queue is never sorted whole again.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Hashable
from operator import attrgetter

from p2pswarm.wire import encoded_size

_RANK_SPAN = 1 << 48
"""Serials stay below this (a queue would need 10^14 puts to reach it), so a rank orders like (offset, -serial)."""
_SEND_ORDER = attrgetter("rank")
"""Least sent first, newest first among equals: the queue's order, as one key read in C (the queue's
bisections call it millions of times in a simulation)."""
_SIZES: dict[int, tuple] = {}
"""id(item) → (item, encoded size), bounded; the item is held so that its id is not reused."""
_SIZES_MAX = 1 << 15


def _size_of(item) -> int:
    """``encoded_size(item)``, remembered for the last few thousand items.

    In the simulator one news object reaches every core and each of them queues it;
    encoding it each time only to learn its size cost more than the rest of queueing
    it.  (A real node decodes its own copy of each item: there this only misses.)
    """
    hit = _SIZES.get(id(item))
    if hit is not None and hit[0] is item:
        return hit[1]
    size = encoded_size(item)
    if len(_SIZES) >= _SIZES_MAX:
        _SIZES.clear()
    _SIZES[id(item)] = (item, size)
    return size


def news_bytes(items) -> int:
    """Encoded size of ``items`` (what a take used of its budget)."""
    return sum(map(_size_of, items))


class _News:
    """One queued item; identity is its equality, so the order lists can drop it cheaply."""

    __slots__ = ("key", "item", "size", "offset", "rank")
    # A 10,000-member simulation holds tens of millions of these: no slot that can be derived.

    def __init__(self, key: Hashable, item, size: int, offset: int, serial: int) -> None:
        self.key = key
        self.item = item
        self.size = size
        self.offset = offset
        """Sends so far minus the queue's ``takes``."""
        self.rank = offset * _RANK_SPAN - serial
        """The sort key (offset, -serial) as one integer: moves in step with ``offset``."""


class NewsQueue:
    __slots__ = ("queued", "fresh", "fresh_sends", "max_stale", "taken_bytes", "_order", "_items", "_items_stale",
                 "_ordered", "_takes", "_bytes", "_serial", "_smallest")

    def __init__(self, fresh_sends: int, max_stale: int | None = None) -> None:
        self.queued: dict[Hashable, _News] = {}
        """News waiting to be sent, by key (read-only outside the queue)."""
        self.fresh = 0
        """How many queued items are still fresh (sent fewer than fresh_sends times)."""
        self.fresh_sends = fresh_sends
        self.max_stale = max_stale
        """At most this many entries that are no longer fresh (None: no bound); see ``put``."""
        self.taken_bytes = 0
        """Encoded size of what the last take() or take_for() returned (one target's batch): callers budget the
        next queue with it instead of measuring the items again."""
        self._order: list[_News] = []
        """The queued entries, least sent first and newest first among equals (if _ordered)."""
        self._items: list = []
        """The entries' items, in the same order (unless _items_stale)."""
        self._items_stale = False
        """_items no longer follows a re-sorted _order: rebuilt only when a message takes every entry
        (a long queue is re-sorted after most takes, and is mostly taken in part)."""
        self._ordered = True
        self._takes = 0
        """Messages that took every entry: one send each, counted once for all."""
        self._bytes = 0
        """Encoded size of all queued items."""
        self._serial = 0
        self._smallest = 1 << 62
        """No queued item is smaller (the smallest size ever queued): a take whose budget is below it takes
        nothing, without walking a long queue of items that each exceed the budget."""

    def __len__(self) -> int:
        return len(self.queued)

    def __bool__(self) -> bool:
        return bool(self.queued)

    @property
    def has_fresh(self) -> bool:
        return self.fresh > 0

    @property
    def puts(self) -> int:
        """Items queued so far, new news and replacements alike: the work of taking news in, which in a
        simulation grows as members × changes (every member queues every change it hears first)."""
        return self._serial

    def put(self, key: Hashable, item, size: int | None = None) -> None:
        """Queue ``item``, replacing any older news under the same key.

        Past ``max_stale`` entries that are no longer fresh, the most sent (the oldest among equals)
        is dropped, as memberlist's ``Prune`` does for serf: news already gossiped ``fresh_sends``
        times has done its epidemic part, and behind so much else its remaining piggybacked sends
        would take longer than the periodic push/pull takes to deliver it.
        """
        old = self.queued.get(key)
        if old is None:
            self.fresh += 1
        else:
            if old.offset + self._takes >= self.fresh_sends:
                self.fresh += 1
            self._drop(old)
        self._serial += 1
        entry = _News(key, item, size if size is not None else _size_of(item), -self._takes, self._serial)
        if entry.size < self._smallest:
            self._smallest = entry.size
        self.queued[key] = entry
        self._bytes += entry.size
        self._order.insert(0, entry)  # never sent and the newest: first in order
        if not self._items_stale:
            self._items.insert(0, item)
        if self.max_stale is not None and len(self._order) - self.fresh > self.max_stale:
            last = self._order[-1]  # least sent first: the stale entries are the tail
            if last.offset + self._takes >= self.fresh_sends:
                self._drop(last)

    def get(self, key: Hashable):
        entry = self.queued.get(key)
        return entry.item if entry else None

    def take(self, budget: int, limit: int, first=None) -> list:
        """News for one message within ``budget`` bytes; each item counts as sent once.

        ``first`` (queued or not) always goes first: Lifeguard's buddy system puts a
        suspicion in the very probe that goes to the suspect.
        """
        if first is None:
            self.taken_bytes = 0
            if not self.queued:
                return []
            if self._bytes <= budget:
                self.taken_bytes = self._bytes
                return self._take_all(limit)
            out = []
        else:
            out = [first]
            self.taken_bytes = first_size = _size_of(first)
            budget -= first_size
            if not self.queued:
                return out
        if budget < self._smallest:
            return out  # every queued item exceeds the budget: the walk below would skip them all
        order = self._sorted()
        takes = self._takes
        fresh_sends = self.fresh_sends
        used = 0
        whole = True  # every entry taken: each gains one send and the order holds
        spent = []
        moved = []
        scanned = 0
        for entry in order:
            scanned += 1
            size = entry.size
            if entry.item is first or used + size > budget:
                whole = False
                if entry.item is first or size > budget:  # can never fit: leave it to gossip or push/pull
                    continue
                break
            used += size
            out.append(entry.item)
            moved.append(entry)
            entry.offset += 1
            entry.rank += _RANK_SPAN
            sends = entry.offset + takes
            if sends == fresh_sends or (sends >= limit and sends < fresh_sends):
                self.fresh -= 1
            if sends >= limit:
                spent.append(entry)
        self.taken_bytes += used
        for entry in spent:
            self._drop(entry)
        if not whole:
            self._reorder(moved, scanned - len(spent), spent, in_order=True)  # each gained one send
        return out

    def _take_all(self, limit: int) -> list:
        """take() when every entry fits: one more send for all, then drop the spent ones.

        In sends order the fresh entries are a prefix and the spent ones a suffix, so only
        the entries at those two boundaries are looked at.
        """
        order = self._sorted()
        if self._items_stale:
            self._items, self._items_stale = [entry.item for entry in order], False
        out = self._items.copy()
        self._takes = takes = self._takes + 1
        fresh = self.fresh
        while fresh and order[fresh - 1].offset + takes >= self.fresh_sends:
            fresh -= 1
        keep = len(order)
        while keep and order[keep - 1].offset + takes >= limit:
            keep -= 1
        self.fresh = min(fresh, keep)  # a fresh entry spent at once is no longer fresh either
        if keep < len(order):
            for entry in order[keep:]:
                del self.queued[entry.key]
                self._bytes -= entry.size
            del order[keep:]
            del self._items[keep:]  # not stale: rebuilt above
        return out

    def take_for(self, targets: int, budget: int, limit: int) -> list[tuple]:
        """Fresh news for one gossip round: a tuple of items for each of ``targets`` members.

        An item with fewer sends left than targets goes to only that many of them, so
        no item is ever sent more than ``limit`` times.
        """
        self.taken_bytes = 0
        if not self.fresh:
            return []
        order = self._sorted()
        takes = self._takes
        fresh_sends = self.fresh_sends
        copies = []
        used = batch = 0
        spent = []
        moved = []
        scanned = 0
        for entry in order:
            scanned += 1
            before = entry.offset + takes
            if before >= fresh_sends:
                break  # least sent first: nothing fresh follows
            size = entry.size
            if used + size > budget:
                if size > budget:
                    continue
                break
            used += size
            n = min(targets, limit - before)
            if n > 0:  # (none when the limit fell below its sends: the cluster shrank)
                batch += size
            copies.append((entry.item, n))
            moved.append(entry)
            entry.offset += n
            entry.rank += n * _RANK_SPAN
            after = before + n
            if after >= fresh_sends or after >= limit:
                self.fresh -= 1
            if after >= limit:
                spent.append(entry)
        if not copies:
            return []
        self.taken_bytes = batch
        for entry in spent:
            self._drop(entry)
        self._reorder(moved, scanned - len(spent), spent)  # only fresh entries gained sends
        if copies[-1][1] >= targets and all(n >= targets for _, n in copies):
            return [tuple(item for item, _ in copies)] * targets  # the usual case: one batch for all
        return [tuple(item for item, n in copies if n > j) for j in range(targets)]

    def _sorted(self) -> list[_News]:
        order = self._order
        if not self._ordered:
            order.sort(key=_SEND_ORDER)
            self._items_stale = True
            self._ordered = True
        return order

    def _reorder(self, moved: list[_News], head: int, spent: list[_News], in_order: bool = False) -> None:
        """Put ``moved`` (entries that gained sends; all within the first ``head`` places once the
        ``spent`` ones are dropped) back in order: the same order a full sort gives, since (sends,
        newest first) is unique per entry, at the cost of a few bisections instead of a sort of the
        whole queue, which a long queue (many records changing at once) paid at nearly every take."""
        if spent:
            gone = set(spent)
            moved = [entry for entry in moved if entry not in gone]
        if not moved:
            return
        order = self._order
        still = set(moved)
        order[:head] = [entry for entry in order[:head] if entry not in still]
        self._items_stale = True
        if in_order:
            # ``moved`` is still in order (each gained the same sends): where no other entry falls
            # between its first and last, it goes back as one block, one insertion into a long queue
            at = bisect_right(order, moved[0].rank, key=_SEND_ORDER)
            if at == bisect_right(order, moved[-1].rank, at, key=_SEND_ORDER):
                order[at:at] = moved
                return
        for entry in moved:
            insort(order, entry, key=_SEND_ORDER)

    def _drop(self, entry: _News) -> None:
        """Forget ``entry`` (spent, or replaced by newer news under its key)."""
        if self.queued.get(entry.key) is entry:
            del self.queued[entry.key]
        order = self._order
        at = bisect_left(order, entry.rank, key=_SEND_ORDER)  # in order (but mid-take)
        if at >= len(order) or order[at] is not entry:
            at = order.index(entry)
        del order[at]
        if not self._items_stale:
            del self._items[at]
        self._bytes -= entry.size
