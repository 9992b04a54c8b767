"""API calls a worker forwards to a Raft member (kinds: :data:`p2pswarm.wire.KINDS`).

A worker outside the Raft group holds no replica of the cluster state, so an API call that reads or
writes it (:data:`p2pswarm.api.forward.FORWARDED`) goes, as an :class:`ApiCall`, to a Raft member
over the node transport (CURVE-authenticated in a secure cluster); the member runs it through its
own router and answers with one :class:`ApiAnswer`.  Fields are bounded as the API's own limits
(:mod:`p2pswarm.api.server`); anything else is a WireError, dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pswarm.api.server import MAX_BODY_BYTES, MAX_HEADER_BYTES
from p2pswarm.wire import MAX_MESSAGE_BYTES, NODE_ID, WireStruct, blob, message, text, uint

MAX_ANSWER_BYTES = MAX_MESSAGE_BYTES - 4096
"""The largest answer body forwarded back (a larger one is a one-line 502 at the worker)."""
MAX_PATH = MAX_HEADER_BYTES // 2
MAX_WHO = 256
U64 = uint(64)


@message(80)
@dataclass(frozen=True, slots=True)
class ApiCall(WireStruct):
    """One API request ``source`` (a worker) forwards: run it as ``role`` for ``caller`` and answer ``call``."""

    call: int
    source: str
    method: str
    path: str
    query: str
    body: bytes
    caller: str
    role: str
    SCHEMA = (("call", U64), ("source", NODE_ID), ("method", text(16, 1)), ("path", text(MAX_PATH, 1)),
              ("query", text(MAX_PATH)), ("body", blob(MAX_BODY_BYTES)), ("caller", text(MAX_WHO)),
              ("role", text(32)))


@message(81)
@dataclass(frozen=True, slots=True)
class ApiAnswer(WireStruct):
    """The member's answer to ``call``: an HTTP status, content type and body, as its API would have sent them."""

    call: int
    source: str
    status: int
    content_type: str
    body: bytes
    SCHEMA = (("call", U64), ("source", NODE_ID), ("status", uint(16)), ("content_type", text(128)),
              ("body", blob(MAX_ANSWER_BYTES)))


API_MESSAGES = (ApiCall, ApiAnswer)
