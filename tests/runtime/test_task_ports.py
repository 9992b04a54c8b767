"""A run's ports: a fixed target is the process's $PORT, mode=host ports are served on the published
port, and two tasks of one node never hold the same fixed port at once."""

from __future__ import annotations

import asyncio
import json

import pytest

from p2pswarm.cluster.spec import parse_port
from p2pswarm.runtime.base import TaskSpec, dynamic_ports_needed, fixed_ports, published_ports, task_ports
from p2pswarm.runtime.ports import PortAllocator, PortsExhausted
from p2pswarm.runtime.process import ProcessConfig, ProcessRuntime

from ..apps.support import PY

pytestmark = pytest.mark.timeout(60)

PUBLISH = tuple(map(parse_port, ("8091:8000", "9000", "published=7000,mode=host", "53:5353/udp")))


def spec(task_id: str, *command: str, publish=(), **kw) -> TaskSpec:
    return TaskSpec(task_id, "web", 1, "node-a", command, ports=dynamic_ports_needed(publish), publish=publish, **kw)


def test_each_published_port_is_served_on_its_own_port_of_the_run():
    s = spec("t1", "x", publish=PUBLISH)
    assert dynamic_ports_needed(PUBLISH) == 1 and dynamic_ports_needed(()) == 1  # a bare task still gets $PORT
    assert task_ports(s, (21000,)) == (8000, 21000, 7000, 5353)  # $PORT is the fixed target
    assert fixed_ports(s) == (8000, 7000, 5353)
    # the mesh serves every published port but the mode=host one, which its node serves itself
    assert published_ports(PUBLISH, task_ports(s, (21000,))) == [(8091, 8000, False), (9000, 21000, False),
                                                                (53, 5353, False)]


def test_a_fixed_port_is_held_and_never_handed_out_as_a_dynamic_one():
    ports = PortAllocator(20000, 20001)
    assert ports.take(1, fixed=(20000,)) == (20001,)  # 20000 is the fixed one: not dynamic
    with pytest.raises(PortsExhausted, match="port 20000 is held by another task on this node"):
        ports.take(0, fixed=(20000,))
    ports.release((20000, 20001))
    assert ports.held == set()


def test_a_process_listens_on_its_fixed_target(tmp_path):
    rt = ProcessRuntime(tmp_path)
    code = "import json, os, sys; print(json.dumps([os.environ['PORT'], os.environ['PORT1'], sys.argv[1]]))"

    async def main():
        h = await rt.start(spec("t1", PY, "-c", code, "{port}", publish=PUBLISH[:2]))
        return h, await rt.wait(h)

    h, ended = asyncio.run(main())
    assert ended.ok and h.ports[0] == 8000 and 20000 <= h.ports[1] <= 32000
    out = "".join(p.read_text() for p in rt.log_paths("t1")["stdout"])
    assert json.loads(out) == ["8000", str(h.ports[1]), "8000"]
    assert rt.ports.held == set()


def test_a_task_waits_for_its_fixed_port_until_the_task_holding_it_has_stopped(tmp_path):
    """A stop-first update on one node: the replacement starts once the old task let go of the port."""
    rt = ProcessRuntime(tmp_path, ProcessConfig(fixed_port_wait=10.0))
    publish = (parse_port("8091:8000"),)

    async def main():
        old = await rt.start(spec("old", PY, "-c", "import time; time.sleep(60)", publish=publish))
        new = asyncio.ensure_future(rt.start(spec("new", PY, "-c", "pass", publish=publish)))
        await asyncio.sleep(0.5)
        assert not new.done()  # 8000 is still the old task's
        await rt.stop(old, 5.0)
        handle = await asyncio.wait_for(new, 5)
        await rt.wait(handle)
        return handle

    handle = asyncio.run(main())
    assert handle.error is None and handle.ports == (8000,)


def test_a_fixed_port_still_held_after_the_wait_fails_the_task_in_one_line(tmp_path):
    rt = ProcessRuntime(tmp_path, ProcessConfig(fixed_port_wait=0.2))
    publish = (parse_port("published=7000,mode=host"),)

    async def main():
        old = await rt.start(spec("old", PY, "-c", "import time; time.sleep(60)", publish=publish))
        new = await rt.start(spec("new", PY, "-c", "pass", publish=publish))
        await rt.stop(old, 5.0)
        return old, new, await rt.wait(new)

    old, new, ended = asyncio.run(main())
    assert old.ports == (7000,)  # mode=host: the process serves the published port itself
    assert ended.error == "port 7000 is held by another task on this node"
