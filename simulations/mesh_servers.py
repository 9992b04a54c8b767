"""The servers bench_mesh measures and forwards through: nginx (or --quick's Python stand-in), HAProxy and data planes.

**A backend address per case.** nginx (one process, one worker) listens on ``NGINX`` with one port per case
(``direct``, each ``mesh_*`` path, each HAProxy, each ``kernel_*`` case: :data:`BACKENDS`), and every path ends
at its case's port only. On loopback every client is 127.0.0.1, and the clients (wrk, HAProxy, the data planes)
pick their source ports by their own 4-tuple: if two cases ended at one nginx socket, a client could reuse a port
for which nginx still holds TIME_WAIT from the other case's connection. When the two 4-tuples differ on the
client's side (a DNATed kernel case against any other, or ``kernel_local`` against ``kernel_remote``: the kernel
draws initial sequence numbers and timestamp offsets from them), that TIME_WAIT socket takes about half such SYNs
for old duplicates (ACK, RST, the SYN sent again 10 ms or 1 s later): a stall of the measurement, not a cost of
the path (docs/benchmarks.md, "Kernel path"). With a port of its own, a case meets only its own TIME_WAIT sockets,
whose 4-tuples its new SYNs continue. Every process started here is stopped by pid (:class:`Procs`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh_clients import SMALL  # noqa: E402

from p2pswarm.mesh.control import FrameDecoder, encode_frame  # noqa: E402
from p2pswarm.testing.localcluster import free_port  # noqa: E402
from p2pswarm.testing.meshtls import free_port_pair, throwaway_ca, tls_section  # noqa: E402

NGINX = "127.0.6.2"
HAPROXY = "127.0.6.3"
DP_A = "127.0.6.11"
DP_B = "127.0.6.12"
BARE = "127.0.6.20"
MESH_CASES = ("mesh_local", "mesh_remote", "mesh_relay", "mesh_tls")
BACKENDS = ("direct", *MESH_CASES, "haproxy", "haproxy_mt", "haproxy_splice", "haproxy_splice_pipe1m",
            "kernel_local", "kernel_remote")
"""The headline run's cases, each with a port of its own on NGINX (see the module docstring)."""


def backend_ports(names: Iterable[str]) -> dict[str, int]:
    """A distinct free port on NGINX for each name."""
    ports: dict[str, int] = {}
    for name in names:
        while (port := free_port(NGINX)) in ports.values():
            pass
        ports[name] = port
    return ports


def tls_sections(*nodes: str) -> list[dict]:
    """Mesh TLS material for each node from one throwaway CA (what each node's security host makes)."""
    ca = throwaway_ca("benchcluster0001")
    return [tls_section(node, ca) for node in nodes]


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")


class Procs:
    """Every process this benchmark starts, stopped by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(self.procs):
            self.stop(p)


_DP_WITH_BULK_THREADS = ("import sys; from p2pswarm.mesh import dataplane, proxy; "
                         "proxy.BULK_THREADS = int(sys.argv[1]); sys.exit(dataplane.main(sys.argv[2:]))")


class DataPlaneProc:
    """A data-plane child fed over its stdin, status frames read by a thread.

    ``bulk_threads`` overrides proxy.BULK_THREADS in the child (None: the shipped value)."""

    def __init__(self, procs: Procs, args: list[str], bulk_threads: int | None = None) -> None:
        cmd = ["-m", "p2pswarm.mesh.dataplane"] if bulk_threads is None else \
            ["-c", _DP_WITH_BULK_THREADS, str(bulk_threads)]
        self.p = procs.start([sys.executable, *cmd, *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        self.status: dict | None = None
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        dec = FrameDecoder()
        while data := os.read(self.p.stdout.fileno(), 65536):
            for f in dec.feed(data):
                with self.cond:
                    self.status = f.get("status")
                    self.cond.notify_all()

    def push(self, table: dict) -> dict:
        self.p.stdin.write(encode_frame({"table": table}))
        self.p.stdin.flush()
        want = table["version"]
        with self.cond:
            if not self.cond.wait_for(lambda: self.status and self.status.get("version") == want, 30):
                raise RuntimeError("data plane did not apply its table")
            st = self.status
        if st.get("bind_errors") or st.get("table_error"):
            raise RuntimeError(f"data plane: {st.get('bind_errors') or st.get('table_error')}")
        return st

    def fresh_status(self, timeout: float = 5.0) -> dict:
        """The next status the data plane sends: its counters as of now, not as of its last tick."""
        with self.cond:
            old = self.status
            self.cond.wait_for(lambda: self.status is not old, timeout)
            return self.status or {}


def start_nginx(procs: Procs, tmp: Path, ports: Iterable[int], bulk_mb: int) -> None:
    """nginx serving small.txt and big.bin (``bulk_mb`` MB) on NGINX at each of ``ports``."""
    www = tmp / "www"
    www.mkdir()
    (www / "small.txt").write_bytes(b"x" * 63 + b"\n")
    with open(www / "big.bin", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(bulk_mb):
            f.write(chunk)
    for p in (tmp, www):
        os.chmod(p, 0o755)
    for p in www.iterdir():
        os.chmod(p, 0o644)
    listen = "\n".join(f"    listen {NGINX}:{port} reuseport backlog=4096;" for port in ports)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 120;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  server {{
{listen}
    root {www};
  }}
}}
""")
    procs.start(["nginx", "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
    for port in ports:
        wait_listening(NGINX, port)


def start_haproxy(procs: Procs, tmp: Path, name: str, listen: tuple[str, int], backend: tuple[str, int],
                  nbthread: int | None, splice: str = "option splice-auto", tune: str = "") -> int:
    """HAProxy as the same L4 balancer; returns its pid."""
    conf = tmp / f"{name}.cfg"
    threads = f"  nbthread {nbthread}\n" if nbthread else ""
    conf.write_text(f"""global
  maxconn 4096
{threads}{tune}
defaults
  mode tcp
  {splice}
  timeout connect 1s
  timeout client 300s
  timeout server 300s

frontend fe
  bind {listen[0]}:{listen[1]}
  default_backend be

backend be
  server s1 {backend[0]}:{backend[1]}
""")
    p = procs.start(["haproxy", "-f", str(conf), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(*listen)
    return p.pid


def start_bulk_haproxies(procs: Procs, tmp: Path, backends: dict[str, int]) -> tuple[dict[str, str],
                                                                                       dict[str, list[int]]]:
    """HAProxy with splicing forced, default pipes and 1 MB pipes, each to its case's port: bulk URLs and pids."""
    ha3, ha4 = free_port(HAPROXY), free_port(HAPROXY)
    forced = "option splice-request\n  option splice-response"
    ha_splice = start_haproxy(procs, tmp, "haproxysplice", (HAPROXY, ha3), (NGINX, backends["haproxy_splice"]),
                              nbthread=1,
                              splice=forced)
    ha_splice1m = start_haproxy(procs, tmp, "haproxysplice1m", (HAPROXY, ha4),
                                (NGINX, backends["haproxy_splice_pipe1m"]), nbthread=1,
                                splice=forced, tune="  tune.pipesize 1048576\n")
    return ({"haproxy_splice": f"http://{HAPROXY}:{ha3}/big.bin",
             "haproxy_splice_pipe1m": f"http://{HAPROXY}:{ha4}/big.bin"},
            {"haproxy_splice": [ha_splice], "haproxy_splice_pipe1m": [ha_splice1m]})


@contextmanager
def nginx_bench(prefix: str, bulk_mb: int, cases: Iterable[str]) -> Iterator[tuple[Procs, Path, dict[str, int]]]:
    """A temporary dir and nginx with a port of its own for each case ({case: port}); every process started
    meanwhile is stopped after."""
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        backends = backend_ports(cases)
        start_nginx(procs, tmp, backends.values(), bulk_mb)
        yield procs, tmp, backends
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def backend_entry(task: str, port: int, local: bool, via: str | None = None) -> dict:
    return {"task": task, "node": "n-nginx", "addr": f"{NGINX}:{port}", "local": local,
            "rtt": None if local else 0.0002, "via": via}


def dp_table(version: int, host: str, ports: list[dict], relay_port: int = 0, relay_allow=(),
             blocked=(), relay_from=()) -> dict:
    """A data plane's table; ``relay_from``: the member hosts its plaintext relay admits."""
    return {"version": version, "host": host, "relay_port": relay_port, "relay_allow": list(relay_allow),
            "relay_from": list(relay_from), "blocked_hosts": list(blocked), "ports": ports,
            "limits": {"max_conns": 4096, "connect_timeout": 1.0, "retries": 2, "idle_timeout": 300.0,
                       "drain_grace": 10.0}}


def start_mesh(procs: Procs, backends: dict[str, int], bulk_threads: int | None) -> tuple[DataPlaneProc,
                                                                                            DataPlaneProc, dict,
                                                                                            dict[str, str]]:
    """Data planes A and B, the four mesh paths of bench_mesh's docstring, each to its own port on NGINX
    (``backends``: {case: port}): A, B, A's status and {mesh_local, mesh_remote, mesh_relay, mesh_tls: base URL}."""
    local, remote, relay, tls = (backends[case] for case in MESH_CASES)
    a_port, a_relay, b_remote, b_relay = free_port(DP_A), free_port_pair(DP_A), free_port(DP_B), free_port(DP_B)
    b_tls = free_port(DP_B)
    tls_a, tls_b = tls_sections("bench-a", "bench-b")
    dpa = DataPlaneProc(procs, [], bulk_threads)
    dpb = DataPlaneProc(procs, [], bulk_threads)
    sta = dpa.push({**dp_table(1, DP_A, [{"port": a_port, "service": "web", "proxy_protocol": False,
                                          "backends": [backend_entry("t1", local, True)]}],
                               relay_port=a_relay, relay_allow=[f"{NGINX}:{relay}", f"{NGINX}:{tls}"],
                               relay_from=[DP_B]),
                    "tls": tls_a})
    dpb.push({**dp_table(1, DP_B, [
        {"port": b_remote, "service": "web", "proxy_protocol": False,
         "backends": [backend_entry("t1", remote, False)]},
        {"port": b_relay, "service": "web-relayed", "proxy_protocol": False,
         "backends": [backend_entry("t1", relay, False, via=f"{DP_A}:{a_relay}")]},
        {"port": b_tls, "service": "web-encrypted", "proxy_protocol": False,
         "backends": [{**backend_entry("t1", tls, False, via=f"{DP_A}:{a_relay + 1}"), "tls": True}]}]),
        "tls": tls_b})
    return dpa, dpb, sta, {"mesh_local": f"http://{DP_A}:{a_port}", "mesh_remote": f"http://{DP_B}:{b_remote}",
                           "mesh_relay": f"http://{DP_B}:{b_relay}", "mesh_tls": f"http://{DP_B}:{b_tls}"}


def tls_sessions_of(dp: DataPlaneProc) -> dict:
    """The TLS sessions' counters of a data plane's TLS relay side (from its last status)."""
    return {k: v for k, v in ((dp.status or {}).get("tls_relay") or {}).items() if "sessions" in k}


class _Files(BaseHTTPRequestHandler):
    """nginx's stand-in for --quick: the server's ``files`` by path, on HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait for the delayed ACK

    def do_GET(self) -> None:
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def python_backends(bulk_mb: int, cases: Iterable[str]) -> Iterator[dict[str, int]]:
    """small.txt and big.bin (``bulk_mb`` MB) served on NGINX by threads of this process, a server on a port of
    its own per case (as nginx's ``listen`` per case); yields {case: port}."""
    files = {"/small.txt": SMALL, "/big.bin": os.urandom(1 << 20) * bulk_mb}
    servers = {}
    try:
        for case, port in backend_ports(cases).items():
            servers[case] = server = ThreadingHTTPServer((NGINX, port), _Files)
            server.daemon_threads = True
            server.files = files
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        yield {case: server.server_address[1] for case, server in servers.items()}
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()

