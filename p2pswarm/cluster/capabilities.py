"""What a node can run besides plain processes: its container engine and its task isolation (pure).

A node probes both when it starts (:mod:`p2pswarm.runtime.engine`, :mod:`p2pswarm.runtime.cgroups`) and
gossips the result (:class:`p2pswarm.node.record.NodeCaps`); the scheduler copies it into the cluster
state's ``Node``, where placement and constraints (``node.engine==docker``, ``node.isolation!=none``)
read it.  A node that has not reported yet is *unknown*, which counts as not capable: an image or a
limited task is never sent to a node that might not run it.
"""

from __future__ import annotations

ENGINES = ("docker", "none")
"""Engine kinds: a working Docker Engine, or none (unavailable, the detail says why)."""
ISOLATIONS = ("cgroup-v2", "cgroup-v1", "none")
"""Isolation kinds: process tasks in their own cgroup (v2 or v1), or none (the detail says why)."""
MAX_DETAIL = 200
"""Characters of an engine's version or of the reason it or the isolation is unavailable."""
UNKNOWN = "unknown (the node has not reported it yet)"


def has_engine(engine: str | None) -> bool:
    return engine == "docker"


def can_isolate(isolation: str | None) -> bool:
    return isolation in ("cgroup-v2", "cgroup-v1")


def constraint_value(kind: str | None) -> str:
    """What ``node.engine`` / ``node.isolation`` constraints compare with: unknown counts as ``none``."""
    return kind if kind is not None else "none"


def engine_text(kind: str | None, detail: str = "") -> str:
    """``docker (20.10.24)``, ``unavailable (reason)`` or unknown, as ``node inspect`` shows it."""
    if kind is None:
        return UNKNOWN
    shown = "unavailable" if kind == "none" else kind
    return f"{shown} ({detail})" if detail else shown


def isolation_text(kind: str | None, detail: str = "") -> str:
    """``cgroup-v1``, ``none (reason)`` or unknown, as ``node inspect`` shows it."""
    if kind is None:
        return UNKNOWN
    return f"none ({detail})" if kind == "none" and detail else kind
