"""UDP through the routing mesh on real processes: every node answers on a published UDP port,
including the node without the replica, and a client keeps its session (same replica)."""

from __future__ import annotations

import socket
import sys

import pytest

from p2pswarm.testing.localcluster import REPO, free_port, wait_until

APP = str(REPO / "tests" / "apps" / "udp_echo.py")
pytestmark = pytest.mark.timeout(120)


def ask(host: str, port: int, payload: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(payload, (host, port))
            return s.recvfrom(65535)[0]
        except OSError:
            return None


def test_every_node_forwards_a_published_udp_port(cluster):
    nodes = cluster.start_group(2)
    port = free_port(nodes[0].host)
    out = cluster.cli("service", "create", "echo", "--replicas", "1", "--publish", f"{port}:dynamic/udp", "-d",
                      "--data-dir", str(nodes[0].data_dir), "--", sys.executable, APP, timeout=60)
    assert out.returncode == 0, out.stderr
    for node in nodes:
        reply = wait_until(lambda: ask(node.host, port, b"ping"), 60, f"an echo through {node.name}'s mesh")
        assert reply.endswith(b" ping")
    # one client, several datagrams through the node without... either node: one session, one replica
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        seen = set()
        for i in range(20):
            s.sendto(b"n%d" % i, (nodes[1].host, port))
            data = s.recvfrom(65535)[0]
            assert data.endswith(b" n%d" % i)
            seen.add(data.split(b" ")[0])
        assert len(seen) == 1
