"""The names a node answers, built from gossip and the applied cluster state (pure).

A :class:`Zone` is a snapshot: the DNS core (:mod:`p2pswarm.dns.core`) answers every question
from one zone without looking anywhere else, and the host (:mod:`p2pswarm.dns.host`) builds a new
one whenever membership, a task digest or the applied cluster state changes. Like the mesh's
route table it needs no Raft quorum: where tasks run comes from the members' gossiped task
digests (:class:`p2pswarm.node.record.TaskDigest`); the applied state only adds the services a
digest does not name (a task that publishes no port gossips no service name) and services that
have no task running (they answer with no data instead of NXDOMAIN).

What a service ``NAME`` answers:

* ``vips``: the addresses of the alive members whose mesh serves NAME's published ports (every
  member with a mesh, minus those that report a bind error on one of those ports), this node
  first. Empty when NAME publishes nothing: then ``NAME`` answers with the tasks' addresses.
* ``tasks``: each running, healthy task on an alive member, with its node's address and its
  ports by SRV name: ``port`` for its ``$PORT`` (a process task's dynamic port) and the published
  port's number (``8080``) for the task port behind each published port, with its protocol.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

MAX_TASKS_PER_SERVICE = 1024
"""Tasks one service's answers list at most (a UDP answer is truncated far earlier)."""
LABEL = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?")
"""A service name is one DNS label (:data:`p2pswarm.cluster.spec.NAME`); anything else is skipped."""


@dataclass(frozen=True, slots=True)
class MemberFacts:
    """What the zone needs of one member (the host reads it from SWIM and the member's record)."""

    node: str
    host: str
    status: str
    tasks: Mapping[str, Any] = field(default_factory=dict)
    """The member's task digest records by task id (untrusted: checked here)."""
    mesh: bool = False
    """The member gossips a mesh section: its mesh serves the published ports."""
    port_errors: frozenset[str] = frozenset()
    """Published ports (``8080``, ``5353/udp``) its mesh reports it cannot listen on."""


@dataclass(frozen=True, slots=True)
class TaskAnswer:
    task: str
    label: str
    """The task's own name under ``tasks.NAME``: its id with dots as dashes (``57-0``)."""
    node: str
    host: str
    ports: tuple[tuple[str, str, int], ...] = ()
    """``(SRV port name, protocol, port)``: ``("port", "tcp", 34567)``, ``("8080", "tcp", 34567)``."""


@dataclass(frozen=True, slots=True)
class ServiceAnswer:
    vips: tuple[str, ...] = ()
    tasks: tuple[TaskAnswer, ...] = ()


@dataclass(frozen=True)
class Zone:
    domain: str
    """Lower case, with the trailing dot: ``p2pswarm.``."""
    services: Mapping[str, ServiceAnswer] = field(default_factory=dict)
    version: int = 0

    def addresses(self, name: str) -> tuple[str, ...]:
        """What ``NAME.<domain>`` answers: the mesh's nodes, else the tasks' addresses."""
        svc = self.services.get(name)
        if svc is None:
            return ()
        return svc.vips or task_hosts(svc.tasks)


def task_hosts(tasks: Iterable[TaskAnswer]) -> tuple[str, ...]:
    """The tasks' addresses, each once (an RRset is a set), in task order."""
    return tuple(dict.fromkeys(t.host for t in tasks))


def normalize_domain(domain: str) -> str:
    """``p2pswarm`` or ``P2PSwarm.`` -> ``p2pswarm.``; raises ValueError for a name that is not a domain."""
    text = domain.strip().lower().rstrip(".")
    labels = text.split(".")
    if not text or len(text) > 200 or not all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", x)
                                              for x in labels):
        raise ValueError(f"bad DNS domain {domain!r}: use labels of letters, digits and '-', like p2pswarm or "
                         f"swarm.internal")
    return text + "."


@functools.lru_cache(maxsize=4096)
def is_ip(host: str) -> bool:
    """Remembered: every zone build asks it of every member's host."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def build(domain: str, me: str, members: Iterable[MemberFacts], *, known: Iterable[str] = (),
          service_of: Mapping[str, str] | None = None, version: int = 0) -> Zone:
    """The zone of ``domain`` (normalized) as node ``me`` sees it.

    ``known``: service names of the applied cluster state; ``service_of``: task id -> service from
    it, for tasks whose digest record names no service."""
    service_of = service_of or {}
    tasks: dict[str, list[TaskAnswer]] = {name: [] for name in known if LABEL.fullmatch(name)}
    published: dict[str, set[str]] = {}
    alive = sorted((m for m in members if m.status == "alive" and is_ip(m.host)),
                   key=lambda m: (m.node != me, m.host, m.node))
    for member in alive:
        for task_id, rec in sorted(member.tasks.items()):
            if not isinstance(rec, dict) or not isinstance(task_id, str):
                continue
            name = rec.get("n") if isinstance(rec.get("n"), str) else service_of.get(task_id)
            if not isinstance(name, str) or not LABEL.fullmatch(name):
                continue
            entries = tasks.setdefault(name, [])
            ports = _ports(rec)
            published.setdefault(name, set()).update(
                p if proto == "tcp" else f"{p}/{proto}" for p, proto, _ in ports if p != "port")
            if _serving(rec) and len(entries) < MAX_TASKS_PER_SERVICE:
                entries.append(TaskAnswer(task_id, task_id.replace(".", "-").lower(), member.node, member.host,
                                          ports))
    services = {}
    for name, entries in tasks.items():
        keys = published.get(name, set())
        vips = tuple(m.host for m in alive if keys and m.mesh and not keys & m.port_errors)
        services[name] = ServiceAnswer(tuple(dict.fromkeys(vips)), tuple(entries))
    return Zone(normalize_domain(domain), services, version)


def _serving(rec: Mapping[str, Any]) -> bool:
    return rec.get("s") == "running" and rec.get("h") in (None, "healthy")


def _ports(rec: Mapping[str, Any]) -> tuple[tuple[str, str, int], ...]:
    """``$PORT`` as ``port``, and each published port's task port under its published number."""
    out: list[tuple[str, str, int]] = []
    port = rec.get("p")
    if type(port) is int and 0 < port < 65536:
        out.append(("port", "tcp", port))
    mesh = rec.get("m")
    for item in mesh if isinstance(mesh, list) else ():
        if (isinstance(item, list) and len(item) in (3, 4) and all(type(v) is int and 0 < v < 65536 for v in item[:2])):
            proto = "udp" if len(item) == 4 and item[3] == "udp" else "tcp"
            out.append((str(item[0]), proto, item[1]))
    return tuple(out)
