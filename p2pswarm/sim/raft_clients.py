"""The client side of the Raft simulation: put/get/cas/delete with retries and unknown outcomes.

Split from :mod:`p2pswarm.sim.raft_sim` because the clients are a concern of their own: each
issues one operation at a time, tries another node after ``ATTEMPT_TIMEOUT`` without an answer
or on a redirect, and records the operation as unknown-outcome after ``OP_TIMEOUT``; the
recorded history is what the linearizability checker judges.  :class:`SimClients` is mixed
into the simulator's world so both share one object, one clock and one random stream (the
order of random draws is part of a seeded run's trace).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from p2pswarm.consensus.kv import encode_command
from p2pswarm.consensus.raft import NotLeader
from p2pswarm.sim.linearizability import Op
from p2pswarm.sim.raft_faults import SETTLE

if TYPE_CHECKING:
    import random

    from p2pswarm.sim.raft_sim import _Node

ATTEMPT_TIMEOUT = 0.4     # a client tries another node after this long without an answer
OP_TIMEOUT = 2.0          # ... and records the op as unknown-outcome after this long


class SimClient:
    """One client: its current operation, the attempt in flight and the node it last talked to."""

    def __init__(self, cid: int) -> None:
        self.id, self.seq, self.attempt = cid, 0, 0
        self.op: tuple = ()
        self.invoke = 0.0
        self.done = True
        self.target: str | None = None


class SimClients:
    """The clients of :class:`p2pswarm.sim.raft_sim._World` (see the module docstring)."""

    if TYPE_CHECKING:  # what the world provides (set in _World.__init__ / defined on _World)
        rng: random.Random
        bug: str | None
        duration: float
        keys: list[str]
        recent: dict[str, list]
        base_delay: float
        jitter: float
        history: list[Op]
        nodes: dict[str, _Node]

        @property
        def now(self) -> float: ...
        def at(self, when: float, fn: Callable, *args: Any) -> None: ...
        def _pump(self, node: _Node) -> None: ...

    def _client_next(self, c: SimClient) -> None:
        if self.now >= self.duration - SETTLE / 2:
            return
        rng = self.rng
        c.seq += 1
        c.attempt, c.done, c.invoke = 0, False, self.now
        kind = rng.choices(("get", "put", "cas", "delete"), (4, 3, 2, 1))[0]
        key = rng.choice(self.keys)
        value = c.id * 1_000_000 + c.seq
        if kind == "put":
            args: tuple = (key, value)
        elif kind == "cas":
            args = (key, rng.choice(self.recent[key][-4:]), value)
        else:
            args = (key,)
        if kind in ("put", "cas"):
            self.recent[key].append(value)
        c.op = (kind, args)
        self.at(self.now + OP_TIMEOUT, self._client_give_up, c, c.seq)
        alive = self._alive_ids()
        self._client_try(c, c.target if c.target in alive else rng.choice(alive))

    def _alive_ids(self) -> list[str]:
        return [nid for nid, n in self.nodes.items() if not n.removed]

    def _client_try(self, c: SimClient, nid: str) -> None:
        c.attempt += 1
        c.target = nid
        self.at(self.now + self._client_delay(), self._node_request, nid, c, c.seq, c.attempt)
        self.at(self.now + ATTEMPT_TIMEOUT, self._client_attempt_timeout, c, c.seq, c.attempt)

    def _client_delay(self) -> float:
        return self.base_delay + self.rng.random() * self.jitter

    def _node_request(self, nid: str, c: SimClient, seq: int, attempt: int) -> None:
        node = self.nodes[nid]
        if not node.up:
            return
        kind, args = c.op
        try:
            if kind == "get" and self.bug == "stale_reads":
                self._reply(c, seq, attempt, ("ok", node.kv.get(args[0])))
            elif kind == "get":
                rid = node.next_read
                node.next_read += 1
                node.raft.read_index(self.now, rid)
                node.reads[rid] = (c, seq, attempt, args[0])
            else:
                index, term = node.raft.propose(self.now, encode_command(c.id, seq, kind, *args))
                node.writes[index] = (term, c, seq, attempt)
        except NotLeader as exc:
            self._reply(c, seq, attempt, ("redirect", exc.leader_hint))
        self._pump(node)

    def _serve_reads(self, node: _Node) -> None:
        waiting = []
        for index, c, seq, attempt, key in node.ready_reads:
            if index <= node.kv.applied:
                self._reply(c, seq, attempt, ("ok", node.kv.get(key)))
            else:
                waiting.append((index, c, seq, attempt, key))
        node.ready_reads = waiting

    def _reply(self, c: SimClient, seq: int, attempt: int, outcome: tuple) -> None:
        self.at(self.now + self._client_delay(), self._client_response, c, seq, attempt, outcome)

    def _client_response(self, c: SimClient, seq: int, attempt: int, outcome: tuple) -> None:
        if c.seq != seq or c.done:
            return
        status, value = outcome
        if status == "ok":
            self._record(c, self.now, value)
            self.at(self.now + self.rng.uniform(0.0, 0.02), self._client_next, c)
        elif attempt == c.attempt:
            hint = value if status == "redirect" and value in self.nodes else None
            target = hint or self.rng.choice(self._alive_ids())
            self.at(self.now + 0.01, self._client_retry, c, seq, target)

    def _client_retry(self, c: SimClient, seq: int, target: str) -> None:
        if c.seq == seq and not c.done:
            self._client_try(c, target)

    def _client_attempt_timeout(self, c: SimClient, seq: int, attempt: int) -> None:
        if c.seq == seq and not c.done and attempt == c.attempt:
            others = [n for n in self._alive_ids() if n != c.target] or self._alive_ids()
            self._client_try(c, self.rng.choice(others))

    def _client_give_up(self, c: SimClient, seq: int) -> None:
        if c.seq == seq and not c.done:
            self._record(c, None, None)
            self.at(self.now + self.rng.uniform(0.0, 0.02), self._client_next, c)

    def _record(self, c: SimClient, complete: float | None, result: Any) -> None:
        kind, args = c.op
        c.done = True
        self.history.append(Op(c.id, c.invoke, complete, kind, args, result))
