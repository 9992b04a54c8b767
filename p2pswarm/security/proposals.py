"""Background Raft proposals of the security duties, at most one in flight per purpose.

A duty (record a certificate, sign a revocation list, rekey, re-seal the API CA...) runs on
every loop step of the node, and a Raft write takes a round trip or more; so a duty proposes
in the background and asks :meth:`Proposals.busy` before proposing the same thing again.  A
proposal that is refused or not committed is logged at debug and forgotten: the duty that
wanted it sees the record unchanged on a later step and proposes again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger("p2pswarm.security")

PROPOSE_TIMEOUT = 10.0
"""Seconds one background proposal may take before it is given up (and proposed again later)."""


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


class Proposals:
    def __init__(self, what: str, write: Callable[[Any, dict, float], Awaitable[Any]]) -> None:
        """``write(driver, command, timeout)`` commits one command (e.g. the driver's ``write_security``)."""
        self.what, self.write = what, write
        self.inflight: set[str] = set()
        self.tasks: set[asyncio.Task] = set()

    def busy(self, key: str) -> bool:
        return key in self.inflight

    def propose(self, driver: Any, key: str, cmd: dict) -> None:
        """Commit ``cmd`` in the background unless a proposal for ``key`` is still under way."""
        if key in self.inflight:
            return
        self.inflight.add(key)

        async def run() -> None:
            try:
                result = await self.write(driver, cmd, PROPOSE_TIMEOUT)
                if not getattr(result, "ok", False):
                    log.debug("%s %s refused: %s", self.what, key, getattr(result, "error", result))
            except Exception as exc:
                log.debug("%s %s not committed: %s", self.what, key, _reason(exc))
            finally:
                self.inflight.discard(key)

        task = asyncio.ensure_future(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
