"""`p2pswarm lab up/status/down`: README's first command must give a working local cluster with
its demo service, and `lab down` must leave no process (and no nftables table) behind."""

from __future__ import annotations

import http.client
import json
import re
import warnings

from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.cli.node_cmds import pid_alive
from p2pswarm.mesh import nft
from p2pswarm.mesh.kernel_plan import table_name
from p2pswarm.testing.localcluster import published_port, wait_until
from p2pswarm.transport.ports import NODE_PORT_SPAN


def lab_pids(lab_dir):
    pids = []
    for pid_file in list(lab_dir.glob("node-*/node.pid")) + list(lab_dir.glob("node-*/tasks/*/pid")):
        try:
            pids.append(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def get(url: str) -> dict | None:
    m = re.fullmatch(r"http://([\d.]+):(\d+)/", url)
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=3)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return json.loads(resp.read()) if resp.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def test_lab_up_deploys_the_demo_and_down_leaves_no_process(cluster, tmp_path_factory):
    lab = tmp_path_factory.mktemp("lab", numbered=True)
    hosts = [f"127.0.0.{10 + i}" for i in (1, 2, 3)]  # the lab's nodes, each holding port .. port + 4 itself
    port = published_port(hosts)
    demo_port = published_port(hosts, taken=range(port, port + NODE_PORT_SPAN))
    pids = []
    try:
        up = cluster.cli("lab", "up", "--nodes", "3", "--dir", str(lab), "--port", str(port),
                         "--preset", "test", "--demo-port", str(demo_port), timeout=180)
        assert up.returncode == 0, up.stderr
        assert "lab of 3 nodes is up" in up.stdout
        assert "demo: 3/3 tasks running" in up.stdout
        url = re.search(r"try: curl (http://\S+)", up.stdout).group(1)
        assert url == f"http://127.0.0.11:{demo_port}/"
        pids = lab_pids(lab)
        assert len(pids) == 3 + 3  # nodes and the demo's tasks
        ls = cluster.cli("node", "ls", "--data-dir", str(lab / "node-2"), "--format", "json")
        members = json.loads(ls.stdout)
        assert sorted(m["name"] for m in members) == ["node-1", "node-2", "node-3"]
        assert {m["status"] for m in members} == {"alive"}
        again = cluster.cli("lab", "up", "--nodes", "3", "--dir", str(lab), "--port", str(port))
        assert again.returncode == 1 and "already running" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
        status = cluster.cli("lab", "status", "--dir", str(lab))
        assert status.stdout.count("running") >= 3 and "demo: 3/3 tasks running" in status.stdout

        try:
            ApiClient(lab / "node-1", timeout=5).get("/v1/mesh")
            mesh = True
        except ApiError as exc:
            assert exc.status == 404, exc
            mesh = False
        if mesh:  # every node answers on the published port, whichever node runs the replicas
            for host in ("127.0.0.11", "127.0.0.12", "127.0.0.13"):
                answer = wait_until(lambda h=host: get(f"http://{h}:{demo_port}/"), 30,
                                    f"the demo through the mesh on {host}")
                assert answer["service"] == "demo" and answer["slot"] in {"1", "2", "3"}
        else:
            warnings.warn("lab demo URL not checked: the node has no routing mesh (GET /v1/mesh is 404)")

        tables = [table_name(f"127.0.0.1{i}", port) for i in (1, 2, 3)]
        if nft.probe() is None:  # as root the lab's nodes forward in the kernel: each has its nftables table
            assert all(nft.exists(t) for t in tables)
        down = cluster.cli("lab", "down", "--dir", str(lab), timeout=60)
        assert down.returncode == 0, down.stderr
        wait_until(lambda: not [pid for pid in pids if pid_alive(pid)], 15, "every lab process to exit")
        assert not any(nft.exists(t) for t in tables)  # and `lab down` leaves none behind
    finally:
        cluster.pids.update(pids or lab_pids(lab))
        cluster.cli("lab", "down", "--dir", str(lab), timeout=60)  # after a failure: no node, no table left


def test_lab_up_refuses_netns_without_root_or_a_bad_dir_in_one_line(cluster, tmp_path_factory):
    import os
    lab = tmp_path_factory.mktemp("lab", numbered=True)
    if os.geteuid() != 0:
        out = cluster.cli("lab", "up", "--netns", "--dir", str(lab))
        assert out.returncode == 1 and "--netns needs root" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    status = cluster.cli("lab", "status", "--dir", str(lab / "nothing"))
    assert status.returncode == 0 and "no lab in" in status.stdout
    down = cluster.cli("lab", "down", "--dir", str(lab / "nothing"))
    assert down.returncode == 0 and "no lab in" in down.stdout
