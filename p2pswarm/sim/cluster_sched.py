"""The leader's scheduler in the cluster simulation, at its real cadence.

Every ``SchedulerConfig.interval`` the node that leads Raft does what
:class:`~p2pswarm.scheduler.driver.SchedulerDriver` does in a round, with the same code: register the
members its SWIM view shows and observe their task digests (the driver's own ``observations``), or else
run the incremental :class:`~p2pswarm.scheduler.incremental.Reconciler` and propose its commands (orphan
reports first).  As the real driver awaits its proposals, a round waits
until the leader has applied all it proposed (or lost leadership) before the next begins.  One shortcut: reconcile is a
function of the applied state, the members' statuses and the time, so a round whose state and
statuses are those of the last plan (only task digests moved, and they changed nothing) plans
nothing new and is skipped, until a wake-up or ``resync`` is due.  The services are created by
an operator at start (deterministic command ids, so a new leader proposes only what is missing).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import PortSpec, ServiceSpec
from p2pswarm.scheduler.config import SchedulerConfig
from p2pswarm.scheduler.driver import SchedulerDriver
from p2pswarm.scheduler.incremental import Reconciler

if TYPE_CHECKING:
    from p2pswarm.sim.cluster_sim import ClusterSimulation

EPOCH = 1_700_000_000.0
"""The wall clock of simulated time 0 (commands carry wall-clock stamps)."""
ROUND_TIMEOUT = 5.0
"""Seconds a round waits for its proposals before planning again."""
FIRST_PORT = 10_000


def service_spec(k: int, replicas: int) -> ServiceSpec:
    """Service ``k``: ``replicas`` tasks spread over zones, one published port of its own."""
    return ServiceSpec(name=f"svc{k:05d}", command="serve", replicas=replicas,
                       ports=(PortSpec(published=FIRST_PORT + k),), spread="node.labels.zone")


class LeaderScheduler:
    def __init__(self, world: ClusterSimulation, config: SchedulerConfig) -> None:
        self.world, self.cfg = world, config
        self.driver = SchedulerDriver(None, None, config)
        self.specs = [service_spec(k, world.sc.replicas) for k in range(world.sc.services)]
        self.rounds = 0
        self.plan_seconds = 0.0
        self.reconciler = Reconciler()
        """The leader's incremental reconciler (a new term, so a new leader, makes it plan in full)."""
        """Wall-clock seconds spent in reconcile (the scheduler's own cost)."""
        self._seen: tuple | None = None
        self._planned: tuple | None = None
        """(applied, term, statuses seen) of the last reconcile: the same input plans the same again."""
        self._next_round = 0.0
        self._next_plan = 0.0
        self._waiting: tuple[int, int, float] | None = None
        """(last index proposed, term, give up at) of the round in flight."""
        world.at(config.interval, self._check)

    def _check(self) -> None:
        world = self.world
        now = world.now
        world.at(now + self.cfg.interval, self._check)
        m = world.group.leader()
        if m is None or m.raft is None:
            self._seen, self._waiting = None, None
            return
        state, term = m.state, m.raft.term
        if self._waiting is not None:
            index, proposed_term, give_up = self._waiting
            if state.applied < index and term == proposed_term and now < give_up:
                return
            self._waiting = None
        seen = (state.applied, term, world.view_changes)
        if seen == self._seen and now < self._next_round:
            return
        self._seen, self._next_round = seen, now + self.cfg.resync
        wall = EPOCH + now
        missing = [s for s in self.specs if s.name not in state.services]
        if missing:
            self._propose([cmd.create_service(f"op.create.{s.name}", wall, s) for s in missing], term)
            return
        members = world.cores[m.index].members()
        observed = self.driver.observations(state, members, wall)
        if observed:
            self._propose(observed, term)
            return
        planned = (state.applied, term, world.status_changes)
        if planned == self._planned and now < self._next_plan:
            return  # digests moved but neither the state nor a status did: the plan would be the last one
        self._planned, self._next_plan = planned, now + self.cfg.resync
        started = time.perf_counter()
        plan = self.reconciler.reconcile(state, {mb.node: mb.status for mb in members}, wall, term)
        self.plan_seconds += time.perf_counter() - started
        self.rounds += 1
        orphans = [c for c, about in zip(plan.commands, plan.about) if about == ""]
        others = [c for c, about in zip(plan.commands, plan.about) if about != ""]
        self._propose(orphans + others, term)
        if plan.wake_at is not None:
            self._next_round = min(self._next_round, now + max(0.0, plan.wake_at - wall))
            self._next_plan = min(self._next_plan, self._next_round)

    def _propose(self, commands: list[dict], term: int) -> None:
        last = None
        for command in commands:
            ticket = self.world.group.propose(command)
            if ticket is None:
                break
            last = ticket[0]
        if last is not None:
            self._waiting = (last, term, self.world.now + ROUND_TIMEOUT)
