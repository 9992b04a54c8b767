"""Autopilot on real processes: 7 nodes settle on 5 voters; a dead voter is replaced."""

from __future__ import annotations

import time

from p2pswarm.testing.localcluster import wait_until
from p2pswarm.testing.raftcluster import get, leader, put, roles, voters


def test_d_seven_nodes_get_five_voters_and_a_dead_voter_is_replaced(cluster):
    first = cluster.start(0, (), "--label", "zone=z0")
    wait_until(first.info, 30, "the first node's API")
    nodes = [first] + [cluster.start(i, (first.addr,), "--label", f"zone=z{i % 3}") for i in range(1, 7)]

    def settled(group):
        views = [roles(n) for n in group]
        if any(v is None for v in views):
            return False
        r = views[0]
        return (all(v == r for v in views) and sum(role in ("leader", "voter") for role in r.values()) == 5
                and sum(role == "learner" for role in r.values()) == len(group) - 5)
    zones = {f"n{i}": f"z{i % 3}" for i in range(7)}

    def spread() -> bool:  # a zone whose nodes were ready last gets its voter by a swap, a round or two later
        lead = leader(nodes)
        return lead is not None and {zones[v] for v in voters(lead) or ()} == {"z0", "z1", "z2"}
    wait_until(lambda: settled(nodes) and spread(), 90,
               "5 voters over every zone and 2 learners, seen alike by all 7 nodes")
    lead = leader(nodes)
    assert {zones[v] for v in voters(lead)} == {"z0", "z1", "z2"}  # spread over every zone

    put(lead, "k", "v")
    victim = next(n for n in nodes if n.name in voters(lead) and n is not lead)
    cluster.kill(victim.index)
    killed = time.monotonic()
    survivors = [n for n in nodes if n is not victim]

    def replaced():
        v = voters(lead)
        return v is not None and len(v) == 5 and victim.name not in v
    wait_until(replaced, 60, f"a replacement voter for {victim.name}")
    print(f"voter replaced {time.monotonic() - killed:.2f} s after the kill")
    wait_until(lambda: settled(survivors), 30, "every survivor agreeing on 5 voters")
    assert all(get(n, "k") == "v" for n in survivors)  # learners serve linearizable reads too
