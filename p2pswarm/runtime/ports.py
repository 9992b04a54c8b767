"""Task ports: pick a free dynamic port from a range, never one a task of ours still holds, and hold
the fixed ports a task needs (a process's fixed target, a mode=host port) so that no other task of
this node is given them.

"Free" is checked by binding it, for TCP (all interfaces, SO_REUSEADDR, so a port in TIME_WAIT
counts as free, as it will for the task's own listener) and for UDP (plain bind). The scan goes round-robin from
a random start: several nodes on one machine then rarely race for the same port, and a
port just released is not handed out again at once.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Iterable


class PortsExhausted(Exception):
    """No free port left in the range."""


class PortAllocator:
    def __init__(self, low: int = 20000, high: int = 32000, rng: random.Random | None = None,
                 bind_host: str = "0.0.0.0") -> None:
        if not 0 < low <= high < 65536:
            raise ValueError(f"bad port range {low}-{high}")
        self.low, self.high, self.bind_host = low, high, bind_host
        self.held: set[int] = set()
        self._next = (rng or random.Random()).randint(low, high)

    def is_free(self, port: int) -> bool:
        """Free for TCP and for UDP: the runtime does not know which protocol a task serves
        on its dynamic port (a published ``/udp`` port with a dynamic target uses it for UDP)."""
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((self.bind_host, port))
                except OSError:
                    return False
        return True

    def take(self, count: int = 1, fixed: Iterable[int] = ()) -> tuple[int, ...]:
        """``count`` distinct free dynamic ports, now held with ``fixed`` until :meth:`release`; raises
        PortsExhausted when none is left, or when a task of ours holds one of ``fixed``."""
        fixed = set(fixed)
        if fixed & self.held:
            raise PortsExhausted(f"port {min(fixed & self.held)} is held by another task on this node")
        got: list[int] = []
        self.held |= fixed
        try:
            for _ in range(count):
                got.append(self._take_one())
        except PortsExhausted:
            self.release([*got, *fixed])
            raise
        return tuple(got)

    async def take_when_free(self, count: int, fixed: Iterable[int], wait: float) -> tuple[int, ...]:
        """:meth:`take`, once no task of ours holds one of ``fixed`` any more, waiting ``wait`` seconds at most:
        a task being stopped (a stop-first update on this node) releases its ports within its grace."""
        fixed = set(fixed)
        deadline = time.monotonic() + wait
        while fixed & self.held and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.take(count, fixed)

    def release(self, ports) -> None:
        self.held.difference_update(ports)

    def _take_one(self) -> int:
        size = self.high - self.low + 1
        for _ in range(size):
            port = self._next
            self._next = self.low + (port - self.low + 1) % size
            if port not in self.held and self.is_free(port):
                self.held.add(port)
                return port
        raise PortsExhausted(f"no free port in {self.low}-{self.high}")
