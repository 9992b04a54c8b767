"""Workers outside the Raft group on real processes: 6 nodes, 3 voters + 1 learner + 2 workers.

The leader's autopilot keeps at most one learner (``up --max-learners 1``), so two nodes are workers:
they are in no Raft configuration, learn their tasks of a global service from the members, run them,
show as ``worker`` in ``node ls``, answer ``service ls`` through a member, follow a join-token rotation,
catch up by version after a partition, and keep their tasks running when the Raft group loses its quorum.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import pytest

from p2pswarm.testing.localcluster import LocalCluster, wait_until

from .cli_results import ok
from .test_services import APP, pid_alive, record_pids


@pytest.fixture
def small_group(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("w", numbered=True), node_args=("--max-learners", "1"))
    try:
        yield c
    finally:
        c.close()


def node_roles(cluster, node) -> dict[str, str] | None:
    result = cluster.cli("node", "ls", "--format", "json", "--data-dir", str(node.data_dir))
    if result.returncode != 0:
        return None
    return {m["name"]: m["role"] for m in json.loads(result.stdout) if m["status"] == "alive"}


def assignment_counters(node) -> dict[str, float]:
    """The node's ``p2pswarm_assignments_*_total`` counters from /metrics."""
    out = {}
    for line in node.api.get("/metrics").splitlines():
        if line.startswith("p2pswarm_assignments_") and "_total " in line:
            name, value = line.split()
            out[name[len("p2pswarm_assignments_"):-len("_total")]] = float(value)
    return out


def answers(row) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{row['port']}/", timeout=3) as resp:
            return json.load(resp)["task"] == row["id"]
    except OSError:
        return False


def test_workers_run_their_tasks_of_a_global_service_and_keep_them_without_quorum(small_group, task_pids):
    cluster = small_group
    nodes = cluster.start_joined(6)

    def settled():
        views = [node_roles(cluster, n) for n in nodes]
        if any(v is None or len(v) != 6 for v in views):
            return None
        counts = {r: sum(1 for x in views[0].values() if x == r) for r in ("leader", "voter", "learner", "worker")}
        same = all(v == views[0] for v in views)
        return views[0] if same and counts == {"leader": 1, "voter": 2, "learner": 1, "worker": 2} else None
    roles = wait_until(settled, 120, "3 voters, 1 learner and 2 workers, seen alike by all 6 nodes")
    workers = [n for n in nodes if roles[n.name] == "worker"]
    leader = next(n for n in nodes if roles[n.name] == "leader")
    dd = ("--data-dir", str(leader.data_dir))

    created = time.monotonic()
    ok(cluster.cli("service", "create", "agent", "--mode", "global", "--detach", *dd, "--", sys.executable, APP))

    def all_running():
        out = cluster.cli("service", "ps", "agent", "--format", "json", *dd)
        if out.returncode != 0:
            return None
        rows = [r for r in json.loads(out.stdout) if r["current"] and r["desired"] == "running"]
        good = [r for r in rows if r["state"] == "running" and r["port"] and answers(r)]
        return rows if len(good) == 6 and len({r["node_name"] for r in good}) == 6 else None
    rows = wait_until(all_running, 120, "a task of the global service running on each of the 6 nodes")
    print(f"global service running on 6 nodes (2 workers) {time.monotonic() - created:.2f} s after create")
    record_pids(cluster, rows, task_pids)
    on_workers = [r for r in rows if r["node_name"] in {w.name for w in workers}]
    assert len(on_workers) == 2

    # a worker holds no replica: `service ls` and `service ps` there are answered by a Raft member
    wdd = ("--data-dir", str(workers[1].data_dir))
    listed = json.loads(ok(cluster.cli("service", "ls", "--format", "json", *wdd)).stdout)
    assert [(s["name"], s["running"]) for s in listed] == [("agent", 6)], listed
    tasks = json.loads(ok(cluster.cli("service", "ps", "agent", "--format", "json", *wdd)).stdout)
    assert len([r for r in tasks if r["current"] and r["state"] == "running"]) == 6
    # a rotated join token reaches the workers with their part of the security record
    ok(cluster.cli("cluster", "join-token", "--rotate", "--quiet", *dd))
    wait_until(lambda: all(w.api.get("/v1/security")["token_generation"] == 2 for w in workers), 30,
               "both workers holding the rotated join token")

    # a worker cut off from everyone misses changes: the cluster declares it dead and orphans its task;
    # healed, it catches up by version (no second full resync) and runs the task placed on it anew
    cut = workers[0]
    old = next(r for r in on_workers if r["node_name"] == cut.name)
    cut.api.post("/v1/faults", {"isolated": True})
    wait_until(lambda: (leader.statuses() or {}).get(cut.name) == "dead", 60, f"{cut.name} seen dead")

    def old_task_orphaned():  # (healed before the scheduler's round, a node would simply keep its task)
        out = cluster.cli("service", "ps", "agent", "--format", "json", *dd)
        return out.returncode == 0 and any(r["id"] == old["id"] and r["state"] == "orphaned"
                                           for r in json.loads(out.stdout))
    wait_until(old_task_orphaned, 60, f"the task on {cut.name} orphaned")
    cut.api.request("DELETE", "/v1/faults")
    rows = wait_until(all_running, 120, "every node, the healed worker too, running the global service again")
    new = next(r for r in rows if r["node_name"] == cut.name)
    assert new["id"] != old["id"]
    record_pids(cluster, rows, task_pids)
    counters = assignment_counters(cut)
    assert counters.get("full_resyncs") == 1 and counters.get("deltas_applied", 0) >= 1, counters
    on_workers = [r for r in rows if r["node_name"] in {w.name for w in workers}]

    # two of the three voters die: no quorum; the workers' tasks keep running and serving
    victims = [n for n in nodes if roles[n.name] in ("leader", "voter")][:2]
    for victim in victims:
        cluster.kill(victim.index)
    wait_until(lambda: all((workers[0].statuses() or {}).get(v.name) == "dead" for v in victims), 60,
               "a worker to see both voters dead")
    time.sleep(1.0)
    for row in on_workers:
        assert answers(row), f"task {row['id']} on worker {row['node_name']} stopped without quorum"
        node = next(n for n in nodes if n.name == row["node_name"])
        assert pid_alive(int((node.data_dir / "tasks" / row["id"] / "pid").read_text()))
