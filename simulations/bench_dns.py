#!/usr/bin/env python3
"""Service discovery by DNS on real nodes: queries per second, latency, and how long a dead task is answered.

A cluster of ``--nodes`` real `p2pswarm up` processes on 127.0.x.y (test preset) runs a global service
``web`` (one task per node, a published port) whose tasks write their pid into this run's directory.

* ``qps``: queries per second one node answers (``tasks.web`` A, ``_PORT._tcp.web`` SRV and ``web`` A,
  interleaved) for ``--seconds``: with Debian's ``dnsperf`` when it is installed (``qps_tool`` says
  which), else with the bounded Python client below. The node's per-client rate limit (10,000/s by
  default) caps what one client address can get, so ``--clients`` dnsperf processes run at once, each
  from its own loopback address at up to 9,500/s (the node's limit for all clients is 20,000/s).
* ``p50_ms``, ``p99_ms``: latency of the bounded Python client (``--outstanding`` queries in flight,
  one UDP socket, asyncio) against the same node; ``python_qps`` its rate.
* ``stale_answer_seconds_p99`` (and ``_p50``, ``_max``): a task is SIGKILLed (its node restarts it
  after a 5 s restart delay, under the same id); the time until ``ID.tasks.web`` is NXDOMAIN on every
  node, each asked every 10 ms, over ``--deaths`` deaths (of the tasks the DNS answers at the time).

``--quick`` (the smoke test) runs one node, 2 s of load and 2 deaths. Every process started here is
stopped by pid at the end. The last line printed is the JSON result.
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
from pathlib import Path

import dns.message
import dns.rcode
import dns.resolver

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pswarm.testing.localcluster import LocalCluster, wait_until  # noqa: E402

QUICK = dict(nodes=1, seconds=2.0, deaths=2, outstanding=32)
PER_CLIENT_QPS = 9500
"""Queries per second one dnsperf process sends at most: under the node's 10,000/s per client address."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dns_server(node) -> tuple[str, int]:
    host, _, port = node.api.get("/v1/info")["dns"]["addr"].rpartition(":")
    return host, int(port)


def questions(port: int) -> list[tuple[str, str]]:
    return [("tasks.web.p2pswarm.", "A"), (f"_{port}._tcp.web.p2pswarm.", "SRV"), ("web.p2pswarm.", "A")]


async def python_load(server: tuple[str, int], qs: list[tuple[str, str]], seconds: float,
                      outstanding: int) -> dict:
    """At most ``outstanding`` queries in flight on one UDP socket; a query unanswered after 1 s is lost."""
    loop = asyncio.get_running_loop()
    wires = [dns.message.make_query(name, rdtype).to_wire() for name, rdtype in qs]
    sent: dict[int, float] = {}
    latencies: list[float] = []
    lost = 0
    slots = asyncio.Semaphore(outstanding)

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr) -> None:
            ident = int.from_bytes(data[:2], "big")
            start = sent.pop(ident, None)
            if start is not None:
                latencies.append(time.perf_counter() - start)
                slots.release()

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=server)
    ident, end = 0, time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            try:
                await asyncio.wait_for(slots.acquire(), 1.0)
            except asyncio.TimeoutError:  # every slot is held by a lost query: reclaim them
                now = time.perf_counter()
                for key, start in list(sent.items()):
                    if now - start > 1.0:
                        del sent[key]
                        lost += 1
                        slots.release()
                continue
            ident = (ident + 1) & 0xFFFF
            while ident in sent:
                ident = (ident + 1) & 0xFFFF
            wire = wires[ident % len(wires)]
            sent[ident] = time.perf_counter()
            transport.sendto(ident.to_bytes(2, "big") + wire[2:])
        await asyncio.sleep(0.2)
    finally:
        transport.close()
    lost += len(sent)
    latencies.sort()
    return {"python_qps": round(len(latencies) / seconds, 1), "lost": lost,
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3) if latencies else None,
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3) if latencies else None}


def dnsperf_load(server: tuple[str, int], qs: list[tuple[str, str]], seconds: float, clients: int,
                 tmp: Path) -> dict | None:
    """``clients`` dnsperf processes at once, each from its own loopback source address and at most
    ``PER_CLIENT_QPS`` (under the node's per-client limit); ``qps`` is what they got answered together."""
    tool = shutil.which("dnsperf")
    if tool is None:
        return None
    data = tmp / "queries.txt"
    data.write_text("".join(f"{name} {rdtype}\n" for name, rdtype in qs))
    procs = [subprocess.Popen([tool, "-s", server[0], "-p", str(server[1]), "-a", f"127.0.50.{i + 1}",
                               "-d", str(data), "-l", str(seconds), "-Q", str(PER_CLIENT_QPS), "-q", "100", "-t", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(clients)]
    total, lost, latencies = 0.0, 0, []
    try:
        for proc in procs:
            text = proc.communicate(timeout=seconds + 30)[0]
            rate = re.search(r"Queries per second:\s+([0-9.]+)", text)
            if rate is None:
                log(f"dnsperf printed no rate: {text[-500:]}")
                return None
            total += float(rate.group(1))
            lost += int(m.group(1)) if (m := re.search(r"Queries lost:\s+([0-9]+)", text)) else 0
            if (m := re.search(r"Average Latency \(s\):\s+([0-9.]+)", text)):
                latencies.append(float(m.group(1)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"qps": round(total, 1), "dnsperf_clients": clients, "dnsperf_lost": lost,
            "dnsperf_avg_ms": round(statistics.mean(latencies) * 1000, 3) if latencies else None}


def task_ids(res: dns.resolver.Resolver, port: int) -> set[str]:
    try:
        answer = res.resolve(f"_{port}._tcp.web.p2pswarm.", "SRV")
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return set()
    return {r.target.labels[0].decode() for r in answer}


def exists(res: dns.resolver.Resolver, name: str) -> bool:
    try:
        res.resolve(name, "A")
        return True
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return False


def stale_after_deaths(resolvers: list[dns.resolver.Resolver], port: int, pids: Path, deaths: int) -> list[float]:
    """Seconds from a task's SIGKILL until every node answers NXDOMAIN for its name, per death."""
    out: list[float] = []
    for _ in range(deaths):
        ids = wait_until(lambda: task_ids(resolvers[0], port), 60, "a task of web in the DNS")
        label = sorted(ids)[len(out) % len(ids)]
        pid_file = pids / label.replace("-", ".")
        pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, f"{pid_file}"))
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        name = f"{label}.tasks.web.p2pswarm."
        pending = set(range(len(resolvers)))
        while pending and time.monotonic() - killed < 30:
            for i in list(pending):
                if not exists(resolvers[i], name):
                    pending.discard(i)
            time.sleep(0.01)
        stale = time.monotonic() - killed
        log(f"task {label} killed: gone from every node's answers after {stale:.3f} s")
        out.append(stale)
        pid_file.unlink(missing_ok=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per client")
    parser.add_argument("--deaths", type=int, default=20)
    parser.add_argument("--outstanding", type=int, default=64, help="Python client: queries in flight")
    parser.add_argument("--clients", type=int, default=2, help="dnsperf: processes, each from its own address")
    parser.add_argument("--quick", action="store_true", help=f"a short run for the smoke test: {QUICK}")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    pids = tmp / "pids"
    pids.mkdir()
    os.chmod(tmp, 0o755)
    os.chmod(pids, 0o777)  # tasks run as the nodes' task user
    (tmp / "c").mkdir()
    cluster = LocalCluster(tmp / "c")
    out: dict = {"quick": args.quick, "nodes": args.nodes, "seconds": args.seconds}
    try:
        nodes = cluster.start_group(args.nodes)
        port = cluster.published_port()
        command = f'echo $$ > {pids}/"$P2PSWARM_TASK_ID"; exec sleep 3600'
        result = cluster.cli("service", "create", "web", "--mode", "global", "-p", str(port), "--restart-delay",
                             "5s", "--data-dir", str(nodes[0].data_dir), "--", "sh", "-c", command)
        if result.returncode != 0:
            raise SystemExit(f"service create failed: {result.stderr.strip()}")
        servers = [dns_server(n) for n in nodes]
        resolvers = []
        for server in servers:
            res = dns.resolver.Resolver(configure=False)
            res.nameservers, res.port, res.lifetime, res.cache = [server[0]], server[1], 1.0, None
            resolvers.append(res)
        wait_until(lambda: all(len(task_ids(r, port)) == args.nodes for r in resolvers), 60, "every task in the DNS")
        qs = questions(port)
        log(f"python client: {args.outstanding} outstanding for {args.seconds:g} s on {servers[0]}")
        out.update(asyncio.run(python_load(servers[0], qs, args.seconds, args.outstanding)))
        perf = dnsperf_load(servers[0], qs, args.seconds, args.clients, tmp)
        if perf is not None:
            out.update(perf, qps_tool="dnsperf")
        else:
            out.update(qps=out["python_qps"], qps_tool="python")
        stale = stale_after_deaths(resolvers, port, pids, args.deaths)
        stale.sort()
        out.update(deaths=len(stale), stale_answer_seconds=[round(s, 3) for s in stale],
                   stale_answer_seconds_p50=round(statistics.median(stale), 3),
                   stale_answer_seconds_p99=round(stale[min(len(stale) - 1, int(len(stale) * 0.99))], 3),
                   stale_answer_seconds_max=round(stale[-1], 3))
        out["server_counters"] = nodes[0].api.get("/v1/info")["dns"]
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
