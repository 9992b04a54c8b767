"""The DNS core answers from a zone built of gossip: A, tasks., SRV, refusals, NXDOMAIN, bad packets."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pswarm.dns.core import Responder
from p2pswarm.dns.zone import MemberFacts, build, normalize_domain


def running(port, service=None, published=None, **extra):
    rec = {"s": "running", "v": 1, "p": port, **extra}
    if service is not None:
        rec["n"] = service
        rec["m"] = [[published, port, False]]
    return rec


def members(**overrides):
    a = MemberFacts("a", "10.0.0.1", "alive", {"7.0": running(31000, "web", 8080),
                                                "8.0": running(32000)}, mesh=True)
    b = MemberFacts("b", "10.0.0.2", "alive", {"7.1": running(31500, "web", 8080),
                                                "9.0": running(33000, "api", 9090, h="unhealthy")}, mesh=True)
    c = MemberFacts("c", "10.0.0.3", "alive", {}, mesh=True)
    out = {"a": a, "b": b, "c": c}
    out.update(overrides)
    return list(out.values())


def responder(ms=None, me="a", **kw):
    kw.setdefault("known", ["web", "db", "api", "idle"])
    kw.setdefault("service_of", {"8.0": "db"})
    return Responder(build("p2pswarm", me, members() if ms is None else ms, version=1, **kw))


def ask(r, name, rdtype="A", tcp=False, **kw):
    query = dns.message.make_query(name, rdtype, **kw)
    wire = r.respond(query.to_wire(), tcp)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == query.id
    return reply


def values(reply, rdtype="A"):
    return sorted(rd.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype)
                  for rd in rrset)


def test_a_service_name_answers_the_nodes_whose_mesh_serves_it():
    reply = ask(responder(), "web.p2pswarm.")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert values(reply) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # every mesh serves the published port
    assert all(rrset.ttl == 5 for rrset in reply.answer)


def test_a_node_that_cannot_bind_the_port_or_is_suspect_is_not_a_vip():
    ms = members(b=MemberFacts("b", "10.0.0.2", "suspect", {}, mesh=True),
                 c=MemberFacts("c", "10.0.0.3", "alive", {}, mesh=True, port_errors=frozenset({"8080"})))
    assert values(ask(responder(ms), "web.p2pswarm.")) == ["10.0.0.1"]


def test_tasks_name_answers_every_running_healthy_task_address():
    r = responder()
    assert values(ask(r, "tasks.web.p2pswarm.")) == ["10.0.0.1", "10.0.0.2"]
    api = ask(r, "tasks.api.p2pswarm.")  # its one task is unhealthy
    assert api.rcode() == dns.rcode.NOERROR and not api.answer


def test_a_service_without_published_ports_answers_its_tasks_named_from_the_cluster_state():
    r = responder()
    assert values(ask(r, "db.p2pswarm.")) == ["10.0.0.1"]  # the digest names no service: the state does
    assert values(ask(r, "tasks.db.p2pswarm.")) == ["10.0.0.1"]


def test_srv_gives_each_task_host_and_port_with_addresses_in_additional():
    r = responder()
    reply = ask(r, "_8080._tcp.web.p2pswarm.", "SRV")
    srv = sorted((rd.port, rd.target.to_text()) for rd in reply.answer[0])
    assert srv == [(31000, "7-0.tasks.web.p2pswarm."), (31500, "7-1.tasks.web.p2pswarm.")]
    extra = {rrset.name.to_text(): [rd.to_text() for rd in rrset] for rrset in reply.additional
             if rrset.rdtype == dns.rdatatype.A}
    assert extra == {"7-0.tasks.web.p2pswarm.": ["10.0.0.1"], "7-1.tasks.web.p2pswarm.": ["10.0.0.2"]}
    dynamic = ask(r, "_port._tcp.db.p2pswarm.", "SRV")  # a process task's dynamic $PORT, never published
    assert [(rd.port, rd.target.to_text()) for rd in dynamic.answer[0]] == [(32000, "8-0.tasks.db.p2pswarm.")]
    assert values(ask(r, "7-1.tasks.web.p2pswarm.")) == ["10.0.0.2"]


def test_names_are_case_insensitive_and_the_question_case_is_echoed():
    reply = ask(responder(), "TASKS.Web.P2PSwarm.")
    assert values(reply) == ["10.0.0.1", "10.0.0.2"]
    assert reply.question[0].name.to_text() == "TASKS.Web.P2PSwarm."


def test_unknown_names_are_nxdomain_and_known_ones_without_data_are_empty():
    r = responder()
    for name in ("nope.p2pswarm.", "x.y.z.web.p2pswarm.", "9-9.tasks.web.p2pswarm.", "foo.web.p2pswarm."):
        reply = ask(r, name)
        assert reply.rcode() == dns.rcode.NXDOMAIN, name
        assert reply.authority[0].rdtype == dns.rdatatype.SOA  # negative answers are cached for the TTL only
    for name, rdtype in (("idle.p2pswarm.", "A"), ("web.p2pswarm.", "AAAA"), ("_9999._tcp.web.p2pswarm.", "SRV"),
                         ("p2pswarm.", "A")):
        reply = ask(r, name, rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer, name
    assert ask(r, "p2pswarm.", "SOA").answer[0].rdtype == dns.rdatatype.SOA


def test_other_domains_zone_transfers_and_other_classes_are_refused():
    r = responder()
    for name, rdtype in (("example.com.", "A"), ("p2pswarm.example.com.", "A"), ("p2pswarm.", "AXFR"),
                         ("p2pswarm.", "IXFR"), ("web.p2pswarm.", "AXFR")):
        reply = ask(r, name, rdtype, tcp=True)
        assert reply.rcode() == dns.rcode.REFUSED and not reply.answer, (name, rdtype)
        assert not reply.flags & dns.flags.AA
    assert ask(r, "web.p2pswarm.", "TXT", rdclass="CH").rcode() == dns.rcode.REFUSED
    assert r.counters["rcode_refused"] == 6


def test_other_opcodes_are_notimp_and_bad_packets_formerr_or_dropped():
    r = responder()
    update = dns.message.make_query("web.p2pswarm.", "A")
    update.set_opcode(dns.opcode.UPDATE)
    reply = dns.message.from_wire(r.respond(update.to_wire()), question_only=True)
    assert reply.rcode() == dns.rcode.NOTIMP
    garbage = struct.pack("!HHHHHH", 4242, 0x0100, 1, 0, 0, 0) + b"\x3fnot a name"
    reply = dns.message.from_wire(r.respond(garbage))
    assert reply.id == 4242 and reply.rcode() == dns.rcode.FORMERR
    assert r.respond(b"\x00\x01short") is None  # no header: no one to answer
    answer = bytearray(dns.message.make_query("web.p2pswarm.", "A").to_wire())
    answer[2] |= 0x80  # a response: never answered (no loops, no reflection)
    assert r.respond(bytes(answer)) is None
    assert (r.counters["malformed"], r.counters["dropped"], r.counters["dropped_responses"]) == (1, 1, 1)


def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp():
    many = [MemberFacts(f"n{i}", f"10.1.{i // 250}.{i % 250 + 1}", "alive",
                        {f"{i}.0": running(30000, "big", 8080)}, mesh=True) for i in range(300)]
    r = responder(many, me="n0")
    udp = ask(r, "tasks.big.p2pswarm.")
    assert udp.flags & dns.flags.TC and r.counters["truncated"] == 1
    tcp = ask(r, "tasks.big.p2pswarm.", tcp=True)
    assert not tcp.flags & dns.flags.TC and len(values(tcp)) == 256  # MAX_ANSWERS


def test_answers_follow_a_new_zone_at_once_even_from_the_cache():
    r = responder()
    assert values(ask(r, "tasks.web.p2pswarm.")) == ["10.0.0.1", "10.0.0.2"]
    assert values(ask(r, "tasks.web.p2pswarm.")) == ["10.0.0.1", "10.0.0.2"]
    assert r.counters["cache_hits"] == 1
    dead_b = members(b=MemberFacts("b", "10.0.0.2", "dead", {"7.1": running(31500, "web", 8080)}, mesh=True))
    r.update(build("p2pswarm", "a", dead_b, known=["web"], version=2))
    assert values(ask(r, "tasks.web.p2pswarm.")) == ["10.0.0.1"]


def test_a_zone_with_the_same_names_keeps_the_cache_and_the_budget_guards_fresh_answers():
    r = responder()
    ask(r, "web.p2pswarm.")
    assert not r.update(build("p2pswarm", "a", members(), known=["web", "db", "api", "idle"],
                              service_of={"8.0": "db"}, version=9))  # gossip moved, the names did not
    ask(r, "web.p2pswarm.")
    assert r.counters["cache_hits"] == 1 and r.zone.version == 1
    fresh = dns.message.make_query("tasks.web.p2pswarm.", "A").to_wire()
    assert r.respond(fresh, budget=lambda: False) is None and r.counters["dropped_busy"] == 1
    cached = dns.message.make_query("web.p2pswarm.", "A")
    assert r.respond(cached.to_wire(), budget=lambda: False) is not None  # a cached answer costs nothing


def test_stopping_and_malformed_digest_records_are_not_answered():
    odd = {"1.0": {"s": "stopping", "p": 1, "n": "web", "m": [[8080, 1, False]]}, "2.0": "not a record",
           "3.0": {"s": "running", "n": "Bad Name!", "p": 5}, "4.0": {"s": "running", "n": "web", "p": 70000},
           "5.0": {"s": "running", "n": "web", "m": [[8080, "x", False], "junk"]}}
    r = responder([MemberFacts("a", "10.0.0.1", "alive", odd, mesh=True)])
    assert values(ask(r, "tasks.web.p2pswarm.")) == ["10.0.0.1"]  # 4.0 and 5.0 run, without usable ports
    assert not ask(r, "_port._tcp.web.p2pswarm.", "SRV").answer


def test_the_domain_is_configurable_and_checked():
    r = Responder(build("Swarm.Internal", "a", members(), version=1))
    assert values(ask(r, "web.swarm.internal.")) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert ask(r, "web.p2pswarm.").rcode() == dns.rcode.REFUSED
    assert normalize_domain("p2pswarm") == "p2pswarm."
    for bad in ("", "a..b", "-x", "x" * 64):
        try:
            normalize_domain(bad)
        except ValueError as exc:
            assert "bad DNS domain" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_no_packet_makes_the_core_raise(data):
    r = responder()
    wire = r.respond(data)
    if wire is not None:
        assert len(wire) >= 12 and wire[2] & 0x80  # whatever it answers is a response


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 11), st.integers(0, 255))
def test_a_corrupted_real_query_never_makes_the_core_raise(pos, byte):
    data = bytearray(dns.message.make_query("_8080._tcp.web.p2pswarm.", "SRV", use_edns=0).to_wire())
    data[pos + 12 if pos + 12 < len(data) else pos] = byte
    responder().respond(bytes(data), tcp=bool(byte & 1))
