"""Rolling updates and rollbacks as a pure state machine driven by task observations.

A service whose spec changed in a task-relevant way is ``updating`` (or, after a
rollback, ``rollback_started``); its tasks of older specs are *outdated*.  Each call
of :func:`step` looks at the tasks and says what to do now, Docker's way:

* a batch of ``parallelism`` outdated tasks (0 = all) is replaced once the previous
  batch is running and ``delay`` has passed since the last of it started:
  ``next batch at = max(started_at of this version's tasks) + delay``;
  outdated tasks that are not running go first;
* ``stop-first`` stops the outdated task as its replacement is placed;
  ``start-first`` keeps it until the replacement runs (and is not unhealthy);
* a replacement that fails before it ran for ``monitor`` seconds counts as a failed
  update; when ``failures / replacements > max_failure_ratio`` the failure action
  fires: ``pause``, ``rollback`` (to the previous spec, whose own ``rollback``
  config then paces it) or ``continue``; a failing rollback only pauses;
* with nothing outdated and nothing starting, the update is ``completed``.

Nothing is kept between calls: the progress is read from the tasks in the state,
so a new leader continues where the old one was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from p2pswarm.cluster.model import TASK_STATES, Service, Task

ACTIVE = {"updating": "", "rollback_started": "rollback_"}
"""Update states in which tasks are being replaced, and the prefix of their follow-up states."""


@dataclass(frozen=True, slots=True)
class UpdateStep:
    replace: tuple[str, ...] = ()
    """Outdated tasks whose slots get a replacement now (placement treats their slots as free)."""
    stop: tuple[tuple[str, str], ...] = ()
    """``(task id, reason)`` to stop now."""
    new_state: str | None = None
    """The service's next update state, if it changes."""
    message: str = ""
    rollback: bool = False
    """Roll the service back to its previous spec (failure action ``rollback``)."""
    wake_at: float | None = None
    """When a waiting batch becomes due."""


def outdated(service: Service, task: Task) -> bool:
    return outdated_version(service, task.version)


def outdated_version(service: Service, version: int) -> bool:
    """Whether tasks of spec ``version`` need replacing to run the service's current spec."""
    spec = service.spec_at(version)
    return spec is None or not spec.runs_like(service.spec)


def step(service: Service, tasks: Sequence[Task], now: float, up: Callable[[str | None], bool]) -> UpdateStep:
    """What the update of ``service`` does now; ``tasks`` are all its tasks, ``up(node)`` tells live nodes."""
    prefix = ACTIVE.get(service.update_state)
    if prefix is None:
        return UpdateStep()
    config = service.spec.update if prefix == "" else service.spec.rollback
    fresh = [t for t in tasks if t.version == service.version and not outdated(service, t)]
    old = [t for t in tasks if t.live and outdated(service, t)]

    failed = [t for t in fresh if _failed_in_monitor(t, config.monitor)]
    if failed and config.failure_action != "continue" \
            and len(failed) / max(1, len(fresh)) > config.max_failure_ratio:
        why = f"task {_label(failed[0])} failed: {failed[0].error or failed[0].state}"
        if config.failure_action == "rollback" and prefix == "":
            return UpdateStep(rollback=True, message=f"update rolled back: {why}")
        return UpdateStep(new_state=prefix + "paused", message=f"{'rollback' if prefix else 'update'} paused: {why}")

    running_fresh = {t.slot_key for t in fresh if t.live and t.state == "running" and t.health != "unhealthy"}
    superseded = tuple((t.id, f"updated to version {service.version}") for t in old
                       if t.slot_key in running_fresh)
    starting = [t for t in fresh if t.live and TASK_STATES.index(t.state) < TASK_STATES.index("running")]
    waiting = [t for t in old if t.slot_key not in running_fresh]
    in_hand = {t.slot_key for t in fresh if t.live}
    todo = [t for t in waiting if t.slot_key not in in_hand]
    if not waiting and not starting:
        done = "rollback_completed" if prefix else "completed"
        return UpdateStep(stop=superseded, new_state=done, message=f"{done.replace('_', ' ')}")
    if starting or not todo:
        return UpdateStep(stop=superseded)
    started = [t.started_at for t in fresh if t.started_at is not None]
    due = max(started) + config.delay if started else now
    if now < due:
        return UpdateStep(stop=superseded, wake_at=due)
    todo.sort(key=lambda t: (t.state == "running" and up(t.node), t.slot, t.node or "", t.id))
    batch = todo[:config.parallelism or len(todo)]
    stop = superseded
    if config.order == "stop-first":
        stop += tuple((t.id, f"updating to version {service.version}") for t in batch)
    return UpdateStep(replace=tuple(t.id for t in batch), stop=stop)


def _failed_in_monitor(task: Task, monitor: float) -> bool:
    """Failed, or exited while meant to run, before running ``monitor`` seconds (also once restarted)."""
    if task.state not in ("failed", "rejected") and not (task.state == "complete" and task.desired == "running"):
        return False
    ran = None if task.started_at is None or task.finished_at is None else task.finished_at - task.started_at
    return ran is None or ran < monitor


def _label(task: Task) -> str:
    return f"{task.service}.{task.slot or task.node}"
