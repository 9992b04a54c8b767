"""Drives the routing mesh from the node: builds route tables from gossip, feeds the data plane.

The data plane (:mod:`p2pswarm.mesh.dataplane`) runs in its own process so that
forwarding traffic never delays a SWIM ack on the node's loop. This host, on the
node's loop, rebuilds the route table (:func:`p2pswarm.mesh.table.build`, pure) when
what it depends on changes — members and their status, task digests, the links this
node cannot use directly, injected faults — and at least every ``REFRESH`` seconds so
that round-trip times stay current, then pushes the whole table to the data plane.
The data plane starts with the first table that has a published port (TCP or UDP).

**Kernel path.** With a :class:`p2pswarm.mesh.kernel.KernelPath` (``up --mesh auto|kernel`` as root),
every table built from gossip is also planned for nftables: the ports the kernel can forward are
DNATed there and never reach the data plane, which serves the rest (and listens on every port).
The saved table below is not given to the kernel: it may name replicas that are gone, which only
the data plane's retries survive.

It also gossips this node's relay port and the members it cannot reach directly (the ``mesh``
section of the node's record, :mod:`p2pswarm.node.record`), which other nodes need to choose relays,
and the published ports its data plane cannot listen on (another process holds them): ``service ps``
and ``service inspect`` show them, and the node logs each one once, as a warning.

**Restarts.** The last table pushed is saved in the data dir (``mesh-table.json``, without
the TLS material). A restarted node serves it at once, before gossip has told it anything,
instead of refusing its published ports for the seconds until the first push/pull: a replica
that is gone by now refuses the connect and the data plane moves on to the next one. The saved
table stays in force until a peer's gossip arrives (or ``WARM_LIMIT`` passes), and is not used
when older than ``SAVED_MAX_AGE`` or made for another address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Protocol

from p2pswarm.mesh.kernel import KernelPath
from p2pswarm.mesh.routes import DEFAULT_LIMITS
from p2pswarm.mesh.table import Peer, Route, build
from p2pswarm.node.record import MAX_PORT_ERROR, MAX_PORT_ERRORS, GossipRecord, MeshFacts
from p2pswarm.transport.ports import RELAY_PORT_OFFSET, TLS_RELAY_OFFSET
from p2pswarm.transport.zmq import parse_addr

log = logging.getLogger("p2pswarm.mesh")

REFRESH = 5.0
"""Seconds between table rebuilds when nothing changed (RTTs drift)."""
SAVED_TABLE = "mesh-table.json"
SAVED_MAX_AGE = 600.0
"""A saved table older than this (seconds, by its file time) is not served at restart: its replicas
have probably moved."""
WARM_LIMIT = 15.0
"""Seconds at most a restarted node serves its saved table while no peer's gossip has arrived."""
CHECK_INTERVAL = 0.1
"""Seconds at least between two looks at the table's inputs (a scan of every member): the node steps the mesh
after every message it receives, dozens a second in a cluster of a hundred nodes."""
SAVE_INTERVAL = 2.0
"""Seconds at least between two saves of the table (it changes with every digest)."""


class DataPlaneLike(Protocol):
    async def start(self) -> None: ...
    def push(self, table: dict[str, Any]) -> None: ...
    def latest_status(self) -> dict[str, Any] | None: ...
    async def close(self) -> None: ...


def default_data_plane() -> DataPlaneLike:
    from p2pswarm.mesh.control import DataPlane
    return DataPlane()


def pick_relay_port(host: str, swim_port: int) -> int:
    """The SWIM port + 2 when it and the next port (the TLS relay, for encrypted ports) are free on ``host``
    (+1 is the join endpoint: consecutive ports are easy to firewall; see :mod:`p2pswarm.transport.ports`),
    else any free port; 0 (no relay: other nodes will not route through this one) when ``host`` is not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    usual = swim_port + RELAY_PORT_OFFSET
    for port in (usual if 0 < swim_port and usual + TLS_RELAY_OFFSET <= 65535 else 0, 0):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            chosen = s.getsockname()[1]
            if port and not _free(family, host, chosen + TLS_RELAY_OFFSET):
                continue
            return chosen
    log.warning("no TCP port free on %s for the mesh relay: this node will not relay", host)
    return 0


def _free(family: int, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class MeshHost:
    name = "mesh"

    def __init__(self, node_id: str, swim: Any, transport: Any, raft: Any, *,
                 relay_port: int, unreachable: Callable[[], tuple[str, ...]],
                 data_plane_factory: Callable[[], DataPlaneLike] = default_data_plane,
                 limits: dict[str, Any] | None = None, security: Any = None,
                 state_dir: str | os.PathLike[str] | None = None, record: GossipRecord,
                 kernel: KernelPath | None = None) -> None:
        """``record``: the node's gossip record (this host sets its ``mesh`` section, reads every member's).
        ``kernel``: the node's kernel path (None: user space only)."""
        self.node_id, self.swim, self.transport, self.raft = node_id, swim, transport, raft
        self.record = record
        self.relay_port = relay_port
        self.limits = dict(limits or DEFAULT_LIMITS)
        self.security = security
        """The SecurityHost (``mesh_tls_version``, ``mesh_tls_table()``) in a secure cluster: TLS material
        for encrypted ports; None in a plaintext one."""
        self._unreachable = unreachable
        self.kernel = kernel
        self._factory = data_plane_factory
        self.data_plane: DataPlaneLike | None = None
        self._starting: asyncio.Task | None = None
        self._key: Any = None
        self._built_at = float("-inf")
        self._next_check = float("-inf")
        self.version = 0
        self.table: dict[str, Any] | None = None
        self.routes: list[Route] = []
        self._saved_path = Path(state_dir) / SAVED_TABLE if state_dir is not None else None
        self._loaded = False
        self._warm_until: float | None = None
        """While set (monotonic), the saved table is in force: built tables are not pushed yet."""
        self._saved_text: str | None = None
        """The table last saved ("": one without published ports; None: none saved yet)."""
        self._next_save = 0.0
        self._port_warned: dict[str, str] = {}
        """The port errors last gossiped (each logged once, when it appeared)."""

    # ------------------------------------------------------------ the node loop calls these

    async def start(self) -> None:
        """Probe the kernel path; ``step`` starts the data plane once it has a table to push (or the saved one)."""
        if self.kernel is not None:
            await self.kernel.start()

    def step(self, now: float) -> None:
        """Rebuild and push the table if its inputs changed (cheap to call every loop turn)."""
        if not self._loaded:
            self._loaded = True
            self._serve_saved(now)
        if self._warm_until is not None and (now >= self._warm_until or self._heard_from_peers()):
            self._warm_until = None
            self._key = None  # build and push a table from gossip now
        if now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL
        unreachable = tuple(sorted(self._unreachable()))
        self.record.set(MeshFacts(self.relay_port, unreachable, self._port_errors()))
        faults = self.transport.describe() if hasattr(self.transport, "describe") else {}
        tls_version = self.security.mesh_tls_version if self.security is not None else -1
        key = (self.record.routing_inputs_of(self.swim), unreachable, repr(faults), tls_version)
        if key == self._key and now < self._built_at + REFRESH:
            return
        self._key, self._built_at = key, now
        self.version += 1
        tls = self.security.mesh_tls_table() if self.security is not None else None
        table, self.routes = build(self.node_id, self.peers(), unreachable=unreachable,
                                   blocked_hosts=self.blocked_hosts(faults), limits=self.limits,
                                   version=self.version, tls=tls is not None)
        if tls is not None:
            table["tls"] = tls
        if self._warm_until is not None:
            return  # the saved table serves until gossip arrives
        self.table = table
        if self.kernel is not None:
            self.kernel.push(table, {(r.protocol, r.port, r.addr) for r in self.routes})
        if self.data_plane is None and self._starting is None and (self.table["ports"] or self.table.get("udp")):
            self._starting = asyncio.ensure_future(self._start())
        elif self.data_plane is not None:
            self.data_plane.push(self.table)
        self._save(now)

    def _port_errors(self) -> tuple[tuple[str, str], ...]:
        """``(port key, error)`` per published port the data plane fails to bind (``8080``, ``5353/udp``)."""
        plane = self.data_plane.latest_status() if self.data_plane is not None else None
        errors = (plane or {}).get("bind_errors") or {}
        current = tuple(sorted((str(k)[:16], str(v)[:MAX_PORT_ERROR]) for k, v in errors.items()))[:MAX_PORT_ERRORS]
        for key, error in current:
            if self._port_warned.get(key) != error:
                log.warning("cannot listen on published port %s: %s (its service's ps shows it; retrying)", key, error)
        self._port_warned = dict(current)
        return current

    # ------------------------------------------------------------ the saved table

    def _serve_saved(self, now: float) -> None:
        table = self._read_saved()
        if table is None:
            return
        log.info("serving the %d published port(s) of the saved mesh table until gossip arrives",
                 len(table["ports"]) + len(table.get("udp") or ()))
        self.table, self._warm_until = table, now + WARM_LIMIT
        self._starting = asyncio.ensure_future(self._start())

    def _read_saved(self) -> dict[str, Any] | None:
        path = self._saved_path
        if path is None:
            return None
        try:
            age = time.time() - path.stat().st_mtime
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # none saved, or unreadable: start as a new node would
        own = self.swim.member(self.node_id) if hasattr(self.swim, "member") else None
        host = parse_addr(own.addr)[0] if own is not None and parse_addr(own.addr) else None
        if (not isinstance(table, dict) or not isinstance(table.get("ports"), list) or age > SAVED_MAX_AGE
                or table.get("host") != host or not (table["ports"] or table.get("udp"))):
            return None
        return {**table, "version": 0}

    def _heard_from_peers(self) -> bool:
        return any(m.node != self.node_id and m.status == "alive" and m.record for m in self.swim.members())

    def _save(self, now: float) -> None:
        if self._saved_path is None or self.table is None or now < self._next_save:
            return
        saved = {k: v for k, v in self.table.items() if k not in ("tls", "version")}
        # A table without published ports is never served at a restart (_read_saved), so any one will do: it is
        # written once, not again each time a member's status changes (its relay_from). "" stands for it.
        text = json.dumps(saved, sort_keys=True) if self.table["ports"] or self.table.get("udp") else ""
        if text == self._saved_text:
            return
        self._next_save = now + SAVE_INTERVAL
        tmp = self._saved_path.with_suffix(".tmp")
        try:
            tmp.write_text(text or json.dumps(saved, sort_keys=True))
            os.replace(tmp, self._saved_path)
            self._saved_text = text
        except OSError as exc:  # a full disk costs only this shortcut at the next restart
            log.debug("cannot save the mesh table: %s", exc)

    async def _start(self) -> None:
        plane = self._factory()
        try:
            await plane.start()
        except Exception as exc:
            log.error("cannot start the mesh data plane: %s", exc)
            self._starting = None
            return
        self.data_plane = plane
        log.info("mesh data plane started; relay on port %d", self.relay_port)
        if self.table is not None:
            plane.push(self.table)

    async def close(self) -> None:
        if self.kernel is not None:  # first: its ports fall back to the data plane while it still runs
            await self.kernel.close()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self.data_plane is not None:
            await self.data_plane.close()
            self.data_plane = None

    # ------------------------------------------------------------ inputs

    def peers(self) -> list[Peer]:
        out = []
        for m in self.swim.members():
            parsed = parse_addr(m.addr)
            if parsed is None:
                continue
            record = self.record.of(m)
            tasks = record.tasks.tasks if record.tasks is not None else {}
            relay_port, unreachable = (record.mesh.relay_port, record.mesh.unreachable) if record.mesh else (0, ())
            if m.node == self.node_id:
                relay_port, unreachable = self.relay_port, ()
            out.append(Peer(m.node, m.meta.name, parsed[0], m.status, m.rtt, relay_port,
                            frozenset(unreachable), tasks))
        return out

    def blocked_hosts(self, faults: dict[str, Any]) -> list[str]:
        """Hosts injected faults cut this node off from: the data plane must not reach them directly."""
        if faults.get("isolated"):
            me = parse_addr(self.transport.local_addr)
            return sorted({p.host for p in self.peers()} - {me[0] if me else ""})
        return sorted({parsed[0] for addr in faults.get("cut", ()) if (parsed := parse_addr(addr))})

    # ------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        plane = self.data_plane.latest_status() if self.data_plane is not None else None
        return {"running": self.data_plane is not None, "relay_port": self.relay_port,
                "table_version": self.version, "data_plane": plane or {},
                "kernel": self.kernel.status() if self.kernel is not None else {"mode": "userspace", "on": False}}

    def route_rows(self) -> list[dict[str, Any]]:
        """Every route (:class:`p2pswarm.mesh.table.Route`) with its port's ``path`` (``kernel`` or
        ``userspace``) and ``path_why`` (why user space; "" for the kernel)."""
        rows = []
        for route in self.routes:
            path, why = (self.kernel.path(route.protocol, route.port) if self.kernel is not None
                         else ("userspace", "no kernel path on this node"))
            rows.append({**asdict(route), "path": path, "path_why": why})
        return rows

    def metrics(self) -> dict[str, int]:
        plane = self.data_plane.latest_status() if self.data_plane is not None else None
        totals = (plane or {}).get("total", {})
        out = {k: int(v) for k, v in totals.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out["bind_errors"] = len((plane or {}).get("bind_errors", {}))
        udp = (plane or {}).get("udp", {}).get("total", {})
        out.update({f"udp_{k}": int(v) for k, v in udp.items()
                    if k != "sessions" and isinstance(v, int) and not isinstance(v, bool)})
        return out
