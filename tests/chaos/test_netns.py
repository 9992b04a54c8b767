"""Real chaos in network namespaces (root only): `lab up --netns` / `lab down`, and a scenario with a
kill, a partition and packet loss whose report must show 0 lost acknowledged writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from p2pswarm.lab import netns
from p2pswarm.runtime.procfs import is_alive
from p2pswarm.testing.localcluster import REPO, cli_env

pytestmark = pytest.mark.chaos

SCENARIO = """
name = "ci"
description = "kill + restart, partition + heal, loss: the CI chaos run"
nodes = 5
duration = 24
preset = "lan"
settle = 30

[load]
rate = 15
timeout = 1.0

[writer]
rate = 3
kinds = ["kv", "service"]

[[action]]
at = 3
do = "kill"
node = 2

[[action]]
at = 9
do = "restart"
node = 2

[[action]]
at = 11
do = "partition"
groups = [[1, 2], [3, 4, 5]]

[[action]]
at = 16
do = "heal"

[[action]]
at = 17
do = "loss"
percent = 10
for = 5
"""


def cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2pswarm.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, env=cli_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def lab_namespaces(lab_dir) -> list[str]:
    state = json.loads((lab_dir / "lab.json").read_text())
    return [n["netns"] for n in state["nodes"]] + [state["bridge_ns"]]


def node_pids(lab_dir) -> list[int]:
    pids = []
    for f in list(lab_dir.glob("node-*/node.pid")) + list(lab_dir.glob("node-*/tasks/*/pid")):
        try:
            pids.append(int(f.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def force_down(lab_dir) -> None:
    """Teardown that never depends on the code under test having worked."""
    try:
        names = lab_namespaces(lab_dir)
    except (OSError, ValueError, KeyError):
        names = []
    for pid in node_pids(lab_dir):
        if is_alive(pid):
            subprocess.run(["kill", "-9", str(pid)], capture_output=True)
    netns.destroy(n for n in names if n)


@pytest.mark.timeout(120)
def test_netns_lab_up_and_down_leave_nothing(netns_ok, tmp_path):
    lab = tmp_path / "lab"
    try:
        up = cli("lab", "up", "--netns", "--nodes", "3", "--no-demo", "--preset", "lan", "--dir", str(lab),
                 timeout=90)
        assert up.returncode == 0, up.stderr
        names = lab_namespaces(lab)
        assert set(names) <= set(netns.list_namespaces())
        status = cli("lab", "status", "--dir", str(lab), timeout=30)
        assert status.stdout.count("running") == 3 and "NETNS" in status.stdout
        pids = node_pids(lab)
        assert len(pids) == 3
        down = cli("lab", "down", "--dir", str(lab), timeout=60)
        assert down.returncode == 0, down.stderr
        assert "namespaces deleted" in down.stdout
        assert not set(names) & set(netns.list_namespaces())
        assert not [p for p in pids if is_alive(p)]
    finally:
        force_down(lab)


@pytest.mark.timeout(150)
def test_chaos_run_with_kill_partition_and_loss_loses_no_acknowledged_write(netns_ok, tmp_path):
    scenario = tmp_path / "ci.toml"
    scenario.write_text(SCENARIO)
    lab, out = tmp_path / "lab", tmp_path / "out"
    try:
        run = cli("lab", "chaos", "--scenario", str(scenario), "--netns", "--out", str(out), "--dir", str(lab),
                  timeout=140)
        assert run.returncode == 0, run.stderr[-2000:]
        rep = json.loads((out / "chaos-ci.json").read_text())
        png = out / "chaos-ci.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert rep["mode"] == "netns"
        assert [a["do"] for a in rep["actions"] if not a.get("auto")] == ["kill", "restart", "partition", "heal",
                                                                            "loss"]
        assert all(a["ok"] for a in rep["actions"]), rep["actions"]
        s = rep["summary"]
        assert s["acknowledged_writes_lost"] == 0, rep["writes"]["lost_detail"]
        assert s["writes_acked"] > 10
        assert s["requests_sent"] > 0 and s["request_error_rate"] is not None  # reported (not asserted 0)
        assert len(rep["requests"]["per_second"]) == 24
        assert "error rate" in run.stdout
        assert "acknowledged writes lost: 0" in run.stdout
        assert len(rep["kills"]) == 1 and rep["kills"][0]["node"] == "node-2"
        assert not set(lab_namespaces(lab)) & set(netns.list_namespaces())
        assert not [p for p in node_pids(lab) if is_alive(p)]
    finally:
        force_down(lab)
