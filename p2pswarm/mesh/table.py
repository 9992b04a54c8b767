"""The routing mesh's route table, built from gossip alone (pure).

Every node runs this whenever membership or a task digest changes, never per
connection. Inputs are what SWIM already knows: which members are alive, the
round-trip time to each, which members this node cannot reach directly (its direct
probes fail while indirect ones get through), and each member's gossiped facts
(:mod:`p2pswarm.consensus.facts`): its task digest, its relay port and the members *it*
cannot reach directly. Nothing here reads Raft, so the mesh keeps working while
Raft has no quorum.

Backends are running tasks whose digest record names published ports (``m``), on
members that are alive (a suspect drops out at once), and healthy when the task has a
health check. A task that is stopping is left out, which drains it: no new
connections, while open ones continue in the data plane.

**Relays.** The links are a networkx graph: one vertex per alive member, an edge for
every pair that has not reported the other unreachable, weighted by round-trip time
(this node's measurement for its own edges; for other edges, the median of this
node's measurements, since others' RTTs are not gossiped). When this node cannot
reach a backend's member directly, the shortest path decides the relay: its first
hop. Relays forward straight to the backend, so only two-hop paths are used; a
backend reachable only over longer paths is reported unreachable.

**UDP.** Published UDP ports go to a separate ``udp`` list of the table (present only when
there is one, so TCP-only tables are unchanged; a number may be published once per protocol).
A UDP backend on a node without a direct link is relayed like TCP, through the relay node's
UDP relay listener (``udp_relay_allow``: the UDP targets this node's relay forwards to; see
:mod:`p2pswarm.mesh.udp`). Both relay listeners, TCP and UDP, take connections and datagrams only
from the other members' hosts (``relay_from``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median
from typing import Any, Iterable, Mapping

import networkx as nx

from p2pswarm.membership.messages import LIVE
from p2pswarm.mesh.routes import DEFAULT_LIMITS, RTT_FLOOR
from p2pswarm.transport.ports import TLS_RELAY_OFFSET


@dataclass(frozen=True)
class Peer:
    """What the table needs of one member (built by the driver from SWIM and gossiped facts)."""
    node: str
    name: str
    host: str
    status: str
    rtt: float | None = None
    relay_port: int = 0
    unreachable: frozenset[str] = frozenset()
    """Members this peer reports it cannot reach directly."""
    tasks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The peer's task digest records, by task id (untrusted: checked here)."""


@dataclass(frozen=True)
class Route:
    """One backend of a published port as this node sees it, with the reason for its route."""
    port: int
    service: str
    task: str
    node: str
    node_name: str
    addr: str
    route: str
    """``local``, ``direct``, ``via <relay name>``, or ``excluded``."""
    why: str
    protocol: str = "tcp"
    """``tcp`` or ``udp``."""




def tls_relay(peer: Peer) -> str:
    return f"{peer.host}:{peer.relay_port + TLS_RELAY_OFFSET}"


def build(me: str, peers: Iterable[Peer], *, unreachable: Iterable[str] = (),
          blocked_hosts: Iterable[str] = (), limits: Mapping[str, Any] | None = None,
          version: int = 0, tls: bool = False) -> tuple[dict[str, Any], list[Route]]:
    """The data plane's table (see :mod:`p2pswarm.mesh.dataplane`) and every route's explanation.

    ``tls``: this node has mesh TLS material, so it can forward ``encrypted`` ports: their
    remote backends are reached through the TLS relay listener of their node (or of a relay
    node, which then goes on over TLS to the backend's node: ``tls_next``)."""
    peers = {p.node: p for p in peers}
    own = peers.get(me)
    host = own.host if own is not None else "127.0.0.1"
    direct = direct_links(me, peers, frozenset(unreachable))
    graph: nx.Graph | None = None  # built the first time a backend needs a relay: n² links, usually unused
    relays = {n for n, p in peers.items() if p.relay_port}
    relay_for: dict[str, str | None] = {}
    ports: dict[int, dict[str, Any]] = {}
    udp: dict[int, dict[str, Any]] = {}
    routes: list[Route] = []
    relay_allow: set[str] = set()
    udp_relay_allow: set[str] = set()
    tls_next: dict[str, str] = {}
    for peer in sorted(peers.values(), key=lambda p: p.node):
        if peer.status not in LIVE:
            continue  # a dead member's last digest is history, not a backend
        for task, published, target, proxy, service, reason, proto, encrypted, userspace in _served(peer):
            addr = f"{peer.host}:{target}"
            if proto == "udp":
                entry = udp.setdefault(published, {"port": published, "service": service, "backends": []})
            else:
                entry = ports.setdefault(published, {"port": published, "service": service,
                                                     "proxy_protocol": proxy, "backends": []})
                if encrypted:
                    entry["encrypted"] = True
            if userspace:
                entry["userspace"] = True
            if encrypted and not reason and peer.node != me:
                if not tls:
                    reason = "encrypted port and this node has no mesh TLS material (plaintext cluster?)"
                elif not peer.relay_port:
                    reason = "encrypted port and its node runs no relay listener"
            if reason:
                routes.append(Route(published, service, task, peer.node, peer.name, addr, "excluded", reason,
                                    proto))
                continue
            backend: dict[str, Any] = {"task": task, "node": peer.node, "addr": addr, "local": peer.node == me,
                                       "rtt": None if peer.node == me else peer.rtt, "via": None}
            if peer.node == me:
                route, why = "local", "replica on this node"
            elif peer.node not in direct:
                if peer.node not in relay_for:
                    graph = graph if graph is not None else link_graph(me, peers, frozenset(unreachable))
                    relay_for[peer.node] = relay_of(graph, me, peer.node, relays)
                relay = relay_for[peer.node]
                if relay is None:
                    routes.append(Route(published, service, task, peer.node, peer.name, addr, "excluded",
                                        "no direct link and no relay reaches its node", proto))
                    continue
                if encrypted:
                    backend["via"], backend["tls"] = tls_relay(peers[relay]), True
                    route, why = f"via {peers[relay].name}", "direct link down; relay has a direct link; TLS"
                else:
                    backend["via"] = f"{peers[relay].host}:{peers[relay].relay_port}"
                    route, why = f"via {peers[relay].name}", "direct link down; relay has a direct link"
            else:
                rtt = "rtt unknown" if peer.rtt is None else f"rtt {peer.rtt * 1000:.2f} ms"
                route, why = "direct", rtt
                if encrypted:
                    backend["via"], backend["tls"] = tls_relay(peer), True
                    route, why = "tls", f"{rtt}; TLS to its node's mesh"
            if peer.node in direct or peer.node == me:
                (udp_relay_allow if proto == "udp" else relay_allow).add(addr)
                if encrypted and peer.node != me and tls and peer.relay_port:
                    tls_next[addr] = tls_relay(peer)
            entry["backends"].append(backend)
            routes.append(Route(published, service, task, peer.node, peer.name, addr, route, why, proto))
    table = {"version": version, "host": host, "relay_port": own.relay_port if own is not None else 0,
             "relay_allow": sorted(relay_allow), "blocked_hosts": sorted(set(blocked_hosts)),
             "relay_from": sorted({p.host for p in peers.values()
                                   if p.node != me and p.status in LIVE}),
             "ports": [ports[p] for p in sorted(ports)], "limits": dict(limits or DEFAULT_LIMITS)}
    if udp:  # only when there is one: a TCP-only table is exactly what it was before UDP
        table["udp"] = [udp[p] for p in sorted(udp)]
        table["udp_relay_allow"] = sorted(udp_relay_allow)
    if tls_next:
        table["tls_next"] = dict(sorted(tls_next.items()))
    return table, routes


def direct_links(me: str, peers: Mapping[str, Peer], unreachable: frozenset[str]) -> frozenset[str]:
    """The members ``me`` links to directly: its edges in :func:`link_graph`, without building the whole
    graph (every pair of alive members), which only a route through a relay needs."""
    own = peers.get(me)
    if own is None or own.status != "alive":
        return frozenset()
    return frozenset(p.node for p in peers.values() if p.status == "alive" and p.node != me and
                     p.node not in unreachable and p.node not in own.unreachable and me not in p.unreachable)


def link_graph(me: str, peers: Mapping[str, Peer], unreachable: frozenset[str]) -> nx.Graph:
    """Alive members and the direct links between them, weighted by round-trip time."""
    alive = [p for p in peers.values() if p.status == "alive"]
    measured = [p.rtt for p in alive if p.node != me and p.rtt is not None]
    default = median(measured) if measured else RTT_FLOOR
    graph = nx.Graph()
    graph.add_nodes_from(p.node for p in alive)
    down = {frozenset((me, other)) for other in unreachable}
    for p in alive:
        down.update(frozenset((p.node, other)) for other in p.unreachable)
    for i, a in enumerate(alive):
        for b in alive[i + 1:]:
            if frozenset((a.node, b.node)) in down:
                continue
            if me in (a.node, b.node):
                other = b if a.node == me else a
                weight = other.rtt if other.rtt is not None else default
            else:
                weight = default
            graph.add_edge(a.node, b.node, weight=weight + RTT_FLOOR)
    return graph


def relay_of(graph: nx.Graph, me: str, target: str, relays: set[str]) -> str | None:
    """The first hop of the shortest path to ``target`` through members that run a relay
    (``relays``), when that path has exactly one relay."""
    if me not in graph or target not in graph:
        return None
    usable = graph.subgraph((relays & set(graph)) | {me, target})
    try:
        path = nx.shortest_path(usable, me, target, weight="weight")
    except nx.NetworkXNoPath:
        return None
    return path[1] if len(path) == 3 else None


ENDED = frozenset({"complete", "failed", "shutdown"})
"""Task states that are history: not listed at all, not even as excluded."""


def _served(peer: Peer):
    """(task, published, task port, proxy protocol, service, exclusion reason or "", protocol, encrypted,
    userspace) per published port. An ``m`` item is ``[published, task port, proxy]`` (TCP),
    ``[published, task port, proxy, "tls"]`` (encrypted TCP) or ``[published, task port, proxy, "udp"]``;
    other 4th elements (a later protocol) are skipped. The record's ``u`` lists the published ports whose
    service asked to stay in user space (``8080`` for TCP, ``"5353/udp"``: :mod:`p2pswarm.mesh.kernel_plan`);
    nodes that predate it ignore it and serve those ports in user space anyway."""
    for task, rec in sorted(peer.tasks.items()):
        mesh = rec.get("m")
        if not isinstance(mesh, list) or rec.get("s") in ENDED:
            continue
        service = rec.get("n") if isinstance(rec.get("n"), str) else task
        reason = _exclusion(peer, rec)
        userspace = rec.get("u") if isinstance(rec.get("u"), list) else ()
        for item in mesh:
            if (isinstance(item, list) and (len(item) == 3 or (len(item) == 4 and item[3] in ("udp", "tls")))
                    and all(type(v) is int for v in item[:2]) and 0 < item[0] < 65536 and 0 < item[1] < 65536):
                proto = "udp" if len(item) == 4 and item[3] == "udp" else "tcp"
                encrypted = len(item) == 4 and item[3] == "tls"
                key = item[0] if proto == "tcp" else f"{item[0]}/udp"
                yield (task, item[0], item[1], bool(item[2]) and proto == "tcp", service, reason, proto, encrypted,
                       key in userspace)


def _exclusion(peer: Peer, rec: Mapping[str, Any]) -> str:
    if peer.status != "alive":
        return f"node {peer.status}"
    if rec.get("s") != "running":
        return "stopping: draining" if rec.get("s") == "stopping" else f"task {rec.get('s')}"
    if rec.get("h") not in (None, "healthy"):
        return f"health {rec.get('h')}"
    return ""
