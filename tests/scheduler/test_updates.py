"""Rolling updates and rollbacks: the pure step function, then whole updates on the fake cluster."""

from __future__ import annotations

from p2pswarm.cluster.model import Service, Task
from p2pswarm.cluster.spec import RestartPolicy, ServiceSpec, UpdateConfig
from p2pswarm.scheduler.updates import step

from .schedbox import Box

V1 = ServiceSpec("web", "srv", args=("v1",), replicas=4)


def service(update: UpdateConfig, state: str = "updating") -> Service:
    v2 = V1.replace(args=("v2",), update=update)
    return Service(v2, 2, V1, ((1, V1), (2, v2)), update_state=state, update_started_at=10.0)


def task(slot: int, version: int, state: str = "running", **kw) -> Task:
    return Task(f"t{slot}.{version}", "web", slot, f"n{slot}", version, state=state, **kw)


def up(node):
    return True


def test_stop_first_replaces_a_batch_and_stops_it():
    svc = service(UpdateConfig(parallelism=2))
    s = step(svc, [task(i, 1) for i in range(1, 5)], 20.0, up)
    assert s.replace == ("t1.1", "t2.1")
    assert s.stop == (("t1.1", "updating to version 2"), ("t2.1", "updating to version 2"))


def test_the_next_batch_waits_for_the_last_to_run_and_the_delay():
    svc = service(UpdateConfig(parallelism=2, delay=5))
    tasks = [task(1, 2, "starting"), task(2, 2, "running", started_at=21.0), task(3, 1), task(4, 1)]
    assert step(svc, tasks, 22.0, up).replace == ()
    tasks[0] = task(1, 2, "running", started_at=23.0)
    waiting = step(svc, tasks, 24.0, up)
    assert waiting.replace == () and waiting.wake_at == 28.0
    assert step(svc, tasks, 28.0, up).replace == ("t3.1", "t4.1")


def test_broken_old_tasks_go_first_and_parallelism_zero_means_all():
    svc = service(UpdateConfig(parallelism=1))
    tasks = [task(1, 1), task(2, 1, "starting"), task(3, 1), task(4, 1)]
    assert step(svc, tasks, 20.0, up).replace == ("t2.1",)
    assert len(step(service(UpdateConfig(parallelism=0)), tasks, 20.0, up).replace) == 4


def test_start_first_keeps_the_old_task_until_the_new_one_runs():
    svc = service(UpdateConfig(parallelism=1, order="start-first"))
    first = step(svc, [task(i, 1) for i in range(1, 5)], 20.0, up)
    assert first.replace == ("t1.1",) and first.stop == ()
    starting = [task(1, 1), task(1, 2, "starting"), task(2, 1), task(3, 1), task(4, 1)]
    assert step(svc, starting, 21.0, up).stop == ()
    unhealthy = [task(1, 1), task(1, 2, "running", health="unhealthy", started_at=21.0)] + starting[2:]
    assert step(svc, unhealthy, 22.0, up).stop == ()
    healthy = [task(1, 1), task(1, 2, "running", health="healthy", started_at=21.0)] + starting[2:]
    done = step(svc, healthy, 22.0, up)
    assert done.stop[0] == ("t1.1", "updated to version 2") and done.replace == ("t2.1",)


def test_completion():
    svc = service(UpdateConfig())
    s = step(svc, [task(i, 2, started_at=11.0) for i in range(1, 5)], 20.0, up)
    assert (s.new_state, s.message) == ("completed", "completed")
    rolled = service(UpdateConfig(), state="rollback_started")
    assert step(rolled, [task(i, 2) for i in range(1, 5)], 20.0, up).new_state == "rollback_completed"
    assert step(service(UpdateConfig(), state="paused"), [task(1, 1)], 20.0, up) == step(
        service(UpdateConfig(), state="completed"), [task(1, 1)], 20.0, up)


def test_failure_actions():
    failed = task(1, 2, "failed", error="exit status 2", started_at=11.0, finished_at=12.0)
    tasks = [failed, task(2, 1), task(3, 1), task(4, 1)]
    pause = step(service(UpdateConfig(failure_action="pause")), tasks, 20.0, up)
    assert (pause.new_state, pause.message) == ("paused", "update paused: task web.1 failed: exit status 2")
    rollback = step(service(UpdateConfig(failure_action="rollback")), tasks, 20.0, up)
    assert rollback.rollback and rollback.message.startswith("update rolled back: task web.1 failed")
    assert step(service(UpdateConfig(failure_action="continue")), tasks, 20.0, up).replace == ("t2.1",)
    late = [task(1, 2, "failed", started_at=11.0, finished_at=30.0)] + tasks[1:]  # ran past the monitor window
    assert not step(service(UpdateConfig()), late, 40.0, up).new_state
    tolerant = UpdateConfig(max_failure_ratio=0.5, parallelism=2)
    two = [failed, task(2, 2, started_at=11.0), task(3, 1), task(4, 1)]
    assert step(service(tolerant), two, 20.0, up).replace == ("t3.1", "t4.1")
    in_rollback = step(service(UpdateConfig(failure_action="rollback"), "rollback_started"), tasks, 20.0, up)
    assert in_rollback.new_state == "rollback_paused" and not in_rollback.rollback


# ------------------------------------------------------------------ whole updates on the fake cluster

def versions(box: Box) -> list[int]:
    return sorted(t.version for t in box.running("web"))


def test_parallelism_two_moves_every_task_to_the_new_version():
    box = Box(5)
    box.create(V1.replace(replicas=6))
    box.settle(3)
    box.update(box.state.services["web"].spec.replace(args=("v2",), update=UpdateConfig(parallelism=2)))
    old_counts = []
    while box.state.services["web"].update_state == "updating":
        box.round()
        old_counts.append(sum(1 for t in box.state.tasks_of("web") if t.live and t.version == 1))
    assert old_counts[:3] == [4, 2, 0]  # two at a time
    assert versions(box) == [2] * 6 and box.state.services["web"].update_state == "completed"
    assert sorted(box.per_node("web").values()) == [1, 1, 1, 1, 2]


def test_a_failing_update_pauses():
    box = Box(3)
    box.behaviour["web"] = lambda t: ("failed", 127, "command not found: nope") if \
        box.state.spec_of(t).command == "nope" else None
    box.create(V1.replace(replicas=6, restart=RestartPolicy(delay=10)))
    box.settle(2)
    box.update(box.state.services["web"].spec.replace(command="nope", update=UpdateConfig(parallelism=2)))
    box.settle(5)
    svc = box.state.services["web"]
    assert svc.update_state == "paused"
    assert svc.update_message == "update paused: task web.1 failed: command not found: nope"
    assert versions(box) == [1, 1, 1, 1]  # the rest still run the old spec


def test_a_failing_update_rolls_back_when_asked():
    box = Box(3)
    box.behaviour["web"] = lambda t: ("failed", 127, "command not found: nope") if \
        box.state.spec_of(t).command == "nope" else None
    box.create(V1.replace(replicas=6))
    box.settle(2)
    box.update(box.state.services["web"].spec.replace(
        command="nope", update=UpdateConfig(parallelism=2, failure_action="rollback")))
    box.settle(6)
    svc = box.state.services["web"]
    assert svc.update_state == "rollback_completed" and svc.version == 3
    assert svc.update_message == "rollback completed"
    assert len(box.running("web")) == 6
    assert all(box.state.spec_of(t).command == "srv" for t in box.running("web"))


def test_a_fixed_spec_resumes_a_paused_update():
    box = Box(3)
    box.behaviour["web"] = lambda t: ("failed", 1, "boom") if box.state.spec_of(t).args == ("bad",) else None
    box.create(V1.replace(replicas=3))
    box.settle(2)
    box.update(box.state.services["web"].spec.replace(args=("bad",)))
    box.settle(3)
    assert box.state.services["web"].update_state == "paused"
    box.update(box.state.services["web"].spec.replace(args=("good",)))
    box.settle(10)
    assert box.state.services["web"].update_state == "completed"
    assert {box.state.spec_of(t).args for t in box.running("web")} == {("good",)}
