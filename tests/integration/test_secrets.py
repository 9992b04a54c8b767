"""Secrets and configs on real nodes: a task reads its secret as a file, and the clear text is nowhere else."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from p2pswarm.testing.localcluster import REPO, cli_env, wait_until

from .cli_results import ok, one_line_error

CLEAR = b"pa55-" + os.urandom(12).hex().encode()
ROTATED = b"rotated-" + os.urandom(12).hex().encode()
SERVE = 'cd "$P2PSWARM_SECRETS/.." && exec "$0" -m http.server "$PORT" --bind "$P2PSWARM_HOST"'
"""The task serves its secrets/ and configs/ directories over HTTP (its output, in the data dir, stays clean)."""


def files_holding(root: Path, needles: tuple[bytes, ...]) -> list[str]:
    """Every file under ``root`` whose bytes contain one of ``needles`` (``grep -r``, sockets skipped)."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                data = path.read_bytes() if path.is_file() else b""
            except OSError:
                continue
            if any(n in data for n in needles):
                found.append(str(path))
    return found


def test_a_task_reads_its_secret_which_is_in_clear_nowhere_else(cluster, tmp_path):
    nodes = cluster.start_group(3)
    dd = ("--data-dir", str(nodes[0].data_dir))
    created = subprocess.run(cluster.command("secret", "create", "db-pass", "-", "--label", "app=db", *dd),
                             input=CLEAR.decode(), capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=60)
    secret_id = ok(created).stdout.strip()
    assert len(secret_id) == 25
    conf = tmp_path / "app.conf"
    conf.write_text("mode=test")
    ok(cluster.cli("config", "create", "app.conf", str(conf), *dd))
    missing = cluster.cli("secret", "create", "x", str(tmp_path / "nope"), *dd)
    assert one_line_error(missing) == f"error: cannot read {tmp_path / 'nope'}: No such file or directory"
    unknown = cluster.cli("service", "create", "ghost", "--secret", "nope", "--detach", *dd, "--", "/bin/true")
    assert "secret nope does not exist" in one_line_error(unknown)

    ok(cluster.cli("service", "create", "reader", "--replicas", "2", "--secret", "db-pass", "--config", "app.conf",
                   "--update-monitor", "1s", *dd, "--", "/bin/sh", "-c", SERVE, sys.executable, timeout=180))
    hosts = {n.name: n.addr.rsplit(":", 1)[0] for n in nodes}

    def served(want: bytes):
        """What each current task serves, when both serve ``want`` as db-pass (and the config)."""
        rows = json.loads(ok(cluster.cli("service", "ps", "reader", "--format", "json", *dd)).stdout)
        rows = [r for r in rows if r["current"] and r["desired"] == "running" and r["state"] == "running"]
        try:
            got = [(urllib.request.urlopen(f"http://{hosts[r['node_name']]}:{r['port']}/secrets/db-pass", timeout=2)
                    .read(), urllib.request.urlopen(f"http://{hosts[r['node_name']]}:{r['port']}/configs/app.conf",
                                                    timeout=2).read()) for r in rows]
        except OSError:
            return None
        return got if got == [(want, b"mode=test")] * 2 else None
    wait_until(lambda: served(CLEAR), 60, "both tasks to serve the secret and the config they read")

    refused = cluster.cli("secret", "rm", "db-pass", *dd)
    assert one_line_error(refused).startswith("error: secret db-pass is in use by service(s) reader:")
    listed = json.loads(ok(cluster.cli("secret", "ls", "--format", "json", *dd)).stdout)
    assert [(s["name"], s["id"], s["services"], s["labels"]) for s in listed] == [
        ("db-pass", secret_id, ["reader"], {"app": "db"})]

    # rotation: a new secret under the same file name, then the old one can go
    rotated = tmp_path / "v2"
    rotated.write_bytes(ROTATED)
    ok(cluster.cli("secret", "create", "db-pass-v2", str(rotated), *dd))
    ok(cluster.cli("service", "update", "reader", "--secret", "source=db-pass-v2,target=db-pass", *dd, timeout=180))
    wait_until(lambda: served(ROTATED), 60, "both new tasks to serve the rotated secret")
    ok(cluster.cli("secret", "rm", "db-pass", *dd))

    # the clear text (or its base64, as the CLI sent it) is nowhere: views, metrics, audit, logs, data dirs
    needles = (CLEAR, ROTATED, base64.b64encode(CLEAR), base64.b64encode(ROTATED))
    views = [ok(cluster.cli(*args, *dd)).stdout for args in (
        ("secret", "inspect", "db-pass-v2"), ("secret", "inspect", "db-pass-v2", "--pretty"),
        ("service", "inspect", "reader"), ("audit", "--limit", "100"))]
    views += [node.api.get("/metrics") for node in nodes]
    assert not [v for v in views for n in needles if n.decode() in v]
    assert not [n.name for n in nodes for x in needles if x in Path(n.log_path).read_bytes()]
    assert not [f for n in nodes for f in files_holding(n.data_dir, needles)]
    assert all(files_holding(n.data_dir, (b"mode=test",)) for n in nodes)  # the scan does reach the Raft logs

    ok(cluster.cli("service", "rm", "reader", *dd))
    wait_until(lambda: not any(n.api.get(f"/v1/nodes/{n.name}")["cluster"]["tasks"] for n in nodes), 60,
               "the service's tasks to end")
    ok(cluster.cli("secret", "rm", "db-pass-v2", *dd))
    ok(cluster.cli("config", "rm", "app.conf", *dd))
    assert json.loads(ok(cluster.cli("secret", "ls", "--format", "json", *dd)).stdout) == []
