"""PROXY protocol version 2: the binary header that tells a backend who the real client is.

Spec: HAProxy's ``proxy-protocol.txt`` (section 2.2). The header is a 12-byte signature,
a version/command byte, a family/transport byte, a 2-byte big-endian length, then the
addresses (IPv4: 4+4+2+2 bytes, IPv6: 16+16+2+2) and optional TLVs, which :func:`parse`
skips. :func:`encode` writes what the mesh sends toward a backend when a port is published
with ``proxy-protocol``; :func:`parse` checks what a relay receives (never trust the wire)
and is what a backend would run.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER_LEN = 16
"""Signature, version/command, family/transport and the 2-byte length."""
MAX_LEN = HEADER_LEN + 512
"""Largest header :func:`parse` accepts (addresses plus TLVs); the spec bounds TLVs only by
the 16-bit length, a relay has no reason to carry more than this."""

CMD_LOCAL = 0x20
CMD_PROXY = 0x21
_AF_INET, _AF_INET6 = 0x10, 0x20
_STREAM, _DGRAM = 0x01, 0x02


class ProxyProtocolError(ValueError):
    """A malformed or unsupported PROXY v2 header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    local: bool
    """``LOCAL`` command: the connection was made by the proxy itself (health check)."""
    src: tuple[str, int] | None
    dst: tuple[str, int] | None
    udp: bool = False


def encode(src: tuple[str, int], dst: tuple[str, int], *, udp: bool = False) -> bytes:
    """The header for a connection from ``src`` to ``dst`` (mixed families become IPv6)."""
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    transport = _DGRAM if udp else _STREAM
    if s.version == 4 and d.version == 4:
        body = s.packed + d.packed + struct.pack(">HH", src[1], dst[1])
        fam = _AF_INET | transport
    else:
        s6 = s if s.version == 6 else ipaddress.IPv6Address("::ffff:" + str(s))
        d6 = d if d.version == 6 else ipaddress.IPv6Address("::ffff:" + str(d))
        body = s6.packed + d6.packed + struct.pack(">HH", src[1], dst[1])
        fam = _AF_INET6 | transport
    return SIGNATURE + bytes((CMD_PROXY, fam)) + struct.pack(">H", len(body)) + body


def encode_local() -> bytes:
    """A ``LOCAL`` header (no addresses): for connections the mesh makes on its own behalf."""
    return SIGNATURE + bytes((CMD_LOCAL, 0)) + b"\x00\x00"


def header_length(buf: bytes | bytearray | memoryview) -> int | None:
    """Total length of the header at the start of ``buf``, or None while fewer than 16 bytes.

    Raises ProxyProtocolError when the bytes cannot start a v2 header or it is too long."""
    if len(buf) < HEADER_LEN:
        if bytes(buf[:12]) != SIGNATURE[:min(12, len(buf))]:
            raise ProxyProtocolError("not a PROXY v2 header: bad signature")
        return None
    if bytes(buf[:12]) != SIGNATURE:
        raise ProxyProtocolError("not a PROXY v2 header: bad signature")
    total = HEADER_LEN + struct.unpack_from(">H", buf, 14)[0]
    if total > MAX_LEN:
        raise ProxyProtocolError(f"PROXY v2 header too long: {total} bytes > {MAX_LEN}")
    return total


def parse(buf: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """``(header, bytes consumed)``, or None when ``buf`` holds only part of a header."""
    total = header_length(buf)
    if total is None or len(buf) < total:
        return None
    ver_cmd, fam = buf[12], buf[13]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY header version {ver_cmd >> 4} is not 2")
    body = bytes(buf[HEADER_LEN:total])
    if ver_cmd == CMD_LOCAL:
        return ProxyHeader(True, None, None), total
    if ver_cmd != CMD_PROXY:
        raise ProxyProtocolError(f"unknown PROXY v2 command {ver_cmd & 0x0F}")
    family, transport = fam & 0xF0, fam & 0x0F
    if transport not in (_STREAM, _DGRAM):
        raise ProxyProtocolError(f"unsupported PROXY v2 transport {transport}")
    if family == _AF_INET:
        if len(body) < 12:
            raise ProxyProtocolError("PROXY v2 IPv4 addresses truncated")
        sa, da = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sp, dp = struct.unpack_from(">HH", body, 8)
    elif family == _AF_INET6:
        if len(body) < 36:
            raise ProxyProtocolError("PROXY v2 IPv6 addresses truncated")
        sa, da = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sp, dp = struct.unpack_from(">HH", body, 32)
    else:
        raise ProxyProtocolError(f"unsupported PROXY v2 address family {family >> 4}")
    return ProxyHeader(False, (str(sa), sp), (str(da), dp), transport == _DGRAM), total
