#!/usr/bin/env python3
"""Routing-mesh data plane against a direct connection and HAProxy (real load generator).

Needs Debian's wrk, nginx, haproxy and curl (``apt-get install -y wrk nginx haproxy curl``).
Everything listens on 127.0.6.x; every process started here is stopped by pid at the end (the
servers and their setup: simulations/mesh_servers.py).

Cases (small HTTP requests, nginx serving a 64-byte file, 1 nginx worker). **Each case ends at a
backend port of its own** (one nginx process, one ``listen`` per case): on loopback every client is
127.0.0.1 and picks its source port by its own 4-tuple, so cases sharing one nginx socket meet each
other's TIME_WAIT sockets, and where their 4-tuples differ (a DNATed kernel case against any other)
about half of those SYNs stall 10 ms or 1 s: a measurement artifact, not the path's cost (see
mesh_servers). ``loopback_syn_retransmits``: the SYNs sent again during each case's loopback
new-connection runs (``TcpExt: TCPSynRetrans`` of this namespace around each run; ~0 expected).

* ``direct``      wrk → nginx
* ``mesh_local``  wrk → data plane A (replica on A's node, ``local``) → nginx
* ``mesh_remote`` wrk → data plane B → nginx as a *remote* replica (another loopback address,
  ``local: false``): the hop every request to another node's replica takes. One proxy process.
* ``mesh_relay``  wrk → data plane B → A's relay listener → nginx (B's link to the replica's
  host is cut, so the route goes ``via`` A): two data-plane processes chained, the re-routing path.
* ``mesh_tls``    wrk → data plane B → A's TLS relay listener → nginx: an ``encrypted`` port's
  path to a replica on another node (TLS 1.3 between the two data planes, certificates from a
  throwaway cluster CA). Compared with ``mesh_relay`` (the same two processes, plaintext):
  ``tls_ratio_vs_relay``; bulk through both (``--transfers`` // 3, at least 5, after the headline
  bulk): ``bulk_tls_ratio_vs_relay`` (TLS is never spliced).
* ``haproxy``     wrk → HAProxy (mode tcp, ``nbthread 1`` like our one-process data plane,
  ``option splice-auto``) → nginx; ``haproxy_mt`` is the same with HAProxy's default threads.
* ``kernel_local`` / ``kernel_remote``  wrk → a published port of two real nodes started with
  ``--mesh kernel`` → nftables DNAT → nginx, as a local replica (node A) and a remote one (node B):
  no process forwards (see simulations/mesh_kernel_nodes.py; ``kernel_*`` keys, also in bulk). Null
  with ``kernel_unavailable`` (the reason) when the kernel path cannot run here (not root, no nft).
* ``netns_*``  new connections to ``direct``, ``haproxy``, ``kernel_local`` and ``kernel_remote`` from a
  client in a network namespace of its own per case (simulations/mesh_clients.py: one client host per
  path, as real clients reach a mesh). ``kernel_newconn_ratio_vs_haproxy_netns``; ``netns_syn_retransmits``
  per case. Null with ``netns_unavailable`` when not measured (not root); in ``--quick`` too, with py_load.
  ``conntrack_during_small``: how conntrack's drop, early_drop, insert_failed, invalid and clash counters
  changed over the loopback small-request runs, and its entries after them (a full table drops SYNs).

Each case runs wrk three ways: keep-alive (``-c CONNS``), a new connection per request
(``Connection: close``), and one connection (``-c 1``) for unloaded latency, from which
``added_p50_ms`` = mesh_local − direct is taken (with 32 connections p50 is mostly queueing,
reported as ``*_p50_ms_loaded``). Cases are interleaved and repeated ``--rounds`` times;
figures are medians. Bulk: median MB/s of curl downloading a 100 MB file, ``--transfers``
times each (after one unmeasured warm-up transfer per path), interleaved, through the mesh
and through HAProxy with splicing; ``bulk_ratio_vs_haproxy_splice`` is the ratio of the two
medians, ``..._paired`` the median of the per-round ratios (each round runs every path once,
back to back, so it is less sensitive to load that comes and goes). ``--bulk-only`` runs just
the bulk part (≈ 15 s), ``--tls-only`` just ``direct``, ``mesh_relay`` and ``mesh_tls`` (the TLS
sessions' counters of data plane B are in ``tls_sessions``).

``--quick`` (the smoke test's run, ≈ 15 s, ≈ 30 s with the kernel nodes; none of the tools needed)
sends traffic through the same four mesh paths (and the two kernel ones, as root with nft) with
Python's http.client (one connection) to Python's http.server in place of wrk and nginx, and through
HAProxy only if it is installed (``skipped`` says what was left out). Its figures are not comparable
with the headline run's; that every path forwards, every byte, is.

``--compare`` instead measures the implementation choices (asyncio streams, the Protocol API
on asyncio and on uvloop, splice for everything, splicing on the event loop instead of in
threads, and the shipped data plane).

The last line printed is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "simulations"))

import mesh_clients  # noqa: E402
import mesh_kernel_nodes as kernel  # noqa: E402
from mesh_clients import NetnsClients, py_load  # noqa: E402
from mesh_servers import (  # noqa: E402
    BACKENDS,
    BARE,
    DP_A,
    HAPROXY,
    NGINX,
    DataPlaneProc,
    Procs,
    backend_entry,
    dp_table,
    nginx_bench,
    python_backends,
    start_bulk_haproxies,
    start_haproxy,
    start_mesh,
    tls_sessions_of,
    wait_listening,
)

from p2pswarm.testing.localcluster import free_port  # noqa: E402

QUICK = {"rounds": 1, "seconds": 0.5, "transfers": 2, "bulk_mb": 16}
"""``--quick``: one round of each path and mode, 16 MB transfers (4 reads of 64 KiB start a splice)."""


_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_PCT = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_ERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, conns: int, seconds: float, close: bool, prefix: tuple[str, ...] | list[str] = ()) -> dict:
    """One wrk run; ``prefix``: argv that runs it elsewhere (a client namespace's ``ip netns exec NS``)."""
    cmd = [*prefix, "wrk", "-t1", f"-c{conns}", f"-d{int(round(seconds))}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 30).stdout
    m = _WRK_RPS.search(out)
    if not m:
        raise RuntimeError(f"wrk printed no Requests/sec for {url}:\n{out}")
    pct = {p: float(v) * _UNIT[u] for p, v, u in _WRK_PCT.findall(out)}
    err = _WRK_ERR.search(out)
    non2xx = _WRK_NON2XX.search(out)
    errors = (sum(map(int, err.groups())) if err else 0) + (int(non2xx.group(1)) if non2xx else 0)
    return {"rps": float(m.group(1)), "p50_ms": pct.get("50"), "p99_ms": pct.get("99"), "errors": errors}


def curl_mbps(url: str) -> float:
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
                         capture_output=True, text=True, timeout=120).stdout.split()
    size, secs = int(out[0]), float(out[1])
    if size < 1 << 20:
        raise RuntimeError(f"curl got {size} bytes from {url}")
    return size / secs / 1e6


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3) if xs else float("nan")


def counting_syn_retransmits(load=wrk):
    """``load`` that also returns, for a new-connection run, the SYNs this network namespace sent again meanwhile
    (``syn_retransmits``). Every loopback client (wrk, HAProxy, the data planes) is in it, so the count is the
    case's as long as cases run one at a time, as in run_cases (and nothing else in the namespace retransmits)."""
    def counted(url: str, conns: int, seconds: float, close: bool) -> dict:
        if not close:
            return load(url, conns, seconds, close)
        before = mesh_clients.syn_retransmits_here()
        res = load(url, conns, seconds, close)
        return {**res, "syn_retransmits": mesh_clients.syn_retransmits_here() - before}
    return counted


def loopback_syn_retransmits(small: dict[str, dict[str, dict]]) -> dict[str, int]:
    """{case: SYNs sent again over its loopback new-connection runs} (run_cases with counting_syn_retransmits)."""
    return {case: modes["newconn"]["syn_retransmits"] for case, modes in small.items()
            if "syn_retransmits" in modes.get("newconn", {})}


def run_cases(cases: dict[str, str], rounds: int, seconds: float, conns: int,
              modes: tuple[str, ...] = ("keepalive", "newconn", "latency"), load=wrk) -> dict[str, dict[str, dict]]:
    """{case: {mode: {rps, p50_ms, p99_ms, errors}}} as medians over rounds (cases interleaved), errors and the
    ``syn_retransmits`` of a counting_syn_retransmits load summed; ``load(url, conns, seconds, close)`` makes one
    measurement (wrk, or --quick's py_load)."""
    raw: dict[str, dict[str, list[dict]]] = {c: {m: [] for m in modes} for c in cases}
    for r in range(rounds):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for mode in modes:
            for case in order:
                if mode == "keepalive":
                    res = load(cases[case], conns, seconds, close=False)
                elif mode == "newconn":
                    res = load(cases[case], conns, seconds, close=True)
                else:
                    res = load(cases[case], 1, max(2.0, seconds / 2), close=False)
                raw[case][mode].append(res)
                syn = f"  SYN retransmits {res['syn_retransmits']}" if "syn_retransmits" in res else ""
                print(f"  round {r + 1} {mode:9} {case:12} {res['rps']:>10.0f} rps  p50 {res['p50_ms']} ms"
                      f"  p99 {res['p99_ms']} ms  errors {res['errors']}{syn}", file=sys.stderr, flush=True)
    out: dict[str, dict[str, dict]] = {}
    for case, per in raw.items():
        out[case] = {}
        for mode, runs in per.items():
            out[case][mode] = {"rps": med([x["rps"] for x in runs]),
                               "p50_ms": med([x["p50_ms"] for x in runs if x["p50_ms"] is not None]),
                               "p99_ms": med([x["p99_ms"] for x in runs if x["p99_ms"] is not None]),
                               "errors": sum(x["errors"] for x in runs)}
            if any("syn_retransmits" in x for x in runs):
                out[case][mode]["syn_retransmits"] = sum(x.get("syn_retransmits", 0) for x in runs)
    return out


NETNS_CASES = ("direct", "haproxy", "kernel_local", "kernel_remote")
"""The cases also measured from a client namespace of their own (mesh_clients: one client host per path)."""


def netns_newconn(clients: NetnsClients, cases: dict[str, str], rounds: int, seconds: float, conns: int,
                  quick: bool = False) -> tuple[dict[str, dict[str, dict]] | None, dict[str, int]]:
    """New connections per second of ``cases`` (those of NETNS_CASES measured here) from each case's own client
    namespace, interleaved over ``rounds`` like run_cases (wrk, or ``quick``: py_load in a child), and the SYNs
    each case's client sent again. (None, {}) when the namespaces are unavailable."""
    urls = {case: url for case, url in cases.items() if case in clients.ns}
    if not urls:
        return None, {}
    case_of = {url: case for case, url in urls.items()}

    def load(url: str, conns: int, seconds: float, close: bool) -> dict:
        if quick:
            return clients.py_load(case_of[url], url, seconds)
        return wrk(url, conns, seconds, close, prefix=clients.prefix(case_of[url]))

    print("new connections from a client namespace per case:", file=sys.stderr)
    before = {case: clients.syn_retransmits(case) for case in urls}
    small = run_cases(urls, rounds, seconds, conns, modes=("newconn",), load=load)
    return small, {case: clients.syn_retransmits(case) - before[case] for case in urls}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_bulk(cases: dict[str, str], transfers: int, pids: dict[str, list[int]] | None = None,
             mb: int = 100, fetch=curl_mbps) -> dict[str, dict]:
    """{case: {"mbps": median MB/s, "cpu_s_per_gb": proxy CPU seconds per GB moved,
    "runs": every transfer's MB/s, in round order}}. One unmeasured warm-up transfer per case
    first; then each round downloads once per case (order reversed every other round).
    ``fetch(url)`` makes one transfer and returns its MB/s (curl, or --quick's py_mbps)."""
    speeds: dict[str, list[float]] = {c: [] for c in cases}
    cpu: dict[str, float] = {c: 0.0 for c in cases}
    pids = pids or {}
    for url in cases.values():
        fetch(url)
    for i in range(transfers):
        for case in (cases if i % 2 == 0 else list(reversed(cases))):
            before = sum(cpu_seconds(p) for p in pids.get(case, []))
            speeds[case].append(fetch(cases[case]))
            cpu[case] += sum(cpu_seconds(p) for p in pids.get(case, [])) - before
    out = {}
    for case, xs in speeds.items():
        per_gb = round(cpu[case] / (transfers * mb / 1000), 3) if pids.get(case) else None
        out[case] = {"mbps": med(xs), "cpu_s_per_gb": per_gb, "runs": xs}
        print(f"  bulk {case:18} median {med(xs)} MB/s  proxy cpu {per_gb} s/GB"
              f"  ({', '.join(f'{x:.0f}' for x in xs)})", file=sys.stderr, flush=True)
    return out


def paired_ratio(bulk: dict[str, dict], a: str, b: str) -> float:
    """Median over rounds of a's MB/s / b's MB/s in the same round."""
    return med([x / y for x, y in zip(bulk[a]["runs"], bulk[b]["runs"])])


def bulk_result(bulk: dict[str, dict], args: argparse.Namespace) -> dict:
    return {
        "bulk_mb": args.bulk_mb, "bulk_transfers": args.transfers,
        "bulk_haproxy": "nbthread 1, option splice-request + splice-response (forced), default tune.pipesize",
        "bulk_direct_mbps": bulk["direct"]["mbps"], "bulk_mesh_mbps": bulk["mesh"]["mbps"],
        "bulk_haproxy_splice_mbps": bulk["haproxy_splice"]["mbps"],
        "bulk_haproxy_splice_pipe1m_mbps": bulk["haproxy_splice_pipe1m"]["mbps"],
        "bulk_ratio_vs_haproxy_splice": round(bulk["mesh"]["mbps"] / bulk["haproxy_splice"]["mbps"], 3),
        "bulk_ratio_vs_haproxy_splice_paired": paired_ratio(bulk, "mesh", "haproxy_splice"),
        "bulk_ratio_vs_haproxy_splice_pipe1m": round(bulk["mesh"]["mbps"] / bulk["haproxy_splice_pipe1m"]["mbps"], 3),
        "bulk_cpu_s_per_gb": {k: v["cpu_s_per_gb"] for k, v in bulk.items() if v["cpu_s_per_gb"] is not None},
    }


def headline_bulk(direct: int, mesh_url: str, dpa: DataPlaneProc, ha_urls: dict, ha_pids: dict,
                  args: argparse.Namespace, km: kernel.KernelMesh) -> dict:
    """Bulk direct (nginx's port ``direct``), through data plane A (a local replica, at ``mesh_url``), through the
    splicing HAProxies and, when measured, through the kernel path to a local replica (no process of ours
    forwards it)."""
    kernel_url = {"kernel": f"{km.urls['kernel_local']}/big.bin"} if km.urls else {}
    return run_bulk({"direct": f"http://{NGINX}:{direct}/big.bin", "mesh": f"{mesh_url}/big.bin",
                     **kernel_url, **ha_urls}, args.transfers, pids={"mesh": [dpa.p.pid], **ha_pids}, mb=args.bulk_mb)


def bench_bulk(args: argparse.Namespace) -> dict:
    """Only the bulk part of the headline benchmark (same processes and method)."""
    with nginx_bench("bench-mesh-bulk-", args.bulk_mb, BACKENDS) as (procs, tmp, ngx), \
            kernel.KernelMesh(NGINX, ngx["kernel_local"], ngx["kernel_remote"]) as km:
        ha_urls, ha_pids = start_bulk_haproxies(procs, tmp, ngx)
        a_port = free_port(DP_A)
        dpa = DataPlaneProc(procs, [], args.bulk_threads)
        sta = dpa.push(dp_table(1, DP_A, [{"port": a_port, "service": "web", "proxy_protocol": False,
                                           "backends": [backend_entry("t1", ngx["mesh_local"], True)]}]))
        bulk = headline_bulk(ngx["direct"], f"http://{DP_A}:{a_port}", dpa, ha_urls, ha_pids, args, km)
        time.sleep(1.5)  # one more status tick after the last transfer
        status = dpa.status or {}
    return {"bench": "mesh-bulk", "loop": sta.get("loop"), "bulk_threads": args.bulk_threads, **bulk_result(bulk, args),
            "mesh_spliced_connections": (status.get("total") or {}).get("spliced"),
            "kernel_unavailable": km.reason, **kernel.bulk_figures(km, bulk, "haproxy_splice"),
            "kernel_tables_left": km.tables_left}


# -- the headline benchmark -------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()
    skip = "not measured by --tls-only" if args.tls_only else None
    with nginx_bench("bench-mesh-", args.bulk_mb, BACKENDS) as (procs, tmp, ngx), \
            kernel.KernelMesh(NGINX, ngx["kernel_local"], ngx["kernel_remote"], skip=skip) as km, \
            NetnsClients(NETNS_CASES, skip=skip) as clients:
        ha1, ha2 = free_port(HAPROXY), free_port(HAPROXY)
        start_haproxy(procs, tmp, "haproxy1", (HAPROXY, ha1), (NGINX, ngx["haproxy"]), nbthread=1)
        start_haproxy(procs, tmp, "haproxymt", (HAPROXY, ha2), (NGINX, ngx["haproxy_mt"]), nbthread=None)
        ha_urls, ha_pids = start_bulk_haproxies(procs, tmp, ngx)
        dpa, dpb, sta, mesh = start_mesh(procs, ngx, args.bulk_threads)
        cases = {"direct": f"http://{NGINX}:{ngx['direct']}/small.txt",
                 **{name: f"{url}/small.txt" for name, url in mesh.items()},
                 **{name: f"{url}/small.txt" for name, url in km.urls.items()},
                 "haproxy": f"http://{HAPROXY}:{ha1}/small.txt",
                 "haproxy_mt": f"http://{HAPROXY}:{ha2}/small.txt"}
        for url in cases.values():  # every path answers before measuring
            subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True, timeout=10)
        print(f"data plane loop: {sta.get('loop')}; kernel path: {km.reason or 'measured'}", file=sys.stderr)
        if args.tls_only:
            cases = {name: cases[name] for name in ("direct", "mesh_relay", "mesh_tls")}
        # the netns runs first, as in earlier runs (their figures stay comparable)
        netns_small, retrans = netns_newconn(clients, cases, args.rounds, args.seconds, args.conns)
        conntrack_before = kernel.conntrack_counters()
        small = run_cases(cases, args.rounds, args.seconds, args.conns, load=counting_syn_retransmits(wrk))
        conntrack_after = kernel.conntrack_counters()
        bulk = None if args.tls_only else headline_bulk(ngx["direct"], mesh["mesh_local"], dpa, ha_urls, ha_pids,
                                                        args, km)
        tls_bulk = run_bulk({"mesh_relay": f"{mesh['mesh_relay']}/big.bin",
                             "mesh_tls": f"{mesh['mesh_tls']}/big.bin"}, max(5, args.transfers // 3),
                            pids={"mesh_relay": [dpa.p.pid, dpb.p.pid], "mesh_tls": [dpa.p.pid, dpb.p.pid]},
                            mb=args.bulk_mb)
        time.sleep(1.5)  # one more status tick after the last transfer
        status = dpa.status or {}
        tls_sessions = tls_sessions_of(dpb)
        km.count_userspace()

    def g(case: str, mode: str, key: str = "rps") -> float:
        return small[case][mode][key]

    tls = {
        "mesh_relay_rps": g("mesh_relay", "keepalive"), "mesh_relay_newconn_rps": g("mesh_relay", "newconn"),
        "mesh_tls_rps": g("mesh_tls", "keepalive"), "mesh_tls_newconn_rps": g("mesh_tls", "newconn"),
        "tls_ratio_vs_relay": round(g("mesh_tls", "keepalive") / g("mesh_relay", "keepalive"), 3),
        "tls_ratio_vs_relay_newconn": round(g("mesh_tls", "newconn") / g("mesh_relay", "newconn"), 3),
        "added_p50_ms_tls": round(g("mesh_tls", "latency", "p50_ms") - g("direct", "latency", "p50_ms"), 3),
        "bulk_mesh_relay_mbps": tls_bulk["mesh_relay"]["mbps"], "bulk_mesh_tls_mbps": tls_bulk["mesh_tls"]["mbps"],
        "bulk_tls_ratio_vs_relay": round(tls_bulk["mesh_tls"]["mbps"] / tls_bulk["mesh_relay"]["mbps"], 3),
        "bulk_tls_cpu_s_per_gb": tls_bulk["mesh_tls"]["cpu_s_per_gb"],
        "tls_sessions": tls_sessions,
    }
    if bulk is None:
        return {"bench": "mesh-tls", "loop": sta.get("loop"), "rounds": args.rounds, **tls,
                "latency_ms": {c: {m: [small[c][m]["p50_ms"], small[c][m]["p99_ms"]] for m in small[c]}
                               for c in small}}
    result = {
        "bench": "mesh", "loop": sta.get("loop"), "bulk_threads": args.bulk_threads, "haproxy_nbthread": 1,
        "haproxy_options": "mode tcp, splice-auto",
        "wrk": f"-t1 -c{args.conns} -d{int(args.seconds)}s (latency: -t1 -c1 -d{int(max(2, args.seconds / 2))}s)",
        "rounds": args.rounds,
        "direct_rps": g("direct", "keepalive"), "mesh_local_rps": g("mesh_local", "keepalive"),
        "mesh_remote_rps": g("mesh_remote", "keepalive"), "mesh_relay_rps": g("mesh_relay", "keepalive"),
        "haproxy_rps": g("haproxy", "keepalive"), "haproxy_mt_rps": g("haproxy_mt", "keepalive"),
        "direct_newconn_rps": g("direct", "newconn"), "mesh_local_newconn_rps": g("mesh_local", "newconn"),
        "mesh_remote_newconn_rps": g("mesh_remote", "newconn"),
        "mesh_relay_newconn_rps": g("mesh_relay", "newconn"),
        "haproxy_newconn_rps": g("haproxy", "newconn"), "haproxy_mt_newconn_rps": g("haproxy_mt", "newconn"),
        "ratio_vs_haproxy": round(g("mesh_local", "keepalive") / g("haproxy", "keepalive"), 3),
        "ratio_vs_haproxy_newconn": round(g("mesh_local", "newconn") / g("haproxy", "newconn"), 3),
        "ratio_vs_haproxy_mt": round(g("mesh_local", "keepalive") / g("haproxy_mt", "keepalive"), 3),
        "ratio_vs_haproxy_mt_newconn": round(g("mesh_local", "newconn") / g("haproxy_mt", "newconn"), 3),
        "added_p50_ms": round(g("mesh_local", "latency", "p50_ms") - g("direct", "latency", "p50_ms"), 3),
        "added_p50_ms_remote": round(g("mesh_remote", "latency", "p50_ms") - g("direct", "latency", "p50_ms"), 3),
        "added_p50_ms_relay": round(g("mesh_relay", "latency", "p50_ms") - g("direct", "latency", "p50_ms"), 3),
        "added_p50_ms_haproxy": round(g("haproxy", "latency", "p50_ms") - g("direct", "latency", "p50_ms"), 3),
        **tls,
        "added_p50_ms_loaded": round(g("mesh_local", "keepalive", "p50_ms") - g("direct", "keepalive", "p50_ms"), 3),
        **bulk_result(bulk, args),
        "mesh_spliced_connections": (status.get("total") or {}).get("spliced"),
        **kernel.figures(km, small, bulk, latency="latency", bulk_haproxy="haproxy_splice"),
        **mesh_clients.figures(clients, netns_small, retrans),
        "loopback_syn_retransmits": loopback_syn_retransmits(small),
        "conntrack_during_small": {k: v - conntrack_before.get(k, 0) if k != "entries" else v
                                   for k, v in conntrack_after.items()},
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "errors": {c: {m: small[c][m]["errors"] for m in small[c]} for c in small},
        "latency_ms": {c: {m: [small[c][m]["p50_ms"], small[c][m]["p99_ms"]] for m in small[c]} for c in small},
    }
    return result


# -- the implementation comparison ------------------------------------------------------------


def bare_streams(listen: str, backend: str, use_uvloop: bool) -> None:
    """A minimal asyncio-streams TCP proxy (the baseline the data plane was chosen against)."""
    lh, lp = listen.rsplit(":", 1)
    bh, bp = backend.rsplit(":", 1)

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(262144):
                w.write(data)
                await w.drain()
            w.write_eof()
        except OSError:
            pass

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            br, bw = await asyncio.open_connection(bh, int(bp))
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, bw), pipe(br, cw))
        cw.close()
        bw.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, lh, int(lp), backlog=1024)
        async with server:
            await server.serve_forever()

    if use_uvloop:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main())


COMPARED = ("haproxy", "streams_asyncio", "streams_uvloop", "protocol_asyncio", "protocol_uvloop", "splice_all_uvloop",
            "splice_on_loop", "dataplane")
"""--compare's variants, each with a backend port of its own (mesh_servers)."""


def compare(args: argparse.Namespace) -> dict:
    with nginx_bench("bench-mesh-cmp-", args.bulk_mb, COMPARED) as (procs, tmp, ngx):
        ha = free_port(HAPROXY)
        pids = {"haproxy": [start_haproxy(procs, tmp, "haproxy1", (HAPROXY, ha), (NGINX, ngx["haproxy"]), nbthread=1,
                                          splice="option splice-request\n  option splice-response")]}
        urls: dict[str, str] = {"haproxy": f"http://{HAPROXY}:{ha}"}
        for name, uv in (("streams_asyncio", False), ("streams_uvloop", True)):
            port = free_port(BARE)
            cmd = [sys.executable, __file__, "--bare-streams", f"{BARE}:{port}", f"{NGINX}:{ngx[name]}"]
            pids[name] = [procs.start(cmd + (["--uvloop"] if uv else []), stderr=subprocess.DEVNULL).pid]
            wait_listening(BARE, port)
            urls[name] = f"http://{BARE}:{port}"
        variants = {"protocol_asyncio": (["--loop", "asyncio", "--splice-after", "-1"], None),
                    "protocol_uvloop": (["--loop", "uvloop", "--splice-after", "-1"], None),
                    "splice_all_uvloop": (["--loop", "uvloop", "--splice-after", "0"], None),
                    "splice_on_loop": ([], 0),
                    "dataplane": ([], None)}
        for i, (name, (dp_args, bulk_threads)) in enumerate(variants.items()):
            host = f"127.0.6.{30 + i}"
            port = free_port(host)
            dp = DataPlaneProc(procs, dp_args, bulk_threads)
            pids[name] = [dp.p.pid]
            dp.push(dp_table(1, host, [{"port": port, "service": "web", "proxy_protocol": False,
                                        "backends": [backend_entry("t1", ngx[name], True)]}]))
            urls[name] = f"http://{host}:{port}"
        small = run_cases({k: v + "/small.txt" for k, v in urls.items()}, args.rounds, args.seconds, args.conns,
                          modes=("keepalive", "newconn"))
        bulk = run_bulk({k: v + "/big.bin" for k, v in urls.items()}, args.transfers, pids=pids, mb=args.bulk_mb)
    ha_k, ha_n = small["haproxy"]["keepalive"]["rps"], small["haproxy"]["newconn"]["rps"]
    ha_b = bulk["haproxy"]["mbps"]
    return {"bench": "mesh-compare", "wrk": f"-t1 -c{args.conns} -d{int(args.seconds)}s", "rounds": args.rounds,
            "haproxy": "nbthread 1, mode tcp, splice-request + splice-response",
            "variants": {k: {"keepalive_rps": small[k]["keepalive"]["rps"],
                             "newconn_rps": small[k]["newconn"]["rps"],
                             "bulk_mbps": bulk[k]["mbps"], "bulk_cpu_s_per_gb": bulk[k]["cpu_s_per_gb"],
                             "ratio_keepalive": round(small[k]["keepalive"]["rps"] / ha_k, 3),
                             "ratio_newconn": round(small[k]["newconn"]["rps"] / ha_n, 3),
                             "ratio_bulk": round(bulk[k]["mbps"] / ha_b, 3),
                             "errors": small[k]["keepalive"]["errors"] + small[k]["newconn"]["errors"]}
                         for k in urls}}


# -- the quick run (no external tools) --------------------------------------------------------


def py_mbps(url: str) -> float:
    """curl's stand-in for --quick: one download, MB/s; raises if it is short."""
    size, start = 0, time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        expected = int(resp.headers["Content-Length"])
        while chunk := resp.read(1 << 20):
            size += len(chunk)
    secs = time.perf_counter() - start
    if size != expected:
        raise RuntimeError(f"got {size} of {expected} bytes from {url}")
    return size / secs / 1e6


def quick(args: argparse.Namespace) -> dict:
    """The four mesh paths (and HAProxy, if installed) with Python's client and server; see the docstring."""
    skipped = {"wrk, nginx": "--quick loads with Python's http.client (one connection) against Python's "
                             "http.server; its figures are not comparable with the headline run's"}
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bench-mesh-quick-"))
    try:
        with python_backends(args.bulk_mb, BACKENDS) as backend, \
                kernel.KernelMesh(NGINX, backend["kernel_local"], backend["kernel_remote"], preset="test") as km, \
                NetnsClients(NETNS_CASES) as clients:
            dpa, dpb, sta, mesh = start_mesh(procs, backend, args.bulk_threads)
            urls = {"direct": f"http://{NGINX}:{backend['direct']}", **mesh, **km.urls}
            pids = {"mesh_local": [dpa.p.pid], "mesh_relay": [dpa.p.pid, dpb.p.pid],
                    "mesh_tls": [dpa.p.pid, dpb.p.pid]}
            if shutil.which("haproxy"):
                ha = free_port(HAPROXY)
                pids["haproxy"] = [start_haproxy(procs, tmp, "haproxy1", (HAPROXY, ha), (NGINX, backend["haproxy"]),
                                                  nbthread=1)]
                urls["haproxy"] = f"http://{HAPROXY}:{ha}"
            else:
                skipped["haproxy"] = "not installed (apt-get install -y haproxy): no ratio_vs_haproxy*"
            netns_small, retrans = netns_newconn(clients, {k: f"{u}/small.txt" for k, u in urls.items()},
                                                 args.rounds, args.seconds, 1, quick=True)
            small = run_cases({k: f"{u}/small.txt" for k, u in urls.items()}, args.rounds, args.seconds, 1,
                              modes=("keepalive", "newconn"), load=counting_syn_retransmits(py_load))
            bulk_cases = ("direct", "mesh_local", "mesh_relay", "mesh_tls", "haproxy")
            bulk_urls = {k: f"{u}/big.bin" for k, u in urls.items() if k in bulk_cases}
            if km.urls:
                bulk_urls["kernel"] = f"{km.urls['kernel_local']}/big.bin"
            bulk = run_bulk(bulk_urls, args.transfers, pids=pids, mb=args.bulk_mb, fetch=py_mbps)
            status = dpa.fresh_status()
            tls_sessions = tls_sessions_of(dpb.fresh_status() and dpb)
            km.count_userspace()
            if km.reason:
                skipped["kernel"] = km.reason
            if clients.reason:
                skipped["netns"] = clients.reason
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    def g(case: str, mode: str, key: str = "rps") -> float:
        return small[case][mode][key]

    def added(case: str) -> float:
        return round(g(case, "keepalive", "p50_ms") - g("direct", "keepalive", "p50_ms"), 3)

    result = {
        "bench": "mesh-quick", "quick": True, "loop": sta.get("loop"), "rounds": args.rounds,
        "load": f"python http.client, 1 connection, {args.seconds:g} s per case and mode; backend python http.server",
        **{f"{c}_rps": g(c, "keepalive") for c in urls}, **{f"{c}_newconn_rps": g(c, "newconn") for c in urls},
        "added_p50_ms": added("mesh_local"), "added_p50_ms_remote": added("mesh_remote"),
        "added_p50_ms_relay": added("mesh_relay"), "added_p50_ms_tls": added("mesh_tls"),
        "tls_ratio_vs_relay": round(g("mesh_tls", "keepalive") / g("mesh_relay", "keepalive"), 3),
        "tls_ratio_vs_relay_newconn": round(g("mesh_tls", "newconn") / g("mesh_relay", "newconn"), 3),
        "bulk_mb": args.bulk_mb, "bulk_transfers": args.transfers,
        **{f"bulk_{c}_mbps": bulk[c]["mbps"] for c in bulk},
        "bulk_tls_ratio_vs_relay": round(bulk["mesh_tls"]["mbps"] / bulk["mesh_relay"]["mbps"], 3),
        "bulk_cpu_s_per_gb": {k: v["cpu_s_per_gb"] for k, v in bulk.items() if v["cpu_s_per_gb"] is not None},
        "mesh_spliced_connections": (status.get("total") or {}).get("spliced"),
        "tls_sessions": tls_sessions,
        **kernel.figures(km, small, bulk, latency="keepalive", bulk_haproxy="haproxy"),
        **mesh_clients.figures(clients, netns_small, retrans),
        "loopback_syn_retransmits": loopback_syn_retransmits(small),
        "errors": {c: {m: small[c][m]["errors"] for m in small[c]} for c in small},
    }
    if "haproxy" in urls:
        result.update(ratio_vs_haproxy=round(g("mesh_local", "keepalive") / g("haproxy", "keepalive"), 3),
                      ratio_vs_haproxy_newconn=round(g("mesh_local", "newconn") / g("haproxy", "newconn"), 3),
                      bulk_ratio_vs_haproxy=round(bulk["mesh_local"]["mbps"] / bulk["haproxy"]["mbps"], 3))
    result["skipped"] = skipped
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--transfers", type=int, default=30, help="bulk transfers per path (default 30)")
    ap.add_argument("--bulk-mb", type=int, default=100)
    ap.add_argument("--compare", action="store_true", help="compare implementation choices instead")
    ap.add_argument("--bulk-only", action="store_true", help="run only the bulk transfers (direct, mesh, HAProxy)")
    ap.add_argument("--tls-only", action="store_true",
                    help="run only the encrypted path against the plaintext relay (and direct, for latency)")
    ap.add_argument("--bulk-threads", type=int, metavar="N",
                    help="run the data planes with proxy.BULK_THREADS = N (0: splice on the event loop)")
    ap.add_argument("--out", help="also write the JSON to this file")
    ap.add_argument("--quick", action="store_true", help=f"the smoke test's short run, no tools needed: {QUICK}")
    ap.add_argument("--bare-streams", nargs=2, metavar=("LISTEN", "BACKEND"), help=argparse.SUPPRESS)
    ap.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    if ap.parse_known_args()[0].quick:
        ap.set_defaults(**QUICK)
    args = ap.parse_args()
    if args.bare_streams:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        bare_streams(*args.bare_streams, args.uvloop)
        return 0
    for tool in () if args.quick else ("wrk", "nginx", "haproxy", "curl"):
        if shutil.which(tool) is None:
            print(f"bench_mesh: {tool} is not installed; run: apt-get install -y wrk nginx haproxy curl",
                  file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops what it started
    result = quick(args) if args.quick else compare(args) if args.compare else bench_bulk(args) if args.bulk_only \
        else bench(args)
    line = json.dumps(result, sort_keys=False)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
