"""`p2pswarm lab up/status/down`: README's first command must give a working local cluster."""

from __future__ import annotations

import json

from p2pswarm.cli.node_cmds import pid_alive
from p2pswarm.testing.localcluster import free_port


def lab_pids(lab_dir):
    pids = []
    for pid_file in lab_dir.glob("node-*/node.pid"):
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            pass
    return pids


def test_lab_up_forms_one_cluster_and_down_leaves_no_process(cluster, tmp_path_factory):
    lab = tmp_path_factory.mktemp("lab", numbered=True)
    port = free_port("127.0.0.11")
    pids = []
    try:
        up = cluster.cli("lab", "up", "--nodes", "3", "--dir", str(lab), "--port", str(port),
                         "--preset", "test", timeout=120)
        assert up.returncode == 0, up.stderr
        assert "lab of 3 nodes is up" in up.stdout
        pids = lab_pids(lab)
        assert len(pids) == 3
        ls = cluster.cli("node", "ls", "--data-dir", str(lab / "node-2"), "--format", "json")
        members = json.loads(ls.stdout)
        assert sorted(m["name"] for m in members) == ["node-1", "node-2", "node-3"]
        assert {m["status"] for m in members} == {"alive"}
        again = cluster.cli("lab", "up", "--nodes", "3", "--dir", str(lab), "--port", str(port))
        assert again.returncode == 1 and "already running" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
        status = cluster.cli("lab", "status", "--dir", str(lab))
        assert status.stdout.count("running") == 3
        down = cluster.cli("lab", "down", "--dir", str(lab), timeout=60)
        assert down.returncode == 0, down.stderr
        assert not [pid for pid in pids if pid_alive(pid)]
    finally:
        cluster.pids.update(pids)
