"""The DNS core: a query's bytes in, the answer's bytes out, from one :class:`~p2pswarm.dns.zone.Zone` (pure).

The wire format is dnspython's; what is asked is answered here (``<domain>`` is the zone's, e.g.
``p2pswarm.``):

==================================  ==========  ==================================================
name                                type        answer
==================================  ==========  ==================================================
``NAME.<domain>``                   A, AAAA     the nodes whose mesh serves NAME, else its tasks
``tasks.NAME.<domain>``             A, AAAA     each running healthy task's address (once each)
``ID.tasks.NAME.<domain>``          A, AAAA     that task's address (ID: the task id, ``.`` -> ``-``)
``_PORT._tcp.NAME.<domain>``        SRV         each task: its port, target ``ID.tasks.NAME.<domain>``
``<domain>``                        SOA         the zone's SOA (also in every negative answer)
==================================  ==========  ==================================================

``_PORT`` is ``_port`` for a task's ``$PORT`` (a process task's dynamic port) or a published
port's number (``_8080._tcp``, ``_5353._udp``) for the task port behind it.  A name of the zone
that does not exist is NXDOMAIN; one that exists without the asked type is an empty NOERROR.

Bad input never raises: a name outside the zone, a class other than IN and zone transfers
(AXFR, IXFR) are REFUSED (this is no open resolver); other opcodes NOTIMP; a packet that does not
parse FORMERR (with its id, when it has a header); shorter than a header, or a response: dropped.
Each outcome is counted in :attr:`Responder.counters`.  Answers to the same question bytes are
cached until the zone's names change, so a flood of one question costs a dict lookup each (~3 µs);
an answer made afresh costs dnspython's parse and render (0.3-1 ms), so the caller may pass a
``budget`` that refuses to make one (a flood of ever new questions: dropped, ``dropped_busy``).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Callable

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

from p2pswarm.dns.zone import ServiceAnswer, TaskAnswer, Zone, task_hosts

TTL = 5
"""Seconds a resolver may keep an answer (positive and negative): tasks move within seconds."""
UDP_PAYLOAD = 1232
"""The largest UDP answer we send to an EDNS client (the DNS flag day 2020 size); 512 without EDNS."""
MAX_ANSWERS = 256
"""Records one answer holds at most (TCP included)."""
CACHE_SIZE = 4096
"""Distinct questions whose answers are kept per zone version; past it the cache starts over."""
HEADER = 12
IN = dns.rdataclass.IN
TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
ADDRESS_TYPES = {4: dns.rdatatype.A, 6: dns.rdatatype.AAAA}


class Responder:
    """Answers queries from the current zone; :meth:`update` swaps in a new one."""

    def __init__(self, zone: Zone, ttl: int = TTL, cache_size: int = CACHE_SIZE) -> None:
        self.zone, self.ttl, self.cache_size = zone, ttl, cache_size
        self.origin = dns.name.from_text(zone.domain)
        self.counters: Counter[str] = Counter()
        self._cache: dict[tuple[bool, bytes], bytes] = {}

    def update(self, zone: Zone) -> bool:
        """Answer from ``zone`` from now on; False (and the current zone kept, with its cache and SOA serial)
        when it holds the same names as the current one."""
        if zone.domain == self.zone.domain and zone.services == self.zone.services:
            return False
        if zone.domain != self.zone.domain:
            self.origin = dns.name.from_text(zone.domain)
        self._cache.clear()
        self.zone = zone
        return True

    def respond(self, data: bytes, tcp: bool = False, budget: Callable[[], bool] | None = None) -> bytes | None:
        """The answer to one query (``tcp``: no size limit but :data:`MAX_ANSWERS`), or None to drop it;
        ``budget()`` is asked before an answer is made afresh (not for a cached one): False drops the query."""
        if len(data) < HEADER or data[2] & 0x80:
            self.counters["dropped" if len(data) < HEADER else "dropped_responses"] += 1
            return None
        key = (tcp, data[2:])
        cached = self._cache.get(key)
        if cached is not None:
            self.counters["queries"] += 1
            self.counters["cache_hits"] += 1
            return data[:2] + cached
        if budget is not None and not budget():
            self.counters["dropped_busy"] += 1
            return None
        if (data[2] >> 3) & 0xF != dns.opcode.QUERY:  # before parsing: an UPDATE has sections of its own
            self.counters["queries"] += 1
            self.counters["rcode_notimp"] += 1
            return error_reply(data, dns.rcode.NOTIMP)
        try:
            query = dns.message.from_wire(data)
        except Exception:  # dnspython raises many kinds on garbage; all of them are a FORMERR
            self.counters["malformed"] += 1
            return error_reply(data, dns.rcode.FORMERR)
        self.counters["queries"] += 1
        wire = self._answer(query, tcp)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[key] = wire[2:]
        return wire

    def _answer(self, query: dns.message.Message, tcp: bool) -> bytes:
        response = dns.message.make_response(query, our_payload=UDP_PAYLOAD)
        response.flags &= ~dns.flags.RA
        rcode = self._fill(query, response)
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            response.flags |= dns.flags.AA  # authoritative for the zone; a refusal or error is not an answer
        response.set_rcode(rcode)
        self.counters[f"rcode_{dns.rcode.to_text(rcode).lower()}"] += 1
        limit = 65535 if tcp else (max(512, min(query.payload, UDP_PAYLOAD)) if query.edns >= 0 else 512)
        wire = response.to_wire(max_size=limit, prefer_truncation=True)
        if wire[2] & 0x02:  # TC: the client retries over TCP
            self.counters["truncated"] += 1
        return wire

    def _fill(self, query: dns.message.Message, response: dns.message.Message) -> dns.rcode.Rcode:
        if len(query.question) != 1:
            return dns.rcode.FORMERR
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if question.rdclass != IN or qtype in TRANSFERS or not qname.is_subdomain(self.origin):
            return dns.rcode.REFUSED
        labels = [label.decode("ascii", "replace").lower() for label in qname.relativize(self.origin).labels]
        if labels == ["@"]:
            labels = []
        rcode = self._lookup(labels, qname, qtype, response)
        if rcode == dns.rcode.NXDOMAIN or not response.answer:
            response.authority.append(self._soa())
        return rcode

    def _lookup(self, labels: list[str], qname: dns.name.Name, qtype: int,
                response: dns.message.Message) -> dns.rcode.Rcode:
        if not labels:
            if qtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
                response.answer.append(self._soa())
            return dns.rcode.NOERROR
        svc = self.zone.services.get(labels[-1])
        if svc is None or len(labels) > 3:
            return dns.rcode.NXDOMAIN
        if len(labels) == 1:
            self._addresses(response, qname, qtype, self.zone.addresses(labels[0]))
        elif labels[-2] == "tasks" and len(labels) == 2:
            self._addresses(response, qname, qtype, task_hosts(svc.tasks))
        elif labels[-2] == "tasks":
            task = next((t for t in svc.tasks if t.label == labels[0]), None)
            if task is None:
                return dns.rcode.NXDOMAIN
            self._addresses(response, qname, qtype, (task.host,))
        elif len(labels) == 3 and labels[0].startswith("_") and labels[1] in ("_tcp", "_udp"):
            if qtype in (dns.rdatatype.SRV, dns.rdatatype.ANY):
                self._srv(response, qname, labels[-1], svc, labels[0][1:], labels[1][1:])
        else:
            return dns.rcode.NXDOMAIN
        return dns.rcode.NOERROR

    def _addresses(self, response: dns.message.Message, qname: dns.name.Name, qtype: int,
                   hosts: tuple[str, ...]) -> None:
        for version, rdtype in ADDRESS_TYPES.items():
            if qtype not in (rdtype, dns.rdatatype.ANY):
                continue
            rrset = _address_rrset(qname, rdtype, version, hosts, self.ttl)
            if rrset is not None:
                response.answer.append(rrset)

    def _srv(self, response: dns.message.Message, qname: dns.name.Name, service: str, svc: ServiceAnswer,
             port_name: str, proto: str) -> None:
        rrset = dns.rrset.RRset(qname, IN, dns.rdatatype.SRV)
        targets: dict[dns.name.Name, TaskAnswer] = {}
        for task in svc.tasks:
            for name, task_proto, port in task.ports:
                if name == port_name and task_proto == proto and len(rrset) < MAX_ANSWERS:
                    target = dns.name.from_text(f"{task.label}.tasks.{service}", self.origin)
                    rrset.add(SRV(IN, dns.rdatatype.SRV, 0, 1, port, target), self.ttl)
                    targets[target] = task
        if not len(rrset):
            return
        response.answer.append(rrset)
        for target, task in targets.items():
            for version, rdtype in ADDRESS_TYPES.items():
                extra = _address_rrset(target, rdtype, version, (task.host,), self.ttl)
                if extra is not None:
                    response.additional.append(extra)

    def _soa(self) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(self.origin, IN, dns.rdatatype.SOA)
        rrset.add(SOA(IN, dns.rdatatype.SOA, dns.name.from_text("ns", self.origin),
                      dns.name.from_text("hostmaster", self.origin), self.zone.version % 2**32, 60, 10, 600,
                      self.ttl), self.ttl)
        return rrset


def _address_rrset(name: dns.name.Name, rdtype: dns.rdatatype.RdataType, version: int, hosts: tuple[str, ...],
                   ttl: int) -> dns.rrset.RRset | None:
    rrset = dns.rrset.RRset(name, IN, rdtype)
    for host in hosts:
        if (":" in host) == (version == 6) and len(rrset) < MAX_ANSWERS:
            rrset.add(AAAA(IN, rdtype, host) if version == 6 else A(IN, rdtype, host), ttl)
    return rrset if len(rrset) else None


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """A bare answer with ``rcode`` to a query that did not parse: its id and opcode, no sections."""
    if len(data) < HEADER:
        return None
    ident, flags = struct.unpack("!HH", data[:4])
    return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7800) | (rcode & 0xF), 0, 0, 0, 0)

