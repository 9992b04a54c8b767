"""What a backup holds and how a restore puts it back: a round trip between two in-process state machines."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from p2pswarm.backup import contents as bc
from p2pswarm.backup.restore import RestoreError, apply_item
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.objects import SEALED_MAGIC
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.stack import STACK_ENV
from p2pswarm.consensus.kv import KVStore, encode_command
from p2pswarm.node.statemachine import StateMachines


class FakeDriver:
    """The driver's writes, applied straight to in-process state machines at increasing indexes."""

    def __init__(self) -> None:
        self.sm = StateMachines()
        self.cluster, self.kv = self.sm.cluster, self.sm.kv
        self.index = 0

    async def write_cluster(self, command: dict):
        self.index += 1
        return self.cluster.apply(command, 1, self.index)

    async def write(self, op: str, key: str, *args):
        self.index += 1
        return self.kv.apply(self.index, encode_command(1, self.index, op, key, *args))


async def fake_seal(name: str, object_id: str, data: bytes) -> tuple[bytes, int]:
    """Stands in for the new cluster's keyring: 'sealed' data the state machine accepts and a test can read."""
    return SEALED_MAGIC + b"new|" + data, 7


def source() -> FakeDriver:
    d = FakeDriver()

    async def fill():
        await d.write_cluster(cmd.create_config("a", 1.0, "nginx.conf", "cfg000000001", b"listen 80;", {"t": "x"}))
        await d.write_cluster(cmd.create_secret("b", 1.0, "db-pass", "sec000000001", SEALED_MAGIC + b"old|hunter22",
                                                1, {"team": "db"}))
        await d.write_cluster(cmd.create_service("c", 2.0, ServiceSpec("web", "srv", replicas=3,
                                                                       secrets=("db-pass",), configs=("nginx.conf",))))
        await d.write_cluster(cmd.create_service("d", 2.0, ServiceSpec("shop_api", "api",
                                                                       env=((STACK_ENV, "shop"),))))
        await d.write("put", "app/color", "blue")
        await d.write("put", "app/size", "7")
    asyncio.run(fill())
    return d


def old_open(obj) -> bytes:
    assert obj.data.startswith(SEALED_MAGIC + b"old|")
    return obj.data[len(SEALED_MAGIC) + 4:]


def restored(contents: dict) -> FakeDriver:
    target = FakeDriver()

    async def run():
        for part in bc.parts(bc.items(msgpack.unpackb(msgpack.packb(contents), raw=False)), limit=200):
            for item in part:
                await apply_item(target, fake_seal, item)
    asyncio.run(run())
    return target


def test_a_restore_brings_back_services_stacks_kv_secrets_and_configs():
    src = source()
    contents = bc.export(src.cluster, src.kv, old_open)
    assert bc.summary(contents) == {"services": 2, "stacks": 1, "secrets": 1, "configs": 1, "kv": 2}
    assert bc.describe(bc.summary(contents)) == "2 services (1 stack), 1 secret, 1 config, 2 kv keys"
    new = restored(contents)
    assert {n: s.spec for n, s in new.cluster.services.items()} == {n: s.spec for n, s in src.cluster.services.items()}
    assert new.kv.data == {"app/color": "blue", "app/size": "7"}
    secret = new.cluster.objects.secrets["db-pass"]
    assert (secret.data, secret.key, secret.id, dict(secret.labels)) == \
        (SEALED_MAGIC + b"new|hunter22", 7, "sec000000001", {"team": "db"})  # sealed anew, same clear text
    config = new.cluster.objects.configs["nginx.conf"]
    assert (config.data, dict(config.labels)) == (b"listen 80;", {"t": "x"})
    assert not new.cluster.tasks  # tasks are the new cluster's scheduler's to place


def test_items_come_in_dependency_order_and_parts_stay_under_the_limit():
    contents = bc.export(source().cluster, source().kv, old_open)
    kinds = [kind for kind, _ in bc.items(contents)]
    assert kinds == ["config", "secret", "service", "service", "kv", "kv"]
    parts = list(bc.parts(bc.items(contents), limit=120))
    assert len(parts) > 1 and [i for p in parts for i in p] == bc.items(contents)
    assert all(len(msgpack.packb(p)) <= 120 + 8 or len(p) == 1 for p in parts)


def test_a_cluster_with_any_state_is_occupied():
    empty = FakeDriver()
    assert bc.occupied(empty.cluster, empty.kv) is None
    kv_only = FakeDriver()
    asyncio.run(kv_only.write("put", "k", "v"))
    assert bc.occupied(kv_only.cluster, kv_only.kv) == "1 kv key"
    src = source()
    assert bc.occupied(src.cluster, src.kv) == "2 services, 1 secret, 1 config, 2 kv keys"


def test_a_refused_or_unreadable_item_stops_the_restore_in_one_line():
    target = FakeDriver()
    with pytest.raises(RestoreError) as exc:  # the service names a secret the backup does not hold
        asyncio.run(apply_item(target, fake_seal, ["service", ServiceSpec("web", "srv", secrets=("x",)).to_dict()]))
    assert str(exc.value) == ("service web: secrets: secret x does not exist (create it first: `p2pswarm secret "
                              "create x FILE`)")
    for item in (["service", {"name": "web", "bogus": 1}], ["secret", {"name": "s"}], ["kv", "k"], ["disk", {}], 3):
        with pytest.raises(RestoreError) as exc:
            asyncio.run(apply_item(target, fake_seal, item))
        assert "\n" not in str(exc.value) and "cannot read" in str(exc.value) or "does not know" in str(exc.value)
    assert bc.occupied(target.cluster, target.kv) is None


def test_kv_store_values_keep_their_types():
    kv = KVStore()
    kv.apply(1, encode_command(1, 1, "put", "n", 5))
    contents = bc.export(FakeDriver().cluster, kv, old_open)
    assert restored(contents).kv.data == {"n": 5}
