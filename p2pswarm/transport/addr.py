"""``host:port`` addresses: the one parser every layer uses (transport, join channel, mesh tables, CLI).

Pure (no sockets): the CLI and the mesh's table checker import it without the ZeroMQ transport.
"""

from __future__ import annotations

import functools
import ipaddress
import re

_PORT_RE = re.compile(r"[0-9]{1,5}")
_IPV4ISH_RE = re.compile(r"[0-9.]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAX_ADDR_LEN = 300
"""Longer strings are refused before any parsing (a DNS name is at most 253 characters)."""


PARSED_CACHE = 4096
"""Addresses whose parse is remembered: the mesh and the DNS parse every member's address on each rebuild, and
``ipaddress`` makes that most of a rebuild's cost at a hundred members."""


def parse_addr(addr: object, *, allow_port_zero: bool = False) -> tuple[str, int] | None:
    """Split ``host:port`` (IPv4, ``[IPv6]`` or a DNS name) or return None.

    Addresses come from peers' gossip, so this never raises: a malformed one
    is the caller's to count and drop.
    """
    if not isinstance(addr, str) or len(addr) > _MAX_ADDR_LEN:
        return None
    return _parse(addr, allow_port_zero)


@functools.lru_cache(maxsize=PARSED_CACHE)
def _parse(addr: str, allow_port_zero: bool) -> tuple[str, int] | None:
    host, sep, port_s = addr.rpartition(":")
    if not sep or not _PORT_RE.fullmatch(port_s):
        return None
    port = int(port_s)
    if port > 65535 or (port == 0 and not allow_port_zero):
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        return host[1:-1], port
    if _IPV4ISH_RE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return None
        return host, port
    if len(host) <= 253 and _HOSTNAME_RE.fullmatch(host):
        return host, port
    return None


def format_addr(host: str, port: int) -> str:
    """Inverse of parse_addr: IPv6 hosts get their brackets back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
