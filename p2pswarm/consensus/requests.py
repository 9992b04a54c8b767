"""The driver's client side: KV, cluster, security and access writes and linearizable reads.

Split from :mod:`p2pswarm.consensus.driver` because waiting for a result is a concern of its
own: each write or read is a :class:`_Pending` that is re-submitted every ``retry_interval``
(a forward to the leader may be lost) and failed at its deadline with one line saying why.
The Ready cycle in the driver resolves them; :class:`RaftRequests` is mixed into
:class:`p2pswarm.consensus.driver.RaftDriver` so both share one object and one loop.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any, Callable

from p2pswarm.consensus.kv import encode_command
from p2pswarm.consensus.messages import MAX_ENTRY_BYTES
from p2pswarm.consensus.raft import quorum_size
from p2pswarm.membership.messages import LIVE
from p2pswarm.node.statemachine import encode_access, encode_cluster, encode_security

if TYPE_CHECKING:
    from collections import Counter

    from p2pswarm.consensus.kv import KVStore
    from p2pswarm.consensus.raft import Raft

RECOVER_HINT = ("if those voters are lost for good, stop a surviving voter and run "
                "`p2pswarm cluster recover --force-new-cluster --data-dir DIR` on it (see docs/operations.md)")


class RaftUnavailable(Exception):
    """A write or read could not complete; the message is one line saying why and what to do."""


class _Pending:
    """A write or read waiting to complete: re-submitted every retry_interval, failed at its deadline."""

    __slots__ = ("fut", "submit", "what", "timeout", "deadline", "retry_at")

    def __init__(self, fut: asyncio.Future, submit: Callable[[], None], what: str, timeout: float,
                 now: float, retry: float) -> None:
        self.fut, self.submit, self.what, self.timeout = fut, submit, what, timeout
        self.deadline, self.retry_at = now + timeout, now + retry


def command_id(*scope: str, unique: str | None = None) -> str:
    """The id of a cluster, security or access command: ``scope.unique`` (``api.3f2a…``, ``security.ca.…``),
    what its writer waits on (the key :meth:`RaftRequests._propose` resolves).  ``unique`` is 64 random
    bits in hex unless given: a fixed one (the cluster id for ``security.init``) makes every retry of that
    command the same command.  It lives here, beside the KV lanes' ids, and not in the pure cluster model,
    because it draws from the OS's randomness."""
    return ".".join((*scope, secrets.token_hex(8) if unique is None else unique))


class _Lane:
    __slots__ = ("client", "seq")

    def __init__(self) -> None:
        self.client = secrets.randbits(62)  # fresh per process: a restart must not look like a duplicate
        self.seq = 0


class RaftRequests:
    """Writes and reads of :class:`p2pswarm.consensus.driver.RaftDriver` (see the module docstring)."""

    if TYPE_CHECKING:  # what the driver provides (set in RaftDriver.__init__ / defined on RaftDriver)
        id: str
        cfg: Any
        clock: Callable[[], float]
        counters: Counter[str]
        raft: Raft
        kv: KVStore
        applied: int
        failed: str | None
        _kick: asyncio.Event
        _proposals: list[bytes]
        _read_requests: list[int]
        _writes: dict[Any, _Pending]
        _reads: dict[int, _Pending]
        _apply_waiters: list[tuple[int, asyncio.Future]]
        _sweep_due: float
        _lanes: list[_Lane]
        _read_seq: int

        def leader_hint(self) -> str | None: ...
        def _status(self, node: str) -> str: ...
        def _name(self, node: str | None) -> str: ...

    async def write(self, op: str, key: str, *args: Any, timeout: float | None = None) -> Any:
        """Commit and apply one KV command; returns its result or raises RaftUnavailable / ValueError."""
        if self.failed is not None:
            raise RaftUnavailable(self.failed)
        lane = self._lanes.pop() if self._lanes else _Lane()
        lane.seq += 1
        result = await self._propose((lane.client, lane.seq), encode_command(lane.client, lane.seq, op, key, *args),
                                     timeout)
        self._lanes.append(lane)  # a lane whose write timed out is dropped: its fate is unknown
        return result

    async def write_cluster(self, command: dict, timeout: float | None = None) -> Any:
        """Commit and apply one cluster command (:mod:`p2pswarm.cluster.commands`); returns its
        ``Result``.  Retries are safe: the cluster state applies a command id once."""
        if self.failed is not None:
            raise RaftUnavailable(self.failed)
        return await self._propose(command["id"], encode_cluster(command), timeout)

    async def write_security(self, command: dict, timeout: float | None = None) -> Any:
        """Commit and apply one security-record command (:mod:`p2pswarm.security.record`); returns its
        ``Result``.  Re-submissions are harmless: a repeated command changes nothing the second time."""
        if self.failed is not None:
            raise RaftUnavailable(self.failed)
        return await self._propose(command["id"], encode_security(command), timeout)

    async def write_access(self, command: dict, timeout: float | None = None) -> Any:
        """Commit and apply one access-record command (:mod:`p2pswarm.security.access`); returns its ``Result``."""
        if self.failed is not None:
            raise RaftUnavailable(self.failed)
        return await self._propose(command["id"], encode_access(command), timeout)

    async def _propose(self, key: Any, data: bytes, timeout: float | None) -> Any:
        if len(data) > MAX_ENTRY_BYTES:
            raise ValueError(f"the command is {len(data)} bytes; the limit is {MAX_ENTRY_BYTES}")
        if key in self._writes:
            raise ValueError(f"command {key!r} is already being written")
        self._writes[key] = self._pending(lambda: self._proposals.append(data), "write", timeout)
        self.counters["proposals"] += 1
        try:
            return await self._writes[key].fut
        finally:
            self._writes.pop(key, None)

    async def read(self, key: str, timeout: float | None = None) -> Any:
        """A linearizable read: ReadIndex, then wait until this replica applied that index."""
        await self.barrier(timeout)
        return self.kv.get(key)

    async def barrier(self, timeout: float | None = None) -> int:
        """A linearizable point: ReadIndex through the leader, then wait until this replica applied that index
        (returned).  What this replica's state machines hold right after (before the loop runs again) includes
        every write committed before the call: a read of any part of the state, or a backup of all of it."""
        if self.failed is not None:
            raise RaftUnavailable(self.failed)
        if self.id not in self.raft.conf.members:
            raise RaftUnavailable("this node holds no replica yet (it is not in the Raft group); "
                                  "read through another node or use a stale read")
        self._read_seq += 1
        request = self._read_seq
        pending = self._reads[request] = self._pending(lambda: self._read_requests.append(request), "read", timeout)
        try:
            index = await pending.fut
        finally:
            self._reads.pop(request, None)
        if self.applied < index:
            loop = asyncio.get_running_loop()
            applied = loop.create_future()
            self._apply_waiters.append((index, applied))
            try:
                await asyncio.wait_for(applied, max(0.0, pending.deadline - self.clock()))
            except asyncio.TimeoutError:
                raise RaftUnavailable(f"this node has not applied index {index} within {pending.timeout:g} s; "
                                      f"it is catching up, retry or read with --stale") from None
        return index

    def _pending(self, submit: Callable[[], None], what: str, timeout: float | None) -> _Pending:
        now = self.clock()
        pending = _Pending(asyncio.get_running_loop().create_future(), submit, what,
                           self.cfg.write_timeout if timeout is None else timeout, now, self.cfg.retry_interval)
        self._sweep_due = min(self._sweep_due, pending.retry_at)
        submit()
        self._kick.set()
        return pending

    def _sweep(self, now: float) -> None:
        """Re-submit what has waited a retry_interval (a lost forward); fail what is past its deadline."""
        due = float("inf")
        for pending in [*self._writes.values(), *self._reads.values()]:
            if pending.fut.done():
                continue
            if now >= pending.deadline:
                pending.fut.set_exception(RaftUnavailable(self.why_unavailable(pending.what, pending.timeout)))
                continue
            if now >= pending.retry_at:
                pending.retry_at = now + self.cfg.retry_interval
                pending.submit()
            due = min(due, pending.retry_at, pending.deadline)
        self._sweep_due = due

    def why_unavailable(self, what: str, timeout: float) -> str:
        if self.failed is not None:
            return self.failed
        voters = self.raft.conf.voters
        live = sum(1 for v in voters if v == self.id or self._status(v) in LIVE)
        quorum = quorum_size(len(voters))
        leader = self.leader_hint()
        if leader is None and voters:
            return (f"no Raft quorum: the {what} was not committed within {timeout:g} s, no leader is elected "
                    f"and {live} of {len(voters)} voters are reachable (a quorum is {quorum}); {RECOVER_HINT}")
        if leader is None:
            return (f"this node is not in a Raft group and knows no leader; the {what} did not complete "
                    f"within {timeout:g} s (is it joined to a cluster?)")
        return (f"timed out after {timeout:g} s waiting for the {what} to commit through leader "
                f"{self._name(leader)}; its outcome is unknown, retry it")
