"""The kernel path's nft scripts against the real nftables (root; each test in a namespace of its own)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2pswarm.mesh import nft
from p2pswarm.mesh.kernel_plan import plan, transaction
from p2pswarm.testing.localcluster import cli_env

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
                                reason="needs root, nft and ip")


@pytest.fixture
def netns():
    """A network namespace of this test's own (deleted, with its tables, at the end)."""
    name = f"p2ps-kt-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def nft_in(ns: str, *args: str, script: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=script, capture_output=True, text=True)


def backend(addr: str, local: bool = False) -> dict:
    return {"task": addr, "addr": addr, "local": local}


def test_this_machine_can_use_the_kernel_path():
    assert nft.probe() is None


def test_generated_scripts_pass_nft_and_updates_keep_one_copy_of_each_rule(netns):
    table = "p2pswarm_mesh_10_9_0_1_7946"
    first = plan({"host": "10.9.0.1", "ports": [
        {"port": 8080, "backends": [backend("10.9.0.2:1"), backend("10.9.0.3:2"), backend("10.9.0.4:3")]},
        {"port": 9090, "backends": [backend("10.9.0.1:4", local=True)]},
        {"port": 7070, "proxy_protocol": True, "backends": [backend("10.9.0.1:5", local=True)]}],
        "udp": [{"port": 53, "backends": [backend("10.9.0.1:6", local=True)]}]})
    second = plan({"host": "10.9.0.1", "ports": [
        {"port": 8080, "backends": [backend("10.9.0.2:1"), backend("10.9.0.3:2")]},
        {"port": 6060, "backends": [backend("10.9.0.1:7", local=True), backend("10.9.0.1:8", local=True)]}],
        "udp": [{"port": 53, "backends": [backend("10.9.0.1:6", local=True)]}]})
    full = transaction(None, first, table)
    assert nft_in(netns, "-c", "-f", "-", script=full).returncode == 0, nft_in(netns, "-c", "-f", "-", script=full)
    for _ in range(2):  # a second full install (a restart) replaces the table
        done = nft_in(netns, "-f", "-", script=full)
        assert done.returncode == 0, done.stderr
    change = transaction(first, second, table)
    done = nft_in(netns, "-f", "-", script=change)
    assert done.returncode == 0, done.stderr
    listed = nft_in(netns, "-j", "list", "table", "inet", table)
    rules = [item["rule"] for item in json.loads(listed.stdout)["nftables"] if "rule" in item]
    assert sorted(r["chain"] for r in rules) == sorted(["prerouting", "prerouting", "output", "output", "postrouting",
                                                         "tcp_2_masq", "tcp_2", "udp_1"])
    text = nft_in(netns, "list", "table", "inet", table).stdout
    assert "8080 : goto tcp_2_masq" in text and "6060 : goto tcp_2" in text and "9090" not in text
    assert "7070" not in text  # proxy-protocol: user space


def test_the_table_forwards_tcp_and_udp_and_resets_flows_of_a_replica_that_left(netns):
    env = {**cli_env(), "PYTHONPATH": str(REPO)}
    app = str(REPO / "tests" / "apps" / "kernel_dnat.py")
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, app], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["probe"] is None
    assert seen["rules"] == 4  # two hooks x two protocols, after two full installs
    assert set(seen["tcp_spread"]) == {"40001", "40002"}  # both replicas get new connections
    assert seen["udp"] == ["40005 127.0.0.77", ["127.0.5.5", 5353]]  # client address kept; answer from the node
    assert "tcp_backends { 8080 . 0, 8080 . 1 }" in seen["change"]
    if nft.have_conntrack():  # the open connection to the replica that left is reset, the other one goes on
        assert seen["reset_entries"] >= 1
        assert seen["after"] == {"40001": "40001 again", "40002": "ConnectionResetError"}
    assert seen["new_after"] == {"40001": 20}
    assert seen["exists_after_remove"] is False and seen["after_remove"] == "ConnectionRefusedError"


def test_apply_time_of_two_thousand_ports(netns, capsys):
    """Not a timed assertion: prints the figure (docs/architecture.md, "Kernel path")."""
    env = {**cli_env(), "PYTHONPATH": str(REPO)}
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "p2pswarm.mesh.nft"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    with capsys.disabled():
        print(f"\nkernel path apply: {figures}")
    assert figures["ports"] == 2000 and figures["full_ms"] > 0
