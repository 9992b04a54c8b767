"""A tiny deterministic cluster for scheduler tests: the state machine, the reconciler, fake agents.

``Box.settle()`` runs rounds (reconcile, apply, agents report) until nothing changes,
so each test states a situation and checks where the cluster ends up.  Agents start
every task on an up node; ``behaviour`` can make a service's tasks fail instead.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.model import TERMINAL
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.state import ClusterState, Result
from p2pswarm.scheduler.reconcile import ReconcileConfig, reconcile


class Box:
    def __init__(self, nodes: dict[str, dict[str, str]] | int = 3, *, max_moves: int = 2, cpu: float | None = None,
                 memory: int | None = None) -> None:
        self.state = ClusterState()
        self.index = 0
        self.term = 1
        self.now = 100.0
        self.config = ReconcileConfig(max_moves=max_moves)
        self.members: dict[str, str] = {}
        self.behaviour: dict[str, Callable] = {}
        """service -> f(task) returning None (runs) or (state, exit_code, error)."""
        self.results: list[Result] = []
        self._cid = 0
        if isinstance(nodes, int):
            nodes = {f"n{i}": {} for i in range(1, nodes + 1)}
        for node, labels in nodes.items():
            self.add_node(node, labels, cpu=cpu, memory=memory)

    def cid(self) -> str:
        self._cid += 1
        return f"t{self._cid}"

    def apply(self, command: dict) -> Result:
        self.index += 1
        result = self.state.apply(command, self.term, self.index)
        self.results.append(result)
        return result

    def add_node(self, node: str, labels: dict[str, str] | None = None, **capacity) -> None:
        self.apply(cmd.update_node(self.cid(), self.now, node, name=node, labels=labels or {}, **capacity))
        self.members[node] = "alive"

    def create(self, spec: ServiceSpec) -> Result:
        return self.apply(cmd.create_service(self.cid(), self.now, spec))

    def update(self, spec: ServiceSpec) -> Result:
        return self.apply(cmd.update_service(self.cid(), self.now, spec))

    def round(self) -> bool:
        """One reconcile round and one agent pass; True if anything changed."""
        before = self.state.applied
        plan = reconcile(self.state, self.members, self.now, self.term, self.config)
        for command in plan.commands:
            self.apply(command)
        self._agents()
        self.now += 1.0
        return self.state.applied != before

    def settle(self, rounds: int = 60) -> None:
        for _ in range(rounds):
            self.round()
        self.round()

    def _agents(self) -> None:
        for task in sorted(self.state.tasks.values(), key=lambda t: t.id):
            if task.node is None or self.members.get(task.node) != "alive" or task.state in TERMINAL:
                continue
            if task.desired != "running":
                self._report(task, "shutdown")
            elif task.state == "assigned":
                outcome = self.behaviour.get(task.service, lambda t: None)(task)
                if outcome is None:
                    self._report(task, "running", port=20000 + self.index % 1000)
                else:
                    state, code, error = outcome
                    self._report(task, state, exit_code=code, error=error)

    def _report(self, task, state: str, **fields) -> None:
        self.apply(cmd.report_task_status(self.cid(), self.now, task.id, state, node=task.node, **fields))

    # -------------------------------------------------------------- views

    def running(self, service: str) -> list:
        return [t for t in self.state.tasks_of(service) if t.desired == "running" and t.state == "running"]

    def per_node(self, service: str) -> Counter:
        return Counter(t.node for t in self.running(service))
