"""The Raft group on real processes: writes through any node, leader crash, whole-cluster crash, no quorum."""

from __future__ import annotations

import json
import os

from p2pswarm.testing.dockerd import HungEngine
from p2pswarm.testing.localcluster import wait_until
from p2pswarm.testing.raftcluster import (
    cluster_status,
    crash_and_restart,
    get,
    leader,
    lost_writes,
    put,
    roles,
    try_put,
    voters,
)

RESTART_ROUNDS = int(os.environ.get("P2PSWARM_RAFT_RESTART_ROUNDS", "5"))
"""Whole-cluster kill -9 + restart rounds in test (c); bench_raft.py runs 20."""


def start_three(cluster):
    first = cluster.start(0)
    wait_until(first.info, 30, "the first node's API")
    nodes = [first] + [cluster.start(i, (first.addr,)) for i in (1, 2)]
    wait_until(lambda: all(voters(n) == ["n0", "n1", "n2"] for n in nodes), 60, "3 voters seen by every node")
    return nodes, wait_until(lambda: leader(nodes), 30, "one leader everyone agrees on")


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_write_through_a_follower_is_read_linearizably_everywhere(cluster):
    nodes, lead = start_three(cluster)
    follower = next(n for n in nodes if n is not lead)
    result = cluster.cli("kv", "put", "greeting", "hello", "--data-dir", str(follower.data_dir))
    assert result.returncode == 0, result.stderr
    for node in nodes:
        got = cluster.cli("kv", "get", "greeting", "--data-dir", str(node.data_dir))
        assert got.returncode == 0 and got.stdout.strip() == "hello", (node.name, got.stderr)
    assert "p2pswarm cluster" not in one_line_error(cluster.cli("kv", "get", "nope", "--data-dir",
                                                                 str(lead.data_dir)))
    status = json.loads(cluster.cli("cluster", "status", "--format", "json", "--data-dir",
                                    str(follower.data_dir)).stdout)
    assert status["leader_name"] == lead.name and status["commit_index"] >= status["applied_index"] > 0
    assert {m["health"] for m in status["members"]} == {"alive"}
    listing = json.loads(cluster.cli("node", "ls", "--format", "json", "--data-dir", str(follower.data_dir)).stdout)
    assert sorted(m["role"] for m in listing) == ["leader", "voter", "voter"]
    table = cluster.cli("cluster", "status", "--data-dir", str(lead.data_dir)).stdout
    assert f"leader {lead.name}" in table and "HEALTH" in table
    lines = cluster.cli("cluster", "status", "--data-dir", str(follower.data_dir)).stdout.splitlines()
    rows = lines[lines.index(next(x for x in lines if x.startswith("ID"))) + 1:]
    assert rows[0].split()[1] == lead.name and rows[0].split()[3] == "leader"  # the leader first, then by name
    assert [r.split()[1] for r in rows[1:3]] == sorted(n.name for n in nodes if n is not lead)
    assert rows[-1].startswith("MATCH (how far") and lead.name in rows[-1]  # a follower says where MATCH is known


def test_b_leader_crash_new_leader_takes_writes_and_nothing_acknowledged_is_lost(cluster):
    nodes, lead = start_three(cluster)
    for i in range(20):
        put(nodes[i % 3], f"k{i}", f"v{i}")
    cluster.kill(lead.index)
    survivors = [n for n in nodes if n is not lead]
    wait_until(lambda: try_put(survivors[0], "after", "crash"), 60, "a write accepted after the leader crash")
    new = wait_until(lambda: leader(survivors), 30, "a new leader")
    assert new is not lead
    for node in survivors:
        assert [get(node, f"k{i}") for i in range(20)] == [f"v{i}" for i in range(20)]
        assert get(node, "after") == "crash"


def test_c_whole_cluster_kill_9_and_restart_loses_no_acknowledged_write(cluster):
    nodes, _ = start_three(cluster)
    acked: dict[str, str] = {}
    for rnd in range(RESTART_ROUNDS):
        crash_and_restart(cluster, nodes, acked, f"r{rnd}")
    missing = lost_writes(nodes[1], acked)
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    st = cluster_status(nodes[1])
    assert st["snapshot_index"] > 0  # snapshots and compaction ran (test preset: every 64 entries)
    assert st["last_index"] - st["snapshot_index"] < 64 * 4  # the log stayed bounded


def test_e_no_quorum_names_the_recovery_command_which_works(cluster):
    nodes, lead = start_three(cluster)
    put(lead, "before", "loss")
    survivor = nodes[0]
    for node in nodes[1:]:
        cluster.kill(node.index)
    line = one_line_error(cluster.cli("kv", "put", "x", "y", "--data-dir", str(survivor.data_dir)))
    assert "quorum" in line and "p2pswarm cluster recover --force-new-cluster" in line, line

    refused = cluster.cli("cluster", "recover", "--force-new-cluster", "--data-dir", str(survivor.data_dir))
    assert "is running" in one_line_error(refused)
    cluster.kill(survivor.index)
    result = cluster.cli("cluster", "recover", "--force-new-cluster", "--data-dir", str(survivor.data_dir))
    assert result.returncode == 0 and "only voter" in result.stdout, result.stderr
    cluster.start(survivor.index)
    wait_until(lambda: try_put(survivor, "after", "recovery"), 60, "a write after recovery")
    assert get(survivor, "before") == "loss" and voters(survivor) == [survivor.name]


def test_a_node_that_must_stop_while_starting_does_not_wait_for_a_hung_engine(cluster, tmp_path):
    # the refusal comes while the agent still asks the engine (a 5 s probe, then a 30 s API timeout for the last
    # life's containers): the node cancels the rest of its start and exits instead of waiting for either
    with HungEngine(tmp_path / "hung.sock") as engine:
        a = cluster.start(0)
        wait_until(lambda: (roles(a) or {}).get("n0") == "leader", 30, "n0 leading its own cluster")
        cluster.kill(0)
        b = cluster.start(1)
        wait_until(lambda: (roles(b) or {}).get("n1") == "leader", 30, "n1 leading another cluster")
        again = cluster.start(0, (b.addr,), "--engine-socket", engine.url)
        assert again.proc.wait(timeout=25) == 1
    assert "holds raft cluster" in again.log() and "stopping before the node finished starting" in again.log()


def test_a_data_dir_of_another_cluster_is_refused(cluster):
    a = cluster.start(0)
    wait_until(lambda: (roles(a) or {}).get("n0") == "leader", 30, "n0 leading its own cluster")
    cluster.kill(0)
    b = cluster.start(1)
    wait_until(lambda: (roles(b) or {}).get("n1") == "leader", 30, "n1 leading another cluster")
    again = cluster.start(0, (b.addr,))
    assert again.proc.wait(timeout=60) == 1
    errors = [line for line in again.log().splitlines() if line.startswith("error: ")]
    assert errors and "holds raft cluster" in errors[-1] and "another --data-dir" in errors[-1], again.log()[-2000:]
