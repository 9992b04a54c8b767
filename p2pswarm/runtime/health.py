"""Health checks with Docker's semantics: tcp connect, http GET, or an exec command.

:class:`HealthTracker` is the pure rule (status from probe results and ``now``);
:func:`monitor` runs the probes on the loop and reports each status change. The
agent treats ``unhealthy`` as a failure of the task (it stops it; the restart policy
decides what then), as Swarm does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from typing import Any, Callable, Mapping

from p2pswarm.runtime import procfs
from p2pswarm.runtime.base import HealthCheck, substitute

STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"
OUTPUT_LIMIT = 4096
"""Bytes of an exec probe's output kept for the report (Docker keeps 4 KiB too)."""


class HealthTracker:
    """``starting`` until a probe passes; ``healthy`` after any passing probe;
    ``unhealthy`` after ``retries`` failures in a row. While still ``starting`` and within
    ``start_period`` of the start, failures are not counted."""

    def __init__(self, check: HealthCheck, started_at: float) -> None:
        self.check, self.started_at = check, started_at
        self.status = STARTING
        self.failures = 0

    def record(self, passed: bool, now: float) -> str | None:
        """Feed one probe result; returns the new status if it changed."""
        before = self.status
        if passed:
            self.failures = 0
            self.status = HEALTHY
        elif not (self.status == STARTING and now - self.started_at < self.check.start_period):
            self.failures += 1
            if self.failures >= self.check.retries:
                self.status = UNHEALTHY
        return self.status if self.status != before else None


async def probe(check: HealthCheck, port: int | None, host: str = "127.0.0.1",
                env: Mapping[str, str] | None = None, run_as: Mapping[str, Any] | None = None) -> tuple[bool, str]:
    """Run one probe within ``check.timeout``; returns (passed, a one-line detail). An exec probe
    runs with ``run_as`` (subprocess options: the task's env, cwd and user) when given, else ``env``."""
    if check.kind == "exec":
        return await _exec(check, port, dict(run_as) if run_as else {"env": env})
    try:
        return await asyncio.wait_for(_tcp_or_http(check, host, port), check.timeout)
    except asyncio.TimeoutError:
        return False, f"timed out after {check.timeout}s"
    except OSError as exc:
        return False, f"{host}:{port}: {os.strerror(exc.errno) if exc.errno else exc}"


async def _tcp_or_http(check: HealthCheck, host: str, port: int | None) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if check.kind == "tcp":
            return True, f"connected to {host}:{port}"
        writer.write(f"GET {check.path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = (await reader.readline()).decode("latin-1").strip()
        parts = line.split()
        code = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        return 200 <= code < 400, line or "no HTTP response"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def _exec(check: HealthCheck, port: int | None, options: dict[str, Any]) -> tuple[bool, str]:
    argv = substitute(check.command, (port,) if port else ())
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, **options)
    except OSError as exc:
        return False, f"cannot run {argv[0]}: {exc.strerror or exc}"
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), check.timeout)
    except asyncio.TimeoutError:
        procfs.kill_group(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False, f"timed out after {check.timeout}s"
    text = output[-OUTPUT_LIMIT:].decode("utf-8", "replace").strip()
    return proc.returncode == 0, f"exit {proc.returncode}" + (f": {text}" if text else "")


async def monitor(check: HealthCheck, port: int | None, on_change: Callable[[str, str], None], *,
                  host: str = "127.0.0.1", env: Mapping[str, str] | None = None,
                  run_as: Mapping[str, Any] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Probe every ``check.interval`` seconds (after the previous probe ends, as Docker
    does) until cancelled; call ``on_change(status, detail)`` on every status change."""
    tracker = HealthTracker(check, clock())
    while True:
        await asyncio.sleep(check.interval)
        passed, detail = await probe(check, port, host, env, run_as)
        changed = tracker.record(passed, clock())
        if changed:
            on_change(changed, detail)
