"""Client requests through the routing mesh in the cluster simulation.

Clients are spread over the live nodes: each request lands on a random live node and asks for a
random service.  That node's backends are what its own SWIM view says, as the mesh's table builder
(:mod:`p2pswarm.mesh.table`) reads it: tasks whose gossiped digest record is running (and healthy)
with a published port, on members it sees alive.  The real route choice
(:func:`p2pswarm.mesh.routes.candidates`) picks the replica; the request fails when there is none or
the replica is not actually running (its node is down, or the task ended): what a client would see
until gossip catches up.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from p2pswarm.membership.messages import ALIVE
from p2pswarm.mesh.routes import Backend, candidates
from p2pswarm.node.record import decode_record

if TYPE_CHECKING:
    from p2pswarm.sim.cluster_sim import ClusterSimulation

TICK = 0.1
"""Seconds between two batches of requests."""
MAX_DECODED = 100_000


class MeshClients:
    def __init__(self, world: ClusterSimulation, rate: float, start: float) -> None:
        self.world, self.rate = world, rate
        self.rng = random.Random(world.rng.random())
        self.sent = 0
        self.failed = 0
        self.no_backend = 0
        self._owed = 0.0
        self._decoded: dict[bytes, dict] = {}
        if rate > 0:
            world.at(start, self._tick)

    def _tick(self) -> None:
        world = self.world
        world.at(world.now + TICK, self._tick)
        self._owed += self.rate * TICK
        while self._owed >= 1.0:
            self._owed -= 1.0
            self._request()

    def _tasks(self, payload: bytes) -> dict:
        tasks = self._decoded.get(payload)
        if tasks is None:
            if len(self._decoded) > MAX_DECODED:
                self._decoded.clear()
            try:
                digest = decode_record(payload).tasks
            except ValueError:
                digest = None
            tasks = self._decoded[payload] = digest.tasks if digest is not None else {}
        return tasks

    def _request(self) -> None:
        world, rng = self.world, self.rng
        client = rng.randrange(world.sc.nodes)
        if world.crashed(client):
            return  # clients run on live nodes only
        service = world.service_names[rng.randrange(len(world.service_names))]
        core = world.cores[client]
        me = world.ids[client]
        backends = []
        for host in sorted(world.hosts.get(service, ())):
            node_id = world.ids[host]
            member = core.member(node_id)
            if member is None or member.status != ALIVE or not member.record:
                continue
            for task, rec in self._tasks(member.record).items():
                if rec.get("n") == service and rec.get("s") == "running" and rec.get("m") \
                        and rec.get("h") in (None, "healthy"):
                    backends.append(Backend(task, node_id, (node_id, rec["m"][0][1]), node_id == me, member.rtt))
        self.sent += 1
        chosen = candidates(backends, {}, rng, limit=1)
        if not chosen:
            self.no_backend += 1
            self.failed += 1
        elif not world.is_running(chosen[0].task, world.index_of[chosen[0].node]):
            self.failed += 1
