"""The audit log's writer: every mutating API call, local or remote, becomes one access-record entry.

:class:`Audited` wraps the router for both listeners.  After a call to a mutating endpoint
(:func:`p2pswarm.api.roles.mutating`) it proposes ``who, role, node, method, path, status,
when`` to the replicated access record (:mod:`p2pswarm.security.access`, where the choice of a
replicated log is explained) without delaying the answer; a refused remote call is recorded too.
An entry that cannot be committed (no Raft driver yet, no quorum) goes to the node's log
instead, and ``audit_unrecorded`` counts it.  ``p2pswarm audit`` shows the log.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter
from typing import Any

from p2pswarm.api import roles
from p2pswarm.api.server import HttpError, Request, Response
from p2pswarm.consensus.requests import command_id
from p2pswarm.security.access import audit_command

log = logging.getLogger("p2pswarm.audit")

AUDIT_WRITE_TIMEOUT = 10.0
"""Seconds an audit entry may wait for its Raft commit: a leader election (a few election timeouts,
~1-3 s on the lan preset) fits; longer means no quorum, and the entry goes to the node's log."""
AUDIT_CLOSE_GRACE = 1.0
"""Seconds a stopping node waits for pending entries (e.g. its own shutdown call's) before logging them."""


class Audited:
    """The router, with every mutating call recorded."""

    def __init__(self, router: Any) -> None:
        self.router, self.node = router, router.node
        self.counters: Counter[str] = Counter()
        self._tasks: set[asyncio.Task] = set()

    def endpoint(self, request: Request) -> str | None:
        return self.router.endpoint(request)

    async def __call__(self, request: Request) -> Response:
        endpoint = self.router.endpoint(request)
        try:
            response = self.router(request)
            if inspect.isawaitable(response):
                response = await response
        except HttpError as exc:
            self.record(request, endpoint, exc.status)
            raise
        except Exception:
            self.record(request, endpoint, 500)
            raise
        except asyncio.CancelledError:  # the node stops while the call waits: it may still take effect
            self.record(request, endpoint, 503)
            raise
        self.record(request, endpoint, response.status)
        return response

    def record(self, request: Request, endpoint: str | None, status: int) -> None:
        """Record a call to ``endpoint`` when it mutates (unknown endpoints change nothing)."""
        if endpoint is None or not roles.mutating(endpoint):
            return
        command = audit_command(command_id("audit"), at=time.time(), who=request.caller,
                                role=request.role, node=str(self.node.name or "-"),
                                method=request.method, path=request.path, status=status)
        task = asyncio.ensure_future(self._write(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, command: dict) -> None:
        entry = command["entry"]
        driver = self.node.raft_driver()
        try:
            if driver is None:
                raise RuntimeError("this node has no Raft driver yet")
            result = await driver.write_access(command, timeout=AUDIT_WRITE_TIMEOUT)
            if not result.ok:
                raise RuntimeError(result.error)
            self.counters["audit_recorded"] += 1
        except asyncio.CancelledError:
            self._unrecorded(entry, "the node is stopping")
            raise
        except Exception as exc:  # no quorum, a timeout, shutting down: keep the entry in the node's log
            self._unrecorded(entry, (str(exc).splitlines() or [type(exc).__name__])[0])

    def _unrecorded(self, entry: dict, why: str) -> None:
        self.counters["audit_unrecorded"] += 1
        log.warning("audit entry not replicated (%s): at %.3f %s %s by %s -> %s", why, entry["at"], entry["method"],
                    entry["path"], entry["who"], entry["status"])

    async def close(self) -> None:
        """Give pending entries :data:`AUDIT_CLOSE_GRACE` to commit, then log the rest and stop."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=AUDIT_CLOSE_GRACE)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
