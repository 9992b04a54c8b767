"""What every route group shares: reading a request's body and flags, one-line errors, and the node's
Raft driver and security host with the HTTP answer a route gives when they are missing.

Its own module so that the route groups (:mod:`p2pswarm.api.routes`, :mod:`p2pswarm.api.service_routes`,
:mod:`p2pswarm.api.access_routes`) import it instead of each other.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from p2pswarm.api.server import HttpError, Request


def query_flag(request: Request, name: str) -> bool:
    values = urllib.parse.parse_qs(request.query).get(name, [])
    return bool(values) and values[-1].lower() not in ("0", "false", "no", "")


def json_body(request: Request) -> Any:
    try:
        return json.loads(request.body.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, f"body is not valid JSON: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def require_driver(node: Any) -> Any:
    """The node's Raft driver; a 503 while the node has not learned its cluster yet."""
    driver = node.raft_driver()
    if driver is None:
        raise HttpError(503, "this node has not joined a raft cluster yet (it learns the cluster from its "
                             "peers); retry in a moment or check `p2pswarm node ls`")
    return driver


def require_security(node: Any) -> Any:
    """The node's security host; a 409 in a plaintext cluster."""
    if node.security is None:
        raise HttpError(409, "this cluster is plaintext (its nodes run with --insecure): it has no join token; "
                             "nodes join it with `p2pswarm up --peers ADDR --insecure`")
    return node.security


async def raft_call(awaitable: Any) -> Any:
    """Await a Raft write or read: unavailable is a 503, a refused command a 400."""
    from p2pswarm.consensus.driver import RaftUnavailable
    try:
        return await awaitable
    except RaftUnavailable as exc:
        raise HttpError(503, one_line(exc)) from None
    except ValueError as exc:
        raise HttpError(400, one_line(exc)) from None
