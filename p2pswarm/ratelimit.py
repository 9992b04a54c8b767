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
