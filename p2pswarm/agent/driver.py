"""The agent's asyncio glue: applies :class:`AgentCore` actions to a :class:`Runtime` and
feeds what the runtime observes back into the core. It owns the clock; the core decides.

Usage (the node wires this)::

    driver = AgentDriver(ProcessRuntime(data_dir), on_digest=publish)
    await driver.runtime.adopt_or_stop_leftovers()
    loop_task = asyncio.create_task(driver.run())    # restart timers
    driver.assign([...])                             # whenever assignments arrive
    ...
    await driver.shutdown()                          # node stop: every task stopped, none orphaned
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from p2pswarm.agent.core import AgentCore, Assignment, Forget, Start, Stop
from p2pswarm.runtime.base import Runtime, TaskHandle, TaskSpec
from p2pswarm.runtime.health import monitor
from p2pswarm.runtime.process import task_env

log = logging.getLogger("p2pswarm.agent")


@dataclass
class _Run:
    run: int
    handle: TaskHandle | None = None
    stop_grace: float | None = None
    """Set when a stop was asked for before the runtime handed out the handle."""
    health: asyncio.Task | None = None


class AgentDriver:
    def __init__(self, runtime: Runtime, core: AgentCore | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_digest: Callable[[dict[str, Any]], None] | None = None,
                 health_host: str = "127.0.0.1") -> None:
        """``health_host``: where tcp/http health checks connect (the address tasks are told to use)."""
        self.runtime, self.core, self.clock, self.on_digest = runtime, core or AgentCore(), clock, on_digest
        self.health_host = health_host
        self.runs: dict[str, _Run] = {}
        self._bg: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._published = -1

    # ------------------------------------------------------------------ the node's side

    def assign(self, assignments: Iterable[Assignment]) -> None:
        self._event(self.core.assign, list(assignments))

    def digest(self) -> dict[str, Any]:
        return self.core.digest()

    async def run(self) -> None:
        """Fire restart timers until :meth:`shutdown`."""
        while not self.core.halted:
            deadline = self.core.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._event(self.core.tick)
            self._wake.clear()  # after the tick, which sets it too: deadlines are now current

    async def shutdown(self) -> None:
        """Stop every task (each with its grace period) and wait until all have exited."""
        self._event(self.core.halt)
        while pending := [t for t in self._bg if not t.done()]:
            await asyncio.wait(pending)

    # ------------------------------------------------------------------ core ⇄ runtime

    def _event(self, method: Callable[..., None], *args: Any) -> None:
        method(self.clock(), *args)
        for action in self.core.take_actions():
            if isinstance(action, Start):
                self.runs[action.task_id] = _Run(action.run)
                self._spawn(self._run(action.task_id, action.run, action.spec))
            elif isinstance(action, Stop):
                self._stop(action)
            elif isinstance(action, Forget):
                self.runtime.forget(action.task_id, action.spec)
        digest = self.core.digest()
        if digest["v"] != self._published:
            self._published = digest["v"]
            if self.on_digest is not None:
                self.on_digest(digest)
        self._wake.set()

    def _stop(self, action: Stop) -> None:
        r = self.runs.get(action.task_id)
        if r is None or r.run != action.run:
            return
        r.stop_grace = action.grace
        if r.handle is not None:
            self._spawn(self.runtime.stop(r.handle, action.grace))

    async def _run(self, task_id: str, run: int, spec: TaskSpec) -> None:
        """One run: start, report, watch health, wait for the end, report."""
        r = self.runs[task_id]
        try:
            prepare = getattr(self.runtime, "prepare", None)  # runtimes whose starts may wait (an image pull)
            if prepare is not None and spec.image is not None:
                self._event(self.core.preparing, task_id, run)
                await prepare(spec)
            if r.stop_grace is not None:  # stopped while its image was made ready: it must not run at all
                log.info("task %s: stopped before it started", task_id)
                code, signal, error = None, None, None
            else:
                r.handle = handle = await self.runtime.start(spec)
                if handle.error is None:
                    self._event(self.core.started, task_id, run, handle.ports)
                    if r.stop_grace is not None:
                        self._spawn(self.runtime.stop(handle, r.stop_grace))
                    elif spec.health is not None:
                        r.health = self._spawn(self._watch_health(task_id, run, spec, handle))
                ended = await self.runtime.wait(handle)
                code, signal, error = ended.code, ended.signal, ended.error
        except Exception as exc:  # a runtime bug must not take the agent down
            log.exception("task %s: runtime failure", task_id)
            code, signal, error = None, None, f"runtime error: {exc}"
        finally:
            if r.health is not None:
                r.health.cancel()
            self.runs.pop(task_id, None)
        self._event(self.core.exited, task_id, run, code, signal, error)

    async def _watch_health(self, task_id: str, run: int, spec: TaskSpec, handle: TaskHandle) -> None:
        def report(status: str, detail: str) -> None:
            if status == "unhealthy":  # the agent stops it: say why, or the stop looks causeless in the log
                log.warning("task %s is unhealthy (%s): stopping it", task_id, detail)
            self._event(self.core.health, task_id, run, status, detail)

        port = handle.ports[0] if handle.ports else None
        await monitor(spec.health, port, report, host=self.health_host,
                      env=task_env(spec, handle.ports, self.health_host), run_as=handle.run_as, clock=self.clock)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._bg.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("agent background task failed", exc_info=task.exception())
