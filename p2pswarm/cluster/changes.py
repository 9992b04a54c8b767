"""When each task last changed and which tasks left each node: what a worker's delta is cut from (pure).

A worker outside the Raft group asks a member for its assignments changed after the version (applied
index) it holds (:mod:`p2pswarm.assignments.core`).  The cluster state records here, as it applies,
the index of every task's last change and, per node, the tasks that left it (removed, or moved
elsewhere): a delta is then the node's tasks changed after ``since`` plus its departures after
``since``.  Nothing here is part of a snapshot (every replica's snapshot bytes stay the same): a
restored state knows only changes from its restore point on, and its departures are bounded per
node, so a ``since`` older than :meth:`TaskChanges.horizon` cannot be diffed (a full resync).
"""

from __future__ import annotations

MAX_DEPARTURES = 4096
"""Departures remembered per node; an older one is forgotten and the node's horizon moves past it."""


class TaskChanges:
    def __init__(self, floor: int = 0) -> None:
        self.floor = floor
        """The index this history starts at (a restored snapshot's): nothing before it is known."""
        self.changed_at: dict[str, int] = {}
        """task id -> the index of its last change."""
        self.departures: dict[str, dict[str, int]] = {}
        """node id -> {task id: index it left at}, oldest first."""
        self._trimmed: dict[str, int] = {}
        """node id -> the newest departure index forgotten for room."""

    def put(self, task_id: str, node: str | None, old_node: str | None, index: int) -> None:
        """Task ``task_id`` (now on ``node``, before on ``old_node``) changed at ``index``."""
        self.changed_at[task_id] = index
        if old_node is not None and old_node != node:
            self._depart(old_node, task_id, index)

    def drop(self, task_id: str, node: str | None, index: int) -> None:
        """Task ``task_id`` left the state at ``index``."""
        self.changed_at.pop(task_id, None)
        if node is not None:
            self._depart(node, task_id, index)

    def _depart(self, node: str, task_id: str, index: int) -> None:
        gone = self.departures.setdefault(node, {})
        gone.pop(task_id, None)
        gone[task_id] = index
        while len(gone) > MAX_DEPARTURES:
            oldest = next(iter(gone))
            self._trimmed[node] = max(self._trimmed.get(node, 0), gone.pop(oldest))

    def horizon(self, node: str) -> int:
        """The oldest version a delta for ``node`` can start from (older: a full resync)."""
        return max(self.floor, self._trimmed.get(node, 0))

    def departed_since(self, node: str, since: int) -> list[str]:
        """Tasks that left ``node`` after index ``since``."""
        return [task for task, index in self.departures.get(node, {}).items() if index > since]
