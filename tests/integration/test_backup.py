"""Backup and restore on real nodes: a 3-node cluster's services, stack, kv and secret come back in a new cluster."""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request

from p2pswarm.api.client import ApiError
from p2pswarm.testing.localcluster import REPO, LocalCluster, wait_until

from .cli_results import ok, one_line_error

CLEAR = b"backup-" + os.urandom(8).hex().encode()
PASSPHRASE = "a long and careful passphrase"
SERVE = 'cd "$P2PSWARM_SECRETS/.." && exec "$0" -m http.server "$PORT" --bind "$P2PSWARM_HOST"'
APP = str(REPO / "tests" / "apps" / "http_server.py")
STACK = f"""
services:
  api:
    command: [{sys.executable}, {APP}]
    environment: {{ROLE: api}}
    deploy: {{replicas: 2}}
"""


def running(node, name: str) -> list[dict]:
    """The service's running current tasks, read through the node's API (what `service ps` shows)."""
    try:
        rows = node.api.get(f"/v1/services/{name}/tasks")["tasks"]
    except ApiError:
        return []
    return [r for r in rows if r["current"] and r["desired"] == "running" and r["state"] == "running"]


def served_secret(cluster, node) -> bytes | None:
    """What the running `reader` task serves as its db-pass secret file (None until it serves one)."""
    hosts = {n.name: n.host for n in cluster.nodes.values()}
    for row in running(node, "reader"):
        try:
            return urllib.request.urlopen(f"http://{hosts[row['node_name']]}:{row['port']}/secrets/db-pass",
                                          timeout=2).read()
        except OSError:
            return None
    return None


def test_backup_then_restore_into_a_new_cluster(cluster, tmp_path, tmp_path_factory):
    nodes = cluster.start_group(3)
    dd = ("--data-dir", str(nodes[1].data_dir))
    ok(cluster.cli("secret", "create", "db-pass", str(_write(tmp_path / "pw", CLEAR)), *dd))
    ok(cluster.cli("config", "create", "app.conf", str(_write(tmp_path / "conf", b"mode=prod")), *dd))
    ok(cluster.cli("service", "create", "reader", "--secret", "db-pass", "--config", "app.conf", "--detach", *dd,
                   "--", "/bin/sh", "-c", SERVE, sys.executable))
    ok(cluster.cli("stack", "deploy", "-c", str(_write(tmp_path / "stack.yml", STACK.encode())), "shop", *dd))
    for key, value in (("app/color", "blue"), ("app/limit", "42")):
        ok(cluster.cli("kv", "put", key, value, *dd))
    wait_until(lambda: served_secret(cluster, nodes[1]) == CLEAR and len(running(nodes[1], "shop_api")) == 2,
               60, "the reader serving its secret and 2 shop_api tasks")

    passfile = _write(tmp_path / "pass", PASSPHRASE.encode() + b"\n")
    backup = tmp_path / "cluster.bak"
    out = ok(cluster.cli("cluster", "backup", str(backup), "--passphrase-file", str(passfile), *dd)).stdout
    old_id = nodes[1].api.get("/v1/cluster")["cluster_id"]
    assert out.startswith(f"backed up cluster {old_id} at index ")
    assert "2 services (1 stack), 1 secret, 1 config, 2 kv keys" in out and backup.exists()
    assert CLEAR not in backup.read_bytes()
    again = cluster.cli("cluster", "backup", str(backup), "--passphrase-file", str(passfile), *dd)
    assert one_line_error(again) == f"error: {backup} exists; choose another name or replace it with --force"

    # a truncated file is one line here too (tests/cli/test_backup_cli.py has every other bad file)
    truncated = _write(tmp_path / "short.bak", backup.read_bytes()[:-100])
    assert "is truncated" in one_line_error(cluster.cli("cluster", "restore", str(truncated), "--passphrase-file",
                                                        str(passfile), *dd))
    used = one_line_error(cluster.cli("cluster", "restore", str(backup), "--passphrase-file", str(passfile), *dd))
    assert re.match(r"error: refusing to restore into a cluster that holds state \(2 services, \d+ tasks, "
                    r"1 secret, 1 config, 2 kv keys\); restore into a new cluster", used), used
    cluster.close()  # the old cluster is gone for good

    new = LocalCluster(tmp_path_factory.mktemp("r", numbered=True))
    try:
        fresh = new.start_group(1)
        nd = ("--data-dir", str(fresh[0].data_dir))
        out = ok(new.cli("cluster", "restore", str(backup), "--passphrase-file", str(passfile), *nd)).stdout
        assert out.startswith("restored 2 services (1 stack), 1 secret, 1 config, 2 kv keys from cluster ")
        wait_until(lambda: served_secret(new, fresh[0]) == CLEAR and len(running(fresh[0], "shop_api")) == 2,
                   60, "the restored reader serving the secret and 2 shop_api tasks in the new cluster")
        stacks = json.loads(ok(new.cli("stack", "ls", "--format", "json", *nd)).stdout)
        assert stacks == [{"name": "shop", "services": 1}]
        assert ok(new.cli("kv", "get", "app/color", *nd)).stdout.strip() == "blue"
        assert fresh[0].api.get("/v1/kv/app/limit")["value"] == "42"
        new_id = fresh[0].api.get("/v1/cluster")["cluster_id"]
        assert f"from cluster {old_id} " in out and out.rstrip().endswith(f"into cluster {new_id}")
        assert new_id != old_id
    finally:
        new.close()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
