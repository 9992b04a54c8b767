"""The pure join handshake: a sound join, and every way a join must fail (each one clear line)."""

from __future__ import annotations

import dataclasses

import pytest

from p2pswarm import wire
from p2pswarm.membership.messages import Ack
from p2pswarm.security import join as join_mod
from p2pswarm.security.errors import JoinError
from p2pswarm.security.join import JOIN_CODES, JOIN_WINDOW, SPONSOR_ENTROPY, Joiner, grant_mac, verify_key_reply
from p2pswarm.security.messages import JoinGrant, JoinRefused, JoinRequest, KeyReply, KeyRequest
from p2pswarm.security.pki import DAY, CertAuthority, rotate_ca
from p2pswarm.security.tokens import JoinToken

from .secworld import NOW, World


@pytest.fixture
def w() -> World:
    return World()


def nonce(w: World) -> bytes:
    return w.entropy(16)


def exchange(w: World, joiner: Joiner, *, now: float = NOW, sponsor_now: float | None = None,
             peer_key: bytes | None = None, req: JoinRequest | None = None):
    req = req or joiner.request(now, nonce(w))
    key = joiner.keys.public if peer_key is None else peer_key
    reply = w.sponsor.handle(wire.decode(wire.encode(req)), key, now if sponsor_now is None else sponsor_now,
                             w.entropy(SPONSOR_ENTROPY))
    return wire.decode(wire.encode(reply))


def fails(code: str, joiner: Joiner, reply, now: float = NOW) -> str:
    with pytest.raises(JoinError) as info:
        joiner.handle(reply, now)
    assert info.value.code == code, str(info.value)
    assert info.value.code in JOIN_CODES
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def refused(w: World, code: str, joiner: Joiner, **kw) -> str:
    reply = exchange(w, joiner, **kw)
    assert isinstance(reply, JoinRefused) and reply.code == code, reply
    assert w.sponsor.counters[f"refused_{code}"] >= 1
    return fails(code, joiner, reply, kw.get("now", NOW))


# ------------------------------------------------------------------ the sound join

def test_join_grants_a_certificate_for_our_id_name_and_key(w):
    j = w.joiner()
    result = j.handle(exchange(w, j), NOW)
    assert result.cluster_id == w.cluster_id and result.version == 1
    assert result.identity.node_id == j.node_id and result.identity.name == "joiner"
    assert result.identity.curve_public == j.keys.public
    assert result.sponsor.node_id == w.sponsor_node.node_id
    assert result.sponsor.curve_public == w.sponsor_node.keys.public
    assert result.cluster_key == w.cluster_key
    assert result.bundle.roots == (w.ca.cert_der,)
    assert w.bundle.verify(result.cert, NOW).node_id == j.node_id  # every member accepts it
    assert w.sponsor.counters["granted"] == 1


def test_the_grant_is_encrypted_for_the_token_holder_only(w):
    j = w.joiner()
    grant = exchange(w, j)
    assert w.cluster_key not in wire.encode(grant)


def test_without_a_cluster_key_the_grant_carries_none(w):
    w.sponsor.cluster_key = None
    j = w.joiner()
    assert j.handle(exchange(w, j), NOW).cluster_key is None


def test_half_finished_join_can_be_retried(w):
    # The joiner crashed after the sponsor granted (and recorded) its key: it retries with a new nonce.
    j = w.joiner()
    first = exchange(w, j)
    w.known[j.node_id] = j.keys.public
    again = j.handle(exchange(w, j), NOW + 5)
    assert isinstance(first, JoinGrant) and again.identity.node_id == j.node_id


# ------------------------------------------------------------------ the sponsor refuses

def test_wrong_token(w):
    j = w.joiner(token=JoinToken(w.ca.digest, bytes(20)))
    assert "secret is wrong" in refused(w, "bad_token", j)


def test_rotated_token(w):
    old = w.token
    w.rotate_token()
    assert "rotated" in refused(w, "token_rotated", w.joiner(token=old))
    j = w.joiner(node_id="n3w", token=w.token)
    assert j.handle(exchange(w, j), NOW).identity.node_id == "n3w"


def test_expired_token(w):
    w.rotate_token(lifetime=60)
    assert "expired" in refused(w, "token_expired", w.joiner(), now=NOW + 120)


def test_token_of_another_cluster(w):
    other = World(seed=2, cluster_id="0therc1u5ter0000")
    assert "another cluster" in refused(w, "other_cluster", w.joiner(token=other.token))


@pytest.mark.parametrize("offset", [JOIN_WINDOW + 1, -(JOIN_WINDOW + 1), 86_400 * 365])
def test_clock_far_off(w, offset):
    j = w.joiner()
    msg = refused(w, "clock_skew", j, now=NOW + offset, sponsor_now=NOW)
    assert f"{abs(offset):.0f} s" in msg and ("ahead" if offset > 0 else "behind") in msg


def test_small_clock_difference_is_fine(w):
    j = w.joiner()
    assert j.handle(exchange(w, j, now=NOW + 30, sponsor_now=NOW), NOW + 30)


def test_replayed_request(w):
    j = w.joiner()
    req = j.request(NOW, nonce(w))
    assert isinstance(exchange(w, j, req=req), JoinGrant)
    assert "replay" in refused(w, "replay", j, req=req, now=NOW + 1)
    # after the window the timestamp alone refuses it
    reply = exchange(w, j, req=req, now=NOW + 3 * JOIN_WINDOW)
    assert reply.code == "clock_skew"


def test_request_must_come_from_the_key_it_names(w):
    j = w.joiner()
    refused(w, "key_mismatch", j, peer_key=w.keys().public)


def test_request_without_a_transport_key(w):
    j = w.joiner()
    reply = w.sponsor.handle(j.request(NOW, nonce(w)), None, NOW, w.entropy(SPONSOR_ENTROPY))
    assert reply.code == "key_mismatch"


def test_removed_node_cannot_rejoin_with_its_id(w):
    j = w.joiner()
    w.revoke(nodes=[j.node_id])
    assert "removed" in refused(w, "revoked", j)


def test_id_of_another_member(w):
    j = w.joiner(node_id=w.sponsor_node.node_id)
    assert "already belongs" in refused(w, "id_taken", j)


def test_locked_ca(w):
    w.sponsor.ca = None
    refused(w, "unavailable", w.joiner())


def test_busy_when_the_replay_cache_is_full(w, monkeypatch):
    monkeypatch.setattr(join_mod, "MAX_SEEN", 2)
    for i in range(2):
        j = w.joiner(node_id=f"n{i}")
        assert isinstance(exchange(w, j), JoinGrant)
    refused(w, "busy", w.joiner(node_id="n9"))
    later = w.joiner(node_id="n8")
    assert isinstance(exchange(w, later, now=NOW + 3 * JOIN_WINDOW), JoinGrant)  # nonces age out


def test_unknown_protocol_version(w):
    j = w.joiner(versions=(2, 3))
    msg = refused(w, "version", j)
    assert "1..1" in msg and "2..3" in msg and "same p2pswarm version" in msg


def test_overlapping_versions_negotiate(w):
    j = w.joiner(versions=(1, 4))
    assert j.handle(exchange(w, j), NOW).version == 1


def test_tampered_proof(w):
    j = w.joiner()
    req = j.request(NOW, nonce(w))
    for field, value in (("name", "other"), ("curve_public", w.keys().public), ("node_id", "x"),
                         ("timestamp_ms", req.timestamp_ms + 1), ("max_version", 2)):
        reply = w.sponsor.handle(dataclasses.replace(req, **{field: value}), j.keys.public, NOW,
                                 w.entropy(SPONSOR_ENTROPY))
        assert reply.code in ("bad_token", "key_mismatch"), field


def test_sponsor_never_raises_on_other_messages(w):
    reply = w.sponsor.handle(Ack(1, "x"), None, NOW, w.entropy(SPONSOR_ENTROPY))
    assert reply.code == "bad_request"
    assert w.sponsor.handle(None, None, NOW, b"").code == "bad_request"


# ------------------------------------------------------------------ the joiner refuses

def forged_grant(w: World, j: Joiner, req: JoinRequest, secret: bytes, **changes) -> JoinGrant:
    """A grant re-MACed with ``secret`` after ``changes``: what an attacker holding the token can send."""
    grant = w.sponsor.handle(req, j.keys.public, NOW, w.entropy(SPONSOR_ENTROPY))
    grant = dataclasses.replace(grant, **changes)
    return dataclasses.replace(grant, mac=grant_mac(secret, req.proof, grant))


def test_cluster_whose_ca_does_not_match_the_pin_is_refused(w):
    # An impostor that knows the token secret but runs its own CA: no trust on first use.
    impostor = World(seed=5, cluster_id=w.cluster_id)
    j = w.joiner()
    req = j.request(NOW, nonce(w))
    cert = impostor.ca.issue(j.node_id, j.name, j.keys.public, NOW, impostor.entropy(16))
    grant = JoinGrant(1, req.nonce, w.cluster_id, cert, (impostor.ca.cert_der,), impostor.sponsor_node.node_id,
                      impostor.sponsor_node.cert, b"", bytes(32))
    grant = dataclasses.replace(grant, mac=grant_mac(w.tokens.secret, req.proof, grant))
    assert "pin" in fails("ca_mismatch", j, grant)


def test_grant_without_the_token_secret(w):
    j = w.joiner()
    req = j.request(NOW, nonce(w))
    grant = forged_grant(w, j, req, bytes(20))
    assert "MAC" in fails("bad_grant", j, grant)


def test_tampered_grant(w):
    j = w.joiner()
    grant = exchange(w, j)
    fails("bad_grant", j, dataclasses.replace(grant, cluster_id="x"))
    fails("bad_grant", j, dataclasses.replace(grant, sealed_key=grant.sealed_key[:-1] + b"\0"))


def test_grant_for_another_key_or_node(w):
    j = w.joiner()
    req = j.request(NOW, nonce(w))
    other_cert = w.ca.issue(j.node_id, "joiner", w.keys().public, NOW, w.entropy(16))
    assert "transport key" in fails("bad_grant", j, forged_grant(w, j, req, w.tokens.secret, node_cert=other_cert))
    j2 = w.joiner()
    req2 = j2.request(NOW, nonce(w))
    cert = w.ca.issue("someone", "joiner", j2.keys.public, NOW, w.entropy(16))
    fails("bad_grant", j2, forged_grant(w, j2, req2, w.tokens.secret, node_cert=cert))
    j3 = w.joiner()
    req3 = j3.request(NOW, nonce(w))
    cert = w.ca.issue(j3.node_id, "renamed", j3.keys.public, NOW, w.entropy(16))
    fails("bad_grant", j3, forged_grant(w, j3, req3, w.tokens.secret, node_cert=cert))


def test_grant_with_a_certificate_that_is_expired_or_from_the_future(w):
    j = w.joiner()
    req = j.request(NOW, nonce(w))
    old = w.ca.issue(j.node_id, "joiner", j.keys.public, NOW - 100 * DAY, w.entropy(16))
    assert "expired" in fails("bad_grant", j, forged_grant(w, j, req, w.tokens.secret, node_cert=old))
    j2 = w.joiner()
    req2 = j2.request(NOW, nonce(w))
    future = w.ca.issue(j2.node_id, "joiner", j2.keys.public, NOW + DAY, w.entropy(16))
    assert "clock" in fails("clock_skew", j2, forged_grant(w, j2, req2, w.tokens.secret, node_cert=future))


def test_grant_with_a_forged_sponsor_certificate(w):
    j = w.joiner()
    req = j.request(NOW, nonce(w))
    forger = CertAuthority.create(w.cluster_id, NOW, b"\x07" * 32, b"\x01" * 16)
    fake = forger.issue(w.sponsor_node.node_id, "sponsor", w.keys().public, NOW, b"\x02" * 16)
    fails("bad_grant", j, forged_grant(w, j, req, w.tokens.secret, sponsor_cert=fake))


def test_answer_to_another_request(w):
    j = w.joiner()
    grant = exchange(w, j)
    j.request(NOW, nonce(w))  # a new request: the old grant no longer answers it
    fails("bad_reply", j, grant)
    refusal = JoinRefused(nonce(w), "bad_token", 1, 1, int(NOW * 1000))
    fails("bad_reply", j, refusal)
    fails("bad_reply", j, Ack(1, "x"))


def test_joiner_misuse_is_a_bug():
    w = World()
    with pytest.raises(RuntimeError):
        w.joiner().handle(None, NOW)
    with pytest.raises(ValueError):
        w.joiner().request(NOW, b"short")


# ------------------------------------------------------------------ CA rotation during joins

def test_token_pinning_the_old_ca_during_a_rotation(w):
    new_ca, during = rotate_ca(w.ca, w.bundle, NOW, w.entropy(32), w.entropy(16), w.entropy(16))
    old_token = w.token
    w.sponsor.ca, w.sponsor.bundle = new_ca, during
    # the leader re-issues every member's certificate under the new CA when the rotation begins
    w.sponsor.cert = new_ca.renew(w.bundle.verify(w.sponsor_node.cert, NOW), NOW, w.entropy(16))
    j = w.joiner(token=old_token)
    result = j.handle(exchange(w, j), NOW)
    assert result.identity.issuer == new_ca.digest
    assert len(result.bundle.roots) == 2 and result.chain == during.cross
    # a member that still trusts only the old root accepts the new certificate with the chain
    assert w.bundle.verify(result.cert, NOW, chain=result.chain)
    j2 = w.joiner(node_id="n2", token=w.tokens.token(new_ca.digest))
    assert j2.handle(exchange(w, j2), NOW).bundle.roots == (new_ca.cert_der,)


# ------------------------------------------------------------------ key requests

def test_key_request_returns_the_members_certificate(w):
    n = nonce(w)
    reply = w.sponsor.handle(KeyRequest(w.ca.digest, n), w.keys().public, NOW, b"")
    assert isinstance(reply, KeyReply)
    ident = verify_key_reply(wire.decode(wire.encode(reply)), n, w.bundle, NOW,
                             expected_node=w.sponsor_node.node_id)
    assert ident.curve_public == w.sponsor_node.keys.public
    other = World(seed=2, cluster_id="0therc1u5ter0000")
    refusal = w.sponsor.handle(KeyRequest(other.ca.digest, n), None, NOW, b"")
    assert refusal.code == "other_cluster"
    with pytest.raises(JoinError):
        verify_key_reply(refusal, n, other.bundle, NOW)
    with pytest.raises(JoinError):
        verify_key_reply(reply, n, other.bundle, NOW)  # a stranger's bundle does not trust it
    with pytest.raises(JoinError):
        verify_key_reply(reply, nonce(w), w.bundle, NOW)
