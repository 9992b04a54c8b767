"""What a worker outside the Raft group needs of the cluster state, versioned and incremental (pure).

The Raft group stays small (voters and a few learners, :mod:`p2pswarm.consensus.autopilot`); every
other node is a *worker* that holds no replica and learns its own assignments from a member:

* :func:`delta_since` (member side): the worker's tasks changed after the version it holds, the
  specs they run, the secrets (sealed) and configs they read with the keyring keys (sealed under the
  cluster key) that open those secrets, and the tasks that left the worker.  The version is the
  member's applied Raft index.  A ``since`` the member cannot diff from (its history starts later:
  a restored snapshot, or forgotten departures; or 0, a new worker) gets a full resync of the
  worker's own assignments, never an error.  The driver adds the worker's part of the security
  record when it changed (:mod:`p2pswarm.assignments.trust`).
* :class:`WorkerState` (worker side): applies deltas and answers the same queries as the cluster
  state for :func:`p2pswarm.agent.host.assignments` (``tasks_on``, ``spec_of``, ``applied``,
  ``objects``, ``security.secret_keys``).  A delta older than what it holds is ignored, so a
  lagging member can never roll a worker back.
* :func:`choose_server`: which live member a worker asks, by rendezvous hashing: each member
  serves an even share, and a member's departure moves only its own workers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from p2pswarm.assignments.trust import WorkerTrust
from p2pswarm.cluster.model import Task
from p2pswarm.cluster.objects import StoredObject
from p2pswarm.cluster.spec import ServiceSpec


@dataclass(frozen=True)
class Delta:
    """One member's answer: the worker's assignments changed after ``since``, as of ``version``."""

    version: int
    since: int
    full: bool
    """Every assignment of the worker (it drops what it held first)."""
    tasks: tuple[Task, ...] = ()
    removed: tuple[str, ...] = ()
    specs: tuple[tuple[str, int, ServiceSpec], ...] = ()
    """(service, spec version, spec) of each task in ``tasks`` whose service still exists."""
    objects: tuple[StoredObject, ...] = ()
    """The secrets (sealed) and configs those specs read."""
    keys: tuple[tuple[int, bytes], ...] = ()
    """(keyring key id, key sealed under the cluster key) of the keys that opened those secrets."""
    trust: WorkerTrust | None = None
    """The worker's part of the security record (:mod:`p2pswarm.assignments.trust`), when it changed."""

    @property
    def empty(self) -> bool:
        return not (self.full or self.tasks or self.removed)


def delta_since(state: Any, node_id: str, since: int, ring: Mapping[int, bytes] | None = None,
                applied: int = 0) -> Delta:
    """``node_id``'s assignments in ``state`` (a ClusterState) changed after version ``since``; full when
    ``since`` is 0 or older than the history here.  ``ring``: the security record's ``secret_keys``;
    ``applied``: the member's Raft applied index, when its last entries were not the cluster state's (the
    security record's, say): the delta is as of that version, which is what the members gossip."""
    as_of = max(state.applied, applied)
    full = since <= 0 or since < state.changes.horizon(node_id) or since > as_of
    changed_at = state.changes.changed_at
    tasks = tuple(t for t in state.tasks_on(node_id) if full or changed_at.get(t.id, state.applied) > since)
    removed = () if full else tuple(state.changes.departed_since(node_id, since))
    specs, objects, key_ids = [], {}, set()
    for service, version in sorted({(t.service, t.version) for t in tasks}):
        spec = state.services[service].spec_at(version) if service in state.services else None
        if spec is None:
            continue
        specs.append((service, version, spec))
        for ref in spec.configs:
            config = state.objects.configs.get(ref.name)
            if config is not None:
                objects[("config", config.name)] = config
        for ref in spec.secrets:
            secret = state.objects.secrets.get(ref.name)
            if secret is not None:
                objects[("secret", secret.name)] = secret
                key_ids.add(secret.key)
    ring = ring or {}
    keys = tuple((k, ring[k]) for k in sorted(key_ids) if k in ring)
    return Delta(as_of, since, full, tasks, removed, tuple(specs),
                 tuple(objects[k] for k in sorted(objects)), keys)


@dataclass
class WorkerObjects:
    """The secrets and configs this worker's tasks read, by name (as ``ClusterState.objects``)."""

    secrets: dict[str, StoredObject] = field(default_factory=dict)
    configs: dict[str, StoredObject] = field(default_factory=dict)


@dataclass
class WorkerKeys:
    """The keyring keys (sealed) of this worker's secrets (as the security record's ``secret_keys``)."""

    secret_keys: dict[int, bytes] = field(default_factory=dict)


class WorkerState:
    """A worker's own assignments, rebuilt from deltas; read like the cluster state by the agent."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.version = 0
        """The member's applied index this state is as of (0: nothing yet)."""
        self.applied = 0
        """Bumped when the assignments changed: the agent re-reads them then (ClusterState's name)."""
        self.tasks: dict[str, Task] = {}
        self.specs: dict[tuple[str, int], ServiceSpec] = {}
        self.objects = WorkerObjects()
        self.security = WorkerKeys()
        self.trust: WorkerTrust | None = None
        """The worker's part of the security record as of ``version`` (None: none received yet)."""
        self.resyncs = 0

    def apply(self, delta: Delta) -> bool:
        """Take ``delta`` in; False (ignored) when it is older than this state or does not start here."""
        if delta.version < self.version or (not delta.full and delta.since > self.version):
            return False
        if delta.full:
            self.resyncs += 1
            self.tasks, self.specs = {}, {}
            self.objects, self.security = WorkerObjects(), WorkerKeys()
        for task_id in delta.removed:
            self.tasks.pop(task_id, None)
        for task in delta.tasks:
            if task.node == self.node_id:
                self.tasks[task.id] = task
            else:
                self.tasks.pop(task.id, None)
        for service, version, spec in delta.specs:
            self.specs[(service, version)] = spec
        for obj in delta.objects:
            (self.objects.secrets if obj.kind == "secret" else self.objects.configs)[obj.name] = obj
        self.security.secret_keys.update(delta.keys)
        if delta.trust is not None:
            self.trust = delta.trust
        self._prune()
        if not delta.empty or delta.keys or delta.objects:
            self.applied = delta.version
        self.version = delta.version
        return True

    def _prune(self) -> None:
        """Forget specs, objects and keys no task held here uses any more."""
        used = {(t.service, t.version) for t in self.tasks.values()}
        self.specs = {k: v for k, v in self.specs.items() if k in used}
        configs = {r.name for s in self.specs.values() for r in s.configs}
        secrets = {r.name for s in self.specs.values() for r in s.secrets}
        self.objects.configs = {k: v for k, v in self.objects.configs.items() if k in configs}
        self.objects.secrets = {k: v for k, v in self.objects.secrets.items() if k in secrets}
        keys = {s.key for s in self.objects.secrets.values()}
        self.security.secret_keys = {k: v for k, v in self.security.secret_keys.items() if k in keys}

    def tasks_on(self, node: str) -> list[Task]:
        return sorted((t for t in self.tasks.values() if t.node == node), key=lambda t: t.id)

    def spec_of(self, task: Task) -> ServiceSpec | None:
        return self.specs.get((task.service, task.version))


def choose_server(worker_id: str, members: Iterable[str]) -> str | None:
    """The member ``worker_id`` asks (None without members): the highest rendezvous weight, so each
    member serves an even share of the workers and a member's departure moves only its own."""
    best: tuple[bytes, str] | None = None
    for member in members:
        weight = hashlib.blake2b(f"{worker_id}|{member}".encode(), digest_size=8).digest()
        if best is None or (weight, member) > best:
            best = (weight, member)
    return best[1] if best is not None else None

