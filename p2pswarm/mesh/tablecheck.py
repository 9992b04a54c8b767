"""Checking the table a data plane receives (pure: no I/O).

The node builds the table (:mod:`p2pswarm.mesh.table`); the data plane checks it field by field
before using it (:func:`parse_table`), so a bad table is reported and the previous one stays in
force instead of crashing the data plane. :func:`parse_addr` and :func:`canonical_host` are shared
with the UDP data plane (:mod:`p2pswarm.mesh.udp`) and the relay header
(:mod:`p2pswarm.mesh.relayproto`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

from p2pswarm.mesh.routes import DEFAULT_LIMITS, Backend
from p2pswarm.transport import addr as transport_addr


class TableError(ValueError):
    """A table the data plane cannot use (the previous table stays in force)."""


@dataclass(frozen=True)
class Limits:
    max_conns: int = 4096
    connect_timeout: float = 1.0
    retries: int = 2
    idle_timeout: float = 300.0
    drain_grace: float = 10.0


@dataclass(frozen=True)
class PortSpec:
    port: int
    service: str
    proxy_protocol: bool
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class Table:
    version: int
    host: str
    relay_port: int
    relay_allow: frozenset[tuple[str, int]]
    blocked_hosts: frozenset[str]
    ports: tuple[PortSpec, ...]
    limits: Limits = field(default_factory=Limits)
    tls: Any = None
    """The raw ``tls`` section (contexts are made in :meth:`Mesh.apply`, reusing unchanged ones)."""
    tls_next: Mapping[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    """Backend address -> the TLS relay of its node, for relayed encrypted connections."""
    relay_from: frozenset[str] = frozenset()
    """The other members' hosts (canonical): the only sources the plaintext relay listener admits."""


def canonical_host(host: str) -> str:
    """An IP address as the socket layer writes it (``0:0::1`` → ``::1``), to compare senders."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def parse_addr(value: Any, what: str) -> tuple[str, int]:
    """``"h:p"`` (``"[v6]:p"`` too) → ``(h, p)`` by the transport's parser; TableError names ``what`` otherwise."""
    addr = transport_addr.parse_addr(value)
    if addr is None:
        raise TableError(f"{what}: expected 'host:port', got {value!r:.60}")
    return addr


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TableError(f"{what}: expected an integer in {lo}..{hi}, got {value!r:.60}")
    return value


def _num(value: Any, what: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise TableError(f"{what}: expected a number in {lo}..{hi}, got {value!r:.60}")
    return float(value)


def _str(value: Any, what: str, max_len: int = 256) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise TableError(f"{what}: expected a string of at most {max_len} characters, got {value!r:.60}")
    return value


def _list(value: Any, what: str, max_len: int = 100_000) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or len(value) > max_len:
        raise TableError(f"{what}: expected a list, got {type(value).__name__}")
    return list(value)


def parse_table(t: Any) -> Table:
    """Check a table map field by field (the node is trusted, but a bad table must not
    crash the data plane: the previous table stays in force and the error is reported)."""
    if not isinstance(t, Mapping):
        raise TableError(f"table: expected a map, got {type(t).__name__}")
    version = _int(t.get("version", 0), "table.version", 0, 2**63 - 1)
    host = _str(t.get("host", "127.0.0.1"), "table.host", 100)
    relay_port = _int(t.get("relay_port", 0) or 0, "table.relay_port", 0, 65535)
    allow = frozenset(parse_addr(a, f"table.relay_allow[{i}]")
                      for i, a in enumerate(_list(t.get("relay_allow"), "table.relay_allow")))
    blocked = frozenset(_str(h, f"table.blocked_hosts[{i}]", 100)
                        for i, h in enumerate(_list(t.get("blocked_hosts"), "table.blocked_hosts")))
    relay_from = frozenset(canonical_host(_str(h, f"table.relay_from[{i}]", 100))
                           for i, h in enumerate(_list(t.get("relay_from"), "table.relay_from")))
    raw_limits = t.get("limits") or {}
    if not isinstance(raw_limits, Mapping):
        raise TableError("table.limits: expected a map")
    lim = {**DEFAULT_LIMITS, **{k: v for k, v in raw_limits.items() if k in DEFAULT_LIMITS}}
    limits = Limits(max_conns=_int(lim["max_conns"], "limits.max_conns", 1, 10_000_000),
                    connect_timeout=_num(lim["connect_timeout"], "limits.connect_timeout", 0.001, 600),
                    retries=_int(lim["retries"], "limits.retries", 0, 100),
                    idle_timeout=_num(lim["idle_timeout"], "limits.idle_timeout", 0.01, 10**7),
                    drain_grace=_num(lim["drain_grace"], "limits.drain_grace", 0, 10**6))
    ports: list[PortSpec] = []
    seen: set[int] = set()
    for i, p in enumerate(_list(t.get("ports"), "table.ports", 65535)):
        where = f"table.ports[{i}]"
        if not isinstance(p, Mapping):
            raise TableError(f"{where}: expected a map")
        number = _int(p.get("port"), f"{where}.port", 1, 65535)
        if number in seen:
            raise TableError(f"{where}.port: {number} appears twice")
        seen.add(number)
        backends = []
        for j, b in enumerate(_list(p.get("backends"), f"{where}.backends")):
            bw = f"{where}.backends[{j}]"
            if not isinstance(b, Mapping):
                raise TableError(f"{bw}: expected a map")
            rtt = b.get("rtt")
            via = b.get("via")
            backend = Backend(task=_str(b.get("task"), f"{bw}.task"), node=_str(b.get("node", ""), f"{bw}.node"),
                              addr=parse_addr(b.get("addr"), f"{bw}.addr"), local=bool(b.get("local", False)),
                              rtt=None if rtt is None else _num(rtt, f"{bw}.rtt", 0, 3600),
                              via=None if via is None else parse_addr(via, f"{bw}.via"),
                              tls=bool(b.get("tls", False)))
            if backend.via is None and backend.addr[0] in blocked:
                continue  # cut link and no relay: unreachable from here
            if backend.via is not None and backend.via[0] in blocked:
                continue
            backends.append(backend)
        ports.append(PortSpec(number, _str(p.get("service", ""), f"{where}.service"),
                              bool(p.get("proxy_protocol", False)), tuple(backends)))
    raw_next = t.get("tls_next") or {}
    if not isinstance(raw_next, Mapping):
        raise TableError("table.tls_next: expected a map")
    tls_next = {parse_addr(k, "table.tls_next key"): parse_addr(v, f"table.tls_next[{k}]") for k, v in raw_next.items()}
    return Table(version, host, relay_port, allow, blocked, tuple(ports), limits, t.get("tls"), tls_next,
                 relay_from)
