"""Events derived from applied cluster commands (pure): what an operator reads in `p2pswarm events`."""

from __future__ import annotations

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.state import ClusterState
from p2pswarm.events.derive import Event, conf_events, derive, leader_event, member_event, peek, security_events


class Recorder:
    """Applies commands at increasing indexes, like the Raft driver, and keeps what each one derived."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.index = 0
        self.n = 0
        self.events: list[Event] = []

    def __call__(self, command: dict) -> list[Event]:
        self.index += 1
        before = peek(self.state, command)
        result = self.state.apply(command, 1, self.index)
        out = derive(before, command, result, self.state, self.index, wall=999.0)
        self.events += out
        return out

    def cid(self) -> str:
        self.n += 1
        return f"c{self.n}"

    def basis(self) -> list[int]:
        return [1, self.state.applied]

    def place(self, slot: int, node: str | None, version: int = 1) -> list[Event]:
        return self(cmd.assign_tasks(self.cid(), 5.0, self.basis(), [cmd.placement("web", version, slot, node)]))


def brief(events: list[Event]) -> list[tuple]:
    return [(e.type, e.action, e.subject, dict(e.attrs)) for e in events]


def cluster() -> Recorder:
    r = Recorder()
    for node in ("n1", "n2"):
        r(cmd.update_node(r.cid(), 0.0, node, name=f"name-{node}"))
    r(cmd.create_service(r.cid(), 1.0, ServiceSpec("web", "srv", replicas=1)))
    return r


def test_service_lifecycle_in_order_with_the_proposers_time():
    r = cluster()
    spec = r.state.services["web"].spec
    r(cmd.scale_service(r.cid(), 2.0, "web", 3))
    r(cmd.update_service(r.cid(), 3.0, spec.replace(replicas=3, args=("v2",))))
    r(cmd.rollback_service(r.cid(), 4.0, "web", message="manual rollback"))
    r(cmd.remove_service(r.cid(), 5.0, "web"))
    assert brief(r.events) == [
        ("node", "joined", "n1", {"name": "name-n1"}),
        ("node", "joined", "n2", {"name": "name-n2"}),
        ("service", "create", "web", {"version": "1", "replicas": "1"}),
        ("service", "scale", "web", {"version": "2", "replicas": "3", "from": "1"}),
        ("service", "update", "web", {"version": "3"}),
        ("service", "rollback", "web", {"version": "4", "message": "manual rollback"}),
        ("service", "remove", "web", {}),
    ]
    assert [e.at for e in r.events[2:]] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [e.index for e in r.events] == sorted(e.index for e in r.events)


def test_retried_and_refused_commands_derive_nothing():
    r = cluster()
    create = cmd.create_service("again", 1.0, ServiceSpec("api", "srv"))
    assert len(r(create)) == 1
    assert r(create) == []  # the same id: answered from the state machine's memory
    assert r(cmd.create_service(r.cid(), 1.0, ServiceSpec("api", "srv"))) == []  # refused: it exists
    assert r(cmd.scale_service(r.cid(), 1.0, "web", 1)) == []  # already at 1: no new version
    assert r({"op": "scale_service", "name": ["junk"]}) == []
    assert r(b"\xc1 not msgpack") == []


def test_task_assigned_running_failed_then_rescheduled_with_the_reason():
    r = cluster()
    (assigned,) = r.place(1, "n1")
    tid = assigned.subject
    assert (assigned.action, dict(assigned.attrs)) == ("assigned", {"service": "web", "slot": "1", "node": "name-n1"})
    (running,) = r(cmd.report_task_status(r.cid(), 6.0, tid, "running", node="n1", port=4000))
    assert running.action == "running"
    assert r(cmd.report_task_status(r.cid(), 6.5, tid, "running", node="n1")) == []  # no change, no event
    (failed,) = r(cmd.report_task_status(r.cid(), 7.0, tid, "failed", node="n1", exit_code=3, error="boom"))
    assert (failed.action, dict(failed.attrs)["exit_code"], dict(failed.attrs)["error"]) == ("failed", "3", "boom")
    stop_and_place = cmd.assign_tasks(r.cid(), 8.0, r.basis(), [cmd.placement("web", 1, 1, "n2")],
                                      stop=[(tid, "restarted")])
    shutdown, again = r(stop_and_place)
    assert (shutdown.action, shutdown.subject, dict(shutdown.attrs)["reason"]) == ("stop", tid, "restarted")
    assert (again.action, dict(again.attrs)) == ("rescheduled", {
        "service": "web", "slot": "1", "node": "name-n2", "replaces": tid, "reason": "failed: boom"})


def test_a_dead_nodes_task_is_orphaned_and_rescheduled_an_update_replaces():
    r = cluster()
    (first,) = r.place(1, "n1")
    r(cmd.report_task_status(r.cid(), 6.0, first.subject, "running", node="n1"))
    (orphaned,) = r(cmd.report_task_status(r.cid(), 7.0, first.subject, "orphaned", node=None,
                                           error="node n1 is down"))
    assert orphaned.action == "orphaned"
    events = r(cmd.assign_tasks(r.cid(), 8.0, r.basis(), [cmd.placement("web", 1, 1, "n2")],
                                stop=[(first.subject, "replaced")]))
    assert [(e.action, dict(e.attrs).get("reason")) for e in events] == [
        ("stop", "replaced"), ("rescheduled", "orphaned: node n1 is down")]
    second = events[1].subject
    r(cmd.report_task_status(r.cid(), 9.0, second, "running", node="n2"))
    spec = r.state.services["web"].spec
    r(cmd.update_service(r.cid(), 10.0, spec.replace(args=("v2",))))
    events = r(cmd.assign_tasks(r.cid(), 11.0, r.basis(), [cmd.placement("web", 2, 1, "n1")],
                                stop=[(second, "updating to version 2")]))
    assert [(e.action, dict(e.attrs).get("replaces")) for e in events] == [("stop", None), ("assigned", second)]


def test_an_unplaceable_task_is_pending_with_why_and_nodes_change_and_leave():
    r = cluster()
    (pending,) = r(cmd.assign_tasks(r.cid(), 5.0, r.basis(), [cmd.placement("web", 1, 1, None,
                                                                            message="no node has 2 cores")]))
    assert (pending.action, dict(pending.attrs)["message"]) == ("pending", "no node has 2 cores")
    (drained,) = r(cmd.update_node(r.cid(), 6.0, "n2", availability="drain"))
    assert (drained.action, dict(drained.attrs)["availability"]) == ("update", "drain")
    assert r(cmd.update_node(r.cid(), 6.0, "n2", availability="drain")) == []
    (removed,) = r(cmd.remove_node(r.cid(), 7.0, "n2"))
    assert (removed.type, removed.action, removed.subject) == ("node", "removed", "n2")


def test_raft_security_and_local_events():
    names = {"n2": "two"}
    (added,) = conf_events("add_voter", "n2", ("n1", "n2"), (), (("n1",), ()), 9, 1.0, names)
    assert (added.type, added.action, dict(added.attrs)["name"], added.index) == ("raft", "voter_added", "two", 9)
    (gone,) = conf_events("remove", "n2", ("n1",), (), (("n1", "n2"), ()), 10, 1.0, names)
    assert gone.action == "voter_removed"
    (learner,) = conf_events("remove", "n3", ("n1",), (), (("n1",), ("n3",)), 11, 1.0, names)
    assert learner.action == "learner_removed"
    assert [e.action for e in security_events({"op": "ca", "generation": 2}, True, 12, 1.0)] == ["ca_rotated"]
    assert [e.action for e in security_events({"op": "tokens", "generation": 3}, True, 13, 1.0)] == ["token_rotated"]
    assert security_events({"op": "ca", "generation": 2}, False, 14, 1.0) == []
    suspect = member_event("n2", "two", "alive", "suspect", 5.0)
    assert suspect is not None and (suspect.action, suspect.local, suspect.index) == ("suspect", True, 0)
    assert member_event("n2", "two", None, "alive", 5.0).action == "joined"
    leader = leader_event("n1", "one", 4, 5.0)
    assert (leader.type, leader.action, leader.local, dict(leader.attrs)["term"]) == ("raft", "leader_elected",
                                                                                      True, "4")


def test_an_event_survives_its_json_form():
    event = member_event("n2", "two", "alive", "dead", 5.5)
    assert event is not None and Event.from_dict(event.to_dict()) == event


def test_a_huge_batch_yields_a_sample_and_a_count():
    r = Recorder()
    r(cmd.update_node(r.cid(), 0.0, "n1", name="n1"))
    r(cmd.create_service(r.cid(), 1.0, ServiceSpec("web", "srv", replicas=500)))
    events = r(cmd.assign_tasks(r.cid(), 5.0, r.basis(), [cmd.placement("web", 1, s, "n1") for s in range(1, 501)]))
    assert len(events) == 101 and all(e.action == "assigned" for e in events[:100])
    assert (events[-1].action, dict(events[-1].attrs)) == ("more", {"omitted": "400"})


def test_a_report_batch_derives_the_events_of_the_reports_it_applied():
    r = cluster()
    r(cmd.scale_service(r.cid(), 2.0, "web", 2))
    first, second = (e.subject for e in r(cmd.assign_tasks(r.cid(), 5.0, r.basis(), [
        cmd.placement("web", 2, 1, "n1"), cmd.placement("web", 2, 2, "n2")])))
    events = r(cmd.report_tasks(r.cid(), 6.0, [
        cmd.task_report(first, "running", node="n1"),
        cmd.task_report(second, "running", node="n1"),  # refused: not its node
        cmd.task_report(second, "orphaned", node=None, error="node n2 is down")]))
    assert [(e.action, e.subject) for e in events] == [("running", first), ("orphaned", second)]
    assert dict(events[1].attrs)["error"] == "node n2 is down"
    assert r({"op": "report_tasks", "id": r.cid(), "at": 7.0, "reports": "junk"}) == []
    twice = r(cmd.report_tasks(r.cid(), 8.0, [cmd.task_report(first, "failed", node="n1", exit_code=1),
                                              cmd.task_report(first, "failed", node="n1", exit_code=1)]))
    assert [(e.action, e.subject) for e in twice] == [("failed", first)]  # one task, one event
