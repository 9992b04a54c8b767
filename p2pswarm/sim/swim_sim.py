"""Membership simulation: thousands of SWIM cores on a virtual clock and a simulated network.

The cores are the same ``Swim`` objects the real node runs.  The cluster starts
converged (every member knows every other), runs ``warmup`` seconds, then
suffers the scenario: crashes at random times, slow members whose message
handling and timers run late, message loss, and state-record updates whose
spread is timed.  Everything random comes from one seeded ``random.Random``,
so the same arguments give the same event trace (``trace_digest``).

Metric definitions (all measured, none assumed):

* first detection: crash → the first time any live member suspects or declares the
  crashed member dead, in protocol periods (probe_interval).
* detection_all: crash → the moment the last member alive at the end marks it dead.
* false_suspicions: suspicions *originated* (a failed probe) about healthy members
  (neither crashed nor slow); false_positive_deaths: distinct healthy members declared
  dead anywhere (deaths from a partition, until the halves have merged again, are
  counted apart as partition_deaths).  Slow members are not healthy (as in the Lifeguard paper); what
  happens to them is reported apart (slow_member_suspicions, slow_members_declared_dead).
* dissemination: a record update at one member → the time 99% / 99.99% of the
  members alive at that moment hold it; the reported value is the median over updates
  (``_max`` keys give the worst update).
* partition_merge_seconds (with ``partition``): heal → the first moment every live member
  sees every other live member alive again ("inf": not within the run).
* bytes: every 64th message is encoded with the real wire codec and the total is
  scaled from that sample (a large PushPull from its first 32 entries).

Speed: 10,000 members for 120 s are some 16 million events, so the path of one event
is kept short: a calendar event queue (engine.py), one network call per message
(network.py), cores that keep their next deadline and their news order up to date
instead of recomputing them (swim.py, news.py), and a loop that calls nothing it
can avoid.  Each shortcut computes exactly what the plain version did (checked by
tests/membership/test_sim_fastpaths.py): the same seed gives the same trace as before.
"""

from __future__ import annotations

import gc
import hashlib
import math
import random
import statistics
import struct
import time
from array import array
from dataclasses import dataclass, replace
from typing import Any

from p2pswarm import wire
from p2pswarm.membership.messages import MemberState, Meta, PushPull
from p2pswarm.membership.swim import DEAD, LEFT, SUSPECT, Swim
from p2pswarm.node.presets import preset as load_preset
from p2pswarm.sim.engine import EventHeap
from p2pswarm.sim.network import NetworkModel, SimNetwork
from p2pswarm.sim.stats import percentile as _percentile

DELIVER, WAKE, CRASH, UPDATE, NETWORK = 0, 1, 2, 3, 4
SLOW_RUN = 0.02
"""Seconds a slow member gets to run between two stalls."""
BYTE_SAMPLE_EVERY = 64
FULL_STATE_SAMPLE = 32


@dataclass
class SwimScenario:
    nodes: int = 100
    duration: float = 60.0
    loss: float = 0.0
    duplicate: float = 0.0
    crash: int = 0
    slow: int = 0
    slow_factor: float = 3.0
    """A slow member is starved of CPU: it runs SLOW_RUN seconds, then stalls for
    U(0.5, 1.5) × slow_factor × probe_timeout, and so on; whatever arrives or falls due
    during a stall waits for the next run, where input is handled before timers (as an
    event loop that drains its sockets first would)."""
    lifeguard: bool = True
    preset: str = "lan"
    seed: int = 1
    warmup: float = 5.0
    updates: int = 20
    push_pull: bool = True
    partition: float = 0.0
    """Seconds the cluster is split in two halves, starting right after the warm-up."""
    latency: float = 0.0005
    """One-way base latency, seconds; plus exponential jitter of the same mean."""


def _message_bytes(msg) -> int:
    """Encoded size; a full-state PushPull is scaled from its first FULL_STATE_SAMPLE entries."""
    if type(msg) is not PushPull or len(msg.members) + len(msg.records) <= 2 * FULL_STATE_SAMPLE:
        return len(wire.encode(msg))
    members, records = msg.members, msg.records
    head = PushPull(msg.source, msg.source_addr, msg.join, msg.reply, members[:FULL_STATE_SAMPLE],
                    records[:FULL_STATE_SAMPLE])
    base = len(wire.encode(replace(head, members=(), records=())))
    m_each = (len(wire.encode(replace(head, records=()))) - base) / max(1, len(head.members))
    r_each = (len(wire.encode(replace(head, members=()))) - base) / max(1, len(head.records))
    return int(base + m_each * len(members) + r_each * len(records))


class SwimSimulation:
    def __init__(self, sc: SwimScenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed)
        config = load_preset(sc.preset).membership.with_changes(lifeguard=sc.lifeguard)
        if not sc.push_pull:
            config = config.with_changes(push_pull_interval=float("inf"))
        self.config = config
        self.heap = EventHeap()
        model = NetworkModel(base_latency=sc.latency, jitter=sc.latency, loss=sc.loss, duplicate=sc.duplicate)
        self.net = SimNetwork(model, random.Random(self.rng.random()))
        self._send = self.net.transmitter(self.heap, DELIVER)
        self.addr_index: dict[str, int] = {}
        self._outbox: list = []
        self._events: list = []
        self._learned: list = []
        """What the cores emit, shared by all of them: the loop empties these after each event."""
        self.cores: list[Swim] = []
        self.wake_at = array("d")
        """Per core, the time of its one live wake-up (inf: none); flat, as it is read at every event."""
        self.crashed_at: dict[int, float] = {}
        self.slow: set[int] = set()
        self.digest = hashlib.blake2b(digest_size=16)
        self.msgs = 0
        self.sampled_bytes = 0
        self.sampled_msgs = 0
        # metrics
        self.first_detect: dict[int, float] = {}
        self.dead_seen: dict[int, dict[int, float]] = {}
        self.false_suspicions = 0
        self.false_dead_members: set[int] = set()
        self.false_dead_declarations = 0
        self.slow_suspicions = 0
        self.slow_dead_members: set[int] = set()
        self.updates: dict[tuple[str, int], dict] = {}
        self.split_at: float | None = None
        self.healed_at: float | None = None
        self.merged_at: float | None = None
        self.wrong_views: set[tuple[int, int]] = set()
        self.partition_deaths = 0
        self._build()

    # ------------------------------------------------------------ setup

    def _build(self) -> None:
        sc = self.sc
        states = {}
        for i in range(sc.nodes):
            node_id = f"n{i:05d}"
            addr = f"sim{i}:7946"
            self.addr_index[addr] = i
            states[node_id] = MemberState(node_id, addr, 0, "alive", Meta(name=node_id))
        for i, (node_id, state) in enumerate(states.items()):
            core = Swim(node_id, state.addr, state.meta, self.config, random.Random(self.rng.random()), 0.0)
            core.bootstrap(0.0, states, live=sc.nodes)
            core.track_records = True
            core.emit_into(self._outbox, self._events, self._learned)
            self.cores.append(core)
            self.wake_at.append(math.inf)
            self._reschedule(i, 0.0)
        healthy = list(range(sc.nodes))
        self.rng.shuffle(healthy)
        crash_end = sc.warmup + 0.5 * (sc.duration - sc.warmup)
        for i in healthy[:sc.crash]:
            self.heap.push(self.rng.uniform(sc.warmup, crash_end), CRASH, i)
        self.slow = set(healthy[sc.crash:sc.crash + sc.slow])
        self.windows = {i: (0.0, SLOW_RUN) for i in sorted(self.slow)}
        if sc.partition > 0:
            # Node index -1 never crashes: network events are addressed to nobody.
            self.heap.push(sc.warmup, NETWORK, -1, "split")
            self.heap.push(sc.warmup + sc.partition, NETWORK, -1, "heal")
        origins = healthy[sc.crash + sc.slow:]
        update_end = max(sc.warmup, sc.duration - 10.0)
        for i in origins[:sc.updates]:
            self.heap.push(self.rng.uniform(sc.warmup, update_end), UPDATE, i)

    def _slow_gate(self, i: int, at: float, kind: int, payload) -> bool:
        """For a slow member: True if it is running at ``at``; else the event waits for its next run."""
        start, end = self.windows[i]
        while at >= end:
            start = end + self.rng.uniform(0.5, 1.5) * self.sc.slow_factor * self.config.probe_timeout
            end = start + SLOW_RUN
        self.windows[i] = (start, end)
        if at >= start:
            return True
        # Input first, then timers, when the member gets the CPU back.
        self.heap.push(start if kind == DELIVER else start + 1e-9, kind, i, payload)
        return False

    def _reschedule(self, i: int, now: float) -> None:
        """Keep exactly one live wake-up per core, at its next deadline.

        A wake-up already in the queue cannot be removed: when the deadline moves (earlier
        or later) a new one is pushed and the old one is skipped when it pops.  (The event
        loop inlines this; it is here for setup.)
        """
        due = self.cores[i].next_deadline()
        if due != self.wake_at[i] and due != math.inf:
            self.wake_at[i] = due
            self.heap.push(max(due, now), WAKE, i, due)

    # ------------------------------------------------------------ run

    def run(self) -> dict:
        started = time.perf_counter()
        # Millions of long-lived objects: keep the cyclic GC from rescanning them all.  (No
        # collection first: building leaves no garbage cycles, and scanning 3 GB takes a second.)
        gc.disable()
        gc.freeze()
        try:
            self._loop()
        finally:
            gc.enable()
            gc.unfreeze()
        wall = time.perf_counter() - started
        return self._report(wall)

    def _loop(self) -> None:
        """Process events until the end of the scenario.

        Millions of events pass here, so the per-event work (trace digest, delivery or
        tick, sending the outbox, rescheduling the wake-up) is written out in one place.
        """
        cores = self.cores
        crashed = self.crashed_at
        wake_at = self.wake_at
        windows = self.windows
        digest = self.digest
        pack = struct.Struct("<dBi").pack
        push = self.heap.push
        inf = math.inf
        outbox, events, learned = self._outbox, self._events, self._learned
        for at, _serial, kind, i, payload in self.heap.events_until(self.sc.duration):
            if i in crashed:
                continue
            if windows and i in windows and kind != CRASH and not self._slow_gate(i, at, kind, payload):
                continue
            digest.update(pack(at, kind, i))
            core = cores[i]
            if kind == DELIVER:
                core.receive(at, payload)
            elif kind == WAKE:
                if payload != wake_at[i]:
                    continue  # superseded: the deadline moved
                wake_at[i] = inf
                core.tick(at)
            elif kind == CRASH:
                crashed[i] = at
                self.dead_seen[i] = {}
                continue
            elif kind == NETWORK:
                self._network_change(at, payload)
                continue
            else:
                core.set_record(at, b"update")
                version = core.member(core.id).record_version
                self.updates[(core.id, version)] = {"at": at, "times": [],
                                                    "live": self.sc.nodes - len(crashed) - 1}
            if outbox:
                self._transmit(i, outbox, at)
                outbox.clear()
            if events:
                self._observe(i, events)
                events.clear()
                if self.healed_at is not None:
                    self._check_merged(at)
            if learned:
                self._record_spread(learned, at)
                learned.clear()
            due = core.next_deadline()
            if due != wake_at[i] and due != inf:
                wake_at[i] = due
                push(due if due > at else at, WAKE, i, due)

    def _record_spread(self, learned: list, now: float) -> None:
        for key in learned:
            update = self.updates.get(key)
            if update is not None:
                update["times"].append(now - update["at"])

    def _transmit(self, src: int, out: list, now: float) -> None:
        transmit(self, src, out, now)

    def _network_change(self, at: float, change: str) -> None:
        if change == "split":
            half = self.sc.nodes // 2
            self.net.partition([list(range(half)), list(range(half, self.sc.nodes))])
            self.split_at = at
        else:
            self.net.heal()
            self.healed_at = at
            self._check_merged(at)

    def _check_merged(self, now: float) -> None:
        """After a heal: the first moment every live member sees every live member alive."""
        if self.healed_at is not None and self.merged_at is None and not self.wrong_views:
            self.merged_at = now

    def _track_view(self, observer: int, subject: int, old: str | None, new: str) -> None:
        if subject in self.crashed_at or observer in self.crashed_at:
            return
        was_wrong = old is not None and old != "alive"
        is_wrong = new != "alive"
        if was_wrong != is_wrong:
            pair = (observer, subject)
            if is_wrong:
                self.wrong_views.add(pair)
            else:
                self.wrong_views.discard(pair)

    def _observe(self, observer: int, events: list) -> None:
        crashed = self.crashed_at
        track = self.sc.partition > 0
        for ev in events:
            subject = int(ev.node[1:])
            if track:
                self._track_view(observer, subject, ev.old, ev.new)
            crash_time = crashed.get(subject)
            if crash_time is not None:
                if ev.new in (SUSPECT, DEAD) and subject not in self.first_detect:
                    self.first_detect[subject] = ev.at
                if ev.new == DEAD:
                    self.dead_seen[subject].setdefault(observer, ev.at)
            elif subject in self.slow:
                # Slow members are not healthy (as in the Lifeguard paper): counted apart.
                if ev.new == SUSPECT and ev.by == self.cores[observer].id:
                    self.slow_suspicions += 1
                elif ev.new == DEAD:
                    self.slow_dead_members.add(subject)
            elif ev.new == SUSPECT and ev.by == self.cores[observer].id:
                self.false_suspicions += 1
            elif ev.new in (DEAD, LEFT):
                if self.split_at is not None and self.merged_at is None:
                    # Each side rightly gives up on the other; at the heal, deaths still in
                    # flight land briefly until the members concerned refute them.
                    self.partition_deaths += 1
                    continue
                self.false_dead_members.add(subject)
                if ev.by == self.cores[observer].id:
                    self.false_dead_declarations += 1

    # ------------------------------------------------------------ report

    def detection_times(self) -> list[float]:
        """Crash → every member still alive at the end marks it dead, per crash (inf if never)."""
        survivors = [i for i in range(self.sc.nodes) if i not in self.crashed_at]
        out = []
        for subject, crash_time in self.crashed_at.items():
            seen = self.dead_seen[subject]
            if all(i in seen for i in survivors):
                out.append(max(seen[i] for i in survivors) - crash_time)
            else:
                out.append(math.inf)
        return out

    def _report(self, wall: float) -> dict:
        sc = self.sc
        period = self.config.probe_interval
        first = [(self.first_detect[s] - t) / period for s, t in self.crashed_at.items() if s in self.first_detect]
        detect = self.detection_times()
        finite = [d for d in detect if math.isfinite(d)]
        d99, d9999 = [], []
        for update in self.updates.values():
            times = sorted(update["times"])
            for target, frac in ((d99, 0.99), (d9999, 0.9999)):
                need = math.ceil(frac * update["live"])
                target.append(times[need - 1] if need <= len(times) else math.inf)
        member_seconds = sc.nodes * sc.duration
        est_bytes = self.sampled_bytes / self.sampled_msgs * self.msgs if self.sampled_msgs else 0
        rounded = lambda v: None if v is None else (round(v, 4) if math.isfinite(v) else "inf")  # noqa: E731
        return {
            "nodes": sc.nodes, "sim_seconds": sc.duration, "wall_seconds": round(wall, 3),
            "speedup": round(sc.duration / wall, 2) if wall else None,
            "preset": sc.preset, "lifeguard": sc.lifeguard, "seed": sc.seed, "loss": sc.loss,
            "crashed": len(self.crashed_at), "slow": len(self.slow),
            "first_detection_periods_p50": rounded(_percentile(first, 50)),
            "first_detection_periods_p99": rounded(_percentile(first, 99)),
            "first_detection_periods_mean": rounded(statistics.fmean(first)) if first else None,
            "detection_all_seconds_p50": rounded(_percentile(detect, 50)),
            "detection_all_seconds_p99": rounded(_percentile(detect, 99)),
            "undetected": len(detect) - len(finite),
            "false_positive_deaths": len(self.false_dead_members),
            "false_death_declarations": self.false_dead_declarations,
            "false_suspicions": self.false_suspicions,
            "slow_member_suspicions": self.slow_suspicions,
            "slow_members_declared_dead": len(self.slow_dead_members),
            "msgs_per_member_per_period": round(self.msgs / (member_seconds / period), 4),
            "bytes_per_member_per_second": round(est_bytes / member_seconds, 1),
            "dissemination_seconds_p99": rounded(_percentile(d99, 50)),
            "dissemination_seconds_p9999": rounded(_percentile(d9999, 50)),
            "dissemination_seconds_p99_max": rounded(max(d99) if d99 else None),
            "dissemination_seconds_p9999_max": rounded(max(d9999) if d9999 else None),
            "updates": len(self.updates),
            "events": self.heap.processed,
            "messages": self.msgs,
            "messages_lost": self.net.lost,
            "partition_seconds": sc.partition,
            "partition_deaths": self.partition_deaths,
            "partition_merge_seconds": (None if self.healed_at is None else
                                        rounded(self.merged_at - self.healed_at if self.merged_at else math.inf)),
            "trace_digest": self.digest.hexdigest(),
        }


def run_swim_sim(**kwargs) -> dict:
    """Run one scenario (keyword arguments of :class:`SwimScenario`); returns the report dict."""
    return SwimSimulation(SwimScenario(**kwargs)).run()


def transmit(world: Any, src: int, out: list, now: float) -> None:
    """Send a core's outgoing ``(addr, msg, bulk)`` list on ``world``'s network (``world._send``), counting
    messages; every BYTE_SAMPLE_EVERY-th message overall is encoded to estimate the bytes (encoding all of
    them would cost more than simulating them)."""
    send, index, sent = world._send, world.addr_index, world.msgs
    world.msgs = sent + len(out)
    first_sample = BYTE_SAMPLE_EVERY - 1 - sent % BYTE_SAMPLE_EVERY
    if first_sample < len(out):
        for k in range(first_sample, len(out), BYTE_SAMPLE_EVERY):
            world.sampled_bytes += _message_bytes(out[k].msg)
            world.sampled_msgs += 1
    for addr, msg, _bulk in out:
        dst = index.get(addr)
        if dst is not None:
            send(now, src, dst, msg)
