"""The node driver over the in-memory transport: join, converge, survive bad input, leave."""

import asyncio
import functools

import pytest

from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.node.daemon import Node, NodeOptions
from p2pswarm.transport.memory import MemoryNetwork, MemoryTransport

pytestmark = pytest.mark.timeout(60)


def sync(fn):
    """Run an async test on a fresh event loop (no pytest-asyncio dependency)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


async def wait_for(cond, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def statuses(node):
    return {m["name"]: m["status"] for m in node.member_views()}


class Cluster:
    def __init__(self, tmp_path):
        self.net = MemoryNetwork()
        self.tmp = tmp_path
        self.nodes, self.tasks = [], []

    def start(self, i, peers=(), **kw):
        opts = NodeOptions(data_dir=str(self.tmp / f"n{i}"), bind=f"10.0.0.{i}:7946", peers=tuple(peers),
                           name=f"n{i}", preset="test", seed=i, **kw)
        node = Node(opts, transport_factory=lambda o: MemoryTransport(self.net, o.bind))
        self.nodes.append(node)
        self.tasks.append(asyncio.ensure_future(node.run()))
        return node

    async def stop_all(self):
        for node in self.nodes:
            if node.swim is not None:
                node.request_shutdown()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)


@sync
async def test_three_nodes_converge_then_one_leaves(tmp_path):
    c = Cluster(tmp_path)
    try:
        first = c.start(1)
        await first.started.wait()
        others = [c.start(i, peers=["10.0.0.1:7946"]) for i in (2, 3)]
        await wait_for(lambda: all(n.swim and statuses(n) == {"n1": "alive", "n2": "alive", "n3": "alive"}
                                   for n in c.nodes))
        info = first.info()
        assert info["cluster_size"] == 3 and info["joined"] and info["preset"] == "test"
        view = next(m for m in others[0].member_views() if m["name"] == "n1")
        assert view["capacity"]["cpus"] >= 1 and view["status"] == "alive"

        others[1].request_shutdown()
        assert await asyncio.wait_for(c.tasks[2], 5) == 0
        await wait_for(lambda: statuses(first)["n3"] == "left" and statuses(others[0])["n3"] == "left")
        assert not (tmp_path / "n3" / "node.pid").exists()
        assert not (tmp_path / "n3" / "api.sock").exists()
    finally:
        await c.stop_all()


@sync
async def test_bad_messages_and_handler_errors_do_not_stop_the_node(tmp_path):
    c = Cluster(tmp_path)
    try:
        node = c.start(1)
        await node.started.wait()
        peer = MemoryTransport(c.net, "10.0.0.99:1")
        await peer.start()
        for junk in (b"", b"\xc1", b"\x93\x01\x7f\x00", b"\x92" + b"\x01" * 1):
            peer.send("10.0.0.1:7946", junk)
        await wait_for(lambda: node.counters["wire_errors"] >= 4)

        real_receive = node.swim.receive
        calls = []

        def broken(now, msg):
            calls.append(msg)
            raise RuntimeError("boom")
        node.swim.receive = broken
        c.start(2, peers=["10.0.0.1:7946"])
        await wait_for(lambda: node.counters["handler_errors"] >= 1)
        node.swim.receive = real_receive
        await wait_for(lambda: statuses(node).get("n2") == "alive")
        await peer.close()
    finally:
        await c.stop_all()


@sync
async def test_api_serves_info_members_metrics_and_faults(tmp_path):
    c = Cluster(tmp_path)
    try:
        node = c.start(1, labels=(("zone", "a"),))
        await node.started.wait()
        client = ApiClient(tmp_path / "n1")
        info = await asyncio.to_thread(client.get, "/v1/info")
        assert info["name"] == "n1" and info["cluster_size"] == 1
        members = (await asyncio.to_thread(client.get, "/v1/members"))["members"]
        assert members[0]["labels"] == {"zone": "a"} and members[0]["self"]
        metrics = await asyncio.to_thread(client.get, "/metrics")
        assert 'p2pswarm_members{status="alive"} 1' in metrics
        assert "p2pswarm_node_wire_errors_total 0" in metrics
        faults = await asyncio.to_thread(client.post, "/v1/faults", {"drop_rate": 0.5})
        assert faults["drop_rate"] == 0.5
        with pytest.raises(ApiError) as exc:
            await asyncio.to_thread(client.post, "/v1/faults", {"drop_rate": 7})
        assert exc.value.status == 400 and "\n" not in str(exc.value)
        healed = await asyncio.to_thread(client.request, "DELETE", "/v1/faults")
        assert healed["drop_rate"] == 0
        await asyncio.to_thread(client.post, "/v1/shutdown")
        assert await asyncio.wait_for(c.tasks[0], 5) == 0
    finally:
        await c.stop_all()


@sync
async def test_a_node_that_must_stop_while_a_start_step_hangs_stops(tmp_path, monkeypatch):
    """A start step that never ends (an engine that hangs, say) must not keep a node alive that failed, or that
    was told twice to stop: the rest of the start is cancelled and the started parts are closed."""
    hung = asyncio.Event()

    async def hanging_services(self, incarnation):
        hung.set()
        await asyncio.Event().wait()
    monkeypatch.setattr(Node, "_start_services", hanging_services)
    c = Cluster(tmp_path)
    failing = c.start(1)
    await asyncio.wait_for(hung.wait(), 10)
    failing.fail(ValueError("data dir of another cluster"))
    with pytest.raises(ValueError, match="another cluster"):
        await asyncio.wait_for(c.tasks[0], 10)
    assert not failing.started.is_set() and failing.components == []  # Raft, started first, was closed again

    hung.clear()
    stopped = c.start(2)
    await asyncio.wait_for(hung.wait(), 10)
    stopped.request_shutdown()  # the first request waits for the start (it ends in a graceful leave)...
    await asyncio.sleep(0.2)
    assert not c.tasks[1].done()
    stopped.request_shutdown()  # ...the second one does not
    assert await asyncio.wait_for(c.tasks[1], 10) == 0
