#!/usr/bin/env python3
"""Membership on real processes: convergence, crash detection, idle cost, and a 50-node soak.

Starts real `p2pswarm up` processes on distinct 127.0.0.x addresses (lan preset by
default) and measures from the outside, through each node's API:

* converge_s: first process started → every node sees all N alive (median over runs).
* detect_s: SIGKILL of one node → every survivor shows it dead (per run; p50 and max).
* idle CPU % and RSS per node, read from /proc over an idle window.
* with --soak-nodes M: M nodes converge, then stay --soak-seconds with 0 false deaths
  (every node's view is sampled; any healthy member seen suspect/dead is counted).

Clusters are secure (the default): the joiners join with the first node's join token.
A node that exits ends the benchmark with its last log line (exit status 1) rather than a
report of ``null`` figures. ``--quick`` is the short run tests/simulations/ makes.

Prints a human summary on stderr and one JSON object as the last line of stdout.
Everything it starts is killed by pid when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pswarm.lab.cluster import last_log_line  # noqa: E402
from p2pswarm.testing.localcluster import LocalCluster  # noqa: E402

POLL = 0.02
"""Seconds between two looks at every node's view: small against the ~2 s being measured."""
CONVERGE_TIMEOUT = 60.0
"""Seconds a run may take to converge before it counts as failed (lan preset, loaded 2-core machine)."""
QUICK = {"nodes": 3, "runs": 1, "idle_seconds": 1.0, "soak_nodes": 3, "soak_seconds": 2.0}
"""``--quick``: every phase once at the smallest size that still has survivors to agree (≈ 15 s)."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def all_see(nodes, expected: dict[str, str]) -> bool:
    for node in nodes:
        view = node.statuses()
        if view is None or any(view.get(name) != status for name, status in expected.items()):
            return False
    return True


def wait(cond, timeout: float, nodes=()) -> float | None:
    """Seconds until ``cond()`` holds, None after ``timeout``; exits if one of ``nodes`` has exited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        for node in nodes:
            if node.proc.poll() is not None:
                raise SystemExit(f"bench_membership: {node.name} exited with code {node.proc.returncode}: "
                                 f"{last_log_line(node.log_path)}")
        time.sleep(POLL)
    return None


def start_and_converge(cluster: LocalCluster, nodes: int, timeout: float) -> tuple[list, float | None]:
    """Start ``nodes`` nodes joining through the first; seconds from its start until all see all alive."""
    started = time.monotonic()
    members = cluster.start_joined(nodes)
    everyone = {m.name: "alive" for m in members}
    ok = wait(lambda: all_see(members, everyone), timeout, members)
    return members, (time.monotonic() - started if ok is not None else None)


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_run(run: int, nodes: int, preset: str, idle_seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="p2ps-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), preset=preset)
        try:
            members, converge = start_and_converge(cluster, nodes, CONVERGE_TIMEOUT)
            result = {"converge_s": converge, "detect_s": None}
            if converge is None:
                return result
            if run == 0 and idle_seconds > 0:
                pids = [m.proc.pid for m in members]
                cpu0 = [proc_cpu_seconds(p) for p in pids]
                time.sleep(idle_seconds)
                cpu1 = [proc_cpu_seconds(p) for p in pids]
                result["idle_cpu_percent"] = [100 * (b - a) / idle_seconds for a, b in zip(cpu0, cpu1)]
                result["rss_mb"] = [proc_rss_mb(p) for p in pids]
            victim = members[-1]
            survivors = members[:-1]
            killed_at = time.monotonic()
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(timeout=10)
            expect_dead = {victim.name: "dead"}
            took = wait(lambda: all_see(survivors, expect_dead), 60, survivors)
            result["detect_s"] = None if took is None else time.monotonic() - killed_at
            return result
        finally:
            cluster.close()


def soak(nodes: int, seconds: float, preset: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="p2ps-soak-") as tmp:
        cluster = LocalCluster(Path(tmp), preset=preset)
        try:
            say(f"soak: starting {nodes} nodes and waiting for convergence...")
            members, converge = start_and_converge(cluster, nodes, 2 * CONVERGE_TIMEOUT)
            if converge is None:
                raise SystemExit(f"bench_membership: the {nodes} soak nodes did not converge")
            say(f"soak: converged in {converge} s; watching for {seconds:g} s")
            false_dead: set[str] = set()
            suspect_views = 0
            samples = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for node in members:
                    view = node.statuses() or {}
                    samples += 1
                    for name, status in view.items():
                        if status in ("dead", "left"):
                            false_dead.add(name)
                        elif status == "suspect":
                            suspect_views += 1
                time.sleep(0.5)
            deaths_logged = sum(node.log().count("-> dead") for node in members)
            return {"soak_nodes": nodes, "soak_seconds": seconds, "soak_converge_s": converge,
                    "soak_false_deaths": len(false_dead), "soak_dead_log_lines": deaths_logged,
                    "soak_suspect_views": suspect_views, "soak_view_samples": samples}
        finally:
            cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--preset", default="lan")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--soak-nodes", type=int, default=0)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help=f"a short run for the smoke test: {QUICK}")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args()

    runs = []
    for run in range(args.runs):
        result = one_run(run, args.nodes, args.preset, args.idle_seconds)
        say(f"run {run + 1}/{args.runs}: converge {result['converge_s']} s, detect {result['detect_s']} s")
        runs.append(result)
    converge = [r["converge_s"] for r in runs if r["converge_s"] is not None]
    detect = [r["detect_s"] for r in runs if r["detect_s"] is not None]
    report = {
        "nodes": args.nodes, "runs": args.runs, "preset": args.preset, "quick": args.quick,
        "converge_p50_s": round(statistics.median(converge), 3) if converge else None,
        "detect_p50_s": round(statistics.median(detect), 3) if detect else None,
        "detect_max_s": round(max(detect), 3) if detect else None,
        "detect_s": [round(d, 3) for d in detect],
        "undetected_runs": args.runs - len(detect),
    }
    if runs and "idle_cpu_percent" in runs[0]:
        report["idle_cpu_percent_per_node"] = round(statistics.median(runs[0]["idle_cpu_percent"]), 2)
        report["rss_mb_per_node"] = round(statistics.median(runs[0]["rss_mb"]), 1)
    if args.soak_nodes:
        report.update(soak(args.soak_nodes, args.soak_seconds, args.preset))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
