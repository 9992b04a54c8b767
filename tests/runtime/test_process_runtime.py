"""The process runtime against real processes: env and ports, logs, stops, errors, crashes."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess

import pytest

from p2pswarm.runtime.base import TaskSpec, port_env, substitute
from p2pswarm.runtime.ports import PortAllocator, PortsExhausted
from p2pswarm.runtime.process import ProcessConfig, ProcessRuntime

from ..apps.support import PY, aeventually, app, eventually, pid_gone

pytestmark = pytest.mark.timeout(60)


def spec(task_id: str, *command: str, **kw) -> TaskSpec:
    return TaskSpec(task_id, kw.pop("service", "web"), kw.pop("slot", 1), "node-a", command, **kw)


def run(coro):
    return asyncio.run(coro)


def read_log(rt: ProcessRuntime, task_id: str, stream: str = "stdout") -> str:
    return "".join(p.read_text() for p in rt.log_paths(task_id)[stream])


def test_env_port_and_substitution(tmp_path):
    rt = ProcessRuntime(tmp_path)
    code = ("import json, os, sys; print(json.dumps({k: v for k, v in os.environ.items() "
            "if k.startswith(('P2PSWARM_', 'PORT', 'MY_'))}), sys.argv[1])")

    async def main():
        h = await rt.start(spec("t1", PY, "-c", code, "--listen=127.0.0.1:{port}",
                                env={"MY_VAR": "x", "PORT": "1", "P2PSWARM_TASK_ID": "forged"}, ports=2))
        assert (tmp_path / "tasks" / "t1" / "pid").read_text().strip() == str(h.pid)
        return h, await rt.wait(h)

    h, ended = run(main())
    assert ended.ok and ended.code == 0
    env_line, arg = read_log(rt, "t1").split("\n")[0].rsplit(" ", 1)
    port, port1 = h.ports
    assert port != port1 and all(20000 <= p <= 32000 for p in h.ports)
    assert arg == f"--listen=127.0.0.1:{port}"
    assert json.loads(env_line) == {"P2PSWARM_TASK_ID": "t1", "P2PSWARM_SERVICE": "web", "P2PSWARM_SLOT": "1",
                                    "P2PSWARM_NODE": "node-a", "PORT": str(port), "PORT1": str(port1),
                                    "MY_VAR": "x"}
    assert not (tmp_path / "tasks" / "t1" / "pid").exists()
    assert rt.ports.held == set() and rt.live == {}


def test_exit_code_and_stderr(tmp_path):
    rt = ProcessRuntime(tmp_path)
    ended = run(_start_wait(rt, spec("t1", PY, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)")))
    assert ended.code == 3 and not ended.ok
    assert read_log(rt, "t1", "stderr") == "boom\n"


async def _start_wait(rt, s):
    return await rt.wait(await rt.start(s))


def test_logs_rotate_by_size(tmp_path):
    rt = ProcessRuntime(tmp_path, ProcessConfig(log_max_bytes=1000, log_keep=3))
    lines = [f"{i:04d} " + "x" * 94 for i in range(200)]  # 100 bytes a line, 20 kB in all
    code = "import sys\nfor i in range(200): print(f'{i:04d} ' + 'x' * 94)"
    assert run(_start_wait(rt, spec("t1", PY, "-c", code))).ok
    files = rt.log_paths("t1")["stdout"]
    names = [p.name for p in files]
    assert names == ["stdout.log.2", "stdout.log.1", "stdout.log"]
    assert all(p.stat().st_size <= 1000 for p in files)
    kept = "".join(p.read_text() for p in files).splitlines()
    assert kept == lines[-len(kept):] and len(kept) >= 20  # whole lines, the newest ones, in order


def test_stop_is_graceful_for_a_task_that_handles_sigterm(tmp_path, pids):
    rt = ProcessRuntime(tmp_path)

    async def main():
        h = await rt.start(spec("t1", PY, app("http_server.py")))
        pids.append(h.pid)
        await aeventually(lambda: "listening" in read_log(rt, "t1"), what="the server to listen")
        return await rt.stop(h, grace=10)

    ended = run(main())
    assert ended.code == 0 and ended.signal is None


def test_stop_kills_a_task_that_ignores_sigterm(tmp_path, pids):
    rt = ProcessRuntime(tmp_path)
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(300)")

    async def main():
        h = await rt.start(spec("t1", PY, "-c", code))
        pids.append(h.pid)
        await aeventually(lambda: "ready" in read_log(rt, "t1"), what="the task to ignore SIGTERM")
        return await rt.stop(h, grace=0.3)

    ended = run(main())
    assert ended.signal == signal.SIGKILL and ended.code is None


def test_the_group_dies_with_its_leader(tmp_path, pids):
    rt = ProcessRuntime(tmp_path)

    async def main():
        h = await rt.start(spec("t1", PY, app("forker.py"), "exit"))
        return await rt.wait(h)

    assert run(main()).code == 0
    child = int(read_log(rt, "t1").split()[1])
    pids.append(child)
    eventually(lambda: pid_gone(child), what="the forked helper to be killed")


@pytest.mark.parametrize("command, workdir, error", [
    (("p2pswarm-no-such-exe", "x"), None, "executable not found: p2pswarm-no-such-exe"),
    (("{tmp}/plain.txt",), None, "permission denied: {tmp}/plain.txt"),
    (("{tmp}/garbage.bin",), None, "cannot start {tmp}/garbage.bin: Exec format error"),
    ((), None, "empty command"),
    (("true",), "/no/such/dir", "working directory not found: /no/such/dir"),
])
def test_start_errors_are_task_errors(tmp_path, command, workdir, error):
    rt = ProcessRuntime(tmp_path)
    (tmp_path / "plain.txt").write_text("not a program\n")
    (tmp_path / "garbage.bin").write_bytes(b"\x00\x01garbage")
    (tmp_path / "garbage.bin").chmod(0o755)
    command = tuple(c.replace("{tmp}", str(tmp_path)) for c in command)
    error = error.replace("{tmp}", str(tmp_path))

    async def main():
        h = await rt.start(spec("t1", *command, workdir=workdir))
        return h, await rt.wait(h), rt.poll(h)

    h, ended, polled = run(main())
    assert h.pid is None and h.error == error
    assert ended == polled and ended.error == error and not ended.ok
    assert f"p2pswarm: {error}" in read_log(rt, "t1", "stderr")
    assert rt.ports.held == set()


def _spawn_parent(tmp_path, task_id, *command):
    parent = subprocess.Popen([PY, app("runtime_parent.py"), str(tmp_path), task_id, *command],
                              stdout=subprocess.PIPE, text=True)
    info = json.loads(parent.stdout.readline())
    parent.stdout.close()  # it prints nothing more
    assert info["error"] is None
    return parent, info["pid"]


def test_tasks_die_with_their_node(tmp_path, pids):
    parent, task = _spawn_parent(tmp_path, "t1", PY, "-c", "import time; time.sleep(300)")
    pids.extend([task, parent.pid])
    assert not pid_gone(task)
    parent.kill()
    parent.wait()
    eventually(lambda: pid_gone(task), what="the task to die with its parent (PR_SET_PDEATHSIG)")


def test_leftovers_of_a_previous_life_are_stopped(tmp_path, pids):
    parent, leader = _spawn_parent(tmp_path, "t1", PY, app("forker.py"))
    pids.extend([leader, parent.pid])
    rt_dir = tmp_path / "tasks" / "t1"
    child = int(eventually(lambda: (rt_dir / "stdout.log").read_text().split()[1:2], what="the helper")[0])
    pids.append(child)
    parent.kill()  # the node crashes: the leader dies with it, the helper is left over
    parent.wait()
    eventually(lambda: pid_gone(leader), what="the leader to die")
    assert not pid_gone(child)

    # A stale pid file naming a process that is not ours must not get it killed.
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    pids.append(stranger.pid)
    (tmp_path / "tasks" / "t2").mkdir()
    (tmp_path / "tasks" / "t2" / "pid").write_text(f"{stranger.pid}\n")

    stopped = run(ProcessRuntime(tmp_path).adopt_or_stop_leftovers())
    assert stopped == ["t1"]
    eventually(lambda: pid_gone(child), what="the leftover helper to be stopped")
    assert stranger.poll() is None
    assert not (rt_dir / "pid").exists() and not (tmp_path / "tasks" / "t2" / "pid").exists()
    stranger.kill()
    stranger.wait()


def test_ports_held_are_never_handed_out_and_busy_ports_are_skipped():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = PortAllocator(port, port + 3)
        got = []
        with pytest.raises(PortsExhausted):
            while True:  # the others in the range are free unless some other process holds them
                got.extend(ports.take(1))
        assert port not in got and len(set(got)) == len(got) <= 3
        if got:
            ports.release(got[:1])
            assert ports.take(1) == tuple(got[:1])


def test_port_substitution_leaves_other_braces_alone():
    assert substitute(("{port}", "-p{port1}", '{"a": 1}', "{ports}"), (1, 2)) == ("1", "-p2", '{"a": 1}', "{ports}")
    assert port_env((5, 6)) == {"PORT": "5", "PORT1": "6"}


def test_task_ids_are_checked():
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            TaskSpec(bad, "s", 1, "n", ("true",))


def test_a_process_that_left_the_group_does_not_hold_up_the_end(tmp_path, pids):
    """It keeps the output pipe open forever; the run still ends (after pipe_drain)."""
    rt = ProcessRuntime(tmp_path, ProcessConfig(pipe_drain=0.2))
    code = ("import os, time\nchild = os.fork()\nif child == 0:\n    os.setsid(); time.sleep(300)\n"
            "print('child', child, flush=True)")
    assert run(_start_wait(rt, spec("t1", PY, "-c", code))).code == 0
    pids.append(int(read_log(rt, "t1").split()[1]))
    assert rt.live == {}
