"""UDP through the routing mesh on real processes: every node answers on a published UDP port,
including the node without the replica, and a client keeps its session (same replica)."""

from __future__ import annotations

import socket
import sys

import pytest

from p2pswarm.testing.localcluster import REPO, wait_until

APP = str(REPO / "tests" / "apps" / "udp_echo.py")
pytestmark = pytest.mark.timeout(240)


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
    port = cluster.published_port(socket.SOCK_DGRAM)
    out = cluster.cli("service", "create", "echo", "--replicas", "1", "--publish", f"{port}:dynamic/udp", "-d",
                      "--data-dir", str(nodes[0].data_dir), "--", sys.executable, APP, timeout=60)
    assert out.returncode == 0, out.stderr
    for node in nodes:
        reply = wait_until(lambda: ask(node.host, port, b"ping"), 60, f"an echo through {node.name}'s mesh")
        assert reply.endswith(b" ping")
    # one client, several datagrams through the node without... either node: one session, one replica
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)  # generous: each datagram crosses one or two Python data planes on a busy machine
        seen = set()
        for i in range(20):
            s.sendto(b"n%d" % i, (nodes[1].host, port))
            data = s.recvfrom(65535)[0]
            assert data.endswith(b" n%d" % i)
            seen.add(data.split(b" ")[0])
        assert len(seen) == 1


def test_udp_to_a_node_behind_a_cut_link_goes_through_a_relay(cluster):
    a, b, c = cluster.start_group(3)
    port = cluster.published_port(socket.SOCK_DGRAM)
    out = cluster.cli("service", "create", "pinned", "--replicas", "1", "--publish", f"{port}:dynamic/udp",
                      "--constraint", f"node.name=={b.name}", "-d", "--data-dir", str(a.data_dir), "--",
                      sys.executable, APP, timeout=60)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: ask(a.host, port, b"ping"), 60, "the pinned replica answering through a's mesh")
    # cut a <-> b both ways: SWIM still reaches b through helpers, so b stays alive for a
    a.api.post("/v1/faults", {"cut": [b.addr]})
    b.api.post("/v1/faults", {"cut": [a.addr]})

    def via_c() -> bool:
        rows = a.api.get("/v1/mesh")["routes"]
        return any(r["port"] == port and r.get("protocol") == "udp" and r["route"] == f"via {c.name}" for r in rows)
    wait_until(via_c, 30, "a routing UDP to b's replica through c")

    def relayed_by_c() -> int:
        relay = (c.api.get("/v1/mesh")["data_plane"].get("udp") or {}).get("relay") or {}
        return relay.get("datagrams_in", 0)
    before = relayed_by_c()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)  # generous: each datagram crosses one or two Python data planes on a busy machine
        for i in range(20):
            s.sendto(b"r%d" % i, (a.host, port))
            assert s.recvfrom(65535)[0].endswith(b" r%d" % i)
    # the data plane reports its counters about once a second
    wait_until(lambda: relayed_by_c() - before >= 20, 10, "c counting the 20 relayed datagrams")
