"""The gossip queue: news waiting to be piggybacked, each sent a limited number of times.

SWIM spreads membership changes infection-style: every piece of news rides on
outgoing messages until it has been sent ``limit`` times (retransmit_mult ×
ceil(log10(n + 1)); enough for every member to hear it with high probability).
Newer news about a member replaces older news about it, and when space is
short the least-sent news goes first, newest first among equals.

News sent fewer than ``fresh_sends`` times is *fresh*: only fresh news earns a
dedicated gossip message; older news rides on probes and acks for free.
"""

from __future__ import annotations

from p2pswarm.wire import encoded_size


class NewsQueue:
    __slots__ = ("_items", "_serial", "_fresh", "fresh_sends")

    def __init__(self, fresh_sends: int) -> None:
        # key -> [item, sends, serial, size]
        self._items: dict[tuple, list] = {}
        self._serial = 0
        self._fresh = 0
        self.fresh_sends = fresh_sends

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    @property
    def has_fresh(self) -> bool:
        return self._fresh > 0

    def put(self, key: tuple, item, size: int | None = None) -> None:
        """Queue ``item``, replacing any older news under the same key."""
        old = self._items.get(key)
        if old is None or old[1] >= self.fresh_sends:
            self._fresh += 1
        self._serial += 1
        self._items[key] = [item, 0, self._serial, size if size is not None else encoded_size(item)]

    def get(self, key: tuple):
        entry = self._items.get(key)
        return entry[0] if entry else None

    def take(self, budget: int, limit: int, first=None, fresh_only: bool = False, copies: int = 1) -> list:
        """Pick news for a message within ``budget`` bytes, going to ``copies`` members.

        Each item picked counts as sent ``copies`` times.

        ``first`` (if queued or not) is always included first: Lifeguard's buddy system
        puts a suspicion in the very probe that goes to the suspect.
        """
        out = []
        used = 0
        if first is not None:
            out.append(first)
            used += encoded_size(first)
        items = self._items
        if not items:
            return out
        if len(items) == 1:
            ordered = list(items.items())
        else:
            ordered = sorted(items.items(), key=lambda kv: (kv[1][1], -kv[1][2]))
        fresh_sends = self.fresh_sends
        spent = []
        for key, entry in ordered:
            item, sends, _serial, size = entry
            if item is first:
                continue
            if sends >= fresh_sends and fresh_only:
                break  # ordered by sends: nothing fresh follows
            if used + size > budget:
                if size > budget:  # can never fit: leave it to gossip or push/pull
                    continue
                break
            out.append(item)
            used += size
            entry[1] = sends + copies
            if sends < fresh_sends <= entry[1]:
                self._fresh -= 1
            if entry[1] >= limit:
                spent.append(key)
        for key in spent:
            if items[key][1] < fresh_sends:
                self._fresh -= 1
            del items[key]
        return out
