"""Services on real processes: create, serve, self-heal after a node is killed, scale, remove."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

from p2pswarm.testing.localcluster import REPO, cli_env, wait_until

from .cli_results import ok, one_line_error

APP = str(REPO / "tests" / "apps" / "http_server.py")
LOG_LINE = re.compile(r"^(web\.\d+)\.(\S+)@(n\d) \| listening on (\d+)$", re.M)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(cluster, n: int):
    return cluster.start_group(n)


def tasks(cluster, node, name="web"):
    out = ok(cluster.cli("service", "ps", name, "--format", "json", "--data-dir", str(node.data_dir)))
    return json.loads(out.stdout)


def running(cluster, node, count, avoid=None):
    """The current running tasks if exactly ``count`` run (none on ``avoid``) and all answer HTTP, else None."""
    rows = [r for r in tasks(cluster, node) if r["current"] and r["desired"] == "running"]
    if len(rows) != count or any(r["state"] != "running" or not r["port"] or r["node_name"] == avoid
                                 for r in rows):
        return None
    for r in rows:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{r['port']}/", timeout=2) as resp:
                if json.load(resp)["task"] != r["id"]:
                    return None
        except OSError:
            return None
    return rows


def record_pids(cluster, rows, pids):
    for r in rows:
        node = next(n for n in cluster.nodes.values() if n.name == r["node_name"])
        pids.add(int((node.data_dir / "tasks" / r["id"] / "pid").read_text()))


def test_service_lifecycle_heals_scales_and_leaves_no_processes(cluster, task_pids):
    nodes = start(cluster, 5)
    dd0 = ("--data-dir", str(nodes[0].data_dir))
    created = ok(cluster.cli("service", "create", "web", "--replicas", "6", "--update-monitor", "1s", *dd0, "--",
                             sys.executable, APP, timeout=180))
    progress = created.stderr.splitlines()  # not a terminal: one line per change
    assert progress[0].startswith("overall progress: ") and "6/6: running" in progress, created.stderr
    assert "overall progress: 6 out of 6 tasks" in progress and progress[-2:] == [
        "verify: Waiting 1 seconds to verify that tasks are stable...", "verify: Service converged"], created.stderr
    rows = wait_until(lambda: running(cluster, nodes[0], 6), 60, "6 tasks running and answering HTTP")
    record_pids(cluster, rows, task_pids)

    # logs of the tasks on every node, merged, through the one node the CLI talks to
    def all_listening():
        out = ok(cluster.cli("service", "logs", "web", *dd0))
        return out if len(LOG_LINE.findall(out.stdout)) == 6 else None
    logs = wait_until(all_listening, 30, "every task's 'listening' line in service logs")
    found = LOG_LINE.findall(logs.stdout)
    assert {(f"web.{r['slot']}", r["id"], r["node_name"], str(r["port"])) for r in rows} == set(found)
    assert len({node for _, _, node, _ in found}) == 5 and "warning" not in logs.stderr

    # SIGKILL the node holding 2 of the 6 (6 tasks spread over 5 nodes: one node has 2);
    # the CLI then talks to another node
    held = {n.name: sum(r["node_name"] == n.name for r in rows) for n in nodes}
    victim = next(n for n in nodes if held[n.name] == 2)
    victim_name = victim.name
    cli_node = next(n for n in nodes if n is not victim)
    dd = ("--data-dir", str(cli_node.data_dir))
    listing = json.loads(ok(cluster.cli("service", "ls", "--format", "json", *dd)).stdout)
    assert [(s["name"], s["running"], s["desired"]) for s in listing] == [("web", 6, 6)]
    victim_pids = {int((victim.data_dir / "tasks" / r["id"] / "pid").read_text())
                   for r in rows if r["node_name"] == victim_name}
    assert len(victim_pids) == 2
    cluster.kill(victim.index)
    wait_until(lambda: not any(map(pid_alive, victim_pids)), 30, "the killed node's tasks to die with it")
    rows = wait_until(lambda: running(cluster, cli_node, 6, avoid=victim_name), 90,
                      "6 tasks running again, none on the killed node")
    record_pids(cluster, rows, task_pids)
    history = tasks(cluster, cli_node)
    gone = [r for r in history if r["node_name"] == victim_name and not r["current"]]
    assert len(gone) == 2, history
    dead_node = ok(cluster.cli("service", "logs", "web", *dd))
    assert f"warning: node {victim_name} is dead: the logs of its tasks are not available" in dead_node.stderr
    assert len(LOG_LINE.findall(dead_node.stdout)) == 6  # the 4 old ones and the 2 replacements

    # follow: once it has printed what is there, the lines of the tasks a scale-up starts appear;
    # Ctrl-C ends it quietly
    follower = subprocess.Popen(cluster.command("service", "logs", "web", "-f", *dd), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=cli_env(),
                                stdin=subprocess.DEVNULL)
    cluster.pids.add(follower.pid)
    followed: list[str] = []
    threading.Thread(target=lambda: followed.extend(iter(follower.stdout.readline, "")), daemon=True).start()
    try:
        wait_until(lambda: len(LOG_LINE.findall("".join(followed))) >= 6, 30, "logs -f to print the 6 tasks' lines")
        ok(cluster.cli("service", "scale", "web=10", *dd, timeout=180))
        rows = wait_until(lambda: running(cluster, cli_node, 10, avoid=victim_name), 60, "10 tasks running")
        record_pids(cluster, rows, task_pids)
        wait_until(lambda: {t for _, t, _, _ in LOG_LINE.findall("".join(followed))} >= {r["id"] for r in rows},
                   30, "every new task's line in logs -f")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=30)
    ok(cluster.cli("service", "scale", "web=3", "--detach", *dd))
    rows = wait_until(lambda: running(cluster, cli_node, 3), 60, "3 tasks running")
    keep = set()
    record_pids(cluster, rows, keep)
    wait_until(lambda: not any(pid_alive(p) for p in task_pids - keep), 60, "scaled-down tasks to stop")

    ok(cluster.cli("service", "rm", "web", *dd))
    wait_until(lambda: not any(map(pid_alive, task_pids)), 60, "every task process to stop after service rm")
    wait_until(lambda: json.loads(ok(cluster.cli("service", "ls", "--format", "json", *dd)).stdout) == [], 30,
               "the service to disappear")

    bad = one_line_error(cluster.cli("service", "create", "bad", "--replicas", "-1", *dd, "--", "true"))
    assert "replicas" in bad
    bad = one_line_error(cluster.cli("service", "create", "bad", "--constraint", "zone=a", *dd, "--", "true"))
    assert "constraints" in bad


def test_rolling_update_failed_update_rolls_back_and_drain_moves_tasks(cluster, task_pids):
    nodes = start(cluster, 3)
    dd = ("--data-dir", str(nodes[1].data_dir))
    ok(cluster.cli("service", "create", "web", "--replicas", "4", "--detach", *dd, "--", sys.executable, APP))
    record_pids(cluster, wait_until(lambda: running(cluster, nodes[1], 4), 60, "4 tasks running"), task_pids)

    updated = ok(cluster.cli("service", "update", "web", "--update-parallelism", "2", "--update-monitor", "1s",
                             "--env", "COLOUR=blue", *dd, timeout=180))
    assert updated.stderr.splitlines()[-1] == "verify: Service converged", updated.stderr
    rows = wait_until(lambda: running(cluster, nodes[1], 4), 60, "4 updated tasks running")
    record_pids(cluster, rows, task_pids)
    assert {r["version"] for r in rows} == {2}
    spec = json.loads(ok(cluster.cli("service", "inspect", "web", *dd)).stdout)["spec"]
    assert ["COLOUR", "blue"] in spec["env"]

    failed = cluster.cli("service", "update", "web", "--update-failure-action", "rollback", *dd, "--",
                         "/nonexistent/server", timeout=180)
    assert failed.returncode == 1 and "error: update of web was rolled back" in failed.stderr.splitlines()[-1]
    rows = wait_until(lambda: running(cluster, nodes[1], 4), 60, "4 tasks running the rolled-back spec")
    record_pids(cluster, rows, task_pids)
    info = json.loads(ok(cluster.cli("service", "inspect", "web", *dd)).stdout)
    assert info["update_state"] == "rollback_completed" and info["spec"]["command"] == sys.executable
    assert any(r["state"] in ("failed", "rejected") and r["error"] for r in tasks(cluster, nodes[1]))

    busy = next(r["node_name"] for r in rows)
    ok(cluster.cli("node", "update", busy, "--availability", "drain", *dd))
    record_pids(cluster, wait_until(lambda: running(cluster, nodes[1], 4, avoid=busy), 60,
                                    f"4 tasks running off the drained node {busy}"), task_pids)
    listing = json.loads(ok(cluster.cli("node", "ls", "--format", "json", *dd)).stdout)
    assert {m["name"]: m["availability"] for m in listing}[busy] == "drain"  # drain shows in `node ls`

    # SIGTERM a node that runs tasks: it stops them before it exits (nothing orphaned)
    rows = running(cluster, nodes[1], 4) or []
    leaving = next(n for n in nodes if n is not nodes[1] and any(r["node_name"] == n.name for r in rows))
    its_pids = {int((leaving.data_dir / "tasks" / r["id"] / "pid").read_text())
                for r in rows if r["node_name"] == leaving.name}
    leaving.proc.send_signal(signal.SIGTERM)
    assert leaving.proc.wait(timeout=60) == 0
    assert not any(map(pid_alive, its_pids))
    # A voter just left: the Raft group may be electing a leader or shrinking for a moment,
    # and a write in that window fails with the no-quorum line, as a user would see; retry.
    wait_until(lambda: cluster.cli("service", "rm", "web", *dd).returncode == 0, 60,
               "service rm to be accepted after a voter left")
    wait_until(lambda: not any(map(pid_alive, task_pids)), 60, "every task process to stop after service rm")


def test_tasks_keep_running_without_raft_quorum(cluster, task_pids):
    nodes = start(cluster, 3)
    survivor = nodes[2]
    dd = ("--data-dir", str(survivor.data_dir))
    ok(cluster.cli("service", "create", "web", "--replicas", "3", "--detach", *dd, "--", sys.executable, APP))
    rows = wait_until(lambda: (r := running(cluster, survivor, 3)) and any(x["node_name"] == survivor.name
                                                                             for x in r) and r, 60,
                      "3 tasks running, one on the survivor")
    record_pids(cluster, rows, task_pids)
    mine = [r for r in rows if r["node_name"] == survivor.name]
    for node in nodes[:2]:
        cluster.kill(node.index)
    wait_until(lambda: (survivor.statuses() or {}).get("n0") == "dead" and survivor.statuses().get("n1") == "dead",
               60, "the survivor to see both other nodes dead")
    for r in mine:
        with urllib.request.urlopen(f"http://127.0.0.1:{r['port']}/", timeout=5) as resp:
            assert json.load(resp)["task"] == r["id"]
    assert all(r["state"] == "running" for r in tasks(cluster, survivor) if r["id"] in {m["id"] for m in mine})
