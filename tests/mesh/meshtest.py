"""Helpers shared by the data-plane tests: run a coroutine on asyncio or uvloop with a bound,
free ports on a loopback address, and wait for a condition."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, Callable

from p2pswarm.testing.localcluster import free_port  # noqa: F401  (re-exported for the mesh tests)

LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


def arun(coro: Any, loop: str = "asyncio", timeout: float = 60.0) -> Any:
    """Run ``coro`` on ``loop``; a test that hangs fails after ``timeout`` (generous: the data-plane
    tests start interpreters, seconds each on a busy machine) with its stack, not pytest's kill."""
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro
    if loop == "uvloop":
        import uvloop
        return uvloop.run(bounded())
    return asyncio.run(bounded())


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)
