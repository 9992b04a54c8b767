"""The assignment protocol's pure core: deltas cut per worker, the worker's state, the server choice."""

from __future__ import annotations

import collections

from p2pswarm.assignments.core import WorkerState, choose_server, delta_since
from p2pswarm.assignments.messages import AssignmentsReply, decode_body, reply_of
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.changes import MAX_DEPARTURES
from p2pswarm.cluster.objects import SEALED_MAGIC
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.wire import WireError, decode, encode

from ..cluster.test_state import Log

SEALED = SEALED_MAGIC + bytes(12) + b"ciphertext" + bytes(16)


def cluster() -> Log:
    log = Log()
    for node in ("w1", "w2"):
        assert log(cmd.update_node(log.cid(), 0.0, node, name=node)).ok
    assert log(cmd.create_config(log.cid(), 0.0, "conf", "conf00000001", b"x=1")).ok
    assert log(cmd.create_secret(log.cid(), 0.0, "pw", "pw0000000001", SEALED, 1)).ok
    assert log(cmd.create_service(log.cid(), 1.0, ServiceSpec("web", "srv", replicas=2, configs=("conf",),
                                                              secrets=("pw",)))).ok
    log.place("web", 1, "w1")
    log.place("web", 2, "w2")
    return log


def follow(log: Log, worker: WorkerState) -> None:
    """What a worker does on a gossiped version above its own: ask, and apply the answer (over the wire)."""
    delta = delta_since(log.state, worker.node_id, worker.version, {1: b"sealed-ring-key"})
    reply = decode(encode(reply_of(7, "m1", delta)))
    assert worker.apply(decode_body(reply))


def test_a_new_worker_gets_its_own_tasks_specs_and_files_in_full():
    log = cluster()
    worker = WorkerState("w1")
    follow(log, worker)
    assert worker.version == log.state.applied and worker.resyncs == 1
    assert [t.slot for t in worker.tasks_on("w1")] == [1]  # only its own task: w2's is not sent
    task = worker.tasks_on("w1")[0]
    assert worker.spec_of(task) == log.state.spec_of(log.state.tasks_on("w1")[0])
    assert worker.objects.configs["conf"].data == b"x=1"
    assert worker.objects.secrets["pw"].data == SEALED  # still sealed: the agent opens it
    assert worker.security.secret_keys == {1: b"sealed-ring-key"}


def test_deltas_are_incremental_and_carry_removals():
    log = cluster()
    worker = WorkerState("w1")
    follow(log, worker)
    before = worker.version
    (mine,) = log.state.tasks_on("w1")
    assert log(cmd.report_task_status(log.cid(), 2.0, log.state.tasks_on("w2")[0].id, "running", node="w2")).ok
    nothing = delta_since(log.state, "w1", before)
    assert not nothing.full and nothing.tasks == () and nothing.removed == ()  # w2's change is not w1's
    assert log(cmd.report_task_status(log.cid(), 2.0, mine.id, "running", node="w1")).ok
    changed = delta_since(log.state, "w1", before)
    assert not changed.full and [t.id for t in changed.tasks] == [mine.id]
    follow(log, worker)
    assert worker.tasks_on("w1")[0].state == "running" and worker.resyncs == 1
    # a move away (drain) removes the task from the worker once it is gone from the state
    assert log(cmd.set_task_desired(log.cid(), 3.0, [mine.id], "remove")).ok
    assert log(cmd.report_task_status(log.cid(), 3.0, mine.id, "shutdown", node="w1")).ok
    assert mine.id not in log.state.tasks
    delta = delta_since(log.state, "w1", worker.version)
    assert delta.removed == (mine.id,) and not delta.full
    follow(log, worker)
    assert worker.tasks_on("w1") == [] and worker.specs == {} and worker.objects.secrets == {}
    assert worker.security.secret_keys == {}  # nothing of the secret stays once no task uses it


def test_a_version_the_member_cannot_diff_from_gets_a_full_resync_not_an_error():
    log = cluster()
    worker = WorkerState("w1")
    follow(log, worker)
    # the member restarts from a snapshot taken later: its history starts there
    restored = Log()
    restored.state.restore(log.state.snapshot())
    restored.index = log.index
    assert log(cmd.report_task_status(log.cid(), 2.0, log.state.tasks_on("w1")[0].id, "running", node="w1")).ok
    restored.state.restore(log.state.snapshot())
    delta = delta_since(restored.state, "w1", worker.version - 1)
    assert delta.full and len(delta.tasks) == 1
    assert worker.apply(delta) and worker.resyncs == 2 and worker.tasks_on("w1")[0].state == "running"
    # a version the member has not reached yet (it lags): full too, and the worker ignores the older answer
    assert delta_since(restored.state, "w1", worker.version + 5).full
    stale = delta_since(cluster().state, "w1", 0)
    assert stale.version < worker.version and not worker.apply(stale)


def test_forgotten_departures_move_the_horizon():
    log = cluster()
    changes = log.state.changes
    for i in range(MAX_DEPARTURES + 2):  # departures at indexes 1, 1, ..., 2, 2: the two oldest are forgotten
        changes.drop(f"t{i}", "w1", 1 + 2 * i // (MAX_DEPARTURES + 2))
    assert changes.horizon("w1") == 1 and changes.horizon("w2") == 0
    assert delta_since(log.state, "w1", 0).full and not delta_since(log.state, "w1", 1).full
    for i in range(MAX_DEPARTURES):
        changes.drop(f"u{i}", "w1", 3)
    assert changes.horizon("w1") == 2 and delta_since(log.state, "w1", 1).full
    assert not delta_since(log.state, "w2", 1).full


def test_a_malformed_body_is_a_wire_error():
    good = reply_of(1, "m1", delta_since(cluster().state, "w1", 0))
    for body in (b"\x93\x01\x02\x03", b"\x81\xa5tasks\x91\x81\xa2id\x05", b"\xc1", b""):
        bad = AssignmentsReply(1, "m1", good.version, 0, True, body=body)
        try:
            decode_body(bad)
        except WireError:
            continue
        assert body == b"" and decode_body(bad).tasks == ()  # an empty body is an empty delta


def test_rendezvous_spreads_workers_and_a_departure_moves_only_its_own():
    members = [f"m{i}" for i in range(5)]
    workers = [f"w{i}" for i in range(1000)]
    chosen = {w: choose_server(w, members) for w in workers}
    load = collections.Counter(chosen.values())
    assert set(load) == set(members) and max(load.values()) < 1.3 * len(workers) / len(members)
    assert all(choose_server(w, list(reversed(members))) == chosen[w] for w in workers)  # order does not matter
    after = {w: choose_server(w, members[1:]) for w in workers}
    moved = [w for w in workers if after[w] != chosen[w]]
    assert moved and all(chosen[w] == "m0" for w in moved)
    assert choose_server("w1", []) is None
