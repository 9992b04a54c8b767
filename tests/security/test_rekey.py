"""`node rm` shuts the removed node's data dir out: new cluster key (shares), new CA, new join token.

The attack these tests replay (issue 12, finding 1): with a removed node's data dir one unseals the
CA key from the security record it holds, mints a certificate for a new node id and introduces it to
a member's join endpoint; or joins a fresh data dir with the token the removed node knew.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from p2pswarm.membership.messages import Meta
from p2pswarm.security.errors import KeyFileError
from p2pswarm.security.host import JoinFailed
from p2pswarm.security.keys import CurveKeys, parse_cluster_key_file
from p2pswarm.security.pki import CertAuthority, TrustBundle, cert_digest, unseal
from p2pswarm.security.record import TOKEN_CONTEXT, SecurityRecord
from p2pswarm.security.rekey import missing_shares, open_share, rekey_command, seal_share, shares_for
from p2pswarm.security.tokens import TokenState

from .test_host import _FakeDriver, creator, creator_and_joined, free_swim_addr, host, run

pytestmark = pytest.mark.timeout(60)
NOW = 1_750_000_000.0


def entropy(seed: int = 3):
    rng = random.Random(seed)
    return rng.randbytes


# ------------------------------------------------------------------ the pure parts

def test_a_share_opens_only_with_its_members_curve_key():
    e = entropy()
    member, other = CurveKeys.from_secret(e(32)), CurveKeys.from_secret(e(32))
    key = e(32)
    share = seal_share(member.public, key, e(32), e(12))
    assert open_share(member, share) == key and key not in share
    with pytest.raises(KeyFileError, match="share"):
        open_share(other, share)
    for bad in (b"", share[:40], share[:-1] + bytes([share[-1] ^ 1]), bytes(32) + share[32:]):
        with pytest.raises(KeyFileError):
            open_share(member, bad)


def test_rekey_command_rotates_everything_and_gives_the_removed_node_no_share():
    e = entropy(5)
    ca = CertAuthority.create("c0ffee0123456789", NOW, e(32), e(16))
    bundle = TrustBundle(ca.cluster_id, [ca.cert_der])
    tokens = TokenState.create(e(20), NOW, None)
    keys = {n: CurveKeys.from_secret(e(32)) for n in ("a" * 16, "b" * 16, "x" * 16)}
    certs = {n: ca.issue(n, n[0], k.public, NOW, e(16)) for n, k in keys.items()}
    cmd, new_key = rekey_command("r1", ca=ca, bundle=bundle, tokens=tokens, certs=certs, removed=["x" * 16],
                                 key_generation=0, ca_generation=0, now=NOW, entropy=e)
    assert set(cmd["shares"]) == {"a" * 16, "b" * 16} and cmd["excluded"] == ["x" * 16]
    assert all(open_share(keys[n], cmd["shares"][n]) == new_key for n in cmd["shares"])
    new_bundle = TrustBundle.decode(cmd["bundle"])
    assert len(new_bundle.roots) == 2 and new_bundle.current != ca.cert_der  # a CA rotation begins
    new_ca = CertAuthority.unseal(new_bundle.current, cmd["sealed_ca"], new_key)
    assert new_ca.digest == cert_digest(new_bundle.current)
    new_tokens = TokenState.decode(unseal(new_key, cmd["tokens"], TOKEN_CONTEXT))
    assert new_tokens.secret != tokens.secret and new_tokens.generation == 2 == cmd["token_generation"]

    rec = SecurityRecord()
    assert rec.apply({"op": "init", "cluster_id": ca.cluster_id, "bundle": bundle.encode(), "sealed_ca": b"s",
                      "tokens": b"t", "token_generation": 1, "revocations": b"", "revocations_version": 0,
                      "certs": certs}) == (True, "")
    assert rec.apply(cmd) == (True, "") and rec.key_generation == 1 and rec.rekeyed == {"x" * 16}
    assert rec.apply(cmd)[0] is False  # the same generation twice: a stale rekey cannot win
    # a member recorded later gets its share through key_shares
    late = CurveKeys.from_secret(e(32))
    certs["c" * 16] = rec.certs["c" * 16] = ca.issue("c" * 16, "c", late.public, NOW, e(16))
    missing = missing_shares(rec.certs, rec.key_shares, rec.rekeyed)
    assert missing == ["c" * 16]
    shares = shares_for({n: rec.certs[n] for n in missing}, new_key, e)
    assert rec.apply({"op": "key_shares", "key_generation": 0, "shares": shares})[0] is False
    assert rec.apply({"op": "key_shares", "key_generation": 1, "shares": shares}) == (True, "")
    assert open_share(late, rec.key_shares["c" * 16]) == new_key
    again = SecurityRecord()
    again.restore(rec.snapshot())
    assert (again.key_generation, again.key_shares, again.rekeyed) == (1, rec.key_shares, rec.rekeyed)


# ------------------------------------------------------------------ the node's side, end to end in process

def test_node_rm_shuts_the_removed_data_dir_out(tmp_path):
    async def main():
        a, addr, token, (b, x) = await creator_and_joined(tmp_path, ("b", "b000000000000001"),
                                                          ("x", "e000000000000001"))
        leader, follower = _FakeDriver(), _FakeDriver("follower")
        follower.security = leader.security
        follower.cluster = leader.cluster
        b_addr = free_swim_addr()
        await b.start_endpoint(b_addr, b_addr)
        members = []
        swim = type("Swim", (), {"members": lambda self: members})()

        async def settle(rounds=4):
            for _ in range(rounds):
                members[:] = [type("M", (), {"node": h.node_id, "addr": at, "status": "alive",
                                             "meta": h.meta(Meta(h.name))})() for h, at in ((a, addr), (b, b_addr))]
                for h, d in ((a, leader), (b, follower)):
                    h._next_sync = 0.0
                    h.step(d, swim)
                    await asyncio.gather(*h.proposals.tasks)
        await settle()  # genesis, then the recorded certificates of b and x
        assert set(leader.security.certs) == {a.node_id, b.node_id, x.node_id}
        # what x's data dir holds: its cluster key and (from its Raft state) the sealed CA key
        stolen_key = parse_cluster_key_file((x.datadir.security_path / "cluster.key").read_bytes())
        stolen_ca = CertAuthority.unseal(a.bundle.current, leader.security.sealed_ca, stolen_key)

        leader.cluster.removed_nodes.add(x.node_id)  # node rm x
        await settle(8)
        rec = leader.security
        assert rec.key_generation == 1 and rec.rekeyed == {x.node_id} and x.node_id not in rec.key_shares
        assert a.cluster_key == b.cluster_key != stolen_key and not a.rekey_pending
        assert not a.ca_view(leader, swim)["rotating"]  # the CA rotation the rekey began has finished
        with pytest.raises(KeyFileError):  # nothing new opens with the removed node's key
            unseal(stolen_key, rec.tokens, TOKEN_CONTEXT)
        with pytest.raises(KeyFileError):
            CertAuthority.unseal(a.bundle.current, rec.sealed_ca, stolen_key)

        # a certificate minted with the old CA key for a fresh node id is refused at the join endpoint
        evil = CurveKeys.from_secret(bytes(range(32)))
        minted = stolen_ca.issue("e0e0e0e0e0e0e0e0", "evil", evil.public, a.wall(), bytes(16))
        intruder = host(tmp_path, "evil", "e0e0e0e0e0e0e0e0")
        intruder.keys, intruder.cert, intruder.chain = evil, minted, ()
        await intruder.introduce(None, addr)
        assert not a.authorize(evil.public) and "e0e0e0e0e0e0e0e0" not in {i["id"] for i in a.view()["admitted"]}

        # the token x knew no longer admits a fresh data dir; the new one does, through any member
        late = host(tmp_path, "late", "f000000000000001")
        late.prepare((b_addr,), token)
        with pytest.raises(JoinFailed, match="rotated|another cluster"):  # its secret and its CA pin are old
            await late.join((b_addr,))
        fresh = host(tmp_path, "fresh", "f000000000000002")
        fresh.prepare((b_addr,), b.join_token()["token"])
        await fresh.join((b_addr,))
        assert fresh.cluster_key == a.cluster_key
        for h in (a, b, x, fresh):
            await h.close()
    run(main())


def test_a_certificate_the_record_does_not_hold_is_not_admitted_once_the_record_is_applied(tmp_path):
    async def main():
        a, addr = await creator(tmp_path)
        driver = _FakeDriver()
        swim = type("Swim", (), {"members": lambda self: []})()
        for _ in range(2):
            a._next_sync = 0.0
            a.step(driver, swim)
            await asyncio.gather(*a.proposals.tasks)
        # a certificate signed by the real CA but never granted nor recorded (minted with a stolen key)
        evil = CurveKeys.from_secret(bytes(range(1, 33)))
        minted = a.ca.issue("e1e1e1e1e1e1e1e1", "evil", evil.public, a.wall(), bytes(16))
        intruder = host(tmp_path, "evil", "e1e1e1e1e1e1e1e1")
        intruder.keys, intruder.cert, intruder.chain = evil, minted, ()
        await intruder.introduce(None, addr)
        assert not a.authorize(evil.public) and a.counters["refused_cert_unrecorded"] >= 1
        # once the Raft state records it (a sponsor's proposal), it is admitted
        driver.security.apply({"op": "cert", "node": "e1e1e1e1e1e1e1e1", "cert": minted})
        a._next_sync = 0.0
        a.step(driver, swim)
        assert a.authorize(evil.public)
        await a.close()
    run(main())
