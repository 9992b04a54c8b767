"""What the node's loop knows of a subsystem: the Component protocol.

The node keeps its components in start order, starts them one by one, calls
``step(now)`` on each after every loop turn, and closes them in reverse order
(a component may use those started before it until it is closed).  A component
that needs its own background work (the agent, the scheduler) runs it as tasks
between ``start`` and ``close``; ``step`` must return at once.
"""

from __future__ import annotations

from typing import Any, Protocol


class Component(Protocol):
    name: str
    """What the node's logs call it (``raft``, ``mesh``, ...)."""

    async def start(self) -> None:
        """Begin: open files, bind listeners, spawn background tasks; raises with a one-line reason."""

    def step(self, now: float) -> None:
        """React to what changed since the last loop turn; called often, so cheap when nothing did."""

    async def close(self) -> None:
        """Stop: cancel background work and release what ``start`` took."""

    def metrics(self) -> dict[str, Any]:
        """This component's counters and gauges by name (numbers), or groups of them by name (the Raft
        driver's ``{"gauges": {...}, "counters": {...}}``): what ``/metrics`` shows of it."""
