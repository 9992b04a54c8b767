"""``/v1/volumes``: the named volumes of the node that answers (the routes behind ``p2pswarm volume``).

Volumes are local to a node (:mod:`p2pswarm.runtime.volumes`), and nodes do not ask each other
for them: each node answers for its own.  ``GET /v1/volumes?node=X`` for another node is refused
with the way to reach it (run the command on that node, or point ``--host``/``--context`` at its
API).  A volume is in use while a task of this node mounts it (:func:`volume_users`, from the
cluster state this node applied); ``DELETE /v1/volumes/NAME`` is refused then, naming the tasks.
Sizes are counted in a worker thread (a volume may hold many files; the node's loop goes on).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

from p2pswarm.api import paths
from p2pswarm.api.common import require_driver
from p2pswarm.api.server import HttpError, Request, Response
from p2pswarm.cluster.model import TERMINAL
from p2pswarm.cluster.workload import OBJECT_NAME, OBJECT_NAME_WHAT
from p2pswarm.node.view import NodeView

VOLUMES = "/v1/volumes"


def volume_users(state: Any, node_id: str) -> dict[str, list[str]]:
    """Volume name -> the tasks of ``node_id`` that use it (``web.1``; ``web`` for a global service's task):
    a task that has not ended, by the spec it runs; an ended task that its service keeps in its history, by
    the service's current spec (as Docker counts a service's stopped containers: a crash-looping task
    between two restarts still uses its volume)."""
    users: dict[str, list[str]] = {}
    for task in state.tasks_on(node_id):
        if task.state not in TERMINAL:
            spec = state.spec_of(task)
        else:
            svc = state.services.get(task.service)
            spec = svc.spec if svc is not None else None
        for mount in spec.mounts if spec is not None else ():
            label = f"{task.service}.{task.slot}" if task.slot else task.service
            if mount.type == "volume" and label not in users.setdefault(mount.source, []):
                users[mount.source].append(label)
    return users


class VolumeRoutes(paths.PatternRoutes):
    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.table: dict[str, Any] = {f"GET {VOLUMES}": self.ls, f"DELETE {VOLUMES}/{{name}}": self.rm}

    def handles(self, path: str) -> bool:
        return path == VOLUMES or path.startswith(VOLUMES + "/")

    def _volumes(self) -> Any:
        agent = self.node.agent
        if agent is None:
            raise HttpError(503, "this node's agent is not running yet; retry in a moment")
        return agent.volumes

    def _check_node(self, wanted: str) -> None:
        me, name = self.node.node_id, self.node.name
        if wanted and wanted not in (me, name) and not me.startswith(wanted):
            raise HttpError(400, f"volumes are listed by the node that holds them, and this is node {name} "
                                 f"({me[:12]}): run `p2pswarm volume ls` on node {wanted}, or point --host or "
                                 f"--context at its API")

    async def ls(self, request: Request) -> Response:
        query = urllib.parse.parse_qs(request.query)
        self._check_node((query.get("node") or [""])[-1])
        volumes = self._volumes()
        driver = self.node.raft_driver()
        users = volume_users(driver.cluster, self.node.node_id) if driver is not None else {}
        rows = []
        for name in volumes.names():
            size, complete = await asyncio.to_thread(volumes.size, name)
            rows.append({"name": name, "path": str(volumes.path(name)), "size": size, "size_complete": complete,
                         "in_use": users.get(name, [])})
        return Response.json({"node": self.node.node_id, "node_name": self.node.name, "volumes": rows,
                              "in_use_known": driver is not None})

    async def rm(self, request: Request, name: str) -> Response:
        if not OBJECT_NAME.fullmatch(name):
            raise HttpError(400, f"volume name {name[:70]!r} {OBJECT_NAME_WHAT}")
        volumes = self._volumes()
        users = volume_users(require_driver(self.node).cluster, self.node.node_id).get(name)
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise HttpError(409, f"volume {name} is in use by task(s) {shown} on node {self.node.name}; remove "
                                 "or update the services that mount it first")
        try:
            removed = await asyncio.to_thread(volumes.remove, name)
        except OSError as exc:
            raise HttpError(500, f"cannot remove volume {name}: {exc.strerror or exc}") from None
        if not removed:
            raise HttpError(404, f"volume {name} does not exist on node {self.node.name} (see `p2pswarm volume ls`)")
        return Response.json({"removed": name, "node": self.node.node_id})
