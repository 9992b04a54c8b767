"""Task-log messages between nodes (kinds: :data:`p2pswarm.wire.KINDS`): ``service logs`` from every node.

The node a CLI talks to asks each node that holds tasks of the service with a
:class:`LogsRequest` (bulk channel) and gets one :class:`LogsReply`, whose lines are
bounded (``MAX_REPLY_BYTES``, about 64 KiB on the wire).  Paging and following are
pull-based: the reply carries each stream's next offset and ``done``; the asker sends
the offsets back to get more.  Nothing here trusts the peer: fields are checked as
every wire message's are, a reply over its budget or with impossible offsets is a
WireError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pswarm.wire import (
    NODE_ID,
    WireError,
    WireStruct,
    boolean,
    message,
    nested,
    number,
    one_of,
    seq,
    struct,
    text,
    uint,
)

STREAMS = ("stdout", "stderr")
MAX_TASK_ID = 64
MAX_SERVICE_NAME = 63
MAX_REPLY_BYTES = 64 * 1024
"""Budget of one reply: its lines' UTF-8 text plus ``LINE_OVERHEAD`` each, plus ``CHUNK_OVERHEAD`` per chunk."""
LINE_OVERHEAD = 16
"""Wire bytes of a line beyond its text (array header, time, string header); = runtime.logs.LINE_OVERHEAD."""
CHUNK_OVERHEAD = 48 + MAX_TASK_ID
MAX_LINE_CHARS = 16 * 1024
"""A longer line arrives in pieces of runtime.logs.MAX_LINE_BYTES (the same number) bytes."""
MAX_LINES = MAX_REPLY_BYTES // LINE_OVERHEAD
MAX_CHUNKS = 256
"""Task streams in one reply; more are paged."""
MAX_CURSORS = 4096
"""Stream offsets in one request (a node with more tasks of one service than this is followed partly)."""
MAX_TAIL = 100_000
ALL = -1
"""``tail``: every retained line."""
MAX_ERROR = 200
U64 = uint(64)


def int_range(lo: int, hi: int):
    def check(value: Any) -> int:
        if type(value) is not int or not lo <= value <= hi:
            raise WireError(f"expected an integer in {lo}..{hi}, got {value!r:.40}")
        return value
    return check


TASK_ID = text(MAX_TASK_ID, 1)
STREAM = one_of(*STREAMS)


@struct
@dataclass(frozen=True, slots=True)
class LogCursor(WireStruct):
    """Where to go on reading one task stream (a stream offset: every byte it ever wrote counts)."""

    task: str
    stream: str
    offset: int
    SCHEMA = (("task", TASK_ID), ("stream", STREAM), ("offset", U64))


@message(48)
@dataclass(frozen=True, slots=True)
class LogsRequest(WireStruct):
    """Lines of ``service``'s tasks on the receiver: streams with a cursor from there on, the
    others' last ``tail`` lines per task (``ALL``: every retained line); at most ``max_bytes``."""

    request: int
    source: str
    service: str
    tail: int
    max_bytes: int
    cursors: tuple = ()
    SCHEMA = (("request", U64), ("source", NODE_ID), ("service", text(MAX_SERVICE_NAME, 1)),
              ("tail", int_range(ALL, MAX_TAIL)), ("max_bytes", int_range(1, MAX_REPLY_BYTES)),
              ("cursors", seq(nested(LogCursor), MAX_CURSORS)))

    def __post_init__(self) -> None:
        keys = {(c.task, c.stream) for c in self.cursors}
        if len(keys) != len(self.cursors):
            raise WireError("a stream appears twice among the cursors")


@struct
@dataclass(frozen=True, slots=True)
class LogLine(WireStruct):
    at: float
    """Unix time the line arrived at the node (0: unknown)."""
    text: str
    SCHEMA = (("at", number), ("text", text(MAX_LINE_CHARS)))


@struct
@dataclass(frozen=True, slots=True)
class LogChunk(WireStruct):
    """Lines of one task stream from offset ``start``; reading goes on at ``next``."""

    task: str
    slot: int
    stream: str
    start: int
    next: int
    lines: tuple = ()
    SCHEMA = (("task", TASK_ID), ("slot", uint(32)), ("stream", STREAM), ("start", U64), ("next", U64),
              ("lines", seq(nested(LogLine), MAX_LINES)))

    def __post_init__(self) -> None:
        if self.next < self.start:
            raise WireError("a log chunk ends before it starts")


@message(49)
@dataclass(frozen=True, slots=True)
class LogsReply(WireStruct):
    """The answer to request ``request``; ``done``: nothing more is there right now."""

    request: int
    source: str
    chunks: tuple = ()
    done: bool = True
    error: str = ""
    SCHEMA = (("request", U64), ("source", NODE_ID), ("chunks", seq(nested(LogChunk), MAX_CHUNKS)),
              ("done", boolean), ("error", text(MAX_ERROR)))

    def __post_init__(self) -> None:
        if reply_cost(self.chunks) > MAX_REPLY_BYTES:
            raise WireError(f"a logs reply carries more than {MAX_REPLY_BYTES} bytes")
        keys = {(c.task, c.stream) for c in self.chunks}
        if len(keys) != len(self.chunks):
            raise WireError("a stream appears twice in a logs reply")


def reply_cost(chunks: tuple) -> int:
    """A lower bound of the reply's budget use (characters, not bytes): what a peer is held to."""
    return sum(CHUNK_OVERHEAD + sum(len(line.text) + LINE_OVERHEAD for line in c.lines) for c in chunks)


LOGS_MESSAGES = (LogsRequest, LogsReply)
