"""The API's endpoints: a thin mapping from HTTP requests to the node's views and controls.

The node is duck-typed (``info``, ``member_views``, ``request_shutdown``,
``fault_settings``, ``configure_faults``, ``heal_faults``, ``metrics_snapshot``)
so that the routes can be tested without sockets.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from p2pswarm.api.metrics import render_metrics
from p2pswarm.api.server import HttpError, Request, Response


class Router:
    def __init__(self, node: Any) -> None:
        self.node = node
        self.routes: dict[str, dict[str, Callable[[Request], Response]]] = {
            "/v1/info": {"GET": self.info},
            "/v1/members": {"GET": self.members},
            "/v1/shutdown": {"POST": self.shutdown},
            "/v1/faults": {"GET": self.faults, "POST": self.set_faults, "DELETE": self.heal_faults},
            "/metrics": {"GET": self.metrics},
        }

    def __call__(self, request: Request) -> Response:
        methods = self.routes.get(request.path.rstrip("/") or "/")
        if methods is None:
            raise HttpError(404, f"no such endpoint: {request.path}")
        handler = methods.get(request.method)
        if handler is None:
            raise HttpError(405, f"{request.path} accepts {', '.join(sorted(methods))}, not {request.method}")
        return handler(request)

    def info(self, request: Request) -> Response:
        return Response.json(self.node.info())

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
        return Response.text(render_metrics(self.node.metrics_snapshot()))


def json_body(request: Request) -> Any:
    try:
        return json.loads(request.body.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, f"body is not valid JSON: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
