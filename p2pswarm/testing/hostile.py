"""Hostile msgpack frames: containers that cost a naive decoder far more memory than their bytes.

Used by tests/test_wire.py (each refused with little memory) and the real-node check in
tests/integration/test_hostile_frames.py (a thousand of them sent to a node's gossip port).
A frame of ``size`` bytes of these builds, in ``msgpack.unpackb``, about 17-80 bytes of
Python objects per byte (an empty dict per ``0x80``, a tuple per ``0x91``).
"""

from __future__ import annotations

import msgpack

from p2pswarm.membership.messages import PushPull
from p2pswarm.wire import MAX_MEMBERS, MAX_MESSAGE_BYTES

NEST_DEPTH = 100
"""One-element arrays around each member of the ``nested arrays`` frame."""


def _u16(n: int) -> bytes:
    return b"\xdc" + n.to_bytes(2, "big")


def _repeat(head: bytes, fill: bytes, size: int) -> bytes:
    return head + fill * ((size - len(head)) // len(fill))


def frames(size: int = MAX_MESSAGE_BYTES) -> dict[str, bytes]:
    """Named hostile frames of at most ``size`` bytes (``size`` >= 4096)."""
    members = min(MAX_MEMBERS, (size - 64) // (NEST_DEPTH + 1))
    push_pull_head = b"\x98\x01" + bytes([PushPull.KIND]) + msgpack.packb(["a", "10.0.0.1:7946", True, False])[1:]
    return {
        "empty maps": _repeat(b"\xdd" + (size - 5).to_bytes(4, "big"), b"\x80", size),
        "0x80 bytes": b"\x80" * size,
        "arrays of 65535": _repeat(_u16(0xFFFF), _u16(60) + b"\x80" * 60, size),
        # a PushPull whose members are 100-deep nests of one-element arrays
        "nested arrays": push_pull_head + _u16(members) + (b"\x91" * NEST_DEPTH + b"\xc0") * members + b"\x90",
        "deep nesting": b"\x91" * size,
    }
