"""The records the cluster state is made of: nodes, tasks and services.

Frozen and slotted: the state machine replaces a record instead of editing it, so
the reconciler, placement and the API can hold records without copying and never
see them change under them.  Every record remembers ``changed``, the log index of
its last relevant change; a scheduler decision planned at an older index than that
is stale (see ``ClusterState.apply``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from p2pswarm.cluster.spec import ServiceSpec

AVAILABILITY = ("active", "pause", "drain")
"""active takes new tasks; pause keeps its tasks but takes no new ones; drain moves them away."""
DESIRED = ("running", "shutdown", "remove")
"""Desired states only move forward in this order."""
TASK_STATES = ("new", "assigned", "preparing", "starting", "running",
               "complete", "failed", "shutdown", "rejected", "orphaned")
"""Observed states.  ``new`` = not placed yet (its message says why); ``preparing`` = its node pulls the
image; the five after ``running`` are terminal."""
RUNNING_RANK = TASK_STATES.index("running")
TERMINAL = frozenset(TASK_STATES[RUNNING_RANK + 1:])
UPDATE_STATES = ("", "updating", "paused", "completed", "rollback_started", "rollback_paused", "rollback_completed")
"""A service's rolling-update status, as Docker reports it ('' = never updated)."""


def state_rank(state: str) -> int:
    """Observed states only move forward: every terminal state ranks after ``running``."""
    return min(TASK_STATES.index(state), RUNNING_RANK + 1)


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    name: str
    availability: str = "active"
    labels: tuple[tuple[str, str], ...] = ()
    cpu: float | None = None
    """Cores tasks may reserve (None = not reported: reservations are not checked)."""
    memory: int | None = None
    """Bytes tasks may reserve (None = not reported)."""
    changed: int = 0
    engine: str | None = None
    """Container engine kind (:mod:`p2pswarm.cluster.capabilities`; None = not reported: not capable)."""
    engine_detail: str = ""
    isolation: str | None = None
    """Task isolation kind (None = not reported: not capable)."""
    isolation_detail: str = ""

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    service: str
    slot: int
    """1..replicas for a replicated service; 0 for a global one (its node identifies it)."""
    node: str | None
    version: int
    """The service spec version this task runs."""
    desired: str = "running"
    state: str = "new"
    port: int | None = None
    exit_code: int | None = None
    error: str = ""
    message: str = ""
    health: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    restarts: tuple[float, ...] = ()
    """When this slot's earlier tasks failed and were restarted (restart policy window), oldest first."""
    created: int = 0
    """Log index that created the task: orders a slot's history."""

    @property
    def live(self) -> bool:
        """Meant to run and not ended (it may still be on a node that died: see the reconciler)."""
        return self.desired == "running" and self.state not in TERMINAL

    @property
    def slot_key(self) -> int | str | None:
        return self.slot if self.slot else self.node


@dataclass(frozen=True, slots=True)
class Service:
    spec: ServiceSpec
    version: int
    previous: ServiceSpec | None = None
    """The spec ``service rollback`` returns to."""
    specs: tuple[tuple[int, ServiceSpec], ...] = ()
    """Every version some task still runs, plus the current one, by version."""
    created_at: float = 0.0
    updated_at: float = 0.0
    update_state: str = ""
    update_started_at: float = 0.0
    update_message: str = ""
    scheduling_error: str = ""
    """Why the leader's last attempt to schedule this service failed ('' = it did not)."""
    changed: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def spec_at(self, version: int) -> ServiceSpec | None:
        return dict(self.specs).get(version)


# ------------------------------------------------------------------ codec for snapshots

def encode_record(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, ServiceSpec):
            value = value.to_dict()
        elif f.name == "specs":
            value = [[v, s.to_dict()] for v, s in value]
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[f.name] = value
    return out


def decode_node(d: Mapping[str, Any]) -> Node:
    return Node(**{**d, "labels": tuple(tuple(p) for p in d["labels"])})


def decode_task(d: Mapping[str, Any]) -> Task:
    return Task(**{**d, "restarts": tuple(d["restarts"])})


def decode_service(d: Mapping[str, Any]) -> Service:
    previous = d["previous"]
    return Service(**{**d, "spec": ServiceSpec.from_dict(d["spec"]),
                      "previous": None if previous is None else ServiceSpec.from_dict(previous),
                      "specs": tuple((v, ServiceSpec.from_dict(s)) for v, s in d["specs"])})
