"""The gossiped record (p2pswarm/node/record.py): named sections each component sets, one flush
per loop turn, and peers' records read only after their checks."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import msgpack
import pytest

from p2pswarm.agent.host import AgentHost
from p2pswarm.consensus.host import RaftHost
from p2pswarm.node.record import (
    EMPTY,
    GossipRecord,
    MeshFacts,
    NodeCaps,
    RaftFacts,
    Record,
    TaskDigest,
    decode_record,
    encode_record,
)
from p2pswarm.wire import MAX_RECORD_BYTES

from ..membership.swimnet import SwimNet

RUNNING = {"t1": {"s": "running", "v": 1, "p": 20001}}


class Published:
    """Stands in for Swim.set_record: what a flush handed to SWIM, in order."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def __call__(self, now: float, payload: bytes) -> None:
        self.payloads.append(payload)


def peer(payload: bytes, node: str = "b") -> SimpleNamespace:
    return SimpleNamespace(node=node, record=payload, status="alive")


def test_each_component_sets_its_own_section_and_the_others_stay():
    published = Published()
    record = GossipRecord(published)
    record.set(TaskDigest(3, RUNNING))  # the agent
    record.set(MeshFacts(7948, ("c",)))  # the mesh
    record.flush(1.0)
    record.set(RaftFacts("c1", "voter", 2))  # the Raft driver, later
    record.flush(2.0)
    first, second = (decode_record(p) for p in published.payloads)
    assert first == Record(tasks=TaskDigest(3, RUNNING), mesh=MeshFacts(7948, ("c",)))
    assert second == Record(RaftFacts("c1", "voter", 2), TaskDigest(3, RUNNING), MeshFacts(7948, ("c",)))
    record.set(RaftFacts("c1", "leader", 3))
    record.flush(3.0)
    assert decode_record(published.payloads[-1]).tasks == TaskDigest(3, RUNNING)


def test_the_record_is_flushed_once_per_turn_and_only_when_it_changed():
    published, woken = Published(), []
    record = GossipRecord(published, on_change=lambda: woken.append(1))
    assert record.flush(0.0) is False and published.payloads == []  # nothing set yet
    record.set(MeshFacts(7948))
    record.set(TaskDigest(1, {}))
    record.set(TaskDigest(2, RUNNING))
    assert len(woken) == 3 and record.flush(1.0) is True and len(published.payloads) == 1
    assert decode_record(published.payloads[0]).tasks == TaskDigest(2, RUNNING)  # the last value of the turn
    record.set(MeshFacts(7948))  # the mesh sets its section every turn: unchanged is no change
    assert len(woken) == 3 and record.flush(2.0) is False and len(published.payloads) == 1


def test_a_section_this_node_would_refuse_from_a_peer_is_refused_here():
    record = GossipRecord(Published())
    for bad in (MeshFacts(70000), RaftFacts("", "voter", 1), RaftFacts("c1", "voter", -1), RaftFacts("c1", "boss"),
                TaskDigest(1, {"t1": "running"}), MeshFacts(7948, (7,))):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="section is malformed"):
            record.set(bad)
    assert record.flush(0.0) is False


def test_an_oversized_own_record_is_not_gossiped_and_peers_keep_the_last_one():
    published = Published()
    record = GossipRecord(published)
    record.set(TaskDigest(1, RUNNING))
    record.flush(0.0)
    huge = {f"t{i}": {"s": "running", "e": "x" * 200} for i in range(MAX_RECORD_BYTES // 200)}
    record.set(TaskDigest(2, huge))
    assert record.flush(1.0) is False and record.counters["record_too_large"] == 1
    assert len(published.payloads) == 1 and decode_record(published.payloads[0]).tasks == TaskDigest(1, RUNNING)


@pytest.mark.parametrize("payload", [
    msgpack.packb(["c1", "V", 2]),  # the positional array of earlier versions
    msgpack.packb({"raft": ["c1", "X", 2]}),  # unknown role
    msgpack.packb({"raft": ["c1", "V", 2, "extra"]}),
    msgpack.packb({"mesh": [70000, []]}),
    msgpack.packb({"tasks": [1, {"t1": "running"}]}),
    msgpack.packb({"caps": ["podman", "", "none", ""]}),  # an engine this version does not know
    msgpack.packb({"caps": ["docker", "x" * 201, "none", ""]}),  # a detail beyond its bound
    msgpack.packb({"mesh": [7948, [], {"8080": 7}]}),  # a port error that is not a line
    msgpack.packb({1: ["c1", "V", 2]}),  # section names are strings
    msgpack.packb({"tasks": [1, {f"t{i}": {} for i in range(MAX_RECORD_BYTES)}]}),  # beyond the bounds
    msgpack.packb({"raft": ["c1", "V", 2], "pad": "x" * MAX_RECORD_BYTES}),  # oversized
    b"\xc1",  # not msgpack
])
def test_a_malformed_peer_record_is_counted_once_and_read_as_empty(payload):
    record = GossipRecord()
    assert record.of(peer(payload)) is EMPTY
    assert record.of(peer(payload)) is EMPTY  # the same record again: checked and counted once
    assert record.counters["malformed_records"] == 1
    good = encode_record([RaftFacts("c1", "voter", 2)])
    assert record.of(peer(good)).raft == RaftFacts("c1", "voter", 2)  # its next version is read again


def test_sections_this_version_does_not_know_are_ignored():
    payload = msgpack.packb({"raft": ["c1", "L", 4], "future": {"anything": [1, 2]}})
    record = GossipRecord()
    assert record.of(peer(payload)) == Record(raft=RaftFacts("c1", "leader", 4))
    assert record.counters["malformed_records"] == 0


def test_a_joiners_agent_publishes_its_digest_before_raft_exists(tmp_path):
    """A joiner's agent gossips its tasks while its RaftHost has no driver, and a peer reads them;
    the peer's RaftHost does not take that record (it has no raft section) for a cluster id."""
    net = SwimNet()
    joiner_swim, peer_swim = net.cluster(["j", "p"])
    joiner_record = GossipRecord(joiner_swim.set_record)

    async def main() -> None:
        raft = RaftHost("j", tmp_path / "j", "test", True, swim=joiner_swim, transport=None, clock=lambda: net.now,
                        seed=1, fatal=pytest.fail, record=joiner_record)
        await raft.start()
        agent = AgentHost("j", tmp_path / "j", raft, 0, record=joiner_record)
        agent.driver.on_digest({"v": 5, "tasks": RUNNING})  # what the agent driver calls on a change
        assert raft.driver is None
        joiner_record.flush(net.now)  # the node's loop turn
        net.run(2.0)
        peer_view = GossipRecord()
        assert peer_view.of(peer_swim.member("j")) == Record(tasks=TaskDigest(5, RUNNING))

        peer_raft = RaftHost("p", tmp_path / "p", "test", True, swim=peer_swim, transport=None,
                             clock=lambda: net.now, seed=2, fatal=pytest.fail, record=peer_view)
        await peer_raft.start()
        peer_raft.step(net.now)
        assert peer_raft.driver is None  # a record without a raft section names no cluster

    asyncio.run(main())


def test_capabilities_round_trip_and_a_record_without_them_reads_as_unknown():
    caps = NodeCaps("docker", "20.10.24", "cgroup-v1", "/sys/fs/cgroup (v1: cpu, memory, pids)")
    published = Published()
    record = GossipRecord(published)
    record.set(caps)
    record.set(TaskDigest(1, RUNNING))
    record.flush(0.0)
    assert GossipRecord().of(peer(published.payloads[0])) == Record(tasks=TaskDigest(1, RUNNING), caps=caps)
    older = msgpack.packb({"raft": ["c1", "V", 2], "tasks": [1, RUNNING], "mesh": [7948, []]})
    assert decode_record(older).caps is None  # a node that predates capabilities: unknown, not capable
    long = NodeCaps.of("none", "reason\n" + "y" * 500, "none", "not root")
    assert len(long.engine_detail) == 200 and "\n" not in long.engine_detail
    GossipRecord(Published()).set(long)  # cut to fit: a peer accepts it


def test_port_errors_ride_in_the_mesh_section_only_while_there_are_some():
    plain = MeshFacts(7948, ("c",))
    assert msgpack.unpackb(encode_record([plain])) == {"mesh": [7948, ["c"]]}  # as before port errors
    failing = MeshFacts(7948, (), (("5353/udp", "address in use: 127.0.0.2:5353"),
                                   ("8080", "address in use: 127.0.0.2:8080")))
    assert decode_record(encode_record([failing])).mesh == failing
