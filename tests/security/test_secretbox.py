"""Secrets are sealed before they reach the Raft log: never in clear in an entry, a snapshot or the record,
and a rekey after `node rm` gives new secrets a key the removed node's data dir never held."""

from __future__ import annotations

import asyncio

import pytest

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.objects import SEAL_OVERHEAD, SEALED_MAGIC
from p2pswarm.membership.messages import Meta
from p2pswarm.node.statemachine import StateMachines, encode_cluster
from p2pswarm.security.errors import KeyFileError
from p2pswarm.security.keys import parse_cluster_key_file
from p2pswarm.security.record import SecurityRecord
from p2pswarm.security.secretbox import (
    ID_LENGTH,
    new_object_id,
    open_ring_key,
    open_secret,
    seal_ring_key,
    seal_secret,
)

from .test_host import _FakeDriver, creator, host, run

pytestmark = pytest.mark.timeout(60)
CLEAR = b"correct horse battery staple"


def test_a_sealed_secret_opens_only_as_itself():
    key, other = bytes(range(32)), bytes(32)
    sealed = seal_secret(key, bytes(12), "db", "abc12345", CLEAR)
    assert CLEAR not in sealed and open_secret(key, "db", "abc12345", sealed) == CLEAR
    assert sealed.startswith(SEALED_MAGIC) and len(sealed) - len(CLEAR) == SEAL_OVERHEAD  # what the state checks
    for args in ((other, "db", "abc12345"), (key, "db2", "abc12345"), (key, "db", "abc12346")):
        with pytest.raises(KeyFileError, match="cannot decrypt secret"):
            open_secret(*args, sealed)
    object_id = new_object_id()
    assert len(object_id) == ID_LENGTH and object_id.isalnum() and object_id.islower()


def test_the_record_adds_keyring_keys_in_order_under_the_current_cluster_key():
    rec = SecurityRecord()
    rec.apply({"op": "init", "cluster_id": "c0ffee0123456789", "bundle": b"b", "sealed_ca": b"s", "tokens": b"t",
               "token_generation": 1, "revocations": b"", "revocations_version": 0, "certs": {}})
    first = {"op": "secret_key", "key_id": 1, "sealed": b"k1", "key_generation": 0}
    assert rec.apply({**first, "key_id": 2})[0] is False  # ids follow each other
    assert rec.apply({**first, "key_generation": 1})[0] is False  # sealed under another cluster key
    assert rec.apply(first) == (True, "")
    ok, why = rec.apply(first)  # a second node making "the first key" loses: it uses key 1 instead
    assert not ok and "changed meanwhile" in why and rec.secret_keys == {1: b"k1"}
    again = SecurityRecord()
    again.restore(rec.snapshot())
    assert again.secret_keys == {1: b"k1"}
    older = rec.snapshot()
    del older["secret_keys"]  # written before the keyring existed
    again.restore(older)
    assert again.secret_keys == {}


async def _settle(pairs, swim, rounds=4):
    for _ in range(rounds):
        for h, driver in pairs:
            h._next_sync = 0.0
            h.step(driver, swim)
            await asyncio.gather(*h.proposals.tasks)


def test_neither_the_log_entry_nor_a_snapshot_holds_the_clear_text(tmp_path):
    async def main():
        a, _ = await creator(tmp_path)
        driver = _FakeDriver()
        await _settle([(a, driver)], type("Swim", (), {"members": lambda self: []})(), 2)
        sealed, key_id = await a.keyring.seal(driver, "db", "dbid0000000000", CLEAR)
        assert key_id == 1 and set(driver.security.secret_keys) == {1}
        entry = encode_cluster(cmd.create_secret("c1", 1.0, "db", "dbid0000000000", sealed, key_id))
        sm = StateMachines()
        sm.security.restore(driver.security.snapshot())
        assert sm.apply(1, 1, entry)[1].ok
        snapshot = sm.snapshot()
        ring_key = a.keyring.key(driver.security, 1)
        for blob in (entry, snapshot):
            assert CLEAR not in blob and ring_key not in blob and a.cluster_key not in blob
        stored = sm.cluster.objects.secrets["db"]
        assert a.keyring.open(driver.security, stored) == CLEAR  # what an agent running a task of it does
        assert "data" not in sm.cluster.object_summaries("secret")[0]
        await a.close()
    run(main())


def test_a_rekey_reseals_the_keyring_and_new_secrets_use_a_key_the_removed_node_never_had(tmp_path):
    async def main():
        a, addr = await creator(tmp_path)
        x = host(tmp_path, "x", "e000000000000001")
        x.prepare((addr,), a.join_token()["token"])
        await x.join((addr,))
        driver = _FakeDriver()
        members = []
        swim = type("Swim", (), {"members": lambda self: members})()
        members[:] = [type("M", (), {"node": a.node_id, "addr": addr, "status": "alive",
                                     "meta": a.meta(Meta(a.name))})()]
        await _settle([(a, driver)], swim)
        old, _ = await a.keyring.seal(driver, "old", "oldid000000000", b"before")
        stolen_key = parse_cluster_key_file((x.datadir.security_path / "cluster.key").read_bytes())
        stolen_ring = dict(driver.security.secret_keys)

        driver.cluster.removed_nodes.add(x.node_id)  # node rm x: the leader rekeys
        await _settle([(a, driver)], swim, 8)
        rec = driver.security
        assert rec.key_generation == 1 and set(rec.secret_keys) == {1, 2} and a.cluster_key != stolen_key
        assert rec.secret_keys[1] != stolen_ring[1]  # re-sealed under the new cluster key
        assert open_secret(a.keyring.key(rec, 1), "old", "oldid000000000", old) == b"before"
        new, key_id = await a.keyring.seal(driver, "new", "newid000000000", CLEAR)
        assert key_id == 2
        with pytest.raises(KeyFileError):  # the removed node's key opens none of the new ring
            open_ring_key(stolen_key, 2, rec.secret_keys[2])
        with pytest.raises(KeyFileError):
            open_ring_key(stolen_key, 1, rec.secret_keys[1])
        assert open_ring_key(stolen_key, 1, stolen_ring[1]) == a.keyring.key(rec, 1)  # what it could read before
        # a rekey computed before a keyring change is refused rather than losing a key
        stale = {"op": "rekey", "key_generation": 2, "ca_generation": rec.ca_generation + 1,
                 "token_generation": rec.token_generation + 1, "bundle": rec.bundle, "sealed_ca": rec.sealed_ca,
                 "tokens": rec.tokens, "shares": {}, "excluded": [], "secret_keys_seen": 1,
                 "secret_keys": [[1, seal_ring_key(bytes(32), 1, bytes(32), bytes(12))]]}
        ok, why = rec.apply(stale)
        assert not ok and "keyring changed meanwhile" in why and set(rec.secret_keys) == {1, 2}
        for h in (a, x):
            await h.close()
    run(main())
