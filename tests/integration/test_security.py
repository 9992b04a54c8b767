"""Issue 6 end to end with real processes: no one may join, listen in or inject without the token.

One secure 3-node cluster (`p2pswarm up`, the default) serves every test of this module, in order:
it forms with the token; what travels between its nodes on loopback holds no plaintext (tcpdump,
with a positive control; skipped without tcpdump); nodes with no token, a wrong token, another
cluster's token or --insecure cannot join, and a stranger's CURVE key cannot inject; a rotated token is refused
while the new one admits a fourth node; `node rm` revokes that node and its traffic is refused.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from types import SimpleNamespace

import pytest

from p2pswarm import wire
from p2pswarm.api.client import ApiError
from p2pswarm.membership.messages import Alive, Gossip, Meta, PushPull
from p2pswarm.security.keys import CurveKeys, z85_decode
from p2pswarm.testing.capture import Capture, tcpdump
from p2pswarm.testing.localcluster import LocalCluster, free_host, free_port, wait_until
from p2pswarm.transport.zmq import ZmqTransport

pytestmark = pytest.mark.timeout(300)  # the module fixture starts its cluster inside the first test's time

MARKER = "P2PSWARM-PLAINTEXT-MARKER-5e1c7a"


def metric(node, name: str) -> float:
    for line in node.api.get("/metrics").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def security(node) -> dict:
    return node.api.get("/v1/security")


def member_names(node) -> set[str]:
    return {m["name"] for m in node.api.get("/v1/members")["members"]}


def last_error(node) -> str:
    lines = [line for line in node.log().splitlines() if line.startswith("error: ")]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec", numbered=True)
    c = LocalCluster(tmp)
    nodes = [c.node(i) for i in range(3)]
    control = free_host()
    capture = None
    if tcpdump() is not None:
        capture = Capture(" or ".join(f"host {h}" for h in [n.host for n in nodes] + [control]), tmp / "lo.pcap")
        if not capture.ok:
            capture.stop()
            capture = None
    try:
        first = c.start(0, (), "--label", f"note={MARKER}")
        wait_until(first.info, 30, "the first node's API")
        for i in (1, 2):
            c.start(i, (first.addr,))

        def formed() -> bool:
            try:
                return all(len(n.api.get("/v1/cluster")["members"]) == 3 and member_names(n) == {"n0", "n1", "n2"}
                           and security(n)["sponsor"] for n in nodes)
            except (ApiError, KeyError):
                return False
        wait_until(formed, 40, "3 secure nodes in one Raft group, each seeing the others and able to sponsor "
                               "(the security record applied everywhere)")
        yield SimpleNamespace(cluster=c, nodes=nodes, capture=capture, control=control, tmp=tmp)
    finally:
        if capture is not None:
            capture.stop()
        c.close()


def test_a_three_node_cluster_forms_with_the_token(secure):
    c, nodes = secure.cluster, secure.nodes
    views = [security(n) for n in nodes]
    assert all(v["secure"] and v["state"] == "member" for v in views)
    assert len({v["ca_fingerprint"] for v in views}) == 1 and len({v["cluster_id"] for v in views}) == 1
    ids = {n.info()["id"] for n in nodes}
    for v in views:
        assert {a["id"] for a in v["admitted"]} == ids  # every node admitted exactly the three certificates
    out = c.cli("cluster", "join-token", "--data-dir", str(nodes[1].data_dir))
    assert out.returncode == 0 and f"p2pswarm up --peers {nodes[1].addr} --token P2PS-1-" in out.stdout, out.stderr
    assert "cluster join-token --data-dir" in nodes[0].log()  # said when the cluster was created...
    assert "P2PS-1-" not in nodes[0].log()  # ...without the token: a secret never goes into a log
    for name in ("curve.key", "cluster.key", "state"):
        assert (nodes[1].data_dir / "security" / name).stat().st_mode & 0o777 == 0o600


def test_node_to_node_traffic_carries_no_plaintext(secure):
    if secure.capture is None:
        pytest.skip("needs tcpdump and root to capture on loopback")
    c, nodes = secure.cluster, secure.nodes
    put = c.cli("kv", "put", "secret", MARKER, "--data-dir", str(nodes[1].data_dir))
    assert put.returncode == 0, put.stderr
    wait_until(lambda: all(c.cli("kv", "get", "secret", "--stale", "--data-dir", str(n.data_dir)).stdout.strip()
                           == MARKER for n in nodes), 30, "the marked value replicated to every node")
    assert any(m["labels"].get("note") == MARKER for m in nodes[2].api.get("/v1/members")["members"])

    async def control():  # the positive control: the same marker in plaintext between two ZeroMQ transports
        a = ZmqTransport(f"{secure.control}:{free_port(secure.control)}")
        b = ZmqTransport(f"{secure.control}:{free_port(secure.control)}")
        await a.start()
        await b.start()
        try:
            a.send(b.local_addr, b"CONTROL-" + MARKER.encode())
            assert await asyncio.wait_for(b.recv(), 10) == b"CONTROL-" + MARKER.encode()
        finally:
            await a.close()
            await b.close()
    asyncio.run(control())
    time.sleep(0.5)
    data = secure.capture.stop()
    secure.capture = None
    assert b"CONTROL-" + MARKER.encode() in data  # the capture sees loopback traffic...
    assert len(data) > 50_000  # ...a lot of it: joins, gossip, Raft (the kv write went through the leader)...
    assert data.count(MARKER.encode()) == 1  # ...and the only plaintext marker in it is the control's


def test_no_token_wrong_token_other_cluster_cannot_join(secure):
    c, first = secure.cluster, secure.nodes[0]
    other = c.start(9)  # another secure cluster, for its token
    wait_until(other.info, 30, "the other cluster's API")
    other_token = wait_until(lambda: c.join_token((other.addr,)), 30, "the other cluster's token")
    good = c.join_token((first.addr,))
    wrong = good[:-4] + ("aaaa" if not good.endswith("aaaa") else "bbbb")
    refused_before = security(first)["counters"]
    bad = {10: ("--token", ""), 11: ("--token", wrong), 12: ("--token", other_token), 14: ("--insecure",)}
    for index, extra in bad.items():
        c.start(index, (first.addr,), *extra)
    for index in bad:
        assert c.nodes[index].proc.wait(timeout=40) == 1, c.nodes[index].log()[-2000:]
    assert "joining a cluster needs its join token: pass --token" in last_error(c.nodes[10])
    assert "the join token's secret is wrong" in last_error(c.nodes[11])
    assert "the join token is for another cluster" in last_error(c.nodes[12])
    assert "is secure and does not accept plaintext (--insecure) members" in last_error(c.nodes[14])
    assert all("Traceback" not in c.nodes[i].log() for i in bad)
    assert not {"n10", "n11", "n12", "n14"} & member_names(first)
    counters = security(first)["counters"]
    assert counters.get("sponsor_refused_bad_token", 0) > refused_before.get("sponsor_refused_bad_token", 0)
    assert counters.get("sponsor_refused_other_cluster", 0) > refused_before.get("sponsor_refused_other_cluster", 0)
    c.kill(9)


def test_a_stranger_cannot_inject(secure):
    first = secure.nodes[0]
    key = z85_decode(security(first)["node_key"])
    refused_before = metric(first, "p2pswarm_transport_refused_connections")
    fake = Meta("evil", (("zone", "x"),))
    host = free_host()

    async def inject():
        stranger = ZmqTransport(f"{host}:{free_port(host)}", curve=CurveKeys.from_secret(os.urandom(32)),
                                authorize=lambda k: True, peer_key=lambda addr: key)
        plain = ZmqTransport(f"{host}:{free_port(host)}")
        await stranger.start()
        await plain.start()
        try:
            for t, src in ((stranger, "e0e0e0e0e0e0e0e0"), (plain, "e1e1e1e1e1e1e1e1")):
                alive = Alive(src, 1, t.local_addr, fake)
                for _ in range(5):
                    t.send(first.addr, wire.encode(Gossip(src, t.local_addr, (alive,))))
                    t.send(first.addr, wire.encode(PushPull(src, t.local_addr, True, False, (), ())), bulk=True)
                    await asyncio.sleep(0.2)
        finally:
            await stranger.close()
            await plain.close()
    asyncio.run(inject())
    wait_until(lambda: metric(first, "p2pswarm_transport_refused_connections") > refused_before, 20,
               "the node to refuse the stranger's CURVE key")
    assert "evil" not in member_names(first)
    assert all("e0e0e0e0e0e0e0e0" not in {m["id"] for m in n.api.get("/v1/members")["members"]}
               for n in secure.nodes)


def test_rotated_token_is_refused_and_node_rm_cuts_a_node_off(secure):
    c, nodes = secure.cluster, secure.nodes
    old = c.join_token((nodes[0].addr,))
    rotated = c.cli("cluster", "join-token", "--rotate", "--data-dir", str(nodes[2].data_dir))
    assert rotated.returncode == 0 and "rotated (generation 2)" in rotated.stdout, rotated.stderr
    new = wait_until(lambda: (t := c.join_token((nodes[0].addr,))) != old and t, 30, "every node to use the new token")
    late = c.start(13, (nodes[0].addr,), "--token", old)
    assert late.proc.wait(timeout=40) == 1 and "the join token was rotated" in last_error(late)

    fourth = c.start(3, (nodes[1].addr,), "--token", new)  # through a node that did not create the cluster
    wait_until(lambda: "n3" in member_names(nodes[0]) and security(fourth)["state"] == "member", 30, "n3 to join")
    n3_id = fourth.info()["id"]
    wait_until(lambda: any(a["id"] == n3_id for a in security(nodes[0])["admitted"]), 30, "n0 to admit n3")
    def refusals() -> float:  # n3's messages on an open connection, or its connections themselves
        return (metric(nodes[0], "p2pswarm_transport_unauthorized_dropped")
                + metric(nodes[0], "p2pswarm_transport_refused_connections"))
    refused_before = refusals()

    ca_before = security(nodes[0])["ca_fingerprint"]
    rm = c.cli("node", "rm", "--force", "n3", "--data-dir", str(nodes[2].data_dir))
    assert rm.returncode == 0, rm.stderr

    def cut_off() -> bool:
        views = [security(n) for n in nodes]
        return all(n3_id in v["revoked_nodes"] and all(a["id"] != n3_id for a in v["admitted"]) for v in views)
    wait_until(cut_off, 20, "every node to revoke n3")
    wait_until(lambda: refusals() > refused_before, 20, "n3's traffic to be refused")
    wait_until(lambda: all({m["name"]: m["status"] for m in n.api.get("/v1/members")["members"]}.get("n3")
                           in ("suspect", "dead") for n in nodes), 30, "n3 to be suspect or dead everywhere")
    # what n3's data dir holds is rotated: the cluster key (every member opens its share), the CA (a rotation
    # that ends once every member presents a new certificate) and the join token
    wait_until(lambda: all(security(n)["key_generation"] == 1 and not security(n)["rekey_pending"] for n in nodes),
               30, "every member to use the new cluster key")
    wait_until(lambda: all(not n.api.get("/v1/security/ca")["rotating"] for n in nodes), 60,
               "the CA rotation after node rm to finish")
    assert security(nodes[0])["ca_fingerprint"] != ca_before
    newest = wait_until(lambda: (t := c.join_token((nodes[0].addr,))) not in (old, new) and t, 30, "a new token")
    stale = c.start(14, (nodes[0].addr,), "--token", new)  # the token n3 knew no longer admits a fresh data dir
    assert stale.proc.wait(timeout=40) == 1 and "another cluster" in last_error(stale), last_error(stale)
    # the removed node cannot come back with the new token either
    fourth.proc.send_signal(signal.SIGKILL)
    fourth.proc.wait(timeout=30)
    (fourth.data_dir / "security" / "state").unlink()  # as if its join had never finished: it asks again
    back = c.start(3, (nodes[0].addr,), "--token", newest)
    assert back.proc.wait(timeout=40) == 1 and "was removed from the cluster" in last_error(back)
