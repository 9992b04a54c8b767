"""The dashboard's HTTP server: one static page, its scripts, two JSON answers it polls and the events stream.

Standard library only (``http.server``, a thread per request): the page is small and read by a
few people.  ``GET /api/state`` is the cluster (``GET /v1/top`` and ``GET /v1/mesh`` of the
local node), ``GET /api/events/stream`` the node's events as Server-Sent Events (the server follows
``GET /v1/events`` by its cursor; each message's ``id`` is the cursor, so a browser that reconnects
resumes where it stopped), ``GET /api/events?after=N`` one page of them, and ``GET /api/chaos`` the
newest ``lab chaos`` report.  Nothing here writes to the
node: :class:`NodeReader` only sends ``GET``.

The page is a fixed file and every value reaches it as JSON that the script puts in text
nodes, so names and labels cannot inject markup; the Content-Security-Policy forbids inline
script besides.  On loopback the server also refuses requests whose ``Host`` is not a
loopback name, so a web site cannot read it through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.dashboard import chaos, snapshot

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
STATIC_FILES = ("index.html", "dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.min.css")
"""The only files served (from ``static/``): no path ever reaches the file system."""
EVENTS_BACK_S = 600
"""On first load the page shows the events of the last ten minutes, then follows."""
STREAM_POLL_S = 1.0
"""How often the stream asks the node for new events (a local unix-socket request)."""
STREAM_LIFE_S = 300.0
"""A stream ends after this long and the browser reconnects (``retry``), so a forgotten tab holds no
thread for ever; the cursor in ``Last-Event-ID`` makes the reconnection lose nothing."""
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class NodeReader:
    """The local node's read-only answers the page needs (``GET`` only)."""

    def __init__(self, client: ApiClient, chaos_paths: list[Path]) -> None:
        self.client = client
        self.chaos_paths = chaos_paths

    def state(self) -> tuple[int, dict[str, Any]]:
        try:
            top = self.client.get("/v1/top")
        except ApiError as exc:
            return 502, {"error": f"node not reachable: {exc}"}
        try:
            mesh = self.client.get("/v1/mesh")
        except ApiError:
            mesh = None  # a node without a mesh: the rest of the page still works
        out = snapshot.state(top, mesh)
        out["time"] = time.time()
        return 200, out

    def events(self, after: str | None) -> tuple[int, dict[str, Any]]:
        query = {"after": after} if after is not None else {"since": repr(time.time() - EVENTS_BACK_S)}
        try:
            got = self.client.get("/v1/events?" + urllib.parse.urlencode(query))
        except ApiError as exc:
            if exc.status == 404:
                return 200, {"available": False, "reason": "events: not available on this node"}
            if exc.status == 503:
                return 200, {"available": False, "reason": f"events: {exc}"}
            return 502, {"error": f"node not reachable: {exc}"}
        return 200, {"available": True, "events": got.get("events", []), "cursor": got.get("cursor"),
                     "more": bool(got.get("more"))}

    def chaos(self) -> tuple[int, dict[str, Any]]:
        return 200, chaos.load(self.chaos_paths)


def loopback_host(host: str) -> bool:
    """``host`` (no port) names this machine: ``localhost`` or a loopback address."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8765`` → ``::1``)."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Handler(BaseHTTPRequestHandler):
    reader: NodeReader
    check_host: bool
    server_version = "p2pswarm-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a request per second per open page: no log line each

    def do_GET(self) -> None:
        if self.check_host and not loopback_host(_host_name(self.headers.get("Host", ""))):
            return self._send(421, b"this dashboard answers to localhost only\n", "text/plain; charset=utf-8")
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        answers: dict[str, Callable[[], tuple[int, dict[str, Any]]]] = {
            "/api/state": self.reader.state, "/api/chaos": self.reader.chaos,
            "/api/events": lambda: self._events(query.get("after")),
        }
        if url.path in answers:
            status, body = answers[url.path]()
            return self._send(status, json.dumps(body).encode(), "application/json")
        if url.path == "/api/events/stream":
            return self._stream_events(self.headers.get("Last-Event-ID") or query.get("after"))
        name = "index.html" if url.path == "/" else url.path.removeprefix("/static/")
        if name not in STATIC_FILES:
            return self._send(404, b"not found\n", "text/plain; charset=utf-8")
        data = resources.files("p2pswarm.dashboard").joinpath("static", name).read_bytes()
        self._send(200, data, STATIC_TYPES[Path(name).suffix])

    def _events(self, after: str | None) -> tuple[int, dict[str, Any]]:
        if after is not None and not after.isdigit():
            return 400, {"error": "after must be the cursor the previous answer gave"}
        return self.reader.events(after)

    def _stream_events(self, after: str | None) -> None:
        """Server-Sent Events: one ``data:`` message per answer of the node that holds events (and one
        when events are not available, so the page can say so), until the stream's life ends or the
        browser goes away."""
        if after is not None and not after.isdigit():
            after = None
        self._headers(200, "text/event-stream; charset=utf-8")
        self.wfile.write(b"retry: 2000\n\n")
        ends, first = time.monotonic() + STREAM_LIFE_S, True
        try:
            while time.monotonic() < ends:
                status, got = self._events(after)
                if first or got.get("events") or not got.get("available", True):
                    cursor = got.get("cursor")
                    head = f"id: {cursor}\n" if cursor is not None else ""
                    self.wfile.write(f"{head}data: {json.dumps(got)}\n\n".encode())
                    self.wfile.flush()
                    first = False
                if got.get("cursor") is not None:
                    after = str(got["cursor"])
                if not got.get("more"):
                    time.sleep(STREAM_POLL_S)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page was closed

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self._headers(status, content_type, len(body))
        self.wfile.write(body)

    def _headers(self, status: int, content_type: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def make_server(host: str, port: int, reader: NodeReader) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (not yet serving); on loopback it checks ``Host`` headers."""
    handler = type("DashboardHandler", (Handler,), {"reader": reader, "check_host": loopback_host(host)})
    server = (_Server6 if ":" in host else ThreadingHTTPServer)((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Serve until ``server.shutdown()`` (for tests)."""
    thread = threading.Thread(target=server.serve_forever, name="p2pswarm-dashboard", daemon=True)
    thread.start()
    return thread
