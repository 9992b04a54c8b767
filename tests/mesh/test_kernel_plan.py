"""The kernel path's planner and its nft transactions (pure)."""

from __future__ import annotations

import re

import pytest

from p2pswarm.mesh.kernel_plan import KernelPlan, dropped, plan, table_name, transaction

HOST = "10.0.0.1"
T = "p2pswarm_mesh_10_0_0_1_7946"


def backend(addr: str, local: bool = False, via: str | None = None) -> dict:
    return {"task": addr, "node": addr.split(":")[0], "addr": addr, "local": local, "via": via}


def table(*ports: dict, udp: tuple[dict, ...] = (), host: str = HOST, blocked: tuple[str, ...] = ()) -> dict:
    t = {"version": 1, "host": host, "ports": list(ports), "blocked_hosts": list(blocked)}
    if udp:
        t["udp"] = list(udp)
    return t


def port(number: int, *backends: dict, **flags) -> dict:
    return {"port": number, "service": "s", "proxy_protocol": False, "backends": list(backends), **flags}


def test_a_local_replica_takes_every_connection_without_source_nat():
    p = plan(table(port(8080, backend("10.0.0.2:4000"), backend("10.0.0.1:4001", local=True),
                        backend("10.0.0.1:4002", local=True))))
    path = p.paths[("tcp", 8080)]
    assert path.backends == (("10.0.0.1", 4001), ("10.0.0.1", 4002))
    assert not path.masquerade


def test_without_a_local_replica_the_remote_ones_are_masqueraded():
    path = plan(table(port(8080, backend("10.0.0.3:4000"), backend("10.0.0.2:4000")))).paths[("tcp", 8080)]
    assert path.backends == (("10.0.0.2", 4000), ("10.0.0.3", 4000))
    assert path.masquerade and path.kernel


@pytest.mark.parametrize("entry, why", [
    (port(1, backend("10.0.0.1:5", local=True), proxy_protocol=True), "proxy-protocol"),
    (port(1, backend("10.0.0.1:5", local=True), encrypted=True), "encrypted"),
    (port(1, backend("10.0.0.1:5", local=True), userspace=True), "userspace option"),
    (port(1, backend("10.0.0.2:5", via="10.0.0.3:7948")), "relay"),
    (port(1), "no replica"),
    (port(1, backend("[fd00::2]:5")), "IPv6 replica"),
])
def test_what_the_kernel_cannot_do_stays_in_user_space_with_its_reason(entry, why):
    path = plan(table(entry)).paths[("tcp", 1)]
    assert not path.kernel and path.backends == ()
    assert why in path.why


def test_a_relayed_remote_replica_does_not_matter_when_a_local_one_serves():
    path = plan(table(port(1, backend("10.0.0.2:5", via="10.0.0.3:7948"),
                           backend("10.0.0.1:6", local=True)))).paths[("tcp", 1)]
    assert path.backends == (("10.0.0.1", 6),)


def test_an_ipv6_node_and_a_node_with_the_path_off_keep_every_port_in_user_space():
    assert "IPv4 only" in plan(table(port(1, backend("[::1]:5", local=True)), host="::1")).paths[("tcp", 1)].why
    off = plan(table(port(1, backend("10.0.0.1:5", local=True)), udp=(port(53, backend("10.0.0.1:6")),)),
               off="not root")
    assert {p.why for p in off.paths.values()} == {"not root"}


def test_remote_replicas_on_other_machines_need_forwarding_but_loopback_ones_do_not():
    far = plan(table(port(1, backend("10.0.0.2:5"))), forwarding=False).paths[("tcp", 1)]
    assert not far.kernel and "forward" in far.why
    lab = plan(table(port(1, backend("127.0.0.9:5")), host="127.0.0.8"), forwarding=False).paths[("tcp", 1)]
    assert lab.kernel and lab.masquerade
    local = plan(table(port(1, backend("10.0.0.1:5", local=True))), forwarding=False).paths[("tcp", 1)]
    assert local.kernel


def test_a_replica_behind_a_fault_cut_is_left_out_as_the_data_plane_leaves_it():
    path = plan(table(port(1, backend("10.0.0.2:5"), backend("10.0.0.3:5")), blocked=("10.0.0.3",))).paths[("tcp", 1)]
    assert path.backends == (("10.0.0.2", 5),)


def test_udp_ports_are_planned_like_tcp():
    p = plan(table(udp=(port(5353, backend("10.0.0.1:7000", local=True)),)))
    assert p.paths[("udp", 5353)].backends == (("10.0.0.1", 7000),)


def test_table_names_are_nft_identifiers_one_per_node():
    assert table_name("127.0.5.5", 7946) == "p2pswarm_mesh_127_0_5_5_7946"
    assert table_name("127.0.5.5", 7950) != table_name("127.0.5.6", 7946)
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", table_name("fd00::1", 7946))


# ------------------------------------------------------------------ transactions

def test_a_full_transaction_makes_the_table_from_scratch_and_balances_over_every_replica():
    p = plan(table(port(8080, backend("10.0.0.2:1"), backend("10.0.0.3:2"), backend("10.0.0.4:3")),
                   port(9090, backend("10.0.0.1:4", local=True)), udp=(port(53, backend("10.0.0.1:5", local=True)),)))
    text = transaction(None, p, T)
    lines = text.splitlines()
    assert lines[:3] == [f"add table inet {T}", f"delete table inet {T}", f"add table inet {T}"]
    assert f"add rule inet {T} prerouting ip daddr {HOST} tcp dport vmap @tcp_ports" in lines
    assert f"add rule inet {T} output ip daddr {HOST} udp dport vmap @udp_ports" in lines
    # 8080: three remote replicas -> the marked chain of three; 9090 and 53: one local replica, unmarked
    assert f"add element inet {T} tcp_ports {{ 8080 : goto tcp_3_masq, 9090 : goto tcp_1 }}" in lines
    assert f"add element inet {T} udp_ports {{ 53 : goto udp_1 }}" in lines
    assert (f"add element inet {T} tcp_backends {{ 8080 . 0 : 10.0.0.2 . 1, 8080 . 1 : 10.0.0.3 . 2, "
            f"8080 . 2 : 10.0.0.4 . 3, 9090 . 0 : 10.0.0.1 . 4 }}") in lines
    chain3 = next(line for line in lines if line.startswith(f"add rule inet {T} tcp_3_masq "))
    assert "numgen random mod 3 map @tcp_backends" in chain3 and "ct mark set" in chain3
    chain1 = next(line for line in lines if line.startswith(f"add rule inet {T} tcp_1 "))
    assert "mod 1 map" in chain1 and "ct mark" not in chain1
    assert sum("masquerade" in line for line in lines) == 1


def test_a_node_on_all_addresses_matches_every_local_address():
    text = transaction(None, plan(table(port(1, backend("10.0.0.1:5", local=True)), host="0.0.0.0")), T)
    assert f"add rule inet {T} output fib daddr type local tcp dport vmap @tcp_ports" in text.splitlines()


def _ports_named(text: str) -> set[int]:
    return {int(p) for p in re.findall(r"[{,] (\d+) [.:},]", text)}


def test_changes_touch_only_the_ports_that_changed():
    base = [port(p, backend(f"10.0.0.2:{p}")) for p in range(8000, 8010)]
    old = plan(table(*base))
    assert transaction(old, old, T) == ""
    # add one port
    added = plan(table(*base, port(9000, backend("10.0.0.3:1"))))
    text = transaction(old, added, T)
    assert _ports_named(text) == {9000}
    assert "delete" not in text and "add table" not in text
    # remove one port (its chain of one replica is still used by the others: kept)
    removed = plan(table(*base[1:]))
    text = transaction(old, removed, T)
    assert text.splitlines() == [f"delete element inet {T} tcp_ports {{ 8000 }}",
                                 f"delete element inet {T} tcp_backends {{ 8000 . 0 }}"]
    # one port gets a second replica: its elements move to the chain of two, made now
    grown = plan(table(port(8000, backend("10.0.0.2:8000"), backend("10.0.0.4:1")), *base[1:]))
    text = transaction(old, grown, T)
    assert _ports_named(text) == {8000}
    assert f"add chain inet {T} tcp_2_masq" in text
    assert f"add element inet {T} tcp_ports {{ 8000 : goto tcp_2_masq }}" in text
    # and back: the chain of two is deleted after its last port left it
    text = transaction(grown, old, T)
    assert text.splitlines()[-1] == f"delete chain inet {T} tcp_2_masq"
    assert _ports_named(text) == {8000}


def test_a_port_that_moves_to_user_space_leaves_the_kernel():
    old = plan(table(port(8080, backend("10.0.0.1:5", local=True))))
    new = plan(table(port(8080, backend("10.0.0.1:5", local=True), proxy_protocol=True)))
    text = transaction(old, new, T).splitlines()
    assert f"delete element inet {T} tcp_ports {{ 8080 }}" in text
    assert f"delete chain inet {T} tcp_1" in text
    assert not any(line.startswith("add") for line in text)


def test_a_new_node_address_rebuilds_the_table():
    old = plan(table(port(1, backend("10.0.0.1:5", local=True))))
    new = plan(table(port(1, backend("10.0.0.9:5", local=True)), host="10.0.0.9"))
    assert transaction(old, new, T).startswith(f"add table inet {T}\ndelete table inet {T}\n")


# ------------------------------------------------------------------ flows to reset

def test_flows_are_reset_only_for_replicas_that_are_gone_from_the_routes():
    old = plan(table(port(8080, backend("10.0.0.2:1"), backend("10.0.0.3:2"), backend("10.0.0.4:3"))))
    new = plan(table(port(8080, backend("10.0.0.2:1"))))
    # 10.0.0.3 is draining (still listed, excluded); 10.0.0.4's node died (not listed any more)
    listed = [("tcp", 8080, "10.0.0.2:1"), ("tcp", 8080, "10.0.0.3:2")]
    assert dropped(old, new, listed) == [("tcp", 8080, ("10.0.0.4", 3))]
    assert dropped(None, new, listed) == []
    assert dropped(old, KernelPlan(HOST), []) == [("tcp", 8080, b) for b in old.paths[("tcp", 8080)].backends]
