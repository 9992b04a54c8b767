#!/usr/bin/env python3
"""As many real nodes as this machine holds: membership convergence, a global service on every node, leader CPU.

Starts ``--nodes`` real nodes, each on its own loopback address with its own sockets and data dir (secure,
``--preset``), joined through the first. The first few (as many as the Raft voters autopilot wants, which it
picks by uptime) run as `p2pswarm up` processes of their own, so the leader's CPU is its own; the others run
``--nodes-per-process`` to an OS process (:mod:`p2pswarm.testing.multinode`), because one process per node
does not fit 100 nodes on 2 cores. Then:

1. ``converge_s``: from the last node's start until every sampled node (the first, the Raft leader and
   ``--sample`` others) sees all ``--nodes`` members alive;
2. the Raft group: how many voters, learners and workers the leader's `node ls` shows (workers are every
   node outside the Raft configuration: they learn their tasks from the members);
3. ``global_service_place_s``: `service create --mode global -- sleep` until a task runs on every node;
   ``nodes_running_global_task`` counts the distinct nodes with a running task at the end;
4. ``leader_cpu_percent``: the leader process's CPU time over ``--cpu-window`` seconds of the settled cluster,
   as a percentage of one core (``leader_process_nodes``: how many nodes that process runs), and the same for
   the busiest process (``busiest_process_cpu_percent``); ``rss_mb_per_node``: the processes' resident
   memory over the nodes.

Prints progress on stderr and one JSON object as the last line of stdout. Everything it starts is killed by pid
at the end. ``--quick`` is the short run tests/simulations/ makes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_failover import say  # noqa: E402
from bench_failover import wait as failover_wait  # noqa: E402

from p2pswarm.consensus.autopilot import target_voters  # noqa: E402
from p2pswarm.testing.localcluster import LocalCluster  # noqa: E402

QUICK = {"nodes": 6, "sample": 2, "cpu_window": 2.0, "max_learners": 1, "nodes_per_process": 3}
"""``--quick``: a small cluster with workers: 3 voters, 1 learner, 2 workers; the last 3 in one process."""
PROCESSES_PER_CORE = 4
"""The default ``--nodes-per-process`` keeps the node processes (besides the voters') to this many per core."""
POLL = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wait(cond, timeout: float, every: float = POLL):
    """bench_failover's wait at this bench's slower pace (100 nodes answer slowly)."""
    return failover_wait(cond, timeout, every)


def api_get(node, path: str):
    try:
        return node.api.get(path)
    except Exception:
        return None


def alive_seen(node) -> int | None:
    """How many members ``node`` sees alive (None: its API did not answer)."""
    got = api_get(node, "/v1/members")
    return None if got is None else sum(1 for m in got.get("members", []) if m["status"] == "alive")


def sees_all(node, count: int) -> bool:
    return alive_seen(node) == count


def give_up(out: dict, why: str, seen: list | None = None) -> NoReturn:
    """Print what was measured so far (``failed``: why no more; ``alive_seen``: per node of ``seen``, the
    members it sees alive now), then stop with ``why``."""
    out["failed"] = why
    if seen:
        out["alive_seen"] = {n.name: alive_seen(n) for n in seen}
    print(json.dumps(out))
    raise SystemExit(f"bench_scale: {why}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def nodes_per_process(nodes: int, solo: int) -> int:
    """The default ``--nodes-per-process``: few enough processes for this machine's cores."""
    processes = PROCESSES_PER_CORE * (os.cpu_count() or 1)
    return max(1, -(-(nodes - solo) // processes))


def start_nodes(cluster: LocalCluster, count: int, per_process: int, max_learners: int | None) -> list:
    """Node 0 creates the cluster; the voters-to-be (the first ``target_voters(count)``) run one per process,
    the rest ``per_process`` to a process, all joined through node 0."""
    solo = min(count, target_voters(count)) if per_process > 1 else count
    first = cluster.start(0)
    if wait(lambda: cluster.join_token((first.addr,)), 120) is None:
        raise SystemExit(f"bench_scale: the first node gave no join token (see {first.log_path})")
    nodes = [first] + [cluster.start(i, (first.addr,)) for i in range(1, solo)]
    # the voters-to-be first: autopilot picks the longest-running members, so these must be up before the rest
    if wait(lambda: all(api_get(n, "/v1/info") for n in nodes), 120) is None:
        raise SystemExit("bench_scale: the first nodes did not start")
    options = {} if max_learners is None else {"max_learners": max_learners}
    for low in range(solo, count, per_process):
        nodes += cluster.start_shared(list(range(low, min(low + per_process, count))), (first.addr,), **options)
    return nodes


def running_nodes(cluster: LocalCluster, node) -> set[str]:
    out = cluster.cli("service", "ps", "all", "--format", "json", "--data-dir", str(node.data_dir), timeout=60)
    try:
        rows = json.loads(out.stdout) if out.returncode == 0 else []
    except ValueError:
        return set()
    return {r["node"] for r in rows if r.get("current") and r["desired"] == "running" and r["state"] == "running"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--preset", default="lan")
    parser.add_argument("--sample", type=int, default=8, help="nodes besides the first and the leader checked")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds each phase may take")
    parser.add_argument("--cpu-window", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-learners", type=int, default=None, help="`up --max-learners` (default: the preset's)")
    parser.add_argument("--nodes-per-process", type=int, default=None,
                        help=f"nodes in one OS process beyond the voters' (default: at most {PROCESSES_PER_CORE} "
                             f"such processes per core; 1: one `p2pswarm up` process per node)")
    parser.add_argument("--quick", action="store_true", help=f"a short run for the smoke test: {QUICK}")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_scale: terminated"))  # the finally kills the nodes
    if args.nodes < 1 or (args.nodes_per_process is not None and args.nodes_per_process < 1):
        parser.error("--nodes and --nodes-per-process must be at least 1")
    per_process = args.nodes_per_process or nodes_per_process(args.nodes, target_voters(args.nodes))
    rng = random.Random(args.seed)
    out: dict = {"bench": "scale", "quick": args.quick, "nodes": args.nodes, "preset": args.preset,
                 "nodes_per_process": per_process}
    with tempfile.TemporaryDirectory(prefix="p2ps-sc-") as tmp:
        extra = () if args.max_learners is None else ("--max-learners", str(args.max_learners))
        cluster = LocalCluster(Path(tmp), preset=args.preset, node_args=extra)
        try:
            began = time.monotonic()
            nodes = start_nodes(cluster, args.nodes, per_process, args.max_learners)
            processes = {n.proc.pid: n.proc for n in nodes}
            out["processes"] = len(processes)
            out["start_s"] = round(time.monotonic() - began, 3)
            say(f"{args.nodes} nodes started in {out['start_s']} s")
            last_started = time.monotonic()
            first = nodes[0]
            if wait(lambda: sees_all(first, args.nodes), args.timeout) is None:
                give_up(out, f"{first.name} never saw {args.nodes} members alive", [first])
            leader_id = wait(lambda: (api_get(first, "/v1/cluster") or {}).get("leader"), args.timeout)
            leader = next((n for n in nodes if (api_get(n, "/v1/info") or {}).get("id") == leader_id), first)
            sample = [first, leader, *rng.sample(nodes[1:], min(args.sample, len(nodes) - 1))]
            if wait(lambda: all(sees_all(n, args.nodes) for n in sample), args.timeout) is None:
                give_up(out, "the sampled nodes never all saw every member alive", sample)
            out["converge_s"] = round(time.monotonic() - last_started, 3)
            say(f"every sampled node sees {args.nodes} alive after {out['converge_s']} s")

            def settled_roles():  # autopilot's voters in place, every member classified (no "-" left)
                roles = [m.get("role") for m in (api_get(leader, "/v1/members") or {}).get("members", [])]
                voters = roles.count("leader") + roles.count("voter")
                return roles if len(roles) == args.nodes and "-" not in roles and voters == want else None
            want = target_voters(args.nodes)
            roles = wait(settled_roles, args.timeout) or []
            out["roles"] = {r: roles.count(r) for r in sorted(set(roles))}
            out["roles_settled_s"] = round(time.monotonic() - last_started, 3)
            created_at = time.monotonic()
            made = cluster.cli("service", "create", "all", "--mode", "global", "--detach",
                               "--data-dir", str(leader.data_dir), "--", "sleep", "3600", timeout=120)
            if made.returncode != 0:
                give_up(out, f"service create failed: {made.stderr.strip()}")
            everywhere = wait(lambda: len(running_nodes(cluster, leader)) >= args.nodes, args.timeout, 1.0)
            out["global_service_place_s"] = round(time.monotonic() - created_at, 3) if everywhere else None
            out["nodes_running_global_task"] = len(running_nodes(cluster, leader))
            say(f"global service on {out['nodes_running_global_task']} nodes after {out['global_service_place_s']} s")

            before, t0 = {pid: cpu_seconds(pid) for pid in processes}, time.monotonic()
            time.sleep(args.cpu_window)
            spent = time.monotonic() - t0
            percent = {pid: round(100 * (cpu_seconds(pid) - before[pid]) / spent, 1) for pid in processes}
            out["leader_cpu_percent"] = percent[leader.proc.pid]
            out["leader_process_nodes"] = sum(1 for n in nodes if n.proc is leader.proc)
            out["busiest_process_cpu_percent"] = max(percent.values())
            out["all_processes_cpu_percent"] = round(sum(percent.values()), 1)
            out["rss_mb_per_node"] = round(sum(rss_mb(pid) for pid in processes) / len(nodes), 1)
            out["load_average_1m"] = round(os.getloadavg()[0], 2)
        finally:
            cluster.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
