"""Health checks: Docker's status rules (pure) and the tcp/http/exec probes (real sockets)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from p2pswarm.runtime.base import HealthCheck, TaskSpec
from p2pswarm.runtime.health import HEALTHY, STARTING, UNHEALTHY, HealthTracker, monitor, probe
from p2pswarm.runtime.process import ProcessRuntime

from ..apps.support import PY, aeventually, app

pytestmark = pytest.mark.timeout(60)


def tracker(retries=3, start_period=0.0) -> HealthTracker:
    return HealthTracker(HealthCheck("tcp", retries=retries, start_period=start_period), started_at=100.0)


def test_failures_need_retries_in_a_row():
    t = tracker(retries=3)
    assert [t.record(False, 101), t.record(False, 102)] == [None, None]
    assert t.status == STARTING and t.failures == 2
    assert t.record(True, 103) == HEALTHY and t.failures == 0
    assert [t.record(False, 104), t.record(False, 105), t.record(True, 106)] == [None, None, None]
    assert [t.record(False, 107), t.record(False, 108), t.record(False, 109)] == [None, None, UNHEALTHY]
    assert t.record(False, 110) is None
    assert t.record(True, 111) == HEALTHY


def test_failures_in_the_start_period_do_not_count():
    t = tracker(retries=1, start_period=10)
    assert [t.record(False, now) for now in (101, 105, 109.9)] == [None, None, None]
    assert t.status == STARTING and t.failures == 0
    assert t.record(False, 110) == UNHEALTHY


def test_a_success_ends_the_start_period_early():
    t = tracker(retries=1, start_period=10)
    assert t.record(True, 101) == HEALTHY
    assert t.record(False, 102) == UNHEALTHY


def test_bad_checks_are_refused():
    for kw in ({"kind": "udp"}, {"kind": "exec"}, {"kind": "tcp", "retries": 0}, {"kind": "tcp", "interval": 0},
               {"kind": "http", "path": "/x HTTP/1.1\r\nHost: evil"}, {"kind": "http", "path": "health"}):
        with pytest.raises(ValueError):
            HealthCheck(**kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_probe():
    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        check = HealthCheck("tcp", timeout=2)
        async with server:
            up = await probe(check, port)
        down = await probe(check, free_port())
        return up, down

    (up_ok, _), (down_ok, detail) = asyncio.run(main())
    assert up_ok and not down_ok
    assert "refused" in detail.lower()


def test_exec_probe_passes_fails_and_times_out():
    def check(code, timeout=5.0):
        return HealthCheck("exec", command=(PY, "-c", code, "{port}"), timeout=timeout)

    async def main():
        return await asyncio.gather(
            probe(check("import sys; sys.exit(sys.argv[1] != '4242')"), 4242),
            probe(check("import sys; print('sick'); sys.exit(1)"), 4242),
            probe(check("import time; time.sleep(30)", timeout=0.3), 4242),
            probe(HealthCheck("exec", command=("p2pswarm-no-such-check",)), None))

    ok, sick, slow, missing = asyncio.run(main())
    assert ok[0] and ok[1] == "exit 0"
    assert sick == (False, "exit 1: sick")
    assert slow == (False, "timed out after 0.3s")
    assert not missing[0] and "p2pswarm-no-such-check" in missing[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_http_monitor_against_the_test_server(tmp_path, pids):
    """The real thing: the test app under the process runtime, probed over HTTP."""
    rt = ProcessRuntime(tmp_path)

    async def main():
        h = await rt.start(TaskSpec("t1", "web", 1, "n", (PY, app("http_server.py"))))
        pids.append(h.pid)
        await aeventually(lambda: listening(h.ports[0]), what="the test server listening")
        seen: dict[str, list[tuple[str, str]]] = {"/health": [], "/missing": []}
        monitors = [asyncio.create_task(monitor(HealthCheck("http", path=path, interval=0.05, retries=2),
                                                h.ports[0], lambda s, d, path=path: seen[path].append((s, d))))
                    for path in seen]
        await aeventually(lambda: seen["/health"] and seen["/missing"], what="both monitors to report")
        for m in monitors:
            m.cancel()
        await rt.stop(h, 5)
        return seen

    seen = asyncio.run(main())
    assert seen["/health"][0] == (HEALTHY, "HTTP/1.0 200 OK")
    assert seen["/missing"][0][0] == UNHEALTHY and "404" in seen["/missing"][0][1]


def test_monitor_reports_unhealthy_then_healthy():
    port = free_port()
    changes: list[str] = []

    async def main():
        m = asyncio.create_task(monitor(HealthCheck("tcp", interval=0.05, timeout=1, retries=2), port,
                                        lambda status, detail: changes.append(status)))
        await aeventually(lambda: changes == [UNHEALTHY], what="unhealthy")
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        async with server:
            await aeventually(lambda: changes == [UNHEALTHY, HEALTHY], what="healthy")
        m.cancel()

    asyncio.run(main())
