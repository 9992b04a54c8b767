"""Assignment messages between a worker and a Raft member (kinds: :data:`p2pswarm.wire.KINDS`).

A worker sends an :class:`AssignmentsRequest` with the version it holds and the digest of the security
part it holds (:mod:`p2pswarm.assignments.trust`); the member answers with one
:class:`AssignmentsReply`: the delta (:class:`p2pswarm.assignments.core.Delta`, with the security part
when the worker's is not the member's) in ``body``,
or ``busy`` with the member the worker should ask instead (``redirect``; "" when there is none).
The body is one msgpack map, decoded within bounds and checked field by field by
:func:`decode_body`: a malformed one is a WireError (dropped and counted), never trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from p2pswarm.assignments.core import Delta
from p2pswarm.assignments.trust import DIGEST_BYTES, WorkerTrust
from p2pswarm.cluster.checks import SpecError
from p2pswarm.cluster.model import DESIRED, TASK_STATES, Task, decode_task, encode_record
from p2pswarm.cluster.objects import KINDS as OBJECT_KINDS
from p2pswarm.cluster.objects import StoredObject
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.wire import (
    MAX_ID_LEN,
    MAX_MESSAGE_BYTES,
    NODE_ID,
    Bounds,
    WireError,
    WireStruct,
    blob,
    boolean,
    message,
    text,
    uint,
    unpack,
)

MAX_BODY_BYTES = MAX_MESSAGE_BYTES - 1024
"""A reply's delta, encoded (a larger one is refused by its sender: see ``fits``)."""
MAX_ITEMS = 100_000
"""Tasks, removals, specs, objects or keys in one body; and its widest map or list."""
BODY_BOUNDS = Bounds(array=MAX_ITEMS, map=MAX_ITEMS, str=MAX_BODY_BYTES, bin=MAX_BODY_BYTES)
U64 = uint(64)


@message(56)
@dataclass(frozen=True, slots=True)
class AssignmentsRequest(WireStruct):
    """``source`` (a worker) holds its assignments as of version ``since``, and the part of the security record
    whose digest is ``trust`` (b"": none): what changed since?"""

    request: int
    source: str
    since: int
    trust: bytes = b""
    SCHEMA = (("request", U64), ("source", NODE_ID), ("since", U64), ("trust", blob(DIGEST_BYTES)))


@message(57)
@dataclass(frozen=True, slots=True)
class AssignmentsReply(WireStruct):
    """The answer to ``request``: a delta as of ``version`` in ``body``, or ``busy`` (ask ``redirect``)."""

    request: int
    source: str
    version: int
    since: int
    full: bool
    busy: bool = False
    redirect: str = ""
    body: bytes = b""
    SCHEMA = (("request", U64), ("source", NODE_ID), ("version", U64), ("since", U64), ("full", boolean),
              ("busy", boolean), ("redirect", text(MAX_ID_LEN)), ("body", blob(MAX_BODY_BYTES)))


ASSIGNMENT_MESSAGES = (AssignmentsRequest, AssignmentsReply)


def encode_body(delta: Delta) -> bytes:
    """The delta's contents (its version, since and full travel in the reply's own fields)."""
    return msgpack.packb({
        "tasks": [encode_record(t) for t in delta.tasks],
        "removed": list(delta.removed),
        "specs": [[service, version, spec.to_dict()] for service, version, spec in delta.specs],
        "objects": [[o.kind, o.name, o.id, o.version, o.created_at, [list(p) for p in o.labels], o.data, o.key]
                    for o in delta.objects],
        "keys": [[k, sealed] for k, sealed in delta.keys],
        **({"trust": delta.trust.fields()} if delta.trust is not None else {}),
    }, use_bin_type=True)


def reply_of(request: int, source: str, delta: Delta) -> AssignmentsReply:
    return AssignmentsReply(request, source, delta.version, delta.since, delta.full, body=encode_body(delta))


def decode_body(reply: AssignmentsReply) -> Delta:
    """The delta a reply carries; WireError when the body is malformed."""
    raw = unpack(reply.body, BODY_BOUNDS, "assignments body", use_list=True)
    try:
        if not isinstance(raw, dict):
            raise ValueError("not a map")
        return Delta(reply.version, reply.since, reply.full,
                     tuple(_task(t) for t in raw.get("tasks", [])),
                     tuple(_str(r) for r in raw.get("removed", [])),
                     tuple(_spec(s) for s in raw.get("specs", [])),
                     tuple(_object(o) for o in raw.get("objects", [])),
                     tuple(_key(k) for k in raw.get("keys", [])),
                     _trust(raw["trust"]) if "trust" in raw else None)
    except WireError:
        raise
    except (ValueError, TypeError, KeyError, SpecError) as exc:
        raise WireError(f"malformed assignments body: {str(exc)[:80] or type(exc).__name__}") from None


def _str(value: Any) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_ID_LEN:
        raise ValueError("bad id")
    return value


def _task(value: Any) -> Task:
    if not isinstance(value, dict) or not all(type(k) is str for k in value):
        raise ValueError("task is not a map")
    task = decode_task(value)
    if (type(task.id) is not str or type(task.service) is not str or type(task.version) is not int
            or type(task.slot) is not int or not (task.node is None or type(task.node) is str)
            or task.desired not in DESIRED or task.state not in TASK_STATES):
        raise ValueError("bad task fields")
    return task


def _spec(value: Any) -> tuple[str, int, ServiceSpec]:
    service, version, spec = value
    if type(version) is not int:
        raise ValueError("bad spec version")
    return _str(service), version, ServiceSpec.from_dict(spec)


def _object(value: Any) -> StoredObject:
    kind, name, object_id, version, created_at, labels, data, key = value
    if (kind not in OBJECT_KINDS or type(name) is not str or type(object_id) is not str or type(version) is not int
            or type(created_at) not in (int, float) or type(data) is not bytes or type(key) is not int
            or not all(isinstance(p, list) and len(p) == 2 and all(type(x) is str for x in p) for p in labels)):
        raise ValueError("bad object")
    return StoredObject(kind, name, object_id, version, float(created_at), tuple(tuple(p) for p in labels), data, key)


def _key(value: Any) -> tuple[int, bytes]:
    key_id, sealed = value
    if type(key_id) is not int or type(sealed) is not bytes:
        raise ValueError("bad keyring key")
    return key_id, sealed


def _trust(value: Any) -> WorkerTrust:
    """A member that predates the access part sends ten fields: the worker then has none."""
    cluster_id, bundle, sealed_ca, tokens, revocations, removed, rekeyed, key_generation, share, cert, *rest = value
    access = rest[0] if rest else b""
    if (not all(type(b) is bytes for b in (bundle, sealed_ca, tokens, revocations, share, cert, access))
            or type(key_generation) is not int or not isinstance(removed, list) or not isinstance(rekeyed, list)):
        raise ValueError("bad security part")
    return WorkerTrust(_str(cluster_id), bundle, sealed_ca, tokens, revocations, tuple(_str(n) for n in removed),
                       tuple(_str(n) for n in rekeyed), key_generation, share, cert, access)
