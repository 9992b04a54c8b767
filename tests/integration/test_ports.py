"""Ports as a user types them: ``-p PUB:TARGET`` for a process means the task listens on TARGET
(its ``$PORT``/``{port}``), and a published port a node cannot bind shows in ``service ps``,
``service inspect`` and that node's log."""

from __future__ import annotations

import json
import socket
import sys
import urllib.request

import pytest

from p2pswarm.testing.localcluster import free_port, wait_until

from .cli_results import ok

pytestmark = pytest.mark.timeout(240)


def answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=3) as resp:
            return resp.status == 200 and b"Directory listing" in resp.read()
    except OSError:
        return False


def test_a_fixed_target_is_the_process_port_and_a_port_a_node_cannot_bind_is_reported(cluster, task_pids):
    nodes = cluster.start_group(2)
    first, second = nodes
    dd = ("--data-dir", str(first.data_dir))
    published, target = cluster.published_port(), free_port("0.0.0.0")
    # a port a node listens on itself is refused in one line: its mesh could never listen there
    refused = cluster.cli("service", "create", "t", "-p", f"{second.port}:{target}", *dd, "--", "sleep", "60")
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"error: ports: {second.port}/tcp is node n1's gossip port, so the routing mesh cannot listen on it there; "
        f"publish another port"), refused.stderr
    stranger = socket.socket()  # holds the published port on the second node's address
    stranger.bind((second.host, published))
    stranger.listen()
    try:
        ok(cluster.cli("service", "create", "t", "--replicas", "1", "-p", f"{published}:{target}",
                       "--constraint", "node.name==n1", "-d", *dd, "--",
                       sys.executable, "-m", "http.server", "{port}"))
        row = wait_until(lambda: next((r for r in json.loads(ok(cluster.cli(
            "service", "ps", "t", "--format", "json", *dd)).stdout) if r["state"] == "running"), None), 60,
            "the task running")
        task_pids.add(int((second.data_dir / "tasks" / row["id"] / "pid").read_text()))
        assert row["port"] == target  # $PORT / {port} is the fixed target
        # the task is on n1; n0's mesh forwards to it on the target port
        wait_until(lambda: answers(first.host, published), 30, f"n0 serving :{published} through the mesh")

        # n1 cannot listen on the published port: ps (stderr) and inspect say so, its log once
        def reported() -> str | None:
            ps = ok(cluster.cli("service", "ps", "t", *dd))
            return ps.stderr if f"port {published}" in ps.stderr else None
        line = wait_until(reported, 30, "service ps to report the port n1 cannot bind")
        assert "n1" in line and "address in use" in line, line
        inspect = json.loads(ok(cluster.cli("service", "inspect", "t", *dd)).stdout)
        assert [(e["node"], e["port"]) for e in inspect["port_errors"]] == [("n1", str(published))]
        wait_until(lambda: second.log().count(f"cannot listen on published port {published}") == 1, 10,
                   "one warning in n1's log")
    finally:
        stranger.close()
    # once the stranger is gone, n1's mesh binds the port, serves it and the error clears
    wait_until(lambda: answers(second.host, published), 30, f"n1 serving :{published}")
    wait_until(lambda: json.loads(ok(cluster.cli("service", "inspect", "t", *dd)).stdout)["port_errors"] == [],
               30, "the port error to clear")
    assert second.log().count(f"cannot listen on published port {published}") == 1

    # each node's engine and isolation, as it probed them, registered in the cluster state
    info = json.loads(ok(cluster.cli("node", "inspect", "n1", *dd)).stdout)
    assert info["engine"].split(" ")[0] in ("docker", "unavailable"), info["engine"]
    assert info["isolation"].split(" ")[0] in ("cgroup-v1", "cgroup-v2", "none"), info["isolation"]
