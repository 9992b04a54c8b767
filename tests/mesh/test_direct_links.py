"""The route table finds this node's direct links without building the n² link graph
(p2pswarm/mesh/table.py ``direct_links``): the same links, and no graph unless a route needs a relay."""

from __future__ import annotations

import random

import pytest

from p2pswarm.mesh import table
from p2pswarm.mesh.table import Peer, build, direct_links, link_graph


def record(port: int) -> dict:
    return {"s": "running", "v": 1, "p": port, "n": "web", "m": [[8080, port, False]]}


def random_peers(rng: random.Random, n: int) -> dict[str, Peer]:
    names = [f"n{i}" for i in range(n)]
    peers = {}
    for i, node in enumerate(names):
        unreachable = frozenset(rng.sample(names, rng.randint(0, 3)))
        peers[node] = Peer(node, node, f"127.0.0.{i + 2}", rng.choice(["alive", "alive", "alive", "suspect", "dead"]),
                           rtt=rng.choice([None, 0.001]), relay_port=7947, unreachable=unreachable - {node},
                           tasks={f"t{i}": record(20000 + i)})
    return peers


@pytest.mark.parametrize("seed", range(20))
def test_direct_links_are_the_link_graphs_edges_at_this_node(seed):
    rng = random.Random(seed)
    peers = random_peers(rng, 12)
    me = rng.choice(sorted(peers))
    unreachable = frozenset(rng.sample(sorted(peers), 2)) - {me}
    graph = link_graph(me, peers, unreachable)
    assert direct_links(me, peers, unreachable) == frozenset(graph.adj.get(me, {}))


def test_a_table_with_every_backend_in_reach_builds_no_link_graph(monkeypatch):
    peers = [Peer(f"n{i}", f"n{i}", f"127.0.0.{i + 2}", "alive", rtt=0.001, relay_port=7947,
                  tasks={f"t{i}": record(20000 + i)}) for i in range(50)]

    def no_graph(*args):
        raise AssertionError("the link graph was built although no backend needs a relay")
    monkeypatch.setattr(table, "link_graph", no_graph)
    ports = build("n0", peers)[0]["ports"]
    assert [len(p["backends"]) for p in ports] == [50]


def test_a_backend_out_of_direct_reach_is_still_relayed():
    peers = [Peer("a", "a", "127.0.0.2", "alive", relay_port=7947, unreachable=frozenset({"c"})),
             Peer("b", "b", "127.0.0.3", "alive", rtt=0.001, relay_port=7947),
             Peer("c", "c", "127.0.0.4", "alive", rtt=0.001, relay_port=7947, tasks={"t": record(21000)})]
    backend = build("a", peers, unreachable=("c",))[0]["ports"][0]["backends"][0]
    assert backend["node"] == "c" and backend["via"] == "127.0.0.3:7947"
