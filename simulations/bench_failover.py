#!/usr/bin/env python3
"""Failover on real processes: SIGKILL a node running replicas, time until 6 healthy again.

Starts ``--nodes`` real `p2pswarm up` processes (LocalCluster, ``test`` preset by
default), creates a ``--replicas`` service of tests/apps/http_server.py with the CLI
(``--detach``), and waits until every replica runs and answers HTTP.  Then, per run:

1. pick a node that runs replicas (never node n0, through which we observe; the Raft
   leader may be picked, so some runs include an election) and SIGKILL it;
2. recover_s = SIGKILL → the current running tasks are exactly ``--replicas``, none on
   the killed node, and each answers ``GET /`` on its port with its own task id
   (polled with ``service ps --format json`` on n0 plus one HTTP GET per task);
3. restart the killed node with its data dir and wait until it is alive again and the
   service is back to ``--replicas`` healthy tasks (rebalancing may move some tasks to
   it; we wait until the set of running tasks stays the same for ``--settle`` seconds).

Prints progress on stderr and one JSON object as the last line of stdout:
``recover_p50_s``, ``recover_p99_s`` (nearest rank; with few runs that is the max),
``recover_s`` (every run), ``runs``, ``failed_runs`` (no recovery within the timeout).
Everything it starts (nodes, and any task process it saw) is killed by pid at the end.
The cluster is secure (the default): the joiners join with the first node's join token.
``--quick`` is the short run tests/simulations/ makes.
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
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pswarm.lab.cluster import last_log_line  # noqa: E402
from p2pswarm.sim.stats import percentile  # noqa: E402
from p2pswarm.testing.localcluster import REPO, LocalCluster  # noqa: E402

APP = str(REPO / "tests" / "apps" / "http_server.py")
POLL = 0.05
"""Seconds between two polls of ``service ps``: each poll is a CLI process, so not much smaller."""
QUICK = {"nodes": 3, "replicas": 2, "runs": 1, "settle": 0.5}
"""``--quick``: one kill in the smallest cluster where a voter can die and replicas move (≈ 20 s)."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def wait(cond, timeout: float, every: float = POLL):
    """``cond()``'s first truthy value within ``timeout`` seconds, polled every ``every``; None if none came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    return None


def task_rows(cluster: LocalCluster, node) -> list[dict]:
    try:
        out = cluster.cli("service", "ps", "web", "--format", "json", "--data-dir", str(node.data_dir), timeout=10)
    except Exception:
        return []
    if out.returncode != 0:
        return []
    try:
        return json.loads(out.stdout)
    except ValueError:
        return []


def task_host(cluster: LocalCluster, node_name: str) -> str:
    """Where a task of ``node_name`` answers: its node's address (a bridge container's port is bound there)."""
    node = next((n for n in cluster.nodes.values() if n.name == node_name), None)
    return node.addr.rsplit(":", 1)[0] if node is not None else "127.0.0.1"


def healthy(cluster: LocalCluster, node, count: int, avoid: str | None = None) -> list[dict] | None:
    """The current running tasks if exactly ``count`` run (none on ``avoid``) and all answer HTTP, else None."""
    rows = [r for r in task_rows(cluster, node) if r.get("current") and r.get("desired") == "running"]
    if len(rows) != count or any(r["state"] != "running" or not r["port"] or r["node_name"] == avoid
                                 for r in rows):
        return None
    for r in rows:
        try:
            url = f"http://{task_host(cluster, r['node_name'])}:{r['port']}/"
            with urllib.request.urlopen(url, timeout=1) as resp:
                if json.load(resp).get("task") != r["id"]:
                    return None
        except (OSError, ValueError):
            return None
    return rows


def failed(cluster: LocalCluster, observer, what: str) -> SystemExit:
    """The exit for a phase that did not finish: what, the tasks ``observer`` sees, each node's last log line."""
    rows = [f"{r.get('id')} on {r.get('node_name')}: {r.get('state')}" for r in task_rows(cluster, observer)
            if r.get("current")]
    logs = [f"  {n.name}: {last_log_line(n.log_path)}" for n in cluster.nodes.values()]
    return SystemExit("\n".join([f"bench_failover: {what}; tasks: {', '.join(rows) or 'none'}", *logs]))


def task_pids(cluster: LocalCluster, rows: list[dict], into: set[int]) -> None:
    for r in rows:
        node = next((n for n in cluster.nodes.values() if n.name == r["node_name"]), None)
        try:
            into.add(int((node.data_dir / "tasks" / r["id"] / "pid").read_text()))
        except (AttributeError, OSError, ValueError):
            pass


def settled(cluster: LocalCluster, observer, count: int, settle: float, timeout: float) -> list[dict] | None:
    """Wait until ``count`` healthy tasks with the same ids for ``settle`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = wait(lambda: healthy(cluster, observer, count), max(0.1, deadline - time.monotonic()))
        if rows is None:
            return None
        ids = {r["id"] for r in rows}
        time.sleep(settle)
        again = healthy(cluster, observer, count)
        if again is not None and {r["id"] for r in again} == ids:
            return again
    return None


def start_group(cluster: LocalCluster, count: int) -> list:
    """``count`` joined nodes, all in the Raft group."""
    nodes = cluster.start_joined(count)

    def in_group():
        try:
            return all(len(n.api.get("/v1/cluster")["members"]) == count for n in nodes)
        except Exception:
            return False
    if wait(in_group, 60) is None:
        raise failed(cluster, nodes[0], "the nodes did not all join the Raft group")
    return nodes


def create_service(cluster: LocalCluster, first, replicas: int, settle: float, *argv: str) -> list[dict]:
    """``service create web --replicas N --detach ARGV...`` and wait until every replica answers."""
    created = cluster.cli("service", "create", "web", "--replicas", str(replicas), "--detach",
                          "--data-dir", str(first.data_dir), *argv, timeout=120)
    if created.returncode != 0:
        raise SystemExit(f"service create failed: {created.stderr.strip()}")
    rows = settled(cluster, first, replicas, settle, 180)
    if rows is None:
        raise failed(cluster, first, f"{replicas} tasks never ran")
    return rows


def kill_runs(cluster: LocalCluster, nodes: list, rows: list[dict], replicas: int, runs: int, timeout: float,
              settle: float, seen_pids: set[int], after_kill=None) -> tuple[list[float], int]:
    """Per run: SIGKILL the node with the most replicas (never the observer, ``nodes[0]``), time until ``replicas``
    answer again, call ``after_kill(victim, killed_at)``, restart it and let the service settle.
    Returns the recovery times and the number of runs that did not recover."""
    first, recover, missed = nodes[0], [], 0
    for run in range(runs):
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["node_name"]] = counts.get(r["node_name"], 0) + 1
        candidates = [n for n in nodes[1:] if counts.get(n.name)]
        # rotate over nodes holding replicas, the most loaded first
        candidates.sort(key=lambda n: (-counts[n.name], (n.index - run) % len(nodes)))
        victim = candidates[0]
        killed_at = time.monotonic()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=30)
        back = wait(lambda: healthy(cluster, first, replicas, avoid=victim.name), timeout)
        took = time.monotonic() - killed_at
        if back is None:
            missed += 1
            say(f"run {run + 1}/{runs}: killed {victim.name} ({counts[victim.name]} replicas): "
                f"NOT recovered within {timeout:g} s")
        else:
            recover.append(took)
            task_pids(cluster, back, seen_pids)
            say(f"run {run + 1}/{runs}: killed {victim.name} ({counts[victim.name]} replicas): "
                f"{replicas} healthy again after {took:.3f} s")
        if after_kill is not None:
            after_kill(victim, killed_at)
        if run == runs - 1:
            break
        cluster.start(victim.index, (first.addr,))
        alive = wait(lambda: (first.statuses() or {}).get(victim.name) == "alive" and victim.info() is not None, 60)
        if alive is None:
            raise failed(cluster, first, f"{victim.name} did not come back")
        rows = settled(cluster, first, replicas, settle, 90)
        if rows is None:
            raise failed(cluster, first, f"{replicas} tasks did not settle after {victim.name} came back")
        task_pids(cluster, rows, seen_pids)
    return recover, missed


def kill_pids(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=6)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--preset", default="test")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for recovery per run")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help=f"a short run for the smoke test: {QUICK}")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args()

    seen_pids: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="p2ps-fo-") as tmp:
        cluster = LocalCluster(Path(tmp), preset=args.preset)
        try:
            nodes = start_group(cluster, args.nodes)
            say(f"{args.nodes} nodes up ({args.preset} preset)")
            rows = create_service(cluster, nodes[0], args.replicas, args.settle, "--", sys.executable, APP)
            task_pids(cluster, rows, seen_pids)
            say(f"{args.replicas} replicas running and answering HTTP")
            recover, missed = kill_runs(cluster, nodes, rows, args.replicas, args.runs, args.timeout, args.settle,
                                        seen_pids)
        finally:
            cluster.close()
            kill_pids(seen_pids)

    report = {
        "nodes": args.nodes, "replicas": args.replicas, "preset": args.preset, "runs": args.runs, "quick": args.quick,
        "recover_p50_s": round(statistics.median(recover), 3) if recover else None,
        "recover_p99_s": round(percentile(recover, 99), 3) if recover else None,
        "recover_s": [round(t, 3) for t in recover],
        "failed_runs": missed,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
