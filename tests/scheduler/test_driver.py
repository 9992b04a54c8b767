"""The scheduler driver on a real cluster state: a failing service is warned about, noted and backed off,
while the other services are still scheduled."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.state import ClusterState, Result
from p2pswarm.consensus.raft import LEADER
from p2pswarm.node.record import RaftFacts, TaskDigest, encode_record
from p2pswarm.scheduler.driver import SchedulerConfig, SchedulerDriver

CONFIG = SchedulerConfig(interval=0.01, resync=5.0, backoff=1.0, backoff_max=4.0)


class Leader:
    """A Raft driver that leads and applies every write at once, unless ``refuse`` says otherwise."""

    def __init__(self) -> None:
        self.cluster = ClusterState()
        self.raft = SimpleNamespace(role=LEADER, term=1)
        self.failed = None
        self.refuse = lambda command: None
        """command -> None (commit it), an exception to raise, or a Result to answer."""
        self.proposed: list[dict] = []

    async def write_cluster(self, command: dict):
        self.proposed.append(command)
        verdict = self.refuse(command)
        if isinstance(verdict, Exception):
            raise verdict
        if isinstance(verdict, Result):
            return verdict
        return self.cluster.apply(command, 1, self.cluster.applied + 1)

    def assigned(self, service: str) -> int:
        return sum(1 for t in self.cluster.tasks.values() if t.service == service and t.state == "assigned")

    def attempts(self, service: str) -> int:
        return sum(1 for c in self.proposed if c["op"] == "assign_tasks" and c["place"]
                   and c["place"][0]["service"] == service)


def setup():
    leader = Leader()
    asyncio.run(leader.write_cluster(cmd.update_node("n", 1.0, "node-a", name="a")))
    for name in ("bad", "good"):
        asyncio.run(leader.write_cluster(cmd.create_service(f"c.{name}", 1.0, ServiceSpec(name, "srv", replicas=2))))
    member = SimpleNamespace(node="node-a", status="alive", record=encode_record([RaftFacts("c1", "leader", 1)]),
                             record_version=1, meta=SimpleNamespace(name="a", labels=(), capacity=()))
    clock = [0.0]
    sched = SchedulerDriver(SimpleNamespace(driver=leader), SimpleNamespace(members=lambda: [member]), CONFIG,
                            wall=lambda: 1000.0 + clock[0], clock=lambda: clock[0])
    return leader, sched, clock


def for_bad(answer):
    return lambda c: answer if c["op"] == "assign_tasks" and c["place"] and c["place"][0]["service"] == "bad" else None


def test_a_failing_service_is_warned_about_noted_and_backed_off_while_others_are_scheduled(caplog):
    leader, sched, clock = setup()
    leader.refuse = for_bad(ValueError("the command is 2000000 bytes; the limit is 1048576"))
    with caplog.at_level(logging.WARNING, logger="p2pswarm.scheduler"):
        asyncio.run(sched._round(leader))
    assert leader.assigned("good") == 2 and leader.assigned("bad") == 0
    note = leader.cluster.services["bad"].scheduling_error
    assert note == "scheduling: proposal failed: the command is 2000000 bytes; the limit is 1048576"
    assert leader.cluster.services["good"].scheduling_error == ""
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("service bad: scheduling: proposal failed: the command is") and "\n" not in warning
    assert "retrying in 1 s" in warning

    # the state changed (the note), so a round runs at once, but the failed service waits for its back-off
    clock[0] = 0.5
    asyncio.run(sched._round(leader))
    assert leader.attempts("bad") == 1
    clock[0] = 1.0
    with caplog.at_level(logging.DEBUG, logger="p2pswarm.scheduler"):
        asyncio.run(sched._round(leader))
    assert leader.attempts("bad") == 2 and "retrying in 2 s" in caplog.records[-1].getMessage()
    assert caplog.records[-1].levelno == logging.DEBUG  # the same error again: warned about once, not per retry
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1
    assert sched._next_round <= 3.0  # it comes back when the back-off ends, even if nothing changes

    # it works again: the tasks are placed and the note is cleared
    leader.refuse = lambda command: None
    clock[0] = 3.0
    asyncio.run(sched._round(leader))
    assert leader.assigned("bad") == 2 and leader.cluster.services["bad"].scheduling_error == ""
    assert sched.failures == {}


def test_a_refusal_is_a_failure_but_a_stale_plan_is_not(caplog):
    leader, sched, clock = setup()
    leader.refuse = for_bad(Result(False, "stale decision: service bad changed after the plan"))
    with caplog.at_level(logging.WARNING, logger="p2pswarm.scheduler"):
        asyncio.run(sched._round(leader))
    assert caplog.records == [] and sched.failures == {}
    leader.refuse = for_bad(Result(False, "bad slot 1: node node-a is drain"))
    clock[0] = 10.0
    with caplog.at_level(logging.WARNING, logger="p2pswarm.scheduler"):
        asyncio.run(sched._round(leader))
    assert leader.cluster.services["bad"].scheduling_error == "scheduling: refused: bad slot 1: node node-a is drain"
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "service bad: scheduling: refused: bad slot 1: node node-a is drain"]


def test_a_failing_round_backs_off_instead_of_planning_again_every_interval(caplog):
    leader, sched, clock = setup()
    calls = []

    def members():
        calls.append(1)
        raise RuntimeError("no quorum: 1 of 3 voters reachable")

    sched.swim = SimpleNamespace(members=members)
    sched.clock = lambda: 0.0  # time stands still: the back-off never ends

    async def run():
        task = asyncio.ensure_future(sched.run())
        while not calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(20 * CONFIG.interval)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="p2pswarm.scheduler"):
        asyncio.run(run())
    assert len(calls) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "scheduler round failed: no quorum: 1 of 3 voters reachable; retrying in 1 s"]


def test_the_orphan_reports_of_a_dead_node_travel_in_one_entry_before_the_replacements():
    leader, sched, clock = setup()
    asyncio.run(sched._round(leader))
    assert leader.assigned("bad") == leader.assigned("good") == 2
    write, written = leader.write_cluster, []

    async def recording_write(command):
        written.append(command)
        return await write(command)
    leader.write_cluster = recording_write
    [member] = sched.swim.members()
    member.status = "dead"
    clock[0] = 10.0
    asyncio.run(sched._round(leader))
    orphaned = [t for t in leader.cluster.tasks.values() if t.state == "orphaned"]
    assert len(orphaned) == 4
    assert written[0]["op"] == "report_tasks"  # one entry for the four, not four entries
    assert sorted(r["task"] for r in written[0]["reports"]) == sorted(t.id for t in orphaned)
    assert all(r["state"] == "orphaned" and r["error"] == "node node-a is down" for r in written[0]["reports"])
    assert [c["op"] for c in written[1:]] == ["assign_tasks"] * (len(written) - 1)


def test_a_refused_report_of_a_batch_is_not_proposed_again_and_the_others_are():
    leader, sched, clock = setup()
    asyncio.run(sched._round(leader))
    tasks = sorted(t.id for t in leader.cluster.tasks.values() if t.service == "bad")
    [member] = sched.swim.members()
    member.record = encode_record([RaftFacts("c1", "leader", 1),
                                   TaskDigest(1, {tid: {"s": "running", "v": 1} for tid in tasks})])
    member.record_version = 2
    answers = iter([Result(False, "task is gone", {"rejected": ["task is gone"], "refused": [0]})])
    leader.refuse = lambda command: next(answers, None) if command["op"] == "report_tasks" else None
    clock[0] = 1.0
    asyncio.run(sched._round(leader))
    member.record_version = 3  # the node gossips again: the leader looks at its digest again
    clock[0] = 2.0
    asyncio.run(sched._round(leader))
    batches = [c for c in leader.proposed if c["op"] == "report_tasks"]
    assert [[r["task"] for r in b["reports"]] for b in batches] == [tasks, tasks[1:]]
    assert leader.cluster.tasks[tasks[1]].state == "running" and leader.cluster.tasks[tasks[0]].state == "assigned"


def test_an_odd_digest_entry_sinks_neither_its_batch_nor_itself():
    leader, sched, clock = setup()
    asyncio.run(sched._round(leader))
    tasks = sorted(t.id for t in leader.cluster.tasks.values() if t.service == "bad")
    [member] = sched.swim.members()
    digest = {tasks[0]: {"s": "failed", "v": 1, "x": 300},  # no exit status is 300: read as unknown
              tasks[1]: {"s": "running", "v": 1, "g": 1 << 40}}  # nor is a signal number that large
    member.record = encode_record([RaftFacts("c1", "leader", 1), TaskDigest(1, digest)])
    member.record_version = 2
    clock[0] = 1.0
    asyncio.run(sched._round(leader))
    first, second = (leader.cluster.tasks[tid] for tid in tasks)
    assert (first.state, first.exit_code) == ("failed", None)
    assert (second.state, second.exit_code) == ("running", None)
    assert [c["op"] for c in leader.proposed[-1:]] == ["report_tasks"] and leader.proposed[-1]["reports"]
