"""A worker outside the Raft group follows its part of the security record (issue 15).

The worker holds no replica: its Raft driver's record stays empty.  What it knows of the record comes
from a member in the assignment protocol (:mod:`p2pswarm.assignments.trust`), here through the real
reply encoding.  After ``node rm`` it must refuse the removed node, adopt the rotated cluster key (so it
opens secrets sealed after the rekey), sponsor with the rotated token, and take the certificate the
CA rotation re-issued for it (or the rotation would wait for it forever).
"""

from __future__ import annotations

import asyncio

import pytest

from p2pswarm.assignments.core import Delta
from p2pswarm.assignments.messages import decode_body, reply_of
from p2pswarm.assignments.trust import trust_for
from p2pswarm.membership.messages import Meta
from p2pswarm.security.errors import SecurityError
from p2pswarm.security.pki import cert_digest

from .test_host import _FakeDriver, creator_and_joined, free_swim_addr, run

pytestmark = pytest.mark.timeout(60)


def test_a_worker_refuses_a_removed_node_and_follows_the_rekey(tmp_path):
    async def main():
        a, addr, token, (w, x) = await creator_and_joined(tmp_path, ("w", "c000000000000001"),
                                                          ("x", "e000000000000001"))
        leader, own = _FakeDriver(), _FakeDriver("follower")  # the worker's own driver: an empty record
        addrs = {a: addr, w: free_swim_addr(), x: free_swim_addr()}
        members = []
        swim = type("Swim", (), {"members": lambda self: members})()
        parts_sent = []

        def worker_part():
            """What a member's reply carries to ``w``, decoded as the worker decodes it."""
            part = trust_for(leader.security, leader.cluster.removed_nodes, w.node_id)
            if part is None:  # before the creator's init is applied
                return None
            parts_sent.append(part.digest)
            return decode_body(reply_of(1, a.node_id, Delta(1, 0, True, trust=part))).trust

        async def settle(rounds=4):
            for _ in range(rounds):
                members[:] = [type("M", (), {"node": h.node_id, "addr": at, "status": "alive",
                                             "meta": h.meta(Meta(h.name))})() for h, at in addrs.items()]
                for h in (a, w):
                    h._next_sync = 0.0
                a.step(leader, swim)
                w.step(own, swim, worker_part())
                await asyncio.gather(*a.proposals.tasks)
        await settle()
        assert set(leader.security.certs) == {a.node_id, w.node_id, x.node_id} and not own.security.ready
        assert w.authorize(x.keys.public)  # x's certificate came with gossip
        before, old_key = await a.keyring.seal(leader, "db", "id1", b"old secret"), w.cluster_key
        assert w.keyring.open(leader.security, _secret("db", "id1", *before)) == b"old secret"

        leader.cluster.removed_nodes.add(x.node_id)  # node rm x: revocation, then the rekey
        await settle(8)
        rec = leader.security
        assert rec.key_generation == 1 and x.node_id in w.revocations.nodes
        assert not w.authorize(x.keys.public), "the worker still admits the removed node"
        assert w.cluster_key == a.cluster_key != old_key and w.key_generation == 1
        after = await a.keyring.seal(leader, "api", "id2", b"new secret")
        assert w.keyring.open(rec, _secret("api", "id2", *after)) == b"new secret"
        assert w.keyring.open(rec, _secret("db", "id1", *before)) == b"old secret"  # re-sealed under the new key
        with pytest.raises(SecurityError):  # the removed node's data dir does not open it
            x.keyring.open(rec, _secret("api", "id2", *after))
        assert w.join_token()["token"] == a.join_token()["token"] != token  # it sponsors with the rotated token
        assert w.identity.issuer == cert_digest(a.bundle.current)  # its certificate re-issued by the new CA
        assert not a.ca_view(leader, swim)["rotating"]  # so the rotation the rekey began could finish
        assert len(set(parts_sent)) >= 3  # the part changed with each step, and only then (digest)
        for h in (a, w, x):
            await h.close()
    run(main())


def _secret(name: str, object_id: str, sealed: bytes, key_id: int):
    from p2pswarm.cluster.objects import StoredObject
    return StoredObject("secret", name, object_id, 1, 0.0, (), sealed, key_id)
