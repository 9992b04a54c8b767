"""The nodes' side of the cluster simulation: agents running tasks, and workers learning assignments.

Each node that has tasks runs the real :class:`~p2pswarm.agent.core.AgentCore` (created on first
assignment: nodes without tasks cost nothing).  As the real agent polls its source of assignments every
``FOLLOW_INTERVAL``, it reads a change that many seconds later at most (uniform); a start takes
``START_SECONDS`` (uniform), a stop ``STOP_SECONDS``; the agent's digest goes into the node's SWIM record
(the real ``tasks`` section encoding), whence the leader's scheduler and every node's mesh learn it.

Raft members read their assignments from their own applied state; every other node is a worker that
runs the real assignment protocol core (:mod:`p2pswarm.assignments.core`): gossip of a member's
applied index prompts it (at its next look, every ``CHECK_INTERVAL``), :func:`choose_server` picks the
member, :func:`delta_since` answers and :class:`WorkerState` applies, over the simulated network; the
request and reply bytes are the real wire encoding's.  A request without a reply within ``REQUEST_TIMEOUT`` is
given up; after a reply or a timeout the worker asks again if gossip told it of a newer version meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pswarm.agent.core import AgentCore, Forget, Start, Stop
from p2pswarm.agent.host import FOLLOW_INTERVAL, assignments
from p2pswarm.assignments.config import AssignmentsConfig
from p2pswarm.assignments.core import WorkerState, choose_server, delta_since
from p2pswarm.assignments.messages import AssignmentsRequest, reply_of
from p2pswarm.node.record import TaskDigest
from p2pswarm.wire import encode

if TYPE_CHECKING:
    from p2pswarm.sim.cluster_sim import ClusterSimulation

START_SECONDS = (0.005, 0.010)
"""A task's start takes this long (uniform): the process runtime's ``start()`` (exec'd in its cgroup as the task
user; simulations/bench_runtime.py measured a p50 of 7.5 ms), not an image pull."""
STOP_SECONDS = 0.05
REQUEST_TIMEOUT = AssignmentsConfig().request_timeout
CHECK_INTERVAL = AssignmentsConfig().check_interval


class NodeSide:
    """Agents and worker states of every node, keyed by node index."""

    def __init__(self, world: ClusterSimulation) -> None:
        self.world = world
        self.agents: dict[int, AgentCore] = {}
        self.workers: dict[int, WorkerState] = {}
        self.seen: dict[int, tuple] = {}
        """Per node, what its agent was last assigned (to skip unchanged re-assignments)."""
        self.asking: dict[int, float] = {}
        """Workers with a request in flight, and when they give it up."""
        self.heard: dict[int, int] = {}
        """Per worker, the highest applied index gossip told it of (it asks again while behind that)."""
        self.life: dict[int, int] = {}
        """Per node, a counter bumped by each crash: callbacks of an earlier life are dropped."""
        self.running: dict[int, set[str]] = {}
        """Per node, its tasks that are running (ground truth, from its agent)."""
        self.task_service: dict[str, str] = {}
        self.worker_bytes = 0
        self.requests = 0
        self.resyncs = 0
        self.served: dict[int, int] = {}
        """Requests each member answered."""
        self.checking: set[tuple[int, int]] = set()
        """(node, life) of the workers with a look at the gossiped applied index due."""
        self.following: set[tuple[int, int]] = set()
        """(node, life) of the agents with a poll of their changed assignments due."""

    # ------------------------------------------------------------ lifecycle

    def crash(self, i: int) -> None:
        self.life[i] = self.life.get(i, 0) + 1
        self.agents.pop(i, None)
        self.workers.pop(i, None)
        self.seen.pop(i, None)
        self.asking.pop(i, None)
        self.heard.pop(i, None)
        self.world.tasks_changed(i, self.running.pop(i, set()), set())

    # ------------------------------------------------------------ workers

    def prompted(self, i: int, applied: int) -> None:
        """Node ``i`` learned (by gossip) that a member has applied ``applied``: ask if behind."""
        world = self.world
        if world.group_member_up(i):
            return
        worker = self.workers.get(i)
        if worker is None:
            worker = self.workers[i] = WorkerState(world.ids[i])
        if applied > self.heard.get(i, 0):
            self.heard[i] = applied
        if worker.version >= applied or self.asking.get(i, -1.0) > world.now:
            return
        due = (i, self.life.get(i, 0))
        if due not in self.checking:  # the real worker looks at the gossiped index every CHECK_INTERVAL
            self.checking.add(due)
            world.at(world.now + world.rng.uniform(0.0, CHECK_INTERVAL), self._ask, *due)

    def _ask(self, i: int, life: int) -> None:
        self.checking.discard((i, life))
        world = self.world
        worker = self.workers.get(i)
        if self.life.get(i, 0) != life or worker is None or world.crashed(i) or world.group_member_up(i) \
                or worker.version >= self.heard.get(i, 0) or self.asking.get(i, -1.0) > world.now:
            return
        servers = world.live_members_seen_by(i)
        server = choose_server(world.ids[i], servers)
        if server is None:
            return
        self.asking[i] = world.now + REQUEST_TIMEOUT
        world.at(world.now + REQUEST_TIMEOUT, self._again, i, self.life.get(i, 0))
        request = AssignmentsRequest(self.requests, world.ids[i], worker.version)
        self.requests += 1
        self.worker_bytes += len(encode(request))
        dst = world.index_of[server]
        for delay in world.net.delays(i, dst):
            world.at(world.now + delay, self._serve, dst, i, self.life.get(i, 0), request)

    def _serve(self, server: int, worker: int, life: int, request: AssignmentsRequest) -> None:
        world = self.world
        member = world.group.by_index.get(server)
        if member is None or not member.up or world.crashed(server):
            return
        delta = delta_since(member.state, request.source, request.since)
        reply = reply_of(request.request, member.id, delta)
        size = len(encode(reply))
        self.worker_bytes += size
        self.served[server] = self.served.get(server, 0) + 1
        if world.group.current is member:
            world.group.leader_bytes += size
        for delay in world.net.delays(server, worker):
            world.at(world.now + delay, self._answered, worker, life, delta)

    def _answered(self, i: int, life: int, delta: Any) -> None:
        if self.life.get(i, 0) != life or self.world.crashed(i):
            return
        self.asking.pop(i, None)
        worker = self.workers.get(i)
        if worker is None:
            return
        before = worker.resyncs
        if worker.apply(delta):
            self.resyncs += worker.resyncs - before
            self.follow(i, worker)
        self._again(i, life)

    def _again(self, i: int, life: int) -> None:
        """After a reply or a timeout: ask again if gossip told of a newer version meanwhile."""
        if self.life.get(i, 0) == life and i in self.workers and not self.world.crashed(i):
            self.prompted(i, self.heard.get(i, 0))

    # ------------------------------------------------------------ agents

    def follow(self, i: int, state: Any) -> None:
        """``state`` (node ``i``'s applied ClusterState or WorkerState) changed: its agent reads it at its next poll."""
        due = (i, self.life.get(i, 0))
        if due in self.following:
            return
        self.following.add(due)
        world = self.world
        world.at(world.now + world.rng.uniform(0.0, FOLLOW_INTERVAL), self._followed, *due, state)

    def _followed(self, i: int, life: int, state: Any) -> None:
        self.following.discard((i, life))
        if self.life.get(i, 0) == life and not self.world.crashed(i):
            self.assign(i, state)

    def assign(self, i: int, state: Any) -> None:
        """Give node ``i``'s agent its assignments from ``state`` (a ClusterState or WorkerState)."""
        world = self.world
        node_id = world.ids[i]
        tasks = state.tasks_on(node_id)
        key = tuple((t.id, t.version, t.desired, t.state in ("shutdown", "complete", "failed")) for t in tasks)
        if self.seen.get(i) == key:
            return
        self.seen[i] = key
        agent = self.agents.get(i)
        if agent is None:
            if not tasks:
                return
            agent = self.agents[i] = AgentCore(digest_version=self.life.get(i, 0) * 1_000_000)
        for t in tasks:
            self.task_service[t.id] = t.service
        agent.assign(world.now, assignments(state, node_id))
        self._act(i, agent)

    def _act(self, i: int, agent: AgentCore) -> None:
        world = self.world
        life = self.life.get(i, 0)
        for action in agent.take_actions():
            if isinstance(action, Start):
                ports = tuple(30000 + k for k in range(max(1, len(action.spec.publish))))
                delay = world.rng.uniform(*START_SECONDS)
                world.at(world.now + delay, self._started, i, life, action.task_id, action.run, ports)
            elif isinstance(action, Stop):
                world.at(world.now + STOP_SECONDS, self._exited, i, life, action.task_id, action.run)
            elif isinstance(action, Forget):
                pass
        self._flush(i, agent)

    def _started(self, i: int, life: int, task_id: str, run: int, ports: tuple[int, ...]) -> None:
        agent = self.agents.get(i)
        if agent is not None and self.life.get(i, 0) == life:
            agent.started(self.world.now, task_id, run, ports)
            self._act(i, agent)

    def _exited(self, i: int, life: int, task_id: str, run: int) -> None:
        agent = self.agents.get(i)
        if agent is not None and self.life.get(i, 0) == life:
            agent.exited(self.world.now, task_id, run, code=None, signal=15)
            self._act(i, agent)

    def _flush(self, i: int, agent: AgentCore) -> None:
        """Gossip the digest when it changed; keep the ground truth of running tasks."""
        digest = agent.digest()
        self.world.publish_tasks(i, TaskDigest(digest["v"], digest["tasks"]))
        now_running = {tid for tid, rec in digest["tasks"].items() if rec.get("s") == "running"}
        before = self.running.get(i, set())
        if now_running != before:
            self.running[i] = now_running
            self.world.tasks_changed(i, before, now_running)

