"""An ended task's logs, kept for its service's ``log_retention`` after the cluster state forgets the task.

The state keeps a few ended tasks per slot (``service ps`` history) and the agent keeps their folders
while it does; when the state drops a task, the runtime *retires* its folder instead of deleting it:
everything but the log files goes, and a marker (``retired.json``: service, slot, retention) says whose
logs they are, so ``service logs`` still finds them (:func:`retired_tasks`).  The retention counts from
the task's last output (the newest log file's modification time), which is when it ended or close to it,
so a task that ended long before the state dropped it is not kept longer than its retention.
:func:`sweep` deletes the folders whose time is up (the agent runs it periodically, also after a restart).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger("p2pswarm.runtime")

MARKER = "retired.json"
LOG_PREFIXES = ("stdout.", "stderr.")
"""The log files and their indexes (``stdout.log``, ``stdout.log.1``, ``stdout.idx``...): what is kept."""


def last_output(folder: Path) -> float:
    """Modification time of the newest log file in ``folder`` (0 when there is none)."""
    times = [f.stat().st_mtime for f in folder.iterdir() if f.name.startswith(LOG_PREFIXES) and f.is_file()]
    return max(times, default=0.0)


def retire(folder: Path, spec: Any, now: float) -> bool:
    """Keep ``folder``'s logs for ``spec.log_retention`` seconds from the task's last output; False when
    there is nothing worth keeping (no retention, no logs, or already older than it): delete it then."""
    retention = float(getattr(spec, "log_retention", 0.0) or 0.0)
    if retention <= 0 or not folder.is_dir() or last_output(folder) + retention <= now:
        return False
    for f in folder.iterdir():
        if not f.name.startswith(LOG_PREFIXES):
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
    marker = {"service": spec.service, "slot": spec.slot, "retention": retention}
    (folder / MARKER).write_text(json.dumps(marker))
    return True


def _marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("service"), str) and type(data.get("slot")) is int
            and isinstance(data.get("retention"), (int, float))):
        return None
    return data


def retired_tasks(tasks_dir: Path, service: str) -> list[tuple[str, int]]:
    """``(task id, slot)`` of ``service``'s retired task folders, by task id."""
    out = []
    for marker in sorted(tasks_dir.glob(f"*/{MARKER}")):
        data = _marker(marker.parent)
        if data is not None and data["service"] == service:
            out.append((marker.parent.name, data["slot"]))
    return out


def sweep(tasks_dir: Path, now: float) -> list[str]:
    """Delete the retired folders whose retention is over (an unreadable marker counts as over); their ids."""
    removed = []
    for marker in sorted(tasks_dir.glob(f"*/{MARKER}")):
        folder = marker.parent
        data = _marker(folder)
        try:
            if data is None or last_output(folder) + float(data["retention"]) <= now:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        except OSError as exc:
            log.warning("cannot sweep the retired task folder %s: %s", folder, exc)
    return removed
