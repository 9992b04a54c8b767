"""Image services on real nodes sharing one private Docker Engine: published through the mesh on
every node, their output in ``service logs``, bridge replicas side by side on one node, and a
SIGKILLed node's containers removed by its reaper within 5 s while the other nodes' stay."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request

import pytest

from p2pswarm.runtime import containerspec as cs
from p2pswarm.testing.localcluster import wait_until

from .cli_results import ok

pytestmark = pytest.mark.timeout(240)

SERVE = "echo $P2PSWARM_TASK_ID > /www/id; echo serving $P2PSWARM_TASK_ID; exec httpd -f -p 80 -h /www"


def served_by(host: str, port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/id", timeout=3) as resp:
            return resp.read().decode().strip()
    except OSError:
        return None


def containers(engine, node_id: str) -> list:
    with contextlib.closing(engine.client()) as client:
        return client.containers.list(all=True, filters={"label": f"{cs.NODE}={node_id}"})


def test_image_services_through_the_mesh_and_a_killed_nodes_containers_go(cluster, docker_engine):
    engine = ("--engine-socket", docker_engine.socket)
    first = cluster.start(0, (), *engine)
    wait_until(lambda: cluster.join_token((first.addr,)), 30, "the first node's join token")
    nodes = [first] + [cluster.start(i, (first.addr,), *engine) for i in (1, 2)]
    wait_until(lambda: all(n.info() for n in nodes), 60, "three nodes up")
    dd = ("--data-dir", str(first.data_dir))
    ids = {n.name: n.info()["id"] for n in nodes}
    published = cluster.published_port()
    ok(cluster.cli("service", "create", "web", "--image", docker_engine.image, "--replicas", "3",
                   "-p", f"{published}:80", "--stop-grace-period", "1s", *dd, "--", "sh", "-c", SERVE, timeout=120))

    def every_node_serves() -> bool:
        return all(served_by(n.host, published) for n in nodes)
    wait_until(every_node_serves, 90, "every node serving the image service through the mesh")
    rows = json.loads(ok(cluster.cli("service", "ps", "web", "--format", "json", *dd)).stdout)
    assert sorted(r["state"] for r in rows) == ["running"] * 3
    logs = ok(cluster.cli("service", "logs", "web", *dd)).stdout  # the containers' output, gathered from 3 nodes
    assert sorted(line.split()[-1] for line in logs.splitlines()) == sorted(r["id"] for r in rows)

    # two bridge replicas of one published port on one node both serve (each its own node port)
    pinned = cluster.published_port(taken=(published,))
    ok(cluster.cli("service", "create", "pair", "--image", docker_engine.image, "--replicas", "2",
                   "-p", f"{pinned}:80", "--constraint", f"node.name=={nodes[1].name}", "--stop-grace-period", "1s",
                   *dd, "--", "sh", "-c", SERVE, timeout=120))
    def pair_running() -> list | None:
        found = [c for c in containers(docker_engine, ids[nodes[1].name])
                 if c.labels[cs.SERVICE] == "pair" and c.status == "running"]
        return found if len(found) == 2 else None
    pair = wait_until(pair_running, 90, "two pair replicas running on one node")
    host_ports = [int(c.ports["80/tcp"][0]["HostPort"]) for c in pair]
    assert host_ports[0] != host_ports[1]
    assert sorted(wait_until(lambda: served_by(nodes[1].host, p), 30, "a replica answers") for p in host_ports) \
        == sorted(c.labels[cs.TASK] for c in pair)

    # SIGKILL a node: its reaper removes its containers, the others keep theirs (how fast: bench_runtime's
    # orphans_after_node_kill counts what is left 5 s after each kill)
    victim = nodes[2]
    assert containers(docker_engine, ids[victim.name])
    killed = time.monotonic()
    cluster.kill(2)
    wait_until(lambda: not containers(docker_engine, ids[victim.name]), 30, "the dead node's containers removed")
    print(f"the dead node's containers removed {time.monotonic() - killed:.2f} s after its SIGKILL")
    assert containers(docker_engine, ids[nodes[0].name]) and containers(docker_engine, ids[nodes[1].name])
    wait_until(lambda: all(served_by(n.host, published) for n in nodes[:2]), 90, "the survivors serving")
