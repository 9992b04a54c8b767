"""The routing mesh's kernel path on real nodes (root, loopback): nftables forwards a published port without
the data plane, keeps the client's address, survives a crash and restart without duplicate rules, and a
stopped node leaves no table behind."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from p2pswarm.api.client import ApiError
from p2pswarm.mesh.kernel_plan import table_name
from p2pswarm.testing.localcluster import REPO, LocalCluster, wait_until

from .cli_results import ok

APP = str(REPO / "tests" / "apps" / "http_server.py")
CLIENT = "127.0.0.77"
pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")]


def ask(host: str, port: int) -> dict | None:
    """One request on a new connection from ``CLIENT``; what the replica saw (None while not answered)."""
    conn = http.client.HTTPConnection(host, port, timeout=3, source_address=(CLIENT, 0))
    try:
        conn.request("GET", "/")
        return json.loads(conn.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def listing(node) -> str:
    done = subprocess.run(["nft", "list", "table", "inet", table_name(node.host, node.port)], capture_output=True,
                          text=True)
    return done.stdout if done.returncode == 0 else ""


def mesh(cluster, node) -> dict:
    return json.loads(ok(cluster.cli("mesh", "routes", "--format", "json", "--data-dir", str(node.data_dir))).stdout)


def in_kernel(cluster, node) -> dict | None:
    """The node's mesh view once its one route takes the kernel path."""
    view = mesh(cluster, node)
    return view if [(r["path"], r["path_why"]) for r in view["routes"]] == [("kernel", "")] else None


def kernel_ports(node) -> int | None:
    try:
        return node.api.get("/v1/mesh").get("kernel", {}).get("kernel_ports")
    except ApiError:
        return None  # not up yet


def test_the_kernel_forwards_keeps_the_client_address_and_cleans_up(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("k", numbered=True), mesh="kernel")
    try:
        a, b = cluster.start_joined(2)
        port = cluster.published_port()
        ok(cluster.cli("service", "create", "web", "--replicas", "1", "--publish", f"{port}:dynamic",
                       "--constraint", f"node.name=={b.name}", "-d", "--data-dir", str(a.data_dir), "--",
                       sys.executable, APP, timeout=60))
        for node in (a, b):  # b holds the replica; a forwards to it
            view = wait_until(lambda: in_kernel(cluster, node), 60, f"{node.name}'s route in the kernel")
            assert view["kernel"]["on"] and view["routes"][0]["node_name"] == b.name
            # DNAT, no proxy and no SNAT: the replica sees the client's own address (through the user-space data
            # plane it would see the node's)
            seen = wait_until(lambda: ask(node.host, port), 60, f"{node.name} serving :{port}")
            assert seen["client"] == CLIENT
        text = ok(cluster.cli("mesh", "routes", "--data-dir", str(a.data_dir))).stdout
        assert "PATH" in text.splitlines()[0] and " kernel " in text

        wait_until(lambda: f"{port} : goto" in listing(a), 60, "the port in a's table")
        cluster.kill(a.index)  # a crash leaves the table; the restart replaces it, no rule twice
        assert f"{port} : goto" in listing(a)
        cluster.start(a.index, (b.addr,))
        wait_until(lambda: kernel_ports(a) == 1, 60, "a's kernel path again")
        # (on a loaded machine SWIM may suspect b for a moment, which takes the port out of the kernel: wait)
        assert wait_until(lambda: ask(a.host, port), 60, "a serving again")["client"] == CLIENT
        rules = wait_until(lambda: (text := listing(a)).count(f"{port} : goto") == 1 and text, 60, "the port's entry")
        assert rules.count("dport vmap") == 4 and rules.count("masquerade") == 1, rules

        a.proc.send_signal(signal.SIGTERM)  # a clean stop removes the node's table
        a.proc.wait(timeout=30)
        assert listing(a) == ""
        assert f"{port} : goto" in listing(b)
    finally:
        cluster.close()
    assert listing(b) == ""  # and the cluster's teardown what its killed nodes left
