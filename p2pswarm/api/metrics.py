"""Prometheus text exposition (format 0.0.4) of a node's metrics.

Two sources:

* the node's ``metrics_snapshot()`` (membership, SWIM, driver, transport and Raft
  counters), rendered by :func:`render_metrics`;
* when the node itself is passed, views read straight from it: this node's agent
  tasks by state, the applied cluster state (tasks by state, services, replicas,
  nodes) and, when the node has ``mesh_metrics()``, the routing mesh's counters.

Counter names come from the cores and the transport, so they are sanitised into
metric names here rather than trusted; label values and help texts are escaped as
the format requires.  Counters end in ``_total``; a family is never written twice;
the counters people alert on (suspicions, deaths, wire errors, proposals) are
written from the start, as 0, instead of appearing with their first event.

Metric families (``p2pswarm_`` prefix):

===============================================  =======  ==========================================
``members{status}``                              gauge    members this node knows, by SWIM status
``joined``                                       gauge    1 once joined (or created) a cluster
``swim_<counter>_total``                         counter  SWIM core: ``probes``, ``probe_failures``,
                                                          ``suspicions_started``, ``deaths_declared``,
                                                          ``refutes``, ...
``node_<counter>_total``                         counter  node driver: ``wire_errors``, ``send_errors``...
``transport_<stat>``                             untyped  transport statistics (``peers_open``: gauge)
``raft_{term,commit_index,applied_index,...}``   gauge    this node's Raft state
``raft_<counter>_total``                         counter  ``proposals``, ``leader_changes``, ``saves``...
``agent_tasks{state}``                           gauge    tasks this node's agent holds, by its state
``cluster_tasks{state,desired}``                 gauge    task records of the applied cluster state
``cluster_services``                             gauge    services in the applied cluster state
``cluster_nodes{availability}``                  gauge    nodes registered in the cluster state
``service_replicas_{desired,running}{service}``  gauge    per service
``mesh_<counter>_total``                         counter  routing mesh: ``accepted``, ``connect_failed``,
                                                          ``retried``, ``relayed_{in,out}``, ``errors``...
``mesh_active``, ``mesh_bind_errors``            gauge    open client connections, ports failing to bind
===============================================  =======  ==========================================
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Iterable

from p2pswarm.node.view import NodeView

log = logging.getLogger("p2pswarm.api")

PREFIX = "p2pswarm"

ALWAYS = {
    "swim": ("probes", "probe_failures", "suspicions_started", "deaths_declared", "refutes"),
    "node": ("wire_errors",),
    "raft": ("proposals", "leader_changes", "saves", "conf_changes"),
    "dns": ("queries", "malformed", "rate_limited", "oversized", "rcode_refused"),
}
"""Counters written as 0 before their first event (the cores only count what happened)."""
TRANSPORT_GAUGES = frozenset({"peers_open"})
AGENT_STATES = ("pending", "preparing", "starting", "running", "stopping", "restarting", "complete", "failed",
                "shutdown")
"""The agent core's task states (:mod:`p2pswarm.agent.core`)."""
MESH_GAUGES = frozenset({"active", "bind_errors"})
"""Keys of ``mesh_metrics()`` that are levels, not counts (``bind_errors``: ports failing to bind now)."""
MESH_HELP = {
    "accepted": "Client connections the routing mesh accepted on published ports.",
    "active": "Client connections the routing mesh is forwarding now.",
    "connect_failed": "Connects from the routing mesh to a backend replica that failed.",
    "retried": "Client connections the routing mesh retried on another replica.",
    "relayed_out": "Connections this node sent through a relay node.",
    "relayed_in": "Connections other nodes relayed through this node.",
    "relay_refused": "Relay connections and datagrams refused: not from a member's host, or to a target not allowed.",
    "refused_limit": "Client connections refused because a connection limit was reached.",
    "errors": "Routing mesh forwarding errors.",
    "bind_errors": "Published ports the routing mesh cannot listen on now.",
}

_failed_once: set[str] = set()
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(*parts: str) -> str:
    name = "_".join(_NAME_BAD.sub("_", p) for p in parts if p)
    return name if not name[:1].isdigit() else "_" + name


def label_name(name: str) -> str:
    name = _LABEL_BAD.sub("_", name) or "_"
    return "_" + name if name[:1].isdigit() or name.startswith("__") else name


def escape_label(value: Any) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def fmt_value(value: Any) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() else repr(value)


def fmt_labels(labels: dict[str, Any] | None) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{label_name(k)}="{escape_label(v)}"' for k, v in labels.items()) + "}"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Exposition:
    """Families in the order written; a name already written is skipped (the format forbids repeats)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: set[str] = set()

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, Any] | None, Any]]) -> None:
        if name in self.names:
            log.debug("metric family %s written twice; the second is dropped", name)
            return
        self.names.add(name)
        self.lines.append(f"# HELP {name} {escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        self.lines.extend(f"{name}{fmt_labels(labels)} {fmt_value(value)}" for labels, value in samples)

    def counter(self, name: str, help_text: str, value: Any, labels: dict | None = None) -> None:
        self.family(name if name.endswith("_total") else name + "_total", "counter", help_text, [(labels, value)])

    def gauge(self, name: str, help_text: str, value: Any) -> None:
        self.family(name, "gauge", help_text, [(None, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(snapshot: dict[str, Any], node: NodeView | None = None) -> str:
    """The text of ``/metrics``: the snapshot's families, then (given ``node``) those read from the node."""
    out = Exposition()
    out.family(f"{PREFIX}_members", "gauge", "Members this node knows, by status.",
               [({"status": s}, n) for s, n in sorted(snapshot.get("members_by_status", {}).items())])
    out.gauge(f"{PREFIX}_joined", "1 once this node has joined a cluster (or created one).",
              1 if snapshot.get("joined") else 0)
    for group, what in (("swim", "SWIM core counter"), ("node", "node driver counter"), ("dns", "DNS server counter")):
        values = {k: 0 for k in ALWAYS[group]}
        values.update(snapshot.get(group) or {})
        for key, value in sorted(values.items()):
            if is_number(value):
                out.counter(metric_name(PREFIX, group, key), f"{what} {key}.", value)
    for key, value in sorted((snapshot.get("transport") or {}).items()):
        if is_number(value):
            kind = "gauge" if key in TRANSPORT_GAUGES else "untyped"
            out.family(metric_name(PREFIX, "transport", key), kind, f"transport statistic {key}.", [(None, value)])
    raft = snapshot.get("raft") or {}
    if raft:
        for key, value in sorted((raft.get("gauges") or {}).items()):
            if is_number(value):
                out.gauge(metric_name(PREFIX, "raft", key), f"Raft {key.replace('_', ' ')} on this node.", value)
        counters = {k: 0 for k in ALWAYS["raft"]}
        counters.update(raft.get("counters") or {})
        for key, value in sorted(counters.items()):
            if is_number(value):
                out.counter(metric_name(PREFIX, "raft", key), f"Raft driver counter {key}.", value)
    _assignments(out, snapshot.get("assignments") or {})
    if node is not None:
        for part in (_agent, _cluster, _mesh):
            try:
                part(out, node)
            except Exception:  # a view that fails must not take /metrics down with it
                what = part.__name__.strip("_")
                if what not in _failed_once:  # a traceback once, not at every scrape
                    _failed_once.add(what)
                    log.error("metrics: the %s view failed (its metrics are left out)", what, exc_info=True)
                else:
                    log.debug("metrics: the %s view failed again", what, exc_info=True)
    return out.text()


def _assignments(out: Exposition, metrics: dict[str, Any]) -> None:
    """The assignment protocol's gauges (this node's version, waiting workers, whether it is a worker) and
    counters (answers served, shed, resyncs, malformed replies)."""
    for key, value in sorted((metrics.get("gauges") or {}).items()):
        if is_number(value):
            out.gauge(metric_name(PREFIX, "assignments", key), f"Assignment protocol {key.replace('_', ' ')}.", value)
    for key, value in sorted((metrics.get("counters") or {}).items()):
        if is_number(value):
            out.counter(metric_name(PREFIX, "assignments", key), f"Assignment protocol counter {key}.", value)


def _agent(out: Exposition, node: NodeView) -> None:
    driver = node.agent.driver if node.agent is not None else None
    if driver is None:
        return
    counts = dict.fromkeys(AGENT_STATES, 0)
    for record in (driver.digest().get("tasks") or {}).values():
        state = record.get("s") if isinstance(record, dict) else None
        if isinstance(state, str):
            counts[state] = counts.get(state, 0) + 1
    out.family(f"{PREFIX}_agent_tasks", "gauge", "Tasks this node's agent holds, by the agent's task state.",
               [({"state": s}, n) for s, n in counts.items()])


def _cluster(out: Exposition, node: NodeView) -> None:
    driver = node.raft_driver()
    state = driver.cluster if driver is not None else None
    if state is None:
        return
    from p2pswarm.cluster.model import AVAILABILITY, TASK_STATES
    counts = {("running", s): 0 for s in TASK_STATES}
    for task in state.tasks.values():
        counts[(task.desired, task.state)] = counts.get((task.desired, task.state), 0) + 1
    out.family(f"{PREFIX}_cluster_tasks", "gauge",
               "Task records in the cluster state this node applied (history included), by observed and desired "
               "state.", [({"state": s, "desired": d}, n) for (d, s), n in sorted(counts.items())])
    out.gauge(f"{PREFIX}_cluster_services", "Services in the cluster state this node applied.", len(state.services))
    nodes = dict.fromkeys(AVAILABILITY, 0)
    for record in state.nodes.values():
        nodes[record.availability] = nodes.get(record.availability, 0) + 1
    out.family(f"{PREFIX}_cluster_nodes", "gauge", "Nodes registered in the cluster state, by availability.",
               [({"availability": a}, n) for a, n in nodes.items()])
    rows = state.service_summaries()
    out.family(f"{PREFIX}_service_replicas_desired", "gauge", "Tasks a service should run.",
               [({"service": r["name"]}, r["desired"]) for r in rows])
    out.family(f"{PREFIX}_service_replicas_running", "gauge", "Tasks of a service meant to run that are running.",
               [({"service": r["name"]}, r["running"]) for r in rows])


def _mesh(out: Exposition, node: NodeView) -> None:
    values = node.mesh_metrics()
    if not isinstance(values, dict):
        return
    for key, value in sorted((k, v) for k, v in values.items() if isinstance(k, str) and is_number(v)):
        help_text = MESH_HELP.get(key, f"routing mesh counter {key}.")
        if key in MESH_GAUGES:
            out.gauge(metric_name(PREFIX, "mesh", key), help_text, value)
        else:
            out.counter(metric_name(PREFIX, "mesh", key), help_text, value)
