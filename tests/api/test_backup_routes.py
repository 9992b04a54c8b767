"""The backup routes against fake nodes: a backup is taken after a read barrier, opens with its key and
restores into an empty cluster only; the unlock key must be this node's."""

from __future__ import annotations

import asyncio
import base64
import json

import msgpack
import pytest

from p2pswarm.api.backup_routes import BackupRoutes
from p2pswarm.api.server import HttpError, Request
from p2pswarm.backup import contents as bc
from p2pswarm.backup import fileformat as ff
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.objects import SEALED_MAGIC
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.node.datadir import DataDir
from p2pswarm.security import autolock

from ..backup.test_contents import FakeDriver

pytestmark = pytest.mark.timeout(60)
PASSPHRASE = "a long and careful passphrase"


class Keyring:
    """The security host's keyring: 'sealed' is the clear data behind a prefix."""

    def open(self, record, obj):
        return obj.data[len(SEALED_MAGIC) + 1:]

    async def seal(self, driver, name, object_id, data):
        return SEALED_MAGIC + b"|" + data, 1


class Security:
    keyring = Keyring()


class Driver(FakeDriver):
    cluster_id = "cafe01"

    def __init__(self) -> None:
        super().__init__()
        self.barriers = 0
        self.security = None

    @property
    def applied(self) -> int:
        return self.index

    async def barrier(self) -> int:
        """The leader's commit index is ahead: what is committed applies before the barrier returns."""
        self.barriers += 1
        for late in getattr(self, "late", ()):
            await self.write("put", *late)
        self.late = ()
        return self.index


class Node:
    security = Security()

    def __init__(self, data_dir) -> None:
        self.driver = Driver()
        self.data_dir = data_dir

    def raft_driver(self):
        return self.driver

    def info(self):
        return {"data_dir": str(self.data_dir)}


def post(handler, body: dict):
    request = Request("POST", "/v1/cluster/x", {}, json.dumps(body).encode())
    return json.loads(asyncio.run(handler(request)).body)


def test_backup_at_a_barrier_then_restore_into_an_empty_cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(ff, "DEFAULT_KDF", ff.Kdf(n=2 ** 10))
    old = Node(tmp_path)
    d = old.driver
    asyncio.run(d.write_cluster(cmd.create_secret("a", 1.0, "pw", "sec000000001", SEALED_MAGIC + b"|hunter2", 1)))
    asyncio.run(d.write_cluster(cmd.create_service("b", 1.0, ServiceSpec("web", "srv", secrets=("pw",)))))
    d.late = [("color", "blue")]  # committed before the backup call, not yet applied here
    out = post(BackupRoutes(old).backup, {"passphrase": PASSPHRASE})
    assert d.barriers == 1 and out["index"] == 3 and out["cluster"] == "cafe01"
    assert out["summary"] == {"services": 1, "stacks": 0, "secrets": 1, "configs": 0, "kv": 1}
    header, contents = ff.open_backup(base64.b64decode(out["file"]), PASSPHRASE.encode())
    assert header.index == 3 and contents["kv"] == [["color", "blue"]]
    assert contents["secrets"][0]["data"] == b"hunter2"

    new = Node(tmp_path)
    routes = BackupRoutes(new)
    parts = list(bc.parts(bc.items(contents), limit=64))
    assert len(parts) == 3
    body = [{"restore": "t1", "part": i, "last": i == len(parts) - 1,
             "items": base64.b64encode(msgpack.packb(p, use_bin_type=True)).decode()} for i, p in enumerate(parts)]
    post(routes.restore, body[0])
    with pytest.raises(HttpError) as exc:  # a part out of order
        post(routes.restore, {**body[2], "part": 2})
    assert exc.value.status == 409 and "does not follow the restore in progress" in str(exc.value)

    new = Node(tmp_path)
    routes = BackupRoutes(new)
    for b in body:
        post(routes.restore, b)
    assert new.driver.kv.data == {"color": "blue"} and list(new.driver.cluster.services) == ["web"]
    assert new.driver.cluster.objects.secrets["pw"].data == SEALED_MAGIC + b"|hunter2"
    with pytest.raises(HttpError) as exc:
        post(routes.restore, body[0])
    assert exc.value.status == 409 and str(exc.value).startswith(
        "refusing to restore into a cluster that holds state (1 service, 1 secret, 1 kv key); restore into a new "
        "cluster: start one with `p2pswarm up --data-dir NEW_DIR`")


def test_the_backup_key_is_a_passphrase_or_this_nodes_unlock_key(tmp_path):
    routes = BackupRoutes(Node(tmp_path))

    def refused(body) -> tuple[int, str]:
        with pytest.raises(HttpError) as exc:
            routes._key(body)
        return exc.value.status, str(exc.value)
    key = bytes(range(32))
    assert refused({}) == (400, 'body must be {"passphrase": TEXT} or {"unlock_key": "P2PSU-1-..."}')
    assert refused({"passphrase": "x" * 9, "unlock_key": "y"})[0] == 400
    assert refused({"passphrase": "short"}) == (400, "a backup passphrase has at least 8 characters")
    assert refused({"unlock_key": autolock.format_unlock_key(key)}) == (
        409, "this node does not use autolock, so there is no unlock key to seal the backup with: give a "
             "passphrase instead")
    autolock.create_lock(DataDir(tmp_path), key)
    try:
        assert routes._key({"unlock_key": autolock.format_unlock_key(key)}) == (key, ff.KEY_UNLOCK)
        assert refused({"unlock_key": autolock.format_unlock_key(bytes(32))}) == (403, autolock.WRONG_KEY)
        assert refused({"unlock_key": "P2PSU-1-AAAA"})[0] == 400
    finally:
        autolock.forget(tmp_path)
