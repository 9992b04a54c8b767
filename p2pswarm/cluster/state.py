"""The replicated cluster state machine: services, tasks, nodes, secrets and configs, applied from the Raft log.

``apply(command, term, index)`` is deterministic (no clock, no randomness, every
outcome independent of dict order) so every replica that applies the same log holds
the same bytes in ``snapshot()``.  Three guarantees:

* **Idempotent.** A command carries an ``id``; the results of the last
  ``DEDUP_MEMORY`` ids are remembered (and snapshotted), and a retried command is
  answered from that memory instead of applied again.
* **Stale decisions are rejected.** A decision carries ``basis = [term, index]``.
  It is rejected when decided under another term than the entry's, and each of its
  parts is rejected when the service or node it is about changed after ``index``
  (a spec update, a scale, a drain): the leader re-plans on the newer state.
* **Bad requests never corrupt.** Every field is checked (:mod:`commands`), every
  handler validates before it mutates, and a refusal is a :class:`Result` with a
  one-line error, the same on every replica.  ``apply`` only raises on our own
  misuse (an index that does not move forward).
"""

from __future__ import annotations

import dataclasses
from operator import attrgetter
from typing import Any, Iterable, TypeVar

import msgpack

from p2pswarm.cluster.changes import TaskChanges
from p2pswarm.cluster.checks import SpecError
from p2pswarm.cluster.commands import check
from p2pswarm.cluster.model import (
    DESIRED,
    TERMINAL,
    Node,
    Service,
    Task,
    decode_node,
    decode_service,
    decode_task,
    encode_record,
    state_rank,
)
from p2pswarm.cluster.objects import ObjectCommands, Objects
from p2pswarm.cluster.result import STALE, Rejected, Result
from p2pswarm.cluster.spec import ServiceSpec

DEDUP_MEMORY = 4096
"""Command ids remembered for exactly-once application (a retry must arrive within this many commands)."""
TASK_HISTORY = 5
"""Ended, superseded tasks kept per slot for ``service ps`` (Docker's task history limit)."""
_TASK_ID = attrgetter("id")
SNAPSHOT_VERSION = 1


class ClusterState(ObjectCommands):
    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.tasks: dict[str, Task] = {}
        self.nodes: dict[str, Node] = {}
        self.removed_nodes: set[str] = set()
        self.objects = Objects()
        self.applied = 0
        self.term = 0
        self._seen: dict[str, list] = {}
        self._by_service: dict[str, dict[str, None]] = {}
        self._by_node: dict[str, dict[str, None]] = {}
        self._by_slot: dict[tuple[str, int | str | None], dict[str, None]] = {}
        """(service, slot key) -> its tasks: a placement checks its slot without scanning the service
        (a 100,000-replica service would make every batch quadratic)."""
        self.changes = TaskChanges()
        """When tasks changed and left nodes: what a worker's assignments delta is cut from (not snapshotted)."""
        self.tasks_changed: dict[str, int] = {}
        """service -> the index its tasks last changed at: what an incremental reconcile re-plans (not snapshotted:
        a restore puts every task again, at the snapshot's index)."""

    # -------------------------------------------------------------- applying

    def apply(self, command: dict | bytes, term: int, index: int) -> Result:
        if index <= self.applied or term < self.term:
            raise ValueError(f"apply({index}, term {term}) after index {self.applied}, term {self.term}")
        self.applied, self.term = index, term
        if isinstance(command, (bytes, bytearray)):
            try:
                command = msgpack.unpackb(command, raw=False)
            except Exception:
                return Result(False, "command: not valid msgpack")
        try:
            op, fields = check(command)
        except SpecError as e:
            return Result(False, str(e))
        prior = self._seen.get(fields["id"])
        if prior is not None:
            return Result(*prior)
        basis = fields["basis"]
        try:
            if basis is not None and basis[0] != term:
                raise Rejected(f"stale decision: planned in term {basis[0]}, committed in term {term}")
            if basis is not None and basis[1] >= index:
                raise Rejected(f"basis index {basis[1]} is not before the entry's index {index}")
            result = getattr(self, "_" + op)(fields, index)
        except Rejected as e:
            result = Result(False, str(e))
        self._remember(fields["id"], result)
        return result

    def _remember(self, cid: str, result: Result) -> None:
        self._seen[cid] = [result.ok, result.error, result.value]
        while len(self._seen) > DEDUP_MEMORY:
            del self._seen[next(iter(self._seen))]

    @staticmethod
    def _stale(changed: int, basis: tuple[int, int] | None) -> bool:
        return basis is not None and changed > basis[1]

    # -------------------------------------------------------------- services

    def _service(self, name: str) -> Service:
        svc = self.services.get(name)
        if svc is None:
            raise Rejected(f"service {name} does not exist")
        return svc

    def _check_spec(self, spec: ServiceSpec) -> None:
        self.objects.check_refs(spec)
        for other in sorted(self.services):
            if other != spec.name:
                taken = {(p.published, p.protocol) for p in self.services[other].spec.ports}
                for port in spec.ports:
                    if (port.published, port.protocol) in taken:
                        raise Rejected(f"ports: {port.published}/{port.protocol} is already published by service "
                                       f"{other}")

    def _new_version(self, svc: Service, spec: ServiceSpec, at: float, index: int, rollback: bool = False) -> Result:
        """Install ``spec`` as the next version; the current one becomes the rollback target."""
        self._check_spec(spec)
        version = svc.version + 1
        keep = {t.version for t in self.tasks_of(svc.name) if t.desired == "running"} | {version}
        specs = tuple(sorted((v, s) for v, s in svc.specs if v in keep)) + ((version, spec),)
        restart_tasks = not spec.runs_like(svc.spec)
        state = "rollback_started" if rollback else "updating" if restart_tasks else svc.update_state
        fresh = rollback or restart_tasks
        self.services[svc.name] = dataclasses.replace(
            svc, spec=spec, version=version, previous=svc.spec, specs=specs, updated_at=at, update_state=state,
            update_started_at=at if fresh else svc.update_started_at, update_message="" if fresh else
            svc.update_message, scheduling_error="", changed=index)
        return Result(True, value={"version": version})

    def _create_service(self, f: dict, index: int) -> Result:
        spec: ServiceSpec = f["spec"]
        if spec.name in self.services:
            raise Rejected(f"service {spec.name} already exists (use service update)")
        if self._by_service.get(spec.name):
            raise Rejected(f"service {spec.name} is still being removed: try again when its tasks are gone")
        self._check_spec(spec)
        self.services[spec.name] = Service(spec, 1, None, ((1, spec),), f["at"], f["at"], changed=index)
        return Result(True, value={"version": 1})

    def _update_service(self, f: dict, index: int) -> Result:
        spec: ServiceSpec = f["spec"]
        svc = self._service(spec.name)
        if f["version"] is not None and f["version"] != svc.version:
            raise Rejected(f"service {spec.name} is at version {svc.version}, not {f['version']}: "
                           "inspect it and retry")
        if spec.mode != svc.spec.mode:
            raise Rejected(f"mode: service {spec.name} is {svc.spec.mode}; remove and create it to change mode")
        return self._new_version(svc, spec, f["at"], index)

    def _rollback_service(self, f: dict, index: int) -> Result:
        svc = self._service(f["name"])
        if self._stale(svc.changed, f["basis"]):
            raise Rejected(f"stale decision: service {svc.name} changed after the plan")
        if svc.previous is None:
            raise Rejected(f"service {svc.name} has no previous spec to roll back to")
        result = self._new_version(svc, svc.previous, f["at"], index, rollback=True)
        if f["message"]:
            self.services[svc.name] = dataclasses.replace(self.services[svc.name], update_message=f["message"])
        return result

    def _scale_service(self, f: dict, index: int) -> Result:
        svc = self._service(f["name"])
        if svc.spec.mode == "global":
            raise Rejected(f"replicas: service {svc.name} is global; scale applies to replicated services")
        if svc.spec.replicas == f["replicas"]:
            return Result(True, value={"version": svc.version})
        return self._new_version(svc, svc.spec.replace(replicas=f["replicas"]), f["at"], index)

    def _remove_service(self, f: dict, index: int) -> Result:
        svc = self._service(f["name"])
        del self.services[svc.name]
        for task in self.tasks_of(svc.name):
            self._set_desired(task, "remove", "service removed", f["at"])
        return Result(True)

    def _set_update_state(self, f: dict, index: int) -> Result:
        svc = self._service(f["name"])
        if svc.version != f["version"] or self._stale(svc.changed, f["basis"]):
            raise Rejected(f"stale decision: service {svc.name} is at version {svc.version}, not {f['version']}")
        self.services[svc.name] = dataclasses.replace(svc, update_state=f["state"], update_message=f["message"])
        return Result(True)

    def _set_scheduling_error(self, f: dict, index: int) -> Result:
        """The leader's note on why it cannot schedule the service ('' clears it); not a change of the
        service (``changed`` stays), so it never makes a decision stale."""
        svc = self._service(f["name"])
        if svc.scheduling_error != f["message"]:
            self.services[svc.name] = dataclasses.replace(svc, scheduling_error=f["message"])
        return Result(True)

    # -------------------------------------------------------------- tasks

    def _put(self, task: Task) -> None:
        old = self.tasks.get(task.id)
        if old is not None:
            self._unindex(old)
        self.changes.put(task.id, task.node, old.node if old is not None else None, self.applied)
        self.tasks[task.id] = task
        self.tasks_changed[task.service] = self.applied
        self._by_service.setdefault(task.service, {})[task.id] = None
        self._by_slot.setdefault((task.service, task.slot_key), {})[task.id] = None
        if task.node is not None:
            self._by_node.setdefault(task.node, {})[task.id] = None

    def _drop(self, task: Task) -> None:
        del self.tasks[task.id]
        self.tasks_changed[task.service] = self.applied
        self._unindex(task)
        self.changes.drop(task.id, task.node, self.applied)

    def _unindex(self, task: Task) -> None:
        _unlink(self._by_service, task.service, task.id)
        _unlink(self._by_node, task.node, task.id)
        _unlink(self._by_slot, (task.service, task.slot_key), task.id)

    def _set_desired(self, task: Task, desired: str, reason: str, at: float) -> None:
        task = dataclasses.replace(task, desired=desired, message=reason or task.message, updated_at=at)
        if desired == "remove" and (task.state in TERMINAL or task.node is None):
            self._drop(task)
        else:
            self._put(task)

    def _assign_tasks(self, f: dict, index: int) -> Result:
        basis, at = f["basis"], f["at"]
        rejected: list[str] = []
        for tid, reason in f["stop"]:
            task = self.tasks.get(tid)
            if task is None or task.desired != "running":
                continue  # already gone or stopped: the goal is met
            svc = self.services.get(task.service)
            if svc is not None and self._stale(svc.changed, basis):
                rejected.append(f"stop {tid}: {STALE}: service {svc.name} changed after the plan")
            else:
                self._set_desired(task, "shutdown", reason, at)
        placed: list[str] = []
        for i, item in enumerate(f["place"]):
            try:
                placed.append(self._place(item, f"{index}.{i}", basis, at, index))
            except Rejected as e:
                rejected.append(f"{item['service']} slot {item['slot']}: {e}")
        value = {"placed": placed, "rejected": rejected}
        if rejected:
            more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
            return Result(False, rejected[0] + more, value)
        return Result(True, value=value)

    def _place(self, item: dict, new_id: str, basis: tuple[int, int], at: float, index: int) -> str:
        svc = self._service(item["service"])
        if self._stale(svc.changed, basis) or svc.version != item["version"]:
            raise Rejected(f"stale decision: service {svc.name} changed after the plan (now version {svc.version})")
        slot, node = item["slot"], item["node"]
        if svc.spec.mode == "replicated" and not 1 <= slot <= svc.spec.replicas:
            raise Rejected(f"slot {slot} is outside 1..{svc.spec.replicas}")
        if svc.spec.mode == "global" and (slot != 0 or node is None):
            raise Rejected("a global task has slot 0 and a node")
        if node is not None:
            record = self.nodes.get(node)
            if record is None:
                raise Rejected(f"node {node} is unknown")
            if record.availability != "active":
                raise Rejected(f"node {node} is {record.availability}")
            if self._stale(record.changed, basis):
                raise Rejected(f"stale decision: node {node} changed after the plan")
        pending = None
        if item["task"] is not None:
            pending = self.tasks.get(item["task"])
            if pending is None or pending.service != svc.name or pending.slot != slot or pending.node is not None \
                    or not pending.live:
                raise Rejected(f"task {item['task']} is not a pending task of this slot")
        key = slot or node
        for other in self.tasks_in_slot(svc.name, key):
            # Two live tasks share a slot only while one replaces the other with a different spec
            # (a start-first update); anything else is a double placement.
            if other.live and other.slot_key == key and other is not pending \
                    and svc.spec.runs_like(self.spec_of(other) or svc.spec):
                raise Rejected(f"slot already has task {other.id}")
        if pending is not None:
            task = dataclasses.replace(pending, node=node, state="new" if node is None else "assigned",
                                       message=item["message"], updated_at=at)
        else:
            task = Task(new_id, svc.name, slot, node, item["version"], state="new" if node is None else "assigned",
                        message=item["message"], created_at=at, updated_at=at, restarts=item["restarts"],
                        created=index)
        self._put(task)
        self._prune_history(svc.name, key)
        return task.id

    def _prune_history(self, service: str, key: int | str | None) -> None:
        old = sorted((t for t in self.tasks_in_slot(service, key) if t.desired != "running"
                      and t.state in TERMINAL), key=lambda t: (t.created, t.id))
        for task in old[:-TASK_HISTORY]:
            self._drop(task)

    def _set_task_desired(self, f: dict, index: int) -> Result:
        rejected = []
        for tid in f["tasks"]:
            task = self.tasks.get(tid)
            if task is None:
                continue
            svc = self.services.get(task.service)
            if DESIRED.index(f["desired"]) < DESIRED.index(task.desired):
                rejected.append(f"task {tid} is already {task.desired}")
            elif svc is not None and self._stale(svc.changed, f["basis"]):
                rejected.append(f"stale decision: service {svc.name} changed after the plan")
            elif f["desired"] != task.desired:
                self._set_desired(task, f["desired"], f["reason"], f["at"])
        return Result(not rejected, rejected[0] if rejected else "", {"rejected": rejected})

    def _report_tasks(self, f: dict, index: int) -> Result:
        """Each report as its own ``report_task_status``; one refused (its task ended or is gone meanwhile) does
        not stop the others.  ``refused`` gives their positions, so that the leader does not propose them again;
        only the first reason is kept (the result is remembered by command id, snapshots included)."""
        first, refused = "", []
        for i, report in enumerate(f["reports"]):
            try:
                self._report_task_status(dict(report, at=f["at"]), index)
            except Rejected as e:
                first = first or str(e)
                refused.append(i)
        if refused:
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            return Result(False, first + more, {"refused": refused})
        return Result(True, "", {"refused": []})

    def _report_task_status(self, f: dict, index: int) -> Result:
        tid, state, at = f["task"], f["state"], f["at"]
        task = self.tasks.get(tid)
        if task is None:
            raise Rejected(f"task {tid} does not exist")
        if f["node"] is None and state != "orphaned":
            raise Rejected("only a task's own node reports its state; the scheduler may only orphan it")
        if f["node"] is not None and f["node"] != task.node:
            raise Rejected(f"task {tid} belongs to node {task.node}, not {f['node']}")
        if task.state in TERMINAL and state != task.state:
            raise Rejected(f"task {tid} already ended ({task.state})")
        if state_rank(state) < state_rank(task.state):
            raise Rejected(f"stale report: task {tid} is already {task.state}")
        task = dataclasses.replace(
            task, state=state, updated_at=at,
            port=f["port"] if f["port"] is not None else task.port,
            exit_code=f["exit_code"] if f["exit_code"] is not None else task.exit_code,
            error=f["error"] or task.error, health=f["health"] if f["health"] is not None else task.health,
            started_at=at if state == "running" and task.started_at is None else task.started_at,
            finished_at=at if state in TERMINAL and task.finished_at is None else task.finished_at)
        if task.desired == "remove" and state in TERMINAL:
            self._drop(task)
        else:
            self._put(task)
        return Result(True)

    # -------------------------------------------------------------- nodes

    def _update_node(self, f: dict, index: int) -> Result:
        nid = f["node"]
        if nid in self.removed_nodes:
            raise Rejected(f"node {nid} was removed; node ids are never reused (start it with a fresh data dir)")
        node = self.nodes.get(nid) or Node(nid, f["name"] or nid, changed=index)
        labels = dict(node.labels) if f["labels"] is None else dict(f["labels"])
        labels.update(dict(f["label_add"] or ()))
        for key in f["label_rm"]:
            labels.pop(key, None)
        new = dataclasses.replace(
            node, name=f["name"] or node.name, availability=f["availability"] or node.availability,
            labels=tuple(sorted(labels.items())), cpu=node.cpu if f["cpu"] is None else f["cpu"],
            memory=node.memory if f["memory"] is None else f["memory"])
        if f.get("engine") is not None:
            new = dataclasses.replace(new, engine=f["engine"][0], engine_detail=f["engine"][1])
        if f.get("isolation") is not None:
            new = dataclasses.replace(new, isolation=f["isolation"][0], isolation_detail=f["isolation"][1])
        if new != node or nid not in self.nodes:
            self.nodes[nid] = dataclasses.replace(new, changed=index)
        return Result(True)

    def _remove_node(self, f: dict, index: int) -> Result:
        nid = f["node"]
        if nid not in self.nodes:
            raise Rejected(f"node {nid} does not exist")
        for task in self.tasks_on(nid):
            if task.state not in TERMINAL:
                task = dataclasses.replace(task, state="orphaned", updated_at=f["at"], finished_at=f["at"],
                                           message="node removed")
                self._put(task)
            if task.desired == "running":
                self._set_desired(task, "shutdown", "node removed", f["at"])
            elif task.desired == "remove":
                self._drop(task)
        del self.nodes[nid]
        self.removed_nodes.add(nid)
        return Result(True)

    # -------------------------------------------------------------- queries

    def tasks_of(self, service: str, ordered: bool = True) -> list[Task]:
        """The service's tasks (current and history), by slot (or node), newest first (:func:`slot_order`);
        ``ordered=False``: as they come (sorting 100,000 tasks costs the leader's reconciler more than using them)."""
        tasks = [self.tasks[t] for t in self._by_service.get(service, ())]
        return sorted(tasks, key=slot_order) if ordered else tasks

    def tasks_in_slot(self, service: str, key: int | str | None) -> list[Task]:
        """The tasks of one slot (replicated) or node (global) of ``service``, current and history."""
        return [self.tasks[t] for t in self._by_slot.get((service, key), ())]

    def tasks_on(self, node: str, ordered: bool = True) -> list[Task]:
        """The node's tasks (current and history), by id (``ordered=False``: as they come)."""
        tasks = [self.tasks[t] for t in self._by_node.get(node, ())]
        return sorted(tasks, key=_TASK_ID) if ordered else tasks

    def spec_of(self, task: Task) -> ServiceSpec | None:
        """The spec version ``task`` runs (None once the service is gone)."""
        svc = self.services.get(task.service)
        return None if svc is None else svc.spec_at(task.version)

    def service_summaries(self) -> list[dict[str, Any]]:
        """One row per service for ``service ls``: running / desired tasks."""
        rows = []
        for name in sorted(self.services):
            svc = self.services[name]
            tasks = [t for t in self.tasks_of(name) if t.desired == "running"]
            desired = svc.spec.replicas if svc.spec.mode == "replicated" else sum(1 for t in tasks if t.node)
            rows.append({"name": name, "mode": svc.spec.mode, "version": svc.version,
                         "running": sum(1 for t in tasks if t.state == "running"), "desired": desired,
                         "ports": [str(p) for p in svc.spec.ports], "update_state": svc.update_state,
                         "update_message": svc.update_message, "scheduling_error": svc.scheduling_error})
        return rows

    def service_ps(self, name: str) -> list[dict[str, Any]]:
        """``service ps`` rows: each slot's current task first, then its history."""
        rows, seen = [], set()
        for task in self.tasks_of(name):
            current = task.slot_key not in seen
            seen.add(task.slot_key)
            label = f"{name}.{task.slot}" if task.slot else f"{name}.{task.node}"
            rows.append({"id": task.id, "name": label, "current": current, "node": task.node,
                         "version": task.version, "desired": task.desired, "state": task.state,
                         "since": task.updated_at, "port": task.port, "exit_code": task.exit_code,
                         "error": task.error or task.message, "health": task.health})
        return rows

    # -------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        return msgpack.packb({
            "version": SNAPSHOT_VERSION, "applied": self.applied, "term": self.term,
            "services": [encode_record(self.services[k]) for k in sorted(self.services)],
            "tasks": [encode_record(self.tasks[k]) for k in sorted(self.tasks)],
            "nodes": [encode_record(self.nodes[k]) for k in sorted(self.nodes)],
            "removed_nodes": sorted(self.removed_nodes),
            "seen": [[cid, *result] for cid, result in self._seen.items()], **self.objects.snapshot(),
        }, use_bin_type=True)

    def restore(self, blob: bytes) -> None:
        """Replace the whole state by a snapshot's (raises on a corrupt one: our own storage)."""
        data = msgpack.unpackb(blob, raw=False)
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"cluster snapshot version {data.get('version')!r} is not {SNAPSHOT_VERSION}")
        self.__init__()  # type: ignore[misc]
        self.applied, self.term = data["applied"], data["term"]
        self.changes = TaskChanges(floor=self.applied)
        self.services = {s.name: s for s in map(decode_service, data["services"])}
        self.nodes = {n.id: n for n in map(decode_node, data["nodes"])}
        self.removed_nodes = set(data["removed_nodes"])
        self.objects.restore(data)
        for task in map(decode_task, data["tasks"]):
            self._put(task)
        self._seen = {cid: result for cid, *result in data["seen"]}


def slot_order(task: Task) -> tuple:
    """Sort key: by slot (a global service's: by node), the newest task of a slot first."""
    return task.slot, "" if task.slot else task.node or "", -task.created, task.id


K = TypeVar("K")


def _unlink(index: dict[K, dict[str, None]], key: K | None, task_id: str) -> None:
    """Drop ``task_id`` from ``index[key]``, and the key once no task is under it (None: never indexed)."""
    if key is not None and key in index:
        index[key].pop(task_id, None)
        if not index[key]:
            del index[key]


def replay(commands: Iterable[dict | bytes], term: int = 1) -> ClusterState:
    """A state with ``commands`` applied at indexes 1, 2, ... (tests and tools)."""
    state = ClusterState()
    for index, command in enumerate(commands, start=1):
        state.apply(command, term, index)
    return state
