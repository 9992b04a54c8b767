"""End to end on loopback: joins over the CURVE join endpoint, then CURVE traffic admitted by certificate.

Who may not get in: a node without a token, with a wrong token, with another
cluster's token, or holding a forged, expired or revoked certificate.  Each can
neither join nor inject a message: checked in the member's view (the admitted
identities) and by counters (sponsor refusals, ZAP refusals, dropped messages).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from p2pswarm.security.admission import Admission
from p2pswarm.security.errors import CertificateError, JoinError, TokenError
from p2pswarm.security.joinchannel import exchange, join_addr
from p2pswarm.security.pki import DAY, NODE_CERT_LIFETIME
from p2pswarm.security.tokens import JoinToken, parse_token
from p2pswarm.transport.zmq import ZmqTransport

from .secnet import GRACE, Member, join, run, until
from .secworld import World

pytestmark = pytest.mark.timeout(30)


def test_join_then_talk():
    async def scenario(w, sponsor, made):
        member, result = await join(w, sponsor, w.joiner())
        made.append(member)
        assert member.transport.send(sponsor.addr, b"hello from the new node")
        assert sponsor.transport.send(member.addr, b"welcome")
        await until(lambda: sponsor.inbox and member.inbox, "both messages")
        assert sponsor.inbox == [b"hello from the new node"] and member.inbox == [b"welcome"]
        assert {i.node_id for i in sponsor.admission.identities()} == {w.sponsor_node.node_id, member.node_id}
        assert result.cluster_key == w.cluster_key
        assert w.sponsor.counters["granted"] == 1
    run(scenario)


def test_join_endpoint_is_next_to_the_gossip_port():
    assert join_addr("10.0.0.5:7946") == "10.0.0.5:7947"
    assert join_addr("[::1]:7946") == "[::1]:7947"
    assert join_addr("nonsense") is None and join_addr("h:65535") is None


ATTACKS = ["no token", "wrong token", "other cluster's token", "forged certificate", "expired certificate",
           "revoked certificate"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_outsiders_can_neither_join_nor_inject(attack):
    async def scenario(w, sponsor, made):
        friend, _ = await join(w, sponsor, w.joiner(node_id="fr1end0000000001", name="friend"))
        made.append(friend)
        attacker = w.joiner(node_id="a77ac4e400000001", name="attacker")
        now = time.time()
        cert = None
        # 1. the join
        if attack == "no token":
            with pytest.raises(TokenError):
                parse_token("")
            await _no_token_attempt(sponsor)
        elif attack in ("wrong token", "other cluster's token"):
            token = (JoinToken(w.ca.digest, bytes(20)) if attack == "wrong token"
                     else World(seed=2, cluster_id="0therc1u5ter0000").token)
            joiner = w.joiner(node_id=attacker.node_id, name="attacker", token=token, keys=attacker.keys)
            reply = await exchange(sponsor.join_server.addr, joiner.keys, joiner.request(now, w.entropy(16)))
            with pytest.raises(JoinError) as info:
                joiner.handle(reply, now)
            code = "bad_token" if attack == "wrong token" else "other_cluster"
            assert info.value.code == code and w.sponsor.counters[f"refused_{code}"] == 1
        else:
            if attack == "forged certificate":
                cert = World(seed=9, cluster_id=w.cluster_id).ca.issue(attacker.node_id, "attacker",
                                                                       attacker.keys.public, now, w.entropy(16))
            elif attack == "expired certificate":
                cert = w.ca.issue(attacker.node_id, "attacker", attacker.keys.public,
                                  now - NODE_CERT_LIFETIME - DAY, w.entropy(16))
            else:
                cert = w.ca.issue(attacker.node_id, "attacker", attacker.keys.public, now, w.entropy(16))
                w.revoke(nodes=[attacker.node_id])
                sponsor.admission.set_revocations(w.revocations)
            with pytest.raises(CertificateError):  # presented by gossip: the member refuses to admit it
                sponsor.admission.admit(cert, now)
        assert w.sponsor.counters["granted"] == 1  # only the friend
        # 2. injection: the attacker knows the sponsor's address and public key and just sends
        intruder = ZmqTransport("127.0.0.1:0", curve=attacker.keys, authorize=lambda k: True,
                                peer_key=lambda addr: w.sponsor_node.keys.public)
        await intruder.start()
        try:
            for i in range(20):
                intruder.send(sponsor.addr, b"injected %d" % i)
                intruder.send(sponsor.addr, b"bulk injected %d" % i, bulk=True)
            await until(lambda: sponsor.transport.stats()["refused_connections"] >= 2, "the ZAP refusals")
            friend.transport.send(sponsor.addr, b"marker")
            await until(lambda: b"marker" in sponsor.inbox, "the friend's marker")
            await asyncio.sleep(GRACE)
        finally:
            await intruder.close()
        assert sponsor.inbox == [b"marker"]
        assert attacker.node_id not in {i.node_id for i in sponsor.admission.identities()}  # the view
        assert sponsor.transport.stats()["received"] == 1
    run(scenario)


async def _no_token_attempt(sponsor: Member) -> None:
    """Without a token, all one can send the join endpoint is something else than a valid request."""
    from p2pswarm.membership.messages import Ack
    from p2pswarm.security.keys import CurveKeys
    from p2pswarm.security.messages import JoinRefused
    reply = await exchange(sponsor.join_server.addr, CurveKeys.from_secret(b"\x01" * 32), Ack(1, "x"))
    assert isinstance(reply, JoinRefused) and reply.code == "bad_request"


def test_node_rm_cuts_the_removed_node_off():
    async def scenario(w, sponsor, made):
        gone, _ = await join(w, sponsor, w.joiner(node_id="g0ne000000000001", name="gone"))
        made.append(gone)
        gone.transport.send(sponsor.addr, b"before")
        await until(lambda: sponsor.inbox == [b"before"], "the message before node rm")
        # node rm: the revocation list in the Raft state grows; every member applies it
        w.revoke(nodes=[gone.node_id])
        dropped = sponsor.admission.set_revocations(w.revocations)
        assert [i.node_id for i in dropped] == [gone.node_id]
        for i in range(5):
            gone.transport.send(sponsor.addr, b"after %d" % i)
        await until(lambda: sponsor.transport.stats()["unauthorized_dropped"] >= 5, "the dropped messages")
        assert sponsor.inbox == [b"before"]
        assert not sponsor.transport.send(gone.addr, b"to the removed node")  # no key: not even queued
        assert sponsor.transport.stats()["no_peer_key"] == 1
        # a fresh connection with the same key is refused at the handshake
        again = ZmqTransport("127.0.0.1:0", curve=gone.keys, authorize=lambda k: True,
                             peer_key=lambda addr: w.sponsor_node.keys.public)
        await again.start()
        try:
            refused = sponsor.transport.stats()["refused_connections"]
            again.send(sponsor.addr, b"reconnected")
            await until(lambda: sponsor.transport.stats()["refused_connections"] > refused, "the ZAP refusal")
        finally:
            await again.close()
        assert sponsor.inbox == [b"before"]
        # and it cannot rejoin under its id
        rejoin = w.joiner(node_id=gone.node_id, name="gone", keys=gone.keys)
        with pytest.raises(JoinError) as info:
            await join(w, sponsor, rejoin)
        assert info.value.code == "revoked"
    run(scenario)


def test_rotating_the_token_stops_new_joins_but_not_members():
    async def scenario(w, sponsor, made):
        member, _ = await join(w, sponsor, w.joiner(node_id="m3mbe40000000001", name="member"))
        made.append(member)
        old = w.token
        w.rotate_token(now=time.time())
        with pytest.raises(JoinError) as info:
            await join(w, sponsor, w.joiner(node_id="late000000000001", name="late", token=old))
        assert info.value.code == "token_rotated"
        member.transport.send(sponsor.addr, b"still here")
        await until(lambda: sponsor.inbox == [b"still here"], "the member's message")
        newcomer, _ = await join(w, sponsor, w.joiner(node_id="n3w0000000000001", name="new", token=w.token))
        made.append(newcomer)
    run(scenario)


def test_a_plaintext_client_gets_no_answer_from_the_join_endpoint():
    async def scenario(w, sponsor, made):
        import zmq
        import zmq.asyncio
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{sponsor.join_server.addr}")
        try:
            joiner = w.joiner()
            from p2pswarm import wire
            try:
                await asyncio.wait_for(sock.send(wire.encode(joiner.request(time.time(), w.entropy(16)))), GRACE)
            except asyncio.TimeoutError:
                pass  # the endpoint dropped the plaintext connection before ZeroMQ could even queue the request
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sock.recv(), GRACE * 2)
        finally:
            sock.close(linger=0)
            ctx.term()
        assert w.sponsor.counters["granted"] == 0 and sponsor.join_server.stats().get("requests", 0) == 0
    run(scenario)


async def flood(w, sponsor, sources: list[str], per_source: int) -> tuple[dict, float]:
    """``per_source`` join requests at once from each address in ``sources``; the endpoint's counters after."""
    from p2pswarm.security.keys import CurveKeys
    keys = CurveKeys.from_secret(w.entropy(32))
    request = w.joiner().request(time.time(), w.entropy(16))
    start = time.monotonic()
    await asyncio.gather(*(exchange(sponsor.join_server.addr, keys, request, timeout=1.0, source=src)
                           for src in sources for _ in range(per_source)), return_exceptions=True)
    return sponsor.join_server.stats(), time.monotonic() - start


def test_a_flood_of_join_requests_from_many_addresses_is_rate_limited_and_a_joiner_still_gets_in_later():
    from p2pswarm.security import joinchannel

    async def scenario(w, sponsor, made):
        sources = [f"127.0.0.{i}" for i in range(10, 16)]  # 6 sources x 50 = 3 x the endpoint's burst
        stats, elapsed = await flood(w, sponsor, sources, int(joinchannel.SOURCE_BURST))
        handled = stats["requests"] - stats.get("rate_limited", 0) - stats.get("source_rate_limited", 0)
        assert stats["requests"] > joinchannel.JOIN_BURST and stats.get("rate_limited", 0) > 0
        assert handled <= joinchannel.JOIN_BURST + joinchannel.JOIN_RATE * elapsed + 1
        await asyncio.sleep(2 / joinchannel.JOIN_RATE)
        member, _ = await join(w, sponsor, w.joiner(node_id="ok00000000000001", name="ok"))
        made.append(member)
    run(scenario)


def test_a_flood_from_one_address_spends_only_its_own_budget():
    from p2pswarm.security import joinchannel

    async def scenario(w, sponsor, made):
        stats, elapsed = await flood(w, sponsor, ["127.0.0.9"], int(joinchannel.JOIN_BURST) * 3)
        handled = stats["requests"] - stats.get("source_rate_limited", 0)
        assert stats.get("source_rate_limited", 0) > 0 and stats.get("rate_limited", 0) == 0
        assert handled <= joinchannel.SOURCE_BURST + joinchannel.SOURCE_RATE * elapsed + 1
        # the endpoint's own budget is untouched: a joiner from another address gets in at once
        member, _ = await join(w, sponsor, w.joiner(node_id="ok00000000000002", name="ok"))
        made.append(member)
    run(scenario)


def test_an_unreachable_join_endpoint_is_one_clear_line():
    async def scenario(w, sponsor, made):
        joiner = w.joiner()
        with pytest.raises(JoinError) as info:
            await exchange("127.0.0.1:9", joiner.keys, joiner.request(time.time(), w.entropy(16)), timeout=0.3)
        assert info.value.code == "no_answer" and "\n" not in str(info.value)
    run(scenario)


def test_admission_of_the_joined_members_is_what_the_transport_asks():
    w = World(now=time.time())
    adm = Admission(w.bundle)
    n = w.node("n1", "x")
    adm.admit(n.cert, time.time(), addr="127.0.0.1:7000")
    t = ZmqTransport("127.0.0.1:0", curve=w.keys(), authorize=adm.authorize, peer_key=adm.peer_key)
    assert t._peer_key("127.0.0.1:7000") == n.keys.public  # the callbacks are the admission's
