"""What the API reads of a node: the NodeView protocol.

The routes (:mod:`p2pswarm.api`) see the node through exactly these members and
nothing else, so that a route cannot reach into the node's loop, and a test can
serve the routes from a small fake that declares the same members.  Subsystems
a node may not run (a plaintext cluster has no security host; the log service and
the agent start with the other services) are None, never missing.

:class:`NodeViews` is the real node's side: the JSON views it answers from its
SWIM core, transport and hosts (the node class inherits it).
"""

from __future__ import annotations

import logging
import os
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable, Protocol

from p2pswarm.cluster.capabilities import engine_text, isolation_text
from p2pswarm.membership.messages import LIVE, STATUSES
from p2pswarm.transport.addr import parse_addr
from p2pswarm.transport.ports import JOIN_PORT_OFFSET, RELAY_PORT_OFFSET, TLS_RELAY_OFFSET

if TYPE_CHECKING:
    from collections import Counter

    from p2pswarm.consensus.host import RaftHost
    from p2pswarm.membership.swim import Swim
    from p2pswarm.node.datadir import DataDir
    from p2pswarm.node.options import NodeOptions
    from p2pswarm.node.record import GossipRecord

log = logging.getLogger("p2pswarm.node.daemon")


def software_version() -> str:
    try:
        return metadata.version("p2pswarm")
    except metadata.PackageNotFoundError:
        return "dev"


class NodeView(Protocol):
    @property
    def node_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def swim(self) -> Any:
        """The SWIM core (:class:`p2pswarm.membership.swim.Swim`), for views of the members."""

    @property
    def security(self) -> Any:
        """The :class:`p2pswarm.security.host.SecurityHost` in a secure cluster, else None."""

    @property
    def api_ca(self) -> Any:
        """The :class:`p2pswarm.security.apicahost.ApiCAHost` in a secure cluster, else None."""

    @property
    def agent(self) -> Any:
        """The :class:`p2pswarm.agent.host.AgentHost` once the services started, else None."""

    @property
    def logs(self) -> Any:
        """The :class:`p2pswarm.logs.service.LogsService` once the services started, else None."""

    @property
    def events(self) -> Any:
        """The :class:`p2pswarm.events.host.EventsHost` once Raft is set up, else None."""

    def raft_driver(self) -> Any:
        """The running :class:`p2pswarm.consensus.driver.RaftDriver`, or None before the node knows its cluster."""

    def info(self) -> dict[str, Any]: ...

    def member_views(self) -> list[dict[str, Any]]: ...

    def port_errors(self) -> dict[str, dict[str, str]]:
        """{live member id: {published port (``8080``, ``5353/udp``): why its mesh cannot listen on it}}."""

    def own_ports(self) -> dict[tuple[int, str], str]:
        """{(port, protocol): whose and what, e.g. "node n1's gossip port"}: the ports live members listen on
        themselves, which a service cannot publish."""

    def metrics_snapshot(self) -> dict[str, Any]: ...

    def mesh_view(self) -> dict[str, Any]: ...

    def mesh_metrics(self) -> dict[str, int]: ...

    def security_view(self) -> dict[str, Any]: ...

    def fault_settings(self) -> dict[str, Any]: ...

    def configure_faults(self, settings: dict[str, Any]) -> dict[str, Any]: ...

    def heal_faults(self) -> dict[str, Any]: ...

    def request_shutdown(self) -> None: ...


class NodeViews:
    """The views of :class:`p2pswarm.node.daemon.Node` that the API reads (see :class:`NodeView`)."""

    if TYPE_CHECKING:  # what the node class provides (set in Node.__init__ / defined on Node)
        options: NodeOptions
        datadir: DataDir
        clock: Callable[[], float]
        counters: Counter[str]
        transport: Any
        swim: Swim | None
        record: GossipRecord
        node_id: str
        name: str
        raft: RaftHost | None
        mesh: Any
        dns: Any
        assignments: Any
        security: Any
        _stop_requested: bool

        @property
        def swim_addr(self) -> str: ...

        def remote_api_stats(self) -> dict[str, int]: ...

    def swim_core(self) -> Swim:
        """The SWIM core, made in Node.run before the loop, the API and the components start."""
        if self.swim is None:
            raise RuntimeError("the SWIM core is not made yet (Node.run makes it)")
        return self.swim

    def info(self) -> dict[str, Any]:
        swim = self.swim_core()
        members, secure = swim.members(), self.security is not None
        by_status = {s: 0 for s in STATUSES}
        for m in members:
            by_status[m.status] = by_status.get(m.status, 0) + 1
        return {
            "id": self.node_id, "name": self.name, "addr": self.swim_addr, "pid": os.getpid(),
            "data_dir": str(self.datadir.path), "preset": self.options.preset, "version": software_version(),
            "cluster_size": by_status["alive"] + by_status["suspect"], "members_by_status": by_status,
            "peers": list(self.options.peers), "joined": swim.joined,
            "join_attempts": max(swim.join_attempts, self.security.join_attempts if secure else 0),
            "leaving": self._stop_requested, "secure": secure,
            "security": self.security.state if secure else "off",
            "join_error": self.security.last_error if secure else None, "state": "running",
            "dns": self.dns.status() if getattr(self, "dns", None) is not None else None,
        }

    def member_views(self) -> list[dict[str, Any]]:
        now = self.clock()
        views = []
        for m in self.swim_core().members():
            views.append({
                "id": m.node, "name": m.meta.name, "addr": m.addr, "status": m.status,
                "incarnation": m.incarnation, "labels": dict(m.meta.labels), "capacity": dict(m.meta.capacity),
                "version": m.meta.version, "rtt_ms": None if m.rtt is None else round(m.rtt * 1000, 3),
                "status_for_s": round(max(0.0, now - m.status_since), 3), "self": m.node == self.node_id,
                "role": self.raft_role(m.node), "availability": self._availability(m.node), "dns": self._dns_addr(m),
                **self._capabilities(m),
            })
        return sorted(views, key=lambda v: (v["name"], v["id"]))

    def _availability(self, node: str) -> str:
        """active / pause / drain as the applied cluster state records it; ``-`` when this node has no state."""
        driver = self.raft_driver()
        record = driver.cluster.nodes.get(node) if driver is not None else None
        return record.availability if record is not None else "-"

    def _capabilities(self, member: Any) -> dict[str, str]:
        """What the member gossips of its engine and isolation, as ``node ls`` and ``node inspect`` show it."""
        caps = self.record.of(member).caps
        if caps is None:
            return {"engine": engine_text(None), "isolation": isolation_text(None)}
        return {"engine": engine_text(caps.engine, caps.engine_detail),
                "isolation": isolation_text(caps.isolation, caps.isolation_detail)}

    def _dns_addr(self, member: Any) -> str | None:
        """``HOST:PORT`` where the member answers DNS (its gossiped ``dns`` section), None: none or unknown."""
        from p2pswarm.transport.addr import format_addr
        facts = self.record.of(member).dns
        return format_addr(facts.host, facts.port) if facts is not None and facts.port else None

    def port_errors(self) -> dict[str, dict[str, str]]:
        out = {}
        for m in self.swim_core().members():
            mesh = self.record.of(m).mesh if m.status in LIVE else None
            if mesh is not None and mesh.port_errors:
                out[m.node] = dict(mesh.port_errors)
        return out

    def own_ports(self) -> dict[tuple[int, str], str]:
        own: dict[tuple[int, str], str] = {}
        secure = self.security is not None  # the join endpoint and the TLS relay serve secure clusters only
        for m in self.swim_core().members():
            parsed = parse_addr(m.addr)
            if m.status not in LIVE or parsed is None:
                continue
            host, gossip = parsed
            whose = f"node {m.meta.name or m.node}'s"
            record = self.record.of(m)
            mesh, dns = record.mesh, record.dns
            relay = mesh.relay_port if mesh is not None else gossip + RELAY_PORT_OFFSET  # not gossiped yet: the usual
            ports = [(gossip, "tcp", "gossip")] + ([(gossip + JOIN_PORT_OFFSET, "tcp", "join")] if secure else [])
            if relay:  # 0: the member relays nothing
                ports += [(relay, "tcp", "mesh relay"), (relay, "udp", "mesh relay")]
                ports += [(relay + TLS_RELAY_OFFSET, "tcp", "TLS relay")] if secure else []
            if dns is not None and dns.port and dns.host in (host, "0.0.0.0", "::"):  # on the mesh's address
                ports += [(dns.port, "udp", "DNS"), (dns.port, "tcp", "DNS")]
            for port, protocol, what in ports:
                own.setdefault((port, protocol), f"{whose} {what} port")
        return own

    def fault_settings(self) -> dict[str, Any]:
        return self.transport.describe()

    def configure_faults(self, settings: dict[str, Any]) -> dict[str, Any]:
        self.transport.configure(settings)
        log.warning("fault injection configured: %s", self.transport.describe())
        return self.transport.describe()

    def heal_faults(self) -> dict[str, Any]:
        self.transport.heal()
        log.info("fault injection cleared")
        return self.transport.describe()

    def metrics_snapshot(self) -> dict[str, Any]:
        info = self.info()
        return {"members_by_status": info["members_by_status"], "joined": info["joined"],
                "swim": dict(self.swim_core().counters),
                "transport": dict(self.transport.stats()),
                "node": {**self.counters, **{f"security_{k}": v for k, v in self.security_stats().items()},
                         **self.remote_api_stats(), **self.record.counters},
                "raft": self.raft.metrics() if self.raft is not None else {},
                "dns": self.dns.metrics() if getattr(self, "dns", None) is not None else {},
                "assignments": self.assignments.metrics() if getattr(self, "assignments", None) is not None else {}}

    def security_stats(self) -> dict[str, int]:
        return self.security.stats() if self.security is not None else {}

    def security_view(self) -> dict[str, Any]:
        if self.security is None:
            return {"secure": False, "state": "off"}
        return self.security.view()

    def mesh_view(self) -> dict[str, Any]:
        if self.mesh is None:
            return {"running": False, "routes": [], "ports": [], "kernel": {}}
        status = self.mesh.status()
        plane = status["data_plane"]
        status["routes"] = self.mesh.route_rows()
        status["ports"] = sorted({r.port for r in self.mesh.routes})
        status["bind_errors"] = plane.get("bind_errors", {})
        return status

    def mesh_metrics(self) -> dict[str, int]:
        return self.mesh.metrics() if self.mesh is not None else {}

    # ------------------------------------------------------------ raft views for the API

    def raft_driver(self) -> Any:
        """The running Raft driver, or None while this node has not learned its cluster yet."""
        return self.raft.driver if self.raft is not None else None

    def raft_role(self, node: str) -> str:
        """leader, voter, learner; ``worker`` for a node of this cluster outside the Raft configuration
        (it learns its assignments from the members); ``-`` before this node knows its cluster."""
        driver = self.raft_driver()
        if driver is None:
            return "-"
        role = driver.role_of(node)
        facts = driver.facts_of(node) if node != self.node_id else None
        in_cluster = node == self.node_id or (facts is not None and facts.cluster_id == driver.cluster_id)
        return "worker" if role == "-" and in_cluster else role
