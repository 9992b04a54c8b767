"""What a backup holds, and the order a restore puts it back in (pure: no I/O, no clock).

A backup is *logical*, not a copy of the Raft snapshot: services (by their current spec; stacks are
services with the stack marker in their env), kv pairs, configs, and secrets **in clear** (the
backup file's encryption protects them).  Everything bound to the old cluster is left out on
purpose: node identities, the CA, join tokens, Raft membership, the security record, tasks and
service history.  The new cluster makes its own, re-seals each secret under its own keyring as if
it were created anew, and its scheduler places the services' tasks on its own nodes.

A restore applies the items in dependency order: configs and secrets before the services that
name them, kv last.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import msgpack

from p2pswarm.cluster.objects import StoredObject
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.stack import stack_of
from p2pswarm.cluster.state import ClusterState
from p2pswarm.consensus.kv import KVStore

KINDS = ("config", "secret", "service", "kv")
"""Item kinds, in the order a restore applies them."""
PART_BYTES = 640 * 1024
"""Encoded bytes of the items one restore request carries (base64 in JSON stays under the API's 1 MiB body)."""


def _object(obj: StoredObject, data: bytes) -> dict[str, Any]:
    return {"name": obj.name, "id": obj.id, "labels": dict(obj.labels), "created_at": obj.created_at, "data": data}


def export(cluster: ClusterState, kv: KVStore, open_secret: Callable[[StoredObject], bytes]) -> dict[str, Any]:
    """The backup's contents from one replica's applied state.  Call it without yielding to the event loop
    (it reads the state machines as they are at one applied index)."""
    objects = cluster.objects
    return {
        "configs": [_object(objects.configs[n], objects.configs[n].data) for n in sorted(objects.configs)],
        "secrets": [_object(objects.secrets[n], open_secret(objects.secrets[n])) for n in sorted(objects.secrets)],
        "services": [cluster.services[n].spec.to_dict() for n in sorted(cluster.services)],
        "kv": [[k, kv.data[k]] for k in sorted(kv.data)],
    }


def summary(contents: dict[str, Any]) -> dict[str, int]:
    """Counts by kind (and the stacks among the services), for the header and the CLI's line."""
    stacks = set()
    for raw in contents.get("services") or ():
        try:
            stack = stack_of(ServiceSpec.from_dict(raw))
        except Exception:
            stack = None
        if stack is not None:
            stacks.add(stack)
    return {"services": len(contents.get("services") or ()), "stacks": len(stacks),
            "secrets": len(contents.get("secrets") or ()), "configs": len(contents.get("configs") or ()),
            "kv": len(contents.get("kv") or ())}


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


def describe(counts: dict[str, int]) -> str:
    """``3 services (1 stack), 1 secret, 2 configs, 4 kv keys``."""
    services = _n(counts.get("services", 0), "service")
    if counts.get("stacks"):
        services += f" ({_n(counts['stacks'], 'stack')})"
    return ", ".join((services, _n(counts.get("secrets", 0), "secret"), _n(counts.get("configs", 0), "config"),
                      _n(counts.get("kv", 0), "kv key")))


def items(contents: dict[str, Any]) -> list[list]:
    """The contents as ``[kind, payload]`` items in restore order."""
    plural = {"config": "configs", "secret": "secrets", "service": "services", "kv": "kv"}
    out: list[list] = []
    for kind in KINDS:
        values = contents.get(plural[kind]) or []
        if not isinstance(values, list):
            raise ValueError(f"the backup's {plural[kind]} are not a list")
        out.extend([kind, v] for v in values)
    return out


def parts(all_items: Iterable[list], limit: int = PART_BYTES) -> Iterator[list[list]]:
    """Consecutive runs of items whose encoding stays under ``limit`` (an item over it travels alone)."""
    part: list[list] = []
    size = 0
    for item in all_items:
        n = len(msgpack.packb(item, use_bin_type=True))
        if part and size + n > limit:
            yield part
            part, size = [], 0
        part.append(item)
        size += n
    if part:
        yield part


def occupied(cluster: ClusterState, kv: KVStore) -> str | None:
    """Why a cluster is not a fit target for a restore (it holds state already), or None when it is."""
    held = {"service": len(cluster.services), "task": len(cluster.tasks), "secret": len(cluster.objects.secrets),
            "config": len(cluster.objects.configs), "kv key": len(kv.data)}
    used = [_n(count, what) for what, count in held.items() if count]
    return ", ".join(used) if used else None
