"""Fault injection around any transport: chaos testing without root.

Wraps a real (or memory) transport in a running node so that tests and the
node's HTTP API can inject loss, latency and partitions.  Faults imitate the
network, not the local queue: a message lost to a fault still makes ``send``
return True, because in a real network the sender would not know either.

Incoming faults (``drop_rate``, ``isolate``) are applied when ``recv`` (or
``recv_with_key``, which also hands out the sender's CURVE key) gives a message
out, since the transport does not tell us the sender's address.  For the same
reason ``cut`` is one-way: cutting B->A is done on B.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

from p2pswarm.transport.base import Transport
from p2pswarm.transport.zmq import parse_addr

MAX_DELAY = 60.0
"""Upper bound for the injected delay (seconds): larger values are a typo, not a test."""

_KEYS = ("drop_rate", "delay", "cut", "isolated")


def _number(name: str, value: Any, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= hi:
        raise ValueError(f"{name} must be a number from 0 to {hi:g}, got {value!r}")
    return float(value)


def _addr(value: Any) -> str:
    if parse_addr(value) is None:
        raise ValueError(f"cut: {value!r} is not a peer address host:port")
    return value


class FaultyTransport:
    """A Transport that drops, delays or blocks messages before the inner one sees them."""

    def __init__(self, inner: Transport, rng: random.Random) -> None:
        self._inner = inner
        self._rng = rng
        self._drop_rate = 0.0
        self._delay = 0.0
        self._cut: set[str] = set()
        self._isolated = False
        self._pending: dict[object, asyncio.TimerHandle] = {}
        self._counts = {"fault_dropped_out": 0, "fault_dropped_in": 0, "fault_delayed": 0}

    # -- fault controls -------------------------------------------------------

    @property
    def drop_rate(self) -> float:
        """Probability (0..1) of losing each message, outgoing and incoming."""
        return self._drop_rate

    @drop_rate.setter
    def drop_rate(self, value: float) -> None:
        self._drop_rate = _number("drop_rate", value, 1.0)

    @property
    def delay(self) -> float:
        """Seconds added to every outgoing send."""
        return self._delay

    @delay.setter
    def delay(self, value: float) -> None:
        self._delay = _number("delay", value, MAX_DELAY)

    def cut(self, addr: str) -> None:
        """Drop everything this node sends to ``addr`` (the link self -> addr)."""
        self._cut.add(_addr(addr))

    def uncut(self, addr: str) -> None:
        self._cut.discard(addr)

    def isolate(self, on: bool = True) -> None:
        """Drop everything in and out, as if the node's cable were pulled."""
        self._isolated = bool(on)

    def heal(self) -> None:
        """Clear every fault."""
        self._drop_rate = self._delay = 0.0
        self._cut.clear()
        self._isolated = False

    def describe(self) -> dict[str, Any]:
        return {"drop_rate": self._drop_rate, "delay": self._delay,
                "cut": sorted(self._cut), "isolated": self._isolated}

    def configure(self, settings: dict[str, Any]) -> None:
        """Apply ``describe()``-shaped settings; keys left out stay as they are.

        Everything is validated before anything changes, so a bad request
        leaves the faults untouched.
        """
        if not isinstance(settings, dict):
            raise ValueError(f"fault settings must be an object with keys {', '.join(_KEYS)}")
        unknown = sorted(str(k) for k in settings if k not in _KEYS)
        if unknown:
            raise ValueError(f"unknown fault setting {unknown[0]!r}; expected one of: {', '.join(_KEYS)}")
        new = self.describe()
        if "drop_rate" in settings:
            new["drop_rate"] = _number("drop_rate", settings["drop_rate"], 1.0)
        if "delay" in settings:
            new["delay"] = _number("delay", settings["delay"], MAX_DELAY)
        if "cut" in settings:
            cut = settings["cut"]
            if not isinstance(cut, (list, tuple)):
                raise ValueError(f"cut must be a list of host:port addresses, got {cut!r}")
            new["cut"] = [_addr(a) for a in cut]
        if "isolated" in settings:
            if not isinstance(settings["isolated"], bool):
                raise ValueError(f"isolated must be true or false, got {settings['isolated']!r}")
            new["isolated"] = settings["isolated"]
        self._drop_rate, self._delay = new["drop_rate"], new["delay"]
        self._cut = set(new["cut"])
        self._isolated = new["isolated"]

    # -- Transport ------------------------------------------------------------

    @property
    def local_addr(self) -> str:
        return self._inner.local_addr

    async def start(self) -> None:
        await self._inner.start()

    def send(self, addr: str, data: bytes, bulk: bool = False) -> bool:
        if self._isolated or addr in self._cut or self._lost():
            self._counts["fault_dropped_out"] += 1
            return True
        if self._delay > 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (e.g. a synchronous caller): send now
                return self._inner.send(addr, data, bulk)
            token = object()
            self._pending[token] = loop.call_later(self._delay, self._send_later, token, addr, data, bulk)
            self._counts["fault_delayed"] += 1
            return True
        return self._inner.send(addr, data, bulk)

    def _send_later(self, token: object, addr: str, data: bytes, bulk: bool) -> None:
        del self._pending[token]
        self._inner.send(addr, data, bulk)

    def _lost(self) -> bool:
        return self._drop_rate > 0 and self._rng.random() < self._drop_rate

    async def recv(self) -> bytes:
        return (await self.recv_with_key())[0]

    async def recv_with_key(self) -> tuple[bytes, bytes | None]:
        """The next message that survives the faults, and the CURVE key it came from (None without CURVE)."""
        while True:
            data, key = await self._inner.recv_with_key()
            if self._isolated or self._lost():
                self._counts["fault_dropped_in"] += 1
                continue
            return data, key

    def recv_ready(self, limit: int) -> list[tuple[bytes, bytes | None]]:
        """The inner transport's ``recv_ready``, less what the faults drop."""
        out = []
        for data, key in self._inner.recv_ready(limit):
            if self._isolated or self._lost():
                self._counts["fault_dropped_in"] += 1
                continue
            out.append((data, key))
        return out

    def drop_refused(self) -> int:
        """See :meth:`p2pswarm.transport.zmq.ZmqTransport.drop_refused` (0 for other transports)."""
        return self._inner.drop_refused()

    @property
    def curve_public(self) -> bytes | None:
        """The inner transport's CURVE public key (None without CURVE)."""
        return self._inner.curve_public

    def stats(self) -> dict[str, int]:
        return {**self._inner.stats(), **self._counts}

    async def close(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        await self._inner.close()
