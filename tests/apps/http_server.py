"""A tiny task for tests: serves its identity as JSON on $PORT and /health; exits 0 on SIGTERM.

    GET /        {"task", "service", "slot", "node", "port", "client"} (client: the connection's source address)
    GET /health  200 "ok"
"""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    wbufsize = 64 * 1024
    """Buffered: headers and body leave in one write when the request ends. Unbuffered, a task killed
    between the two (its node SIGKILLed) sent the headers alone, and the mesh cannot replay a request
    whose backend has begun to answer: a test under a node crash saw an IncompleteRead."""

    def do_GET(self):
        if self.path == "/health":
            body, kind = b"ok", "text/plain"
        elif self.path == "/":
            body = json.dumps({
                "task": os.environ.get("P2PSWARM_TASK_ID"), "service": os.environ.get("P2PSWARM_SERVICE"),
                "slot": os.environ.get("P2PSWARM_SLOT"), "node": os.environ.get("P2PSWARM_NODE"),
                "port": int(os.environ["PORT"]), "client": self.client_address[0],
            }).encode()
            kind = "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s\n" % (fmt % args))


def main():
    # all interfaces: the node's own address (P2PSWARM_HOST, for other nodes' meshes) and 127.0.0.1
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True

    def on_term(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
