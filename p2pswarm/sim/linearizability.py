"""A linearizability checker for key/value histories (Wing & Gong's search with Lowe's memoization).

A history is a list of :class:`Op`: who invoked what and when, and when it completed
with which result.  An op whose outcome is unknown (the client timed out) has
``complete=None``: it may have taken effect at any moment after its invocation or
never, and its result constrains nothing.  That is modelled as a return at +∞
with any result accepted, so the search may always place it last, where it
affects no other op.

Ops on different keys never interact in this model, so the history is checked
key by key (linearizability is local, Herlihy & Wing), which keeps each search small.

Search: walk the time-ordered list of call and return events; at a call, try to
linearize that op now (the model accepts its result) and lift it out of the list;
at a return whose op is not yet linearized, backtrack.  Each (set of linearized
ops, model state) reached is cached; reaching it again cannot succeed where the
first visit failed (Lowe, "Testing for linearizability", 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MISSING = None


@dataclass(frozen=True, slots=True)
class Op:
    process: Any
    invoke: float
    complete: float | None
    op: str
    args: tuple
    result: Any = None

    @property
    def key(self) -> Any:
        return self.args[0]


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    """False only when a violation was proven."""
    complete: bool = True
    """False when the search budget ran out before an answer (ok is then True: not proven wrong)."""
    key: Any = None
    """A key whose sub-history is not linearizable."""
    ops: tuple = ()
    """That sub-history, for the report."""


def kv_step(state: Any, op: Op, known: bool) -> tuple[bool, Any]:
    """The sequential spec of one key of :class:`p2pswarm.consensus.kv.KVStore`."""
    kind, args, res = op.op, op.args, op.result
    if kind == "put":
        return (not known or res is True), args[1]
    if kind == "get":
        return (not known or res == state), state
    if kind == "cas":
        hit = state == args[1]
        new = args[2] if hit else state
        return (not known or res == hit), new
    if kind == "delete":
        return (not known or res == (state is not MISSING)), MISSING
    raise ValueError(f"unknown op {kind!r}")


def check_history(history: list[Op], max_states: int = 200_000) -> CheckResult:
    """Is the whole key/value history linearizable? Checked per key."""
    by_key: dict[Any, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    complete = True
    for key in sorted(by_key, key=repr):
        verdict = check_single(by_key[key], max_states)
        if verdict is False:
            return CheckResult(False, True, key, tuple(by_key[key]))
        if verdict is None:
            complete = False
    return CheckResult(True, complete)


class _Node:
    __slots__ = ("op_id", "is_call", "prev", "next", "match")

    def __init__(self, op_id: int, is_call: bool) -> None:
        self.op_id, self.is_call = op_id, is_call
        self.prev = self.next = self.match = None


def check_single(ops: list[Op], max_states: int = 200_000, init: Any = MISSING) -> bool | None:
    """Search one key's history: True, False, or None when ``max_states`` ran out."""
    ops = [op for op in ops if op.complete is not None or op.op != "get"]  # unknown reads say nothing
    if not ops:
        return True
    events = []
    for i, op in enumerate(ops):
        ret = math.inf if op.complete is None else op.complete
        # at equal times a call sorts before a return: treat touching ops as concurrent
        events.append((op.invoke, 0, i, True))
        events.append((ret, 1, i, False))
    events.sort()
    head = _Node(-1, False)
    calls: dict[int, _Node] = {}
    prev = head
    for _, _, i, is_call in events:
        node = _Node(i, is_call)
        if is_call:
            calls[i] = node
        else:
            calls[i].match = node
        prev.next, node.prev = node, prev
        prev = node
    known_left = sum(1 for op in ops if op.complete is not None)

    def lift(call: _Node) -> None:
        for n in (call, call.match):
            n.prev.next = n.next
            if n.next is not None:
                n.next.prev = n.prev

    def unlift(call: _Node) -> None:
        for n in (call.match, call):
            n.prev.next = n
            if n.next is not None:
                n.next.prev = n

    state, linearized = init, 0
    stack: list[tuple[_Node, Any]] = []
    seen: set = set()
    entry = head.next
    while known_left:
        if len(seen) > max_states:
            return None
        if entry is None:  # only unknown ops remain unplaced: put them last, harmlessly
            return True
        if entry.is_call:
            op = ops[entry.op_id]
            ok, new_state = kv_step(state, op, op.complete is not None)
            if ok:
                bits = linearized | (1 << entry.op_id)
                if (bits, new_state) not in seen:
                    seen.add((bits, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, bits
                    if op.complete is not None:
                        known_left -= 1
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                return False
            entry, state = stack.pop()
            linearized &= ~(1 << entry.op_id)
            if ops[entry.op_id].complete is not None:
                known_left += 1
            unlift(entry)
            entry = entry.next
    return True
