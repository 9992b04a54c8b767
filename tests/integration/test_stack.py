"""A stack of two services on a real 3-node cluster: deploy, redeploy, node inspect / rm, stack rm."""

from __future__ import annotations

import json
import sys

from p2pswarm.testing.localcluster import REPO, wait_until

from .test_services import ok, pid_alive, start

APP = str(REPO / "tests" / "apps" / "http_server.py")
STACK = """
services:
  web:
    command: [{python}, {app}]
    deploy: {{replicas: {web}, restart_policy: {{delay: 1s}}}}
  api:
    command: [{python}, {app}]
    environment: {{ROLE: api}}
    deploy: {{replicas: 1}}
"""


def running(cluster, node, name):
    out = ok(cluster.cli("service", "ps", name, "--format", "json", "--data-dir", str(node.data_dir)))
    return sum(1 for r in json.loads(out.stdout) if r["current"] and r["desired"] == "running"
               and r["state"] == "running")


def test_stack_deploy_redeploy_rm(cluster, tmp_path):
    nodes = start(cluster, 3)
    dd = ("--data-dir", str(nodes[1].data_dir))
    path = tmp_path / "stack.yml"
    path.write_text(STACK.format(python=sys.executable, app=APP, web=2))
    ok(cluster.cli("stack", "deploy", "-c", str(path), "demo", *dd))
    wait_until(lambda: running(cluster, nodes[1], "demo_web") == 2 and running(cluster, nodes[1], "demo_api") == 1,
               45, "2 web and 1 api tasks running")
    assert json.loads(ok(cluster.cli("stack", "ls", "--format", "json", *dd)).stdout) == \
        [{"name": "demo", "services": 2}]

    path.write_text(STACK.format(python=sys.executable, app=APP, web=3))
    out = ok(cluster.cli("stack", "deploy", "-c", str(path), "demo", *dd))
    assert "Updating service demo_web" in out.stdout and "Service demo_api is unchanged" in out.stdout
    wait_until(lambda: running(cluster, nodes[1], "demo_web") == 3, 45, "3 web tasks running")

    info = json.loads(ok(cluster.cli("node", "inspect", "n2", *dd)).stdout)
    assert info["swim"]["status"] == "alive" and info["swim"]["role"] in ("leader", "voter", "learner")
    refused = cluster.cli("node", "rm", "n2", *dd)
    assert refused.returncode == 1 and "is alive" in refused.stderr and len(refused.stderr.splitlines()) == 1
    cluster.kill(2)
    wait_until(lambda: (nodes[1].statuses() or {}).get("n2") == "dead", 30, "n2 seen dead")
    ok(cluster.cli("node", "rm", "n2", *dd))
    wait_until(lambda: running(cluster, nodes[1], "demo_web") == 3 and running(cluster, nodes[1], "demo_api") == 1,
               45, "the removed node's tasks replaced")
    nodes = nodes[:2]

    ok(cluster.cli("stack", "rm", "demo", *dd))
    wait_until(lambda: json.loads(ok(cluster.cli("service", "ls", "--format", "json", *dd)).stdout) == [], 30,
               "the stack's services to be gone")
    wait_until(lambda: not any((n.data_dir / "tasks").exists() and any(
        (d / "pid").exists() and pid_alive(int((d / "pid").read_text())) for d in (n.data_dir / "tasks").iterdir())
        for n in nodes), 30, "no task process left")

