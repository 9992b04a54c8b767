"""The last ``lab chaos`` run, for the dashboard's detection and failover charts.

``lab chaos --out DIR`` writes ``chaos-<scenario>.json`` (:mod:`p2pswarm.lab.report`).  The
dashboard is given that file, or directories to look in, and takes the newest report each time
the page asks, so a new run shows up without restarting the dashboard.  :func:`charts` keeps
what the charts draw: requests per second, running replicas over time and, per kill, when the
victim was killed, seen dead by every other node (detection) and replaced (failover).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

MAX_REPORT_BYTES = 20 * 1024 * 1024
"""A bigger file is not a chaos report this dashboard should load into memory."""


def find_report(paths: Iterable[Path]) -> Path | None:
    """The newest ``chaos-*.json`` among ``paths`` (files are taken as they are, directories searched)."""
    found: list[tuple[float, str, Path]] = []
    for path in paths:
        candidates = [path] if path.is_file() else sorted(path.glob("chaos-*.json")) if path.is_dir() else []
        for c in candidates:
            try:
                found.append((c.stat().st_mtime, str(c), c))
            except OSError:
                continue
    return max(found)[2] if found else None


def load(paths: Iterable[Path]) -> dict[str, Any]:
    """The charts of the newest report, or ``{"available": False, "reason": ...}``."""
    paths = list(paths)
    path = find_report(paths)
    if path is None:
        where = ", ".join(str(p) for p in paths) or "nowhere"
        return {"available": False, "reason": f"no lab chaos report (chaos-*.json) in {where}; "
                                              f"run `p2pswarm lab chaos --out DIR` or pass --chaos-report FILE"}
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise ValueError(f"larger than {MAX_REPORT_BYTES} bytes")
        report = json.loads(path.read_text())
        out = charts(report)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"available": False, "reason": f"cannot read the chaos report {path}: {exc}"}
    out["file"] = str(path)
    return out


def charts(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report reduced to the series the page draws (see the module docstring)."""
    per_second = report["requests"]["per_second"]
    series = report["replicas"]["series"]
    return {
        "available": True,
        "scenario": str(report.get("scenario", "?")), "started_at": str(report.get("started_at", "")),
        "mode": str(report.get("mode", "")), "nodes": report.get("nodes"),
        "summary": {k: report.get("summary", {}).get(k) for k in (
            "requests_sent", "request_error_rate", "writes_acked", "acknowledged_writes_lost",
            "detection_s", "recovery_s")},
        "requests": {"t": [float(p["t"]) + 0.5 for p in per_second], "ok": [int(p["ok"]) for p in per_second],
                     "failed": [int(p["failed"]) for p in per_second]},
        "replicas": {"t": [float(row[0]) for row in series], "running": [int(row[1]) for row in series],
                     "desired": [int(row[2]) for row in series]},
        "kills": [{"node": str(k.get("node")), "t": float(k["t"]), "detected_after_s": k.get("detected_after_s"),
                   "recovered_after_s": k.get("recovered_after_s")} for k in report.get("kills", [])],
        "heals": [{"t": float(h["t"]), "merged_after_s": h.get("merged_after_s")} for h in report.get("heals", [])],
        "actions": [{"t": float(a["t"]), "label": str(a.get("label") or a.get("do"))}
                    for a in report.get("actions", []) if a.get("ok")],
    }
