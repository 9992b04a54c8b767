"""The Raft leader's commit latency while workers resync their assignments from it (in-process).

One real Raft driver (a single voter: it leads, writes to its own raft dir and fsyncs) and its
assignment driver run on one event loop, as in a node.  ``--workers`` fake workers each hold
``--tasks`` tasks (global services) and ask the leader for a *full* resync again as soon as an
answer arrives, the worst load they can make.  Meanwhile a writer commits ``--writes`` cluster
commands one after another; the JSON compares their commit latency with and without the workers.

    python simulations/bench_worker_resync.py [--workers 100] [--tasks 10] [--writes 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pswarm import wire  # noqa: E402
from p2pswarm.assignments.config import AssignmentsConfig  # noqa: E402
from p2pswarm.assignments.driver import AssignmentsDriver  # noqa: E402
from p2pswarm.assignments.messages import AssignmentsRequest  # noqa: E402
from p2pswarm.cluster import commands as cmd  # noqa: E402
from p2pswarm.cluster.spec import ServiceSpec  # noqa: E402
from p2pswarm.consensus.driver import RaftDriver  # noqa: E402
from p2pswarm.node.record import GossipRecord  # noqa: E402

LOOP_TURN = 0.002
"""Seconds between the fake node loop's turns (a busy node's loop turns about this often)."""


class Workers:
    """The transport of the leader's assignment driver: every reply it sends comes back as a new full
    resync request from the same worker."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.driver: AssignmentsDriver | None = None
        self.replies = 0
        self.bytes = 0
        self.seq = 0

    def send(self, addr: str, data: bytes, bulk: bool = False) -> bool:
        self.replies += 1
        self.bytes += len(data)
        wire.decode(data)  # what a worker would do first
        self.ask(addr)
        return True

    def ask(self, worker: str) -> None:
        self.seq += 1
        assert self.driver is not None
        self.driver.receive(AssignmentsRequest(self.seq, worker, 0))


def swim_of(names: list[str]) -> SimpleNamespace:
    members = {n: SimpleNamespace(node=n, addr=n, status="alive", status_since=0.0, record=b"",
                                  meta=SimpleNamespace(name=n, labels=(), started_ms=1)) for n in names}
    return SimpleNamespace(member=members.get, members=lambda: list(members.values()))


async def commit_latencies(raft: RaftDriver, writes: int) -> list[float]:
    out = []
    for i in range(writes):
        started = time.perf_counter()
        result = await raft.write_cluster(cmd.set_scheduling_error(f"w{i}-{random.random()}", 0.0, "svc0", f"{i}"))
        assert result.ok, result.error
        out.append(time.perf_counter() - started)
    return out


async def run(args: argparse.Namespace, raft_dir: str) -> dict:
    names = [f"worker{i:03d}" for i in range(args.workers)]
    swim = swim_of(["L", *names])
    raft = RaftDriver("L", "c1", raft_dir, "test", swim=swim, transport=SimpleNamespace(send=lambda *a: True),
                      clock=time.monotonic, rng=random.Random(1), bootstrap=True, record=GossipRecord())
    raft.autopilot_cfg = type(raft.autopilot_cfg)(max_learners=0)  # the fake workers stay workers
    raft.start()
    host = SimpleNamespace(driver=raft)
    workers = Workers(names)
    config = AssignmentsConfig(serve_per_turn=args.serve_per_turn)
    assignments = AssignmentsDriver("L", host, swim, GossipRecord(), workers, config, clock=time.monotonic)
    workers.driver = assignments
    while raft.role_of("L") != "leader":
        await asyncio.sleep(0.01)
    for s in range(args.tasks):
        assert (await raft.write_cluster(cmd.create_service(f"s{s}", 0.0, ServiceSpec(
            f"svc{s}", "srv", mode="global", env={"SIZE": "x" * 200})))).ok
    for node in names:
        assert (await raft.write_cluster(cmd.update_node(f"n-{node}", 0.0, node, name=node))).ok
    for s in range(args.tasks):
        basis = [raft.raft.term, raft.cluster.applied]
        places = [cmd.placement(f"svc{s}", 1, 0, node) for node in names]
        assert (await raft.write_cluster(cmd.assign_tasks(f"p{s}", 0.0, basis, places))).ok

    stop = False

    async def node_loop() -> None:
        while not stop:
            assignments.step(time.monotonic())
            await asyncio.sleep(LOOP_TURN)
    loop_task = asyncio.ensure_future(node_loop())
    quiet = await commit_latencies(raft, args.writes)
    served_before = workers.replies
    for name in names:
        workers.ask(name)
    started = time.perf_counter()
    busy = await commit_latencies(raft, args.writes)
    elapsed = time.perf_counter() - started
    resyncs = workers.replies - served_before
    stop = True
    await loop_task
    await raft.close()

    def ms(values: list[float], q: float) -> float:
        return round(1000 * statistics.quantiles(values, n=100)[int(q) - 1], 2) if len(values) > 1 else 0.0
    return {"quick": args.quick, "workers": args.workers, "serve_per_turn": args.serve_per_turn,
            "tasks_per_worker": args.tasks,
            "writes": args.writes,
            "commit_ms_p50_quiet": ms(quiet, 50), "commit_ms_p99_quiet": ms(quiet, 99),
            "commit_ms_p50_resyncing": ms(busy, 50), "commit_ms_p99_resyncing": ms(busy, 99),
            "full_resyncs_served": resyncs, "full_resyncs_per_s": round(resyncs / elapsed, 1),
            "reply_bytes_avg": workers.bytes // max(1, workers.replies),
            "shed": assignments.counters["requests_shed"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--serve-per-turn", type=int, default=AssignmentsConfig().serve_per_turn)
    parser.add_argument("--quick", action="store_true", help="a small run (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.tasks, args.writes = 20, 2, 20
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(run(args, str(Path(tmp) / "raft")))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
