"""`p2pswarm events` on real nodes: a scripted sequence (create, scale, kill a node, update, rollback) gives
the same cluster events in log order on every node, and `--since` still returns them after restarts."""

from __future__ import annotations

import json
import sys
import time

from p2pswarm.testing.localcluster import REPO, wait_until

from .cli_results import ok, one_line_error

APP = str(REPO / "tests" / "apps" / "http_server.py")
EXPECTED = [("service", "create"), ("service", "scale"), ("task", "orphaned"), ("task", "rescheduled"),
            ("service", "update"), ("service", "rollback")]


def history(cluster, node, since: float) -> list[dict]:
    out = ok(cluster.cli("events", "--since", repr(since), "--until", repr(time.time()), "--format", "json",
                         "--data-dir", str(node.data_dir), timeout=30))
    return [json.loads(line) for line in out.stdout.splitlines()]


def script(events: list[dict]) -> list[tuple[str, str]]:
    """The first occurrence of each expected (type, action), in the order they were recorded."""
    seen: list[tuple[str, str]] = []
    for e in events:
        key = (e["type"], e["action"])
        if key in EXPECTED and key not in seen and not e["local"]:
            seen.append(key)
    return seen


def cluster_events(events: list[dict], first: int) -> list[tuple]:
    return [(e["index"], e["type"], e["action"], e["subject"]) for e in events if not e["local"] and
            e["index"] >= first]


def test_scripted_sequence_in_order_on_every_node_and_after_restarts(cluster):
    nodes = cluster.start_group(3)
    since = time.time() - 1
    dd = {n.index: ("--data-dir", str(n.data_dir)) for n in nodes}
    ok(cluster.cli("service", "create", "web", "--replicas", "2", "--update-monitor", "1s", *dd[0], "--",
                   sys.executable, APP, timeout=120))
    ok(cluster.cli("service", "scale", "web=3", *dd[0], timeout=120))
    leader = nodes[0].api.get("/v1/cluster")["leader"]
    ids = {n.index: n.info()["id"] for n in nodes}
    running_on = {r["node"] for r in nodes[0].api.get("/v1/services/web/tasks")["tasks"] if r["state"] == "running"}
    victim = next(n for n in nodes if ids[n.index] != leader and ids[n.index] in running_on)
    survivors = [n for n in nodes if n is not victim]
    cluster.kill(victim.index)
    wait_until(lambda: ("task", "rescheduled") in script(history(cluster, survivors[0], since)), 60,
               "the dead node's task rescheduled")
    ok(cluster.cli("service", "update", "web", "--env", "V=2", *dd[survivors[0].index], timeout=120))
    ok(cluster.cli("service", "rollback", "web", *dd[survivors[0].index], timeout=120))

    seen = {n.index: wait_until(lambda n=n: (lambda h: h if script(h) == EXPECTED else None)(history(
        cluster, n, since)), 30, f"the scripted events on {n.name}") for n in survivors}
    first = next(e["index"] for e in seen[survivors[0].index] if e["action"] == "create")
    reference = cluster_events(seen[survivors[0].index], first)
    assert cluster_events(seen[survivors[1].index], first) == reference  # the same history, in log order
    assert [i for i, *_ in reference] == sorted(i for i, *_ in reference)
    rescheduled = next(e for e in seen[survivors[0].index] if e["action"] == "rescheduled")
    assert rescheduled["attrs"]["reason"].startswith("orphaned: node ")  # with the reason
    assert any(e["local"] and e["action"] in ("suspect", "dead") and e["subject"] == ids[victim.index]
               for e in seen[survivors[0].index])  # what this node saw itself, marked local

    # the killed node's history (kill -9) survives; a restarted node replays its log without duplicates
    cluster.start(victim.index, (survivors[0].addr,))
    wait_until(lambda: victim.info() is not None, 30, "the victim back up")
    back = history(cluster, victim, since)
    assert script(back)[:2] == EXPECTED[:2], back
    restarted = survivors[1]
    cluster.kill(restarted.index, 15)
    cluster.start(restarted.index, (survivors[0].addr,))
    wait_until(lambda: restarted.info() is not None and restarted.api.get("/v1/cluster")["applied_index"] >=
               reference[-1][0], 60, "the restarted node caught up")
    after = history(cluster, restarted, since)
    assert cluster_events(after, first)[:len(reference)] == reference  # stored once, found again
    indexes = [(e["index"], e["type"], e["action"], e["subject"]) for e in after if not e["local"]]
    assert len(indexes) == len(set(indexes)), "an entry's events were stored twice"

    bad = one_line_error(cluster.cli("events", "--since", "yesterday-ish", *dd[survivors[0].index]))
    assert "--since" in bad and "RFC 3339" in bad
