"""The agent driver on the real process runtime: run, check, restart, give up, remove, stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request

import pytest

from p2pswarm.agent.core import Assignment, RestartPolicy
from p2pswarm.agent.driver import AgentDriver
from p2pswarm.runtime.base import HealthCheck, TaskSpec
from p2pswarm.runtime.process import ProcessRuntime

from ..apps.support import PY, aeventually, app, pid_gone

pytestmark = pytest.mark.timeout(60)

HTTP_CHECK = HealthCheck("http", path="/health", interval=0.05, timeout=2, retries=3, start_period=10)
"""Checked every 50 ms; failures in the first 10 s do not count: a Python app starting on a loaded 2-core
machine may need seconds before it listens (3 × 50 ms was too tight and restarted it again)."""


def server(task_id: str, version: int = 1, desired: str = "running") -> Assignment:
    spec = TaskSpec(task_id, "web", 1, "n1", (PY, app("http_server.py")), health=HTTP_CHECK, stop_grace=5)
    return Assignment(spec, version, desired, RestartPolicy("any", delay=0.05))


def crasher(task_id: str) -> Assignment:
    spec = TaskSpec(task_id, "bad", 2, "n1", (PY, "-c", "import sys; sys.exit(7)"), ports=0)
    return Assignment(spec, 1, "running", RestartPolicy("on-failure", delay=0.05, max_attempts=2))


def record(driver: AgentDriver, task_id: str) -> dict:
    return driver.digest()["tasks"].get(task_id, {})


def get(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        return json.loads(r.read())


def test_run_heal_give_up_and_remove(tmp_path, pids):
    published: list[int] = []

    async def main():
        runtime = ProcessRuntime(tmp_path)
        driver = AgentDriver(runtime, on_digest=lambda d: published.append(d["v"]))
        timers = asyncio.create_task(driver.run())
        driver.assign([server("web.1"), crasher("bad.1")])

        healthy = lambda: record(driver, "web.1").get("h") == "healthy"  # noqa: E731
        await aeventually(healthy, what="web.1 healthy")
        port = record(driver, "web.1")["p"]
        pid = driver.runs["web.1"].handle.pid
        pids.append(pid)
        assert await asyncio.to_thread(get, port) == {"task": "web.1", "service": "web", "slot": "1",
                                                       "node": "n1", "port": port, "client": "127.0.0.1"}

        await aeventually(lambda: record(driver, "bad.1").get("s") == "failed", what="bad.1 to give up")
        assert record(driver, "bad.1") == {"s": "failed", "v": 1, "x": 7, "r": 2,
                                           "e": "exit code 7; gave up after 2 restarts"}

        os.kill(pid, signal.SIGKILL)  # the task crashes: the agent restarts it
        await aeventually(lambda: record(driver, "web.1").get("r") == 1 and healthy(), what="web.1 back")
        new_pid = driver.runs["web.1"].handle.pid
        pids.append(new_pid)
        assert new_pid != pid and pid_gone(pid)

        driver.assign([])
        await aeventually(lambda: driver.digest()["tasks"] == {}, what="everything removed")
        assert pid_gone(new_pid) and not (tmp_path / "tasks" / "web.1").exists()
        await driver.shutdown()
        await timers

    asyncio.run(main())
    assert published == sorted(set(published))


def test_shutdown_leaves_no_task_behind(tmp_path, pids):
    async def main():
        driver = AgentDriver(ProcessRuntime(tmp_path))
        timers = asyncio.create_task(driver.run())
        driver.assign([server("web.1"), server("web.2")])
        await aeventually(lambda: all(record(driver, t).get("h") == "healthy" for t in ("web.1", "web.2")),
                          what="both healthy (so their SIGTERM handlers are in place)")
        task_pids = [r.handle.pid for r in driver.runs.values()]
        pids.extend(task_pids)
        await driver.shutdown()
        await timers
        return task_pids, driver.digest()

    task_pids, digest = asyncio.run(main())
    assert all(pid_gone(p) for p in task_pids)
    assert {t: r["s"] for t, r in digest["tasks"].items()} == {"web.1": "shutdown", "web.2": "shutdown"}
    assert {r.get("x") for r in digest["tasks"].values()} == {0}  # SIGTERM honoured: a clean exit


def test_an_unhealthy_task_is_stopped_and_the_log_says_why(tmp_path, pids, caplog):
    """Nothing listens on the task's port: one failed probe (no start period) makes it unhealthy."""
    check = HealthCheck("tcp", interval=0.05, timeout=2, retries=1, start_period=0)
    spec = TaskSpec("mute.1", "mute", 1, "n1", (PY, "-c", "import time; time.sleep(60)"), health=check, stop_grace=5)

    async def main():
        driver = AgentDriver(ProcessRuntime(tmp_path))
        timers = asyncio.create_task(driver.run())
        driver.assign([Assignment(spec, 1, "running", RestartPolicy("none"))])
        await aeventually(lambda: "mute.1" in driver.runs and driver.runs["mute.1"].handle is not None,
                          what="mute.1 started")
        pids.append(driver.runs["mute.1"].handle.pid)
        await aeventually(lambda: record(driver, "mute.1").get("s") == "failed", what="mute.1 stopped as unhealthy")
        failed = record(driver, "mute.1")
        await driver.shutdown()
        await timers
        return failed

    with caplog.at_level("WARNING", logger="p2pswarm.agent"):
        failed = asyncio.run(main())
    assert failed["e"].startswith("unhealthy: ") and "Connection refused" in failed["e"]
    assert any(r.getMessage().startswith("task mute.1 is unhealthy (") and r.getMessage().endswith("): stopping it")
               for r in caplog.records)
    assert pid_gone(pids[-1])


class _SlowImages(ProcessRuntime):
    """A process runtime whose image tasks first wait for their image (a pull) until ``pulled`` is set."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pulled = asyncio.Event()
        self.pulling = asyncio.Event()
        self.started: list[str] = []

    async def prepare(self, spec: TaskSpec) -> None:
        self.pulling.set()
        await self.pulled.wait()

    async def start(self, spec: TaskSpec):
        self.started.append(spec.task_id)
        return await super().start(spec)


def test_a_task_stopped_while_its_image_is_pulled_never_runs(tmp_path):
    async def main():
        runtime = _SlowImages(tmp_path)
        driver = AgentDriver(runtime)
        timers = asyncio.create_task(driver.run())
        spec = TaskSpec("job.1", "job", 1, "n1", (PY, "-c", "print('ran')"), image="app:1")
        driver.assign([Assignment(spec, 1, "running", RestartPolicy("none"))])
        await asyncio.wait_for(runtime.pulling.wait(), 10)
        assert record(driver, "job.1").get("s") == "preparing"
        driver.assign([Assignment(spec, 1, "shutdown", RestartPolicy("none"))])  # stopped during the pull
        runtime.pulled.set()
        await aeventually(lambda: record(driver, "job.1").get("s") == "shutdown", what="job.1 shut down")
        await driver.shutdown()
        await timers
        return runtime.started
    assert asyncio.run(main()) == []  # the pull finished, but the stopped task was not started to be killed
