"""The node-side mesh driver: a restarted node serves its saved table until gossip arrives."""

from __future__ import annotations

import asyncio
import json
import os
import time
from types import SimpleNamespace

from p2pswarm.consensus.facts import new_cluster_id
from p2pswarm.mesh.host import SAVED_MAX_AGE, SAVED_TABLE, WARM_LIMIT, MeshHost
from p2pswarm.node.record import GossipRecord, MeshFacts, RaftFacts, TaskDigest, encode_record


class FakePlane:
    def __init__(self):
        self.pushed = []

    async def start(self):
        pass

    def push(self, table):
        self.pushed.append(table)

    def latest_status(self):
        return None

    async def close(self):
        pass


class FakeSwim:
    def __init__(self, me="a"):
        self.me = SimpleNamespace(node=me, addr="127.0.0.11:7946", status="alive", record=b"", record_version=0,
                                  rtt=None, meta=SimpleNamespace(name="node-a"))
        self.others = []

    def members(self):
        return [self.me, *self.others]

    def member(self, node):
        return next((m for m in self.members() if m.node == node), None)


def peer_with_replica(port=8080):
    digest = [1, {"t2": {"s": "running", "v": 1, "p": 21002, "n": "web", "m": [[port, 21002, False]]}}]
    record = encode_record([RaftFacts(new_cluster_id(), "voter", 1), TaskDigest(1, digest[1]), MeshFacts(7948)])
    return SimpleNamespace(node="b", addr="127.0.0.12:7946", status="alive", record=record, record_version=1,
                           rtt=0.001, meta=SimpleNamespace(name="node-b"))


def host(tmp_path, swim, plane):
    return MeshHost("a", swim, SimpleNamespace(local_addr=swim.me.addr), None, relay_port=7948,
                    unreachable=lambda: (), data_plane_factory=lambda: plane, state_dir=tmp_path,
                    record=GossipRecord())


def run_steps(mesh, times):
    async def main():
        for t in times:
            mesh.step(t)
            await asyncio.sleep(0)
        await asyncio.sleep(0)
    asyncio.run(main())


def test_a_restart_serves_the_saved_table_until_gossip_arrives(tmp_path):
    swim, plane = FakeSwim(), FakePlane()
    swim.others = [peer_with_replica()]
    first = host(tmp_path, swim, plane)
    run_steps(first, [0.0])
    saved = json.loads((tmp_path / SAVED_TABLE).read_text())
    assert [p["port"] for p in saved["ports"]] == [8080] and "tls" not in saved
    # restart: nothing from gossip yet, the saved table is pushed at once and kept
    swim2, plane2 = FakeSwim(), FakePlane()
    again = host(tmp_path, swim2, plane2)
    run_steps(again, [100.0, 101.0, 102.0])
    assert len(plane2.pushed) == 1 and plane2.pushed[0]["ports"][0]["port"] == 8080
    swim2.others = [peer_with_replica(9090)]  # gossip arrives: the table from gossip replaces it
    run_steps(again, [103.0])
    assert [p["port"] for p in plane2.pushed[-1]["ports"]] == [9090]


def test_no_gossip_at_all_ends_the_saved_table_after_the_warm_limit(tmp_path):
    swim, plane = FakeSwim(), FakePlane()
    swim.others = [peer_with_replica()]
    run_steps(host(tmp_path, swim, plane), [0.0])
    plane2 = FakePlane()
    again = host(tmp_path, FakeSwim(), plane2)
    run_steps(again, [100.0, 100.0 + WARM_LIMIT + 0.1])
    assert plane2.pushed[-1]["ports"] == []  # nothing known any more: the ports close


def test_an_old_saved_table_or_another_address_is_not_served(tmp_path):
    swim, plane = FakeSwim(), FakePlane()
    swim.others = [peer_with_replica()]
    run_steps(host(tmp_path, swim, plane), [0.0])
    path = tmp_path / SAVED_TABLE
    old = time.time() - SAVED_MAX_AGE - 10
    os.utime(path, (old, old))
    plane2 = FakePlane()
    run_steps(host(tmp_path, FakeSwim(), plane2), [1.0])
    assert plane2.pushed == []
    os.utime(path, None)
    moved = FakeSwim()
    moved.me.addr = "127.0.0.99:7946"
    plane3 = FakePlane()
    run_steps(host(tmp_path, moved, plane3), [1.0])
    assert plane3.pushed == []
    path.write_text("{not json")
    plane4 = FakePlane()
    run_steps(host(tmp_path, FakeSwim(), plane4), [1.0])
    assert plane4.pushed == []
