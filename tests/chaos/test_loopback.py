"""A short real chaos run without root: loopback nodes, partitions and loss through each node's
fault-injection transport (POST /v1/faults)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from p2pswarm.runtime.procfs import is_alive
from p2pswarm.testing.localcluster import REPO, cli_env, free_port

SCENARIO = """
name = "ci-loopback"
nodes = 3
duration = 12
preset = "lan"
settle = 30
port = {port}

[load]
rate = 10
timeout = 1.0

[writer]
rate = 3
kinds = ["kv", "service"]

[[action]]
at = 2
do = "kill"
node = 3

[[action]]
at = 5
do = "restart"
node = 3

[[action]]
at = 6
do = "partition"
groups = [[1], [2, 3]]

[[action]]
at = 8
do = "heal"

[[action]]
at = 9
do = "loss"
percent = 10
for = 2

[[action]]
at = 9.5
do = "slow"
node = 1
for = 1
"""


def lab_pids(lab) -> list[int]:
    pids = []
    for f in list(lab.glob("node-*/node.pid")) + list(lab.glob("node-*/tasks/*/pid")):
        try:
            pids.append(int(f.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


@pytest.mark.timeout(120)
def test_transport_fault_chaos_run_loses_no_acknowledged_write(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.replace("{port}", str(free_port("127.0.77.11"))))
    lab, out = tmp_path / "lab", tmp_path / "out"
    try:
        run = subprocess.run([sys.executable, "-m", "p2pswarm.cli.main", "lab", "chaos", "--scenario", str(scenario),
                              "--out", str(out), "--dir", str(lab), "--port", str(free_port("127.0.77.11"))],
                             capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=110,
                             stdin=subprocess.DEVNULL)
        assert run.returncode == 0, run.stderr[-2000:]
        rep = json.loads((out / "chaos-ci-loopback.json").read_text())
        assert rep["mode"] == "transport"
        assert all(a["ok"] for a in rep["actions"]), [a for a in rep["actions"] if not a["ok"]]
        assert rep["summary"]["acknowledged_writes_lost"] == 0
        assert rep["summary"]["writes_acked"] > 5
        assert rep["summary"]["request_error_rate"] is not None
        assert "acknowledged writes lost: 0" in run.stdout
        assert not [p for p in lab_pids(lab) if is_alive(p)]
    finally:
        pids = lab_pids(lab)
        for p in pids:
            if is_alive(p):
                subprocess.run(["kill", "-9", str(p)], capture_output=True)
