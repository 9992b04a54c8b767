"""The security record in the Raft state: applied alike everywhere, refuses junk, survives snapshots."""

from __future__ import annotations

import msgpack
import pytest

from p2pswarm.node.statemachine import StateMachines, encode_security
from p2pswarm.security.record import SecurityRecord, init_command

from .secworld import World


def init(w: World, cid: str = "i1") -> dict:
    return init_command(cid, w.cluster_id, bundle=w.bundle.encode(), sealed_ca=w.ca.seal(w.cluster_key, bytes(12)),
                        tokens=b"sealed-tokens", token_generation=1, revocations=w.revocations.sign(w.ca),
                        revocations_version=0, certs={w.sponsor_node.node_id: w.sponsor_node.cert})


def test_init_once_then_commands_apply_in_order():
    w, rec = World(), SecurityRecord()
    assert rec.apply({"op": "tokens", "sealed": b"x", "generation": 2}) == \
        (False, "the cluster's security record is not initialised yet; retry in a moment")
    assert rec.apply(init(w)) == (True, "") and rec.ready and rec.version == 1
    assert rec.apply(init(w, "again")) == (True, "") and rec.version == 1  # a repeated init changes nothing
    assert rec.apply({**init(w), "cluster_id": "0therc1u5ter0000"})[0] is False
    # join-token rotation is a compare-and-set on the generation
    assert rec.apply({"op": "tokens", "sealed": b"t2", "generation": 2}) == (True, "")
    ok, why = rec.apply({"op": "tokens", "sealed": b"t2b", "generation": 2})
    assert not ok and "changed meanwhile" in why and rec.tokens == b"t2"
    # revocation lists only ever replace older ones
    assert rec.apply({"op": "revocations", "signed": b"rl3", "version": 3}) == (True, "")
    assert rec.apply({"op": "revocations", "signed": b"rl2", "version": 2}) == (True, "")
    assert rec.revocations == b"rl3" and rec.revocations_version == 3
    assert rec.apply({"op": "cert", "node": "n2", "cert": b"c2"}) == (True, "") and rec.certs["n2"] == b"c2"
    assert rec.version == 4
    # a CA rotation (start, then finish) is a compare-and-set on the CA generation; finish keeps the sealed key
    assert rec.apply({"op": "ca", "bundle": b"two-roots", "sealed_ca": b"new-key", "generation": 1}) == (True, "")
    ok, why = rec.apply({"op": "ca", "bundle": b"rival", "sealed_ca": b"rival-key", "generation": 1})
    assert not ok and "changed meanwhile" in why and rec.bundle == b"two-roots"
    assert rec.apply({"op": "ca", "bundle": b"new-root", "generation": 2}) == (True, "")
    assert (rec.bundle, rec.sealed_ca, rec.ca_generation) == (b"new-root", b"new-key", 2)
    restored = SecurityRecord()
    restored.restore(rec.snapshot())
    assert restored.snapshot() == rec.snapshot() and restored.ca_generation == 2


@pytest.mark.parametrize("cmd", [
    {"op": "nope"}, {}, {"op": "cert", "node": "", "cert": b"c"}, {"op": "cert", "node": "n", "cert": "text"},
    {"op": "cert", "node": "n", "cert": b"x" * 5000}, {"op": "tokens", "sealed": b"", "generation": 2},
    {"op": "revocations", "signed": b"x", "version": -1}, {"op": "revocations", "signed": None, "version": 1},
    {"op": "ca", "bundle": b"", "generation": 1}, {"op": "ca", "bundle": b"b", "sealed_ca": "k", "generation": 1},
    {"op": "ca", "bundle": b"b", "generation": "1"}, {"op": "ca", "bundle": b"b", "generation": 5},
])
def test_junk_is_refused_the_same_way_everywhere(cmd):
    w = World()
    a, b = SecurityRecord(), SecurityRecord()
    a.apply(init(w))
    b.apply(init(w))
    assert a.apply(cmd) == b.apply(cmd) and a.apply(cmd)[0] is False
    assert a.snapshot() == b.snapshot()


def test_bad_init_is_refused():
    w = World()
    for bad in ({**init(w), "bundle": b""}, {**init(w), "certs": {"n": "not bytes"}}, {**init(w), "cluster_id": 7},
                {**init(w), "token_generation": "1"}):
        rec = SecurityRecord()
        assert rec.apply(bad)[0] is False and not rec.ready


def test_statemachine_routes_snapshots_and_restores_the_record():
    w = World()
    sm = StateMachines()
    key, result = sm.apply(1, 1, encode_security(init(w)))
    assert key == "i1" and result.ok and sm.security.ready
    sm.apply(2, 1, encode_security({"id": "c1", "op": "cert", "node": "n9", "cert": b"c9"}))
    other = StateMachines()
    other.restore(sm.snapshot())
    assert other.security.snapshot() == sm.security.snapshot() and other.security.certs["n9"] == b"c9"
    # a snapshot from before the security record existed restores an empty one
    old = msgpack.packb({"kv": sm.kv.snapshot(), "cluster": sm.cluster.snapshot()}, use_bin_type=True)
    other.restore(old)
    assert not other.security.ready and other.security.snapshot() is None
    # junk in the "security" slot of a snapshot leaves an empty record, it does not crash the replica
    other.restore(msgpack.packb({"kv": sm.kv.snapshot(), "cluster": sm.cluster.snapshot(), "security": [1, 2]},
                                use_bin_type=True))
    assert not other.security.ready
