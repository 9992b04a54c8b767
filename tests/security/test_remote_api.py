"""The remote API listener in-process over real TLS: the role matrix (every endpoint × every role, as
docs/operations.md documents it) and bad input (wrong, expired, revoked, other-cluster and missing
client certificates, plaintext, oversized and silent clients): one line each, counted, never a hang; and a
certificate minted with the API CA key but never issued through the cluster (a removed node's stolen copy)."""

from __future__ import annotations

import ast
import asyncio
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from p2pswarm.api import remote as remote_mod
from p2pswarm.api import roles
from p2pswarm.api.audit import Audited
from p2pswarm.api.client import ApiClient, ApiError, use_remote
from p2pswarm.api.forward import ApiForwarder
from p2pswarm.api.remote import RemoteApiServer
from p2pswarm.api.remote_client import remote
from p2pswarm.api.routes import Router
from p2pswarm.api.server import Response
from p2pswarm.cluster.state import Result
from p2pswarm.security import access
from p2pswarm.security.access import ROLES, AccessRecord
from p2pswarm.security.apica import ApiCA, issue_server
from p2pswarm.security.clientcerts import client_identity, issue_client, new_client_key, write_bundle
from p2pswarm.security.meshtls import Material, issue_leaf
from p2pswarm.security.pki import to_pem

pytestmark = pytest.mark.timeout(120)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ARGS = {"{name}": "web", "{node}": "n1", "{key}": "k1"}


class FakeTLS:
    """What the listener reads from the node's API CA keeper: the cluster id and a server certificate."""

    def __init__(self, cluster_id: str) -> None:
        now = time.time()
        self.cluster_id = cluster_id
        self.ca = ApiCA.create(cluster_id, now, os.urandom(32), os.urandom(16))
        cert, key = issue_server(self.ca, "node1", now, os.urandom(32), os.urandom(16))
        self.material = Material(cluster_id, to_pem(cert), key.decode(), to_pem(self.ca.cert_der))


class FakeDriver:
    def __init__(self) -> None:
        self.audit: list[dict] = []

    async def write_access(self, command, timeout=None):
        self.audit.append(command["entry"])
        return Result(True)


class SpyRouter:
    """The real router's endpoints; handlers replaced by a recorder (the role check is what is tested)."""

    def __init__(self, node) -> None:
        self.node, self.real, self.called = node, Router(node), []

    def endpoint(self, request):
        return self.real.endpoint(request)

    def __call__(self, request):
        self.called.append(self.real.endpoint(request))
        return Response.json({"ok": True})


class FakeNode:
    name = "node1"

    def __init__(self) -> None:
        self.driver = FakeDriver()

    def raft_driver(self):
        return self.driver


class Harness:
    """A RemoteApiServer on 127.0.0.1 in a background event loop."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.security = FakeTLS("clusterA")
        self.node = FakeNode()
        self.spy = SpyRouter(self.node)
        self.record = AccessRecord()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # wrapped as the node wires it (a member: nothing forwarded), so the listener talks to the same handler
        handler = ApiForwarder(Audited(self.spy), "n1", is_worker=lambda: False, members=list, is_peer=bool,
                               send=lambda node, msg: False)
        self.server = RemoteApiServer(("127.0.0.1", 0), handler, self.security, lambda: self.record)
        self.run(self.server.start())
        self.url = f"https://127.0.0.1:{self.server.addr[1]}"

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def bundle(self, name: str, role: str = "admin", *, ca: ApiCA | None = None, now: float | None = None,
               lifetime: float = 3600.0, recorded: bool = True, serial_entropy: bytes | None = None) -> Path:
        """A client bundle; ``recorded`` as ``cluster client-cert`` does (else minted with the key alone)."""
        ca = ca or self.security.ca
        public, key_pem = new_client_key(os.urandom(32))
        now = now or time.time()
        der = issue_client(ca, name, role, public, now, serial_entropy or os.urandom(16), lifetime=lifetime)
        ident = client_identity(der)
        if recorded:
            assert self.record.apply(access.client_command(f"c.{ident.serial}", serial=ident.serial, name=name,
                                                           role=role, issued_at=now, not_after=ident.not_after,
                                                           by="local"))[0]
        out = self.tmp / name
        write_bundle(out, ca_pem=self.security.material.anchors_pem, cert_pem=to_pem(der), key_pem=key_pem,
                     info={"cluster_id": self.security.cluster_id, "name": name, "role": role,
                           "serial": ident.serial, "not_after": 0})
        return out

    def call(self, bundle: Path, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(bundle / "ca.pem"))
        ctx.load_cert_chain(str(bundle / "cert.pem"), str(bundle / "key.pem"))
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.addr[1], timeout=10, context=ctx)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


def documented_roles() -> dict[str, str]:
    """endpoint -> role from the role table in docs/operations.md (each endpoint counted once)."""
    section = DOCS.read_text().split("## Remote CLI", 1)[1].split("\n## ", 1)[0]
    table: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[1] in ROLES:
            for endpoint in re.findall(r"`([A-Z]+ /[^`]*)`", cells[0]):
                assert endpoint not in table, f"{endpoint} is documented twice"
                table[endpoint] = cells[1]
    return table


def concrete(endpoint: str) -> tuple[str, str]:
    method, pattern = endpoint.split(" ", 1)
    for var, value in ARGS.items():
        pattern = pattern.replace(var, value)
    return method, pattern


def test_every_route_has_exactly_one_role_and_the_docs_agree():
    served = Router(FakeNode()).endpoints()
    assert len(served) == len(set(served)), "a route is registered twice"
    tree = ast.parse(Path(roles.__file__).read_text())
    keys = [k.value for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
            and getattr(node.target, "id", "") == "ENDPOINTS" for k in node.value.keys]
    assert len(keys) == len(set(keys)), "an endpoint appears twice in the role table"
    assert set(served) == set(roles.ENDPOINTS), "routes without a role, or roles without a route"
    assert documented_roles() == roles.ENDPOINTS


def test_rbac_matrix_every_route_times_every_role(harness):
    bundles = {role: harness.bundle(f"user-{role}", role) for role in ROLES}
    documented = documented_roles()
    for endpoint in sorted(Router(FakeNode()).endpoints()):
        needed = documented[endpoint]
        method, path = concrete(endpoint)
        for role in ROLES:
            harness.spy.called.clear()
            status, body = harness.call(bundles[role], method, path, b"{}" if method != "GET" else None)
            if ROLES.index(role) >= ROLES.index(needed):
                assert status == 200 and harness.spy.called == [endpoint], (endpoint, role, status, body)
            else:
                assert status == 403 and harness.spy.called == [], (endpoint, role, status, body)
                assert body["error"] == f"{method} {path} needs the {needed} role; this client certificate has {role}"
    refused = sum(1 for e, r in documented.items() for role in ROLES if ROLES.index(role) < ROLES.index(r))
    assert harness.server.stats()["refused_role"] == refused


def test_mutating_calls_are_audited_with_who_and_outcome(harness):
    reader, operator = harness.bundle("rita", "read-only"), harness.bundle("otto", "operator")
    assert harness.call(operator, "POST", "/v1/services/web/scale", b"{}")[0] == 200
    assert harness.call(reader, "DELETE", "/v1/services/web")[0] == 403
    assert harness.call(reader, "GET", "/v1/services")[0] == 200  # a read: not audited
    assert harness.call(reader, "POST", "/v1/services/web/logs", b"{}")[0] == 200  # a read by POST: not audited
    deadline = time.monotonic() + 10
    while len(harness.node.driver.audit) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    entries = [(e["who"].split(" ")[0], e["role"], e["method"], e["path"], e["status"], e["node"])
               for e in harness.node.driver.audit]
    assert entries == [("otto", "operator", "POST", "/v1/services/web/scale", 200, "node1"),
                       ("rita", "read-only", "DELETE", "/v1/services/web", 403, "node1")]


def test_a_failing_handler_answers_500_instead_of_dropping_the_connection(harness, monkeypatch):
    """A bug behind the listener must reach the client as an error it can read, not as a closed socket that
    the CLI can only explain as a refused certificate."""
    def broken(*args):
        raise RuntimeError("boom")
    monkeypatch.setattr(harness.server.handler, "record", broken)  # the audit of a refused role fails
    status, body = harness.call(harness.bundle("ann", "read-only"), "DELETE", "/v1/services/web")
    assert status == 500 and "internal error on this node" in body["error"]
    assert harness.server.stats()["internal_errors"] == 1


def _cli_error(harness, bundle: Path, path: str = "/v1/services") -> str:
    use_remote(remote(harness.url, bundle))
    try:
        with pytest.raises(ApiError) as err:
            ApiClient(timeout=10).get(path)
        return str(err.value)
    finally:
        use_remote(None)


def test_refused_certificates_get_one_line_each_and_are_counted(harness):
    good = harness.bundle("good", "admin")
    use_remote(remote(harness.url, good))
    try:
        assert ApiClient(timeout=10).get("/v1/services") == {"ok": True}
    finally:
        use_remote(None)
    other = FakeTLS("clusterB").ca
    cases = {
        "expired": harness.bundle("old", now=time.time() - 7200, lifetime=3600),
        "other-cluster": harness.bundle("stranger", ca=other),
    }
    for what, bundle in cases.items():
        line = _cli_error(harness, bundle)
        assert "\n" not in line and line.startswith(f"the node at {harness.url} ") \
            and "refused this client certificate" in line, (what, line)
    revoked = harness.bundle("gone", "admin")
    serial = json.loads((revoked / "bundle.json").read_text())["serial"]
    assert harness.record.apply(access.revoke_command("r", [serial]))[0]
    assert _cli_error(harness, revoked) == \
        f"the client certificate gone (serial {serial}) is revoked; ask an admin for a new bundle"
    # A leaf of the same CA with client authentication that is not a client certificate is no client.
    leaf, key = issue_leaf(harness.security.ca, "node2", time.time(), os.urandom(32), os.urandom(16))
    wrong = harness.tmp / "leaf"
    write_bundle(wrong, ca_pem=harness.security.material.anchors_pem, cert_pem=to_pem(leaf),
                 key_pem=key.decode(), info={"cluster_id": "clusterA"})
    assert _cli_error(harness, wrong).startswith("the certificate presented is not a client certificate of this")
    stats = harness.server.stats()
    assert stats["refused_handshake"] == 2 and stats["refused_revoked"] == 1 and stats["refused_not_client"] == 1
    assert harness.call(good, "GET", "/v1/info")[0] == 200  # still serving


def test_a_certificate_minted_with_the_api_ca_key_but_never_issued_is_refused(harness):
    """A removed node's data dir holds the API CA key: what it mints is signed right but not recorded."""
    issued = harness.bundle("rita", "read-only", serial_entropy=b"\x11" * 16)
    assert harness.call(issued, "GET", "/v1/services")[0] == 200
    forged = {
        "unrecorded": harness.bundle("mallory", "admin", recorded=False),
        "recorded serial, higher role": harness.bundle("rita-admin", "admin", recorded=False,
                                                       serial_entropy=b"\x11" * 16),
    }
    serials = {what: json.loads((b / "bundle.json").read_text())["serial"] for what, b in forged.items()}
    assert serials["recorded serial, higher role"] == json.loads((issued / "bundle.json").read_text())["serial"]
    for what, bundle in forged.items():
        harness.spy.called.clear()
        line = _cli_error(harness, bundle, "/v1/security/join-token")
        name = json.loads((bundle / "bundle.json").read_text())["name"]
        assert line == (f"the client certificate {name} (serial {serials[what]}) is not one this cluster issued "
                        f"(`p2pswarm cluster client-certs` lists them); if it was issued a moment ago retry, "
                        f"otherwise ask an admin for a new bundle"), (what, line)
        assert harness.spy.called == [], what  # the router never saw the call
    assert harness.server.stats()["refused_unrecorded"] == 2
    # once recorded (as `cluster client-cert` does), the same kind of certificate is accepted
    assert harness.call(harness.bundle("alice", "admin"), "GET", "/v1/security/join-token")[0] == 200


def _raw(harness, data: bytes, tls: bool = False, bundle: Path | None = None) -> bytes:
    sock = socket.create_connection(("127.0.0.1", harness.server.addr[1]), timeout=20)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if bundle is not None:
            ctx.load_cert_chain(str(bundle / "cert.pem"), str(bundle / "key.pem"))
        sock = ctx.wrap_socket(sock)
    with sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ssl.SSLError, ConnectionResetError) as exc:
            chunks.append(f"<{type(exc).__name__}>".encode())
        return b"".join(chunks)


def test_plaintext_oversized_no_cert_and_silent_clients(harness, monkeypatch):
    good = harness.bundle("good", "admin")
    reply = _raw(harness, b"GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and b"this port speaks TLS 1.3 with client certificates" in reply
    status, body = harness.call(good, "POST", "/v1/services", b"x" * (1024 * 1024 + 1))
    assert status == 413 and body["error"] == f"body over {1024 * 1024} bytes"
    reply = _raw(harness, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", tls=True, bundle=good)
    assert b" 413 " in reply.split(b"\r\n")[0] and b"request headers too large" in reply
    reply = _raw(harness, b"GET /v1/info HTTP/1.1\r\n\r\n", tls=True)  # no client certificate
    assert b"HTTP/1.1 200" not in reply
    monkeypatch.setattr(remote_mod, "HANDSHAKE_TIMEOUT", 0.3)
    monkeypatch.setattr(remote_mod, "READ_TIMEOUT", 0.3)
    silent = socket.create_connection(("127.0.0.1", harness.server.addr[1]), timeout=20)
    with silent:
        assert silent.recv(10) == b""  # closed by the server, not left hanging
    reply = _raw(harness, b"GET /v1/info HTTP/1.1\r\n", tls=True, bundle=good)  # headers never end
    assert reply.startswith(b"HTTP/1.1 408 ") and b"the request did not arrive within 0.3 s" in reply
    stats = harness.server.stats()
    assert stats["refused_plaintext"] == 1 and stats["refused_bad_request"] == 2
    assert stats["refused_handshake"] == 1 and stats["handshake_timeout"] == 1 and stats["read_timeout"] == 1
    assert harness.call(good, "GET", "/v1/info")[0] == 200
