"""Putting a backup's items into a new cluster, through the same commands an operator's creates make.

Each item becomes the command its ``create`` would propose (a secret sealed anew under *this*
cluster's keyring first), so the state machine checks it like any other and nothing old (ids of
nodes, keys, versions of services) leaks into the new cluster.  A refusal stops the restore with
one line naming the item.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.checks import SpecError
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.consensus.requests import command_id

Sealer = Callable[[str, str, bytes], Awaitable[tuple[bytes, int]]]
"""(name, object id, clear data) -> (sealed data, keyring key id): how this cluster seals a secret."""


class RestoreError(Exception):
    """An item the new cluster refused, or that the backup holds in a form p2pswarm cannot read (one line)."""


def _object_fields(kind: str, payload: Any) -> tuple[str, str, dict[str, str], bytes]:
    try:
        name, object_id, labels, data = payload["name"], payload["id"], payload["labels"], payload["data"]
    except (TypeError, KeyError):
        raise RestoreError(f"the backup holds a {kind} p2pswarm cannot read") from None
    if not (isinstance(name, str) and isinstance(object_id, str) and isinstance(labels, dict)
            and isinstance(data, bytes)):
        raise RestoreError(f"the backup holds a {kind} p2pswarm cannot read")
    return name, object_id, labels, data


async def _write(driver: Any, command: dict, what: str) -> None:
    try:
        cmd.check_size(command)
    except SpecError as exc:
        raise RestoreError(f"{what}: {exc}") from None
    result = await driver.write_cluster(command)
    if not result.ok:
        raise RestoreError(f"{what}: {result.error}")


async def apply_item(driver: Any, seal: Sealer, item: Any) -> str:
    """Apply one ``[kind, payload]`` item (:func:`p2pswarm.backup.contents.items`); returns its kind.
    RaftUnavailable passes through (the caller answers 503)."""
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
        raise RestoreError("the backup holds an item p2pswarm cannot read")
    kind, payload = item
    now = time.time()
    if kind in ("config", "secret"):
        name, object_id, labels, data = _object_fields(kind, payload)
        if kind == "config":
            command = cmd.create_config(command_id("restore"), now, name, object_id, data, labels)
        else:
            sealed, key_id = await seal(name, object_id, data)
            command = cmd.create_secret(command_id("restore"), now, name, object_id, sealed, key_id, labels)
        await _write(driver, command, f"{kind} {name}")
    elif kind == "service":
        try:
            spec = ServiceSpec.from_dict(payload)
        except SpecError as exc:
            raise RestoreError(f"the backup holds a service p2pswarm cannot read: {exc}") from None
        await _write(driver, cmd.create_service(command_id("restore"), now, spec), f"service {spec.name}")
    elif kind == "kv":
        if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], str)):
            raise RestoreError("the backup holds a kv pair p2pswarm cannot read")
        await driver.write("put", payload[0], payload[1])
    else:
        raise RestoreError(f"the backup holds items of kind {kind!r}, which this p2pswarm does not know")
    return kind
