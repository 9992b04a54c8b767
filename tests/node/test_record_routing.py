"""``GossipRecord.routing_inputs`` (p2pswarm/node/record.py): what the routing mesh and the DNS rebuild on.
A Raft member's record changes with every commit; their tables must not be rebuilt for that."""

from __future__ import annotations

from types import SimpleNamespace

from p2pswarm.node.record import GossipRecord, MeshFacts, RaftFacts, TaskDigest, encode_record

RUNNING = {"t1": {"s": "running", "v": 1, "p": 20001}}


def member(version: int, *sections, status: str = "alive", addr: str = "127.0.0.2:7946"):
    return SimpleNamespace(node="b", addr=addr, status=status, record=encode_record(sections),
                           record_version=version)


def test_a_new_applied_index_alone_changes_nothing_the_mesh_and_dns_read():
    record = GossipRecord()
    before = record.routing_inputs([member(1, RaftFacts("c1", "voter", 2, 10), TaskDigest(1, RUNNING),
                                           MeshFacts(7948))])
    after = record.routing_inputs([member(2, RaftFacts("c1", "voter", 2, 11), TaskDigest(1, RUNNING),
                                          MeshFacts(7948))])
    assert before == after


def test_tasks_mesh_facts_status_and_address_each_change_the_inputs():
    record = GossipRecord()
    base = record.routing_inputs([member(1, TaskDigest(1, RUNNING), MeshFacts(7948))])
    assert record.routing_inputs([member(2, TaskDigest(2, {}), MeshFacts(7948))]) != base
    assert record.routing_inputs([member(2, TaskDigest(1, RUNNING), MeshFacts(7950))]) != base
    assert record.routing_inputs([member(1, TaskDigest(1, RUNNING), MeshFacts(7948), status="suspect")]) != base
    assert record.routing_inputs([member(1, TaskDigest(1, RUNNING), MeshFacts(7948), addr="127.0.0.3:7946")]) != base


class CountingSwim:
    """A SWIM core's read side: its members, its ``changes`` counter, and how often it was scanned."""

    def __init__(self, members):
        self.list, self.changes, self.scans = members, 0, 0

    def members(self):
        self.scans += 1
        return self.list


def test_the_inputs_are_scanned_again_only_when_the_membership_changed():
    record = GossipRecord()
    swim = CountingSwim([member(1, TaskDigest(1, RUNNING), MeshFacts(7948))])
    first = record.routing_inputs_of(swim)
    assert record.routing_inputs_of(swim) is first and swim.scans == 1  # the mesh and the DNS look often
    swim.list, swim.changes = [member(2, TaskDigest(2, {}), MeshFacts(7948))], 1
    assert record.routing_inputs_of(swim) != first and swim.scans == 2
