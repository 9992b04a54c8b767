"""The progress display of `service create|update|scale` (no node: a scripted API)."""

from __future__ import annotations

import time as real_time
from types import SimpleNamespace

import click
import pytest

from p2pswarm.cli import service_cmds
from p2pswarm.cli.service_cmds import _Board, converge
from p2pswarm.cluster.spec import ServiceSpec

SPEC = ServiceSpec("web", "python", replicas=2).to_dict()


def info(running=0, version=1, update_state="", message="", spec=None, desired=2):
    spec = spec or {**SPEC, "update": {**SPEC["update"], "monitor": 2.0}}
    return {"name": "web", "version": version, "spec": spec, "update_state": update_state,
            "update_message": message, "desired": desired, "running": running, "running_current": running}


def row(slot, state, tid=None, version=1, current=True, desired="running", error=""):
    return {"id": tid or f"{slot}.{state}", "name": f"web.{slot}", "slot": slot, "node": "n1", "node_name": "n1",
            "current": current, "current_spec": True, "desired": desired, "state": state, "version": version,
            "error": error, "port": None, "health": None}


class Script:
    """Answers converge's two GETs per poll from a list of (info, rows) steps; the last one repeats."""

    def __init__(self, steps):
        self.steps, self.i = steps, -1

    def get(self, path):
        if path.endswith("/tasks"):
            return {"tasks": self.steps[min(self.i, len(self.steps) - 1)][1]}
        self.i += 1
        return self.steps[min(self.i, len(self.steps) - 1)][0]


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    fake = SimpleNamespace(monotonic=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s),
                           strftime=real_time.strftime, gmtime=real_time.gmtime)
    monkeypatch.setattr(service_cmds, "time", fake)
    return now


def test_each_slot_is_shown_until_converged_then_verified(clock, capsys):
    steps = [(info(0), []), (info(0), [row(1, "new"), row(2, "assigned")]),
             (info(1), [row(1, "running"), row(2, "starting")]), (info(2), [row(1, "running"), row(2, "running")])]
    converge(Script(steps), "web")
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "overall progress: 0 out of 2 tasks", "1/2: new", "2/2: new", "2/2: assigned",
        "overall progress: 1 out of 2 tasks", "1/2: running", "2/2: starting",
        "overall progress: 2 out of 2 tasks", "2/2: running",
        "verify: Waiting 2 seconds to verify that tasks are stable...", "verify: Service converged"]
    assert clock[0] >= 2.0  # the verify phase lasted the update monitor period


def test_a_slot_that_keeps_failing_ends_with_one_line(clock, capsys):
    failing = [row(1, "failed", "a", error="exit code 1"), row(1, "failed", "b", current=False, error="exit code 1"),
               row(1, "failed", "c", current=False, error="exit code 1"), row(2, "running")]
    with pytest.raises(click.ClickException) as exc:
        converge(Script([(info(1), failing[:1] + failing[3:]), (info(1), failing)]), "web")
    assert str(exc.value) == "task web.1 of web failed 3 times: exit code 1 (see `p2pswarm service ps web`)"
    assert "1/2: failed (exit code 1)" in capsys.readouterr().err


def test_no_restart_means_the_first_failure_is_final(clock):
    spec = {**SPEC, "restart": {**SPEC["restart"], "condition": "none"}}
    with pytest.raises(click.ClickException, match="failed once: executable not found"):
        converge(Script([(info(0, spec=spec), [row(1, "failed", error="executable not found")])]), "web")


def test_failures_of_an_update_are_left_to_its_failure_action(clock):
    failing = [row(1, "failed", c, version=2, current=c == "a", error="boom") for c in "abc"]
    steps = [(info(0, version=2, update_state="updating"), failing),
             (info(0, version=2, update_state="paused", message="update paused: task web.1 failed: boom"), failing)]
    with pytest.raises(click.ClickException, match="update of web paused: update paused: task web.1 failed"):
        converge(Script(steps), "web", 2)
    rolled = [(info(2, version=3, update_state="rollback_completed", message="update rolled back: boom"), [])]
    with pytest.raises(click.ClickException, match="update of web was rolled back"):
        converge(Script(rolled), "web", 2)


def test_on_a_terminal_the_block_is_redrawn_in_place(monkeypatch, capsys):
    monkeypatch.setattr(service_cmds, "sys", SimpleNamespace(stderr=SimpleNamespace(isatty=lambda: True)))
    board = _Board()
    board.show([("a", "overall progress: 0 out of 1 tasks", ""), ("1", "1/1: new       [====>] ", "")])
    board.show([("a", "overall progress: 1 out of 1 tasks", ""), ("1", "1/1: running   [=====>]", "")])
    err = capsys.readouterr().err
    assert err.count("\x1b[2A") == 1 and err.endswith("1/1: running   [=====>]\n\x1b[J")
    assert service_cmds._bar("running") == "=" * 49 + ">" and service_cmds._bar("failed").strip() == ""


def test_a_huge_service_shows_the_overall_line_and_its_scheduling_error(clock, capsys):
    spec = {**SPEC, "replicas": 100_000, "update": {**SPEC["update"], "monitor": 0.0}}
    note = "scheduling: proposal failed: this node is not the leader"
    steps = [({**info(0, spec=spec, desired=100_000), "scheduling_error": note}, [row(1, "new")]),
             (info(100_000, spec=spec, desired=100_000), [])]
    converge(Script(steps), "web")
    assert capsys.readouterr().err.splitlines() == [
        "overall progress: 0 out of 100000 tasks", note, "overall progress: 100000 out of 100000 tasks",
        "verify: Waiting 0 seconds to verify that tasks are stable...", "verify: Service converged"]


def test_a_scale_down_counts_at_most_the_wanted_tasks_and_waits_for_the_extra_ones_to_stop(clock, capsys):
    """`scale web=2` from 4 once printed "4 out of 2 tasks" and called the service converged at once."""
    four = [row(s, "running") for s in (1, 2, 3, 4)]
    stopped = four[:2] + [row(s, "shutdown", desired="shutdown") for s in (3, 4)]
    steps = [({**info(2), "running": 4, "running_current": 4}, four), (info(2), stopped)]
    converge(Script(steps), "web")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "overall progress: 2 out of 2 tasks (2 stopping)"
    assert err.index("overall progress: 2 out of 2 tasks") < err.index(
        "verify: Waiting 2 seconds to verify that tasks are stable...")
    assert not any(" out of " in line and int(line.split()[2]) > 2 for line in err)


def test_a_slot_shows_its_running_task_even_when_a_stopped_one_is_listed_first(clock, capsys):
    rows = [row(1, "shutdown", "old", desired="shutdown"), row(1, "running", "new", current=False)]
    converge(Script([(info(1, desired=1, spec={**SPEC, "replicas": 1, "update": {**SPEC["update"], "monitor": 0}}),
                      rows)]), "web")
    err = capsys.readouterr().err.splitlines()
    assert "1/1: running" in err and "1/1: new" not in err
