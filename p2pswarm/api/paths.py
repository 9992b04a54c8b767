"""Endpoint patterns: ``"METHOD /v1/services/{name}/tasks"``, one string per route.

The routers dispatch through these patterns and list them (``Router.endpoints``), and
the role table (:mod:`p2pswarm.api.roles`) is keyed by the same strings, so a route
cannot exist without a role.  ``{x}`` matches one non-empty path segment (percent-decoded
for the handler); everything else matches literally.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Callable, Mapping

from p2pswarm.api.server import HttpError


def split(endpoint: str) -> tuple[str, str]:
    """``("GET", "/v1/info")`` from ``"GET /v1/info"``."""
    method, _, pattern = endpoint.partition(" ")
    return method, pattern


def match(pattern: str, path: str) -> list[str] | None:
    """The decoded ``{x}`` segments when ``path`` matches ``pattern``, else None."""
    want, got = pattern.strip("/").split("/"), path.strip("/").split("/")
    if len(want) != len(got):
        return None
    args = []
    for w, g in zip(want, got):
        if w.startswith("{") and w.endswith("}"):
            if not g:
                return None
            args.append(urllib.parse.unquote(g))
        elif w != g:
            return None
    return args


def resolve(table: Mapping[str, Callable[..., Any]], method: str,
            path: str) -> tuple[str, Callable[..., Any], list[str]] | tuple[None, None, int]:
    """``(endpoint, handler, args)`` for a request, or ``(None, None, 404 or 405)``."""
    status = 404
    for endpoint, handler in table.items():
        want, pattern = split(endpoint)
        args = match(pattern, path)
        if args is None:
            continue
        if want == method:
            return endpoint, handler, args
        status = 405
    return None, None, status


class PatternRoutes:
    """A group of routes dispatched by pattern; subclasses fill :attr:`table` and say what they handle."""

    table: dict[str, Callable[..., Any]]

    def handles(self, path: str) -> bool:
        return any(match(split(endpoint)[1], path) is not None for endpoint in self.table)

    def endpoint(self, request: Any) -> str | None:
        return resolve(self.table, request.method, request.path)[0]

    def __call__(self, request: Any) -> Any:
        found = resolve(self.table, request.method, request.path)
        if found[0] is None:
            raise HttpError(found[2], f"no such endpoint: {request.method} {request.path}")
        _, handler, args = found
        return handler(request, *args)
