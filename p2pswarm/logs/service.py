"""``service logs`` across the cluster.

Every node runs one :class:`LogsService` (made by ``node/daemon.py``, which routes the log
wire kinds to :meth:`LogsService.receive`):

* **Answering.** A :class:`LogsRequest` from a live member is answered from this
  node's task log files by :func:`answer` (pure but for reading files): each task of the
  service that this node's applied state places here, each stream from its cursor, or
  the task's last ``tail`` lines; one reply of at most ``MAX_REPLY_BYTES`` on the bulk
  channel, ``done=False`` when more is there.  Requests beyond ``RATE`` per second are
  dropped (a reply reads files on the node's loop).
* **Gathering** (the API, :meth:`LogsService.gather`): the node the CLI talks to asks
  every node that holds tasks of the service (its own files it reads directly), with
  ``FETCH_TIMEOUT`` per request, pages until each node is done or the call's
  ``CALL_BUDGET`` is spent, and merges the lines by arrival time.  A dead node or one
  that does not answer is a one-line warning, not a failure.  The offsets reached go
  back to the caller in an opaque cursor: the CLI passes it to the next call, which is
  how ``--follow`` and paging work without any state kept here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from p2pswarm import wire
from p2pswarm.logs.messages import (
    ALL,
    CHUNK_OVERHEAD,
    LINE_OVERHEAD,
    MAX_CHUNKS,
    MAX_CURSORS,
    MAX_REPLY_BYTES,
    MAX_TAIL,
    STREAMS,
    LogChunk,
    LogCursor,
    LogLine,
    LogsReply,
    LogsRequest,
    reply_cost,
)
from p2pswarm.membership.messages import LIVE
from p2pswarm.ratelimit import TokenBucket
from p2pswarm.runtime.logs import MAX_LINE_BYTES, LogReader, line_cost

log = logging.getLogger("p2pswarm.logs")

FETCH_TIMEOUT = 2.0
"""Seconds another node may take to answer one logs request before it is reported as not answering."""
CALL_BUDGET = 1024 * 1024
"""Bytes of lines one API call gathers over all nodes (the rest comes with the next call)."""
CALL_DEADLINE = 6.0
"""Seconds one API call spends paging before it returns what it has."""
RATE = 50.0
"""Requests from other nodes answered per second (burst: twice that); the rest are dropped."""
REPLY_OVERHEAD = 128
"""Bytes of a reply besides its chunks (header, ids), kept out of the lines' budget."""
WORST_LINE = 3 * MAX_LINE_BYTES + LINE_OVERHEAD
"""The most one line can cost (a piece of invalid UTF-8: every byte becomes U+FFFD, 3 bytes)."""
MAX_WAITING = 1024
MAX_FORGOTTEN = 512
"""Streams of tasks the state forgot that a cursor goes on following per node (their logs are kept for a while)."""
MAX_CURSOR_TOKEN = 64 * 1024


@dataclass(frozen=True)
class LocalTask:
    """One task of the service on this node, for :func:`answer`."""

    id: str
    slot: int
    final: bool
    """The task is not running here (any more): its last line may lack its newline."""
    paths: dict
    """stream -> path of the current log file (``tasks/<id>/<stream>.log``)."""


def answer(request: LogsRequest, me: str, tasks: Iterable[LocalTask], reader: LogReader, keep: int) -> LogsReply:
    """The reply to ``request`` from the log files of ``tasks`` (bounded by MAX_REPLY_BYTES)."""
    budget = min(request.max_bytes, MAX_REPLY_BYTES - REPLY_OVERHEAD)
    cursors = {(c.task, c.stream): c.offset for c in request.cursors}
    chunks: list[LogChunk] = []
    used, first = 0, True
    for task in tasks:
        views = {s: reader.stream(task.paths[s], keep) for s in STREAMS}
        starts = {s: cursors[(task.id, s)] for s in STREAMS if (task.id, s) in cursors}
        fresh = [s for s in STREAMS if s not in starts]
        starts.update(_tail_starts(views, fresh, request.tail, task.final))
        for stream in STREAMS:
            view = views[stream]
            start = min(max(starts[stream], view.start), view.end)
            room = budget - used - CHUNK_OVERHEAD
            # one line may exceed a small requested budget (so that paging always moves), never the limit
            first = first and MAX_REPLY_BYTES - REPLY_OVERHEAD - used - CHUNK_OVERHEAD >= WORST_LINE
            if len(chunks) >= MAX_CHUNKS or (room < LINE_OVERHEAD and not first):
                return LogsReply(request.request, me, tuple(chunks), False)
            lines, nxt, more = view.lines(start, room, task.final, first)
            if lines or stream in fresh or nxt != starts[stream]:
                chunks.append(LogChunk(task.id, task.slot, stream, start, nxt,
                                       tuple(LogLine(at or 0.0, text) for _, at, text in lines)))
                used += CHUNK_OVERHEAD + sum(line_cost(text) for _, _, text in lines)
                first = first and not lines
            if more:  # the budget is spent
                return LogsReply(request.request, me, tuple(chunks), False)
    return LogsReply(request.request, me, tuple(chunks), True)


def _tail_starts(views: dict, streams: list[str], tail: int, final: bool) -> dict[str, int]:
    """Where the streams without a cursor start: everything, or the task's last ``tail`` lines
    over those streams together (by arrival time)."""
    if not streams:
        return {}
    if tail == ALL:
        return {s: views[s].start for s in streams}
    candidates, after = [], {}
    for s in streams:
        starts, after[s] = views[s].tail(tail, final)
        candidates += [(at or 0.0, i, s, offset) for i, (offset, at) in enumerate(starts)]
    candidates.sort(key=lambda c: (c[0], c[1]))
    kept = candidates[-tail:] if tail else []
    out = {}
    for s in streams:
        offsets = [offset for _, _, stream, offset in kept if stream == s]
        out[s] = min(offsets) if offsets else after[s]
    return out


# ------------------------------------------------------------------ cursors (opaque to the CLI)

@dataclass
class NodeCursor:
    seen: bool = False
    """The node answered completely once: streams it did not know then are new (read from their start)."""
    offsets: dict = field(default_factory=dict)
    """(task, stream) -> next offset."""


def encode_cursor(cursor: dict[str, NodeCursor]) -> str:
    plain = {nid: [int(c.seen), [[t, STREAMS.index(s), o] for (t, s), o in sorted(c.offsets.items())]]
             for nid, c in sorted(cursor.items())}
    raw = zlib.compress(json.dumps(plain, separators=(",", ":")).encode(), 9)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> dict[str, NodeCursor]:
    """Raises ValueError (one line) for anything but a cursor this module made."""
    if not token:
        return {}
    if len(token) > MAX_CURSOR_TOKEN:
        raise ValueError("the logs cursor is too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        inflater = zlib.decompressobj()
        data = inflater.decompress(raw, 4 * MAX_CURSOR_TOKEN * 16)
        if inflater.unconsumed_tail:
            raise ValueError("too large")
        plain = json.loads(data)
        out = {}
        for nid, (seen, entries) in plain.items():
            wire.NODE_ID(nid)
            offsets = {}
            for task, stream, offset in entries:
                if type(task) is not str or not 0 < len(task) <= 64 or type(offset) is not int or offset < 0:
                    raise ValueError("bad entry")
                offsets[(task, STREAMS[stream])] = offset
            out[nid] = NodeCursor(bool(seen), offsets)
        return out
    except (ValueError, TypeError, KeyError, IndexError, zlib.error, wire.WireError):
        raise ValueError("the logs cursor is not valid (pass back the one the last call returned)") from None


# ------------------------------------------------------------------ the node's side

class LogsService:
    MESSAGES = (LogsRequest, LogsReply)

    def __init__(self, node: Any, clock: Any = time.monotonic) -> None:
        """``node``: the daemon (node_id, swim, transport, raft_driver(), agent, counters)."""
        self.node, self.clock = node, clock
        self.reader = LogReader()
        self.counters = getattr(node, "counters", None)
        self._waiting: dict[int, tuple[str, asyncio.Future]] = {}
        self._bucket = TokenBucket(RATE, 2 * RATE, clock())

    def _count(self, what: str) -> None:
        if self.counters is not None:
            self.counters[f"logs_{what}"] += 1

    # -------------------------------------------------------------- wire

    def receive(self, msg: Any) -> None:
        if isinstance(msg, LogsRequest):
            self._answer_peer(msg)
        elif isinstance(msg, LogsReply):
            waiting = self._waiting.get(msg.request)
            if waiting is None or waiting[0] != msg.source or waiting[1].done():
                self._count("unexpected_replies")
                return
            waiting[1].set_result(msg)

    def _answer_peer(self, request: LogsRequest) -> None:
        member = self.node.swim.member(request.source)
        if member is None or member.status not in LIVE or request.source == self.node.node_id:
            self._count("requests_refused")
            return
        if not self._bucket.take(self.clock()):
            self._count("requests_dropped")
            return
        reply = self.answer(request)
        self._count("requests_answered")
        if not self.node.transport.send(member.addr, wire.encode(reply), True):
            self._count("replies_dropped")

    def answer(self, request: LogsRequest) -> LogsReply:
        return answer(request, self.node.node_id, self.local_tasks(request.service), self.reader, self._keep())

    def _keep(self) -> int:
        runtime = getattr(self.node.agent, "runtime", None)
        return runtime.config.log_keep if runtime is not None else 3

    def local_tasks(self, service: str) -> list[LocalTask]:
        """This node's tasks of ``service`` (applied state) whose log directory exists."""
        driver = self.node.raft_driver()
        runtime = getattr(self.node.agent, "runtime", None)
        if driver is None or runtime is None:
            return []
        out, known = [], set()
        for task in driver.cluster.tasks_of(service):
            folder = Path(runtime.task_dir(task.id))
            known.add(task.id)
            if task.node == self.node.node_id and folder.is_dir():
                out.append(LocalTask(task.id, task.slot, task.id not in runtime.live,
                                     {s: folder / f"{s}.log" for s in STREAMS}))
        for task_id, slot in runtime.retired(service):  # forgotten by the state, kept for the retention
            if task_id not in known:
                folder = Path(runtime.task_dir(task_id))
                out.append(LocalTask(task_id, slot, True, {s: folder / f"{s}.log" for s in STREAMS}))
        return out

    async def fetch(self, node_id: str, request: LogsRequest, timeout: float = FETCH_TIMEOUT) -> LogsReply:
        """Send ``request`` to ``node_id``; its reply, or TimeoutError / LookupError."""
        member = self.node.swim.member(node_id)
        if member is None:
            raise LookupError(f"node {node_id} is unknown")
        if len(self._waiting) >= MAX_WAITING:
            raise LookupError("too many logs requests in flight on this node")
        fut = asyncio.get_running_loop().create_future()
        self._waiting[request.request] = (node_id, fut)
        try:
            if not self.node.transport.send(member.addr, wire.encode(request), True):
                self._count("requests_dropped_on_send")
            return await asyncio.wait_for(fut, max(0.01, timeout))
        finally:
            self._waiting.pop(request.request, None)

    # -------------------------------------------------------------- the API's side

    async def gather(self, service: str, token: str = "", tail: int = ALL, budget: int = CALL_BUDGET,
                     deadline: float = CALL_DEADLINE, since: float | None = None,
                     until: float | None = None) -> dict[str, Any]:
        """Lines of ``service``'s tasks from every node holding some, merged by arrival time:
        ``{"lines": [...], "cursor": str, "done": bool, "warnings": [str]}``; ``tail`` applies to
        the task streams the cursor does not know yet of nodes not yet read completely, before
        ``since`` and ``until`` (unix seconds) keep the lines that arrived between them.  Live nodes
        without tasks of the service in the state are asked too: they may keep logs of its tasks that
        the state forgot (:mod:`p2pswarm.runtime.retention`)."""
        if not (tail == ALL or 0 <= tail <= MAX_TAIL):
            raise ValueError(f"tail must be 'all' or 0..{MAX_TAIL}, got {tail}")
        cursor = decode_cursor(token)
        state = self.node.raft_driver().cluster
        tasks = state.tasks_of(service)
        holders = sorted({t.node for t in tasks if t.node})
        keepers = sorted(nid for nid in state.nodes if nid not in holders and self._live(nid))
        known = {t.id for t in tasks}
        for nid, c in list(cursor.items()):  # forget nodes no longer asked, and most streams of forgotten tasks
            forgotten = [k for k in c.offsets if k[0] not in known]
            for k in forgotten[:max(0, len(forgotten) - MAX_FORGOTTEN)]:
                del c.offsets[k]
            if nid not in holders and nid not in keepers:
                del cursor[nid]
        names = {nid: n.name for nid, n in state.nodes.items()}
        stop_at = self.clock() + deadline
        share = max(MAX_REPLY_BYTES, budget // max(1, len(holders) + len(keepers)))
        results = await asyncio.gather(*(self._from_node(nid, service, cursor.setdefault(nid, NodeCursor()), tail,
                                                         share, stop_at, names) for nid in holders + keepers))
        lines, warnings, done = [], [], True
        for nid, (node_lines, warning, node_done) in zip(holders + keepers, results):
            lines += node_lines
            done = done and node_done
            if warning and nid in holders:  # a keeper that does not answer may well have had nothing
                warnings.append(warning)
        if since is not None or until is not None:
            lines = [line for line in lines if line["t"] is not None and (since is None or line["t"] >= since)
                     and (until is None or line["t"] <= until)]
        lines.sort(key=lambda line: line["t"] or 0.0)  # stable: each stream stays in order
        return {"lines": lines, "cursor": encode_cursor(cursor), "done": done, "warnings": warnings}

    def _live(self, nid: str) -> bool:
        if nid == self.node.node_id:
            return True
        member = self.node.swim.member(nid)
        return member is not None and member.status in LIVE

    async def _from_node(self, nid: str, service: str, cur: NodeCursor, tail: int, budget: int, until: float,
                         names: dict) -> tuple[list[dict], str | None, bool]:
        me = self.node.node_id
        member = self.node.swim.member(nid) if nid != me else None
        name = names.get(nid) or (member.meta.name if member is not None else nid)
        if nid != me and (member is None or member.status not in LIVE):
            status = member.status if member is not None else "unknown"
            return [], f"node {name} is {status}: the logs of its tasks are not available", True
        lines: list[dict] = []
        while True:
            cursors = tuple(LogCursor(t, s, o) for (t, s), o in sorted(cur.offsets.items())[:MAX_CURSORS])
            request = LogsRequest(secrets.randbits(63), me, service, ALL if cur.seen else tail,
                                  max(1, min(MAX_REPLY_BYTES, budget)), cursors)
            if nid == me:
                reply = self.answer(request)
            else:
                try:
                    reply = await self.fetch(nid, request, FETCH_TIMEOUT)
                except (asyncio.TimeoutError, LookupError):
                    return lines, (f"node {name} did not answer within {FETCH_TIMEOUT:g} s: "
                                   f"some logs of its tasks are missing"), True
            for chunk in reply.chunks:
                cur.offsets[(chunk.task, chunk.stream)] = chunk.next
                lines += [{"t": line.at or None, "node": nid, "node_name": name, "task": chunk.task,
                           "slot": chunk.slot, "stream": chunk.stream, "text": line.text} for line in chunk.lines]
            budget -= reply_cost(reply.chunks)
            if reply.done:
                cur.seen = True
                return lines, None, True
            if budget <= 0 or self.clock() + FETCH_TIMEOUT > until:  # the rest comes with the next call
                return lines, None, False
