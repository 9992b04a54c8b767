"""The API CA: created once per cluster through the access record's compare-and-set, opened by every member,
re-sealed by the Raft leader under each new cluster key after `node rm` (so the old key no longer opens it and
members that join later do), never replaced by those rotations (client bundles keep working), only by
`cluster api-ca --rotate`."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from p2pswarm.node.statemachine import StateMachines, encode_access
from p2pswarm.security import access
from p2pswarm.security.access import AccessRecord
from p2pswarm.security.apica import ApiCA, server_identity
from p2pswarm.security.apicahost import ApiCAHost, ApiCAUnavailable
from p2pswarm.security.errors import KeyFileError
from p2pswarm.security.pki import fingerprint, seal
from p2pswarm.security.record import TOKEN_CONTEXT


def api_ca(cluster="c1"):
    return ApiCA.create(cluster, time.time(), os.urandom(32), os.urandom(16))


def test_record_creates_once_reseals_by_generation_and_snapshots():
    rec, ca, key = AccessRecord(), api_ca(), os.urandom(32)
    first = access.api_ca_command("a1", cert=ca.cert_der, sealed=ca.seal(key, os.urandom(12)), generation=1)
    rival = api_ca()
    second = access.api_ca_command("a2", cert=rival.cert_der, sealed=rival.seal(key, os.urandom(12)), generation=1)
    assert rec.apply(first) == (True, "")
    ok, why = rec.apply(second)  # a concurrent creation loses: the first CA stays
    assert not ok and "changed meanwhile" in why and rec.api_ca == ca.cert_der
    for bad in ({**first, "generation": 2, "cert": "x"}, {**first, "generation": 2, "sealed": b""},
                {**first, "generation": "2"}, {**first, "generation": 2, "sealed": b"x" * 1000}):
        ok, why = rec.apply(bad)
        assert not ok and why == "bad API CA command"
    assert rec.api_generation == 1
    a, b = StateMachines(), StateMachines()
    for i, cmd in enumerate([first, access.client_command("c", serial="ab", name="x", role="admin", issued_at=1.0,
                                                          not_after=2.0, by="local")], 1):
        assert a.apply(i, 1, encode_access(cmd))[1].ok
        b.apply(i, 1, encode_access(cmd))
    assert a.snapshot() == b.snapshot()
    c = StateMachines()
    c.restore(a.snapshot())
    assert (c.access.api_ca, c.access.sealed_api_key, c.access.api_generation) == (ca.cert_der, first["sealed"], 1)
    c.restore(msgpack.packb({"kv": a.kv.snapshot(), "cluster": a.cluster.snapshot()}, use_bin_type=True))
    assert c.access.api_ca == b"" and c.access.api_generation == 0  # a snapshot from before the API CA


def test_the_sealed_key_opens_only_with_its_cluster_key_and_purpose():
    ca, key = api_ca(), os.urandom(32)
    sealed = ca.seal(key, os.urandom(12))
    assert ApiCA.unseal(ca.cert_der, sealed, key).digest == ca.digest
    with pytest.raises(KeyFileError, match="cannot decrypt the API CA key: wrong cluster key"):
        ApiCA.unseal(ca.cert_der, sealed, os.urandom(32))
    with pytest.raises(KeyFileError):  # the same bytes sealed for another purpose (the join-token context)
        ApiCA.unseal(ca.cert_der, seal(key, os.urandom(12), ca.key.private_bytes_raw(), TOKEN_CONTEXT), key)
    with pytest.raises(KeyFileError):  # bound to its certificate
        ApiCA.unseal(api_ca().cert_der, sealed, key)


class Cluster:
    """A shared access record standing in for the Raft log, and one keeper per node."""

    def __init__(self) -> None:
        self.record = AccessRecord()
        self.key = os.urandom(32)
        self.tokens = seal(self.key, os.urandom(12), b"token state", TOKEN_CONTEXT)
        self.now = 0.0

    def node(self, node_id: str, *, serve: bool, key: bytes | None = None) -> ApiCAHost:
        security = SimpleNamespace(cluster_id="c1", node_id=node_id, cluster_key=key or self.key)
        host = ApiCAHost(security, serve=serve)
        host.driver = SimpleNamespace(sm=SimpleNamespace(access=self.record), raft=SimpleNamespace(role="follower"),
                                      security=self, write_access=self.write_access)
        return host

    async def write_access(self, cmd, timeout=None):
        ok, error = self.record.apply(cmd)
        return SimpleNamespace(ok=ok, error=error)

    def rekey(self, *hosts: ApiCAHost) -> bytes:
        """`node rm`: a new cluster key, the join-token state sealed under it, every given member adopting it."""
        old, self.key = self.key, os.urandom(32)
        self.tokens = seal(self.key, os.urandom(12), b"token state", TOKEN_CONTEXT)
        for host in hosts:
            host.security.cluster_key = self.key
        return old

    async def steps(self, *hosts: ApiCAHost, rounds: int = 3) -> None:
        for _ in range(rounds):
            self.now += 1.0
            for host in hosts:
                host.step(host.driver, self.now)
            for _ in range(5):
                await asyncio.sleep(0)


def test_created_once_opened_everywhere_and_resealed_by_the_leader_after_a_rekey():
    async def run():
        c = Cluster()
        a, b = c.node("a", serve=True), c.node("b", serve=True)
        idle = c.node("idle", serve=False)
        await c.steps(idle)
        assert c.record.api_generation == 0  # nobody needs it: nothing is created
        await c.steps(a, b, idle)
        assert c.record.api_generation == 1  # both wanted it, one creation won
        assert a.ca is not None and a.ca.cert_der == b.ca.cert_der == idle.ca.cert_der == c.record.api_ca
        assert server_identity(_der(a)) == ("c1", "a") and server_identity(_der(b)) == ("c1", "b")
        assert idle.material is None  # not serving: no server certificate
        served = a.material

        a.driver.raft.role = "leader"
        stale = c.node("stale", serve=False)
        await c.steps(stale)
        assert stale.ca is not None
        old_key = c.rekey(a, b, idle)  # `node rm`: `stale` has not opened its share of the new key yet
        await c.steps(b, idle)
        assert c.record.api_generation == 1 and not b.sealed_current  # followers never re-seal
        await c.steps(a, b, idle)
        assert c.record.api_generation == 2 and c.record.api_ca == a.ca.cert_der  # the same CA, re-sealed
        stale.driver.raft.role = "leader"  # holds the CA in memory; the sealed copy no longer opens with its key
        await c.steps(stale)
        assert not stale.sealed_current and c.record.api_generation == 2  # a stale key never re-seals
        ApiCA.unseal(c.record.api_ca, c.record.sealed_api_key, c.key)
        with pytest.raises(KeyFileError):
            ApiCA.unseal(c.record.api_ca, c.record.sealed_api_key, old_key)  # what a removed node holds
        assert a.sealed_current and b.sealed_current and a.material == served  # bundles keep working
        joined = c.node("joined", serve=True)  # joined after the rm: holds only the new key
        await c.steps(joined)
        assert joined.ca.cert_der == a.ca.cert_der and server_identity(_der(joined)) == ("c1", "joined")
        assert (await joined.ensure(joined.driver)) is joined.ca
        await c.steps(a, b, idle, joined)
        assert c.record.api_generation == 2  # nothing more to do
    asyncio.run(run())


def test_ensure_creates_on_demand_and_refuses_with_one_line_without_the_current_key():
    async def run():
        c = Cluster()
        lagging = c.node("lag", serve=False, key=os.urandom(32))
        with pytest.raises(ApiCAUnavailable, match="^this node does not hold the API CA key yet"):
            await lagging.ensure(lagging.driver)
        assert c.record.api_generation == 0
        node = c.node("n", serve=False)
        ca = await node.ensure(node.driver)
        assert c.record.api_ca == ca.cert_der and c.record.api_generation == 1
    asyncio.run(run())


def test_rotation_replaces_the_ca_everywhere_and_forgets_the_old_clients():
    async def run():
        c = Cluster()
        a, b = c.node("a", serve=True), c.node("b", serve=True)
        await c.steps(a, b)
        old, served = a.ca, b.material
        assert c.record.apply(access.client_command("c", serial="ab", name="alice", role="admin", issued_at=1.0,
                                                    not_after=2.0, by="local"))[0]
        view = await a.rotate(a.driver)
        assert view["generation"] == 2 and view["clients"] == 0 and view["held"]  # old bundles: nothing recorded
        assert view["fingerprint"] != fingerprint(old.cert_der) and a.ca.cert_der == c.record.api_ca
        await c.steps(a, b)
        assert b.ca.cert_der == c.record.api_ca and b.material != served  # b serves with the new CA
        assert b.material.anchors_pem != served.anchors_pem
        lagging = c.node("lag", serve=False, key=os.urandom(32))
        with pytest.raises(ApiCAUnavailable, match="current cluster key"):
            await lagging.rotate(lagging.driver)
        assert c.record.api_generation == 2
    asyncio.run(run())


def _der(host: ApiCAHost) -> bytes:
    """The DER of the host's server certificate."""
    cert = x509.load_pem_x509_certificate(host.material.cert_pem.encode())
    return cert.public_bytes(serialization.Encoding.DER)
