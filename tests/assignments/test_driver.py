"""The assignment protocol between in-process nodes: members answer, workers follow their own assignments.

Fakes stand in for SWIM (members and their gossiped records), the Raft host and the transport; the
messages go through the real wire encoding, so what a worker applies is what it would receive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from p2pswarm import wire
from p2pswarm.assignments.config import AssignmentsConfig
from p2pswarm.assignments.driver import AssignmentsDriver
from p2pswarm.assignments.messages import AssignmentsReply, AssignmentsRequest
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.consensus.autopilot import Peer
from p2pswarm.consensus.config import AutopilotConfig
from p2pswarm.node.record import GossipRecord, RaftFacts, encode_record
from p2pswarm.security.access import AccessRecord
from p2pswarm.security.record import SecurityRecord

from ..cluster.test_state import Log
from ..consensus.test_autopilot_workers import converge

CLUSTER = "c1"


@dataclass
class Net:
    """Every node's inbox; ``cut`` drops whatever goes to or from those nodes (a partition)."""

    inbox: dict[str, list[bytes]] = field(default_factory=dict)
    cut: set[str] = field(default_factory=set)
    sent: int = 0


class Transport:
    def __init__(self, net: Net, me: str) -> None:
        self.net, self.me = net, me

    def send(self, addr: str, data: bytes, bulk: bool = False) -> bool:
        self.net.sent += 1
        if addr not in self.net.cut and self.me not in self.net.cut:
            self.net.inbox.setdefault(addr, []).append(data)
        return True


class Swim:
    """What a node's SWIM knows: every node alive, with the raft section each gossips."""

    def __init__(self, world: "World") -> None:
        self.world = world

    def members(self) -> list:
        return [self.member(n) for n in self.world.nodes]

    def member(self, node: str):
        if node not in self.world.nodes:
            return None
        facts = self.world.facts(node)
        return SimpleNamespace(node=node, addr=node, status="alive",
                               record=encode_record([facts]) if facts else b"")


class FakeRaftDriver(SimpleNamespace):
    @property
    def applied(self) -> int:
        """The Raft applied index: here every entry is the cluster state's."""
        return self.cluster.applied


class World:
    """Raft members ``members`` sharing one applied cluster state (``log``), and workers."""

    def __init__(self, members: list[str], workers: list[str], config: AssignmentsConfig = AssignmentsConfig()):
        self.log, self.net, self.now = Log(), Net(), 100.0
        self.security = SecurityRecord()
        """The members' applied security record (empty until a test initialises it)."""
        self.access = AccessRecord()
        """The members' applied access record (remote API clients; empty until a test adds to it)."""
        self.members, self.nodes = list(members), list(members) + list(workers)
        self.swim = Swim(self)
        self.drivers = {n: self._driver(n, config) for n in self.nodes}

    def _driver(self, node: str, config: AssignmentsConfig) -> AssignmentsDriver:
        member = node in self.members
        raft = SimpleNamespace(driver=FakeRaftDriver(
            cluster=self.log.state if member else Log().state, security=self.security if member else SecurityRecord(),
            cluster_id=CLUSTER, role_of=lambda n: "voter" if n in self.members else "-",
            sm=SimpleNamespace(access=self.access if member else AccessRecord())))
        return AssignmentsDriver(node, raft, self.swim, GossipRecord(), Transport(self.net, node), config,
                                 clock=lambda: self.now)

    def facts(self, node: str) -> RaftFacts | None:
        return RaftFacts(CLUSTER, "voter", 1, self.log.state.applied) if node in self.members else None

    def run(self, turns: int = 20) -> None:
        for _ in range(turns):
            self.now += 0.05
            for node, driver in self.drivers.items():
                driver.step(self.now)
                for data in self.net.inbox.pop(node, []):
                    driver.receive(wire.decode(data))

    def tasks(self, worker: str) -> dict[str, str]:
        state, _ = self.drivers[worker].agent_state()
        return {t.id: t.state for t in state.tasks_on(worker)}

    def truth(self, worker: str) -> dict[str, str]:
        return {t.id: t.state for t in self.log.state.tasks_on(worker)}


def global_service(world: World, name: str = "agent") -> None:
    log = world.log
    assert log(cmd.create_service(log.cid(), 1.0, ServiceSpec(name, "srv", mode="global"))).ok
    for node in world.nodes:
        assert log(cmd.update_node(log.cid(), 0.0, node, name=node)).ok
        log.place(name, 0, node)


def test_the_70th_80th_and_100th_nodes_get_their_tasks_and_the_load_is_spread():
    # the configuration autopilot keeps for 100 nodes with at most one learner: 5 voters + 1 learner
    peers = [Peer(f"n{i:03d}", "alive", "abc"[i % 3], started_ms=i) for i in range(1, 101)]
    voters, learners = converge(peers, ["n001"], [], AutopilotConfig(stabilization_time=0.0, max_learners=1))
    members = voters + learners
    workers = [p.id for p in peers if p.id not in members]
    assert len(members) == 6 and len(workers) == 94 and {"n070", "n080", "n100"} <= set(workers)
    world = World(members, workers)
    global_service(world)
    world.run()
    for w in workers:
        assert world.tasks(w) == world.truth(w) and len(world.tasks(w)) == 1, w
    served = {m: world.drivers[m].counters["full_resyncs_served"] for m in members}
    assert sum(served.values()) == len(workers) and min(served.values()) >= 8  # each member serves a share
    # members read their own replica; workers their WorkerState
    assert world.drivers[members[0]].agent_state()[0] is world.log.state
    assert world.drivers["n100"].agent_state()[0] is world.drivers["n100"].state


def test_a_partitioned_worker_misses_changes_and_catches_up_by_version_on_heal():
    world = World(["m1", "m2", "m3"], ["w1", "w2"])
    global_service(world)
    world.run()
    (task,) = world.truth("w1")
    world.net.cut.add("w1")
    log = world.log
    assert log(cmd.report_task_status(log.cid(), 2.0, task, "running", node="w1")).ok
    log.place("agent", 0, None)  # unrelated changes move the version on meanwhile
    world.run()
    assert world.tasks("w1") == {task: "assigned"}  # missed (it keeps what it had)
    before = world.drivers["w1"].state.version
    world.net.cut.clear()
    world.run(turns=80)  # the request lost in the partition times out, then the worker asks again
    assert world.tasks("w1") == {task: "running"}
    assert world.drivers["w1"].state.version == log.state.applied > before
    assert world.drivers["w1"].state.resyncs == 1  # by version: a delta, not a second full resync
    assert world.drivers["w1"].counters["requests_timed_out"] >= 1


def test_without_quorum_members_still_serve_their_last_applied_state():
    world = World(["m1", "m2", "m3"], ["w1"])
    global_service(world)
    world.run()
    # two members die: no quorum, nothing commits; the last one still answers a worker that starts now
    world.nodes = ["m1", "w1", "w9"]
    world.members = ["m1"]
    world.drivers["w9"] = world._driver("w9", AssignmentsConfig())
    world.run()
    assert world.tasks("w1") == world.truth("w1") != {}
    assert world.drivers["w9"].counters["full_resyncs"] == 1 and world.tasks("w9") == {}


def test_an_overloaded_member_sheds_workers_to_others_and_serves_a_bounded_number_per_turn():
    config = AssignmentsConfig(serve_per_turn=2, max_queued=4)
    world = World(["m1", "m2"], [f"w{i}" for i in range(40)], config)
    global_service(world)
    world.run(turns=2)  # every worker asks once; a member keeps 4 waiting and sheds the rest at once
    counters = [world.drivers[m].counters for m in ("m1", "m2")]
    assert sum(c["requests_shed"] for c in counters) == 40 - 2 * 4
    world.run(turns=1)
    assert all(c["full_resyncs_served"] == 2 for c in counters)  # per loop turn, whatever waits
    world.run(turns=200)
    assert all(world.tasks(w) == world.truth(w) for w in world.nodes if w.startswith("w"))
    assert sum(world.drivers[w].counters["redirected"] for w in world.nodes) > 0


def test_malformed_and_unexpected_replies_are_counted_and_dropped():
    world = World(["m1"], ["w1"])
    global_service(world)
    world.run(turns=1)
    worker = world.drivers["w1"]
    request = worker._outstanding
    assert request is not None
    worker.receive(AssignmentsReply(request[0], "m1", 99, 0, True, body=b"\x91\xc1"))
    assert worker.counters["malformed_replies"] == 1 and worker.state.version == 0
    worker.receive(AssignmentsReply(12345, "m1", 99, 0, True))
    assert worker.counters["unexpected_replies"] == 1
    world.drivers["m1"].receive(AssignmentsRequest(1, "stranger", 0))  # not a member of this cluster's SWIM
    assert world.drivers["m1"].counters["requests_refused"] == 1
    world.run()
    assert world.tasks("w1") == world.truth("w1")


def test_serving_a_hundred_resyncs_stays_within_the_turn_budget():
    """What the Raft leader's loop gives to workers per turn is bounded: Raft keeps its pace."""
    world = World(["m1"], [f"w{i:03d}" for i in range(100)])
    global_service(world)
    leader = world.drivers["m1"]
    for w in world.nodes[1:]:
        world.drivers[w].step(world.now)  # 100 requests arrive at once
    for data in world.net.inbox.pop("m1"):
        leader.receive(wire.decode(data))
    served = []  # requests answered per turn (counted, not timed: a timed assertion only measures the machine)
    while leader._queue:
        waiting = len(leader._queue)
        leader.step(world.now)
        served.append(waiting - len(leader._queue))
    per_turn = AssignmentsConfig().serve_per_turn
    assert len(served) >= 100 / per_turn
    assert max(served) <= per_turn and sum(served) == 100  # a few deltas per turn, never the whole backlog
