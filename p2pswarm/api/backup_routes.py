"""``POST /v1/cluster/backup`` and ``POST /v1/cluster/restore``: the routes behind ``p2pswarm cluster backup``
and ``cluster restore``.

**Backup** (``{"passphrase": TEXT}`` or ``{"unlock_key": "P2PSU-1-..."}``): a read barrier through the
leader (ReadIndex, then this replica applies up to it), then the contents are read from this node's
state machines in one step of the loop, so they are the state at one applied index that includes
every write committed before the call.  The secrets are opened here and sealed into the file with the
rest, so no secret leaves the node in clear; the answer is the file (base64), which the CLI writes.
Only a Raft member (voter or learner) holds the state to back up; a worker answers 503 with one line.

**Restore** (``{"restore": TOKEN, "part": N, "last": BOOL, "items": BASE64(msgpack)}``): the CLI opens
the file and sends its items in parts under the body limit (:data:`p2pswarm.backup.contents.PART_BYTES`).
Part 0 is refused (409) unless the cluster is empty (no services, tasks, secrets, configs, kv keys)
after a read barrier; the later parts must carry the same token.  One restore at a time per node.
"""

from __future__ import annotations

import asyncio
import base64
import time
from functools import partial
from typing import Any

import msgpack

from p2pswarm.api.common import json_body, one_line, raft_call, require_driver
from p2pswarm.api.server import HttpError, Request, Response
from p2pswarm.backup import contents as backup_contents
from p2pswarm.backup.fileformat import KEY_PASSPHRASE, KEY_UNLOCK, BackupError, check_passphrase, seal_backup
from p2pswarm.backup.restore import RestoreError, apply_item
from p2pswarm.node.view import NodeView
from p2pswarm.security.errors import SecurityError

SEAL_RETRY_SECONDS = 15.0
"""How long a restore waits for a new cluster's security to be ready to seal secrets (its first seconds)."""
NEW_CLUSTER = ("restore into a new cluster: start one with `p2pswarm up --data-dir NEW_DIR`, run `p2pswarm "
               "cluster restore FILE` on it, then join the other nodes")


class BackupRoutes:
    def __init__(self, node: NodeView) -> None:
        self.node = node
        self._restore: tuple[str, int] | None = None
        """The restore in progress on this node: (its token, the next part it expects)."""

    # ------------------------------------------------------------ backup

    def _key(self, body: Any) -> tuple[bytes, str]:
        """The key material and its kind from the body; a one-line 4xx for anything else."""
        body = body if isinstance(body, dict) else {}
        passphrase, unlock = body.get("passphrase"), body.get("unlock_key")
        if (passphrase is None) == (unlock is None) or not isinstance(passphrase or unlock, str):
            raise HttpError(400, 'body must be {"passphrase": TEXT} or {"unlock_key": "P2PSU-1-..."}')
        if passphrase is not None:
            try:
                return check_passphrase(passphrase), KEY_PASSPHRASE
            except BackupError as exc:
                raise HttpError(400, str(exc)) from None
        from p2pswarm.node.datadir import DataDir
        from p2pswarm.security import autolock
        datadir = DataDir(self.node.info()["data_dir"])
        try:
            key = autolock.parse_unlock_key(unlock)
            if not autolock.has_lock(datadir):
                raise HttpError(409, "this node does not use autolock, so there is no unlock key to seal the "
                                     "backup with: give a passphrase instead")
            autolock.open_lock(datadir, key)  # the cluster's unlock key, not just any well-formed one
        except SecurityError as exc:
            raise HttpError(403 if isinstance(exc, autolock.WrongUnlockKey) else 400, one_line(exc)) from None
        return key, KEY_UNLOCK

    async def backup(self, request: Request) -> Response:
        secret, kind = self._key(json_body(request))
        driver = require_driver(self.node)
        await raft_call(driver.barrier())
        cluster, kv, security = driver.cluster, driver.kv, self.node.security
        if cluster.objects.secrets and security is None:
            raise HttpError(409, "this node has no security host to open the cluster's secrets with")
        try:  # from here to the export: no await, so the contents are the state at one applied index
            index = driver.applied
            contents = backup_contents.export(cluster, kv, lambda obj: security.keyring.open(driver.security, obj))
        except SecurityError as exc:
            raise HttpError(503, f"cannot open the cluster's secrets for the backup: {one_line(exc)}") from None
        summary = backup_contents.summary(contents)
        seal = partial(seal_backup, contents, secret=secret, key=kind, cluster=driver.cluster_id, index=index,
                       created=time.time(), summary=summary)
        blob = await asyncio.get_running_loop().run_in_executor(None, seal)  # scrypt: up to seconds, off the loop
        return Response.json({"file": base64.b64encode(blob).decode(), "cluster": driver.cluster_id,
                              "index": index, "summary": summary, "bytes": len(blob)})

    # ------------------------------------------------------------ restore

    async def restore(self, request: Request) -> Response:
        body = json_body(request)
        body = body if isinstance(body, dict) else {}
        token, part, last = body.get("restore"), body.get("part"), body.get("last")
        if not (isinstance(token, str) and 1 <= len(token) <= 64 and type(part) is int and part >= 0
                and isinstance(last, bool)):
            raise HttpError(400, 'body must be {"restore": TOKEN, "part": N, "last": BOOL, "items": BASE64}')
        items = _items(body.get("items"))
        driver = require_driver(self.node)
        if part == 0:
            await raft_call(driver.barrier())
            held = backup_contents.occupied(driver.cluster, driver.kv)
            if held is not None:
                raise HttpError(409, f"refusing to restore into a cluster that holds state ({held}); {NEW_CLUSTER}")
            if self._restore is not None:
                raise HttpError(409, "another restore is running on this node; wait for it to finish")
        elif self._restore != (token, part):
            raise HttpError(409, f"restore part {part} does not follow the restore in progress on this node; "
                                 f"start it again on a new cluster")
        self._restore = (token, part + 1)
        done: dict[str, int] = {}
        try:
            for item in items:
                kind = await raft_call(apply_item(driver, self._seal, item))
                done[kind] = done.get(kind, 0) + 1
        except RestoreError as exc:
            self._restore = None
            raise HttpError(400, f"restore stopped: {exc}") from None
        except BaseException:
            self._restore = None
            raise
        if last:
            self._restore = None
        return Response.json({"part": part, "applied": done, "index": driver.applied})

    async def _seal(self, name: str, object_id: str, data: bytes) -> tuple[bytes, int]:
        """Seal a secret under this cluster's keyring, waiting out a new cluster's first seconds (its security
        record and keyring are made just after it starts)."""
        security = self.node.security
        if security is None:
            raise RestoreError(f"secret {name}: this cluster is plaintext (--insecure) and cannot hold secrets; "
                               "restore into a secure cluster")
        deadline = time.monotonic() + SEAL_RETRY_SECONDS
        while True:
            try:
                return await security.keyring.seal(require_driver(self.node), name, object_id, data)
            except SecurityError as exc:
                if exc.code != "unavailable" or time.monotonic() > deadline:
                    raise RestoreError(f"secret {name}: {one_line(exc)}") from None
            await asyncio.sleep(0.2)


def _items(value: Any) -> list:
    try:
        items = msgpack.unpackb(base64.b64decode(value, validate=True), raw=False, strict_map_key=False) \
            if isinstance(value, str) else None
    except Exception:  # not base64, not msgpack, trailing bytes, too deep: all the same answer
        items = None
    if not isinstance(items, list):
        raise HttpError(400, '"items" must be the base64 of a msgpack list of [kind, payload] items')
    return items
