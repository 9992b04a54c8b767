"""The pure agent core: starts, restart policies, desired shutdown, updates, the digest."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from p2pswarm.agent.core import AgentCore, Assignment, Forget, RestartPolicy, Start, Stop
from p2pswarm.runtime.base import HealthCheck, TaskSpec

from ..test_purity import violations

ROOT = Path(__file__).resolve().parents[2]


def assignment(task_id="t1", version=1, desired="running", condition="any", delay=5.0,
               max_attempts=0, window=0.0, health=None) -> Assignment:
    spec = TaskSpec(task_id, "web", 1, "n1", ("srv", "{port}"), health=health, stop_grace=7)
    return Assignment(spec, version, desired, RestartPolicy(condition, delay, max_attempts, window))


def running(core: AgentCore, now: float, *assignments: Assignment) -> None:
    """Assign and report every resulting start as successful."""
    core.assign(now, assignments)
    for action in core.take_actions():
        assert isinstance(action, Start)
        core.started(now, action.task_id, action.run, (20000 + action.run,))


def record(core: AgentCore, task_id="t1") -> dict:
    return core.digest()["tasks"][task_id]


def test_an_assignment_starts_a_run_and_the_digest_follows():
    core = AgentCore()
    a = assignment()
    core.assign(0, [a])
    assert core.take_actions() == [Start("t1", 1, a.spec)]
    assert record(core) == {"s": "starting", "v": 1}
    v = core.digest()["v"]
    core.started(0.1, "t1", 1, (20001,))
    assert record(core) == {"s": "running", "v": 1, "p": 20001}
    assert core.digest()["v"] == v + 1
    core.tick(5)
    core.assign(6, [a])  # nothing new: no action, no new version
    assert core.take_actions() == [] and core.digest()["v"] == v + 1


@pytest.mark.parametrize("condition, code, restarts", [
    ("any", 0, True), ("any", 1, True),
    ("on-failure", 0, False), ("on-failure", 1, True),
    ("none", 0, False), ("none", 1, False),
])
def test_restart_conditions(condition, code, restarts):
    core = AgentCore()
    running(core, 0, assignment(condition=condition, delay=2))
    core.exited(10, "t1", 1, code)
    assert core.take_actions() == []
    if restarts:
        assert record(core)["s"] == "restarting" and core.next_deadline() == 12
        core.tick(11.9)
        assert core.take_actions() == []
        core.tick(12)
        assert [type(a) for a in core.take_actions()] == [Start] and record(core)["r"] == 1
    else:
        assert record(core) == {"s": "complete" if code == 0 else "failed", "v": 1, "x": code}
        assert core.next_deadline() is None


def test_a_signal_or_a_start_error_is_a_failure():
    core = AgentCore()
    core.assign(0, [assignment(condition="none")])
    core.take_actions()
    core.exited(0, "t1", 1, error="executable not found: srv")  # never started
    assert record(core) == {"s": "failed", "v": 1, "e": "executable not found: srv"}

    core = AgentCore()
    running(core, 0, assignment(condition="on-failure", delay=0))
    core.exited(1, "t1", 1, signal=9)
    assert [a.run for a in core.take_actions()] == [2]  # delay 0: at once


def fail_at(core: AgentCore, now: float, run: int) -> list:
    core.exited(now, "t1", run, 1)
    actions = core.take_actions()
    for a in actions:
        core.started(now, a.task_id, a.run, (1,))
    return actions


def test_max_attempts_then_give_up():
    core = AgentCore()
    running(core, 0, assignment(condition="on-failure", delay=0, max_attempts=2))
    assert [a.run for a in fail_at(core, 1, 1)] == [2]
    assert [a.run for a in fail_at(core, 2, 2)] == [3]
    assert fail_at(core, 3, 3) == []
    assert record(core) == {"s": "failed", "v": 1, "x": 1, "r": 2, "e": "exit code 1; gave up after 2 restarts"}


def test_max_attempts_count_only_within_the_window():
    core = AgentCore()
    running(core, 0, assignment(condition="on-failure", delay=0, max_attempts=2, window=10))
    assert fail_at(core, 1, 1) and fail_at(core, 2, 2)      # restarts at t=1 and t=2
    assert [a.run for a in fail_at(core, 11.5, 3)] == [4]    # t=1 has left the window
    assert fail_at(core, 11.8, 4) == []                      # t=2 and t=11.5 are inside it
    assert record(core)["s"] == "failed"


def test_desired_shutdown_stops_and_never_restarts():
    core = AgentCore()
    running(core, 0, assignment(condition="any", delay=0))
    core.assign(1, [assignment(desired="shutdown")])
    assert core.take_actions() == [Stop("t1", 1, 7)]
    assert record(core)["s"] == "stopping"
    core.exited(2, "t1", 1, None, 15)
    assert core.take_actions() == [] and record(core) == {"s": "shutdown", "v": 1, "g": 15}


def test_shutdown_cancels_a_pending_restart_and_a_shutdown_task_never_starts():
    core = AgentCore()
    running(core, 0, assignment(delay=5))
    core.exited(1, "t1", 1, 1)
    core.assign(2, [assignment(desired="shutdown"), assignment("t2", desired="shutdown")])
    assert core.take_actions() == [] and core.next_deadline() is None
    assert record(core)["s"] == "shutdown" and record(core, "t2") == {"s": "shutdown", "v": 1}


def test_unassigned_tasks_are_stopped_then_forgotten():
    core = AgentCore()
    running(core, 0, assignment("t1"), assignment("t2"))
    core.assign(1, [assignment("t2")])
    assert core.take_actions() == [Stop("t1", 1, 7)]
    core.exited(2, "t1", 1, 0)
    assert core.take_actions() == [Forget("t1")]
    assert list(core.digest()["tasks"]) == ["t2"]


def test_a_new_spec_version_replaces_the_run():
    core = AgentCore()
    running(core, 0, assignment(condition="none"))
    core.assign(1, [assignment(version=2, condition="none")])
    assert core.take_actions() == [Stop("t1", 1, 7)]
    core.exited(2, "t1", 1, 0)
    [start] = core.take_actions()
    assert start.run == 2 and record(core) == {"s": "starting", "v": 2}


def test_a_finished_task_is_revived_only_by_a_new_version():
    core = AgentCore()
    running(core, 0, assignment(condition="none"))
    core.exited(1, "t1", 1, 0)
    core.assign(2, [assignment(condition="none")])
    assert core.take_actions() == []
    core.assign(3, [assignment(version=2, condition="none")])
    assert [a.run for a in core.take_actions()] == [2]


def test_events_of_an_old_run_are_ignored():
    core = AgentCore()
    running(core, 0, assignment(delay=0))
    core.exited(1, "t1", 1, 1)
    core.take_actions()  # run 2 starts
    v = core.digest()["v"]
    core.exited(2, "t1", 1, 1)
    core.started(2, "t1", 1, (5,))
    core.health(2, "t1", 1, "unhealthy")
    core.exited(2, "nobody", 1, 1)
    assert core.take_actions() == [] and core.digest()["v"] == v and record(core)["s"] == "starting"


def test_unhealthy_is_a_failure():
    core = AgentCore()
    running(core, 0, assignment(condition="on-failure", delay=1, health=HealthCheck("tcp")))
    assert record(core)["h"] == "starting"
    core.health(1, "t1", 1, "healthy")
    assert record(core)["h"] == "healthy"
    core.health(2, "t1", 1, "unhealthy", "127.0.0.1:20001: Connection refused")
    assert core.take_actions() == [Stop("t1", 1, 7)]
    core.exited(3, "t1", 1, 0)  # it stopped cleanly, but it was sick
    assert record(core) == {"s": "restarting", "v": 1, "x": 0, "e": "unhealthy: 127.0.0.1:20001: Connection refused"}


def test_a_stop_before_the_start_is_confirmed():
    core = AgentCore()
    core.assign(0, [assignment()])
    core.take_actions()
    core.assign(1, [assignment(desired="shutdown")])
    assert core.take_actions() == [Stop("t1", 1, 7)]
    core.started(2, "t1", 1, (5,))
    assert record(core)["s"] == "stopping"
    core.exited(3, "t1", 1, 0)
    assert record(core)["s"] == "shutdown"


def test_halt_stops_everything_and_starts_nothing():
    core = AgentCore()
    running(core, 0, assignment("t1"), assignment("t2", delay=0))
    core.exited(1, "t2", 1, 1)
    core.take_actions()  # t2 restarts: run 2, not yet confirmed
    core.halt(2)
    assert sorted(core.take_actions(), key=lambda a: a.task_id) == [Stop("t1", 1, 7), Stop("t2", 2, 7)]
    core.exited(3, "t1", 1, 0)
    core.exited(3, "t2", 2, 0)
    core.tick(100)
    assert core.take_actions() == []
    assert {r["s"] for r in core.digest()["tasks"].values()} == {"shutdown"}


def test_the_digest_is_compact_msgpack_and_its_version_only_grows():
    core = AgentCore(digest_version=41)
    assert core.digest() == {"v": 41, "tasks": {}}
    running(core, 0, assignment(), assignment("t2"))
    versions = [core.digest()["v"]]
    for now, event in enumerate([lambda n: core.exited(n, "t1", 1, 2, error="x" * 500),
                                 lambda n: core.tick(n + 10)], start=1):
        event(now)
        versions.append(core.digest()["v"])
    assert versions == sorted(set(versions)) and versions[0] > 41
    digest = core.digest()
    assert msgpack.unpackb(msgpack.packb(digest)) == digest
    assert len(digest["tasks"]["t1"].get("e", "")) <= 200


def test_bad_policies_and_assignments_are_refused():
    with pytest.raises(ValueError):
        RestartPolicy(condition="always")
    with pytest.raises(ValueError):
        RestartPolicy(delay=-1)
    with pytest.raises(ValueError):
        assignment(desired="paused")


def test_the_core_is_pure():
    for path in ("p2pswarm/agent/core.py", "p2pswarm/runtime/base.py"):
        assert violations((ROOT / path).read_text(), path) == [], path
