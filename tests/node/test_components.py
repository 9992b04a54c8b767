"""The node as a loop over components: start order, reverse close, the security adapter, the API's view."""

import asyncio
import logging
from types import SimpleNamespace

import pytest

from p2pswarm.node.daemon import Node, NodeOptions
from p2pswarm.node.secure import REFUSED_SCAN_INTERVAL, SecurityComponent
from p2pswarm.node.view import NodeView
from p2pswarm.transport.memory import MemoryNetwork, MemoryTransport

pytestmark = pytest.mark.timeout(60)


class Recorder:
    def __init__(self, name, events, fail_close=False):
        self.name, self.events, self.fail_close = name, events, fail_close

    async def start(self):
        self.events.append(("start", self.name))

    def step(self, now):
        self.events.append(("step", self.name))

    async def close(self):
        self.events.append(("close", self.name))
        if self.fail_close:
            raise RuntimeError("disk gone")

    def metrics(self):
        return {}


def test_components_close_in_reverse_start_order_even_past_one_that_fails(tmp_path, caplog):
    node = Node(NodeOptions(data_dir=str(tmp_path)))
    events = []

    async def lifecycle():
        for name in ("security", "raft", "agent"):
            await node._start_component(Recorder(name, events, fail_close=name == "raft"))
        await node._close_components()
    with caplog.at_level(logging.ERROR, logger="p2pswarm.node.daemon"):
        asyncio.run(lifecycle())
    assert events == [("start", "security"), ("start", "raft"), ("start", "agent"),
                      ("close", "agent"), ("close", "raft"), ("close", "security")]
    assert node.components == []
    assert [r.getMessage() for r in caplog.records] == ["stopping the raft failed"]


def test_a_fresh_node_has_every_member_the_api_reads():
    """Absent subsystems are None, never missing: the routes read them without probing."""
    node = Node(NodeOptions())
    members = [n for n in dir(NodeView) if not n.startswith("_")]
    assert "logs" in members and "security" in members and "raft_driver" in members
    assert [n for n in members if not hasattr(node, n)] == []
    assert (node.security, node.agent, node.logs, node.api_ca, node.raft_driver()) == (None,) * 5


def test_the_security_adapter_scans_refusals_at_its_interval_and_gossips_a_new_certificate_once():
    calls = []
    security = SimpleNamespace(meta_changed=False,
                               step=lambda driver, swim, trust=None: calls.append(("step", driver, swim)),
                               stats=lambda: {"admitted": 2})
    api_ca = SimpleNamespace(step=lambda driver, now: calls.append(("api_ca", driver, now)))
    node = SimpleNamespace(raft_driver=lambda: "driver", swim="swim",
                           transport=SimpleNamespace(drop_refused=lambda: calls.append(("drop_refused",))),
                           refresh_meta=lambda now: calls.append(("meta", now)))
    component = SecurityComponent(security, api_ca, node)
    component.step(10.0)
    component.step(10.0 + REFUSED_SCAN_INTERVAL / 2)
    security.meta_changed = True
    component.step(10.0 + REFUSED_SCAN_INTERVAL)
    component.step(10.0 + REFUSED_SCAN_INTERVAL * 1.5)
    assert [c for c in calls if c[0] == "drop_refused"] == [("drop_refused",)] * 2
    assert [c for c in calls if c[0] == "meta"] == [("meta", 10.0 + REFUSED_SCAN_INTERVAL)]
    assert ("step", "driver", "swim") in calls and ("api_ca", "driver", 10.0) in calls
    assert security.meta_changed is False and component.metrics() == {"admitted": 2}


def test_a_running_node_steps_its_hosts_and_closes_them_all(tmp_path):
    async def scenario():
        net = MemoryNetwork()
        node = Node(NodeOptions(data_dir=str(tmp_path / "n1"), bind="127.0.0.1:7946", name="n1", preset="test",
                                seed=1), transport_factory=lambda o: MemoryTransport(net, o.bind))
        run = asyncio.ensure_future(node.run())
        await asyncio.wait_for(node.started.wait(), 20)
        assert [c.name for c in node.components] == ["raft", "dns", "assignments", "agent", "events", "scheduler",
                                                     "mesh"]
        scheduler = node.scheduler
        deadline = asyncio.get_running_loop().time() + 20
        while node.raft_driver() is None or node.raft_driver().raft.role != "leader" or scheduler.rounds == 0:
            assert asyncio.get_running_loop().time() < deadline, "the scheduler never ran a round as leader"
            await asyncio.sleep(0.05)
        assert node.raft.metrics()["gauges"]["is_leader"] == 1
        node.request_shutdown()
        assert await asyncio.wait_for(run, 20) == 0
        assert node.components == [] and scheduler._task.done()
    asyncio.run(scenario())
