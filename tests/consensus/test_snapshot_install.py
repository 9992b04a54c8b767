"""A state far larger than one wire message installs on a joining node: the leader's snapshot travels in
chunks under the transport's message limit, is saved to the new node's disk and restores its state machine."""

import asyncio
import json
import logging
import random
import threading
import time
from types import SimpleNamespace

import pytest

from p2pswarm.consensus import driver as driver_module
from p2pswarm.consensus.driver import RaftDriver
from p2pswarm.node.daemon import Node, NodeOptions
from p2pswarm.transport.memory import MemoryNetwork, MemoryTransport
from p2pswarm.wire import MAX_MESSAGE_BYTES, decode

pytestmark = pytest.mark.timeout(120)

VALUES = 64
"""KV writes: the "test" preset snapshots every 64 applied entries, so the leader's log is compacted after them."""
VALUE_BYTES = 900_000
"""The snapshot taken at the 64th applied entry holds the first ~60 values: over 50 MB, more than eleven times the
4 MiB wire message limit (the last few values follow it as log entries)."""


async def until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def start(net, tmp_path, i, peers=()):
    opts = NodeOptions(data_dir=str(tmp_path / f"n{i}"), bind=f"10.0.0.{i}:7946", peers=tuple(peers),
                       name=f"n{i}", preset="test", seed=i)
    sent: list[tuple[str, int]] = []

    def transport(o):
        t = MemoryTransport(net, o.bind)
        send = t.send

        def measured(addr, data, bulk=False):
            sent.append((type(decode(data)).__name__, len(data)))
            return send(addr, data, bulk)
        t.send = measured  # type: ignore[method-assign]
        return t
    node = Node(opts, transport_factory=transport)
    return node, asyncio.ensure_future(node.run()), sent


def test_a_50_mb_state_installs_on_a_joining_node_in_chunks(tmp_path, capsys):
    rng = random.Random(15)
    values = [rng.randbytes(VALUE_BYTES) for _ in range(VALUES)]

    async def scenario():
        net = MemoryNetwork()
        first, first_task, sent = start(net, tmp_path, 1)
        nodes, tasks = [first], [first_task]
        try:
            await until(lambda: first.raft is not None and first.raft.driver is not None
                        and first.raft.driver.raft.role == "leader", 20, "the first node to lead")
            leader = first.raft.driver
            take, threads = leader.sm.snapshot, []

            def snapshot():
                threads.append(threading.current_thread().name)
                return take()
            leader.sm.snapshot = snapshot
            for k, value in enumerate(values):
                assert await leader.write("put", f"k{k}", value) is True
            await until(lambda: leader.raft.log.snap_index >= VALUES, 20, "the leader to compact its log")
            image = leader.raft._snapshot.data
            assert threads and all(name.startswith("raft-io") for name in threads)  # serialized off the event loop
            assert len(image) > 50_000_000 > 11 * MAX_MESSAGE_BYTES

            before = len(sent)
            began = time.monotonic()
            second, second_task, _ = start(net, tmp_path, 2, peers=["10.0.0.1:7946"])
            nodes.append(second)
            tasks.append(second_task)
            await until(lambda: second.raft is not None and second.raft.driver is not None
                        and second.raft.driver.counters["snapshots_restored"] >= 1, 60, "the snapshot to install")
            seconds = time.monotonic() - began
            follower = second.raft.driver
            assert follower.storage.load().snapshot.data == image  # durable: a restart starts from it
            await until(lambda: follower.applied >= leader.applied, 20, "the entries after the snapshot")
            assert [follower.kv.get(f"k{k}") for k in range(VALUES)] == values
            chunks = [size for kind, size in sent[before:] if kind == "InstallSnapshot"]
            assert len(chunks) >= len(image) // 2**20 and max(chunks) <= 2**20 + 4096  # 1 MiB chunks, and a header
            largest = max(size for _, size in sent[before:])
            assert largest <= MAX_MESSAGE_BYTES
            # replication goes on after the snapshot's index
            assert await leader.write("put", "after", b"x") is True
            await until(lambda: follower.kv.get("after") == b"x", 10, "replication after the snapshot")
            with capsys.disabled():
                print("\n" + json.dumps({"bench": "snapshot_install", "state_bytes": len(image),
                                         "seconds_to_install": round(seconds, 3), "largest_message": largest,
                                         "chunks": len(chunks)}))
        finally:
            for node in nodes:
                if node.swim is not None:
                    node.request_shutdown()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)

    asyncio.run(scenario())


def test_a_state_over_the_snapshot_limit_keeps_its_log_says_so_once_and_recovers(tmp_path, monkeypatch, caplog):
    """An image this node could not read back at its next start (nor a follower install) is never stored."""
    monkeypatch.setattr(driver_module, "MAX_SNAPSHOT_BYTES", 10_000)
    swim = SimpleNamespace(member=lambda node: None, members=lambda: [])

    async def puts(d, op, keys, *args):
        for k in range(0, len(keys), 50):
            await asyncio.gather(*(d.write(op, key, *args) for key in keys[k:k + 50]))

    async def scenario():
        d = RaftDriver("n1", "c1", str(tmp_path / "raft"), "test", swim=swim, transport=None, clock=time.monotonic,
                       rng=random.Random(1), bootstrap=True)
        d.start()
        try:
            await until(lambda: d.raft.role == "leader", 10, "the node to lead")
            keys = [f"key{k:04d}" for k in range(300)]
            await puts(d, "put", keys, "x" * 100)  # 30 kB of state: over the (patched) 10 kB limit
            refused_at = d.raft.log.snap_index
            assert d.counters["snapshots_too_large"] >= 2 and d.applied - refused_at > 2 * 64  # the log is kept
            assert len(d.storage.load().entries) == d.raft.log.last_index() - refused_at
            await puts(d, "delete", keys[:280])  # 2 kB left: it fits again
            await until(lambda: d.raft.log.snap_index > refused_at + 280, 10, "a compaction once the state fits")
        finally:
            await d.close()
        reopened = RaftDriver("n1", "c1", str(tmp_path / "raft"), "test", swim=swim, transport=None,
                              clock=time.monotonic, rng=random.Random(2), bootstrap=False)
        try:
            assert reopened.kv.get("key0299") == "x" * 100 and reopened.kv.get("key0000") is None
        finally:
            reopened.storage.close()

    with caplog.at_level(logging.INFO, logger="p2pswarm.raft"):
        asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "over the 10000-byte snapshot limit" in errors[0], errors
    assert any("fits a snapshot again" in r.getMessage() for r in caplog.records)
