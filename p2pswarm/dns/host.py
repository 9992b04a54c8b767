"""Service discovery by DNS in the node: binds the listeners, keeps the zone current, gossips where.

Every node answers, from its own gossip and applied state, without quorum (see
:mod:`p2pswarm.dns.zone` for what it answers and :mod:`p2pswarm.dns.core` for how). The zone is
rebuilt in the loop turn in which a member's status, a task digest or the applied cluster state
changes, so answers follow a task's start or death within one gossip round.

**Where it listens** (``up --dns-addr``): ``auto`` (the default) takes UDP and TCP port 53 on the
node's address when it may bind it (root, and nothing else holds it), else the SWIM port +
``DNS_FALLBACK_OFFSET`` (7950 for the default 7946), else any free port; ``HOST:PORT`` binds exactly
that or fails the start with one line; ``off`` serves no DNS. The address chosen, and why, is in
``node inspect`` (gossiped in the ``dns`` section of the record) and ``/v1/info``; tasks get it as
``P2PSWARM_DNS`` (and containers as their resolver when it is port 53).
"""

from __future__ import annotations

import logging
from typing import Any

from p2pswarm.dns.core import Responder
from p2pswarm.dns.server import DnsServer
from p2pswarm.dns.zone import MemberFacts, Zone, build, normalize_domain
from p2pswarm.node.record import DnsFacts, GossipRecord
from p2pswarm.transport.addr import format_addr, parse_addr
from p2pswarm.transport.ports import DNS_FALLBACK_OFFSET

log = logging.getLogger("p2pswarm.dns")

DEFAULT_DOMAIN = "p2pswarm."
DNS_PORT = 53
AUTO, OFF = "auto", "off"
CHECK_INTERVAL = 0.1
"""Seconds at least between two looks at what the zone is built from (a scan of every member): the node steps
its DNS after every message it receives, dozens a second in a cluster of a hundred nodes."""


def parse_dns_addr(value: str) -> str:
    """``auto``, ``off`` or ``HOST:PORT`` (checked); raises ValueError with one line."""
    text = value.strip().lower()
    if text in (AUTO, OFF):
        return text
    parsed = parse_addr(value.strip())
    if parsed is None:
        raise ValueError(f"--dns-addr wants HOST:PORT (e.g. 127.0.0.1:53), auto or off, not {value!r}")
    return format_addr(*parsed)


class DnsHost:
    name = "dns"

    def __init__(self, node_id: str, swim: Any, raft: Any, record: GossipRecord, *, swim_addr: str,
                 dns_addr: str = AUTO, domain: str = DEFAULT_DOMAIN) -> None:
        """``swim_addr``: the node's own address (its host is where ``auto`` listens)."""
        self.node_id, self.swim, self.raft, self.record = node_id, swim, raft, record
        self.domain = normalize_domain(domain)
        self.swim_addr, self.dns_addr = swim_addr, parse_dns_addr(dns_addr)
        self.responder = Responder(Zone(self.domain))
        self.server: DnsServer | None = None
        self.choice = "off" if self.dns_addr == OFF else ""
        """Why this address: ``port 53``, ``--dns-addr``, or the fallback and why 53 was not possible."""
        self._key: Any = None
        self._next_check = float("-inf")
        self.version = 0

    @classmethod
    def of_node(cls, node: Any) -> DnsHost:
        """The DNS of :class:`p2pswarm.node.daemon.Node` ``node``, where its options say."""
        return cls(node.node_id, node.swim, node.raft, node.record, swim_addr=node.swim_addr,
                   dns_addr=node.options.dns_addr, domain=node.options.dns_domain)

    @property
    def addr(self) -> str | None:
        """``HOST:PORT`` the DNS listens on, None when off."""
        return format_addr(self.server.host, self.server.port) if self.server is not None else None

    async def start(self) -> None:
        if self.dns_addr == OFF:
            log.info("DNS is off (--dns-addr off)")
            return
        parsed = parse_addr(self.swim_addr)
        host, swim_port = parsed if parsed is not None else ("127.0.0.1", 0)
        if self.dns_addr != AUTO:
            host, port = parse_addr(self.dns_addr) or (host, 0)
            try:
                await self._bind(host, port)
            except OSError as exc:
                raise ValueError(f"cannot serve DNS on {self.dns_addr}: {exc.strerror or exc} "
                                 f"(choose another --dns-addr, or --dns-addr off)") from None
            self.choice = "--dns-addr"
        else:
            await self._bind_auto(host, swim_port)
        log.info("DNS for %s on %s (udp and tcp; %s)", self.domain, self.addr, self.choice)
        self.record.set(DnsFacts(self.server.host, self.server.port) if self.server else DnsFacts("", 0))

    async def _bind_auto(self, host: str, swim_port: int) -> None:
        why = ""
        fallback = swim_port + DNS_FALLBACK_OFFSET if 0 < swim_port <= 65535 - DNS_FALLBACK_OFFSET else 0
        for port in dict.fromkeys((DNS_PORT, fallback, 0)):
            try:
                await self._bind(host, port)
            except OSError as exc:
                why = why or f"port 53: {exc.strerror or exc}"
                continue
            self.choice = "port 53" if port == DNS_PORT else f"fallback ({why})"
            return
        log.warning("no port free for DNS on %s: this node serves no DNS", host)
        self.choice = "off (no port free)"

    async def _bind(self, host: str, port: int) -> None:
        server = DnsServer(self.responder, host, port)
        await server.start()
        self.server = server

    def step(self, now: float) -> None:
        """Rebuild the zone when members, digests or the applied state changed (cheap otherwise)."""
        if self.server is None or now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL
        state = self._cluster()
        key = (self.record.routing_inputs_of(self.swim), getattr(state, "applied", None))
        if key == self._key:
            return
        self._key = key
        if self.responder.update(self.zone(state, self.version + 1)):
            self.version += 1  # the names changed (the SOA serial): not every gossip change does

    def zone(self, state: Any = None, version: int = 0) -> Zone:
        members = []
        wanted: set[str] = set()
        for m in self.swim.members():
            parsed = parse_addr(m.addr)
            if parsed is None:
                continue
            rec = self.record.of(m)
            tasks = rec.tasks.tasks if rec.tasks is not None else {}
            wanted.update(t for t, r in tasks.items() if isinstance(r, dict) and "n" not in r)
            errors = frozenset(k for k, _ in rec.mesh.port_errors) if rec.mesh is not None else frozenset()
            members.append(MemberFacts(m.node, parsed[0], m.status, tasks, rec.mesh is not None or
                                       m.node == self.node_id, errors))
        known: tuple[str, ...] = ()
        service_of: dict[str, str] = {}
        if state is not None:
            known = tuple(state.services)
            service_of = {t: state.tasks[t].service for t in wanted if t in state.tasks}
        return build(self.domain, self.node_id, members, known=known, service_of=service_of, version=version)

    def _cluster(self) -> Any:
        driver = self.raft.driver if self.raft is not None else None
        return getattr(driver, "cluster", None) if driver is not None else None

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def metrics(self) -> dict[str, int]:
        out = {k: int(v) for k, v in self.server.stats().items()} if self.server is not None else {}
        out["zone_version"] = self.version
        return out

    def status(self) -> dict[str, Any]:
        zone = self.responder.zone
        return {"addr": self.addr, "domain": self.domain, "choice": self.choice, "zone_version": self.version,
                "services": len(zone.services), "counters": self.metrics()}
