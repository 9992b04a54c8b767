"""The data planes' counters: plain ints in slots, so the hot path counts without a dict or a lock."""

from __future__ import annotations

COUNTERS = ("accepted", "active", "refused_limit", "connect_failed", "no_backend", "retried",
            "replayed", "relayed_out", "relayed_in", "relay_refused", "bytes_in", "bytes_out", "errors",
            "spliced", "tls_refused")
"""Per port (and the relay listener, and in total). ``active`` is a gauge, the rest count up.
``bytes_in`` flows client → backend, ``bytes_out`` backend → client."""


class CounterSet:
    """Plain-int counters as slots (the hot path does ``c.bytes_in += n``); a subclass names them
    in both ``__slots__`` and ``FIELDS``."""

    __slots__ = ()
    FIELDS: tuple[str, ...] = ()

    def __init__(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def add(self, other: "CounterSet") -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Counters(CounterSet):
    """The TCP data plane's: one set per port, one for the relay listeners, one for retired ports."""

    __slots__ = COUNTERS
    FIELDS = COUNTERS
