"""The API's endpoints: a thin mapping from HTTP requests to the node's views and controls.

The routes read the node only through :class:`p2pswarm.node.view.NodeView`, so that
they can be tested without sockets against a fake with the same members.  Raft
endpoints (``/v1/cluster``, ``/v1/kv/KEY``) are coroutines: a write answers only
once it is committed and applied.

Security: ``GET /v1/security`` (this node's certificate, admitted peers, revoked
nodes, counters), ``GET /v1/security/join-token`` and ``POST /v1/security/join-token``
with ``{"rotate": true, "ttl": SECONDS or null}``, ``GET /v1/security/ca`` (trusted CAs, rotation
progress) and ``POST /v1/security/ca`` with ``{"rotate": true}``.  The token is a secret: the API
is a unix socket of mode 0600, readable by the node's user only.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse

from p2pswarm.api.access_routes import AccessRoutes
from p2pswarm.api.backup_routes import BackupRoutes
from p2pswarm.api.common import json_body, one_line, query_flag, raft_call, require_driver, require_security
from p2pswarm.api.event_routes import EventRoutes
from p2pswarm.api.metrics import render_metrics
from p2pswarm.api.object_routes import ObjectRoutes
from p2pswarm.api.server import Handler, HttpError, Reply, Request, Response
from p2pswarm.api.service_routes import ServiceRoutes
from p2pswarm.api.top_routes import TopRoutes
from p2pswarm.api.volume_routes import VolumeRoutes
from p2pswarm.node.view import NodeView

MAX_KEY_LEN = 256
MAX_VALUE_LEN = 64 * 1024
KV_PREFIX = "/v1/kv/"
MAX_BENCH_WRITES = 1_000_000
MAX_BENCH_CONCURRENCY = 1024
MAX_TOKEN_TTL = 10 * 365 * 86400


class Router:
    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.routes: dict[str, dict[str, Handler]] = {
            "/v1/info": {"GET": self.info},
            "/v1/members": {"GET": self.members},
            "/v1/shutdown": {"POST": self.shutdown},
            "/v1/faults": {"GET": self.faults, "POST": self.set_faults, "DELETE": self.heal_faults},
            "/metrics": {"GET": self.metrics},
            "/v1/cluster": {"GET": self.cluster},
            "/v1/bench/writes": {"POST": self.bench_writes},
            "/v1/mesh": {"GET": self.mesh},
            "/v1/security": {"GET": self.security},
            "/v1/security/join-token": {"GET": self.join_token, "POST": self.rotate_join_token},
            "/v1/security/ca": {"GET": self.ca, "POST": self.rotate_ca},
        }
        self.kv_routes: dict[str, Handler] = {"GET": self.kv_get, "PUT": self.kv_put, "DELETE": self.kv_delete}
        self.services = ServiceRoutes(node)
        self.routes["/v1/top"] = {"GET": TopRoutes(node).top}
        self.routes["/v1/events"] = {"GET": EventRoutes(node).events}
        backups = BackupRoutes(node)
        self.routes["/v1/cluster/backup"] = {"POST": backups.backup}
        self.routes["/v1/cluster/restore"] = {"POST": backups.restore}
        self.groups = (self.services, AccessRoutes(node), VolumeRoutes(node), ObjectRoutes(node))
        """Route groups dispatched by pattern (:mod:`p2pswarm.api.paths`)."""

    def endpoints(self) -> list[str]:
        """Every endpoint this router serves, as ``"METHOD /pattern"`` (the keys of :mod:`p2pswarm.api.roles`)."""
        static = [f"{method} {path}" for path, methods in self.routes.items() for method in methods]
        kv = [f"{method} {KV_PREFIX}{{key}}" for method in self.kv_routes]
        return static + kv + [e for group in self.groups for e in group.table]

    def endpoint(self, request: Request) -> str | None:
        """The endpoint a request is for, or None when no route serves it (a 404 or 405)."""
        for group in self.groups:
            if group.handles(request.path):
                return group.endpoint(request)
        if request.path.startswith(KV_PREFIX):
            return f"{request.method} {KV_PREFIX}{{key}}" if request.method in self.kv_routes else None
        methods = self.routes.get(request.path.rstrip("/") or "/", {})
        return f"{request.method} {request.path.rstrip('/') or '/'}" if request.method in methods else None

    def __call__(self, request: Request) -> Reply:
        for group in self.groups:
            if group.handles(request.path):
                return group(request)
        if request.path.startswith(KV_PREFIX):
            handler = self.kv_routes.get(request.method)
            if handler is None:
                raise HttpError(405, f"{request.path} accepts {', '.join(sorted(self.kv_routes))}, "
                                     f"not {request.method}")
            return handler(request)
        methods = self.routes.get(request.path.rstrip("/") or "/")
        if methods is None:
            raise HttpError(404, f"no such endpoint: {request.path}")
        handler = methods.get(request.method)
        if handler is None:
            raise HttpError(405, f"{request.path} accepts {', '.join(sorted(methods))}, not {request.method}")
        return handler(request)

    def info(self, request: Request) -> Response:
        return Response.json(self.node.info())

    def mesh(self, request: Request) -> Response:
        """This node's mesh routes (every published port's backends and why) and data-plane status."""
        return Response.json(self.node.mesh_view())

    def members(self, request: Request) -> Response:
        return Response.json({"members": self.node.member_views()})

    def shutdown(self, request: Request) -> Response:
        response = Response.json({"stopping": True, "id": self.node.info()["id"]}, 202)
        response.after.append(self.node.request_shutdown)
        return response

    def faults(self, request: Request) -> Response:
        return Response.json(self.node.fault_settings())

    def set_faults(self, request: Request) -> Response:
        settings = json_body(request)
        if not isinstance(settings, dict):
            raise HttpError(400, "fault settings must be a JSON object")
        try:
            return Response.json(self.node.configure_faults(settings))
        except (ValueError, TypeError) as exc:
            raise HttpError(400, one_line(exc)) from None

    def heal_faults(self, request: Request) -> Response:
        return Response.json(self.node.heal_faults())

    def metrics(self, request: Request) -> Response:
        return Response.text(render_metrics(self.node.metrics_snapshot(), self.node))


    # ------------------------------------------------------------ security

    def security(self, request: Request) -> Response:
        return Response.json(self.node.security_view())

    def join_token(self, request: Request) -> Response:
        from p2pswarm.security.errors import SecurityError
        try:
            return Response.json(require_security(self.node).join_token())
        except SecurityError as exc:
            raise HttpError(503, one_line(exc)) from None

    async def rotate_join_token(self, request: Request) -> Response:
        from p2pswarm.security.errors import SecurityError
        body = json_body(request)
        body = body if isinstance(body, dict) else {}
        ttl = body.get("ttl")
        if body.get("rotate") is not True:
            raise HttpError(400, 'body must be {"rotate": true} (with an optional "ttl" in seconds)')
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                                or not 1 <= ttl <= MAX_TOKEN_TTL):
            raise HttpError(400, "ttl must be a number of seconds from 1 to 10 years, or null for no expiry")
        host = require_security(self.node)
        try:
            return Response.json(await raft_call(host.rotate_token(self.node.raft_driver(), ttl)))
        except SecurityError as exc:
            raise HttpError(503 if exc.code == "unavailable" else 409, one_line(exc)) from None

    def ca(self, request: Request) -> Response:
        from p2pswarm.security.errors import SecurityError
        try:
            return Response.json(require_security(self.node).ca_view(self.node.raft_driver(), self.node.swim))
        except SecurityError as exc:
            raise HttpError(503, one_line(exc)) from None

    async def rotate_ca(self, request: Request) -> Response:
        from p2pswarm.security.errors import SecurityError
        body = json_body(request)
        if not isinstance(body, dict) or body.get("rotate") is not True:
            raise HttpError(400, 'body must be {"rotate": true}')
        host = require_security(self.node)
        try:
            return Response.json(await raft_call(host.rotate_ca(self.node.raft_driver())))
        except SecurityError as exc:
            raise HttpError(503 if exc.code == "unavailable" else 409, one_line(exc)) from None

    # ------------------------------------------------------------ raft

    def cluster(self, request: Request) -> Response:
        return Response.json(require_driver(self.node).status())

    async def kv_put(self, request: Request) -> Response:
        key = kv_key(request)
        body = json_body(request)
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str) or len(value) > MAX_VALUE_LEN:
            raise HttpError(400, f'body must be {{"value": "<text of at most {MAX_VALUE_LEN} characters>"}}')
        await raft_call(require_driver(self.node).write("put", key, value))
        return Response.json({"key": key, "value": value})

    async def kv_delete(self, request: Request) -> Response:
        key = kv_key(request)
        existed = await raft_call(require_driver(self.node).write("delete", key))
        return Response.json({"key": key, "deleted": bool(existed)})

    async def kv_get(self, request: Request) -> Response:
        key = kv_key(request)
        driver = require_driver(self.node)
        stale = query_flag(request, "stale")
        value = driver.kv.get(key) if stale else await raft_call(driver.read(key))
        if value is None:
            raise HttpError(404, f"no such key: {key}")
        return Response.json({"key": key, "value": value, "stale": stale})

    async def bench_writes(self, request: Request) -> Response:
        """Benchmark hook: ``count`` puts from ``concurrency`` writers inside this node, each acknowledged
        only once committed (fsynced on a quorum) and applied; reports commits per second."""
        body = json_body(request)
        body = body if isinstance(body, dict) else {}
        count, concurrency = body.get("count", 1000), body.get("concurrency", 64)
        size = body.get("value_bytes", 16)
        for name, value, limit in (("count", count, MAX_BENCH_WRITES), ("concurrency", concurrency,
                                                                      MAX_BENCH_CONCURRENCY),
                                   ("value_bytes", size, MAX_VALUE_LEN)):
            if type(value) is not int or not 1 <= value <= limit:
                raise HttpError(400, f"{name} must be an integer from 1 to {limit}")
        driver = require_driver(self.node)
        value, todo, errors = "x" * size, iter(range(count)), []

        async def writer(w: int) -> None:
            for i in todo:
                try:
                    await driver.write("put", f"bench/{w}/{i % 64}", value)
                except Exception as exc:
                    errors.append(one_line(exc))

        start = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(concurrency)))
        seconds = time.perf_counter() - start
        done = count - len(errors)
        return Response.json({"writes": done, "errors": len(errors), "first_error": errors[0] if errors else None,
                              "seconds": round(seconds, 4), "commits_per_s": round(done / seconds, 1)})


def kv_key(request: Request) -> str:
    key = urllib.parse.unquote(request.path[len(KV_PREFIX):])
    if not 1 <= len(key) <= MAX_KEY_LEN or any(ord(c) < 32 for c in key):
        raise HttpError(400, f"a key is 1 to {MAX_KEY_LEN} printable characters, got {key[:40]!r}")
    return key
