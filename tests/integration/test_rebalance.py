"""A node that returns after a crash gets tasks again (bounded rebalancing), and `node rm` of a
drained live node takes it out of the cluster state and the Raft group."""

from __future__ import annotations

import json
import sys
from collections import Counter

from p2pswarm.api.client import ApiError
from p2pswarm.scheduler.reconcile import ReconcileConfig
from p2pswarm.testing.localcluster import wait_until

from .test_services import APP, ok, one_line_error, record_pids, start

MAX_MOVES = ReconcileConfig().max_moves


def on(rows, name):
    return [r for r in rows if r["node_name"] == name]


def api_tasks(node):
    """`service ps web --format json`, read from the node's API in-process (no CLI start per poll)."""
    try:
        return node.api.get("/v1/services/web/tasks")["tasks"]
    except ApiError:
        return []


def placed(node, count, avoid=None, want=None):
    """The current tasks meant to run if exactly ``count`` run (none on ``avoid``, ``want`` on ``want[0]``)."""
    rows = [r for r in api_tasks(node) if r["current"] and r["desired"] == "running"]
    if len(rows) != count or any(r["state"] != "running" or r["node_name"] == avoid for r in rows):
        return None
    if want is not None and len(on(rows, want[0])) != want[1]:
        return None
    return rows


def test_a_returning_node_gets_tasks_back_within_the_move_bound_and_node_rm(cluster, task_pids):
    nodes = start(cluster, 3)
    cli_node, victim = nodes[0], nodes[2]
    dd = ("--data-dir", str(cli_node.data_dir))
    ok(cluster.cli("service", "create", "web", "--replicas", "6", "--detach", *dd, "--", sys.executable, APP))
    rows = wait_until(lambda: placed(cli_node, 6, want=(victim.name, 2)), 60, "6 tasks running, 2 per node")
    record_pids(cluster, rows, task_pids)

    cluster.kill(victim.index)
    rows = wait_until(lambda: placed(cli_node, 6, avoid=victim.name), 60,
                      "the killed node's 2 tasks replaced on the other nodes")
    record_pids(cluster, rows, task_pids)
    before = {r["id"] for r in api_tasks(cli_node)}

    cluster.start(victim.index, (cli_node.addr,))  # same data dir: the same node comes back
    rows = wait_until(lambda: placed(cli_node, 6, want=(victim.name, 2)), 60,
                      f"the returned node {victim.name} to run 2 tasks again (rebalanced)")
    record_pids(cluster, rows, task_pids)
    history = api_tasks(cli_node)
    moved_in = [r for r in history if r["id"] not in before and r["node_name"] == victim.name]
    moved_out = [r for r in history if r["id"] in before and r["error"] == "rebalanced"]
    # (more than 2 each only if the loaded machine made SWIM declare the returned node dead once more)
    assert len(moved_in) >= 2 and len(moved_out) >= 2, json.dumps(history, indent=1)
    # task ids are "<log index>.<n>": the tasks one reconcile round placed share the index
    per_round = Counter(r["id"].split(".")[0] for r in moved_in)
    assert max(per_round.values()) <= MAX_MOVES, per_round

    # node rm: refused while the node is live and active, accepted once drained; it leaves Raft too
    refused = one_line_error(cluster.cli("node", "rm", victim.name, *dd))
    assert "is alive and not drained" in refused
    ok(cluster.cli("node", "update", victim.name, "--availability", "drain", *dd))
    rows = wait_until(lambda: placed(cli_node, 6, avoid=victim.name), 60, "6 tasks off the drained node")
    record_pids(cluster, rows, task_pids)
    removed = ok(cluster.cli("node", "rm", victim.name, *dd)).stdout
    assert f"{victim.name} (" in removed and "removed; 0 of its tasks" in removed

    def out_of_raft():
        try:
            status = cli_node.api.get("/v1/cluster")
        except ApiError:
            return False
        return status["leader"] and victim.name not in {m["name"] for m in status["members"]}
    wait_until(out_of_raft, 60, f"{victim.name} to leave the Raft configuration")
    info = json.loads(ok(cluster.cli("node", "inspect", victim.name, *dd)).stdout)
    assert info["cluster"] is None  # no record in the cluster state any more
