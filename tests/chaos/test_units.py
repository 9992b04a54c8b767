"""Fast checks of the chaos machinery that need no root: nftables rules, one-line netns errors,
the load generator against a local server, the demo app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from p2pswarm.api.client import NodeNotRunning
from p2pswarm.lab import load, netns
from p2pswarm.lab.chaos import ChaosRun
from p2pswarm.lab.scenario import Action
from p2pswarm.testing.localcluster import REPO, cli_env, free_host, free_port


def test_ruleset_drops_blocked_peers_and_a_share_of_the_rest_but_never_loopback():
    rules = netns.ruleset(12.4, ["10.77.3.4", "10.77.3.5", "10.77.3.4"])
    assert rules.startswith("table inet p2pswarm_chaos\ndelete table inet p2pswarm_chaos\n")
    assert 'iif "lo" accept' in rules and 'oif "lo" accept' in rules
    assert "ip saddr { 10.77.3.4, 10.77.3.5 } drop" in rules and "ip daddr { 10.77.3.4, 10.77.3.5 } drop" in rules
    assert rules.count("numgen random mod 100 < 12 drop") == 2
    plain = netns.ruleset(0, [])
    assert "numgen" not in plain and "saddr" not in plain


def test_netns_without_root_is_one_line(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(netns.NetnsError) as err:
        netns.check_available()
    assert str(err.value) == "--netns needs root (network namespaces and nftables); run as root or drop --netns"


def test_names_and_addresses():
    assert netns.ns_name(7, 3) == "p2ps-7-3" and netns.bridge_ns(7) == "p2ps-7-br"
    assert netns.node_ip(7, 3) == "10.77.7.3" and netns.bridge_ip(7) == "10.77.7.254"


class Flaky(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.server.calls % 2 == 0 else 503
        self.server.calls += 1
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_load_generator_counts_ok_failed_and_refused(tmp_path):
    host = free_host()
    server = ThreadingHTTPServer((host, 0), Flaky)
    server.calls = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = free_port(host)
    try:
        out = tmp_path / "load.json"
        load.main(["--targets", f"{host}:{server.server_address[1]},{host}:{closed}", "--rate", "40",
                   "--duration", "1", "--timeout", "1", "--out", str(out)])
        data = json.loads(out.read_text())
    finally:
        server.shutdown()
    rows = data["requests"]
    assert len(rows) == 40
    to_server = [r for r in rows if r[1] == 0]
    assert {r[4] for r in rows if r[1] == 1} == {"refused"}
    assert sum(r[2] for r in to_server) == 10 and {r[4] for r in to_server if not r[2]} == {"http_503"}
    assert all(0 <= r[0] < 1.1 for r in rows)


def test_demo_app_answers_identity_and_health():
    host = free_host()
    port = free_port(host)
    env = {**cli_env(), "PORT": str(port), "P2PSWARM_HOST": host, "P2PSWARM_TASK_ID": "t1", "P2PSWARM_SLOT": "2",
           "P2PSWARM_SERVICE": "demo", "P2PSWARM_NODE": "n1", "GEN": "7"}
    proc = subprocess.Popen([sys.executable, "-m", "p2pswarm.lab.demo_app"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import urllib.request
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/", timeout=2) as resp:
                    body = json.load(resp)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert body["task"] == "t1" and body["slot"] == "2" and body["node"] == "n1" and body["gen"] == "7"
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as resp:
            assert resp.status == 200
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class FakeNode:
    """A transport-mode lab node whose API answers (POST /v1/faults) only from call ``up_from`` on."""

    def __init__(self, index: int, up_from: int = 1) -> None:
        self.index, self.name, self.host, self.port = index, f"node-{index}", f"127.0.77.{10 + index}", 7946
        self.netns = None
        self.up_from, self.calls, self.faults = up_from, 0, None

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def api(self, timeout: float = 2.0) -> "FakeNode":
        return self

    def post(self, path: str, body: dict) -> None:
        self.calls += 1
        if self.calls < self.up_from:
            raise NodeNotRunning(f"no p2pswarm node is running with data dir /lab/{self.name}")
        self.faults = body


class FakeLab:
    def __init__(self, nodes: list[FakeNode]) -> None:
        self.nodes = nodes

    def node(self, index: int) -> FakeNode:
        return self.nodes[index - 1]


class Running:
    def poll(self) -> None:
        return None


def transport_run(tmp_path, nodes: list[FakeNode]) -> ChaosRun:
    run = ChaosRun(None, tmp_path, tmp_path)  # type: ignore[arg-type]
    run.lab = FakeLab(nodes)  # type: ignore[assignment]
    run.t0 = time.monotonic()
    return run


def test_partition_waits_for_a_restarted_node_whose_api_is_not_up_yet(tmp_path):
    starting = FakeNode(3, up_from=4)
    run = transport_run(tmp_path, [FakeNode(1), FakeNode(2), starting])
    run.starting["node-3"] = (run.t() + 5.0, Running())  # restarted just now, its process still runs
    run._do_partition(Action(6.0, "partition", groups=((1,), (2, 3))))
    assert [a["ok"] for a in run.actions] == [True], run.actions
    assert starting.faults == {"drop_rate": 0.0, "cut": ["127.0.77.11:7946"]}
    assert starting.calls == 4 and run.lab.node(1).faults["cut"] == ["127.0.77.12:7946", "127.0.77.13:7946"]


def test_partition_reports_a_node_that_does_not_answer_outside_its_start_grace(tmp_path):
    gone = FakeNode(3, up_from=100)
    run = transport_run(tmp_path, [FakeNode(1), FakeNode(2), gone])
    run.starting["node-3"] = (run.t() - 0.1, Running())  # its start grace is over
    began = time.monotonic()
    run._do_partition(Action(6.0, "partition", groups=((1,), (2, 3))))
    assert time.monotonic() - began < 1.0 and gone.calls == 1
    assert [(a["ok"], a["detail"]) for a in run.actions] == [(False, "not applied on node-3")]
    assert run.notes == ["faults on node-3: no p2pswarm node is running with data dir /lab/node-3"]
