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

from p2pswarm.lab import load, netns
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
