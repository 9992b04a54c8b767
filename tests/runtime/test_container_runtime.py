"""The container runtime against a private Docker Engine: runs, exits, logs, stops, bridge ports,
missing images, leftovers of this node and of others, memory limits, an engine that goes away."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from p2pswarm.agent.core import Assignment, RestartPolicy
from p2pswarm.agent.driver import AgentDriver
from p2pswarm.runtime import containerspec as cs
from p2pswarm.runtime.base import PortSpec, TaskSpec
from p2pswarm.runtime.container import OOM_ERROR, STOP_UNCONFIRMED, ContainerConfig, ContainerRuntime
from p2pswarm.runtime.dispatch import DispatchRuntime
from p2pswarm.runtime.engine import probe
from p2pswarm.runtime.process import ProcessRuntime
from p2pswarm.runtime.reaper import Watchdog
from p2pswarm.testing.dockerd import HungEngine

from ..apps.support import PY, aeventually

pytestmark = pytest.mark.timeout(120)


def image_spec(engine, task_id: str, *command: str, node: str = "node-a", **kw) -> TaskSpec:
    return TaskSpec(task_id, kw.pop("service", "web"), kw.pop("slot", 1), node, command, image=engine.image, **kw)


def runtime(engine, tmp_path: Path, node: str = "node-a", **config) -> ContainerRuntime:
    return ContainerRuntime(tmp_path, ContainerConfig(node, engine.socket, **config))


def read_log(rt, task_id: str, stream: str = "stdout") -> str:
    return "".join(p.read_text() for p in rt.log_paths(task_id)[stream])


def containers_of(engine, node: str) -> list:
    with contextlib.closing(engine.client()) as client:
        return client.containers.list(all=True, filters={"label": f"{cs.NODE}={node}"})


def http_get(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def test_probe_names_the_engine_or_says_why_not(docker_engine, tmp_path):
    found = probe(docker_engine.socket)
    assert (found.kind, found.available) == ("docker", True) and found.detail[:2].isdigit()
    missing = probe(f"unix://{tmp_path}/none.sock")
    assert missing.kind == "none" and missing.detail.endswith("not reachable: No such file or directory")


def test_run_exit_code_env_and_logs(docker_engine, tmp_path):
    rt = runtime(docker_engine, tmp_path, task_host="127.0.0.1")
    script = "echo out; echo err >&2; echo PORT=$PORT TASK=$P2PSWARM_TASK_ID HOST=$P2PSWARM_HOST; exit 3"

    async def main():
        h = await rt.start(image_spec(docker_engine, "t1", "sh", "-c", script, env={"PORT": "1"}))
        assert h.error is None and len(h.ports) == 1
        return h, await rt.wait(h)

    h, ended = asyncio.run(main())
    assert (ended.code, ended.error) == (3, None)
    assert read_log(rt, "t1") == f"out\nPORT={h.ports[0]} TASK=t1 HOST=127.0.0.1\n"
    assert read_log(rt, "t1", "stderr") == "err\n"
    assert containers_of(docker_engine, "node-a") == [] and rt.live == {} and rt.ports.held == set()
    rt.close()


def test_output_after_a_silence_longer_than_the_api_timeout_is_kept(docker_engine, tmp_path):
    rt = runtime(docker_engine, tmp_path, api_timeout=3.0)  # the output stream is attached with this timeout...

    async def main():
        h = await rt.start(image_spec(docker_engine, "quiet", "sh", "-c", "sleep 7; echo late"))
        assert h.error is None, h.error
        return await rt.wait(h)

    ended = asyncio.run(main())
    assert (ended.code, ended.error) == (0, None)
    assert read_log(rt, "quiet") == "late\n"  # ...and read without it
    rt.close()


def test_stop_sends_the_stop_signal_then_kills(docker_engine, tmp_path):
    rt = runtime(docker_engine, tmp_path)
    polite = "trap 'echo got USR1; exit 0' USR1; echo ready; while true; do sleep 0.1; done"

    async def main():
        h = await rt.start(image_spec(docker_engine, "polite", "sh", "-c", polite, stop_signal="SIGUSR1"))
        await aeventually(lambda: read_log(rt, "polite") == "ready\n", what="the trap set")
        first = await rt.stop(h, grace=20)
        deaf = await rt.start(image_spec(docker_engine, "deaf", "sleep", "60"))  # PID 1 ignores SIGTERM
        second = await rt.stop(deaf, grace=0.5)
        return first, second

    first, second = asyncio.run(main())
    assert (first.code, first.error) == (0, None) and read_log(rt, "polite") == "ready\ngot USR1\n"
    assert second.code == 137  # SIGKILL after the grace period, as docker stop
    assert containers_of(docker_engine, "node-a") == []
    rt.close()


def test_two_bridge_replicas_of_one_published_port_both_serve(docker_engine, tmp_path):
    rt = runtime(docker_engine, tmp_path)
    serve = "echo $P2PSWARM_TASK_ID > /www/id; echo inside=$PORT; exec httpd -f -p 80 -h /www"

    async def main():
        handles = []
        for slot in (1, 2):
            spec = image_spec(docker_engine, f"web.{slot}", "sh", "-c", serve, slot=slot, network="bridge",
                              publish=(PortSpec(8080, 80),), stop_grace=0.5)
            handles.append(await rt.start(spec))
        ports = [h.ports[0] for h in handles]
        for h in handles:
            await aeventually(lambda: _answers(h.ports[0]), what=f"{h.spec.task_id} serving")
        bodies = [await asyncio.to_thread(http_get, p, "/id") for p in ports]
        for h in handles:
            await rt.stop(h, 0.5)
        return ports, bodies

    ports, bodies = asyncio.run(main())
    assert ports[0] != ports[1] and 80 not in ports
    assert bodies == ["web.1\n", "web.2\n"]
    assert read_log(rt, "web.1") == "inside=80\n"
    rt.close()


def _answers(port: int) -> bool:
    try:
        http_get(port, "/index.html")
        return True
    except OSError:
        return False


def test_a_missing_image_fails_the_task_with_one_line(docker_engine, tmp_path):
    rt = runtime(docker_engine, tmp_path)
    spec = TaskSpec("t1", "web", 1, "node-a", (), image="p2pswarm-test/missing:1")

    async def main():
        await rt.prepare(spec)
        h = await rt.start(spec)
        return h, await rt.wait(h)

    h, ended = asyncio.run(main())
    assert ended.error == h.error and ended.error.startswith("No such image: p2pswarm-test/missing:1")
    assert "\n" not in ended.error
    assert read_log(rt, "t1", "stderr") == f"p2pswarm: {ended.error}\n"
    rt.close()


def test_the_agent_shows_preparing_while_the_image_is_made_ready(docker_engine, tmp_path):
    states: dict[str, list[str]] = {"good": [], "bad": []}

    def seen(digest: dict) -> None:
        for task_id, rec in digest["tasks"].items():
            if not states[task_id] or states[task_id][-1] != rec["s"]:
                states[task_id].append(rec["s"])

    async def main():
        processes = ProcessRuntime(tmp_path)
        containers = ContainerRuntime(tmp_path, ContainerConfig("node-a", docker_engine.socket), processes.ports)
        driver = AgentDriver(DispatchRuntime(processes, containers), on_digest=seen)
        once = RestartPolicy("none")
        driver.assign([Assignment(image_spec(docker_engine, "good", "sleep", "30", stop_grace=0.5), 1, "running",
                                  once),
                       Assignment(TaskSpec("bad", "web", 2, "node-a", (), image="p2pswarm-test/missing:2"), 1,
                                  "running", once)])
        await aeventually(lambda: states["good"][-1:] == ["running"] and states["bad"][-1:] == ["failed"],
                          what="one running, one failed")
        error = driver.digest()["tasks"]["bad"]["e"]
        await driver.shutdown()
        containers.close()
        return error

    error = asyncio.run(main())
    assert states["good"] == ["starting", "preparing", "running", "stopping", "shutdown"]
    assert states["bad"] == ["starting", "preparing", "failed"]
    assert error.startswith("No such image: p2pswarm-test/missing:2")


def test_leftovers_of_this_node_are_removed_and_other_nodes_kept(docker_engine, tmp_path):
    with contextlib.closing(docker_engine.client()) as client:
        for node, task in (("node-me", "old.1"), ("node-other", "theirs.1")):
            client.containers.run(docker_engine.image, ["sleep", "60"], detach=True, name=f"leftover-{node}",
                                  labels={cs.NODE: node, cs.TASK: task})
    try:
        rt = runtime(docker_engine, tmp_path, node="node-me")
        assert asyncio.run(rt.adopt_or_stop_leftovers()) == ["old.1"]
        assert containers_of(docker_engine, "node-me") == []
        assert [c.labels[cs.TASK] for c in containers_of(docker_engine, "node-other")] == ["theirs.1"]
        rt.close()
    finally:
        for c in containers_of(docker_engine, "node-other"):
            c.remove(force=True)


def test_the_reaper_removes_a_dead_nodes_containers_only(docker_engine, tmp_path):
    rt = runtime(docker_engine, tmp_path, node="node-dies")

    async def main():
        return [await rt.start(image_spec(docker_engine, f"t{i}", "sleep", "60", node="node-dies")) for i in (1, 2)]

    asyncio.run(main())
    with contextlib.closing(docker_engine.client()) as client:
        other = client.containers.run(docker_engine.image, ["sleep", "60"], detach=True,
                                      labels={cs.NODE: "node-lives", cs.TASK: "x.1"})
    try:
        watchdog = Watchdog()
        watchdog.add("containers", socket=docker_engine.socket, node_id="node-dies")
        watchdog.start()
        watchdog.close()  # the pipe's end is what a dead node leaves: the reaper runs its steps
        assert containers_of(docker_engine, "node-dies") == []
        assert [c.id for c in containers_of(docker_engine, "node-lives")] == [other.id]
    finally:
        other.remove(force=True)
        rt.close()


def test_the_memory_limit_kills_and_says_so(docker_engine, tmp_path):
    rt = runtime(docker_engine, tmp_path)

    async def main():  # tail keeps a line that never ends: it grows until the limit kills it
        h = await rt.start(image_spec(docker_engine, "hog", "tail", "/dev/zero", limit_memory=8 * 2**20))
        return await rt.wait(h)

    ended = asyncio.run(main())
    assert (ended.code, ended.error) == (137, OOM_ERROR)
    rt.close()


def test_an_engine_that_goes_away_fails_its_tasks_and_spares_processes(docker_engine, tmp_path):
    proxy = _SocketProxy(tmp_path / "e.sock", docker_engine.socket[len("unix://"):])
    processes = ProcessRuntime(tmp_path)
    containers = ContainerRuntime(tmp_path, ContainerConfig("node-b", f"unix://{proxy.path}"), processes.ports)
    rt = DispatchRuntime(processes, containers)

    async def main():
        box = await rt.start(image_spec(docker_engine, "box", "sleep", "60", node="node-b"))
        proc = await rt.start(TaskSpec("proc", "p", 1, "node-b", (PY, "-c", "import time; time.sleep(60)")))
        await asyncio.to_thread(proxy.close)  # the engine is gone (its containers live on)
        ended = await asyncio.wait_for(rt.wait(box), 30)
        still = rt.poll(proc)
        again = await rt.start(image_spec(docker_engine, "box2", "sleep", "60", node="node-b"))
        await rt.stop(proc, 1)
        return ended, still, again.error

    try:
        ended, still, again = asyncio.run(main())
    finally:
        proxy.close()
        for c in containers_of(docker_engine, "node-b"):
            c.remove(force=True)
        containers.close()
    assert ended.error is not None and ended.error.startswith("engine: unavailable (") and "\n" not in ended.error
    assert still is None  # the process task did not notice
    assert again is not None and again.startswith("engine: unavailable (")


_GIVE_UP_ON_A_HUNG_ENGINE = """
import asyncio, sys
from p2pswarm.runtime.container import ContainerConfig, ContainerRuntime
runtime = ContainerRuntime(sys.argv[1], ContainerConfig("node-x", sys.argv[2], api_timeout=120.0))
async def main():
    try:
        await asyncio.wait_for(runtime.adopt_or_stop_leftovers(), 1.0)
    except asyncio.TimeoutError:
        print("gave up")
asyncio.run(main())
runtime.close()
"""


def test_a_call_stuck_in_a_hung_engine_does_not_hold_the_process_exit(tmp_path):
    with HungEngine(tmp_path / "hung.sock") as engine:
        done = subprocess.run([PY, "-c", _GIVE_UP_ON_A_HUNG_ENGINE, str(tmp_path), engine.url],
                              capture_output=True, text=True, timeout=30)  # (a pool's thread would hold it 120 s)
    assert done.returncode == 0 and done.stdout == "gave up\n", done.stderr


def test_a_stop_the_engine_never_confirms_ends_the_run_instead_of_holding_the_node(docker_engine, tmp_path):
    proxy = _SocketProxy(tmp_path / "f.sock", docker_engine.socket[len("unix://"):])
    containers = ContainerRuntime(tmp_path, ContainerConfig("node-f", f"unix://{proxy.path}", api_timeout=5.0,
                                                            kill_wait=1.0))

    async def main():
        box = await containers.start(image_spec(docker_engine, "frozen", "sleep", "300"))
        assert box.error is None, box.error
        proxy.freeze()  # the engine hangs while the container runs: neither signal nor its end gets through
        ended = await asyncio.wait_for(containers.stop(box, 0.5), 40)
        proxy.thaw()  # the engine answers again: the container the stop left behind goes
        await aeventually(lambda: not containers_of(docker_engine, "node-f"), 30, "the container removed")
        return ended

    try:
        ended = asyncio.run(main())
    finally:
        proxy.close()
        for c in containers_of(docker_engine, "node-f"):
            c.remove(force=True)
        containers.close()
    assert ended.error == STOP_UNCONFIRMED
    assert "frozen" not in containers.live  # the run is over for the agent: its ports and files are released


def test_no_engine_at_all_fails_image_tasks_only(tmp_path):
    processes = ProcessRuntime(tmp_path)
    containers = ContainerRuntime(tmp_path, ContainerConfig("node-c", f"unix://{tmp_path}/no.sock"), processes.ports)
    rt = DispatchRuntime(processes, containers)

    async def main():
        box = await rt.start(TaskSpec("box", "web", 1, "node-c", (), image="nginx:1.27"))
        proc = await rt.start(TaskSpec("proc", "p", 1, "node-c", (PY, "-c", "print('hi')")))
        return await rt.wait(box), await rt.wait(proc)

    box, proc = asyncio.run(main())
    assert box.error == "engine: unavailable (not reachable: No such file or directory)"
    assert proc.ok and read_log(rt, "proc") == "hi\n"
    containers.close()


def test_an_engine_that_never_answers_costs_the_api_timeout_and_holds_no_thread(tmp_path):
    before = set(threading.enumerate())
    with HungEngine(tmp_path / "hung.sock") as engine:
        containers = ContainerRuntime(tmp_path, ContainerConfig("node-h", engine.url, api_timeout=1.0))

        async def main():
            return await asyncio.wait_for(containers.adopt_or_stop_leftovers(), 10)

        try:
            assert asyncio.run(main()) == []  # "no leftover containers looked for: ... did not answer in time"
            engine_threads = [t for t in threading.enumerate() if t not in before and t.name.startswith("engine")]
            containers.close()
            for thread in engine_threads:
                thread.join(timeout=5)
            assert not any(t.is_alive() for t in engine_threads)  # none left waiting on the engine for good
        finally:
            containers.close()


class _SocketProxy:
    """A unix socket that forwards to the engine's until :meth:`close`, which cuts every connection:
    to the runtime, the engine has gone away (the real one, shared by the session, stays up)."""

    def __init__(self, path: Path, target: str) -> None:
        self.path, self.target = path, target
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(64)
        self.open: list[socket.socket] = []
        self.closed = False
        self.frozen = False
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        """From now on nothing is forwarded and connections stay open: to the runtime, the engine hangs."""
        self.frozen = True

    def thaw(self) -> None:
        """New connections are forwarded again (the frozen ones stay stuck): the engine answers again."""
        self.frozen = False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.frozen:
                self.open.append(client)
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.frozen:
                    dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

