"""The node's security edge in-process: key files in the data dir, the join over a real endpoint on loopback,
every way a join fails (one line each), restarts, introductions, and the node's checks on what it receives."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from p2pswarm import wire
from p2pswarm.membership.messages import Alive, Meta, Ping
from p2pswarm.node.daemon import Node, NodeOptions
from p2pswarm.node.datadir import DataDir, DataDirError
from p2pswarm.security.errors import KeyFileError, SecurityError
from p2pswarm.security.host import JoinFailed, SecurityHost, inspect
from p2pswarm.security.messages import KeyRequest
from p2pswarm.security.pki import read_node_certificate

pytestmark = pytest.mark.timeout(60)


def free_swim_addr() -> str:
    """A loopback address whose port + 1 (the join endpoint) was free a moment ago."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 1024:
            return f"127.0.0.1:{port - 1}"


def host(tmp: Path, name: str, node_id: str, **kw) -> SecurityHost:
    d = DataDir(tmp / name)
    d.prepare()
    return SecurityHost(d, node_id, name, **kw)


async def creator(tmp: Path, name: str = "a", node_id: str = "a000000000000001") -> tuple[SecurityHost, str]:
    h = host(tmp, name, node_id)
    assert h.prepare((), None) == "create"
    h.create(str(h.datadir.path / "raft"))
    h.activate()
    addr = free_swim_addr()
    await h.start_endpoint(addr, addr)
    return h, addr


async def creator_and_joined(tmp: Path, *joiners: tuple[str, str]) -> tuple[SecurityHost, str, str,
                                                                           list[SecurityHost]]:
    """A creating node, its address and join token, and hosts (name, node id) that joined with that token."""
    a, addr = await creator(tmp)
    token = a.join_token()["token"]
    hosts = [host(tmp, name, node_id) for name, node_id in joiners]
    for h in hosts:
        h.prepare((addr,), token)
        await h.join((addr,))
    return a, addr, token, hosts


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


# ------------------------------------------------------------------ key material in the data dir

def test_a_new_cluster_keeps_its_keys_private_and_restarts_from_them(tmp_path):
    async def main():
        a, _ = await creator(tmp_path)
        await a.close()
        sec = a.datadir.security_path
        assert stat.S_IMODE(sec.stat().st_mode) == 0o700
        for name in ("curve.key", "cluster.key", "state"):
            assert stat.S_IMODE((sec / name).stat().st_mode) == 0o600, name
        token = a.join_token()["token"]
        assert token.startswith("P2PS-1-") and inspect(a.datadir) == "member"
        again = SecurityHost(a.datadir, a.node_id, "a")
        assert again.prepare((), None) == "restart"
        again.activate()
        assert again.keys == a.keys and again.cert == a.cert and again.cluster_id == a.cluster_id
        assert again.join_token()["token"] == token  # the creator unseals its genesis record until Raft holds it
    run(main())


@pytest.mark.parametrize("damage,needle", [
    ("garbage", "curve.key is corrupt (not text)"),
    ("truncated", "curve.key is truncated"),
    ("state", "state is corrupt or truncated"),
    ("cluster key", "cluster.key is not a p2pswarm key file"),
    ("unreadable", "cannot read the key file"),
])
def test_a_damaged_key_file_stops_the_node_with_one_line(tmp_path, damage, needle):
    async def main():
        a, _ = await creator(tmp_path)
        await a.close()
        sec = a.datadir.security_path
        if damage == "garbage":
            (sec / "curve.key").write_bytes(b"\xff\xfe" + os.urandom(64))
        elif damage == "truncated":
            (sec / "curve.key").write_text((sec / "curve.key").read_text().splitlines()[0] + "\n")
        elif damage == "state":
            (sec / "state").write_bytes(b"\x93\x01")
        elif damage == "cluster key":
            (sec / "cluster.key").write_text("nonsense\n")
        else:  # root reads any file, so make it something that cannot be read as one
            (sec / "curve.key").unlink()
            (sec / "curve.key").mkdir()
        with pytest.raises((KeyFileError, DataDirError)) as info:
            SecurityHost(a.datadir, a.node_id, "a").prepare((), None)
        line = str(info.value)
        assert needle in line and "\n" not in line, line
    run(main())


def test_modes_that_are_refused_before_anything_starts(tmp_path):
    plain = DataDir(tmp_path / "plain")
    plain.prepare()
    (plain.path / "raft").mkdir()
    (plain.path / "raft" / "CLUSTER").write_text("p2pswarm-raft 1\nc0ffee\n")
    with pytest.raises(SecurityError, match="plaintext cluster.*--insecure"):
        SecurityHost(plain, "p000000000000001", "p").prepare((), None)
    fresh = host(tmp_path, "fresh", "f000000000000001")
    with pytest.raises(SecurityError, match="needs its join token: pass --token"):
        fresh.prepare(("127.0.0.1:7946",), None)
    with pytest.raises(SecurityError, match="malformed join token"):
        fresh.prepare(("127.0.0.1:7946",), "P2PS-1-short")
    assert fresh.datadir.has_private("curve.key")  # the key is saved before any join is asked for


# ------------------------------------------------------------------ joining over a real join endpoint

def test_join_then_restart_then_introduce(tmp_path):
    async def main():
        a, addr = await creator(tmp_path)
        token = a.join_token()["token"]
        b = host(tmp_path, "b", "b000000000000001")
        assert b.prepare((addr,), token) == "join"
        assert await b.join((addr,)) == addr
        assert b.state == "member" and b.cluster_id == a.cluster_id and b.cluster_key == a.cluster_key
        assert b.peer_key(addr) == a.keys.public and b.authorize(a.keys.public)
        assert a.authorize(b.keys.public)  # the sponsor admitted the new certificate at once
        assert read_node_certificate(b.cert).node_id == b.node_id
        b_addr = free_swim_addr()
        await b.start_endpoint(b_addr, b_addr)
        # a third node joins through b (any member with the CA key sponsors; b unseals it from the record,
        # which it would apply from Raft: here we hand it the creator's genesis as Raft would)
        b.record.adopt_secrets(a.genesis["sealed_ca"], a.genesis["tokens"])
        b.make_sponsor()
        c = host(tmp_path, "c", "c000000000000001")
        c.prepare((b_addr,), token)
        await c.join((b_addr,))
        assert not a.authorize(c.keys.public)  # a has not heard of c yet...
        assert await c.introduce(a.node_id, addr)  # ...until c introduces itself
        assert a.authorize(c.keys.public) and c.peer_key(addr) == a.keys.public
        # b restarts from its data dir: its peers' keys and addresses come back with it
        await b.close()
        b2 = SecurityHost(b.datadir, b.node_id, "b")
        assert b2.prepare((addr,), None) == "restart"
        b2.activate()
        assert b2.peer_key(addr) == a.keys.public and b2.authorize(c.keys.public)
        # a restarted node asks seeds it does not know for their certificate (KeyRequest)
        b2.admission.forget(a.node_id)
        assert b2.peer_key(addr) is None
        assert await b2.learn_keys((addr,)) == [] and b2.peer_key(addr) == a.keys.public
        for h in (a, b2, c):
            await h.close()
    run(main())


def failing_join(tmp_path, tweak, needle: str, code: str | None = None) -> str:
    """Join a fresh node after ``tweak(a, token) -> (token, joiner kwargs)``; the one line it fails with."""
    out = {}

    async def main():
        a, addr = await creator(tmp_path)
        token, kw = tweak(a, a.join_token()["token"])
        b = host(tmp_path, "b", "b000000000000001", **kw)
        b.prepare((addr,), token)
        try:
            with pytest.raises(JoinFailed) as info:
                await b.join((addr,))
            out["line"], out["code"] = str(info.value), info.value.code
        finally:
            await a.close()
    run(main())
    assert needle in out["line"] and "\n" not in out["line"], out["line"]
    assert code is None or out["code"] == code
    return out["line"]


def _rotate(a: SecurityHost, lifetime=None, at=None):
    a.tokens = a.tokens.rotate(os.urandom(20), time.time() if at is None else at, lifetime)
    a.sponsor.tokens = a.tokens


def test_wrong_token(tmp_path):
    failing_join(tmp_path, lambda a, t: (t[:-4] + ("aaaa" if not t.endswith("aaaa") else "bbbb"), {}),
                 "the join token's secret is wrong", "bad_token")


def test_other_clusters_token(tmp_path):
    other = {}

    async def make_other():
        o, _ = await creator(tmp_path, "other", "0000000000000009")
        other["token"] = o.join_token()["token"]
        await o.close()
    run(make_other())
    failing_join(tmp_path, lambda a, t: (other["token"], {}), "the join token is for another cluster", "other_cluster")


def test_rotated_token(tmp_path):
    def tweak(a, t):
        _rotate(a)
        return t, {}
    failing_join(tmp_path, tweak, "the join token was rotated", "token_rotated")


def test_expired_token(tmp_path):
    def tweak(a, t):
        _rotate(a, lifetime=10, at=time.time() - 100)
        return a.join_token()["token"], {}
    failing_join(tmp_path, tweak, "the join token has expired", "token_expired")


def test_clock_far_off(tmp_path):
    line = failing_join(tmp_path, lambda a, t: (t, {"wall": lambda: time.time() + 1000}),
                        "s ahead of the sponsor's", "clock_skew")
    assert "fix the clock (NTP)" in line


def test_removed_node_cannot_rejoin(tmp_path):
    def tweak(a, t):
        a.record.apply_revocations(frozenset({"b000000000000001"}))
        return t, {}
    failing_join(tmp_path, tweak, "was removed from the cluster", "revoked")


def test_unreachable_join_endpoint_keeps_retrying_and_says_why(tmp_path):
    async def main():
        nobody = free_swim_addr()
        b = host(tmp_path, "b", "b000000000000001")
        b.prepare((nobody,), "P2PS-1-" + "a" * 52 + "-" + "b" * 32)
        seen = []
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.join((nobody,), lambda n, why: seen.append((n, why))), 5)
        assert b.state == "joining" and b.join_attempts >= 1 and seen
        assert "no answer from the join endpoint" in b.last_error and "\n" not in b.last_error
    run(main())


# ------------------------------------------------------------------ what the node accepts on its gossip socket

class _FakeSecurity:
    def __init__(self, known: dict[bytes, str]):
        self.known = known
        self.observed = []

    def identity_of(self, key):
        node = self.known.get(key)
        return None if node is None else type("Ident", (), {"node_id": node})()

    def observe(self, msg, sender):
        self.observed.append(msg)


class _FakeSwim:
    def __init__(self):
        self.received = []

    def receive(self, now, msg):
        self.received.append(msg)


def test_node_drops_join_kinds_strangers_and_forged_sources(tmp_path):
    node = Node(NodeOptions(data_dir=str(tmp_path / "n")))
    node.security, node.swim = _FakeSecurity({b"k" * 32: "a"}), _FakeSwim()

    def deliver(msg, key):
        fut = concurrent.futures.Future()
        fut.set_result((wire.encode(msg), key))
        node._on_recv(fut)

    ping = Ping(1, "a", "127.0.0.1:1", "me", (Alive("z", 1, "127.0.0.9:1", Meta("z")),))
    deliver(ping, b"k" * 32)
    deliver(Ping(2, "b", "127.0.0.1:1", "me"), b"k" * 32)  # a's key, b's name
    deliver(ping, b"x" * 32)  # a key nobody admitted
    deliver(KeyRequest(bytes(32), bytes(16)), b"k" * 32)  # join kinds never come in through gossip
    assert node.swim.received == [ping] and node.security.observed == [ping]
    assert node.counters["source_mismatch"] == 1 and node.counters["unauthorized_dropped"] == 1
    assert node.counters["join_kind_dropped"] == 1


# ------------------------------------------------------------------ the security record and leader duties

class _FakeDriver:
    """What SecurityHost reads of the Raft driver; writes apply at once, as a committed entry would."""

    def __init__(self, role: str = "leader"):
        from p2pswarm.security.record import SecurityRecord
        self.security = SecurityRecord()
        self.cluster = type("Cluster", (), {"removed_nodes": set()})()
        self.raft = type("Raft", (), {"role": role})()
        self.written = []

    async def write_security(self, cmd, timeout=None):
        self.written.append(cmd["op"])
        ok, error = self.security.apply(cmd)
        return type("Result", (), {"ok": ok, "error": error})()


def test_leader_duties_genesis_revocation_and_renewal(tmp_path):
    async def main():
        a, addr = await creator(tmp_path)
        swim = type("Swim", (), {"members": lambda self: []})()
        driver = _FakeDriver()

        async def settle():
            for _ in range(3):
                a._next_sync = 0.0
                a.step(driver, swim)
                await asyncio.gather(*a.proposals.tasks)
        await settle()
        assert driver.written == ["init"] and driver.security.ready and a.genesis is None
        assert a.sponsor is not None and a.join_token()["generation"] == 1
        # node rm: the node id is revoked at once, and the leader signs it into the record
        driver.cluster.removed_nodes.add("0ff0ff0ff0ff0ff0")
        await settle()
        assert "revocations" in driver.written and "0ff0ff0ff0ff0ff0" in a.revocations.nodes
        assert "0ff0ff0ff0ff0ff0" in a.signed_revocations.nodes  # the signed list in the Raft state has it
        # 61 days later the leader re-issues its certificate; the node adopts it and re-announces its metadata
        old = a.identity
        a.wall = lambda: time.time() + 61 * 86400
        a.duties.next_renew = a._next_expire = 0.0
        await settle()
        assert "cert" in driver.written and a.meta_changed and a.identity.not_after > old.not_after
        assert a.meta(Meta("a")).cert == a.cert != b""
        await a.close()
    run(main())


def test_rotate_token_through_the_record(tmp_path):
    async def main():
        a, _ = await creator(tmp_path)
        driver = _FakeDriver()
        swim = type("Swim", (), {"members": lambda self: []})()
        a.step(driver, swim)
        await asyncio.gather(*a.proposals.tasks)
        before = a.join_token()["token"]
        out = await a.rotate_token(driver, 3600)
        assert out["generation"] == 2 and out["token"] != before and out["expires_at"] > time.time()
        assert driver.security.token_generation == 2
        await a.close()
    run(main())


def test_a_retried_half_finished_join_presents_the_same_key_and_is_granted_again(tmp_path):
    async def main():
        a, addr = await creator(tmp_path)
        token = a.join_token()["token"]
        b = host(tmp_path, "b", "b000000000000001")
        b.prepare((addr,), token)
        await b.join((addr,))
        first = read_node_certificate(b.cert)
        (b.datadir.security_path / "state").unlink()  # as if the node died before it saved the grant
        again = SecurityHost(b.datadir, b.node_id, "b")
        assert inspect(b.datadir) == "pending" and again.prepare((addr,), token) == "join"
        assert again.keys == b.keys
        await again.join((addr,))
        second = read_node_certificate(again.cert)
        assert second.curve_public == first.curve_public and second.serial != first.serial
        # someone else claiming b's node id with another key is refused
        thief = host(tmp_path, "thief", "b000000000000001")
        thief.prepare((addr,), token)
        with pytest.raises(JoinFailed, match="already belongs to another member"):
            await thief.join((addr,))
        await a.close()
    run(main())


def test_ca_rotation_reissues_then_drops_the_old_ca_without_cutting_anyone_off(tmp_path):
    async def main():
        a, addr = await creator(tmp_path)
        b = host(tmp_path, "b", "b000000000000001")
        b.prepare((addr,), a.join_token()["token"])
        await b.join((addr,))
        b.activate()
        leader, follower = _FakeDriver(), _FakeDriver("follower")
        follower.security = leader.security  # one replicated record
        members = []
        swim = type("Swim", (), {"members": lambda self: members})()

        async def settle(rounds=4):
            for _ in range(rounds):
                members[:] = [type("M", (), {"node": h.node_id, "addr": at, "status": "alive",
                                             "meta": h.meta(Meta(h.name))})()
                              for h, at in ((a, addr), (b, "127.0.0.1:9"))]
                for h, d in ((a, leader), (b, follower)):
                    h._next_sync = 0.0
                    h.step(d, swim)
                    await asyncio.gather(*h.proposals.tasks)
        leader.security.apply({**a.genesis})
        await settle()
        leader.security.apply({"op": "cert", "node": b.node_id, "cert": b.cert})
        await settle()
        old_fp, old_token = a.ca_view(leader, swim)["ca_fingerprint"], a.join_token()["token"]
        with pytest.raises(SecurityError, match="cannot rotate"):
            await b.rotate_ca(None)
        view = await b.rotate_ca(follower)  # any member may start it
        assert view["rotating"] and len(view["trusted"]) == 2 and view["ca_fingerprint"] != old_fp
        with pytest.raises(SecurityError, match="already in progress"):
            await b.rotate_ca(follower)
        await settle()
        view = a.ca_view(leader, swim)
        assert view["pending"] == {}, (view, leader.written)
        assert not view["rotating"] and view["trusted"] == [view["ca_fingerprint"]]
        assert leader.security.ca_generation == 2 and leader.written.count("ca") == 1
        assert "revocations" in leader.written  # re-signed by the new CA before the old one was dropped
        assert a.signed_revocations is not None and not a._warned
        for h, other in ((a, b), (b, a)):
            assert h.bundle.roots == (h.bundle.current,) and {h.identity.issuer} == h.bundle.digests
            assert h.authorize(other.keys.public), f"{h.name} cut {other.name} off"
            assert h.chain == ()
        assert a.join_token()["token"] != old_token
        await a.close()
        await b.close()
    run(main())
