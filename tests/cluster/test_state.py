"""The cluster state machine: versions, idempotency, stale decisions, bad requests, snapshots, queries."""

from __future__ import annotations

import msgpack
import pytest

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.state import TASK_HISTORY, ClusterState, Result


class Log:
    """Applies commands at increasing indexes, like a Raft log would."""

    def __init__(self, term: int = 1) -> None:
        self.state = ClusterState()
        self.index = 0
        self.term = term
        self.n = 0

    def cid(self) -> str:
        self.n += 1
        return f"c{self.n}"

    def __call__(self, command: dict) -> Result:
        self.index += 1
        return self.state.apply(command, self.term, self.index)

    def basis(self) -> list[int]:
        return [self.term, self.state.applied]

    def place(self, service: str, slot: int, node: str | None, version: int = 1, **kw) -> Result:
        placement = cmd.placement(service, version, slot, node, **kw)
        return self(cmd.assign_tasks(self.cid(), 1.0, self.basis(), [placement]))


@pytest.fixture
def log() -> Log:
    log = Log()
    for node, zone in (("n1", "a"), ("n2", "b")):
        assert log(cmd.update_node(log.cid(), 0.0, node, name=node, labels={"zone": zone})).ok
    assert log(cmd.create_service(log.cid(), 1.0, ServiceSpec("web", "srv", replicas=2, ports=["8080"]))).ok
    return log


def test_versions_and_rollback(log):
    spec = log.state.services["web"].spec
    assert log(cmd.update_service(log.cid(), 2.0, spec.replace(args=("v2",)))).value == {"version": 2}
    svc = log.state.services["web"]
    assert (svc.version, svc.previous, svc.update_state) == (2, spec, "updating")
    assert log(cmd.scale_service(log.cid(), 3.0, "web", 5)).value == {"version": 3}
    assert log.state.services["web"].update_state == "updating"  # scaling restarts nothing
    assert log(cmd.rollback_service(log.cid(), 4.0, "web")).ok
    svc = log.state.services["web"]
    assert (svc.version, svc.spec.replicas, svc.spec.args, svc.update_state) == (4, 2, ("v2",), "rollback_started")


def test_a_port_number_is_published_once_per_protocol(log):
    assert log(cmd.create_service(log.cid(), 1.0, ServiceSpec("dns", "srv", ports=["8080/udp"]))).ok
    refused = log(cmd.create_service(log.cid(), 1.0, ServiceSpec("dns2", "srv", ports=["8080/udp"])))
    assert not refused.ok and "8080/udp is already published by service dns" in refused.error


@pytest.mark.parametrize("command,error", [
    (lambda l: cmd.create_service(l.cid(), 1, ServiceSpec("web", "x")), "service web already exists"),
    (lambda l: cmd.create_service(l.cid(), 1, ServiceSpec("api", "x", ports=["8080:80"])),
     "ports: 8080/tcp is already published by service web"),
    (lambda l: cmd.update_service(l.cid(), 1, ServiceSpec("nope", "x")), "service nope does not exist"),
    (lambda l: cmd.update_service(l.cid(), 1, ServiceSpec("web", "x"), version=7), "service web is at version 1"),
    (lambda l: cmd.update_service(l.cid(), 1, ServiceSpec("web", "x", mode="global")), "mode: service web is"),
    (lambda l: cmd.rollback_service(l.cid(), 1, "web"), "service web has no previous spec"),
    (lambda l: cmd.scale_service(l.cid(), 1, "web", -1), "replicas: must be an integer"),
    (lambda l: cmd.remove_service(l.cid(), 1, "nope"), "service nope does not exist"),
    (lambda l: cmd.report_task_status(l.cid(), 1, "t9", "running", node="n1"), "task t9 does not exist"),
    (lambda l: cmd.remove_node(l.cid(), 1, "n7"), "node n7 does not exist"),
    (lambda l: cmd.update_node(l.cid(), 1, "n1", availability="gone"), "availability: must be one of"),
    (lambda l: {"op": "create_service", "id": "x", "at": 1, "spec": {"name": "a"}}, "spec: missing required"),
    (lambda l: {"op": "explode", "id": "x", "at": 1}, "op: must be one of"),
    (lambda l: {**cmd.remove_service("x", 1, "web"), "extra": 1}, "remove_service: unknown field 'extra'"),
    (lambda l: cmd.assign_tasks(l.cid(), 1, [1, 1], [{"service": "web"}]), "place[0]: missing field"),
    (lambda l: [1, 2, 3], "command: must be a mapping"),
])
def test_a_bad_request_is_one_line_and_changes_nothing(log, command, error):
    before = _without_applied(log.state.snapshot())
    result = log(command(log))
    assert not result.ok and result.error.startswith(error), result.error
    assert "\n" not in result.error
    assert _without_applied(log.state.snapshot()) == before


def _without_applied(blob: bytes) -> dict:
    data = msgpack.unpackb(blob, raw=False)
    data.pop("applied")
    data.pop("seen")
    return data


def test_bad_requests_leave_services_tasks_and_nodes_alone(log):
    before = _without_applied(log.state.snapshot())
    for command in (cmd.create_service(log.cid(), 1, ServiceSpec("api", "x", ports=["8080"])),
                    cmd.scale_service(log.cid(), 1, "nope", 3), b"\xc1garbage", {"op": "assign_tasks"},
                    cmd.rollback_service(log.cid(), 1, "web")):
        assert not log(command).ok
    assert _without_applied(log.state.snapshot()) == before


def test_a_retried_command_applies_once(log):
    command = cmd.assign_tasks("plan-1", 1.0, log.basis(), [cmd.placement("web", 1, 1, "n1")])
    first = log(command)
    again = log(command)
    assert first == again and first.ok
    assert len(log.state.tasks) == 1
    scale = cmd.scale_service("s-1", 1.0, "web", 3)
    assert log(scale).value == log(scale).value == {"version": 2}
    assert log.state.services["web"].version == 2


def test_retry_is_remembered_across_a_snapshot(log):
    command = cmd.scale_service("s-1", 1.0, "web", 3)
    log(command)
    restored = ClusterState()
    restored.restore(log.state.snapshot())
    assert restored.apply(command, 1, log.index + 1) == Result(True, value={"version": 2})
    assert restored.services["web"].version == 2


def test_stale_decisions_are_rejected(log):
    basis = log.basis()
    assert log(cmd.scale_service(log.cid(), 2.0, "web", 3)).ok
    stale = log(cmd.assign_tasks(log.cid(), 2.0, basis, [cmd.placement("web", 1, 1, "n1")]))
    assert not stale.ok and "service web changed after the plan" in stale.error
    assert not log.state.tasks

    basis = log.basis()
    assert log(cmd.update_node(log.cid(), 3.0, "n1", availability="drain")).ok
    result = log(cmd.assign_tasks(log.cid(), 3.0, basis, [cmd.placement("web", 2, 1, "n1"),
                                                          cmd.placement("web", 2, 2, "n2")]))
    assert not result.ok and "node n1 is drain" in result.error
    assert [t.node for t in log.state.tasks.values()] == ["n2"]  # each decision stands or falls alone

    older_term = log(cmd.assign_tasks(log.cid(), 3.0, [0, log.state.applied], [cmd.placement("web", 2, 3, "n2")]))
    assert older_term.error == "stale decision: planned in term 0, committed in term 1"
    future = log(cmd.assign_tasks(log.cid(), 3.0, [1, log.index + 5], []))
    assert "is not before the entry's index" in future.error


def test_a_slot_gets_one_task(log):
    assert log.place("web", 1, "n1").ok
    again = log.place("web", 1, "n2")
    assert not again.ok and "slot already has task" in again.error
    assert not log.place("web", 3, "n2").ok  # only 2 replicas
    unknown = log.place("web", 2, "n9")
    assert unknown.error.endswith("node n9 is unknown")


def test_a_decision_needs_a_basis(log):
    command = cmd.assign_tasks(log.cid(), 1.0, [1, 1], [])
    del command["basis"]
    assert "must carry its basis" in log(command).error


def test_task_reports_move_forward_only(log):
    tid = log.place("web", 1, "n1").value["placed"][0]
    report = lambda state, node="n1", **kw: log(cmd.report_task_status(log.cid(), 5.0, tid, state, node=node, **kw))
    assert report("starting").ok
    assert report("running", port=20001).ok
    assert log.state.tasks[tid].started_at == 5.0 and log.state.tasks[tid].port == 20001
    assert "stale report" in report("starting").error
    assert "belongs to node n1, not n2" in report("failed", node="n2").error
    assert "may only orphan it" in report("failed", node=None).error
    assert report("failed", exit_code=3, error="boom").ok
    task = log.state.tasks[tid]
    assert (task.state, task.exit_code, task.error, task.finished_at) == ("failed", 3, "boom", 5.0)
    assert "already ended" in report("running").error
    assert report("failed").ok  # the same news twice is fine


def test_pending_task_records_why_and_is_placed_later(log):
    tid = log.place("web", 1, None, message="no node satisfies node.labels.zone==c").value["placed"][0]
    assert log.state.service_ps("web")[0]["error"] == "no node satisfies node.labels.zone==c"
    assert not log.place("web", 1, "n1").ok  # the pending task holds the slot
    assert log.place("web", 1, "n1", task=tid).ok
    task = log.state.tasks[tid]
    assert (task.node, task.state, task.message) == ("n1", "assigned", "")


def test_remove_service_waits_for_its_tasks(log):
    tid = log.place("web", 1, "n1").value["placed"][0]
    pending = log.place("web", 2, None, message="later").value["placed"][0]
    assert log(cmd.remove_service(log.cid(), 6.0, "web")).ok
    assert pending not in log.state.tasks and log.state.tasks[tid].desired == "remove"
    again = log(cmd.create_service(log.cid(), 7.0, ServiceSpec("web", "x")))
    assert "still being removed" in again.error
    assert log(cmd.report_task_status(log.cid(), 8.0, tid, "shutdown", node="n1")).ok
    assert not log.state.tasks
    assert log(cmd.create_service(log.cid(), 9.0, ServiceSpec("web", "x", ports=["8080"]))).ok


def test_remove_node_orphans_its_tasks_and_retires_the_id(log):
    tid = log.place("web", 1, "n1").value["placed"][0]
    assert log(cmd.remove_node(log.cid(), 6.0, "n1")).ok
    task = log.state.tasks[tid]
    assert (task.state, task.desired) == ("orphaned", "shutdown")
    assert "never reused" in log(cmd.update_node(log.cid(), 7.0, "n1", name="n1")).error


def test_update_node_labels(log):
    assert log(cmd.update_node(log.cid(), 1.0, "n1", label_add={"disk": "ssd"}, label_rm=["zone"])).ok
    assert log.state.nodes["n1"].labels == (("disk", "ssd"),)
    changed = log.state.nodes["n1"].changed
    assert log(cmd.update_node(log.cid(), 1.0, "n1", label_add={"disk": "ssd"})).ok
    assert log.state.nodes["n1"].changed == changed  # nothing changed: plans made since stay valid


def test_history_is_bounded_per_slot(log):
    for i in range(TASK_HISTORY + 3):
        tid = log.place("web", 1, "n1").value["placed"][0]
        log(cmd.report_task_status(log.cid(), float(i), tid, "failed", node="n1", exit_code=1))
        log(cmd.set_task_desired(log.cid(), float(i), [tid], "shutdown", "restarted"))
    log.place("web", 1, "n1")
    rows = [r for r in log.state.service_ps("web") if r["name"] == "web.1"]
    assert rows[0]["current"] and rows[0]["state"] == "assigned"
    assert len(rows) == 1 + TASK_HISTORY and not any(r["current"] for r in rows[1:])


def test_queries(log):
    t1 = log.place("web", 1, "n1").value["placed"][0]
    log.place("web", 2, "n2")
    log(cmd.report_task_status(log.cid(), 2.0, t1, "running", node="n1", port=20000))
    row, = log.state.service_summaries()
    assert (row["name"], row["running"], row["desired"], row["ports"]) == ("web", 1, 2, ["8080:dynamic"])
    assert [r["name"] for r in log.state.service_ps("web")] == ["web.1", "web.2"]
    assert log.state.spec_of(log.state.tasks[t1]).name == "web"
    assert [t.id for t in log.state.tasks_on("n1")] == [t1]


def test_snapshot_round_trips_exactly(log):
    tid = log.place("web", 1, "n1").value["placed"][0]
    log(cmd.report_task_status(log.cid(), 2.0, tid, "running", node="n1", port=20000, health="healthy"))
    log(cmd.update_service(log.cid(), 3.0, log.state.services["web"].spec.replace(args=("v2",))))
    blob = log.state.snapshot()
    copy = ClusterState()
    copy.restore(blob)
    assert copy.snapshot() == blob
    assert copy.tasks == log.state.tasks and copy.services == log.state.services and copy.nodes == log.state.nodes
    assert copy.tasks_of("web") == log.state.tasks_of("web")


def test_misuse_raises(log):
    with pytest.raises(ValueError):
        log.state.apply(cmd.remove_service("x", 1, "web"), 1, log.index)
    with pytest.raises(ValueError):
        ClusterState().restore(msgpack.packb({"version": 99}))


def test_a_report_batch_applies_each_report_and_names_the_refused_ones(log):
    placed = log(cmd.assign_tasks(log.cid(), 2.0, [1, log.state.applied],
                                  [cmd.placement("web", 1, 1, "n1"), cmd.placement("web", 1, 2, "n2")])).value["placed"]
    t1, t2 = placed
    assert log(cmd.report_task_status(log.cid(), 3.0, t2, "failed", node="n2", exit_code=1)).ok
    batch = cmd.report_tasks(log.cid(), 4.0, [
        cmd.task_report(t1, "running", node="n1", port=20001),
        cmd.task_report("t9", "running", node="n1"),  # no such task
        cmd.task_report(t2, "orphaned", node=None, error="node n2 is down")])  # it had ended already
    result = log(batch)
    assert not result.ok and result.error == "task t9 does not exist (and 1 more)"
    assert result.value["refused"] == [1, 2]
    assert (log.state.tasks[t1].state, log.state.tasks[t1].port, log.state.tasks[t1].started_at) == \
        ("running", 20001, 4.0)  # applied although others in its batch were refused
    assert log.state.tasks[t2].state == "failed"
    assert log(cmd.report_tasks(log.cid(), 5.0, [cmd.task_report(t1, "failed", node="n1", exit_code=2)])).ok
    assert log.state.tasks[t1].exit_code == 2


def test_a_malformed_report_in_a_batch_refuses_the_batch_with_one_line(log):
    tid = log.place("web", 1, "n1").value["placed"][0]
    batch = cmd.report_tasks(log.cid(), 4.0, [cmd.task_report(tid, "running", node="n1"),
                                              dict(cmd.task_report(tid, "running", node="n1"), port=70000)])
    result = log(batch)
    assert not result.ok and result.error == "port: must be an integer 1..65535 (got 70000)"
    assert log.state.tasks[tid].state == "assigned"  # nothing of it applied
    assert "unknown field 'extra'" in log(cmd.report_tasks(log.cid(), 4.0, [
        dict(cmd.task_report(tid, "running", node="n1"), extra=1)])).error
