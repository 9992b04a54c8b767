"""Cluster commands: the msgpack-able dicts that go through the Raft log.

Every command is ``{"op", "id", "at", ...}``: ``id`` makes a retried command apply
once, ``at`` is the proposer's clock reading (the only time the state machine ever
sees, so every replica records the same timestamps).  Scheduler decisions also
carry ``basis = [term, index]``: the leader's term and the applied index of the
state it planned against; the state machine rejects them if the objects they are
about changed after that index, or if they were decided under another term.

The builders here are what the leader, the API and the tests call; :func:`check`
is what the state machine calls on every entry it applies, since a log entry is
only as trustworthy as the node that proposed it.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator

import msgpack

from p2pswarm.cluster.capabilities import ENGINES, ISOLATIONS, MAX_DETAIL
from p2pswarm.cluster.checks import (
    LABEL_KEY,
    LABEL_KEY_WHAT,
    SpecError,
    choice,
    fail,
    integer,
    is_bytes,
    number,
    pairs,
    strings,
    text,
)
from p2pswarm.cluster.model import AVAILABILITY, DESIRED, TASK_STATES, UPDATE_STATES
from p2pswarm.cluster.objects import MAX_DATA, OBJECT_ID, OBJECT_ID_WHAT, SEAL_OVERHEAD
from p2pswarm.cluster.spec import MAX_MEMORY, MAX_REPLICAS, NAME, NAME_WHAT, ServiceSpec
from p2pswarm.cluster.workload import OBJECT_NAME, OBJECT_NAME_WHAT
from p2pswarm.consensus.messages import MAX_ENTRY_BYTES

MAX_BATCH = 10_000
"""Placements (or task ids) in one command."""
ENTRY_HEADROOM = 64
"""Bytes of a Raft entry that are not the command: the state machine's envelope ``{"sm": "cluster",
"cmd": ...}`` (:func:`p2pswarm.node.statemachine.encode_cluster`: 1 + 3 + 8 + 4 = 16 bytes) plus the growth of
a batch's two msgpack array headers from 1 to 3 bytes (2 x 2 = 4); 64 leaves room for a longer envelope."""
MAX_COMMAND_BYTES = MAX_ENTRY_BYTES - ENTRY_HEADROOM
"""Encoded size of one command, at most: the leader refuses a larger Raft entry (``MAX_ENTRY_BYTES``)."""
MAX_ID = 128
MAX_MESSAGE = 1024
MAX_EXIT_CODE = 255
"""A task's exit code is within ±this (a process's status byte; minus the signal that killed it)."""
MAX_TIME = 1e12
ID = re.compile(r"[\x21-\x7e]{1,128}")
ID_WHAT = "must be 1-128 printable ASCII characters without spaces"


def _command(op: str, cid: str, at: float, basis: Iterable[int] | None = None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"op": op, "id": cid, "at": at, **fields}
    if basis is not None:
        out["basis"] = list(basis)
    return out


# ------------------------------------------------------------------ builders

def create_service(cid: str, at: float, spec: ServiceSpec) -> dict:
    return _command("create_service", cid, at, spec=spec.to_dict())


def update_service(cid: str, at: float, spec: ServiceSpec, version: int | None = None) -> dict:
    """``version``: the version the caller read; the update fails if the service moved on."""
    return _command("update_service", cid, at, spec=spec.to_dict(), version=version)


def rollback_service(cid: str, at: float, name: str, basis: Iterable[int] | None = None,
                     message: str = "") -> dict:
    return _command("rollback_service", cid, at, basis, name=name, message=message)


def scale_service(cid: str, at: float, name: str, replicas: int) -> dict:
    return _command("scale_service", cid, at, name=name, replicas=replicas)


def remove_service(cid: str, at: float, name: str) -> dict:
    return _command("remove_service", cid, at, name=name)


def placement(service: str, version: int, slot: int, node: str | None, *, task: str | None = None,
              restarts: Iterable[float] = (), message: str = "") -> dict:
    """One decision of an ``assign_tasks`` batch: a new task for ``slot`` on ``node`` (or, with
    ``task``, the pending task to place); ``node`` None records a task that cannot be placed,
    ``message`` saying why."""
    return {"service": service, "version": version, "slot": slot, "node": node, "task": task,
            "restarts": list(restarts), "message": message}


def new_placements(service: str, version: int, slots: Iterable[int], nodes: Iterable[str]) -> list[dict]:
    """:func:`placement` of a new task for each slot on its node, in one pass (a zone outage re-places thousands)."""
    blank = placement(service, version, 0, None)  # the fields, from the one place that names them
    return [dict(blank, slot=slot, node=node, restarts=[]) for slot, node in zip(slots, nodes)]


def assign_tasks(cid: str, at: float, basis: Iterable[int], place: Iterable[dict],
                 stop: Iterable[tuple[str, str]] = ()) -> dict:
    """Stops ``stop`` (``(task id, reason)``: desired shutdown) then applies ``place``, so that a
    move (or a restart, or an update of a slot) is one decision."""
    return _command("assign_tasks", cid, at, basis, place=list(place), stop=list(map(list, stop)))


def assign_batches(next_id: Callable[[], str], at: float, basis: Iterable[int], place: Iterable[dict],
                   stop: Iterable[tuple[str, str]] = (), limit: int = MAX_COMMAND_BYTES) -> Iterator[dict]:
    """``assign_tasks`` commands that together stop ``stop`` and apply ``place``, packed in order (stops first,
    so that a slot is freed no later than it is filled again): see :func:`_batches`."""
    basis = list(basis)
    return _batches(lambda b: assign_tasks("x" * MAX_ID, at, basis, b["place"], b["stop"]), next_id,
                    {"stop": [list(s) for s in stop], "place": list(place)}, limit)


def report_batches(next_id: Callable[[], str], at: float, reports: Iterable[dict],
                   limit: int = MAX_COMMAND_BYTES) -> Iterator[dict]:
    """``report_tasks`` commands that together carry ``reports`` (:func:`task_report`), in order."""
    return _batches(lambda b: report_tasks("x" * MAX_ID, at, b["reports"]), next_id, {"reports": list(reports)},
                    limit)


def _batches(make: Callable[[dict[str, list]], dict], next_id: Callable[[], str], lists: dict[str, list],
             limit: int) -> Iterator[dict]:
    """Commands made by ``make`` from consecutive runs of ``lists``' entries (the lists in their order), each at
    most ``limit`` bytes encoded and ``MAX_BATCH`` entries per list.  ``make`` names a command by the longest id
    (an upper bound of its size); ``next_id`` then names each one made.  Sizes are measured, not estimated: the
    command's fixed part is encoded once and each entry once; everything in one command takes one encoding."""
    if any(lists.values()) and all(len(v) <= MAX_BATCH for v in lists.values()):
        whole = make(lists)
        if encoded_size(whole) <= limit:
            whole["id"] = next_id()
            yield whole
            return
    fixed = encoded_size(make({kind: [] for kind in lists}))
    batch: dict[str, list] = {kind: [] for kind in lists}
    size = fixed
    for kind, entries in lists.items():
        for entry in entries:
            cost = encoded_size(entry)
            if fixed + cost > limit:
                raise ValueError(f"one {kind} entry is {cost} bytes: no command of {limit} bytes can carry it")
            if size + cost > limit or len(batch[kind]) >= MAX_BATCH:
                yield dict(make(batch), id=next_id())
                batch, size = {kind: [] for kind in lists}, fixed
            batch[kind].append(entry)
            size += cost
    if any(batch.values()):
        yield dict(make(batch), id=next_id())


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` in msgpack, as the Raft log carries it."""
    return len(msgpack.packb(value, use_bin_type=True))


def check_size(command: dict) -> None:
    """SpecError (one line) if ``command`` cannot travel in one Raft entry."""
    size = encoded_size(command)
    if size > MAX_COMMAND_BYTES:
        what = "the service spec" if "spec" in command else "the command"
        raise SpecError(f"{what} encodes to {size} bytes, over the {MAX_COMMAND_BYTES}-byte limit of one cluster "
                        "command: shorten its args, env or health command")


def set_scheduling_error(cid: str, at: float, name: str, message: str) -> dict:
    """The leader's note on why scheduling ``name`` failed, for ``service ps`` and ``inspect`` ('' clears it)."""
    return _command("set_scheduling_error", cid, at, name=name, message=message)


def set_task_desired(cid: str, at: float, tasks: Iterable[str], desired: str, reason: str = "",
                     basis: Iterable[int] | None = None) -> dict:
    return _command("set_task_desired", cid, at, basis, tasks=list(tasks), desired=desired, reason=reason)


def report_task_status(cid: str, at: float, task: str, state: str, *, node: str | None, port: int | None = None,
                       exit_code: int | None = None, error: str = "", health: str | None = None) -> dict:
    """``node`` is the reporting agent's node (it must run the task); None is the scheduler itself,
    which may only declare a task ``orphaned`` (its node died or left)."""
    return _command("report_task_status", cid, at, **task_report(task, state, node=node, port=port,
                                                                   exit_code=exit_code, error=error, health=health))


def task_report(task: str, state: str, *, node: str | None, port: int | None = None, exit_code: int | None = None,
                error: str = "", health: str | None = None) -> dict:
    """One report of a ``report_tasks`` batch: the fields of :func:`report_task_status`."""
    return {"task": task, "state": state, "node": node, "port": port, "exit_code": exit_code, "error": error,
            "health": health}


def report_tasks(cid: str, at: float, reports: Iterable[dict]) -> dict:
    """Many ``report_task_status`` in one Raft entry, each applied on its own in order: a zone outage orphans
    thousands of tasks at once, and their replacements then start together (:func:`report_batches`)."""
    return _command("report_tasks", cid, at, reports=list(reports))


def update_node(cid: str, at: float, node: str, *, name: str | None = None, availability: str | None = None,
                labels: dict[str, str] | None = None, label_add: dict[str, str] | None = None,
                label_rm: Iterable[str] = (), cpu: float | None = None, memory: int | None = None,
                engine: tuple[str, str] | None = None, isolation: tuple[str, str] | None = None) -> dict:
    """Creates the node on first use; fields left None are kept.  ``engine`` and ``isolation`` are
    ``(kind, detail)`` as the node gossips them (:mod:`p2pswarm.cluster.capabilities`)."""
    caps: dict[str, Any] = {} if engine is None and isolation is None else {
        "engine": None if engine is None else list(engine), "isolation": None if isolation is None else list(isolation)}
    return _command("update_node", cid, at, node=node, name=name, availability=availability, labels=labels,
                    label_add=label_add, label_rm=list(label_rm), cpu=cpu, memory=memory, **caps)


def remove_node(cid: str, at: float, node: str) -> dict:
    return _command("remove_node", cid, at, node=node)


def set_update_state(cid: str, at: float, name: str, version: int, state: str, message: str = "",
                     basis: Iterable[int] | None = None) -> dict:
    return _command("set_update_state", cid, at, basis, name=name, version=version, state=state, message=message)


def create_secret(cid: str, at: float, name: str, object_id: str, sealed: bytes, key: int,
                  labels: dict[str, str] | None = None) -> dict:
    """``sealed``: the data sealed with keyring key ``key`` (:func:`p2pswarm.security.secretbox.seal_secret`)."""
    return _command("create_secret", cid, at, name=name, object=object_id, data=sealed, key=key, labels=labels or {})


def create_config(cid: str, at: float, name: str, object_id: str, data: bytes,
                  labels: dict[str, str] | None = None) -> dict:
    return _command("create_config", cid, at, name=name, object=object_id, data=data, labels=labels or {})


def remove_secret(cid: str, at: float, name: str) -> dict:
    return _command("remove_secret", cid, at, name=name)


def remove_config(cid: str, at: float, name: str) -> dict:
    return _command("remove_config", cid, at, name=name)


# ------------------------------------------------------------------ checking

Check = Callable[[str, Any], Any]


def _opt(check: Check) -> Check:
    """The field may be absent or None."""
    def optional(f: str, v: Any) -> Any:
        return None if v is None else check(f, v)
    optional.optional = True  # type: ignore[attr-defined]
    return optional


def _name(f: str, v: Any) -> str:
    return text(f, v, 63, NAME, NAME_WHAT)


def _ident(f: str, v: Any) -> str:
    return text(f, v, MAX_ID, ID, ID_WHAT)


def _message(f: str, v: Any) -> str:
    if type(v) is not str or len(v) > MAX_MESSAGE:
        raise fail(f, f"must be a string of at most {MAX_MESSAGE} characters", v)
    return v


def _idents(f: str, v: Any) -> tuple[str, ...]:
    items = strings(f, v, MAX_BATCH, MAX_ID, allow_empty=False)
    for item in items:
        _ident(f, item)
    return items


def _stops(f: str, v: Any) -> list[tuple[str, str]]:
    out = []
    for item in _list(f, v, MAX_BATCH):
        if not isinstance(item, list) or len(item) != 2:
            raise fail(f, "entries must be [task id, reason]", item)
        out.append((_ident(f, item[0]), _message(f, item[1])))
    return out


def _labels(f: str, v: Any) -> tuple[tuple[str, str], ...]:
    return pairs(f, v, 64, LABEL_KEY, LABEL_KEY_WHAT, 256)


def _object_name(f: str, v: Any) -> str:
    return text(f, v, 64, OBJECT_NAME, OBJECT_NAME_WHAT)


def _data(limit: int) -> Check:
    def data(f: str, v: Any) -> bytes:
        if not is_bytes(v, limit):
            raise fail(f, f"must be 1 to {limit} bytes", f"{len(v)} bytes" if isinstance(v, bytes) else v)
        return v
    return data


def _capability(f: str, v: Any, kinds: tuple[str, ...]) -> tuple[str, str]:
    """``[kind, detail]`` of a node's engine or isolation."""
    if not isinstance(v, list) or len(v) != 2:
        raise fail(f, "must be [kind, detail]", v)
    if type(v[1]) is not str or len(v[1]) > MAX_DETAIL:
        raise fail(f, f"the detail must be a string of at most {MAX_DETAIL} characters", v[1])
    return choice(f, v[0], kinds), v[1]


def _version(f: str, v: Any) -> int:
    return integer(f, v, 1, 2**53)


def _time(f: str, v: Any) -> float:
    return number(f, v, 0, MAX_TIME)


def _placement(f: str, v: Any) -> dict:
    return _fields(f, v, PLACEMENT)


def _placements(f: str, v: Any) -> list[dict]:
    if not isinstance(v, list) or len(v) > MAX_BATCH:
        raise fail(f, f"must be a list of at most {MAX_BATCH} placements", v)
    return [_placement(f"{f}[{i}]", item) for i, item in enumerate(v)]


PLACEMENT: dict[str, Check] = {
    "service": _name, "version": _version, "slot": lambda f, v: integer(f, v, 0, MAX_REPLICAS),
    "node": _opt(_ident), "task": _opt(_ident),
    "restarts": lambda f, v: tuple(_time(f, t) for t in _list(f, v, 64)), "message": _message,
}


def _list(f: str, v: Any, limit: int) -> list:
    if not isinstance(v, list) or len(v) > limit:
        raise fail(f, f"must be a list of at most {limit} entries", v)
    return v


REPORT: dict[str, Check] = {
    "task": _ident, "state": lambda f, v: choice(f, v, TASK_STATES), "node": _opt(_ident),
    "port": _opt(lambda f, v: integer(f, v, 1, 65535)),
    "exit_code": _opt(lambda f, v: integer(f, v, -MAX_EXIT_CODE, MAX_EXIT_CODE)),
    "error": _message, "health": _opt(lambda f, v: choice(f, v, ("starting", "healthy", "unhealthy")))}


def _reports(f: str, v: Any) -> list[dict]:
    return [_fields(f"{f}[{i}]", item, REPORT) for i, item in enumerate(_list(f, v, MAX_BATCH))]


def check_report(report: Any) -> dict:
    """One report of a batch as the state machine checks it (SpecError if it would be refused): a leader checks
    each before batching, since a malformed report refuses its whole ``report_tasks`` command."""
    return _fields("report", report, REPORT)


SCHEMAS: dict[str, dict[str, Check]] = {
    "create_service": {"spec": lambda f, v: ServiceSpec.from_dict(v)},
    "update_service": {"spec": lambda f, v: ServiceSpec.from_dict(v), "version": _opt(_version)},
    "rollback_service": {"name": _name, "message": _message},
    "scale_service": {"name": _name, "replicas": lambda f, v: integer(f, v, 0, MAX_REPLICAS)},
    "remove_service": {"name": _name},
    "assign_tasks": {"place": _placements, "stop": _stops},
    "set_task_desired": {"tasks": _idents, "desired": lambda f, v: choice(f, v, DESIRED), "reason": _message},
    "report_task_status": REPORT,
    "report_tasks": {"reports": _reports},
    "update_node": {
        "node": _ident, "name": _opt(lambda f, v: text(f, v, 128)),
        "availability": _opt(lambda f, v: choice(f, v, AVAILABILITY)), "labels": _opt(_labels),
        "label_add": _opt(_labels), "label_rm": lambda f, v: strings(f, v, 64, 128),
        "cpu": _opt(lambda f, v: number(f, v, 0, 1e6)), "memory": _opt(lambda f, v: integer(f, v, 0, MAX_MEMORY)),
        "engine": _opt(lambda f, v: _capability(f, v, ENGINES)),
        "isolation": _opt(lambda f, v: _capability(f, v, ISOLATIONS))},
    "remove_node": {"node": _ident},
    "set_update_state": {"name": _name, "version": _version,
                         "state": lambda f, v: choice(f, v, UPDATE_STATES), "message": _message},
    "set_scheduling_error": {"name": _name, "message": _message},
    "create_secret": {"name": _object_name, "object": lambda f, v: text(f, v, 64, OBJECT_ID, OBJECT_ID_WHAT),
                      "data": _data(MAX_DATA + SEAL_OVERHEAD), "key": lambda f, v: integer(f, v, 1, 2**31),
                      "labels": _labels},
    "create_config": {"name": _object_name, "object": lambda f, v: text(f, v, 64, OBJECT_ID, OBJECT_ID_WHAT),
                      "data": _data(MAX_DATA), "labels": _labels},
    "remove_secret": {"name": _object_name},
    "remove_config": {"name": _object_name},
}
DECISIONS = frozenset({"assign_tasks"})
"""Commands that must carry a basis: they are only right for the state they were planned on."""


def _basis(f: str, v: Any) -> tuple[int, int]:
    if not isinstance(v, list) or len(v) != 2:
        raise fail(f, "must be [term, index]", v)
    return integer(f, v[0], 0, 2**63 - 1), integer(f, v[1], 0, 2**63 - 1)


COMMON: dict[str, Check] = {"id": _ident, "at": _time, "basis": _opt(_basis)}


def _fields(where: str, data: Any, schema: dict[str, Check]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise fail(where, "must be a mapping", data)
    unknown = sorted(str(k) for k in data if k not in schema)
    if unknown:
        raise SpecError(f"{where}: unknown field {unknown[0]!r}")
    out = {}
    for name, check in schema.items():
        if name not in data and not getattr(check, "optional", False):
            raise SpecError(f"{where}: missing field {name!r}")
        out[name] = check(name, data.get(name))
    return out


def check(command: Any) -> tuple[str, dict[str, Any]]:
    """``(op, fields)`` of a well-formed command, every field checked and normalised; else SpecError."""
    if not isinstance(command, dict):
        raise fail("command", "must be a mapping", command)
    op = choice("op", command.get("op"), SCHEMAS)
    schema = {**COMMON, **SCHEMAS[op]}
    fields = _fields(op, {k: v for k, v in command.items() if k != "op"}, schema)
    if op in DECISIONS and fields["basis"] is None:
        raise SpecError(f"{op}: a scheduler decision must carry its basis [term, index]")
    return op, fields


__all__ = ["create_service", "update_service", "rollback_service", "scale_service", "remove_service", "placement",
           "assign_tasks", "assign_batches", "set_task_desired", "report_task_status", "task_report",
           "report_tasks", "report_batches", "check_report", "update_node", "remove_node",
           "set_update_state", "set_scheduling_error", "create_secret", "create_config", "remove_secret",
           "remove_config", "encoded_size", "check_size", "check", "SCHEMAS"]
