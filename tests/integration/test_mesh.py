"""The routing mesh on real processes: every node serves a published port, survives a node's
SIGKILL under load without a failed request, and relays around a cut link."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

import pytest

from p2pswarm.testing.localcluster import REPO, wait_until

from .cli_results import ok

APP = str(REPO / "tests" / "apps" / "http_server.py")
pytestmark = pytest.mark.timeout(240)


def get(host: str, port: int, timeout: float = 3.0) -> dict:
    """One request on a new connection; the answering task's identity."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        return json.loads(resp.read())
    finally:
        conn.close()


def answers(host: str, port: int) -> dict | None:
    try:
        return get(host, port)
    except (OSError, AssertionError, http.client.HTTPException, ValueError):
        return None


def tasks(cluster, node, name):
    out = ok(cluster.cli("service", "ps", name, "--format", "json", "--data-dir", str(node.data_dir)))
    return [r for r in json.loads(out.stdout) if r["current"] and r["desired"] == "running"]


def routes(cluster, node, port):
    out = ok(cluster.cli("mesh", "routes", str(port), "--format", "json", "--data-dir", str(node.data_dir)))
    return json.loads(out.stdout)["routes"]


def load(targets: list[tuple[str, int]], total: int, threads: int = 4) -> tuple[int, list[str]]:
    """``total`` requests, each on a new connection, spread round robin over ``targets``."""
    lock, counter, failures = threading.Lock(), [0], []

    def worker():
        while True:
            with lock:
                i = counter[0]
                if i >= total:
                    return
                counter[0] += 1
            host, port = targets[i % len(targets)]
            try:
                get(host, port)
            except Exception as exc:  # every failure is recorded, none stops the load
                with lock:
                    failures.append(f"{host}:{port}: {type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return counter[0], failures


def test_every_node_serves_the_port_and_a_node_crash_fails_no_request(cluster):
    nodes = cluster.start_group(3)
    port = cluster.published_port()
    dd = ("--data-dir", str(nodes[0].data_dir))
    # the start period: on a busy machine Python may take longer than interval × retries (0.6 s)
    # to listen, and a replica stopped as unhealthy then would leave one replica to answer
    ok(cluster.cli("service", "create", "web", "--replicas", "2", "--publish", f"{port}:dynamic",
                   "--health-http", "/health", "--health-interval", "0.2s", "--health-start-period", "20s",
                   "-d", *dd, "--",
                   sys.executable, APP, timeout=60))
    rows = wait_until(lambda: (r := tasks(cluster, nodes[0], "web")) and len(r) == 2
                      and all(x["state"] == "running" for x in r) and r, 60, "2 replicas running")
    holders = {r["node_name"] for r in rows}
    spare = next(n for n in nodes if n.name not in holders)
    # every node answers on the published port, the one without a replica included
    for node in nodes:
        seen = wait_until(lambda: answers(node.host, port), 30, f"{node.name} serving :{port}")
        assert seen["task"] in {r["id"] for r in rows}
    # that node forwards to both replicas (nearer ones get more, so ask until both answered)
    served: set[str] = set()
    for _ in range(300):
        served.add(get(spare.host, port)["task"])
        if len(served) == 2:
            break
    assert served == {r["id"] for r in rows}

    victim = next(n for n in nodes if n.name in holders and n is not nodes[0])
    survivors = [(n.host, port) for n in nodes if n is not victim]
    result: dict = {}
    loader = threading.Thread(target=lambda: result.update(zip(("done", "failures"), load(survivors, 2000))))
    loader.start()
    time.sleep(0.5)  # into the load: the crash must hit it mid-way
    cluster.kill(victim.index)
    loader.join(timeout=180)
    assert not loader.is_alive()
    assert result["done"] == 2000
    assert result["failures"] == [], result["failures"][:5]


def test_traffic_to_a_node_behind_a_cut_link_goes_through_a_relay(cluster):
    nodes = cluster.start_group(3)
    a, b, c = nodes
    port = cluster.published_port()
    ok(cluster.cli("service", "create", "pinned", "--replicas", "1", "--publish", f"{port}:dynamic",
                   "--constraint", f"node.name=={b.name}", "-d", "--data-dir", str(a.data_dir), "--",
                   sys.executable, APP, timeout=60))
    wait_until(lambda: answers(a.host, port), 60, "the pinned replica answering through a's mesh")
    # cut a <-> b both ways: SWIM still reaches b through helpers, so b stays alive for a
    a.api.post("/v1/faults", {"cut": [b.addr]})
    b.api.post("/v1/faults", {"cut": [a.addr]})
    relayed = wait_until(lambda: [r for r in routes(cluster, a, port) if r["route"] == f"via {c.name}"],
                         30, "a routing to b's replica through c")
    assert relayed[0]["node_name"] == b.name

    def relayed_by_c() -> int:
        return c.api.get("/v1/mesh")["data_plane"].get("total", {}).get("relayed_in", 0)
    before = relayed_by_c()
    _, failures = load([(a.host, port)], 200, threads=2)
    assert failures == []
    # the data plane reports its counters about once a second
    wait_until(lambda: relayed_by_c() - before >= 200, 10, "c counting the 200 relayed connections")


def test_an_encrypted_port_crosses_between_nodes_only_inside_tls(cluster, tmp_path):
    """``--publish P:dynamic,encrypted``: a request to the node without the replica reaches it, and what
    goes to the replica's node (its TLS relay port) holds no plaintext of the request (tcpdump)."""
    from p2pswarm.testing.capture import Capture, tcpdump
    nodes = cluster.start_group(2)
    a, b = nodes
    port = cluster.published_port()
    ok(cluster.cli("service", "create", "sealed", "--replicas", "1", "--publish", f"{port}:dynamic,encrypted",
                   "--constraint", f"node.name=={b.name}", "-d", "--data-dir", str(a.data_dir), "--",
                   sys.executable, APP, timeout=60))
    wait_until(lambda: answers(b.host, port), 60, "the replica answering on its own node")
    route = wait_until(lambda: [r for r in routes(cluster, a, port) if r["route"] == "tls"], 30,
                       "a routing to b's replica over TLS")
    assert route[0]["node_name"] == b.name
    # a's listener on the port may come a moment after its routing (a suite run was refused once in between)
    wait_until(lambda: answers(a.host, port), 30, "node a serving the published port")
    tls_port = b.api.get("/v1/mesh")["relay_port"] + 1
    marker = "ENCRYPTED-MESH-MARKER-7f3a"
    capture = Capture(f"tcp port {tls_port}", tmp_path / "tls.pcap") if tcpdump() else None
    control = Capture(f"tcp port {port} and host {a.host}", tmp_path / "plain.pcap") if tcpdump() else None
    try:
        for _ in range(20):
            conn = http.client.HTTPConnection(a.host, port, timeout=5)
            conn.request("GET", f"/?{marker}")
            resp = conn.getresponse()
            assert resp.status in (200, 404)  # the app answers (404 for the query path is fine)
            resp.read()
            conn.close()
        wait_until(lambda: b.api.get("/v1/mesh")["data_plane"]["relay"]["relayed_in"] >= 20, 5,
                   "all 20 requests arriving at b's TLS relay (status every second)")
    finally:
        sealed = capture.stop() if capture else None
        plain = control.stop() if control else None
    if sealed is None:
        pytest.skip("needs tcpdump and root to capture on loopback (the forwarding itself was checked)")
    assert marker.encode() in plain  # the capture works: the client's request to a is plaintext...
    assert len(sealed) > 5_000 and marker.encode() not in sealed  # ...and a -> b carried it only encrypted
