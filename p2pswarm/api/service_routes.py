"""``/v1/services`` and ``/v1/nodes/ID``: the services API (the routes behind ``p2pswarm service``).

Writes become cluster commands (:mod:`p2pswarm.cluster.commands`) stamped with this
node's wall clock, committed through Raft (forwarded to the leader when this node
is not it); a refusal by the state machine is a 400 with its one line.  Reads
answer from this node's applied state: every node is a voter or learner, so any
node answers, possibly a moment behind the leader.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from functools import partial
from typing import Any

from p2pswarm.api import paths
from p2pswarm.api.common import json_body, query_flag, raft_call, require_driver
from p2pswarm.api.server import HttpError, Reply, Request, Response
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.capabilities import engine_text, isolation_text
from p2pswarm.cluster.checks import SpecError
from p2pswarm.cluster.spec import MAX_REPLICAS, ServiceSpec, check_mesh_ports, check_own_ports
from p2pswarm.cluster.stack import stack_of
from p2pswarm.consensus.requests import command_id
from p2pswarm.membership.messages import LIVE
from p2pswarm.node.view import NodeView
from p2pswarm.runtime import volumes

SERVICES = "/v1/services"
NODES = "/v1/nodes/"


NODE_ID_IN_TEXT = re.compile(r"\b[0-9a-f]{16}\b")
"""A node id (16 hex characters, :func:`p2pswarm.node.datadir.new_node_id`) inside a message."""


def named_nodes(text: str, nodes: Any) -> str:
    """``text`` with each known node id replaced by that node's name: errors are written by the scheduler
    and agents in ids, read by people in names."""
    return NODE_ID_IN_TEXT.sub(lambda m: nodes[m[0]].name if m[0] in nodes and nodes[m[0]].name else m[0], text)


class ServiceRoutes(paths.PatternRoutes):
    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.table: dict[str, Any] = {
            f"GET {SERVICES}": self.ls, f"POST {SERVICES}": self.create,
            f"GET {SERVICES}/{{name}}": self.inspect, f"DELETE {SERVICES}/{{name}}": self.rm,
            **{f"GET {SERVICES}/{{name}}/{what}": partial(self.sub_get, what=what) for what in ("tasks", "logs")},
            **{f"POST {SERVICES}/{{name}}/{what}": partial(self.sub_post, what=what)
               for what in ("update", "scale", "rollback", "logs")},
            f"GET {NODES}{{node}}": self.node_inspect, f"DELETE {NODES}{{node}}": self.node_rm,
            f"POST {NODES}{{node}}/update": partial(self.node_update, what="update"),
        }
        """Every endpoint (:mod:`p2pswarm.api.paths`) and its handler."""

    def handles(self, path: str) -> bool:
        return path == SERVICES or path.startswith(SERVICES + "/") or path.startswith(NODES)

    # ------------------------------------------------------------ helpers

    def _state(self) -> Any:
        return require_driver(self.node).cluster

    def _service(self, name: str) -> Any:
        svc = self._state().services.get(name)
        if svc is None:
            raise HttpError(404, f"service {name} does not exist (see `p2pswarm service ls`)")
        return svc

    async def _write(self, command: dict) -> Any:
        try:
            cmd.check_size(command)  # refused here in one line, not by the Raft leader
        except SpecError as exc:
            raise HttpError(400, str(exc)) from None
        result = await raft_call(require_driver(self.node).write_cluster(command))
        if not result.ok:
            raise HttpError(400, result.error)
        return result.value

    def _spec(self, body: Any) -> ServiceSpec:
        try:
            spec = ServiceSpec.from_dict(body.get("spec") if isinstance(body, dict) else None)
        except SpecError as exc:
            raise HttpError(400, str(exc)) from None
        if self.node.security is None and any(p.encrypted for p in spec.ports):
            raise HttpError(400, "ports: encrypted forwarding uses the cluster's certificates, and this cluster "
                                 "is plaintext (--insecure): remove the encrypted option")
        refused = volumes.refusal(spec.mounts, process=spec.image is None)
        if refused:
            raise HttpError(400, refused)
        mesh = {(p.published, p.protocol): svc.name for svc in self._state().services.values()
                if svc.name != spec.name for p in svc.spec.ports if p.mode == "ingress"}
        # an update is refused only the node ports it adds: one it already publishes (a member that came
        # later holds it) must not block changing the image
        current = self._state().services.get(spec.name)
        kept = {(p.published, p.protocol) for p in current.spec.ports} if current is not None else set()
        try:
            check_mesh_ports(spec, mesh)
            check_own_ports(spec, {k: v for k, v in self.node.own_ports().items() if k not in kept})
        except SpecError as exc:
            raise HttpError(400, str(exc)) from None
        return spec

    def _port_errors(self, spec: ServiceSpec) -> list[dict[str, str]]:
        """The published ports of ``spec`` that some live node's mesh cannot listen on, and why."""
        keys = {f"{p.published}/udp" if p.protocol == "udp" else str(p.published) for p in spec.ports
                if p.mode == "ingress"}
        nodes = self._state().nodes
        rows = [{"node": nodes[nid].name if nid in nodes else nid, "port": key, "error": error}
                for nid, errors in self.node.port_errors().items() for key, error in errors.items() if key in keys]
        return sorted(rows, key=lambda r: (r["node"], r["port"]))

    def _mesh_paths(self, spec: ServiceSpec) -> list[dict[str, Any]]:
        """How the node answering forwards each of ``spec``'s published ports (``kernel`` or ``userspace``,
        and why user space). Node-local: another node may differ (no nftables, a cut link), so the
        answering node is named; ``mesh routes`` on a node shows that node's own."""
        view = getattr(self.node, "mesh_view", None)
        if view is None:
            return []
        wanted = {(p.published, p.protocol) for p in spec.ports if p.mode == "ingress"}
        name = getattr(self.node, "name", "") or self.node.node_id
        seen = {(r["port"], r.get("protocol", "tcp")): r for r in view().get("routes", ())}
        return [{"node": name, "port": port, "protocol": proto,
                 "path": seen[(port, proto)]["path"] if (port, proto) in seen else "none",
                 "path_why": seen[(port, proto)]["path_why"] if (port, proto) in seen else "no route on this node yet"}
                for port, proto in sorted(wanted)]

    # ------------------------------------------------------------ services

    def ls(self, request: Request) -> Response:
        state = self._state()
        rows = state.service_summaries()
        for row in rows:
            row["stack"] = stack_of(state.services[row["name"]].spec)
        return Response.json({"services": rows})

    async def create(self, request: Request) -> Response:
        spec = self._spec(json_body(request))
        value = await self._write(cmd.create_service(_cid(), time.time(), spec))
        return Response.json({"name": spec.name, "version": value["version"]})

    def inspect(self, request: Request, name: str) -> Response:
        svc = self._service(name)
        rows = self._state().service_ps(name)
        current = [r for r in rows if r["current"] and r["desired"] == "running"]
        desired = svc.spec.replicas if svc.spec.mode == "replicated" else sum(1 for r in current if r["node"])
        return Response.json({
            "name": name, "version": svc.version, "spec": svc.spec.to_dict(),
            "previous": None if svc.previous is None else svc.previous.to_dict(),
            "created_at": svc.created_at, "updated_at": svc.updated_at, "update_state": svc.update_state,
            "update_message": svc.update_message, "scheduling_error": svc.scheduling_error, "desired": desired,
            "running": sum(1 for r in current if r["state"] == "running"),
            "running_current": sum(1 for r in current if r["state"] == "running" and self._runs_current(svc, r)),
            "port_errors": self._port_errors(svc.spec), "mesh_paths": self._mesh_paths(svc.spec),
        })

    def _runs_current(self, svc: Any, row: dict) -> bool:
        """The task runs what the current spec runs (a scale makes a new version without replacing tasks)."""
        spec = svc.spec_at(row["version"])
        return spec is not None and svc.spec.runs_like(spec)

    async def rm(self, request: Request, name: str) -> Response:
        await self._write(cmd.remove_service(_cid(), time.time(), name))
        return Response.json({"removed": name})

    def sub_get(self, request: Request, name: str, what: str) -> Reply:
        if what == "tasks":
            svc = self._service(name)
            state = self._state()
            nodes = state.nodes
            rows = state.service_ps(name)
            for row in rows:
                row["node_name"] = nodes[row["node"]].name if row["node"] in nodes else row["node"]
                task = state.tasks.get(row["id"])
                row["slot"] = task.slot if task is not None else 0
                row["current_spec"] = self._runs_current(svc, row)
                if row["error"]:
                    row["error"] = named_nodes(row["error"], nodes)
            return Response.json({"tasks": rows, "scheduling_error": svc.scheduling_error,
                                  "port_errors": self._port_errors(svc.spec)})
        if what == "logs":
            query = urllib.parse.parse_qs(request.query)
            return self._logs({k: v[-1] for k, v in query.items()}, name)
        raise HttpError(404, f"no such endpoint: {request.path}")

    async def sub_post(self, request: Request, name: str, what: str) -> Response:
        body = json_body(request)
        body = body if isinstance(body, dict) else {}
        now = time.time()
        if what == "update":
            spec = self._spec(body)
            if spec.name != name:
                raise HttpError(400, f"name: an update keeps the service name ({name}), got {spec.name}")
            version = body.get("version")
            value = await self._write(cmd.update_service(_cid(), now, spec, version if type(version) is int
                                                         else None))
        elif what == "scale":
            replicas = body.get("replicas")
            if type(replicas) is not int or not 0 <= replicas <= MAX_REPLICAS:
                raise HttpError(400, f"replicas: must be a whole number from 0 to {MAX_REPLICAS}, got {replicas!r}")
            value = await self._write(cmd.scale_service(_cid(), now, name, replicas))
        elif what == "rollback":
            value = await self._write(cmd.rollback_service(_cid(), now, name, message="manual rollback"))
        elif what == "logs":  # the same as GET, for a cursor too long for a URL
            return await self._logs(body, name)
        else:
            raise HttpError(404, f"no such endpoint: {request.path}")
        return Response.json({"name": name, **(value or {})})

    async def _logs(self, options: dict, name: str) -> Response:
        """Lines of ``name``'s tasks from every node (see :mod:`p2pswarm.logs.service`); ``tail`` (a count or
        ``all``), ``cursor`` (what the previous call returned), ``since`` and ``until`` are optional."""
        from p2pswarm.logs.service import ALL
        self._service(name)
        logs = self.node.logs
        if logs is None:
            raise HttpError(503, "this node's log service is not running yet; retry in a moment")
        tail = options.get("tail", "all")
        if tail in ("all", None, ""):
            tail = ALL
        elif isinstance(tail, int) or (isinstance(tail, str) and tail.isdigit()):
            tail = int(tail)
        else:
            raise HttpError(400, f"tail must be a number of lines or 'all', got {str(tail)[:40]!r}")
        cursor = options.get("cursor") or ""
        if not isinstance(cursor, str):
            raise HttpError(400, "cursor must be the string the previous call returned")
        since, until = _when(options, "since"), _when(options, "until")
        try:
            return Response.json(await logs.gather(name, cursor, tail, since=since, until=until))
        except ValueError as exc:
            raise HttpError(400, str(exc).splitlines()[0]) from None

    # ------------------------------------------------------------ nodes

    async def node_update(self, request: Request, node: str, what: str) -> Response:
        if what != "update":
            raise HttpError(404, f"no such endpoint: {request.path}")
        state = self._state()
        matches = [n.id for n in state.nodes.values() if node in (n.id, n.name)]
        if len(matches) != 1:
            raise HttpError(404 if not matches else 400, f"node {node} is {'unknown' if not matches else 'ambiguous'}"
                            " (see `p2pswarm node ls`)")
        body = json_body(request)
        body = body if isinstance(body, dict) else {}
        try:
            command = cmd.update_node(_cid(), time.time(), matches[0], availability=body.get("availability"),
                                      label_add=body.get("label_add") or None, label_rm=body.get("label_rm") or ())
            cmd.check(command)
        except (SpecError, TypeError) as exc:
            raise HttpError(400, str(exc)) from None
        await self._write(command)
        return Response.json({"node": matches[0]})


    def _resolve(self, node: str) -> tuple[str, dict | None]:
        """``(node id, SWIM view or None)`` for an id, a unique id prefix or a name; else a one-line 404/400."""
        views = {v["id"]: v for v in self.node.member_views()}
        state = self._state()
        names = {**{i: v["name"] for i, v in views.items()}, **{n.id: n.name for n in state.nodes.values()}}
        exact = sorted(i for i, name in names.items() if node in (i, name))
        matches = exact or sorted(i for i in names if i.startswith(node))
        if not matches:
            removed = " (it was removed)" if node in state.removed_nodes else ""
            raise HttpError(404, f"node {node} is unknown{removed} (see `p2pswarm node ls`)")
        if len(matches) > 1:
            raise HttpError(400, f"node {node} is ambiguous: it matches {', '.join(matches[:5])}"
                            f"{' ...' if len(matches) > 5 else ''}; give more of the id")
        return matches[0], views.get(matches[0])

    def node_inspect(self, request: Request, node: str) -> Response:
        nid, view = self._resolve(node)
        state = self._state()
        record = state.nodes.get(nid)
        tasks = [{"id": t.id, "service": t.service, "slot": t.slot, "version": t.version, "desired": t.desired,
                  "state": t.state, "port": t.port, "health": t.health}
                 for t in state.tasks_on(nid) if t.desired == "running"]
        swim = None if view is None else {k: view.get(k) for k in ("addr", "status", "labels", "capacity", "version",
                                                                    "rtt_ms", "incarnation", "role", "self", "dns")}
        cluster = None if record is None else {"availability": record.availability, "labels": record.label_map,
                                               "cpu": record.cpu, "memory": record.memory, "tasks": tasks}
        engine, isolation = (None, ""), (None, "")
        if record is not None:
            engine, isolation = (record.engine, record.engine_detail), (record.isolation, record.isolation_detail)
        if record is not None:
            name = record.name
        else:
            assert view is not None  # _resolve found nid among the SWIM views or the records: here the views
            name = view["name"]
        return Response.json({"id": nid, "name": name, "engine": engine_text(*engine),
                              "isolation": isolation_text(*isolation), "swim": swim, "cluster": cluster})

    async def node_rm(self, request: Request, node: str) -> Response:
        """Remove a node from the cluster state (its tasks are replaced elsewhere) and, through the
        leader's autopilot, from the Raft configuration.  Refused for a live node that is not drained
        (unless ``force``), and for a voter whose removal would leave the others without a quorum."""
        nid, view = self._resolve(node)
        state = self._state()
        if nid not in state.nodes:
            raise HttpError(404, f"node {node} has no record in the cluster state (nothing to remove)")
        record = state.nodes[nid]
        status = view["status"] if view is not None else "unknown"
        if status in LIVE and record.availability != "drain" and not query_flag(request, "force"):
            raise HttpError(409, f"node {record.name} is {status} and not drained: drain it first (`p2pswarm node "
                                 f"update --availability drain {record.name}`), stop it (`p2pswarm down` on it) "
                                 "or use --force")
        driver = require_driver(self.node)
        blocker = driver.removal_blocker(nid)
        if blocker is not None:
            raise HttpError(409, f"node {record.name} is a Raft voter and removing it now would lose the quorum: "
                                 f"{blocker}; bring the dead voters back or wait until autopilot has replaced them "
                                 "(see `p2pswarm cluster status`), then retry")
        role = driver.role_of(nid)
        running = sum(1 for t in state.tasks_on(nid) if t.desired == "running")
        await self._write(cmd.remove_node(_cid(), time.time(), nid))
        secure = self.node.security is not None
        return Response.json({"node": nid, "name": record.name, "tasks": running, "raft": role, "secure": secure})


def _when(options: dict, name: str) -> float | None:
    """``since`` / ``until`` of a logs call: unix seconds, RFC 3339 or a duration back from now."""
    from p2pswarm.events.timespec import parse_time
    value = options.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else \
            parse_time(str(value), time.time())
    except ValueError as exc:
        raise HttpError(400, f"{name}: {exc}") from None


def _cid() -> str:
    return command_id("api")
