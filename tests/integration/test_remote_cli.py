"""The remote CLI end to end: a CLI holding only a client bundle (no data dir, its own HOME) drives a
3-node cluster over TLS: contexts, service create/ls/ps; roles, revocation on every node, and a bundle
of another cluster refused, each with one line; the audit log shows who changed what.  Then `node rm` of
another node rotates the cluster key and CA: the bundles keep working on every node (they belong to the API CA,
which is re-sealed under the new cluster key), also on a node that joined after the removal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from p2pswarm.testing.localcluster import REPO, cli_env, free_port, wait_until

from .cli_results import one_line_error

pytestmark = pytest.mark.timeout(300)


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def start_node(cluster, index, peers=(), *extra):
    node = cluster.node(index)
    node.api_addr = f"{node.host}:{free_port(node.host)}"
    return cluster.start(index, peers, "--api-addr", node.api_addr, *extra)


MEMBERS_ONLY = ("--max-learners", "0")
"""The first three nodes (the only ones that can lead) keep no learners: every later node is a worker, outside
the Raft group, and must serve --api-addr from the access part its member sends."""


def role_of(cluster, node, name) -> str | None:
    result = cluster.cli("node", "ls", "--format", "json", "--data-dir", str(node.data_dir))
    if result.returncode != 0:
        return None
    return next((m["role"] for m in json.loads(result.stdout) if m["name"] == name and m["status"] == "alive"), None)


def in_raft_group(nodes) -> bool:
    try:
        return all(len(n.api.get("/v1/cluster")["members"]) == len(nodes) for n in nodes)
    except Exception:  # not up yet
        return False


def test_remote_cli_with_only_a_bundle(cluster, tmp_path):
    first = start_node(cluster, 0, (), *MEMBERS_ONLY)
    wait_until(lambda: cluster.join_token((first.addr,)), 30, "the first node's join token")
    nodes = [first] + [start_node(cluster, i, (first.addr,), *MEMBERS_ONLY) for i in (1, 2)]
    wait_until(lambda: in_raft_group(nodes), 90, "3 nodes in the Raft group")
    other = start_node(cluster, 9)  # a second, unrelated cluster
    wait_until(other.info, 30, "the other cluster's node")

    def issue(node, name, role):
        out = tmp_path / "bundles" / name
        wait_until(lambda: cluster.cli("cluster", "client-cert", name, "--role", role, "--out", str(out),
                                       "--data-dir", str(node.data_dir)).returncode == 0,
                   30, f"a client bundle from {node.name}", interval=0.5)  # once the node holds the CA
        return out

    ops, viewer, gone = issue(nodes[1], "ops", "operator"), issue(nodes[2], "viewer", "read-only"), \
        issue(nodes[0], "gone", "operator")
    stranger = issue(other, "stranger", "admin")
    assert (ops / "key.pem").stat().st_mode & 0o777 == 0o600

    env = cli_env()
    env.update(HOME=str(tmp_path / "home"), P2PSWARM_CONFIG_DIR=str(tmp_path / "config"))

    def remote(*args, timeout=120):
        return subprocess.run([sys.executable, "-m", "p2pswarm.cli.main", *args], capture_output=True, text=True,
                              cwd=REPO, env=env, timeout=timeout, stdin=subprocess.DEVNULL)

    url = f"https://{nodes[0].api_addr}"
    ok(remote("context", "create", "prod", "--host", url, "--bundle", str(ops), "--use"))
    assert "* " in next(line for line in ok(remote("context", "ls")).splitlines() if "prod" in line)
    ok(remote("service", "create", "web", "--replicas", "2", "--", sys.executable, "-c",
              "import time; time.sleep(600)"))
    assert "web" in ok(remote("service", "ls"))

    def both_running():
        rows = json.loads(ok(remote("service", "ps", "web", "--format", "json")))
        return sum(1 for r in rows if r["state"] == "running") == 2
    wait_until(both_running, 90, "2 running tasks seen through the remote API", interval=0.5)

    # A read-only bundle reads, on any node, but may not remove.
    for node in nodes:
        viewer_args = ("--host", f"https://{node.api_addr}", "--bundle", str(viewer))
        assert "web" in ok(remote(*viewer_args, "service", "ls"))
    assert one_line_error(remote(*viewer_args, "service", "rm", "web")) == \
        "error: DELETE /v1/services/web needs the operator role; this client certificate has read-only"
    assert one_line_error(remote("cluster", "join-token")) == \
        "error: GET /v1/security/join-token needs the admin role; this client certificate has operator"

    # Revoked on one node: refused by every node.
    ok(remote("--host", url, "--bundle", str(gone), "service", "ls"))
    ok(cluster.cli("cluster", "client-cert", "gone", "--revoke", "--data-dir", str(nodes[1].data_dir)))
    for node in nodes:
        args = ("--host", f"https://{node.api_addr}", "--bundle", str(gone), "service", "ls")
        wait_until(lambda: remote(*args).returncode != 0, 30, f"{node.name} refusing the revoked bundle")
        assert "is revoked; ask an admin for a new bundle" in one_line_error(remote(*args))

    # Another cluster's bundle: its CA signed neither the node's certificate nor is trusted by the node.
    line = one_line_error(remote("--host", url, "--bundle", str(stranger), "service", "ls"))
    assert "another cluster" in line

    # The operator's bundle still works, and the audit log names who did what.
    ok(remote("service", "rm", "web"))
    audit = json.loads(ok(cluster.cli("audit", "--format", "json", "--data-dir", str(nodes[2].data_dir))))
    calls = [(e["who"].split(" ")[0], e["method"], e["path"], e["status"]) for e in audit["entries"]]
    assert ("ops", "POST", "/v1/services", 200) in calls and ("ops", "DELETE", "/v1/services/web", 200) in calls
    assert ("viewer", "DELETE", "/v1/services/web", 403) in calls
    assert ("local", "DELETE", "/v1/security/client-certs/gone", 200) in calls

    metrics = nodes[0].api.get("/metrics")
    assert "p2pswarm_node_remote_api_refused_role_total" in metrics
    assert "p2pswarm_node_remote_api_refused_revoked_total" in metrics

    # `node rm` of a 4th node rotates the cluster key, the cluster CA and the join token: no bundle notices.
    ca_before = nodes[0].api.get("/v1/security/ca")["ca_fingerprint"]
    fourth = start_node(cluster, 3, (first.addr,))
    wait_until(lambda: role_of(cluster, nodes[0], fourth.name) == "worker", 90, "the 4th node in, as a worker")
    ok(cluster.cli("node", "rm", "--force", fourth.name, "--data-dir", str(nodes[1].data_dir)))

    def rotated() -> bool:
        views = [n.api.get("/v1/security") for n in nodes]
        return all(v["key_generation"] >= 1 and not v["rekey_pending"] for v in views) and \
            all(not n.api.get("/v1/security/ca")["rotating"] for n in nodes)
    wait_until(rotated, 120, "the rekey and CA rotation after node rm to finish on every node")
    assert nodes[0].api.get("/v1/security/ca")["ca_fingerprint"] != ca_before
    for node in nodes:
        assert "NAME" in ok(remote("--host", f"https://{node.api_addr}", "--bundle", str(ops), "service", "ls"))
    # a worker that joined after the removal holds only the new cluster key: it opens the API CA (re-sealed under
    # that key by the leader) from the access part its member sends, and serves the same bundles, refusing the
    # revoked one as the members do
    fifth = start_node(cluster, 4, (nodes[2].addr,))
    args = ("--host", f"https://{fifth.api_addr}", "--bundle", str(viewer), "service", "ls")
    wait_until(lambda: remote(*args).returncode == 0, 90, "the node started after node rm serving the old bundle",
               interval=0.5)
    assert "NAME" in ok(remote(*args))
    assert role_of(cluster, nodes[0], fifth.name) == "worker"
    revoked = ("--host", f"https://{fifth.api_addr}", "--bundle", str(gone), "service", "ls")
    assert "is revoked; ask an admin for a new bundle" in one_line_error(remote(*revoked))

    # `cluster api-ca --rotate` cuts off what a removed node's copy of the API CA key could still sign: every
    # bundle of the old API CA is refused (one line), a new one works on every node
    assert "rotated: every client bundle" in ok(cluster.cli("cluster", "api-ca", "--rotate", "--data-dir",
                                                             str(nodes[0].data_dir)))
    for node in nodes + [fifth]:
        args = ("--host", f"https://{node.api_addr}", "--bundle", str(ops), "service", "ls")
        wait_until(lambda args=args: remote(*args).returncode != 0, 30, f"{node.name} refusing the old API CA's bundle")
        assert "API CA was rotated" in one_line_error(remote(*args))
    fresh = issue(nodes[2], "ops2", "operator")
    for node in nodes + [fifth]:
        args = ("--host", f"https://{node.api_addr}", "--bundle", str(fresh), "service", "ls")
        wait_until(lambda args=args: remote(*args).returncode == 0, 30, f"{node.name} serving the new API CA's bundle")
