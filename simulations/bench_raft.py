#!/usr/bin/env python3
"""The Raft group on real processes on loopback: failover, durable throughput, crash safety.

* failover: 3 voters; the leader is SIGKILLed ``--kills`` times; for each kill, the
  time from the kill until a write through a survivor is acknowledged
  (``failover_p50_ms``, ``failover_p99_ms``).  The killed node is restarted and
  the next kill waits for 3 voters again.
* throughput: 3 voters (``--tput-preset``); ``--concurrency`` writers run inside the
  leader's process (``POST /v1/bench/writes``), each write acknowledged only once
  committed (fsynced by a quorum) and applied (``commits_per_s``, median of
  ``--tput-runs``).  Side by side: PySyncObj, 3 processes with journalFile and
  fullDumpFile on, writers inside its leader's process, in its default
  configuration and with ``appendEntriesUseBatch=False``.
* whole_cluster_restarts: ``--restarts`` rounds of writes, kill -9 of all 3 nodes
  while writes are in flight, restart; then every acknowledged write is read back
  (``lost_acknowledged_writes`` must be 0).  Snapshots run every 64 entries
  (test preset), so compaction happens many times on the way.
* autopilot_replace_s: 4 more nodes join (7 in all, 5 voters); a voter is
  SIGKILLed; the time until 5 voters without it are in place.

Clusters are secure (the default): the joiners join with the first node's join token.
``--quick`` is the short run tests/simulations/ makes: each phase once, the throughput
measured on the failover cluster instead of a cluster of its own, PySyncObj and autopilot
left out (``skipped`` says so, as it does when PySyncObj is not installed).

Human progress on stderr; one JSON object as the last line of stdout.  Every
process it starts is killed by pid when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pswarm.sim.stats import percentile  # noqa: E402
from p2pswarm.testing.localcluster import LocalCluster, free_port, wait_until  # noqa: E402
from p2pswarm.testing.raftcluster import client, crash_and_restart, leader, lost_writes, try_put, voters  # noqa: E402

QUICK = {"kills": 1, "restarts": 1, "restart_writes": 20, "writes": 400, "tput_runs": 1, "no_autopilot": True}
"""``--quick``: each phase once with few writes, enough to prove it runs, not to measure it; without
the autopilot phase (4 more node starts, ≈ 15 s here; tests/integration/test_raft_autopilot.py covers it)."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def start_voters(cluster: LocalCluster, count: int = 3):
    nodes = cluster.start_joined(count, timeout=60)
    names = sorted(n.name for n in nodes)
    wait_until(lambda: all(voters(n) == names for n in nodes), 120, f"{count} voters")
    return nodes


# ---------------------------------------------------------------- p2pswarm phases

def failover(cluster: LocalCluster, nodes, kills: int) -> list[float]:
    names = sorted(n.name for n in nodes)
    times = []
    for k in range(kills):
        lead = wait_until(lambda: leader(nodes), 60, "a leader")
        survivor = next(n for n in nodes if n is not lead)
        killed = time.monotonic()
        lead.proc.send_signal(signal.SIGKILL)
        i = 0
        while not try_put(survivor, f"failover-{k}-{i}", "x"):
            i += 1
        times.append((time.monotonic() - killed) * 1000)
        lead.proc.wait(timeout=30)
        say(f"failover {k + 1}/{kills}: {times[-1]:.0f} ms")
        cluster.start(lead.index, (survivor.addr,))
        wait_until(lambda: all(voters(n) == names for n in nodes), 120, "3 voters again")
    return times


def throughput(nodes, writes: int, concurrency: int, runs: int) -> list[float]:
    rates = []
    for run in range(runs + 1):
        lead = wait_until(lambda: leader(nodes), 60, "a leader")
        out = client(lead).post("/v1/bench/writes", {"count": writes if run else writes // 4,
                                                     "concurrency": concurrency})
        if out["errors"]:
            say(f"  {out['errors']} write errors, e.g. {out['first_error']}")
        if run:  # the first run warms up
            rates.append(out["commits_per_s"])
            say(f"p2pswarm run {run}: {out['commits_per_s']:.0f} commits/s")
    return rates


def autopilot_replace(cluster: LocalCluster, nodes) -> float:
    nodes = list(nodes) + [cluster.start(i, (nodes[0].addr,)) for i in range(3, 7)]
    wait_until(lambda: len(voters(nodes[0]) or []) == 5, 120, "5 voters of 7 nodes")
    lead = wait_until(lambda: leader(nodes), 60, "a leader")
    victim = next(n for n in nodes if n.name in voters(lead) and n is not lead)
    killed = time.monotonic()
    victim.proc.send_signal(signal.SIGKILL)

    def replaced():
        v = voters(lead)
        return v is not None and len(v) == 5 and victim.name not in v
    wait_until(replaced, 120, "a replacement voter", interval=0.02)
    return time.monotonic() - killed


# ---------------------------------------------------------------- PySyncObj

def pysyncobj_node(args) -> None:
    """One PySyncObj replica (run as a child); its leader runs the writers and writes the result file."""
    import threading

    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class KV(SyncObj):
        def __init__(self, self_addr, partners, conf):
            super().__init__(self_addr, partners, conf)
            self._data = {}

        @replicated
        def set(self, key, value):
            self._data[key] = value
            return True

    base = Path(args.dir)
    extra = {} if args.batch else {"appendEntriesUseBatch": False}
    conf = SyncObjConf(journalFile=str(base / "journal"), fullDumpFile=str(base / "dump"), **extra)
    obj = KV(args.self_addr, args.partners.split(","), conf)
    while obj._getLeader() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    if not obj._isLeader():
        while True:
            time.sleep(3600)
    lock, finished = threading.Lock(), threading.Event()
    todo = iter(range(args.count))
    state = {"done": 0, "errors": 0}

    def issue(w: int) -> None:
        with lock:
            i = next(todo, None)
        if i is not None:
            obj.set(f"bench/{w}/{i % 64}", "x" * 16, callback=lambda res, err, w=w: completed(w, err))

    def completed(w: int, err) -> None:
        with lock:
            state["done"] += 1
            state["errors"] += err != FAIL_REASON.SUCCESS
            if state["done"] == args.count:
                finished.set()
        issue(w)

    start = time.perf_counter()
    for w in range(args.concurrency):
        issue(w)
    finished.wait(600)
    seconds = time.perf_counter() - start
    good = state["done"] - state["errors"]
    tmp = Path(args.result + ".tmp")
    tmp.write_text(json.dumps({"commits_per_s": good / seconds, "errors": state["errors"], "writes": good}))
    tmp.rename(args.result)
    while True:
        time.sleep(3600)


def pysyncobj_run(tmp: Path, batch: bool, writes: int, concurrency: int) -> dict:
    addrs = [f"127.0.0.1:{free_port('127.0.0.1')}" for _ in range(3)]
    result = tmp / f"pso-{int(batch)}-{time.monotonic_ns()}.json"
    procs = []
    try:
        for i, addr in enumerate(addrs):
            d = tmp / f"pso-{int(batch)}-{i}-{time.monotonic_ns()}"
            d.mkdir()
            argv = [sys.executable, __file__, "--pysyncobj-node", "--self-addr", addr,
                    "--partners", ",".join(a for a in addrs if a != addr), "--dir", str(d), "--count", str(writes),
                    "--concurrency", str(concurrency), "--result", str(result)] + (["--batch"] if batch else [])
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=open(d / "log", "wb")))
        wait_until(result.exists, 600, "the PySyncObj leader's result")
        return json.loads(result.read_text())
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--restart-writes", type=int, default=80, help="acknowledged writes per restart round")
    ap.add_argument("--writes", type=int, default=20000, help="writes per throughput run")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--tput-runs", type=int, default=3)
    ap.add_argument("--preset", default="test", help="preset of the failover/restart/autopilot cluster")
    ap.add_argument("--tput-preset", default="lan", help="preset of the throughput cluster")
    ap.add_argument("--no-autopilot", action="store_true")
    ap.add_argument("--quick", action="store_true", help=f"a short run for the smoke test: {QUICK}")
    # internal: one PySyncObj replica
    ap.add_argument("--pysyncobj-node", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--self-addr", "--partners", "--dir", "--result"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch", action="store_true", help=argparse.SUPPRESS)
    if ap.parse_known_args()[0].quick:
        ap.set_defaults(**QUICK)
    args = ap.parse_args()
    if args.pysyncobj_node:
        pysyncobj_node(args)
        return 0

    out: dict = {"preset": args.preset, "tput_preset": args.preset if args.quick else args.tput_preset,
                 "concurrency": args.concurrency, "cpus": os.cpu_count(), "quick": args.quick, "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="bench-raft-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        if not args.quick:
            tput = LocalCluster(tmp / "t", preset=args.tput_preset)
            (tmp / "t").mkdir()
            try:
                rates = throughput(start_voters(tput), args.writes, args.concurrency, args.tput_runs)
            finally:
                tput.close()
            out["commits_per_s"] = round(statistics.median(rates), 1)
        try:
            import pysyncobj  # noqa: F401
            have_pso = not args.quick
            if args.quick:
                out["skipped"]["pysyncobj"] = "--quick leaves the PySyncObj comparison out"
        except ImportError:
            have_pso = False
            out["skipped"]["pysyncobj"] = "not installed (pip install pysyncobj)"
        if have_pso:
            for key, batch in (("pysyncobj_default_commits_per_s", True), ("pysyncobj_nobatch_commits_per_s", False)):
                res = pysyncobj_run(tmp, batch, args.writes, args.concurrency)
                out[key] = round(res["commits_per_s"], 1)
                say(f"{key}: {out[key]:.0f} (errors {res['errors']})")
            best = max(out["pysyncobj_default_commits_per_s"], out["pysyncobj_nobatch_commits_per_s"])
            out["ratio_vs_pysyncobj"] = round(out["commits_per_s"] / best, 2)

        main_cluster = LocalCluster(tmp / "m", preset=args.preset)
        (tmp / "m").mkdir()
        try:
            nodes = start_voters(main_cluster)
            if args.quick:
                out["commits_per_s"] = round(statistics.median(
                    throughput(nodes, args.writes, args.concurrency, args.tput_runs)), 1)
            times = failover(main_cluster, nodes, args.kills)
            out.update(failover_kills=len(times), failover_p50_ms=round(percentile(times, 50), 1),
                       failover_p99_ms=round(percentile(times, 99), 1), failover_max_ms=round(max(times), 1))
            acked: dict[str, str] = {}
            started = time.monotonic()
            for rnd in range(args.restarts):
                crash_and_restart(main_cluster, nodes, acked, f"r{rnd}", args.restart_writes)
                say(f"whole-cluster restart {rnd + 1}/{args.restarts}: {len(acked)} acknowledged writes so far")
            lost = lost_writes(nodes[1], acked)
            st = client(nodes[1]).get("/v1/cluster")
            out["whole_cluster_restarts"] = {"rounds": args.restarts, "acknowledged_writes": len(acked),
                                             "lost_acknowledged_writes": len(lost),
                                             "snapshot_index": st["snapshot_index"], "last_index": st["last_index"],
                                             "seconds": round(time.monotonic() - started, 1)}
            if not args.no_autopilot:
                out["autopilot_replace_s"] = round(autopilot_replace(main_cluster, nodes), 2)
            else:
                out["skipped"]["autopilot"] = "--quick leaves it out" if args.quick else "--no-autopilot"
        finally:
            main_cluster.close()
    say(json.dumps(out, indent=1))
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
