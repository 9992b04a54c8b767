#!/usr/bin/env python3
"""What CURVE costs: gossip message rate and Raft commit rate, with CURVE vs without.

* **gossip**: two ZmqTransports on loopback; one sends SWIM-sized messages (an
  encoded Ping carrying four pieces of news, ~{size} bytes) in bursts of
  ``--burst`` (under the probe high-water mark), the other receives them; the
  rate is messages received per second over ``--seconds``.
* **raft**: three real RaftDrivers (the node's Ready loop, FileStorage with
  fsync, the KV state machine, autopilot) in this one process, each on its own
  ZmqTransport on loopback, routed by a minimal stand-in for the SWIM view
  (``node.py`` is not needed; the node routes Raft messages the same way).
  ``--writers`` concurrent writers on the leader; the rate is writes committed
  on a quorum and applied per second.  Raft dirs live in ``--raft-dir-base``
  (default: the system temp dir, a real disk, so fsync costs what it costs);
  ``--tmpfs`` adds a second measurement with the Raft dirs in /dev/shm, where
  fsync is nearly free and the transport's share of the cost is largest.

Plaintext and CURVE runs alternate (AB BA AB ...) ``--rounds`` times in one
process, both clusters alive throughout, so load from other processes on the
machine falls on both alike.  Ratios are ``curve / plaintext`` (1.0 = free; the
target is >= 0.8): ``curve_gossip_ratio`` and ``curve_commit_ratio`` are the
medians of the per-round ratios of wall-clock rates (each round's two runs are
adjacent in time, so a burst of outside load hits both; ``ratio_of_medians`` is
shown too), and ``*_cpu_ratio`` compare rates per CPU-second of this process
(all its threads, libzmq's included), which outside load disturbs least.

``--autolock`` (on by default) adds what encryption at rest costs: the CURVE trio against a
CURVE trio whose Raft logs are encrypted (``up --autolock``: every wal record and snapshot
sealed with ChaCha20-Poly1305), alternated the same way; ``autolock_commit_ratio`` =
encrypted / not encrypted (in that section "plain" means "not encrypted at rest").

``--quick`` is the short run tests/simulations/ makes (every section, 2 rounds).

Human progress on stderr; one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pswarm import wire  # noqa: E402
from p2pswarm.consensus.driver import RaftDriver  # noqa: E402
from p2pswarm.consensus.facts import new_cluster_id  # noqa: E402
from p2pswarm.consensus.messages import RAFT_MESSAGES  # noqa: E402
from p2pswarm.membership.messages import Alive, Meta, Ping, Suspect  # noqa: E402
from p2pswarm.node.datadir import DataDir  # noqa: E402
from p2pswarm.node.presets import TEST  # noqa: E402
from p2pswarm.node.record import GossipRecord  # noqa: E402
from p2pswarm.security import autolock  # noqa: E402
from p2pswarm.security.keys import CurveKeys  # noqa: E402
from p2pswarm.transport.zmq import ZmqTransport  # noqa: E402

META = Meta("node-a", (("zone", "eu-1"), ("rack", "r7")), (("cpus", 8.0), ("memory_mb", 32768.0)), "0.1.0",
            1_700_000_000_000)
SWIM_MESSAGE = wire.encode(Ping(123456, "a1b2c3d4e5f60718", "127.0.0.1:7946", "0817f6e5d4c3b2a1",
                                (Alive("a1b2c3d4e5f60718", 7, "127.0.0.1:7946", META),
                                 Alive("0817f6e5d4c3b2a1", 3, "127.0.0.2:7946", META),
                                 Suspect("ffeeddccbbaa9988", 2, "a1b2c3d4e5f60718"),
                                 Alive("1122334455667788", 1, "127.0.0.3:7946", META))))
QUICK = {"rounds": 2, "seconds": 0.3}
"""``--quick``: two alternated rounds per section (AB BA), enough to prove each section runs (≈ 15 s)."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class View:
    """What the node keeps for CURVE: the admitted keys and the key of each address (here: everyone's)."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.admitted: set[bytes] = set()

    def transport(self, curve: bool) -> ZmqTransport:
        if not curve:
            return ZmqTransport("127.0.0.1:0")
        keys = CurveKeys.from_secret(os.urandom(32))
        t = ZmqTransport("127.0.0.1:0", curve=keys, authorize=self.admitted.__contains__, peer_key=self.keys.get)
        self.admitted.add(keys.public)
        return t

    def register(self, t: ZmqTransport) -> None:
        if t.curve_public is not None:
            self.keys[t.local_addr] = t.curve_public


# ---------------------------------------------------------------- gossip

class GossipPair:
    def __init__(self, curve: bool) -> None:
        self.curve = curve
        self.view = View()
        self.a = self.view.transport(curve)
        self.b = self.view.transport(curve)

    async def start(self) -> None:
        for t in (self.a, self.b):
            await t.start()
            self.view.register(t)
        await self.measure(0.3, 16)  # connect and warm up

    async def measure(self, seconds: float, burst: int) -> tuple[float, float]:
        received = 0
        cpu = time.process_time()
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            sent = sum(1 for _ in range(burst) if self.a.send(self.b.local_addr, SWIM_MESSAGE))
            for _ in range(sent):
                await asyncio.wait_for(self.b.recv(), 5)
            received += sent
        return received / (time.perf_counter() - started), received / max(1e-9, time.process_time() - cpu)

    async def close(self) -> None:
        await self.a.close()
        await self.b.close()


# ---------------------------------------------------------------- raft

class _Member:
    __slots__ = ("node", "addr", "status", "status_since", "meta", "record", "incarnation")

    def __init__(self, node: str, addr: str, now: float) -> None:
        self.node, self.addr, self.status, self.status_since = node, addr, "alive", now - 3600
        self.meta = Meta(node, (), (), "bench", 0)
        self.record = b""
        self.incarnation = 0


class _Swim:
    """The part of the SWIM core a RaftDriver reads: every member alive, records as Raft publishes them."""

    def __init__(self, members: dict[str, _Member]) -> None:
        self._m = members

    def members(self) -> list[_Member]:
        return list(self._m.values())

    def member(self, node: str) -> _Member | None:
        return self._m.get(node)


class RaftTrio:
    def __init__(self, curve: bool, base: str, at_rest: bool = False) -> None:
        self.curve = curve
        self.view = View()
        self.dir = tempfile.mkdtemp(prefix=f"bench-sec-{'curve' if curve else 'plain'}-", dir=base)
        if at_rest:  # what `p2pswarm unlock` does: the data key of this data dir, registered in-process
            autolock.register(DataDir(self.dir), os.urandom(autolock.KEY_BYTES))
        self.transports = [self.view.transport(curve) for _ in range(3)]
        self.ids = [f"{'c' if curve else 'p'}{i}{os.urandom(7).hex()}" for i in range(3)]
        self.members: dict[str, _Member] = {}
        self.drivers: list[RaftDriver] = []
        self.tasks: list[asyncio.Task] = []
        self.wire_errors = 0

    async def start(self) -> None:
        now = time.monotonic()
        for node, t in zip(self.ids, self.transports):
            await t.start()
            self.view.register(t)
            self.members[node] = _Member(node, t.local_addr, now)
        swim = _Swim(self.members)
        cluster = new_cluster_id()
        for i, (node, t) in enumerate(zip(self.ids, self.transports)):
            member = self.members[node]
            d = RaftDriver(node, cluster, os.path.join(self.dir, node), "lan", swim=swim, transport=t,
                           clock=time.monotonic, rng=random.Random(i), bootstrap=i == 0,
                           record=GossipRecord(lambda now, payload, m=member: setattr(m, "record", payload)))
            d.autopilot_cfg = TEST.autopilot  # add the other two voters quickly
            d.start()
            self.drivers.append(d)
            self.tasks.append(asyncio.ensure_future(self._route(t, d)))
        end = time.monotonic() + 60
        while not self.ready():
            for d in self.drivers:  # no node loop here: flush the Raft facts while the trio forms
                d.record.flush(time.monotonic())
            if time.monotonic() > end:
                raise RuntimeError("the Raft trio did not get 3 voters and a leader within 60 s")
            await asyncio.sleep(0.05)
        await self.measure(0.5, 8)  # warm up

    def ready(self) -> bool:
        leaders = {d.raft.lead for d in self.drivers}
        return (len(leaders) == 1 and None not in leaders
                and all(len(d.raft.conf.voters) == 3 for d in self.drivers))

    def leader(self) -> RaftDriver:
        lead = self.drivers[0].raft.lead
        return next(d for d in self.drivers if d.id == lead)

    async def _route(self, t: ZmqTransport, d: RaftDriver) -> None:
        while True:
            data = await t.recv()
            try:
                msg = wire.decode(data)
            except wire.WireError:
                self.wire_errors += 1
                continue
            if isinstance(msg, RAFT_MESSAGES):
                d.receive(msg)

    async def measure(self, seconds: float, writers: int) -> tuple[float, float]:
        leader = self.leader()
        done = 0
        cpu = time.process_time()
        started = time.perf_counter()
        deadline = started + seconds

        async def writer(w: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < deadline:
                await leader.write("put", f"bench/{w}/{i % 64}", "x" * 16)
                i += 1
                done += 1
        await asyncio.gather(*(writer(w) for w in range(writers)))
        return done / (time.perf_counter() - started), done / max(1e-9, time.process_time() - cpu)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for d in self.drivers:
            await d.close()
        for t in self.transports:
            await t.close()
        autolock.forget(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- main

async def alternate(label: str, plain, curve, rounds: int, run) -> dict:
    """ABAB rounds; medians of the wall-clock rates and of the rates per CPU-second of this process.

    The per-CPU-second rate (all threads, libzmq's included, where CURVE's crypto
    runs) is much less sensitive to other processes' load than the wall-clock one.
    """
    rates: dict[str, list[float]] = {"plain": [], "curve": []}
    cpu: dict[str, list[float]] = {"plain": [], "curve": []}
    for r in range(rounds):
        order = (("plain", plain), ("curve", curve)) if r % 2 == 0 else (("curve", curve), ("plain", plain))
        for mode, subject in order:
            rate, per_cpu = await run(subject)
            rates[mode].append(rate)
            cpu[mode].append(per_cpu)
        say(f"{label} round {r + 1}/{rounds}: plain {rates['plain'][-1]:,.0f}/s, curve {rates['curve'][-1]:,.0f}/s "
            f"(per CPU-second: {cpu['plain'][-1]:,.0f} vs {cpu['curve'][-1]:,.0f})")
    p, c = statistics.median(rates["plain"]), statistics.median(rates["curve"])
    pc, cc = statistics.median(cpu["plain"]), statistics.median(cpu["curve"])
    paired = statistics.median(cr / pr for pr, cr in zip(rates["plain"], rates["curve"]))
    return {"plain_per_s": round(p, 1), "curve_per_s": round(c, 1), "ratio": round(paired, 3),
            "ratio_of_medians": round(c / p, 3),
            "plain_per_cpu_s": round(pc, 1), "curve_per_cpu_s": round(cc, 1), "cpu_ratio": round(cc / pc, 3),
            "plain_rounds": [round(x) for x in rates["plain"]], "curve_rounds": [round(x) for x in rates["curve"]]}


async def bench(args) -> dict:
    out: dict = {"message_bytes": len(SWIM_MESSAGE), "rounds": args.rounds, "seconds_per_round": args.seconds,
                 "burst": args.burst, "raft_writers": args.writers, "quick": args.quick}
    plain, curve = GossipPair(False), GossipPair(True)
    try:
        await plain.start()
        await curve.start()
        out["gossip"] = await alternate("gossip", plain, curve, args.rounds,
                                        lambda p: p.measure(args.seconds, args.burst))
        assert curve.b.stats()["admitted_connections"] >= 1 and curve.b.stats()["unauthorized_dropped"] == 0
    finally:
        await plain.close()
        await curve.close()

    bases = [("raft", args.raft_dir_base)] + ([("raft_tmpfs", "/dev/shm")] if args.tmpfs else [])
    for label, base in bases:
        plain_r, curve_r = RaftTrio(False, base), RaftTrio(True, base)
        try:
            await plain_r.start()
            await curve_r.start()
            out[label] = await alternate(label, plain_r, curve_r, args.rounds,
                                         lambda t: t.measure(args.seconds, args.writers))
            out[label]["dir"] = base
        finally:
            await plain_r.close()
            await curve_r.close()

    if args.autolock:
        clear, sealed = RaftTrio(True, args.raft_dir_base), RaftTrio(True, args.raft_dir_base, at_rest=True)
        try:
            await clear.start()
            await sealed.start()
            assert all(d.storage._cipher is not None for d in sealed.drivers)  # the logs really are sealed
            out["autolock"] = await alternate("autolock", clear, sealed, args.rounds,
                                              lambda t: t.measure(args.seconds, args.writers))
        finally:
            await clear.close()
            await sealed.close()
        out["autolock_commit_ratio"] = out["autolock"]["ratio"]

    out["curve_gossip_ratio"] = out["gossip"]["ratio"]
    out["curve_commit_ratio"] = out["raft"]["ratio"]
    out["curve_gossip_cpu_ratio"] = out["gossip"]["cpu_ratio"]
    out["curve_commit_cpu_ratio"] = out["raft"]["cpu_ratio"]
    if args.tmpfs:
        out["curve_commit_ratio_tmpfs"] = out["raft_tmpfs"]["ratio"]
    out["cpus"] = os.cpu_count()
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--seconds", type=float, default=0.6, help="length of one measurement")
    ap.add_argument("--burst", type=int, default=32, help="gossip messages in flight (below the HWM of 64)")
    ap.add_argument("--writers", type=int, default=32, help="concurrent Raft writers on the leader")
    ap.add_argument("--raft-dir-base", default=tempfile.gettempdir())
    ap.add_argument("--tmpfs", action="store_true", help="also measure Raft with its dirs in /dev/shm")
    ap.add_argument("--no-autolock", dest="autolock", action="store_false",
                    help="skip the encryption-at-rest comparison")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--quick", action="store_true", help=f"a short run for the smoke test: {QUICK}")
    if ap.parse_known_args()[0].quick:
        ap.set_defaults(**QUICK)
    args = ap.parse_args()
    result = asyncio.run(bench(args))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
