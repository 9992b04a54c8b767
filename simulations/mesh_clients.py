"""bench_mesh's load clients: Python's stand-in for wrk (``--quick``) and clients in other network namespaces.

**Why clients in other namespaces.** On one host's loopback every client is 127.0.0.1 (the prefsrc of the
``local 127.0.0.0/8`` route), whatever 127.x address it connects to: wrk, HAProxy and the data planes all
reach nginx from 127.0.0.1 and share its ephemeral ports. A kernel-path connection (DNAT, no SNAT) reaches
nginx with the same client address and port as those; its conntrack reply tuple then clashes with another
path's entry, NAT moves its source port to a random free one, and that port may still be held by one of
nginx's TIME_WAIT sockets, from another connection whose timestamps and sequence numbers lie in another,
unrelated space (they are keyed on the client's own addresses and ports). The TIME_WAIT socket takes
about half such SYNs for old duplicates and answers with an ACK; the client resets and sends its SYN again
(2 jiffies later, 8 ms at HZ=250). A client on another host has an address of its own, and its
connections reach the replica as one path does (measured: docs/architecture.md "Kernel path").

So each case here gets a namespace of its own, one client host per path: a veth pair with
``198.18.<run>.<4i+2>/30`` (RFC 2544's benchmarking range) inside and ``<4i+1>`` on the host's side,
``route_localnet`` on both ends (settings of interfaces made here, gone with them) so that the 127.0.6.x
addresses bench_mesh's servers listen on are reachable through it, and ``lo`` left down so that 127/8 is
not local in there. Names (``bmc<run>-<i>``, veths ``bmc<run>h<i>``) are unique per run: ``<run>`` is the
first number whose namespace name ``ip netns add`` could make. Every namespace is deleted at the end by
the name this run made (which deletes its veth pair), after killing by pid what still runs inside.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
from typing import Iterable

SMALL = b"x" * 63 + b"\n"
"""The small file nginx (or --quick's backend) serves: 64 bytes."""
PREFIX = "bmc"
SUBNET = "198.18"
MAX_RUNS = 250
TIMEOUT = 20.0


def py_load(url: str, conns: int, seconds: float, close: bool) -> dict:
    """wrk's stand-in for --quick: GETs of small.txt one after another for ``seconds``, on one
    connection or a new one per request (``conns`` is ignored). An error is a request that
    failed or a body other than SMALL."""
    parts = urllib.parse.urlsplit(url)
    conn, times, errors = None, [], 0
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        try:
            conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            conn.request("GET", parts.path, headers={"Connection": "close"} if close else {})
            resp = conn.getresponse()
            ok = resp.status == 200 and resp.read() == SMALL
        except (OSError, http.client.HTTPException):
            ok = False
        if ok:
            times.append(time.perf_counter() - start)
        else:
            errors += 1
        if close or not ok:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    p50 = round(statistics.median(times) * 1000, 3) if times else None
    return {"rps": round(len(times) / seconds, 1), "p50_ms": p50, "p99_ms": None, "errors": errors}


def syn_retransmits_in(netstat: str) -> int:
    """``TcpExt: TCPSynRetrans`` (SYNs sent again) of a /proc/net/netstat text."""
    lines = netstat.splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split())).get("TCPSynRetrans", 0))
    return 0


def syn_retransmits_here() -> int:
    """SYNs sent again so far by every socket of this process's network namespace (0 when unreadable)."""
    try:
        with open("/proc/net/netstat") as f:
            return syn_retransmits_in(f.read())
    except OSError:
        return 0


def unavailable() -> str | None:
    """None when clients can run in namespaces of their own here, else why not (one line)."""
    if os.geteuid() != 0:
        return "not root (network namespaces need CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "the ip command is missing (apt-get install -y iproute2)"
    return None


def _ip(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(("-n", ns) if ns else ()), *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.returncode}")
    return done


def _sysctl(name: str, value: str, ns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    subprocess.run([*prefix, "sysctl", "-qw", f"{name}={value}"], check=True, capture_output=True, timeout=TIMEOUT,
                   stdin=subprocess.DEVNULL)


class NetnsClients:
    """One client namespace per case (see the module docstring); ``reason`` says why there are none."""

    def __init__(self, cases: Iterable[str], skip: str | None = None) -> None:
        self.cases = list(cases)
        self.reason: str | None = skip or unavailable()
        self.ns: dict[str, str] = {}
        """{case: namespace}; empty when the clients are unavailable."""
        self.run = -1
        self.left: list[str] | None = None
        """After :meth:`close`: this run's namespaces that could not be deleted."""

    def start(self) -> "NetnsClients":
        if self.reason is not None:
            return self
        try:
            self.run = self._claim()
            for i, case in enumerate(self.cases):
                self.ns[case] = self._client(i)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.close()
            self.reason = f"cannot make the client namespaces: {str(exc).splitlines()[0][:200]}"
        return self

    def _name(self, i: int, run: int | None = None) -> str:
        return f"{PREFIX}{self.run if run is None else run}-{i}"

    def _claim(self) -> int:
        """The first run number whose first namespace this process could create (``ip netns add`` is the lock)."""
        for run in range(MAX_RUNS):
            if _ip("netns", "add", self._name(0, run), check=False).returncode == 0:
                return run
        raise RuntimeError(f"every run number up to {MAX_RUNS} has a {PREFIX}<run>-0 namespace")

    def _client(self, i: int) -> str:
        ns, host_if = self._name(i), f"{PREFIX}{self.run}h{i}"
        if i:
            _ip("netns", "add", ns)
        here, there = f"{SUBNET}.{self.run}.{4 * i + 1}", f"{SUBNET}.{self.run}.{4 * i + 2}"
        _ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("addr", "add", f"{here}/30", "dev", host_if)
        _sysctl(f"net.ipv4.conf.{host_if}.route_localnet", "1")
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", f"{there}/30", "dev", "eth0", ns=ns)
        _sysctl("net.ipv4.conf.eth0.route_localnet", "1", ns=ns)
        _ip("link", "set", "eth0", "up", ns=ns)
        _ip("route", "add", "default", "via", here, ns=ns)
        return ns

    def prefix(self, case: str) -> list[str]:
        """argv prefix that runs a command as this case's client."""
        return ["ip", "netns", "exec", self.ns[case]]

    def syn_retransmits(self, case: str) -> int:
        """SYNs this case's client has sent again so far (``TcpExt: TCPSynRetrans`` of its namespace)."""
        return syn_retransmits_in(subprocess.run([*self.prefix(case), "cat", "/proc/net/netstat"],
                                                 capture_output=True, text=True, timeout=TIMEOUT).stdout)

    def py_load(self, case: str, url: str, seconds: float) -> dict:
        """:func:`py_load` with a new connection per request, run as this case's client (a child process)."""
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import mesh_clients; "
                "print(json.dumps(mesh_clients.py_load(sys.argv[2], 1, float(sys.argv[3]), close=True)))")
        done = subprocess.run([*self.prefix(case), sys.executable, "-c", code, os.path.dirname(__file__), url,
                               str(seconds)], capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode != 0:
            raise RuntimeError(f"the {case} client failed: {done.stderr.strip()[-300:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        """Kill what still runs inside (by pid) and delete every namespace this run made, by its name."""
        if self.run < 0:
            return
        for i in range(len(self.cases)):
            ns = self._name(i)
            if _ip("netns", "pids", ns, check=False).returncode != 0:
                continue
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)
        listed = {line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()}
        self.left = sorted(listed & {self._name(i) for i in range(len(self.cases))})
        self.ns = {}

    def __enter__(self) -> "NetnsClients":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def figures(clients: NetnsClients, small: dict[str, dict[str, dict]] | None, retrans: dict[str, int]) -> dict:
    """The ``netns_*`` keys of bench_mesh's result: new connections per second from another namespace per case
    (``small``: run_cases's medians, newconn mode), the kernel path's ratios to HAProxy's, and the SYNs each
    case's client sent again. Null figures and ``netns_unavailable`` (one line) when not measured."""
    def rps(case: str) -> float | None:
        return small[case]["newconn"]["rps"] if small and case in small else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    kernel, remote, haproxy = rps("kernel_local"), rps("kernel_remote"), rps("haproxy")
    return {"netns_unavailable": clients.reason,
            "netns_direct_newconn_rps": rps("direct"), "netns_haproxy_newconn_rps": haproxy,
            "netns_kernel_newconn_rps": kernel, "netns_kernel_remote_newconn_rps": remote,
            "kernel_newconn_ratio_vs_haproxy_netns": ratio(kernel, haproxy),
            "kernel_remote_newconn_ratio_vs_haproxy_netns": ratio(remote, haproxy),
            "netns_syn_retransmits": retrans or None, "netns_left": clients.left,
            "netns_errors": {c: small[c]["newconn"]["errors"] for c in small} if small else None}
