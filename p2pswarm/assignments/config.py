"""Timings and sizes of the assignment protocol (the presets: :mod:`p2pswarm.node.presets`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AssignmentsConfig:
    """Timings and sizes of the assignment protocol (:mod:`p2pswarm.assignments.driver`)."""

    serve_per_turn: int = 4
    """Requests a member answers per loop turn: serving workers never holds up its Raft duties."""
    serve_budget: float = 0.005
    """Seconds a member spends answering per loop turn (the rest waits for the next turn)."""
    max_queued: int = 128
    """Workers waiting at one member; past this it sheds them: "busy, ask X"."""
    request_timeout: float = 2.0
    """Seconds a worker waits for a reply before it asks another member."""
    avoid_for: float = 5.0
    """Seconds a worker avoids a member that did not answer."""
    check_interval: float = 0.1
    """Seconds between a node's looks at the members' gossiped applied index: whether it reads its own
    replica, and (a worker) whether to ask; at most one request per look (the index moves with every
    cluster command)."""
    stale_after: float = 3.0
    """Seconds a learner's applied state may trail the members' gossiped index before its agent reads
    its assignments as a worker does (a removed learner's replica stops moving)."""
