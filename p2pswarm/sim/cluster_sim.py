"""Whole-orchestrator simulation (``p2pswarm sim cluster``): thousands of nodes on a virtual clock.

It drives the cores a real node drives, at their real timings (the preset's):

* every node runs the real SWIM + Lifeguard core (:mod:`p2pswarm.membership.swim`), on the event
  loop and network of ``sim swim`` (:mod:`p2pswarm.sim.engine`, :mod:`p2pswarm.sim.network`);
* the voters and autopilot's few learners run the real Raft core, each applying the log to a real
  :class:`~p2pswarm.cluster.state.ClusterState` (:mod:`p2pswarm.sim.cluster_raft`);
* the leader runs the scheduler's register/observe/reconcile/placement (:mod:`p2pswarm.sim.cluster_sched`);
* nodes with tasks run the agent core; workers learn their assignments with the real assignment
  protocol core (:mod:`p2pswarm.sim.cluster_workers`);
* clients' requests go through each node's mesh view and the real route choice (:mod:`p2pswarm.sim.cluster_mesh`).

The cluster boots converged in membership but empty: the first leader registers the nodes, the
services are created and placed, and tasks start during the warm-up; then the scenario's faults
(:mod:`p2pswarm.sim.cluster_scenario`) strike.  One seeded ``random.Random`` feeds everything, so
the same arguments give the same run (``digest``).

Metrics:

* ``detect_seconds_*``: a crash → the Raft leader's SWIM view marks the node dead (what the
  scheduler acts on); ``undetected``: crashes the leader had not marked dead by the end (or
  before the node came back).
* ``replicas_restored_seconds_*`` over the services that lost a running replica after the
  first fault: that fault → the first moment the service is back to its replica count (running
  per the agents, on live nodes) after the loss; ``inf`` if it is short at the end
  (``services_short_at_end``).
* ``failed_request_fraction``: requests from the first fault to the end that failed (see
  :mod:`p2pswarm.sim.cluster_mesh`).
* ``unassigned_live_nodes``: live nodes at the end whose agent lacks a task the leader's state
  assigns them to run.
* ``leader_entries_per_s`` / ``leader_bytes_per_s``: Raft entries proposed, and bytes the leader
  sent (Raft messages and assignment replies, real wire encoding), per simulated second;
  ``worker_bytes_per_s``: per node, SWIM (every 64th message encoded, scaled) plus assignment
  requests and replies.
* ``swim_news_queued``: news items the SWIM cores queued to pass on (every member queues every change it hears
  first: members × changes), the bulk of the simulator's own work; ``wall_seconds_by_part``: where the wall
  clock went (``swim``: the cores' receive and tick; ``raft``, ``scheduler``, ``workers``, ``mesh``,
  ``faults``: those components' timed calls; ``loop``: the rest, the event queue, network and glue).
"""

from __future__ import annotations

import gc
import hashlib
import math
import random
import resource
import struct
import time
from array import array
from collections.abc import Callable

from p2pswarm.consensus.autopilot import target_voters
from p2pswarm.membership.messages import DEAD, LIVE, MemberState, Meta
from p2pswarm.membership.swim import Swim
from p2pswarm.node.presets import preset as load_preset
from p2pswarm.node.record import DnsFacts, MeshFacts, NodeCaps, RaftFacts, Section, TaskDigest, encode_record
from p2pswarm.sim.cluster_mesh import MeshClients
from p2pswarm.sim.cluster_raft import RaftGroup
from p2pswarm.sim.cluster_report import report
from p2pswarm.sim.cluster_scenario import ClusterScenario, Fault, zone_name
from p2pswarm.sim.cluster_sched import LeaderScheduler
from p2pswarm.sim.cluster_workers import NodeSide
from p2pswarm.sim.engine import EventHeap
from p2pswarm.sim.network import NetworkModel, SimNetwork
from p2pswarm.sim.swim_sim import transmit

DELIVER, WAKE, CALL = 0, 1, 2
SAMPLE_EVERY = 0.5
"""Seconds between two samples of the replicas running per service (for the plot)."""
STATIC_SECTIONS: dict[str, Section] = {s.SECTION: s for s in (
    MeshFacts(7947), DnsFacts("10.0.3.117", 53),
    NodeCaps.of("none", "unix:///var/run/docker.sock: not reachable: No such file or directory", "cgroup-v1",
                "cpu, memory, pids under /sys/fs/cgroup"))}
"""The sections a real node's record holds besides its Raft facts and tasks (its mesh relay port, DNS address and
capabilities, here those of a node without Docker): every record change gossips them too, so news is as large as
a real node's (about 215 bytes against 60) and competes for the probes' piggyback budget as it does there."""


PROGRESS_EVERY = 10.0
"""Wall-clock seconds between two progress reports (a 10,000-node run takes an hour)."""


class ClusterSimulation:
    def __init__(self, sc: ClusterScenario, progress: Callable[[str], None] | None = None) -> None:
        self.sc = sc
        self.progress = progress
        """Called with one line about every PROGRESS_EVERY wall seconds (simulated time, messages, memory)."""
        self._reported_at = time.perf_counter()
        self.rng = random.Random(sc.seed)
        preset = load_preset(sc.preset)
        self.config = preset.membership
        self.heap = EventHeap()
        self.net = SimNetwork(NetworkModel(loss=sc.loss), random.Random(self.rng.random()))
        self._send = self.net.transmitter(self.heap, DELIVER)
        self.ids = [f"n{i:05d}" for i in range(sc.nodes)]
        self.index_of = {node: i for i, node in enumerate(self.ids)}
        self.addr_index = {f"sim{i}:7946": i for i in range(sc.nodes)}
        self.zone_of = [i % sc.zones for i in range(sc.nodes)]
        self.service_names = [f"svc{k:05d}" for k in range(sc.services)]
        self._outbox: list = []
        self._events: list = []
        self._learned: list = []
        self.cores: list[Swim] = []
        self._now = 0.0
        self.wake_at = array("d")
        self.down: dict[int, float] = {}
        """Nodes that are down now, and since when."""
        self.sections: dict[int, dict[str, Section]] = {}
        self.applied_of: dict[tuple[str, int], int] = {}
        """(member id, record version) -> the applied index that record announced."""
        self.view_changes = 0
        """Changes the leader's SWIM view saw (statuses, records): the scheduler's cue."""
        self.status_changes = 0
        """The statuses among them (what reconcile reads of the view)."""
        self.leader_index = -1
        self.leader_changes = 0
        self.raft_changes = 0
        self.digest = hashlib.blake2b(digest_size=16)
        self.msgs = self.sampled_bytes = self.sampled_msgs = 0
        # metrics
        self.fault_at: float | None = None
        self.pending_detect: dict[int, float] = {}
        self.detections: list[float] = []
        self.undetected = 0
        self.crashes = 0
        self.running_count = {name: 0 for name in self.service_names}
        self.hosts: dict[str, set[int]] = {}
        self.short_since: dict[str, float] = {}
        self.restored: dict[str, float] = {}
        self.not_ready_at_fault = 0
        self.samples: list[tuple[float, array]] = []
        self.detected_at: list[tuple[float, float]] = []
        """(time of the leader's dead mark, crash time): detection over time, for the plot."""
        self.part_seconds: dict[str, float] = {}
        """Wall seconds spent per part: ``swim`` (the cores' receive and tick), then each component's timed calls
        (``raft``, ``scheduler``, ``workers``, ``mesh``, ``faults``: faults, restarts and sampling; ``other``: a
        call of none of them)."""
        self.retired_news = 0
        """News queued by cores that were since replaced by a restart (``swim_news_queued`` counts them too)."""
        self._build(preset)

    # ------------------------------------------------------------ setup

    def _build(self, preset) -> None:
        sc = self.sc
        states = {}
        for i, node_id in enumerate(self.ids):
            meta = Meta(name=node_id, labels=(("zone", zone_name(self.zone_of[i])),))
            states[node_id] = MemberState(node_id, f"sim{i}:7946", 0, "alive", meta)
        for i, (node_id, state) in enumerate(states.items()):
            core = Swim(node_id, state.addr, state.meta, self.config, random.Random(self.rng.random()), 0.0)
            core.bootstrap(0.0, states, live=sc.nodes)
            self._adopt(core)
            self.cores.append(core)
            self.wake_at.append(math.inf)
            self._reschedule(i, 0.0)
        voters = list(range(min(target_voters(sc.nodes), sc.nodes)))  # node i is in zone i % zones: spread
        self.group = RaftGroup(self, voters, preset.raft, preset.autopilot, preset.raft_driver.applied_gossip_interval)
        self.side = NodeSide(self)
        self.scheduler = LeaderScheduler(self, preset.scheduler)
        self.mesh = MeshClients(self, sc.requests_per_s, sc.warmup)
        self._part_of = {RaftGroup: "raft", NodeSide: "workers", LeaderScheduler: "scheduler", MeshClients: "mesh",
                         type(self): "faults"}
        """The part of the simulation each component's timed calls count toward (``part_seconds``)."""
        self.at(sc.warmup, self._fault_window)  # before the faults due at the same time
        for fault in sc.faults:
            self.at(sc.warmup + fault.at, self._fault, fault)
        self.at(SAMPLE_EVERY, self._sample)

    def _adopt(self, core: Swim) -> None:
        core.track_records = True
        core.emit_into(self._outbox, self._events, self._learned)

    # ------------------------------------------------------------ what the parts call

    @property
    def now(self) -> float:
        """The time of the event being handled (the queue's own clock lags inside a bucket)."""
        return self._now

    def at(self, when: float, fn, *args) -> None:
        self.heap.push(when, CALL, -1, (fn, args))

    def crashed(self, i: int) -> bool:
        return i in self.down

    def group_member_up(self, i: int) -> bool:
        m = self.group.by_index.get(i)
        return m is not None and m.up and not m.removed

    def live_members_seen_by(self, i: int) -> list[str]:
        core = self.cores[i]
        out = []
        for m in self.group.members.values():
            view = core.member(m.id)
            if not m.removed and view is not None and view.status in LIVE:
                out.append(m.id)
        return out

    def view_of(self, i: int) -> list[tuple[str, str, str, float]]:
        """(node, status, zone, status since) of every member node ``i`` knows (autopilot's input)."""
        return [(m.node, m.status, dict(m.meta.labels).get("zone", ""), m.status_since)
                for m in self.cores[i].members()]

    def leader_changed(self, i: int) -> None:
        self.leader_index = i
        self.leader_changes += 1
        self.view_changes += 1
        self.status_changes += 1

    def publish_raft(self, i: int, facts: RaftFacts) -> None:
        """A member's record now announces ``applied`` (its own agent follows its state as it applies)."""
        self._set_section(i, facts)
        core = self.cores[i]
        own = core.member(core.id)
        if own is not None:
            self.applied_of[(core.id, own.record_version)] = facts.applied

    def publish_tasks(self, i: int, digest: TaskDigest) -> None:
        current = self.sections.get(i, {}).get(TaskDigest.SECTION)
        if not isinstance(current, TaskDigest) or current.version != digest.version:
            self._set_section(i, digest)

    def _set_section(self, i: int, section: RaftFacts | TaskDigest) -> None:
        if i in self.down:
            return
        sections = self.sections.setdefault(i, dict(STATIC_SECTIONS))
        sections[section.SECTION] = section
        self.cores[i].set_record(self.now, encode_record(sections.values()))
        self._after(i, self.now)

    def is_running(self, task: str, node: int) -> bool:
        return task in self.side.running.get(node, ())

    def tasks_changed(self, i: int, before: set[str], after: set[str]) -> None:
        """Ground truth: node ``i``'s running tasks went from ``before`` to ``after``."""
        now, want = self.now, self.sc.replicas
        services = self.side.task_service
        for task in before - after:
            name = services[task]
            self.running_count[name] -= 1
            if self.running_count[name] < want and name not in self.short_since:
                self.short_since[name] = now
        for task in after - before:
            name = services[task]
            self.running_count[name] += 1
            self.hosts.setdefault(name, set()).add(i)
            if self.running_count[name] >= want and self.short_since.pop(name, None) is not None \
                    and self.fault_at is not None:
                self.restored.setdefault(name, now)

    # ------------------------------------------------------------ faults

    def _fault_window(self) -> None:
        self.fault_at = self.now
        self.not_ready_at_fault = sum(1 for n in self.service_names if self.running_count[n] < self.sc.replicas)
        self.short_since = {n: self.now for n in self.service_names if self.running_count[n] < self.sc.replicas}
        self.mesh.sent = self.mesh.failed = self.mesh.no_backend = 0

    def _fault(self, f: Fault) -> None:
        nodes = self.sc.nodes
        live = [i for i in range(nodes) if i not in self.down]
        if f.do == "zone-down":
            for i in range(f.zone, nodes, self.sc.zones):
                self._crash(i)
        elif f.do == "zone-up":
            for i in range(f.zone, nodes, self.sc.zones):
                self._restart(i)
        elif f.do in ("kill", "restart"):
            count = f.count or max(1, round(f.fraction * nodes))
            for i in sorted(self.rng.sample(live, min(count, len(live)))):
                self._crash(i)
                if f.do == "restart":
                    self.at(self.now + f.down, self._restart, i)
        elif f.do == "kill-leader":
            leader = self.group.leader()
            if leader is not None:
                self._crash(leader.index)
        elif f.do == "partition":
            cut = [i for i in range(nodes) if self.zone_of[i] in f.zones]
            self.net.partition([cut, [i for i in range(nodes) if self.zone_of[i] not in f.zones]])
        elif f.do == "heal":
            self.net.heal()
            self.net.model.loss = self.sc.loss
        elif f.do == "loss":
            self.net.model.loss = f.percent / 100.0

    def _crash(self, i: int) -> None:
        if i in self.down:
            return
        self.down[i] = self.now
        self.crashes += 1
        self.pending_detect[i] = self.now
        self.wake_at[i] = math.inf
        self.side.crash(i)
        self.group.crash(i)
        self.sections.pop(i, None)

    def _restart(self, i: int) -> None:
        if i not in self.down:
            return
        del self.down[i]
        if self.pending_detect.pop(i, None) is not None:
            self.undetected += 1
        old = self.cores[i]
        self.retired_news += old.news_queued()
        core = Swim(old.id, old.addr, old._meta, self.config, random.Random(self.rng.random()), self.now,
                    incarnation=old.incarnation + 1)
        core.bootstrap(self.now, {})
        self._adopt(core)
        seeds = [f"sim{j}:7946" for j in range(self.sc.nodes) if j not in self.down and j != i][:3]
        core.join(self.now, seeds)
        self.cores[i] = core
        self.group.restart(i)
        self._after(i, self.now)

    # ------------------------------------------------------------ the loop

    def run(self) -> dict:
        started, cpu = time.perf_counter(), time.process_time()
        gc.disable()
        gc.freeze()
        try:
            self._loop()
            self._now = self.sc.end
        finally:
            gc.enable()
            gc.unfreeze()
        return report(self, time.perf_counter() - started, time.process_time() - cpu)

    def _loop(self) -> None:
        cores, down, wake_at = self.cores, self.down, self.wake_at
        pack = struct.Struct("<dBi").pack
        update = self.digest.update
        push = self.heap.push
        inf = math.inf
        outbox, events, learned = self._outbox, self._events, self._learned
        clock, part_of, spent = time.perf_counter, self._part_of, self.part_seconds
        swim = 0.0
        for at, _serial, kind, i, payload in self.heap.events_until(self.sc.end):
            self._now = at
            if kind == CALL:
                update(pack(at, kind, i))
                fn = payload[0]
                started = clock()
                fn(*payload[1])
                part = part_of.get(type(getattr(fn, "__self__", None)), "other")
                spent[part] = spent.get(part, 0.0) + clock() - started
                continue
            if i in down:
                continue
            update(pack(at, kind, i))
            core = cores[i]
            started = clock()
            if kind == DELIVER:
                core.receive(at, payload)
            else:
                if payload != wake_at[i]:
                    continue  # superseded: the deadline moved
                wake_at[i] = inf
                core.tick(at)
            swim += clock() - started
            if outbox:
                self._transmit(i, outbox, at)
                outbox.clear()
            if events:
                self._observe(i, events)
                events.clear()
            if learned:
                self._learn(i, learned)
                learned.clear()
            due = core.next_deadline()
            if due != wake_at[i] and due != inf:
                wake_at[i] = due
                push(due if due > at else at, WAKE, i, due)
        spent["swim"] = spent.get("swim", 0.0) + swim

    def _after(self, i: int, now: float) -> None:
        """Send and note what core ``i`` emitted outside its own events, and keep its wake-up."""
        if self._outbox:
            self._transmit(i, self._outbox, now)
            self._outbox.clear()
        if self._events:
            self._observe(i, self._events)
            self._events.clear()
        if self._learned:
            self._learn(i, self._learned)
            self._learned.clear()
        self._reschedule(i, now)

    def _reschedule(self, i: int, now: float) -> None:
        due = self.cores[i].next_deadline()
        if due != self.wake_at[i] and due != math.inf:
            self.wake_at[i] = due
            self.heap.push(max(due, now), WAKE, i, due)

    def _transmit(self, src: int, out: list, now: float) -> None:
        transmit(self, src, out, now)

    def _observe(self, observer: int, events: list) -> None:
        if observer != self.leader_index:
            return
        self.view_changes += 1
        self.status_changes += 1
        for ev in events:
            if ev.new == DEAD:
                subject = self.index_of.get(ev.node)
                crashed = self.pending_detect.pop(subject, None) if subject is not None else None
                if crashed is not None:
                    self.detections.append(ev.at - crashed)
                    self.detected_at.append((ev.at, crashed))

    def _learn(self, observer: int, learned: list) -> None:
        if observer == self.leader_index:
            self.view_changes += 1
        applied_of = self.applied_of
        for key in learned:
            applied = applied_of.get(key)
            if applied is not None:
                self.side.prompted(observer, applied)

    def _sample(self) -> None:
        self.at(self.now + SAMPLE_EVERY, self._sample)
        counts = self.running_count
        self.samples.append((self.now, array("H", (min(counts[n], 65535) for n in self.service_names))))
        if self.progress is not None and time.perf_counter() - self._reported_at >= PROGRESS_EVERY:
            self._reported_at = time.perf_counter()
            self.progress(self._progress_line())

    def _progress_line(self) -> str:
        """Where the run is, for a person waiting on it (wall clock and memory stay out of the digest)."""
        sc = self.sc
        phase = "warm-up" if self.fault_at is None else f"{len(self.down)} down, {len(self.short_since)} services short"
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return (f"simulated {self.now:.1f} of {sc.end:g} s ({phase}), {self.msgs:,} messages, "
                f"peak memory {rss_mib:,.0f} MiB")


def run_cluster_sim(sc: ClusterScenario) -> dict:
    return ClusterSimulation(sc).run()
