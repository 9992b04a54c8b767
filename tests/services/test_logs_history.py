"""Log history: `service logs --since/--until`, and an ended task's logs kept for its service's
`log_retention` after the cluster state forgets the task (then deleted)."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

import pytest

from p2pswarm.agent.core import AgentCore, Assignment, Forget, RestartPolicy
from p2pswarm.api.routes import Router
from p2pswarm.api.server import HttpError
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.runtime import retention
from p2pswarm.runtime.base import TaskSpec
from p2pswarm.runtime.logs import TaskFolders

from .test_logs import call, cluster, write_task


def texts(got: dict) -> list[tuple[str, str]]:
    return [(line["node"], line["text"]) for line in got["lines"]]


def test_since_and_until_keep_the_lines_that_arrived_between_them(tmp_path):
    driver, nodes, net = cluster(tmp_path, dead="cd")  # a's lines at 1000.1, 1001.1, 1002.1; b's 0.1 s later
    got = asyncio.run(nodes["a"].logs.gather("web", since=1001.0, until=1001.5))
    assert texts(got) == [("a", "bye"), ("b", "bye")]
    assert texts(asyncio.run(nodes["a"].logs.gather("web", since=1002.15))) == [("b", "oops b")]
    assert texts(asyncio.run(nodes["a"].logs.gather("web", until=1000.15))) == [("a", "hello from a")]


def test_the_api_takes_docker_times_and_refuses_a_bad_one_in_one_line(tmp_path):
    driver, nodes, net = cluster(tmp_path, dead="cd")
    got = call(Router(nodes["a"]), "GET", "/v1/services/web/logs", query="since=1970-01-01T00:16:41.5Z")
    assert [line["text"] for line in got["lines"]] == ["oops a", "oops b"]
    with pytest.raises(HttpError) as err:
        call(Router(nodes["a"]), "GET", "/v1/services/web/logs", query="since=last+tuesday")
    assert err.value.status == 400 and "since:" in str(err.value) and "RFC 3339" in str(err.value)
    assert "\n" not in str(err.value)


def retired_spec(slot: int, keep: float) -> SimpleNamespace:
    return SimpleNamespace(service="web", slot=slot, log_retention=keep)


def test_a_task_the_state_forgot_is_still_read_from_a_node_that_keeps_its_logs(tmp_path):
    driver, nodes, net = cluster(tmp_path, dead="cd")
    gone = next(t for t in driver.cluster.tasks.values() if t.node == "b")
    run = asyncio.run
    assert run(driver.write_cluster(cmd.report_task_status("f", 2.0, gone.id, "failed", node="b", exit_code=1))).ok
    assert run(driver.write_cluster(cmd.set_task_desired("r", 2.0, [gone.id], "remove"))).ok
    assert gone.id not in driver.cluster.tasks  # b holds no task of web in the state any more
    assert texts(run(nodes["a"].logs.gather("web"))) == [("a", "hello from a"), ("a", "bye"), ("a", "oops a")]
    folder = tmp_path / "b" / "tasks" / gone.id
    (folder / "pid").write_text("123")
    assert retention.retire(folder, retired_spec(gone.slot, 3600.0), time.time())
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["retired.json", "stdout.log", "stdout.idx", "stderr.log", "stderr.idx"])  # the logs, nothing else
    got = run(nodes["a"].logs.gather("web"))
    assert ("b", "hello from b") in texts(got) and ("b", "oops b") in texts(got)
    assert not [w for w in got["warnings"] if "node-b" in w]
    again = run(nodes["a"].logs.gather("web", got["cursor"]))  # following does not read them twice
    assert again["lines"] == []


def test_retention_counts_from_the_last_output_and_the_sweep_deletes_what_is_over(tmp_path):
    tasks = tmp_path / "tasks"
    for tid in ("fresh", "stale", "zero"):
        write_task(tasks / tid, out=[b"line\n"])
    now = time.time()
    for f in (tasks / "stale").iterdir():
        os.utime(f, (now - 7200, now - 7200))
    assert retention.retire(tasks / "fresh", retired_spec(1, 3600.0), now)
    assert not retention.retire(tasks / "stale", retired_spec(2, 3600.0), now)  # ended 2 h ago: nothing to keep
    assert not retention.retire(tasks / "zero", retired_spec(3, 0.0), now)
    assert retention.retired_tasks(tasks, "web") == [("fresh", 1)] and retention.retired_tasks(tasks, "api") == []
    assert retention.sweep(tasks, now + 60) == []
    assert retention.sweep(tasks, now + 3601) == ["fresh"] and not (tasks / "fresh").exists()


def test_the_runtime_retires_a_forgotten_tasks_folder_and_deletes_it_without_a_spec(tmp_path):
    folders = TaskFolders()
    folders.tasks_dir, folders.live, folders.config = tmp_path, {}, SimpleNamespace(log_keep=3)
    for tid in ("kept", "dropped"):
        write_task(tmp_path / tid, out=[b"x\n"])
    folders.retire_task_dir("kept", retired_spec(1, 3600.0))
    folders.retire_task_dir("dropped", None)
    assert (tmp_path / "kept" / "stdout.log").exists() and not (tmp_path / "dropped").exists()
    assert folders.retired("web") == [("kept", 1)]


def test_the_agent_hands_the_runtime_the_spec_of_a_task_it_forgets():
    spec = TaskSpec("t1", "web", 1, "n1", ("srv",), log_retention=120.0)
    core = AgentCore()
    core.assign(0, [Assignment(spec, 1, "shutdown", RestartPolicy(condition="none"))])
    core.assign(1, [])
    (forget,) = core.take_actions()
    assert forget == Forget("t1") and forget.spec is spec and forget.spec.log_retention == 120.0


def test_log_retention_is_a_spec_field_encoded_only_when_not_the_default():
    spec = ServiceSpec("web", "srv")
    assert "log_retention" not in spec.to_dict() and spec.log_retention == 3600.0
    longer = spec.replace(log_retention=86400.0)
    assert ServiceSpec.from_dict(longer.to_dict()).log_retention == 86400.0
    assert longer.runs_like(spec)  # changing it restarts no task
