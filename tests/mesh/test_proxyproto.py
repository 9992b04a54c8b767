"""PROXY protocol v2 header: encode, parse, and refusal of bad input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pswarm.mesh import proxyproto
from p2pswarm.mesh.proxyproto import ProxyHeader, ProxyProtocolError, encode, parse


def test_ipv4_matches_the_spec_layout() -> None:
    h = encode(("192.0.2.1", 51000), ("198.51.100.7", 8080))
    assert h[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert h[12] == 0x21 and h[13] == 0x11  # v2 PROXY, TCP over IPv4
    assert struct.unpack(">H", h[14:16])[0] == 12 == len(h) - 16
    assert h[16:20] == bytes([192, 0, 2, 1]) and h[20:24] == bytes([198, 51, 100, 7])
    assert struct.unpack(">HH", h[24:28]) == (51000, 8080)
    assert parse(h + b"payload") == (ProxyHeader(False, ("192.0.2.1", 51000), ("198.51.100.7", 8080)), 28)


def test_ipv6_and_mixed_families() -> None:
    h = encode(("2001:db8::1", 1), ("2001:db8::2", 2))
    assert h[13] == 0x21 and len(h) == 16 + 36
    assert parse(h)[0].src == ("2001:db8::1", 1)
    mixed = parse(encode(("10.0.0.1", 5), ("::1", 6)))[0]
    assert mixed.src == ("::ffff:a00:1", 5) and mixed.dst == ("::1", 6)


def test_udp_and_local() -> None:
    assert parse(encode(("1.2.3.4", 1), ("5.6.7.8", 2), udp=True))[0].udp
    local = proxyproto.encode_local()
    assert parse(local) == (ProxyHeader(True, None, None), 16)


def test_partial_header_needs_more() -> None:
    h = encode(("1.2.3.4", 1), ("5.6.7.8", 2))
    for n in range(len(h)):
        assert parse(h[:n]) is None


def test_tlvs_are_skipped() -> None:
    h = bytearray(encode(("1.2.3.4", 1), ("5.6.7.8", 2)))
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    h[14:16] = struct.pack(">H", 12 + len(tlv))
    hdr, used = parse(bytes(h) + tlv + b"data")
    assert hdr.src == ("1.2.3.4", 1) and used == len(h) + len(tlv)


@pytest.mark.parametrize("data, msg", [
    (b"GET / HTTP/1.1\r\n\r\n", "bad signature"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad signature"),
    (proxyproto.SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), "version 3"),
    (proxyproto.SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12), "command"),
    (proxyproto.SIGNATURE + b"\x21\x31\x00\x0c" + bytes(12), "family"),
    (proxyproto.SIGNATURE + b"\x21\x13\x00\x0c" + bytes(12), "transport"),
    (proxyproto.SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "truncated"),
    (proxyproto.SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "truncated"),
    (proxyproto.SIGNATURE + b"\x21\x11\xff\xff", "too long"),
])
def test_bad_headers_are_refused(data: bytes, msg: str) -> None:
    with pytest.raises(ProxyProtocolError, match=msg):
        parse(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=80))
def test_parse_never_crashes_on_garbage(data: bytes) -> None:
    try:
        parse(data)
    except ProxyProtocolError:
        pass


@settings(max_examples=60, deadline=None)
@given(st.ip_addresses(v=4), st.integers(0, 65535), st.ip_addresses(v=4), st.integers(0, 65535))
def test_roundtrip_ipv4(sa, sp, da, dp) -> None:  # type: ignore[no-untyped-def]
    h = encode((str(sa), sp), (str(da), dp))
    assert parse(h) == (ProxyHeader(False, (str(sa), sp), (str(da), dp)), len(h))
