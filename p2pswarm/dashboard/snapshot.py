"""What the dashboard shows, reduced from the node's answers (pure: no I/O, easy to test).

:func:`state` takes a ``GET /v1/top`` answer and a ``GET /v1/mesh`` answer and returns the
page's model: nodes grouped by their ``zone`` label, the services, the tasks per node and the
mesh routes grouped by published port.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

NO_ZONE = ""
"""The zone of a node without a ``zone`` label (shown last, as "no zone")."""
NODE_FIELDS = ("id", "name", "addr", "status", "status_for_s", "availability", "role", "rtt_ms", "self",
               "tasks_running", "tasks_total", "labels")
ROUTE_FIELDS = ("service", "task", "node_name", "addr", "route", "why")


def state(top: Mapping[str, Any], mesh: Mapping[str, Any] | None) -> dict[str, Any]:
    """The page's model; ``mesh`` None means this node has no routing mesh (or did not answer)."""
    nodes = list(top.get("nodes") or [])
    return {
        "node": dict(top.get("node") or {}),
        "cluster": top.get("cluster"),
        "zones": zones(nodes),
        "services": [dict(s) for s in top.get("services") or []],
        "tasks": tasks_per_node(nodes, top.get("unassigned") or []),
        "mesh": None if mesh is None else {"running": bool(mesh.get("running")),
                                           "ports": routes_by_port(mesh.get("routes") or []),
                                           "bind_errors": {str(k): str(v) for k, v in
                                                           (mesh.get("bind_errors") or {}).items()}},
    }


def zones(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Nodes by ``zone`` label, zones sorted by name and the unlabelled ones last; nodes by name."""
    by_zone: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        zone = str((n.get("labels") or {}).get("zone") or NO_ZONE)
        by_zone.setdefault(zone, []).append({k: n.get(k) for k in NODE_FIELDS})
    order = sorted(by_zone, key=lambda z: (z == NO_ZONE, z))
    return [{"zone": z, "nodes": sorted(by_zone[z], key=lambda n: (str(n["name"]), str(n["id"])))} for z in order]


def tasks_per_node(nodes: Iterable[Mapping[str, Any]], unassigned: Iterable[Mapping[str, Any]]) -> list[dict]:
    """One row per node (tasks in the order ``top`` gives them), then the tasks not placed yet, if any."""
    rows = [{"node": n.get("name") or n.get("id"), "tasks": [_task(t) for t in n.get("tasks") or []]}
            for n in nodes]
    rows.sort(key=lambda r: str(r["node"]))
    left = [_task(t) for t in unassigned]
    if left:
        rows.append({"node": None, "tasks": left})
    return rows


def _task(t: Mapping[str, Any]) -> dict[str, Any]:
    return {k: t.get(k) for k in ("name", "service", "state", "port", "health")}


def routes_by_port(routes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The mesh's backends of each published port (``mesh routes``' rows), ports in order, with the port's path
    (``kernel`` or ``userspace``, and why user space)."""
    ports: dict[tuple[int, str], list[dict[str, Any]]] = {}
    paths: dict[tuple[int, str], tuple[str, str]] = {}
    for r in routes:
        key = (int(r.get("port") or 0), str(r.get("protocol") or "tcp"))
        ports.setdefault(key, []).append({k: r.get(k) for k in ROUTE_FIELDS})
        paths[key] = (str(r.get("path") or "userspace"), str(r.get("path_why") or ""))
    return [{"port": port, "protocol": proto, "path": paths[(port, proto)][0], "path_why": paths[(port, proto)][1],
             "routes": sorted(rows, key=lambda r: (r["route"] == "excluded", str(r["task"])))}
            for (port, proto), rows in sorted(ports.items())]
