"""The API of a locked node (``up --autolock`` restarted without its unlock key).

Until the operator gives the unlock key nothing else runs (no gossip, no Raft), so
the only endpoints are::

    GET  /v1/info      {"state": "locked", "id", "name", "pid", "data_dir", ...}
    POST /v1/unlock    {"key": "P2PSU-1-..."}: 200 {"unlocked": true}, or 400 (malformed)
                       / 403 (wrong key) with one line; the node stays locked then
    POST /v1/shutdown  stop the locked node (`p2pswarm down`)

Everything else answers 503 with the line telling what to do.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from p2pswarm.api.server import HttpError, Request, Response
from p2pswarm.node.datadir import DataDirError
from p2pswarm.security.errors import SecurityError

LOCKED = "this node is locked (encryption at rest): run `p2pswarm unlock` with its unlock key first"


class LockRoutes:
    def __init__(self, info: Callable[[], dict[str, Any]], unlock: Callable[[str], object],
                 on_unlocked: Callable[[], None], shutdown: Callable[[], None]) -> None:
        """``unlock(key_text)`` raises a one-line error (``code`` ``unlock_key`` for a malformed key)
        for a key that does not open this node's data; ``on_unlocked`` runs once the answer is sent."""
        self._info, self._unlock, self._on_unlocked, self._shutdown = info, unlock, on_unlocked, shutdown

    def __call__(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        routes = {"/v1/info": ("GET", self.info), "/v1/unlock": ("POST", self.unlock),
                  "/v1/shutdown": ("POST", self.shutdown)}
        if path not in routes:
            raise HttpError(503, LOCKED)
        method, handler = routes[path]
        if request.method != method:
            raise HttpError(405, f"{request.path} accepts {method}, not {request.method}")
        return handler(request)

    def info(self, request: Request) -> Response:
        return Response.json({**self._info(), "state": "locked"})

    def unlock(self, request: Request) -> Response:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            raise HttpError(400, "the body must be JSON: {\"key\": \"P2PSU-1-...\"}") from None
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key.strip():
            raise HttpError(400, "missing \"key\": send {\"key\": \"P2PSU-1-...\"}")
        try:
            self._unlock(key)
        except (SecurityError, DataDirError) as exc:  # malformed key, wrong key, corrupt or unreadable lock file
            code = exc.code if isinstance(exc, SecurityError) else ""
            raise HttpError(400 if code == "unlock_key" else 403, str(exc).splitlines()[0]) from None
        return Response(200, (json.dumps({"unlocked": True}) + "\n").encode(), after=[self._on_unlocked])

    def shutdown(self, request: Request) -> Response:
        return Response(202, (json.dumps({"stopping": True}) + "\n").encode(), after=[self._shutdown])
