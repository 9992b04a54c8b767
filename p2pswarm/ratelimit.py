"""A token bucket for requests from the network (pure: the caller passes ``now``).

    tokens = min(burst, tokens + rate × (now − last)),  a request takes one token

so at most ``burst`` requests pass at once and ``rate`` per second after that; the rest are
dropped by the caller (and counted), who can retry.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, now

    def take(self, now: float) -> bool:
        """True (and one token spent) when a request may pass at ``now``."""
        self.tokens = min(self.burst, self.tokens + self.rate * (now - self.last))
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class BucketsByKey:
    """One :class:`TokenBucket` per key (a client's address), so one noisy client cannot spend
    everyone's budget.  At most ``max_keys`` are kept: a new key evicts the one used least
    recently (a client that cycles addresses to get fresh buckets still meets the caller's
    global bucket)."""

    __slots__ = ("rate", "burst", "max_keys", "_buckets")

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[object, TokenBucket] = {}

    def take(self, key: object, now: float) -> bool:
        """True (and one token of ``key``'s bucket spent) when ``key`` may pass at ``now``."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]  # dicts keep order: the first is the stalest
        self._buckets[key] = bucket  # (re)inserted last: the most recently used
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)
