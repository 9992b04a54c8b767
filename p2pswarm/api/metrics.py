"""Prometheus text exposition (format 0.0.4) of a node's metrics snapshot.

Counter names come from the cores and the transport, so they are sanitised
into metric names here rather than trusted.
"""

from __future__ import annotations

import math
import re
from typing import Any

PREFIX = "p2pswarm"


def metric_name(*parts: str) -> str:
    name = "_".join(re.sub(r"[^a-zA-Z0-9_]", "_", p) for p in parts if p)
    return name if not name[:1].isdigit() else "_" + name


def fmt_value(value: Any) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() else repr(value)


def render_metrics(snapshot: dict[str, Any]) -> str:
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {fmt_value(value)}" for labels, value in samples)

    family(f"{PREFIX}_members", "gauge", "Members this node knows, by status.",
           [(f'{{status="{s}"}}', n) for s, n in sorted(snapshot.get("members_by_status", {}).items())])
    family(f"{PREFIX}_joined", "gauge", "1 once this node has joined a cluster (or created one).",
           [("", 1 if snapshot.get("joined") else 0)])
    node = dict(snapshot.get("node", {}))
    node.setdefault("wire_errors", 0)
    for group, kind, what in (("swim", "counter", "SWIM core counter"), ("node", "counter", "node driver counter"),
                              ("transport", "untyped", "transport statistic")):
        values = node if group == "node" else snapshot.get(group, {})
        for key, value in sorted(values.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                suffix = "_total" if kind == "counter" and not key.endswith("_total") else ""
                family(metric_name(PREFIX, group, key) + suffix, kind, f"{what} {key}.", [("", value)])
    raft = snapshot.get("raft") or {}
    for key, value in sorted(raft.get("gauges", {}).items()):
        family(metric_name(PREFIX, "raft", key), "gauge", f"Raft {key.replace('_', ' ')} on this node.",
               [("", value)])
    for key, value in sorted(raft.get("counters", {}).items()):
        family(metric_name(PREFIX, "raft", key) + "_total", "counter", f"Raft driver counter {key}.",
               [("", value)])
    return "\n".join(out) + "\n"
