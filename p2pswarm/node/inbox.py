"""What the node does with each message its transport receives: check who sent it, decode it, and hand
it to the one part of the node that speaks its kind (Raft, the logs and assignments protocols, the API calls
workers forward, SWIM).

A mixin of :class:`p2pswarm.node.daemon.Node`: one concern (routing inbound messages) kept out of the
node's loop. Bad input is counted and dropped, never raised: a peer cannot stop a node by what it sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from p2pswarm import wire
from p2pswarm.consensus.messages import RAFT_MESSAGES
from p2pswarm.membership.messages import LIVE, PushPull
from p2pswarm.security import messages as _join_messages

log = logging.getLogger("p2pswarm.node")


class Inbox:
    if TYPE_CHECKING:  # what the node class provides
        counters: Counter[str]
        security: Any
        raft: Any
        logs: Any
        assignments: Any
        api_handler: Any
        _secure: Any
        clock: Callable[[], float]

        def _guard(self, what: str, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any: ...
        def _spawn(self, coro: Any) -> Any: ...
        def swim_core(self) -> Any: ...

    def _on_recv(self, fut: asyncio.Future) -> None:
        exc = fut.exception()
        if exc is not None:
            self.counters["recv_errors"] += 1
            log.warning("transport receive failed: %s", exc)
            return
        self._on_message(*fut.result())

    def _on_message(self, data: bytes, key: bytes | None) -> None:
        """One received message and the CURVE key it came with (None without CURVE)."""
        sender = None
        if self.security is not None:
            sender = self.security.identity_of(key)
            if sender is None:  # revoked or expired since the transport's own check
                self.counters["unauthorized_dropped"] += 1
                return
        try:
            msg = wire.decode(data)
        except wire.WireError as err:
            self.counters["wire_errors"] += 1
            log.debug("dropped a bad message: %s", err)
            return
        if isinstance(msg, _join_messages.JOIN_MESSAGES):
            self.counters["join_kind_dropped"] += 1  # the join endpoint's kinds never come in here
            return
        if sender is not None:
            if getattr(msg, "source", None) != sender.node_id:
                self.counters["source_mismatch"] += 1
                log.debug("dropped %s claiming to be from %s, sent with the key of %s", type(msg).__name__,
                          getattr(msg, "source", "?"), sender.node_id)
                return
            self._guard("security observe", self.security.observe, msg, sender)
        if isinstance(msg, RAFT_MESSAGES):
            assert self.raft is not None  # made in run() before the loop that calls this starts
            if not self._guard("raft receive", self.raft.receive, msg):
                self.counters["raft_not_started"] += 1
            return
        if isinstance(msg, PushPull) and msg.reply and self.security is not None:
            self._spawn(self._secure.introduce_to([(m.node, m.addr) for m in msg.members
                                                   if m.status in LIVE and m.meta.cert]))
        for what, handler in (("logs", self.logs), ("assignments", self.assignments), ("api", self.api_handler)):
            if handler is not None and isinstance(msg, handler.MESSAGES):  # kinds of their own protocols
                self._guard(what, handler.receive, msg)
                return
        self._guard("receive", self.swim_core().receive, self.clock(), msg)
