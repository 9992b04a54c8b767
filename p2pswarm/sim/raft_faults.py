"""Fault injection for the Raft simulation: crashes, power loss, partitions, weather, membership changes.

Split from :mod:`p2pswarm.sim.raft_sim` because the fault schedule is a concern of its own: a
Poisson stream of faults (mean gap 0.45 virtual seconds) until ``SETTLE`` seconds before the
end, each undone after a random while, then everything healed so the run ends fault-free.
Crashes never take down more members than quorum allows, except a deliberate power loss of a
majority.  :class:`SimFaults` is mixed into the simulator's world so both share one object, one
clock and one random stream (the order of random draws is part of a seeded run's trace).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from p2pswarm.consensus.raft import RaftError, quorum_size

if TYPE_CHECKING:
    import random
    from collections import Counter

    from p2pswarm.sim.raft_sim import _Node

SETTLE = 1.0              # fault-free seconds at the end of a run


class SimFaults:
    """The fault injector of :class:`p2pswarm.sim.raft_sim._World` (see the module docstring)."""

    if TYPE_CHECKING:  # what the world provides (set in _World.__init__ / defined on _World)
        rng: random.Random
        duration: float
        nodes: dict[str, _Node]
        faults: Counter
        blocked: set[tuple[str, str]]
        loss: float
        dup: float
        jitter: float
        watch: dict | None
        member_plan: dict | None
        next_node: int

        @property
        def now(self) -> float: ...
        def at(self, when: float, fn: Callable, *args: Any) -> None: ...
        def _add_node(self, nid: str, bootstrap: tuple) -> _Node: ...
        def _boot(self, node: _Node) -> None: ...
        def _crash(self, node: _Node) -> None: ...
        def _pump(self, node: _Node) -> None: ...
        def _leader(self) -> _Node | None: ...

    def _plan_faults(self) -> None:
        t, end = 0.5, self.duration - SETTLE
        while True:
            t += self.rng.expovariate(1 / 0.45)
            if t >= end:
                break
            self.at(t, self._fault)
        self.at(end, self._heal_all)

    def _fault(self) -> None:
        rng = self.rng
        kind = rng.choices(("crash_leader", "crash", "partition", "asymmetric", "weather", "transfer",
                            "membership", "power_loss"), (3, 2, 2, 2, 1, 1, 1, 1))[0]
        getattr(self, "_fault_" + kind)()

    def _members(self) -> list[_Node]:
        return [n for n in self.nodes.values() if not n.removed]

    def _can_crash(self) -> bool:
        members = self._members()
        down = sum(1 for n in members if not n.up)
        return down + 1 <= len(members) - quorum_size(len(members))

    def _crash_for(self, node: _Node) -> None:
        self.faults["crash"] += 1
        self._crash(node)
        self.at(self.now + self.rng.uniform(0.2, 1.5), self._restart, node)

    def _restart(self, node: _Node) -> None:
        if not node.up and not node.removed:
            self._boot(node)

    def _fault_crash_leader(self) -> None:
        leader = self._leader()
        if leader is None or not self._can_crash():
            return
        if self.watch is None and not self.blocked:
            self.watch = {"at": self.now, "term": leader.raft.term, "elected": False}
        self.faults["crash_leader"] += 1
        self._crash_for(leader)

    def _fault_crash(self) -> None:
        up = [n for n in self._members() if n.up]
        if up and self._can_crash():
            self._crash_for(self.rng.choice(up))

    def _fault_power_loss(self) -> None:
        """A correlated failure: a majority loses power at once (only fsynced data survives)."""
        members = [n for n in self._members() if n.up]
        victims = self.rng.sample(members, min(len(members), quorum_size(len(self._members()))))
        self.faults["power_loss"] += 1
        for node in victims:
            self._crash_for(node)

    def _fault_partition(self) -> None:
        ids = [n.id for n in self._members()]
        side = set(self.rng.sample(ids, self.rng.randint(1, len(ids) // 2)))
        cut = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
        self._block(cut, "partition")

    def _fault_asymmetric(self) -> None:
        ids = [n.id for n in self._members()]
        victim = self.rng.choice(ids)
        others = [i for i in ids if i != victim]
        chosen = self.rng.sample(others, self.rng.randint(1, len(others)))
        inbound = self.rng.random() < 0.5
        self._block({(o, victim) if inbound else (victim, o) for o in chosen}, "asymmetric")

    def _block(self, pairs: set, kind: str) -> None:
        self.faults[kind] += 1
        added = pairs - self.blocked
        self.blocked |= added
        self.at(self.now + self.rng.uniform(0.2, 1.5), self._unblock, added)

    def _unblock(self, pairs: set) -> None:
        self.blocked -= pairs

    def _fault_weather(self) -> None:
        self.faults["weather"] += 1
        saved = (self.loss, self.dup, self.jitter)
        self.loss, self.dup = self.rng.uniform(0.05, 0.3), self.rng.uniform(0.0, 0.1)
        self.jitter = self.rng.uniform(0.01, 0.05)
        self.at(self.now + self.rng.uniform(0.3, 1.2), self._set_weather, saved)

    def _set_weather(self, saved: tuple) -> None:
        self.loss, self.dup, self.jitter = saved

    def _fault_transfer(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        targets = [v for v in leader.raft.conf.voters if v != leader.id]
        if targets:
            self.faults["transfer"] += 1
            leader.raft.transfer_leadership(self.now, self.rng.choice(targets))
            self._pump(leader)

    def _fault_membership(self) -> None:
        if self.member_plan is None:
            victim = self.rng.choice(self._members())
            self.member_plan = {"stage": "remove", "node": victim.id, "new": None}
            self.faults["membership"] += 1
            self._membership_step()

    def _membership_step(self) -> None:
        """Remove a voter, then add a fresh node as learner, then promote it once caught up."""
        plan, leader = self.member_plan, self._leader()
        if plan is None:
            return
        self.at(self.now + 0.1, self._membership_step)
        if leader is None:
            return
        raft = leader.raft
        committed = raft.conf_index <= raft.log.committed
        try:
            if plan["stage"] == "remove":
                if plan["node"] not in raft.conf.members:
                    if committed:
                        gone = self.nodes[plan["node"]]
                        gone.removed = True
                        if gone.up:
                            self._crash(gone)
                        plan["stage"] = "add"
                else:
                    raft.propose_conf_change(self.now, "remove", plan["node"])
            elif plan["stage"] == "add":
                new_id = plan["new"] or f"n{self.next_node}"
                if plan["new"] is None:
                    self.next_node += 1
                    plan["new"] = new_id
                    self._add_node(new_id, ())
                if new_id in raft.conf.learners and committed:
                    plan["stage"] = "promote"
                elif new_id not in raft.conf.members:
                    raft.propose_conf_change(self.now, "add_learner", new_id)
            elif plan["stage"] == "promote":
                new_id = plan["new"]
                if new_id in raft.conf.voters and committed:
                    self.member_plan = None
                    self.faults["membership_done"] += 1
                elif new_id in raft.conf.learners and raft.progress[new_id].match >= raft.log.committed:
                    raft.propose_conf_change(self.now, "promote", new_id)
        except RaftError:
            pass  # not leader any more, or another change pending: try again next step
        self._pump(leader)

    def _heal_all(self) -> None:
        self.blocked.clear()
        self.loss, self.dup = 0.0, 0.0
        for node in self._members():
            if not node.up:
                self._boot(node)
