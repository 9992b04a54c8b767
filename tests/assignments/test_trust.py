"""The security part of a worker's assignments: cut per worker, sent only when it changed, never rolled back.

The in-process world of :mod:`tests.assignments.test_driver` (real wire encoding); the members' security
record is a real :class:`~p2pswarm.security.record.SecurityRecord` fed shape-valid commands.  What the
worker's security host does with the part is in ``tests/security/test_worker_trust.py``.
"""

from __future__ import annotations

from p2pswarm import wire
from p2pswarm.assignments.core import Delta, WorkerState, delta_since
from p2pswarm.assignments.messages import AssignmentsRequest, _trust, decode_body, reply_of
from p2pswarm.assignments.trust import trust_for
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.security.access import api_ca_command, client_command, revoke_command
from p2pswarm.security.record import SecurityRecord, init_command

from .test_driver import World, global_service


def init(record: SecurityRecord) -> None:
    ok, error = record.apply(init_command("i", "c1", bundle=b"bundle-1", sealed_ca=b"ca-1", tokens=b"tok-1",
                                          token_generation=1, revocations=b"", revocations_version=0,
                                          certs={"w1": b"cert-w1", "w2": b"cert-w2"}))
    assert ok, error
    ok, error = record.apply({"op": "key_shares", "key_generation": 0, "shares": {"w1": b"share-w1"}})
    assert ok, error


def test_each_worker_gets_its_own_share_and_certificate_and_nothing_before_init():
    record = SecurityRecord()
    assert trust_for(record, set(), "w1") is None  # a plaintext cluster, or before the creator's init
    init(record)
    w1, w2 = trust_for(record, {"x9", "x1"}, "w1"), trust_for(record, {"x9", "x1"}, "w2")
    assert (w1.share, w1.cert, w2.share, w2.cert) == (b"share-w1", b"cert-w1", b"", b"cert-w2")
    assert w1.removed == ("x1", "x9") and w1.bundle == b"bundle-1" and w1.digest != w2.digest
    decoded = decode_body(reply_of(1, "m1", Delta(5, 0, True, trust=w1))).trust
    assert decoded == w1 and decoded.digest == w1.digest


def test_a_worker_learns_a_removal_and_a_rotated_bundle_and_the_part_is_sent_only_when_it_changed():
    world = World(["m1", "m2", "m3"], ["w1", "w2"])
    init(world.security)
    global_service(world)
    world.run()
    worker = world.drivers["w1"]
    assert worker.worker_trust() == trust_for(world.security, set(), "w1")
    served = sum(world.drivers[m].counters["trust_served"] for m in world.members)
    assert served == 2  # one per worker: later deltas of unrelated changes do not carry it again
    log = world.log
    assert log(cmd.create_service(log.cid(), 3.0, ServiceSpec("other", "srv"))).ok  # not a change of the record
    world.run()
    assert sum(world.drivers[m].counters["trust_served"] for m in world.members) == served
    # a CA rotation's new bundle and node rm x9: both reach the workers with the next delta
    assert log(cmd.update_node(log.cid(), 0.0, "x9", name="x9")).ok
    assert world.security.apply({"op": "ca", "bundle": b"bundle-2", "sealed_ca": b"ca-2", "generation": 1})[0]
    assert log(cmd.remove_node(log.cid(), 4.0, "x9")).ok
    world.run()
    part = worker.worker_trust()
    assert part.removed == ("x9",) and part.bundle == b"bundle-2" and part.sealed_ca == b"ca-2"
    assert world.drivers["w2"].worker_trust().removed == ("x9",)
    assert worker.counters["trust_updates"] == 2


def test_a_member_part_is_not_the_workers_and_an_older_delta_never_rolls_it_back():
    world = World(["m1"], ["w1"])
    init(world.security)
    global_service(world)
    world.run()
    assert world.drivers["m1"].worker_trust() is None  # a member follows its own replica's record
    state = WorkerState("w1")
    new, old = trust_for(world.security, {"x9"}, "w1"), trust_for(world.security, set(), "w1")
    assert state.apply(Delta(10, 0, True, trust=new))
    assert not state.apply(Delta(9, 0, True, trust=old))  # a lagging member's older answer
    assert state.trust == new
    # the request names the part it holds: the member sends its own only when that is another
    m1, current = world.drivers["m1"], trust_for(world.security, world.log.state.removed_nodes, "w1")
    for request, named in ((7, current.digest), (8, new.digest)):
        m1.receive(AssignmentsRequest(request, "w1", 0, named))
        world.now += 1
        m1.step(world.now)
    same, other = (decode_body(wire.decode(d)).trust for d in world.net.inbox.pop("w1"))
    assert same is None and other == current



def test_a_change_of_the_security_record_alone_moves_the_version_and_is_no_resync():
    """The members gossip their Raft applied index; when the last entries were the security record's (a token
    rotation), the delta is as of that index, so the worker stops asking once it has it, by a delta."""
    world = World(["m1"], ["w1"])
    global_service(world)
    state = world.log.state
    worker = WorkerState("w1")
    assert worker.apply(delta_since(state, "w1", 0, None, state.applied))
    rotated = delta_since(state, "w1", worker.version, None, state.applied + 3)  # three security entries later
    assert (rotated.version, rotated.full, rotated.empty) == (state.applied + 3, False, True)
    assert worker.apply(rotated) and worker.version == state.applied + 3 and worker.resyncs == 1
    again = delta_since(state, "w1", worker.version, None, state.applied + 3)
    assert not again.full and again.empty


def test_a_worker_checks_remote_clients_by_the_access_part_its_member_sends():
    world = World(["m1", "m2", "m3"], ["w1"])
    init(world.security)
    global_service(world)
    access = world.access
    assert access.apply(api_ca_command("a", cert=b"api-ca-1", sealed=b"sealed-1", generation=1))[0]
    for serial, name in (("0a" * 8, "ops"), ("0b" * 8, "ci")):
        assert access.apply(client_command("c", serial=serial, name=name, role="operator", issued_at=1.0,
                                           not_after=2e9, by="admin"))[0]
    assert access.apply({"op": "audit", "entry": {"at": 1.0, "who": "ops", "method": "GET", "path": "/v1/x"}})[0]
    world.run()
    worker = world.drivers["w1"]
    seen = worker.worker_access()
    assert (seen.api_ca, seen.sealed_api_key, seen.api_generation) == (b"api-ca-1", b"sealed-1", 1)
    assert sorted(seen.clients) == ["0a" * 8, "0b" * 8] and not seen.audit  # the audit log stays with the members
    assert access.apply(revoke_command("r", ["0b" * 8]))[0]
    assert world.log(cmd.create_service(world.log.cid(), 3.0, ServiceSpec("other", "srv"))).ok  # a new version
    world.run()
    assert worker.worker_access().revoked == {"0b" * 8}  # a revoked client is refused on the worker too
    assert world.drivers["m1"].worker_access() is None  # a member checks by its own replica


def test_a_member_that_predates_the_access_part_still_decodes():
    record = SecurityRecord()
    init(record)
    part = trust_for(record, set(), "w1")
    old = _trust(part.fields()[:10])  # the part as such a member encodes it: ten fields
    assert old.access == b"" and old.access_record() is None and old.cert == part.cert
