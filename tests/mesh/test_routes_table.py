"""Route choice and the route table: pure, so checked with plain objects."""

import random
from collections import Counter

from p2pswarm.mesh.kernel_plan import plan
from p2pswarm.mesh.routes import Backend, candidates
from p2pswarm.mesh.table import Peer, build


def backend(task, node, local=False, rtt=None):
    return Backend(task, node, ("127.0.0.1", 1000 + len(task)), local, rtt)


def test_local_replica_first_then_the_rest_for_retries():
    bs = [backend("r1", "b", rtt=0.001), backend("l1", "a", local=True), backend("r2", "c", rtt=0.002)]
    order = candidates(bs, {}, random.Random(1), limit=3)
    assert order[0].task == "l1"
    assert {b.task for b in order[1:]} == {"r1", "r2"}
    assert order[1].task == "r1"  # nearer first among the fallbacks


def test_balanced_by_connections_weighted_by_distance():
    near, far = backend("near", "b", rtt=0.001), backend("far", "c", rtt=0.002)
    active: Counter = Counter()
    rng = random.Random(7)
    for _ in range(3000):
        chosen = candidates([near, far], active, rng)[0]
        active[chosen.task] += 1
    # cost = (active + 1) × (rtt + floor): the near replica takes more, the far one a fair share
    assert active["near"] > active["far"] > 1000


def test_busy_replica_sheds_load():
    a, b = backend("a", "x", rtt=0.001), backend("b", "y", rtt=0.001)
    rng = random.Random(3)
    picks = Counter(candidates([a, b], {"a": 50}, rng)[0].task for _ in range(1000))
    assert picks["b"] > 950  # a is chosen with probability 1/52


def test_one_at_a_time_clients_reach_every_replica_nearest_most():
    near, far = backend("near", "b", rtt=0.0002), backend("far", "c", rtt=0.0009)
    rng = random.Random(5)
    picks = Counter(candidates([near, far], {}, rng)[0].task for _ in range(2000))
    # costs 0.7 ms and 1.4 ms: the near replica gets about two thirds
    assert 1200 < picks["near"] < 1450 and picks["far"] > 550


def test_no_backend_no_candidate():
    assert candidates([], {}, random.Random(1)) == []


def rec(port=21000, state="running", health=None, published=8080, proxy=False):
    r = {"s": state, "v": 1, "p": port, "n": "web", "m": [[published, port, proxy]]}
    if health:
        r["h"] = health
    return r


def peers(record=rec, **extra):
    base = {
        "a": Peer("a", "node-1", "127.0.0.11", "alive", relay_port=7947, tasks={"t1": record(21001)}),
        "b": Peer("b", "node-2", "127.0.0.12", "alive", rtt=0.0004, relay_port=7947, tasks={"t2": record(21002)}),
        "c": Peer("c", "node-3", "127.0.0.13", "alive", rtt=0.0006, relay_port=7947),
    }
    base.update(extra)
    return base.values()


def test_table_lists_local_and_direct_backends():
    table, routes = build("a", peers())
    assert table["host"] == "127.0.0.11" and table["relay_port"] == 7947
    [port] = table["ports"]
    assert port["port"] == 8080 and port["service"] == "web"
    by_task = {b["task"]: b for b in port["backends"]}
    assert by_task["t1"]["local"] and by_task["t1"]["addr"] == "127.0.0.11:21001"
    assert by_task["t2"]["via"] is None and by_task["t2"]["rtt"] == 0.0004
    assert {r.route for r in routes} == {"local", "direct"}


def test_ports_whose_service_asks_for_user_space_are_marked_and_stay_there():
    def asking(port):
        r = rec(port)
        r["m"].append([5353, port + 1, False, "udp"])
        r["u"] = [8080, "5353/udp"]
        return r
    table, _ = build("a", peers(b=Peer("b", "node-2", "127.0.0.12", "alive", relay_port=7947,
                                       tasks={"t2": asking(21002)})))
    assert table["ports"][0]["userspace"] and table["udp"][0]["userspace"]
    paths = plan(table).paths
    assert not paths[("tcp", 8080)].kernel and "userspace option" in paths[("tcp", 8080)].why
    assert not paths[("udp", 5353)].kernel
    plain, _ = build("a", peers())
    assert "userspace" not in plain["ports"][0] and plan(plain).paths[("tcp", 8080)].kernel


def test_node_without_replica_still_gets_the_port():
    table, _ = build("c", peers())
    assert [p["port"] for p in table["ports"]] == [8080]
    assert all(not b["local"] for b in table["ports"][0]["backends"])


def test_suspect_unhealthy_and_stopping_tasks_drop_out_with_reasons():
    extra = {
        "b": Peer("b", "node-2", "127.0.0.12", "suspect", rtt=0.0004, tasks={"t2": rec(21002)}),
        "c": Peer("c", "node-3", "127.0.0.13", "alive", tasks={"t3": rec(21003, health="unhealthy"),
                                                               "t4": rec(21004, state="stopping"),
                                                               "t5": rec(21005, health="healthy")}),
        "d": Peer("d", "node-4", "127.0.0.14", "dead", tasks={"t6": rec(21006)}),
    }
    table, routes = build("a", peers(**extra))
    assert {b["task"] for b in table["ports"][0]["backends"]} == {"t1", "t5"}
    why = {r.task: r.why for r in routes if r.route == "excluded"}
    assert why == {"t2": "node suspect", "t3": "health unhealthy", "t4": "stopping: draining"}


def test_cut_link_goes_through_a_relay_with_a_direct_link():
    # a cannot reach b directly; c can reach both, so c relays
    table, routes = build("a", peers(), unreachable={"b"})
    t2 = next(b for b in table["ports"][0]["backends"] if b["task"] == "t2")
    assert t2["via"] == "127.0.0.13:7947"
    assert any(r.task == "t2" and r.route == "via node-3" for r in routes)
    # the relay node allows the backend it can reach; a does not offer to relay to b
    relay_table, _ = build("c", peers())
    assert "127.0.0.12:21002" in relay_table["relay_allow"]
    assert "127.0.0.12:21002" not in table["relay_allow"]


def test_no_relay_when_the_only_candidate_cannot_reach_the_target_either():
    extra = {"c": Peer("c", "node-3", "127.0.0.13", "alive", rtt=0.0006, relay_port=7947,
                       unreachable=frozenset({"b"}))}
    table, routes = build("a", peers(**extra), unreachable={"b"})
    assert {b["task"] for b in table["ports"][0]["backends"]} == {"t1"}
    assert any(r.task == "t2" and r.route == "excluded" and "relay" in r.why for r in routes)


def test_malformed_records_from_peers_are_ignored():
    bad = {"x": {"s": "running", "m": "nope"}, "y": {"s": "running", "m": [[0, 1, 0], [8080, "p", 0], [1]]},
           "z": {"s": "running", "m": [[8081, 22000, 1]], "n": 5}}
    table, _ = build("a", peers(c=Peer("c", "node-3", "127.0.0.13", "alive", tasks=bad)))
    ports = {p["port"]: p for p in table["ports"]}
    assert set(ports) == {8080, 8081}
    assert ports[8081]["service"] == "z" and ports[8081]["proxy_protocol"] is True


def tls_peers(**extra):
    def encrypted(port):
        return {**rec(port), "m": [[8080, port, False, "tls"]]}
    return peers(encrypted, **extra)


def test_encrypted_port_goes_to_the_tls_relay_of_the_backends_node():
    table, routes = build("a", tls_peers(), tls=True)
    [port] = table["ports"]
    by_task = {b["task"]: b for b in port["backends"]}
    assert port["encrypted"] and by_task["t1"]["via"] is None and "tls" not in by_task["t1"]  # local: no hop
    assert by_task["t2"]["via"] == "127.0.0.12:7948" and by_task["t2"]["tls"]  # TLS relay = relay port + 1
    assert table["tls_next"] == {"127.0.0.12:21002": "127.0.0.12:7948"}
    assert {r.task: r.route for r in routes} == {"t1": "local", "t2": "tls"}


def test_encrypted_port_through_a_relay_stays_tls_on_both_hops():
    table, routes = build("a", tls_peers(), unreachable={"b"}, tls=True)
    t2 = next(b for b in table["ports"][0]["backends"] if b["task"] == "t2")
    assert t2["via"] == "127.0.0.13:7948" and t2["tls"]  # a -> c over TLS
    relay_table, _ = build("c", tls_peers(), tls=True)
    assert relay_table["tls_next"]["127.0.0.12:21002"] == "127.0.0.12:7948"  # c -> b over TLS too


def test_without_tls_material_remote_encrypted_backends_are_excluded():
    table, routes = build("a", tls_peers())
    assert {b["task"] for b in table["ports"][0]["backends"]} == {"t1"}
    assert any(r.task == "t2" and r.route == "excluded" and "TLS" in r.why for r in routes)
    plain, _ = build("a", peers(), tls=True)
    assert "encrypted" not in plain["ports"][0] and "tls_next" not in plain  # unencrypted tables unchanged
