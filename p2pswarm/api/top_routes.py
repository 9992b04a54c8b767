"""``GET /v1/top``: everything ``p2pswarm top`` shows, in one answer.

One request per refresh instead of five (info, members, cluster, services and a
``service ps`` per service), assembled from this node's own views: its SWIM
membership and the cluster state it has applied (every node is a Raft voter or
learner, so any node answers; possibly a moment behind the leader).  A read only:
nothing here waits for Raft, so it answers while the cluster has no quorum.

It reads the node's ``info``, ``member_views`` and ``raft_driver`` (:class:`p2pswarm.node.view.NodeView`).
"""

from __future__ import annotations

import time
from typing import Any

from p2pswarm.api.server import Request, Response
from p2pswarm.cluster.model import TERMINAL
from p2pswarm.node.view import NodeView

TOP_VERSION = 1
"""Bumped when a field changes meaning; ``p2pswarm top`` tolerates missing fields."""


class TopRoutes:
    def __init__(self, node: NodeView) -> None:
        self.node = node

    def top(self, request: Request) -> Response:
        return Response.json(top_payload(self.node))


def top_payload(node: NodeView) -> dict[str, Any]:
    info = node.info()
    members = node.member_views()
    driver = node.raft_driver()
    state = driver.cluster if driver is not None else None
    out: dict[str, Any] = {
        "version": TOP_VERSION, "time": time.time(),
        "node": {k: info.get(k) for k in ("id", "name", "addr", "version", "joined", "leaving", "cluster_size",
                                           "members_by_status")},
        "cluster": None, "nodes": [], "services": [], "unassigned": [],
    }
    if driver is not None:
        st = driver.status()
        roles = [m["role"] for m in st["members"]]
        out["cluster"] = {
            "cluster_id": st["cluster_id"], "leader": st["leader"], "leader_name": st["leader_name"],
            "term": st["term"], "commit_index": st["commit_index"], "applied_index": st["applied_index"],
            "role": st["role"], "error": st["error"], "voters": roles.count("voter"),
            "voters_alive": sum(1 for m in st["members"] if m["role"] == "voter" and m["health"] == "alive"),
            "learners": roles.count("learner"),
        }
    records = dict(state.nodes) if state is not None else {}
    tasks: dict[str | None, list[dict[str, Any]]] = {}
    if state is not None:
        for task in sorted(state.tasks.values(), key=lambda t: (t.service, t.slot, t.node or "", t.id)):
            if task.desired != "running" or task.state in TERMINAL:
                continue
            tasks.setdefault(task.node, []).append({
                "id": task.id, "service": task.service, "slot": task.slot, "state": task.state,
                "port": task.port, "health": task.health,
                "name": f"{task.service}.{task.slot}" if task.slot else task.service})
        for row in state.service_summaries():
            out["services"].append({k: row.get(k) for k in ("name", "mode", "version", "running", "desired", "ports",
                                                            "update_state", "update_message")})
    seen = set()
    for view in members:
        seen.add(view["id"])
        out["nodes"].append(_node_row(view["id"], view, records.get(view["id"]), tasks.get(view["id"], [])))
    for nid in sorted(set(records) - seen, key=lambda i: (records[i].name, i)):  # known to Raft, not to SWIM
        out["nodes"].append(_node_row(nid, None, records[nid], tasks.get(nid, [])))
    for nid in sorted(set(k for k in tasks if k is not None) - seen - set(records)):
        out["nodes"].append(_node_row(nid, None, None, tasks[nid]))
    out["unassigned"] = tasks.get(None, [])
    return out


def _node_row(nid: str, view: dict | None, record: Any, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    view = view or {}
    labels = dict(view.get("labels") or {})
    if record is not None:
        labels.update(record.label_map)
    return {
        "id": nid, "name": view.get("name") or (record.name if record is not None else nid),
        "addr": view.get("addr"), "status": view.get("status", "unknown"), "role": view.get("role", "-"),
        "rtt_ms": view.get("rtt_ms"), "self": bool(view.get("self")), "labels": labels,
        "availability": record.availability if record is not None else None,
        "status_for_s": view.get("status_for_s"),
        "tasks_running": sum(1 for t in tasks if t["state"] == "running"), "tasks_total": len(tasks),
        "tasks": tasks,
    }
