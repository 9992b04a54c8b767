"""The dashboard's server over real HTTP (on 127.0.0.1:0) with a stand-in for the node's API client:
what it serves, what it refuses, and how an old or unreachable node shows; and the CLI's --listen rules."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from click.testing import CliRunner

from p2pswarm.api.client import ApiError
from p2pswarm.cli.main import main
from p2pswarm.dashboard.server import NodeReader, make_server, serve_in_thread

TOP = {"node": {"name": "n1"}, "cluster": None, "services": [{"name": "web", "running": 1, "desired": 2}],
       "nodes": [{"id": "a", "name": "<b>n1</b>", "status": "alive", "labels": {"zone": "z1"}, "tasks": []}]}


class FakeNode:
    """Answers like ApiClient.get; records every path; ``down``/``old`` make it fail as a node would."""

    def __init__(self, down: bool = False, old: bool = False) -> None:
        self.down, self.old, self.paths = down, old, []

    def get(self, path: str):
        self.paths.append(path)
        if self.down:
            raise ApiError("no p2pswarm node is running with data dir /x")
        if path == "/v1/top":
            return TOP
        if path == "/v1/mesh":
            return {"running": True, "routes": []}
        if path.startswith("/v1/events?") and not self.old:
            return {"events": [{"type": "service", "action": "create"}], "cursor": 7, "more": False}
        raise ApiError("HTTP 404 from GET " + path, 404)


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(node: FakeNode) -> int:
        server = make_server("127.0.0.1", 0, NodeReader(node, [tmp_path]))  # type: ignore[arg-type]
        serve_in_thread(server)
        servers.append(server)
        return server.server_address[1]
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def get(port: int, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers={"Host": host} if host else {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_page_and_state_are_served_read_only_with_a_strict_policy(serve):
    node = FakeNode()
    port = serve(node)
    status, headers, body = get(port, "/")
    assert status == 200 and b"<title>p2pswarm dashboard</title>" in body
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    assert get(port, "/static/uPlot.iife.min.js")[0] == 200
    status, headers, body = get(port, "/api/state")
    state = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert state["zones"][0]["zone"] == "z1" and state["zones"][0]["nodes"][0]["name"] == "<b>n1</b>"  # data, as is
    assert state["services"][0]["name"] == "web" and state["mesh"]["ports"] == []
    assert set(node.paths) == {"/v1/top", "/v1/mesh"}  # GETs only: FakeNode has no way to write


def test_only_the_known_static_files_are_served(serve):
    port = serve(FakeNode())
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/etc/passwd", "/static/", "/api/nothing"):
        assert get(port, path)[0] == 404, path


def test_a_foreign_host_header_is_refused_on_loopback(serve):
    port = serve(FakeNode())
    assert get(port, "/api/state", host="attacker.example:8765")[0] == 421  # DNS rebinding
    assert get(port, "/api/state", host=f"localhost:{port}")[0] == 200
    assert get(port, "/api/state", host=f"[::1]:{port}")[0] == 200


def test_events_follow_the_cursor_or_say_they_are_not_available(serve):
    node = FakeNode()
    port = serve(node)
    first = json.loads(get(port, "/api/events")[2])
    assert first["available"] and first["cursor"] == 7 and node.paths[-1].startswith("/v1/events?since=")
    get(port, "/api/events?after=7")
    assert node.paths[-1] == "/v1/events?after=7"
    assert get(port, "/api/events?after=x")[0] == 400
    old = json.loads(get(serve(FakeNode(old=True)), "/api/events")[2])
    assert old == {"available": False, "reason": "events: not available on this node"}


def test_an_unreachable_node_is_one_error_line(serve):
    port = serve(FakeNode(down=True))
    status, _, body = get(port, "/api/state")
    assert status == 502 and json.loads(body)["error"].startswith("node not reachable: no p2pswarm node is running")
    assert get(port, "/")[0] == 200  # the page still loads and shows it


def test_chaos_answer_says_where_it_looked(serve, tmp_path):
    got = json.loads(get(serve(FakeNode()), "/api/chaos")[2])
    assert got["available"] is False and str(tmp_path) in got["reason"]


@pytest.mark.parametrize("listen, message", [
    ("0.0.0.0:8765", "is not a loopback address: add --public"),
    ("192.0.2.1:80", "is not a loopback address: add --public"),
    ("localhost", "expected HOST:PORT"),
    ("127.0.0.1:99999", "expected HOST:PORT"),
])
def test_listen_must_be_loopback_unless_public(listen, message, tmp_path):
    result = CliRunner().invoke(main, ["dashboard", "--listen", listen, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_port_in_use_is_one_error_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        result = CliRunner().invoke(main, ["dashboard", "--listen", listen, "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().endswith(f"cannot listen on {listen}: Address already in use"), result.output


def read_events(port: int, headers: dict[str, str], messages: int) -> list[tuple[str | None, dict]]:
    """The first ``messages`` Server-Sent Events of ``/api/events/stream``: (id, decoded data) each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/api/events/stream", headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    out: list[tuple[str | None, dict]] = []
    ident = None
    while len(out) < messages:
        line = resp.fp.readline().decode().rstrip("\n")
        if line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("data: "):
            out.append((ident, json.loads(line[6:])))
            ident = None
    conn.close()
    return out


def test_events_are_pushed_as_server_sent_events_that_resume_at_the_last_cursor(serve):
    node = FakeNode()
    port = serve(node)
    [(ident, first)] = read_events(port, {}, 1)
    assert ident == "7" and first["available"] and first["events"][0]["action"] == "create"
    assert node.paths[-1].startswith("/v1/events?since=")  # a new page starts ten minutes back
    read_events(port, {"Last-Event-ID": "7"}, 1)  # the browser reconnecting after a break
    assert "/v1/events?after=7" in node.paths  # resumes at the cursor it had, nothing shown twice


def test_a_node_without_events_is_said_once_on_the_stream(serve):
    [(ident, message)] = read_events(serve(FakeNode(old=True)), {}, 1)
    assert ident is None and message == {"available": False, "reason": "events: not available on this node"}
