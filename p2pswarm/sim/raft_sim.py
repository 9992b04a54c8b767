"""Deterministic fault-injection simulation of a Raft cluster running the kv store.

Each run drives the real :class:`~p2pswarm.consensus.raft.Raft` core (through the
real wire encoding) with :class:`~p2pswarm.consensus.storage.MemoryStorage` on a
virtual clock: an event heap, a seeded ``random.Random`` per run, nothing else,
so the same seed gives the same runs.  A random fault schedule per run mixes
crashes (losing whatever was not fsynced) and restarts, symmetric and asymmetric
partitions, message loss, duplication, delay and reordering, leadership
transfers and membership changes (remove a voter, add a fresh node as a learner,
promote it).  Clients issue put/get/cas/delete, retry through other nodes, and
record ops that time out as unknown-outcome.  Each run's history goes through
the linearizability checker; the simulator also checks election safety and
state-machine safety directly.

``bug`` deliberately breaks the core or the driver so tests can show that the
checks catch real mistakes:

* ``skip_fsync``: storage is only flushed by a periodic "OS writeback"; a crash
  loses votes and acknowledged entries.
* ``commit_old_term_by_counting``: the leader commits entries of earlier terms by
  counting replicas (the Figure 8 mistake, §5.4.2).
* ``vote_without_log_check``: voters ignore whether the candidate's log is up to date.
* ``stale_reads``: nodes answer reads from local state without ReadIndex.

The world here holds the nodes, the driver loop and the network; its clients live in
:mod:`p2pswarm.sim.raft_clients` and its fault schedule in :mod:`p2pswarm.sim.raft_faults`
(mixins, so a seeded run's single random stream is drawn in the same order as before).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from typing import Any, Callable

from p2pswarm.consensus.config import RaftConfig
from p2pswarm.consensus.kv import KVStore
from p2pswarm.consensus.log import LogError
from p2pswarm.consensus.raft import LEADER, Raft
from p2pswarm.consensus.storage import MemoryStorage
from p2pswarm.sim.engine import EventHeap
from p2pswarm.sim.linearizability import Op, check_history
from p2pswarm.sim.raft_clients import SimClient, SimClients
from p2pswarm.sim.raft_faults import SimFaults
from p2pswarm.sim.stats import percentile
from p2pswarm.wire import decode, encode

BUGS = ("skip_fsync", "commit_old_term_by_counting", "vote_without_log_check", "stale_reads")

SIM_CONFIG = RaftConfig(election_timeout=0.5, heartbeat_interval=0.05, max_inflight=8,
                        max_batch_entries=32, max_batch_bytes=64 * 1024)
"""Faster than the LAN preset, so each virtual second holds more faults."""

SNAPSHOT_EVERY = 64       # applied entries between snapshots (exercises InstallSnapshot)
WRITEBACK_EVERY = 2.0     # skip_fsync: seconds between "OS writeback" flushes


class _CountingRaft(Raft):
    def _commit_term_ok(self, index: int) -> bool:
        return True


class _CarelessVoter(Raft):
    def _log_ok_for_vote(self, m: Any) -> bool:
        return True


_CORE = {"commit_old_term_by_counting": _CountingRaft, "vote_without_log_check": _CarelessVoter}


def run_raft_sim(nodes: int = 5, runs: int = 200, seed: int = 7, *, bug: str | None = None,
                 duration: float = 10.0, clients: int = 5, keys: int = 3,
                 config: RaftConfig | None = None, wire: bool = True) -> dict:
    """Run ``runs`` independent simulated runs and summarise them.

    Result: ``ops`` client operations (``ops_ok`` with a known outcome, ``ops_unknown``
    timed out); ``violations``: runs whose history is not linearizable;
    ``safety_violations``: runs where two leaders shared a term, replicas applied
    different entries at one index, or a core halted on a broken invariant;
    ``bad_runs``/``first_problem`` point at them; ``checker_incomplete``: runs the checker
    could not decide within its budget.  ``elections_*_ms``: leader crash (measured only
    when no partition is active) to a new leader; ``unavailable_ms_*``: leader crash to
    the first client write committed by a new leader.  ``wall_seconds`` is real time.
    """
    if bug is not None and bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r}; choose one of {', '.join(BUGS)}")
    started = time.perf_counter()
    totals: Counter = Counter()
    faults: Counter = Counter()
    elections: list[float] = []
    unavailable: list[float] = []
    bad_runs: list[int] = []
    first_problem: str | None = None
    for run in range(runs):
        world = _World(random.Random(seed * 1_000_003 + run), nodes, bug, config or SIM_CONFIG,
                       duration, clients, keys, wire)
        world.run()
        verdict = check_history(world.history)
        known = sum(1 for op in world.history if op.complete is not None)
        totals.update(ops=len(world.history), ops_ok=known, ops_unknown=len(world.history) - known,
                      messages=world.messages, safety_violations=1 if world.safety else 0,
                      checker_incomplete=0 if verdict.complete else 1)
        if not verdict.ok:
            totals["violations"] += 1
        if not verdict.ok or world.safety:
            bad_runs.append(run)
            if first_problem is None:
                first_problem = (f"run {run}: " + (world.safety[0] if world.safety else
                                 f"history of key {verdict.key} is not linearizable"))
        faults.update(world.faults)
        elections.extend(world.election_ms)
        unavailable.extend(world.unavailable_ms)
    return {
        "runs": runs, "nodes": nodes, "seed": seed, "bug": bug,
        "ops": totals["ops"], "ops_ok": totals["ops_ok"], "ops_unknown": totals["ops_unknown"],
        "violations": totals["violations"], "safety_violations": totals["safety_violations"],
        "bad_runs": bad_runs[:20], "first_problem": first_problem,
        "checker_incomplete": totals["checker_incomplete"],
        "leader_crashes_measured": len(elections),
        "elections_p50_ms": _pct(elections, 50), "elections_p99_ms": _pct(elections, 99),
        "unavailable_ms_p50": _pct(unavailable, 50), "unavailable_ms_p99": _pct(unavailable, 99),
        "messages": totals["messages"], "faults": dict(sorted(faults.items())),
        "virtual_seconds": runs * duration, "wall_seconds": round(time.perf_counter() - started, 2),
    }


def _pct(values: list[float], p: float) -> float | None:
    value = percentile(values, p)
    return None if value is None else round(value, 1)


class _Node:
    def __init__(self, nid: str, storage: MemoryStorage, bootstrap: tuple) -> None:
        self.id, self.storage, self.bootstrap = nid, storage, bootstrap
        self.raft: Raft | None = None
        self.kv = KVStore()
        self.up = False
        self.removed = False
        self.incarnation = 0
        self.tick_at = math.inf
        self.writes: dict[int, tuple] = {}   # index -> (term, client, seq, attempt)
        self.reads: dict[int, tuple] = {}    # read request id -> (client, seq, attempt, key)
        self.ready_reads: list[tuple] = []   # (read index, client, seq, attempt, key)
        self.next_read = 1


class _World(SimClients, SimFaults):
    """One run: nodes on a virtual clock, the network between them, clients and faults mixed in."""

    def __init__(self, rng: random.Random, n: int, bug: str | None, cfg: RaftConfig, duration: float,
                 n_clients: int, n_keys: int, wire: bool) -> None:
        self.rng, self.bug, self.cfg, self.duration, self.wire = rng, bug, cfg, duration, wire
        self.events = EventHeap()
        self.keys = [f"k{i}" for i in range(n_keys)]
        self.recent: dict[str, list] = {k: [None] for k in self.keys}
        self.blocked: set[tuple[str, str]] = set()
        self.loss = rng.choice([0.0, 0.0, 0.01, 0.05])
        self.dup = rng.choice([0.0, 0.01, 0.03])
        self.base_delay = rng.uniform(0.0005, 0.003)
        self.jitter = rng.uniform(0.001, 0.015)
        self.history: list[Op] = []
        self.safety: list[str] = []
        self.faults: Counter = Counter()
        self.messages = 0
        self.term_leader: dict[int, str] = {}
        self.applied_at: dict[int, tuple] = {}
        self.election_ms: list[float] = []
        self.unavailable_ms: list[float] = []
        self.watch: dict | None = None
        self.member_plan: dict | None = None
        self.next_node = n + 1
        self.nodes: dict[str, _Node] = {}
        ids = tuple(f"n{i + 1}" for i in range(n))
        for nid in ids:
            self._add_node(nid, ids)
        self.clients = [SimClient(i + 1) for i in range(n_clients)]

    # ================================================================ event loop

    @property
    def now(self) -> float:
        return self.events.now

    def at(self, when: float, fn: Callable, *args: Any) -> None:
        self.events.push(when, 0, 0, (fn, args))

    def run(self) -> None:
        self._plan_faults()
        for c in self.clients:
            self.at(self.rng.uniform(0.0, 0.05), self._client_next, c)
        if self.bug == "skip_fsync":
            self.at(WRITEBACK_EVERY, self._writeback)
        for _, _, _, _, (fn, args) in self.events.pop_until(self.duration):
            fn(*args)
        for c in self.clients:
            if not c.done:
                self._record(c, None, None)

    # ================================================================ nodes

    def _add_node(self, nid: str, bootstrap: tuple) -> _Node:
        node = _Node(nid, MemoryStorage(fsync=self.bug != "skip_fsync"), bootstrap)
        self.nodes[nid] = node
        self._boot(node)
        return node

    def _boot(self, node: _Node) -> None:
        stored = node.storage.load()
        core = _CORE.get(self.bug, Raft)
        node.raft = core(node.id, self.cfg, random.Random(self.rng.getrandbits(64)), self.now,
                         hard_state=stored.hard_state, snapshot=stored.snapshot,
                         entries=tuple(stored.entries), bootstrap=node.bootstrap)
        node.kv = KVStore()
        if stored.snapshot is not None:
            node.kv.restore(stored.snapshot.data)
        node.up, node.tick_at = True, math.inf
        node.incarnation += 1
        node.writes.clear()
        node.reads.clear()
        node.ready_reads.clear()
        self._pump(node)

    def _crash(self, node: _Node) -> None:
        node.up = False
        node.storage.crash()
        node.raft = None

    def _pump(self, node: _Node) -> None:
        """The driver loop: persist, then send, then apply, then advance."""
        raft = node.raft
        try:
            while raft.has_ready():
                rd = raft.ready()
                node.storage.save(rd.hard_state, rd.entries, rd.snapshot)
                for env in rd.messages:
                    self._send(node.id, env.to, env.msg)
                if rd.snapshot is not None and rd.snapshot.index > node.kv.applied:
                    node.kv.restore(rd.snapshot.data)
                for entry in rd.committed_entries:
                    self._apply(node, entry)
                for rs in rd.read_states:
                    req = node.reads.pop(rs.request, None)
                    if req is not None:
                        node.ready_reads.append((rs.index, *req))
                self._serve_reads(node)
                raft.advance(rd)
                self._observe(node)
                if node.kv.applied - raft.log.snap_index >= SNAPSHOT_EVERY:
                    raft.compact(self.now, node.kv.applied, node.kv.snapshot())
        except LogError as exc:  # the core refuses to diverge: the node halts, as a real one would
            self.safety.append(f"{node.id} halted: {exc}")
            node.removed = True
            self._crash(node)
            return
        self._schedule_tick(node)

    def _apply(self, node: _Node, entry: Any) -> None:
        sig = (entry.term, entry.kind, entry.data)
        seen = self.applied_at.setdefault(entry.index, sig)
        if seen != sig:
            self.safety.append(f"{node.id} applied a different entry at index {entry.index}")
        result = None
        if entry.kind == "normal":
            result = node.kv.apply(entry.index, entry.data)
        else:
            node.kv.applied = entry.index
        waiting = node.writes.pop(entry.index, None)
        if waiting is not None:
            term, client, seq, attempt = waiting
            self._reply(client, seq, attempt, ("ok", result) if term == entry.term else ("retry", None))
        raft = node.raft
        if (self.watch and raft.role == LEADER and entry.kind == "normal" and entry.term == raft.term
                and raft.term > self.watch["term"]):
            self.unavailable_ms.append((self.now - self.watch["at"]) * 1000)
            self.watch = None

    def _observe(self, node: _Node) -> None:
        raft = node.raft
        if raft.role != LEADER:
            return
        first = self.term_leader.setdefault(raft.term, node.id)
        if first != node.id:
            self.safety.append(f"two leaders in term {raft.term}: {first} and {node.id}")
        if self.watch and raft.term > self.watch["term"] and not self.watch["elected"]:
            self.watch["elected"] = True
            self.election_ms.append((self.now - self.watch["at"]) * 1000)

    def _schedule_tick(self, node: _Node) -> None:
        if not node.up:
            return
        when = max(node.raft.next_deadline(), self.now)
        if when < node.tick_at:
            node.tick_at = when
            self.at(when, self._tick, node, node.incarnation)

    def _tick(self, node: _Node, incarnation: int) -> None:
        if not node.up or node.incarnation != incarnation or self.now != node.tick_at:
            return
        node.tick_at = math.inf
        node.raft.tick(self.now)
        self._pump(node)

    def _writeback(self) -> None:
        for node in self.nodes.values():
            node.storage.flush()
        self.at(self.now + WRITEBACK_EVERY, self._writeback)

    def _leader(self) -> _Node | None:
        best = None
        for node in self.nodes.values():
            if node.up and node.raft.role == LEADER and (best is None or node.raft.term > best.raft.term):
                best = node
        return best

    # ================================================================ network

    def _send(self, src: str, dst: str, msg: Any) -> None:
        self.messages += 1
        if (src, dst) in self.blocked or self.rng.random() < self.loss:
            return
        payload = encode(msg) if self.wire else msg
        for _ in range(2 if self.rng.random() < self.dup else 1):
            delay = self.base_delay + self.rng.random() * self.jitter
            if self.rng.random() < 0.01:
                delay += self.rng.uniform(0.02, 0.2)  # a straggler, overtaken by later messages
            self.at(self.now + delay, self._deliver, src, dst, payload)

    def _deliver(self, src: str, dst: str, payload: Any) -> None:
        node = self.nodes.get(dst)
        if node is None or not node.up or (src, dst) in self.blocked:
            return
        node.raft.step(self.now, decode(payload) if self.wire else payload)
        self._pump(node)
