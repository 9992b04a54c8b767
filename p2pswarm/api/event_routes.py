"""``GET /v1/events``: this node's event history (:mod:`p2pswarm.events`), paged by a cursor.

``since`` / ``until`` (unix seconds, RFC 3339 or a duration back from now), ``type`` (comma-separated
:data:`p2pswarm.events.derive.TYPES`) and ``after`` (the cursor the previous call returned) are optional.
Without ``since`` or ``after`` the answer holds no events, only the cursor of the newest one: following
starts from now, as ``docker events`` does.  Following is polling with the cursor, as ``service logs -f``
does: nothing is kept here between calls.
"""

from __future__ import annotations

import time
import urllib.parse

from p2pswarm.api.server import HttpError, Request, Response
from p2pswarm.events.derive import TYPES
from p2pswarm.events.timespec import parse_time
from p2pswarm.node.view import NodeView

MAX_CURSOR = 2**62


class EventRoutes:
    def __init__(self, node: NodeView) -> None:
        self.node = node

    def events(self, request: Request) -> Response:
        events = self.node.events
        if events is None:
            raise HttpError(503, "this node's event history is not open yet; retry in a moment")
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(request.query).items()}
        now = time.time()
        since, until = _time(query, "since", now), _time(query, "until", now)
        types = [t for t in query.get("type", "").split(",") if t]
        for t in types:
            if t not in TYPES:
                raise HttpError(400, f"type: expected one of {', '.join(TYPES)}, got {t[:40]!r}")
        after = query.get("after")
        if after is not None and not (after.isdigit() and int(after) <= MAX_CURSOR):
            raise HttpError(400, f"after must be the cursor the previous call returned, got {after[:40]!r}")
        if since is None and after is None:
            return Response.json({"events": [], "cursor": events.latest(), "more": False, "node": self.node.name})
        found, cursor, more = events.query(after=int(after or 0), since=since, until=until, types=types)
        return Response.json({"events": found, "cursor": cursor, "more": more, "node": self.node.name})


def _time(query: dict[str, str], name: str, now: float) -> float | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        return parse_time(value, now)
    except ValueError as exc:
        raise HttpError(400, f"{name}: {exc}") from None
