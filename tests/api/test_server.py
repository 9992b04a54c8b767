"""The local API: HTTP parsing, routing, errors and the Prometheus text, with a fake node."""

import asyncio
import json
import os
import socket
import stat
from types import SimpleNamespace

import pytest

from p2pswarm.api.audit import Audited
from p2pswarm.api.client import ApiClient, ApiError, NodeNotRunning
from p2pswarm.api.metrics import render_metrics
from p2pswarm.api.routes import Router
from p2pswarm.api.server import ApiServer, Request, Response

pytestmark = pytest.mark.timeout(30)


class FakeNode:
    """A node before Raft, without services or security (:class:`p2pswarm.node.view.NodeView`)."""
    node_id, name, swim, security, api_ca, agent, logs = "abcd", "n", None, None, None, None, None

    def __init__(self):
        self.faults = {"drop_rate": 0.0}
        self.stopped = 0

    def raft_driver(self):
        return None

    def mesh_metrics(self):
        return {}

    def info(self):
        return {"id": "abcd", "name": "n"}

    def member_views(self):
        return [{"id": "abcd", "name": "n", "status": "alive"}]

    def request_shutdown(self):
        self.stopped += 1

    def fault_settings(self):
        return self.faults

    def configure_faults(self, settings):
        if "drop_rate" in settings and not 0 <= settings["drop_rate"] <= 1:
            raise ValueError("drop_rate must be a number from 0 to 1, got 3")
        self.faults.update(settings)
        return self.faults

    def heal_faults(self):
        self.faults = {"drop_rate": 0.0}
        return self.faults

    def metrics_snapshot(self):
        return {"members_by_status": {"alive": 2, "dead": 1}, "joined": True, "swim": {"probes": 3},
                "transport": {"sent": 9}, "node": {"wire_errors": 1}}


def raw(path, data):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def with_server(tmp_path, scenario):
    node = FakeNode()
    path = str(tmp_path / "api.sock")

    async def main():
        server = ApiServer(path, Router(node))
        await server.start()
        try:
            await asyncio.to_thread(scenario, path, ApiClient(tmp_path))
        finally:
            await server.close()
    asyncio.run(main())
    return node


def test_endpoints(tmp_path):
    def scenario(path, client):
        assert oct(stat.S_IMODE(os.stat(path).st_mode)) == oct(0o600)
        assert client.get("/v1/info")["id"] == "abcd"
        assert client.get("/v1/members")["members"][0]["status"] == "alive"
        assert client.post("/v1/faults", {"drop_rate": 0.25})["drop_rate"] == 0.25
        with pytest.raises(ApiError, match="drop_rate must be") as exc:
            client.post("/v1/faults", {"drop_rate": 3})
        assert exc.value.status == 400
        with pytest.raises(ApiError, match="JSON object"):
            client.post("/v1/faults", [1])
        assert client.request("DELETE", "/v1/faults")["drop_rate"] == 0
        with pytest.raises(ApiError, match="no such endpoint") as exc:
            client.get("/v2/nothing")
        assert exc.value.status == 404
        with pytest.raises(ApiError, match="accepts POST") as exc:
            client.get("/v1/shutdown")
        assert exc.value.status == 405
        assert "p2pswarm_joined 1" in client.get("/metrics")
        assert client.post("/v1/shutdown")["stopping"] is True
    node = with_server(tmp_path, scenario)
    assert node.stopped == 1


def test_malformed_requests_get_clean_errors(tmp_path):
    def scenario(path, client):
        assert raw(path, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert raw(path, b"POST /v1/faults HTTP/1.1\r\nContent-Length: x\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert raw(path, b"POST /v1/faults HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").startswith(b"HTTP/1.1 413")
        reply = raw(path, b"POST /v1/faults HTTP/1.1\r\nContent-Length: 5\r\n\r\n{nope")
        assert reply.startswith(b"HTTP/1.1 400") and b"not valid JSON" in reply
        assert raw(path, b"GET /v1/info HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n").startswith(b"HTTP/1.1 413")
        assert client.get("/v1/info")["id"] == "abcd"  # still serving
    with_server(tmp_path, scenario)


def test_client_says_how_to_start_a_node(tmp_path):
    with pytest.raises(NodeNotRunning) as exc:
        ApiClient(tmp_path).get("/v1/info")
    assert str(exc.value) == (f"no p2pswarm node is running with data dir {tmp_path} "
                              "(start one with `p2pswarm up`)")


def test_metrics_text_format():
    text = render_metrics(FakeNode().metrics_snapshot())
    assert text.endswith("\n")
    lines = text.splitlines()
    assert '# TYPE p2pswarm_members gauge' in lines
    assert 'p2pswarm_members{status="dead"} 1' in lines
    assert "p2pswarm_swim_probes_total 3" in lines
    assert "p2pswarm_node_wire_errors_total 1" in lines
    assert "p2pswarm_transport_sent 9" in lines
    for line in lines:
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value)
            assert name.replace("{", " ").split()[0].replace("_", "a").isalnum()
    json.dumps(text)


def test_socket_is_private_from_its_bind(tmp_path, monkeypatch):
    """The socket file must never exist with a mode others could connect through, not even between
    bind() and a chmod: the mode is read at the first chmod of it (what a racing task would see)."""
    path = str(tmp_path / "api.sock")
    seen = []
    chmod = os.chmod

    def spy(target, mode, *args, **kwargs):
        if os.fspath(target) == path and not seen:
            seen.append(stat.S_IMODE(os.stat(path).st_mode))
        return chmod(target, mode, *args, **kwargs)
    monkeypatch.setattr(os, "chmod", spy)

    async def main():
        server = ApiServer(path, Router(FakeNode()))
        await server.start()
        try:
            return stat.S_IMODE(os.stat(path).st_mode), os.umask(0o022)
        finally:
            await server.close()
    old = os.umask(0o022)  # a usual umask: a plain bind makes the socket 0755
    try:
        final, umask_after = asyncio.run(main())
    finally:
        os.umask(old)
    assert [oct(m) for m in seen] in ([], [oct(0o600)]) and oct(final) == oct(0o600)
    assert umask_after == 0o022  # the process umask is restored after the bind


def test_closing_the_server_ends_the_requests_it_is_still_answering(tmp_path):
    """A handler that waits (a commit that never comes) must not keep the node's API, and so the node, from
    closing: the client is told the node is stopping instead of waiting for good."""
    path = str(tmp_path / "api.sock")

    async def main():
        never = asyncio.Event()

        async def stuck(request):
            await never.wait()
        server = ApiServer(path, stuck)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"POST /services HTTP/1.1\r\nHost: node\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is now waiting
        await asyncio.wait_for(server.close(), 5)
        answer = await asyncio.wait_for(reader.read(), 5)  # an answer and the end of the stream, not a hang
        writer.close()
        return answer
    answer = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.1 503") and b"the node is stopping" in answer


def test_a_client_that_stops_reading_a_large_answer_does_not_hold_the_server(tmp_path):
    path = str(tmp_path / "api.sock")
    size = 32 * 1024 * 1024  # far more than the socket buffers hold

    async def main():
        server = ApiServer(path, lambda request: Response(200, b"x" * size, "text/plain"))
        await server.start()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET /big HTTP/1.1\r\nHost: node\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)  # the answer fills the buffers; the client reads nothing
        await asyncio.wait_for(server.close(), 5)
        got = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
                got += chunk
        except ConnectionError:
            pass
        writer.close()
        return len(got)
    # the connection was dropped at close: what the buffers held, not the whole answer a lingering one would send
    assert asyncio.run(main()) < size


def test_a_change_cut_short_by_the_node_stopping_is_still_audited():
    """A change that waits for its commit when the node stops may still commit: the audit log says it was asked."""
    recorded = []

    class Waiting:
        node = SimpleNamespace(name="node1")

        def endpoint(self, request):
            return "POST /v1/services"

        async def __call__(self, request):
            await asyncio.Event().wait()
    audited = Audited(Waiting())
    audited.record = lambda request, endpoint, status: recorded.append((endpoint, status))

    async def main():
        call = asyncio.ensure_future(audited(Request("POST", "/v1/services", {})))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    asyncio.run(main())
    assert recorded == [("POST /v1/services", 503)]
