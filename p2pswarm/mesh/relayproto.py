"""The RELAY header (data plane ↔ data plane, TCP), version 1 (pure: no I/O).

The first node sends::

    b"P2PR" | version (1 byte, =1) | length (2 bytes, big-endian, ≤ 255) | target "h:p" (ASCII)
    | flag (1 byte: 1 if a PROXY v2 header follows, else 0) | [PROXY v2 header]

The relay answers one byte: ``0`` connected (then both sides pipe bytes), ``1`` + a reason in
ASCII then close (target not in its ``relay_allow``), ``2`` then close (connect failed or the
target's host is blocked), so the first node can try another candidate transparently.
Who may open a relay connection, and the TLS relay, are described in :mod:`p2pswarm.mesh.proxy`.
"""

from __future__ import annotations

import struct

from p2pswarm.mesh import proxyproto
from p2pswarm.mesh.tablecheck import TableError, parse_addr

RELAY_MAGIC = b"P2PR"
RELAY_VERSION = 1
RELAY_OK, RELAY_REFUSED, RELAY_FAILED = 0, 1, 2
MAX_RELAY_HEADER = 8 + 255 + proxyproto.MAX_LEN
"""magic (4) + version (1) + length (2) + target (≤ 255) + flag (1) + the longest PROXY v2 header."""


def encode_header(target: tuple[str, int], pp: bytes | None) -> bytes:
    """The header asking a relay for ``target``, followed by the PROXY v2 header ``pp`` if any."""
    name = f"{target[0]}:{target[1]}".encode()
    header = RELAY_MAGIC + bytes((RELAY_VERSION,)) + struct.pack(">H", len(name)) + name
    header += b"\x01" + pp if pp else b"\x00"
    return header


def parse_header(buf: bytearray) -> tuple[tuple[str, int], bytes | None, int] | None:
    """``(target, proxy header or None, bytes used)``, None while incomplete; ValueError if bad."""
    if bytes(buf[:4]) != RELAY_MAGIC[:min(4, len(buf))]:
        raise ValueError("bad relay magic")
    if len(buf) < 7:
        return None
    if buf[4] != RELAY_VERSION:
        raise ValueError(f"relay version {buf[4]}")
    n = struct.unpack_from(">H", buf, 5)[0]
    if not 0 < n <= 255:
        raise ValueError("relay target length")
    if len(buf) < 8 + n:
        return None
    try:
        target = parse_addr(bytes(buf[7:7 + n]).decode("ascii"), "relay target")
    except (UnicodeDecodeError, TableError) as e:
        raise ValueError(str(e)) from None
    flag = buf[7 + n]
    used = 8 + n
    if flag == 0:
        return target, None, used
    if flag != 1:
        raise ValueError("relay flag")
    total = proxyproto.header_length(memoryview(buf)[used:])
    if total is None or len(buf) < used + total:
        return None
    pp = bytes(buf[used:used + total])
    proxyproto.parse(pp)  # validate: a relay forwards only well-formed headers
    return target, pp, used + total
