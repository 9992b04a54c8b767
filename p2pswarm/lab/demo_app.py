"""The lab's demo web service: ``python -m p2pswarm.lab.demo_app``.

Listens on ``$PORT`` at ``$P2PSWARM_HOST`` (the node's address, when the node gives it)
or 0.0.0.0, and answers

    GET /        200 {"service", "task", "slot", "node", "host", "port", "gen"}
    GET /health  200 ok

``gen`` is ``$GEN`` (chaos runs may roll it out with ``service update --env GEN=n``).
Exits 0 on SIGTERM. Standard library only, so any node with Python can run it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def identity() -> dict:
    return {
        "service": os.environ.get("P2PSWARM_SERVICE"),
        "task": os.environ.get("P2PSWARM_TASK_ID"),
        "slot": os.environ.get("P2PSWARM_SLOT"),
        "node": os.environ.get("P2PSWARM_NODE"),
        "host": socket.gethostname(),
        "port": int(os.environ.get("PORT", "0")),
        "gen": os.environ.get("GEN"),
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "p2pswarm-demo/1"
    wbufsize = 64 * 1024
    """Buffered: each answer leaves in one write, so a replica killed mid-request (its node crashed) has
    sent nothing, and the mesh replays the request elsewhere; unbuffered, the headers could leave alone."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._reply(200, b"ok\n", "text/plain")
        elif path == "/":
            self._reply(200, json.dumps(identity()).encode() + b"\n", "application/json")
        else:
            self._reply(404, b'{"error": "not found"}\n', "application/json")

    def _reply(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:  # quiet: a load run would flood the task log
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main() -> None:
    port = os.environ.get("PORT")
    if not port or not port.isdigit():
        sys.exit("error: PORT is not set (run it as a p2pswarm task, or set PORT=8000)")
    host = os.environ.get("P2PSWARM_HOST") or "0.0.0.0"
    server = Server((host, int(port)), Handler)

    def on_term(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(f"demo listening on {host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
