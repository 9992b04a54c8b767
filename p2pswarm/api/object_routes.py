"""``/v1/secrets`` and ``/v1/configs``: the routes behind ``p2pswarm secret`` and ``p2pswarm config``.

A create carries the data base64-encoded in the JSON body (never in the path, which the audit log
records).  A secret is sealed here, with the cluster's newest keyring key, before the command is
proposed (:mod:`p2pswarm.security.secretbox`); a plaintext cluster refuses secrets with one line.
Reads answer from this node's applied state and never return a secret's data; a config's
inspect does (configs are not secret, as in Docker).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from p2pswarm.api import paths
from p2pswarm.api.common import json_body, one_line, raft_call, require_driver
from p2pswarm.api.server import HttpError, Request, Response
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.checks import LABEL_KEY, LABEL_KEY_WHAT, SpecError, pairs, text
from p2pswarm.cluster.objects import KINDS, MAX_DATA
from p2pswarm.cluster.workload import OBJECT_NAME, OBJECT_NAME_WHAT
from p2pswarm.consensus.requests import command_id
from p2pswarm.node.view import NodeView

PLAINTEXT = ("this cluster is plaintext (its nodes run with --insecure): it has no cluster key to seal secrets "
             "with; store non-secret data as a config (`p2pswarm config create`), or run a secure cluster")


class ObjectRoutes(paths.PatternRoutes):
    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.table: dict[str, Any] = {}
        for kind in KINDS:
            base = f"/v1/{kind}s"
            self.table.update({
                f"GET {base}": lambda request, kind=kind: self.ls(kind),
                f"POST {base}": lambda request, kind=kind: self.create(request, kind),
                f"GET {base}/{{name}}": lambda request, name, kind=kind: self.inspect(kind, name),
                f"DELETE {base}/{{name}}": lambda request, name, kind=kind: self.rm(kind, name),
            })

    def _state(self) -> Any:
        return require_driver(self.node).cluster

    def _find(self, kind: str, name: str) -> Any:
        obj = self._state().objects.find(kind, name)
        if obj is None:
            raise HttpError(404, f"{kind} {name} does not exist (see `p2pswarm {kind} ls`)")
        return obj

    async def _write(self, command: dict) -> Any:
        result = await raft_call(require_driver(self.node).write_cluster(command))
        if not result.ok:
            raise HttpError(400, result.error)
        return result.value

    def ls(self, kind: str) -> Response:
        return Response.json({f"{kind}s": self._state().object_summaries(kind)})

    def inspect(self, kind: str, name: str) -> Response:
        obj = self._find(kind, name)
        out = obj.summary(self._state().object_users(kind).get(obj.name, []))
        if kind == "config":
            out["data"] = base64.b64encode(obj.data).decode()
        return Response.json(out)

    async def rm(self, kind: str, name: str) -> Response:
        obj = self._find(kind, name)
        remove = cmd.remove_secret if kind == "secret" else cmd.remove_config
        await self._write(remove(command_id("api"), time.time(), obj.name))
        return Response.json({"removed": obj.name, "id": obj.id})

    async def create(self, request: Request, kind: str) -> Response:
        body = json_body(request)
        body = body if isinstance(body, dict) else {}
        try:
            name = text("name", body.get("name"), 64, OBJECT_NAME, OBJECT_NAME_WHAT)
            labels = dict(pairs("labels", body.get("labels") or {}, 64, LABEL_KEY, LABEL_KEY_WHAT, 256))
        except SpecError as exc:
            raise HttpError(400, str(exc)) from None
        data = _data(body.get("data"), kind)
        if name in self._state().objects.of(kind):  # the state machine refuses it too; this spares a seal
            raise HttpError(409, f"{kind} {name} already exists ({kind}s are immutable: create one under a new "
                                 f"name and update the services that use it)")
        from p2pswarm.security.secretbox import new_object_id
        object_id = new_object_id()
        now = time.time()
        if kind == "config":
            command = cmd.create_config(command_id("api"), now, name, object_id, data, labels)
        else:
            sealed, key_id = await self._seal(name, object_id, data)
            command = cmd.create_secret(command_id("api"), now, name, object_id, sealed, key_id, labels)
        value = await self._write(command)
        return Response.json({"name": name, "id": value["id"], "version": value["version"]})

    async def _seal(self, name: str, object_id: str, data: bytes) -> tuple[bytes, int]:
        from p2pswarm.security.errors import SecurityError
        if self.node.security is None:
            raise HttpError(409, PLAINTEXT)
        try:
            return await raft_call(self.node.security.keyring.seal(require_driver(self.node), name, object_id, data))
        except SecurityError as exc:
            raise HttpError(503 if exc.code == "unavailable" else 409, one_line(exc)) from None


def _data(value: Any, kind: str) -> bytes:
    """The body's base64 ``data``: 1 to MAX_DATA bytes."""
    try:
        data = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        data = None
    if data is None:
        raise HttpError(400, f'body must be {{"name": NAME, "data": "<the {kind} in base64>"}}')
    if not 1 <= len(data) <= MAX_DATA:
        raise HttpError(400, f"a {kind} holds 1 to {MAX_DATA} bytes ({MAX_DATA // 1024} KiB), got {len(data)}")
    return data
