"""The process runtime with cgroups: limits enforced, whole tasks stopped, tasks that die with their node."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time

import pytest

from p2pswarm.runtime import cgroups
from p2pswarm.runtime.base import TaskSpec
from p2pswarm.runtime.cgroups import NodeCgroups
from p2pswarm.runtime.process import ProcessConfig, ProcessRuntime

from ..apps.support import PY, aeventually, app, eventually, pid_gone

pytestmark = pytest.mark.timeout(60)
"""A task never outlives its node by more than this (seconds): the issue's promise."""
_ids = itertools.count()


def spec(task_id: str, *command: str, node: str = "node-a", **kw) -> TaskSpec:
    return TaskSpec(task_id, "web", 1, node, command, **kw)


def read_log(rt: ProcessRuntime, task_id: str, stream: str = "stdout") -> str:
    return "".join(p.read_text() for p in rt.log_paths(task_id)[stream])


@pytest.fixture
def node_cgroups():
    layout = cgroups.locate()
    if isinstance(layout, str):
        pytest.skip(f"no usable cgroups here: {layout}")
    node = NodeCgroups(layout, f"test{os.getpid()}y{next(_ids)}")
    yield node
    node.reap()


@pytest.fixture
def runtime(tmp_path, node_cgroups):
    return ProcessRuntime(tmp_path, ProcessConfig(cgroups=node_cgroups))


def test_a_memory_hog_is_killed_at_its_limit_and_says_so(runtime):
    hog = "chunks = []\nwhile True: chunks.append(b'x' * (1 << 20))"

    async def main():
        return await runtime.wait(await runtime.start(spec("t1", PY, "-c", hog, limit_memory=32 << 20)))

    ended = asyncio.run(main())
    assert ended.signal == signal.SIGKILL and ended.error == "killed: memory limit 32MiB reached"


def test_a_setsid_grandchild_dies_with_its_stopped_task(runtime, pids):
    async def main():
        h = await runtime.start(spec("t1", PY, app("escaper.py")))
        pids.append(h.pid)
        line = await aeventually(lambda: read_log(runtime, "t1").split(), what="the task to fork")
        pids.extend(int(p) for p in line[1:3])
        return h, await runtime.stop(h, grace=5)

    h, ended = asyncio.run(main())
    assert ended.signal == signal.SIGTERM  # the leader took the stop signal; the rest was killed
    assert all(pid_gone(p) for p in pids)
    assert not any(d.exists() for d in h.cgroup.dirs)


def test_the_whole_cgroup_dies_with_its_leader(runtime, pids):
    async def main():
        return await runtime.wait(await runtime.start(spec("t1", PY, app("escaper.py"), "exit")))

    assert asyncio.run(main()).code == 0
    escaped = [int(p) for p in read_log(runtime, "t1").split()[1:3]]
    pids.extend(escaped)
    assert all(pid_gone(p) for p in escaped)  # gone by the time wait() returned


def test_the_stop_signal_is_the_specs(runtime):
    code = ("import signal, sys, time\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(7))\n"
            "print('ready', flush=True)\ntime.sleep(60)")

    async def main():
        h = await runtime.start(spec("t1", PY, "-c", code, stop_signal="SIGINT"))
        await aeventually(lambda: "ready" in read_log(runtime, "t1"), what="the task to be ready")
        return await runtime.stop(h, grace=10)

    assert asyncio.run(main()).code == 7


def test_a_pids_limit_bounds_a_fork_bomb(runtime):
    """At most 20 forks are tried, each child sleeping until the task ends: only limit - 1 succeed."""
    bomb = ("import os, time\nok = 0\nfor _ in range(20):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        continue\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
            "    ok += 1\nprint('forked', ok, flush=True)")

    async def main():
        return await runtime.wait(await runtime.start(spec("t1", PY, "-c", bomb, limit_pids=6)))

    assert asyncio.run(main()).code == 0
    assert read_log(runtime, "t1") == "forked 5\n"  # 6 processes in all, the task itself included


def test_the_cpu_limit_is_the_cgroups_quota(runtime):
    async def main():
        h = await runtime.start(spec("t1", "sleep", "30", limit_cpu=0.5))
        cpu = h.cgroup.dir("cpu")
        quota = ((cpu / "cpu.cfs_quota_us").read_text().split() if h.cgroup.version == 1 else
                 (cpu / "cpu.max").read_text().split()[:1])
        await runtime.stop(h, grace=1)
        return quota

    assert asyncio.run(main()) == ["50000"]  # 0.5 core × the 100 ms period


def test_limits_on_a_node_that_cannot_isolate_fail_the_task_in_one_line(tmp_path):
    rt = ProcessRuntime(tmp_path, ProcessConfig(cgroups=None, cgroups_off="not root (uid 1000)"))

    async def main():
        return await rt.wait(await rt.start(spec("t1", "true", limit_memory=32 << 20, limit_pids=4)))

    ended = asyncio.run(main())
    assert ended.error == ("cannot enforce limits (memory 32MiB, pids 4) on this node: isolation none "
                           "(not root (uid 1000))")


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")
def test_the_specs_user_overrides_the_nodes_and_a_missing_one_fails_in_one_line(runtime):
    async def main():
        ran = await runtime.wait(await runtime.start(spec("t1", "id", "-u", user="nobody")))
        missing = await runtime.wait(await runtime.start(spec("t2", "id", user="no-such-user-p2ps")))
        return ran, missing

    ran, missing = asyncio.run(main())
    assert ran.ok and read_log(runtime, "t1") == "65534\n"
    assert missing.error == "user 'no-such-user-p2ps' does not exist on this node"


def test_leftover_cgroups_of_a_previous_life_are_stopped(tmp_path, node_cgroups, pids):
    async def first_life():
        rt = ProcessRuntime(tmp_path, ProcessConfig(cgroups=node_cgroups))
        h = await rt.start(spec("t1", PY, app("escaper.py")))
        pids.append(h.pid)
        return [h.pid, *map(int, (await aeventually(lambda: read_log(rt, "t1").split(), what="forks"))[1:3])]

    procs = asyncio.run(first_life())  # its loop is gone, but nobody killed the task: a crashed node
    pids.extend(procs)
    (tmp_path / "tasks" / "t1" / "pid").unlink(missing_ok=True)  # found by its cgroup alone
    stopped = asyncio.run(ProcessRuntime(tmp_path, ProcessConfig(cgroups=node_cgroups)).adopt_or_stop_leftovers())
    assert stopped == ["t1"]
    assert all(pid_gone(p) for p in procs) and node_cgroups.task_ids() == []


def _kill_a_node_and_time_its_tasks(tmp_path, node_id: str, settle: float) -> float:
    """Start a stand-in node whose task forks a child and a setsid grandchild; SIGKILL the node after
    ``settle`` seconds; returns the seconds until the last process of the task was gone."""
    node = subprocess.Popen([PY, app("isolated_node.py"), str(tmp_path), node_id, "t1", PY, app("escaper.py")],
                            stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(node.stdout.readline())
        assert info["error"] is None
        out = tmp_path / "tasks" / "t1" / "stdout.log"
        line = eventually(lambda: out.exists() and out.read_text().split(), what="the task to fork")
        procs = [info["pid"], *map(int, line[1:3])]
        time.sleep(settle)
        killed = time.monotonic()
        node.kill()
        node.wait()
        eventually(lambda: all(pid_gone(p) for p in procs), timeout=30, what="the task to die")
        took = time.monotonic() - killed
        eventually(lambda: pid_gone(info["reaper"]), what="the reaper to finish")
        return took
    finally:
        node.kill()
        node.wait()
        node.stdout.close()


def test_a_killed_node_takes_every_process_of_its_task_with_it(tmp_path, node_cgroups):
    """Once just after the node started (its reaper may still be importing) and once settled."""
    took = [_kill_a_node_and_time_its_tasks(tmp_path / str(i), node_cgroups.node_id, settle)
            for i, settle in enumerate((0.0, 0.5))]
    print(f"node SIGKILL -> last task process gone: {', '.join(f'{t * 1000:.0f} ms' for t in took)}")
    assert node_cgroups.task_ids() == []  # the reaper removed the cgroups too
