"""Bad input to the Raft driver, in one process over the in-memory transport: outsiders and impossible
messages are dropped and counted; a full disk stops writes with one clear line while the node keeps
gossiping and serving stale reads."""

from __future__ import annotations

import asyncio
import errno

import pytest

from p2pswarm import wire
from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.consensus import storage as storage_mod
from p2pswarm.consensus.driver import RaftUnavailable
from p2pswarm.consensus.messages import AppendEntries, Entry, Heartbeat, RequestVote
from p2pswarm.node.daemon import Node, NodeOptions
from p2pswarm.transport.memory import MemoryNetwork, MemoryTransport

pytestmark = pytest.mark.timeout(60)


async def wait_for(cond, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def one_node(tmp_path):
    net = MemoryNetwork()
    opts = NodeOptions(data_dir=str(tmp_path / "n1"), bind="10.0.0.1:7946", name="n1", preset="test", seed=1)
    node = Node(opts, transport_factory=lambda o: MemoryTransport(net, o.bind))
    task = asyncio.ensure_future(node.run())
    await node.started.wait()
    await wait_for(lambda: node.raft_driver() is not None and node.raft_driver().raft.role == "leader")
    return net, node, task


def test_outsiders_and_impossible_messages_are_dropped_and_counted(tmp_path):
    async def main():
        net, node, task = await one_node(tmp_path)
        driver = node.raft_driver()
        peer = MemoryTransport(net, "10.0.0.9:1")
        await peer.start()
        term = driver.raft.term
        bad = [
            Heartbeat(term + 5, "outsider0000", 0),                                  # not in our cluster
            RequestVote(term + 5, "outsider0000", 99, term + 1),                     # not in our cluster
            AppendEntries(term + 5, node.node_id, 0, 0, 0),                          # claims to be us
            AppendEntries(term + 5, "outsider0000", 0, term + 9, 0),                 # prev_term > term
            AppendEntries(term + 5, "outsider0000", 0, 0, 0, (Entry(term + 6, 1, "noop"),)),
            RequestVote(0, "outsider0000", 0, 0),                                    # term 0
        ]
        for msg in bad:
            peer.send("10.0.0.1:7946", wire.encode(msg))
        await wait_for(lambda: driver.counters["rejected_outsider"] + driver.counters["rejected_impossible"] == 6)
        assert driver.counters["rejected_outsider"] == 2 and driver.counters["rejected_impossible"] == 4
        assert driver.raft.term == term and driver.raft.role == "leader"
        metrics = await asyncio.to_thread(ApiClient(tmp_path / "n1").get, "/metrics")
        assert "p2pswarm_raft_rejected_outsider_total 2" in metrics and "p2pswarm_raft_term " in metrics
        await peer.close()
        node.request_shutdown()
        await asyncio.wait_for(task, 10)
    asyncio.run(main())


def test_full_disk_stops_writes_with_one_line_but_the_node_keeps_running(tmp_path, monkeypatch):
    async def main():
        net, node, task = await one_node(tmp_path)
        driver = node.raft_driver()
        assert await driver.write("put", "a", "1") is True
        real_write_all = storage_mod._write_all

        def full(fd, buf):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(storage_mod, "_write_all", full)
        with pytest.raises(RaftUnavailable) as exc:
            await driver.write("put", "b", "2")
        assert "disk full" in str(exc.value) and "\n" not in str(exc.value)
        client = ApiClient(tmp_path / "n1")
        with pytest.raises(ApiError) as api_exc:
            await asyncio.to_thread(client.request, "PUT", "/v1/kv/c", {"value": "3"})
        assert api_exc.value.status == 503 and "disk full" in str(api_exc.value)
        stale = await asyncio.to_thread(client.get, "/v1/kv/a?stale=1")
        assert stale["value"] == "1"
        info = await asyncio.to_thread(client.get, "/v1/info")
        assert info["cluster_size"] == 1
        status = await asyncio.to_thread(client.get, "/v1/cluster")
        assert "disk full" in status["error"]
        monkeypatch.setattr(storage_mod, "_write_all", real_write_all)
        node.request_shutdown()
        await asyncio.wait_for(task, 10)
    asyncio.run(main())
