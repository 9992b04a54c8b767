"""The leader's reconciler, incremental: each round plans only the services whose inputs changed.

A full pass (:func:`~p2pswarm.scheduler.reconcile.reconcile`) looks at every task of every
service; with 100,000 tasks that is seconds of the leader's CPU per round, most of it spent
finding that nothing changed.  A :class:`Reconciler` remembers what its last round saw and
plans, next round, only the services

* left *unsettled* last round: a command was proposed for them (it may not have been applied),
  tasks are unplaced, a restart or update delay is running, an update is in progress;
* whose record changed (spec, scale, update state) or any of whose tasks changed
  (``ClusterState.tasks_changed``): a task started, ended, was placed or stopped;
* with a live task on a node whose membership status or cluster record changed (it died, left,
  became suspect, was drained or relabelled);
* and, when a node became able to take more (it joined, came back, or its record changed),
  every global service (it may need a task there) and every service that rebalances.

Every other service is *settled*: a full pass would do nothing for it.  What its tasks hold
on each node (tasks, cpu and memory, host ports) is kept from the round that settled it and
reserved, so the services planned are placed exactly as a full pass would place them.  Pure
(no I/O, ``now`` passed in); the first round, a round in a new term and one every
``ReconcileConfig.full_every`` seconds are full passes: the safety net for whatever change
tracking misses (another service's new tasks shifting where a rebalancing one would spread).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Mapping

from p2pswarm.cluster.model import Node, Service
from p2pswarm.cluster.state import ClusterState
from p2pswarm.scheduler.placement import NodeInfo, VerdictMemo
from p2pswarm.scheduler.reconcile import Held, ReconcileConfig, Reconciliation, Round, ServiceRound


@dataclass(frozen=True, slots=True)
class _Seen:
    """What the last round saw (the basis the next one compares with)."""
    term: int
    applied: int
    members: dict[str, str]
    nodes: dict[str, Node]
    services: dict[str, Service]
    footprints: dict[str, Counter[str]]
    """Settled service -> its live tasks per node (unchanged while the service stays settled); the
    unsettled ones are not here."""
    full_at: float
    infos: dict[str, tuple[Node, str | None, NodeInfo]]
    """The up nodes as placement saw them (:attr:`Round.infos`)."""
    readings: dict[str, ServiceRound]
    """Settled service -> what the round that settled it read of its tasks (:attr:`Round.settled_readings`)."""


class Reconciler:
    """The leader's reconciler: one per leadership (a new one, or a new term, starts with a full pass)."""

    def __init__(self, config: ReconcileConfig = ReconcileConfig()) -> None:
        self.config = config
        self._seen: _Seen | None = None
        self._verdicts: VerdictMemo = {}
        """Which nodes each kind of service may use, kept while their records stay the same objects."""
        self.rounds = 0
        self.full_rounds = 0

    def reconcile(self, state: ClusterState, members: Mapping[str, str], now: float, term: int) -> Reconciliation:
        """What to propose now (see :func:`~p2pswarm.scheduler.reconcile.reconcile`), planning what changed."""
        seen = self._seen
        full = seen is None or seen.term != term or state.applied < seen.applied \
            or not seen.full_at <= now < seen.full_at + self.config.full_every
        if full or seen is None:
            round_ = Round(state, members, now, term, self.config, infos=seen.infos if seen else None,
                           verdicts=self._verdicts)
            footprints: dict[str, Counter[str]] = {}
            readings: dict[str, ServiceRound] = {}
            full_at = now
        else:
            dirty = self._dirty(state, members, seen)
            footprints = {name: seen.footprints[name] for name in state.services if name not in dirty}
            readings = {name: seen.readings[name] for name in footprints}
            planned = [svc for name, svc in state.services.items() if name in dirty]
            # a service planned only because a node changed under it reads its tasks as it did
            unchanged = {name: seen.readings[name] for name in dirty if name in seen.readings
                         and state.services[name] is seen.services.get(name)
                         and state.tasks_changed.get(name, -1) <= seen.applied}
            round_ = Round(state, members, now, term, self.config, planned, _held(state, footprints), seen.infos,
                           unchanged, self._verdicts)
            full_at = seen.full_at
        result = round_.run()
        footprints.update(round_.settled)
        readings.update(round_.settled_readings)
        self._seen = _Seen(term, state.applied, dict(members), dict(state.nodes), dict(state.services), footprints,
                           full_at, round_.infos, readings)
        self.rounds += 1
        self.full_rounds += full
        return result

    @staticmethod
    def _dirty(state: ClusterState, members: Mapping[str, str], seen: _Seen) -> set[str]:
        """The services to plan this round (see the module docstring)."""
        dirty = {name for name in state.services if name not in seen.footprints}  # unsettled, or new
        for name, svc in state.services.items():
            old = seen.services.get(name)
            if old is not svc and old != svc:
                dirty.add(name)
        dirty.update(name for name, index in state.tasks_changed.items() if index > seen.applied)
        grew = False
        for node in _changed_nodes(state, members, seen):
            dirty.update(task.service for task in state.tasks_on(node, ordered=False) if task.live)
            grew = grew or (members.get(node) == "alive" and node in state.nodes)
        if grew:
            dirty.update(name for name, svc in state.services.items()
                         if svc.spec.mode == "global" or svc.spec.rebalance)
        return {name for name in dirty if name in state.services}


def _changed_nodes(state: ClusterState, members: Mapping[str, str], seen: _Seen) -> set[str]:
    """Nodes whose membership status or cluster record differs from what the last round saw."""
    changed = {node for node, _ in members.items() ^ seen.members.items()}  # changed, joined or gone (C-level)
    for node, record in state.nodes.items():
        old = seen.nodes.get(node)
        if old is not record and old != record:
            changed.add(node)
    changed.update(node for node in seen.nodes if node not in state.nodes)
    return changed


def _held(state: ClusterState, footprints: Mapping[str, Counter[str]]) -> Held:
    """What the settled services hold per node, as a full pass would count it (their current spec's needs)."""
    tasks: Counter[str] = Counter()
    reserved: dict[str, tuple[float, int]] = {}
    ports: dict[str, list[tuple[int, str]]] = {}
    for name, per_node in footprints.items():
        tasks.update(chain.from_iterable(map(repeat, per_node.keys(), per_node.values())))  # (C: a mapping is a loop)
        spec = state.services[name].spec
        if spec.reserve_cpu or spec.reserve_memory:
            for node, n in per_node.items():
                cpu, memory = reserved.get(node, (0.0, 0))
                reserved[node] = (cpu + spec.reserve_cpu * n, memory + spec.reserve_memory * n)
        if spec.host_ports:
            for node, n in per_node.items():
                ports.setdefault(node, []).extend(spec.host_ports * n)
    return Held(tasks, reserved, ports)
