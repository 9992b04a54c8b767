"""`p2pswarm top` without a cluster: the screen from a canned /v1/top answer, the payload from a real
cluster state, and `--once` against a fake node's API server."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from p2pswarm.api.routes import Router
from p2pswarm.api.server import ApiServer, Request
from p2pswarm.api.top_routes import top_payload
from p2pswarm.cli.main import main
from p2pswarm.cli.top_cmds import render
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.state import ClusterState

pytestmark = pytest.mark.timeout(30)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NOW = 1_700_000_000.0

PAYLOAD = {
    "version": 1, "time": NOW,
    "node": {"id": "aaaa000000000001", "name": "n1", "addr": "127.0.0.2:7946", "version": "0.1.0", "joined": True,
             "leaving": False, "cluster_size": 3,
             "members_by_status": {"alive": 2, "suspect": 1, "dead": 1, "left": 0}},
    "cluster": {"cluster_id": "c0ffee0123456789", "leader": "aaaa000000000001", "leader_name": "n1", "term": 7,
                "commit_index": 1234, "applied_index": 1230, "role": "leader", "error": None, "voters": 3,
                "voters_alive": 2, "learners": 1},
    "nodes": [
        {"id": "aaaa000000000001", "name": "n1", "addr": "127.0.0.2:7946", "status": "alive", "role": "leader",
         "rtt_ms": None, "self": True, "labels": {"zone": "a"}, "availability": "active", "status_for_s": 50.0,
         "tasks_running": 2, "tasks_total": 2,
         "tasks": [{"name": "web.1", "service": "web", "slot": 1, "state": "running", "port": 31001,
                    "health": "healthy"},
                   {"name": "agent", "service": "agent", "slot": 0, "state": "running", "port": None,
                    "health": None}]},
        {"id": "bbbb000000000002", "name": "n2", "addr": "127.0.0.3:7946", "status": "suspect", "role": "voter",
         "rtt_ms": 0.42, "self": False, "labels": {}, "availability": "drain", "status_for_s": 2.4,
         "tasks_running": 0, "tasks_total": 1,
         "tasks": [{"name": "web.2", "service": "web", "slot": 2, "state": "starting", "port": None,
                    "health": None}]},
        {"id": "cccc000000000003", "name": "n3", "addr": "127.0.0.4:7946", "status": "dead", "role": "voter",
         "rtt_ms": 1.5, "self": False, "labels": {"zone": "b", "gpu": "1"}, "availability": "active",
         "status_for_s": 300.0, "tasks_running": 0, "tasks_total": 0, "tasks": []},
        {"id": "dddd000000000004", "name": "n4", "addr": "127.0.0.5:7946", "status": "alive", "role": "learner",
         "rtt_ms": 120.0, "self": False, "labels": {}, "availability": "active", "status_for_s": 1.0,
         "tasks_running": 1, "tasks_total": 1,
         "tasks": [{"name": "agent", "service": "agent", "slot": 0, "state": "running", "port": None,
                    "health": None}]},
    ],
    "services": [
        {"name": "agent", "mode": "global", "version": 1, "running": 2, "desired": 2, "ports": [],
         "update_state": "", "update_message": ""},
        {"name": "web", "mode": "replicated", "version": 3, "running": 1, "desired": 3,
         "ports": ["8080:dynamic"], "update_state": "paused", "update_message": "task web.2 failed"},
    ],
    "unassigned": [{"name": "web.3", "service": "web", "slot": 3, "state": "new", "port": None, "health": None}],
}


def rows(text: str) -> dict[str, str]:
    """First word of each line of the nodes table -> the line."""
    table = text[text.index("NODES"):text.index("SERVICES")]
    return {line.split()[0]: line for line in table.splitlines() if line.strip()}


def test_render_shows_header_nodes_services_and_tasks():
    text = render(PAYLOAD, now=NOW, interval=2)
    assert not ANSI.search(text), "no escape codes without colour"
    lines = text.splitlines()
    assert lines[0].startswith("cluster c0ffee0123456789  leader n1  term 7  commit 1234  "
                               "members 2 alive, 1 suspect, 1 dead")
    assert "applied 1230" in lines[1] and "voters 2/3 alive, learners 1" in lines[1] and "every 2s" in lines[1]
    assert "q quits" not in text  # keys are only shown on the live screen
    by_first = rows(text)
    assert re.match(r"n1 \*\s+aaaa000000000001\s+127\.0\.0\.2:7946\s+alive\s+leader\s+-\s+2/2\s+zone=a$",
                    by_first["n1"])
    assert re.search(r"suspect 2s \(drain\)\s+voter\s+0\.4ms\s+0/1\s+-$", by_first["n2"])
    assert re.search(r"dead 5m\s+voter\s+1\.5ms\s+0/0\s+gpu=1,zone=b$", by_first["n3"])
    assert re.search(r"alive\s+learner\s+120ms\s+1/1", by_first["n4"])
    assert "NODES (4)" in text and "SERVICES (2)" in text
    assert re.search(r"^agent\s+global\s+2/2\s+-\s+-$", text, re.M)
    assert re.search(r"^web\s+replicated\s+1/3\s+8080:dynamic\s+paused: task web\.2 failed$", text, re.M)
    tasks = text[text.index("TASKS PER NODE"):].splitlines()
    assert tasks[1].split(None, 1) == ["n1", "web.1 running :31001 (healthy)  agent running"]
    assert tasks[2].split(None, 1) == ["n2", "web.2 starting"]
    assert tasks[3].split(None, 1) == ["n3", "-"]
    assert tasks[5] == "(not placed)  web.3 new"
    # columns line up: every node row starts its ID column at the same place
    assert len({by_first[n].index(i * 4) for n, i in (("n1", "a"), ("n2", "b"), ("n3", "c"))}) == 1


def test_render_colours_status_only_when_asked():
    text = render(PAYLOAD, now=NOW, color=True)
    assert "\x1b[32malive\x1b[0m" in text
    assert "\x1b[33msuspect 2s (drain)\x1b[0m" in text
    assert "\x1b[31mdead 5m\x1b[0m" in text
    assert "\x1b[33m1/3\x1b[0m" in text and "\x1b[32m2/2\x1b[0m" in text
    assert "\x1b[31mpaused: task web.2 failed\x1b[0m" in text
    plain = ANSI.sub("", text)
    assert plain.splitlines()[4:] == render(PAYLOAD, now=NOW).splitlines()[4:]


def test_render_fits_the_window_and_wraps_tasks():
    many = dict(PAYLOAD, nodes=[dict(PAYLOAD["nodes"][0], tasks=PAYLOAD["nodes"][0]["tasks"] * 6)], unassigned=[])
    text = render(many, now=NOW, width=60, color=True)
    plain = ANSI.sub("", text).splitlines()
    assert max(len(line) for line in plain) <= 60
    tasks = plain[plain.index("TASKS PER NODE") + 1:]
    assert tasks[0].startswith("n1  web.1 running") and tasks[1].startswith("    ")  # continued, indented
    assert sum(line.count("running") for line in tasks) == 12
    narrow = render(PAYLOAD, now=NOW, width=60).splitlines()
    assert narrow[0] == "cluster c0ffee0123456789  leader n1  term 7  commit 1234"
    assert narrow[1].startswith("members 2 alive, 1 suspect, 1 dead")  # the counts stay visible
    assert narrow[5].split() == ["NAME", "STATUS", "ROLE", "RTT", "TASKS", "LABELS"]  # ID and ADDRESS gave way
    assert re.match(r"n2\s+suspect 2s \(drain\)\s+voter\s+0\.4ms\s+0/1\s+-$", narrow[7])
    assert "ADDRESS" in render(PAYLOAD, now=NOW, width=100) and "ID" in render(PAYLOAD, now=NOW, width=120)
    short = render(PAYLOAD, now=NOW, width=80, height=10).splitlines()
    assert len(short) == 10 and re.fullmatch(r"\.\.\. \d+ more lines \(enlarge the window\)", short[-1])


def test_render_unreachable_node_keeps_the_last_data():
    text = render(PAYLOAD, error="no p2pswarm node is running with data dir /d", fetched_at=NOW - 12, now=NOW,
                  interval=1)
    lines = text.splitlines()
    assert lines[0] == "node not reachable: no p2pswarm node is running with data dir /d (retrying every 1s)"
    assert lines[1].startswith("showing the last data, from ") and lines[1].endswith("(12s ago)")
    assert "NODES (4)" in text
    assert render(None, error="boom", now=NOW, color=True).startswith("\x1b[31mnode not reachable: boom")
    assert render(None, now=NOW, source="/d") == "connecting to the local node at /d..."


def test_render_tolerates_a_node_without_raft_and_missing_fields():
    text = render({"node": {"name": "n9", "members_by_status": {"alive": 1}}, "nodes": [{"name": "n9"}]}, now=NOW)
    assert text.splitlines()[0].startswith("cluster -  no Raft group on this node yet")
    assert "no services" in text
    assert re.search(r"^n9\s+\?\s+-\s+unknown\s+-\s+-\s+0/0\s+-$", text, re.M)


# ------------------------------------------------------------ the endpoint, from a real cluster state

class FakeDriver:
    def __init__(self):
        self.cluster = ClusterState()
        self.index = 0

    def apply(self, command):
        self.index += 1
        result = self.cluster.apply(command, 1, self.index)
        assert result.ok, result.error
        return result

    def status(self):
        return {"cluster_id": "c1", "id": "node-a", "role": "leader", "leader": "node-a", "leader_name": "a",
                "term": 1, "commit_index": self.index, "applied_index": self.index, "last_index": self.index,
                "snapshot_index": 0, "error": None,
                "members": [{"id": "node-a", "role": "voter", "health": "alive"},
                            {"id": "node-b", "role": "voter", "health": "suspect"},
                            {"id": "node-c", "role": "learner", "health": "alive"}]}


def fake_node():
    driver = FakeDriver()
    driver.apply(cmd.update_node("c1", 1.0, "node-a", name="a", labels={"zone": "x"}))
    driver.apply(cmd.update_node("c2", 1.0, "node-b", name="b"))
    driver.apply(cmd.update_node("c3", 1.0, "node-c", name="c"))
    driver.apply(cmd.create_service("c4", 2.0, ServiceSpec("web", "python", ("app.py",), replicas=3)))
    driver.apply(cmd.assign_tasks("c5", 3.0, [1, driver.index], [
        cmd.placement("web", 1, 1, "node-a"), cmd.placement("web", 1, 2, "node-b"),
        cmd.placement("web", 1, 3, None, message="no node fits")]))
    tasks = {t.slot: t for t in driver.cluster.tasks.values()}
    driver.apply(cmd.report_task_status("c6", 4.0, tasks[1].id, "running", node="node-a", port=30001))
    driver.apply(cmd.update_node("c7", 5.0, "node-b", availability="drain"))
    views = [{"id": "node-a", "name": "a", "addr": "127.0.0.2:1", "status": "alive", "role": "leader",
              "rtt_ms": None, "self": True, "labels": {"os": "linux"}, "status_for_s": 9.0},
             {"id": "node-b", "name": "b", "addr": "127.0.0.3:1", "status": "suspect", "role": "voter",
              "rtt_ms": 0.5, "self": False, "labels": {}, "status_for_s": 1.0}]
    info = {"id": "node-a", "name": "a", "addr": "127.0.0.2:1", "version": "0.1.0", "joined": True,
            "leaving": False, "cluster_size": 2, "members_by_status": {"alive": 1, "suspect": 1, "dead": 0,
                                                                        "left": 0}}
    return SimpleNamespace(info=lambda: info, member_views=lambda: views, raft_driver=lambda: driver)


def test_top_payload_from_a_cluster_state():
    node = fake_node()
    payload = top_payload(node)
    nodes = {n["name"]: n for n in payload["nodes"]}
    assert list(nodes) == ["a", "b", "c"]  # c is in the cluster state but not (yet) in SWIM
    assert nodes["a"]["labels"] == {"os": "linux", "zone": "x"}
    assert (nodes["a"]["tasks_running"], nodes["a"]["tasks_total"]) == (1, 1)
    assert (nodes["b"]["tasks_running"], nodes["b"]["tasks_total"], nodes["b"]["availability"]) == (0, 1, "drain")
    assert (nodes["c"]["status"], nodes["c"]["addr"], nodes["c"]["tasks"]) == ("unknown", None, [])
    assert [t["name"] for t in payload["unassigned"]] == ["web.3"]
    assert payload["cluster"]["voters"] == 2 and payload["cluster"]["voters_alive"] == 1
    assert payload["services"][0]["running"] == 1 and payload["services"][0]["desired"] == 3
    text = render(payload, now=NOW)
    assert "a *" in text and "web.1 running :30001" in text and "(not placed)  web.3 new" in text

    response = Router(node)(Request("GET", "/v1/top", {}))
    assert response.status == 200 and b'"unassigned"' in response.body


def test_top_payload_before_raft():
    node = fake_node()
    node.raft_driver = lambda: None
    payload = top_payload(node)
    assert payload["cluster"] is None and payload["services"] == [] and len(payload["nodes"]) == 2


def test_once_prints_one_plain_snapshot_and_fails_cleanly_without_a_node(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["top", "--once", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: node not reachable: no p2pswarm node is running with data dir "
                                     f"{tmp_path / 'none'} (start one with `p2pswarm up`)")

    node = fake_node()

    async def serve():
        server = ApiServer(str(tmp_path / "api.sock"), Router(node))
        await server.start()
        try:
            return await asyncio.to_thread(runner.invoke, main, ["top", "--data-dir", str(tmp_path)])
        finally:
            await server.close()
    result = asyncio.run(serve())
    assert result.exit_code == 0, result.output
    assert not ANSI.search(result.output)  # not a terminal: one plain snapshot
    assert result.output.startswith("cluster c1  leader a  term 1")
    assert "web.1 running :30001" in result.output
