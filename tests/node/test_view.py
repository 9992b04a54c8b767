"""NodeViews.own_ports: the ports live members hold themselves, which a service cannot publish."""

from __future__ import annotations

from types import SimpleNamespace

from p2pswarm.node.record import DnsFacts, MeshFacts
from p2pswarm.node.view import NodeViews


def member(node: str, addr: str, status: str = "alive", mesh=None, dns=None) -> SimpleNamespace:
    return SimpleNamespace(node=node, addr=addr, status=status, meta=SimpleNamespace(name=node.upper()),
                           sections=SimpleNamespace(mesh=mesh, dns=dns))


class View(NodeViews):
    def __init__(self, members: list, secure: bool) -> None:
        self.swim = SimpleNamespace(members=lambda: members)
        self.record = SimpleNamespace(of=lambda m: m.sections)
        self.security = object() if secure else None


def test_a_secure_member_holds_gossip_join_relays_and_its_dns_on_its_address():
    a = member("a", "10.0.0.1:7946", mesh=MeshFacts(7948), dns=DnsFacts("10.0.0.1", 53))
    assert View([a], secure=True).own_ports() == {
        (7946, "tcp"): "node A's gossip port", (7947, "tcp"): "node A's join port",
        (7948, "tcp"): "node A's mesh relay port", (7948, "udp"): "node A's mesh relay port",
        (7949, "tcp"): "node A's TLS relay port", (53, "udp"): "node A's DNS port", (53, "tcp"): "node A's DNS port"}


def test_plaintext_relay_not_gossiped_yet_dns_elsewhere_and_dead_members():
    quiet = member("b", "10.0.0.2:8000", dns=DnsFacts("127.0.0.53", 53))  # no mesh section yet: the usual + 2
    no_relay = member("c", "10.0.0.3:9000", mesh=MeshFacts(0))
    dead = member("d", "10.0.0.4:7000", status="dead", mesh=MeshFacts(7002))
    assert View([quiet, no_relay, dead], secure=False).own_ports() == {
        (8000, "tcp"): "node B's gossip port", (8002, "tcp"): "node B's mesh relay port",
        (8002, "udp"): "node B's mesh relay port", (9000, "tcp"): "node C's gossip port"}
