"""The routing mesh's kernel path in a network-namespace lab (root, nft, ip netns): three nodes started
with ``--mesh kernel``, a replicated service with a published port on nodes 2 and 3 only, so that node 1
forwards every connection to a remote replica and node 2 to its local one.

One lab serves every test of this module, in order: the routes and rules, a SIGKILL under load, then
restarts and ``lab down``. Clients run in the lab's bridge namespace (another host, as far as the
nodes can tell) with :mod:`p2pswarm.lab.load`: one new TCP connection per request.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time

import pytest

from p2pswarm.api.client import ApiError
from p2pswarm.cluster.spec import Constraint
from p2pswarm.lab import netns
from p2pswarm.lab.cluster import Lab, LabNode
from p2pswarm.mesh import nft
from p2pswarm.mesh.kernel_plan import TABLE_PREFIX, table_name
from p2pswarm.testing.localcluster import REPO, cli_env, wait_until

pytestmark = pytest.mark.timeout(300)  # the module fixture starts its cluster inside the first test's time

PORT = 8080
LOAD_CONNECTIONS = 2000
LOAD_RATE = 200.0
"""Connections per second of the SIGKILL test's client (lab/load.py's maximum): 2,000 take 10 s, long
enough that the dead replica leaves the maps in the middle of the run."""
KILL_AFTER = 2.0
"""Seconds into the load when the replica's node is killed."""


def kernel_lab_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "needs `ip` (apt-get install -y iproute2)"
    return nft.probe()


def in_ns(ns: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(netns.exec_prefix(ns) + list(argv), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def tables(ns: str | None) -> list[str]:
    """Every nftables table (``family name``) in namespace ``ns`` (None: this process's)."""
    out = subprocess.run((netns.exec_prefix(ns) if ns else []) + ["nft", "list", "tables"], capture_output=True,
                         text=True, timeout=20, stdin=subprocess.DEVNULL).stdout
    return [line.removeprefix("table ").strip() for line in out.splitlines() if line.startswith("table ")]


def mesh_tables(node: LabNode) -> list[str]:
    """The mesh tables in the node's namespace: its own (:func:`table_name`), if any, and any other."""
    return [t for t in tables(node.netns) if TABLE_PREFIX in t]


def ruleset(node: LabNode) -> dict:
    """The node's mesh table as ``nft -j`` gives it: {"chains": {name: [rule expr JSON, ...]}, "text": ...}."""
    assert mesh_tables(node) == [f"inet {table_name(node.host, node.port)}"], mesh_tables(node)
    family, name = "inet", table_name(node.host, node.port)
    data = json.loads(in_ns(node.netns, "nft", "-j", "list", "table", family, name).stdout)
    chains: dict[str, list[str]] = {}
    for item in data["nftables"]:
        if "chain" in item:
            assert item["chain"]["name"] not in chains, f"chain {item['chain']['name']} twice in {name}"
            chains[item["chain"]["name"]] = []
        elif "rule" in item:
            chains.setdefault(item["rule"]["chain"], []).append(json.dumps(item["rule"]["expr"], sort_keys=True))
    text = in_ns(node.netns, "nft", "list", "table", family, name).stdout
    return {"chains": chains, "text": text}


def routes(node: LabNode) -> list[dict]:
    try:
        return [r for r in node.api().get("/v1/mesh")["routes"] if r["port"] == PORT]
    except (ApiError, KeyError, TypeError):
        return []


def kernel_routed(node: LabNode) -> bool:
    rows = [r for r in routes(node) if r["route"] != "excluded"]
    return bool(rows) and all(r.get("path") == "kernel" for r in rows)


def userspace_accepted(lab: Lab) -> int:
    """Connections the nodes' user-space data planes accepted on the published port."""
    total = 0
    for node in lab.nodes:
        try:
            ports = node.api().get("/v1/mesh")["data_plane"].get("ports") or {}
        except (ApiError, KeyError, TypeError, AttributeError):
            continue
        total += int((ports.get(str(PORT)) or {}).get("accepted", 0))
    return total


def load(lab: Lab, targets: list[LabNode], rate: float, duration: float, out, t0: float) -> subprocess.Popen:
    """lab/load.py in the bridge namespace: new connections round-robin to ``targets``' published port."""
    argv = [sys.executable, "-m", "p2pswarm.lab.load", "--targets", ",".join(f"{n.host}:{PORT}" for n in targets),
            "--rate", str(rate), "--duration", str(duration), "--timeout", "1.0", "--t0", repr(t0),
            "--out", str(out)]
    return subprocess.Popen(netns.exec_prefix(lab.bridge_ns) + argv, cwd=REPO, env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def requests(out) -> list[list]:
    """[[t_sent - t0, target index, ok, latency ms, error], ...] from a finished load run."""
    return json.loads(out.read_text())["requests"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = kernel_lab_unavailable()
    if reason:
        pytest.skip(f"kernel-path netns test skipped: {reason}")
    lab = Lab.plan(tmp_path_factory.mktemp("klab") / "lab", nodes=3, port=7946, preset="test", use_netns=True)
    lab.mesh = "kernel"
    try:
        lab.prepare_dir()
        lab.create_network()
        lab.save()
        lab.start_all()
        lab.wait_converged()
        lab.wait_raft()
        spec = dataclasses.replace(lab.demo_spec(PORT, replicas=2),
                                   constraints=(Constraint.parse("node.name!=node-1"),))
        lab.nodes[0].api(timeout=60).request("POST", "/v1/services", {"spec": spec.to_dict()})
        lab.demo = {"service": spec.name, "port": PORT}
        lab.save()
        lab.wait_demo()
        lab.wait_mesh()
        wait_until(lambda: all(kernel_routed(n) for n in lab.nodes), 20, "every node routing the port in the kernel")
        yield lab
    finally:
        lab.stop_all()
        netns.destroy([n.netns for n in lab.nodes if n.netns] + [lab.bridge_ns])


def test_every_node_answers_on_the_published_port_through_the_kernel(lab, tmp_path):
    for node in lab.nodes:
        rows = [r for r in routes(node) if r["route"] != "excluded"]
        assert rows and {r["path"] for r in rows} == {"kernel"}, rows
        assert "dnat" in ruleset(node)["text"], f"{node.name} has no DNAT rule"
    node1, node2, node3 = lab.nodes
    # node 1 has no replica: it balances over both remote ones; node 2 forwards to its local one only
    assert node2.host in ruleset(node1)["text"] and node3.host in ruleset(node1)["text"]
    assert node3.host not in ruleset(node2)["text"]
    before = userspace_accepted(lab)
    out = tmp_path / "load.json"
    t0 = time.monotonic()
    client = load(lab, lab.nodes, rate=60, duration=1.0, out=out, t0=t0)
    assert client.wait(30) == 0, client.stderr.read()
    done = requests(out)
    assert len(done) == 60 and all(r[2] == 1 for r in done), [r for r in done if not r[2]]
    time.sleep(1.2)  # the data planes report their counters about once a second
    assert userspace_accepted(lab) == before  # not one connection went through user space


def test_sigkill_of_a_replica_node_fails_no_connection_opened_after_it_left_the_maps(lab, tmp_path):
    node1, node2, node3 = lab.nodes
    assert node3.host in ruleset(node1)["text"]  # node 1 balances over node 3's replica too
    out = tmp_path / "load.json"
    t0 = time.monotonic() + 0.3
    client = load(lab, [node1, node2], LOAD_RATE, LOAD_CONNECTIONS / LOAD_RATE, out, t0)
    try:
        time.sleep(max(0.0, t0 + KILL_AFTER - time.monotonic()))
        killed_at = time.monotonic()
        lab.crash(node3)
        left_at = wait_until(lambda: node3.host not in ruleset(node1)["text"] and time.monotonic(), 8,
                             "node 3's replica to leave node 1's maps", interval=0.02)
        assert client.wait(60) == 0, client.stderr.read()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    done = requests(out)
    assert len(done) == LOAD_CONNECTIONS and not [r for r in done if r[4] == "client_busy"]
    failed = [r for r in done if not r[2]]
    after = [r for r in done if t0 + r[0] >= left_at]
    failed_after = [r for r in failed if t0 + r[0] >= left_at]
    print(f"\nkernel path, SIGKILL of a replica's node under {LOAD_CONNECTIONS} new connections: "
          f"replica left node 1's maps {left_at - killed_at:.3f} s after the kill; "
          f"{len(failed) - len(failed_after)} failed before that ({sorted({r[4] for r in failed})}), "
          f"{len(failed_after)} of {len(after)} after")
    assert len(after) >= 500  # the maps changed early in the run: most connections came after
    assert failed_after == []


def test_a_restarted_node_has_its_rules_once_and_lab_down_leaves_nothing(lab):
    node1, node2, node3 = lab.nodes
    if lab.running(node3):
        lab.crash(node3)  # the previous test did not run: crash it here
    assert mesh_tables(node3), "a crashed node's table stays in its namespace until it restarts"
    node1.api().post("/v1/shutdown")  # a clean stop removes the node's rules
    wait_until(lambda: not lab.running(node1), 20, "node 1 to stop")
    assert mesh_tables(node1) == []
    lab.restart(node3)
    lab.restart(node1)
    for node in (node1, node3):
        wait_until(lambda: kernel_routed(node), 30, f"{node.name} routing the port in the kernel again")
        rules = ruleset(node)
        for chain, exprs in rules["chains"].items():
            assert len(exprs) == len(set(exprs)), f"{node.name}: a rule twice in chain {chain}:\n{rules['text']}"
        assert len(mesh_tables(node)) == 1
    namespaces = [n.netns for n in lab.nodes] + [lab.bridge_ns]
    down = subprocess.run([sys.executable, "-m", "p2pswarm.cli.main", "lab", "down", "--dir", str(lab.path)],
                          capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=60)
    assert down.returncode == 0, down.stderr
    assert not set(namespaces) & set(netns.list_namespaces())
    assert not {f"inet {table_name(n.host, n.port)}" for n in lab.nodes} & set(tables(None))  # nor on the host
