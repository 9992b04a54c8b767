"""Wire format: message dataclasses, msgpack encoding and strict validation.

Every message on the wire is one msgpack array ``[version, kind, field...]``.
Decoding never trusts the peer: the array is checked field by field against the
message's schema (types, string and byte lengths, element counts, integer ranges)
and anything that does not fit raises :class:`WireError`, the only exception a
caller of :func:`decode` ever has to handle.  Peers cannot crash a node.

Schemas are declared next to the dataclass as ``SCHEMA`` (field name, checker)
pairs in field order; :func:`message` registers a class under its kind number
and verifies that schema and dataclass agree, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar

import msgpack

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest encoded message accepted (full-state push/pull of a large cluster)."""

MAX_ID_LEN = 64
MAX_ADDR_LEN = 255
MAX_NAME_LEN = 128
MAX_LABELS = 64
MAX_LABEL_LEN = 256
MAX_UPDATES = 512
MAX_MEMBERS = 20_000
MAX_RECORD_BYTES = 64 * 1024


class WireError(ValueError):
    """A message from the wire is malformed, oversized or of an unknown version."""


Checker = Callable[[Any], Any]


# ---------------------------------------------------------------- checkers

def uint(bits: int = 64) -> Checker:
    limit = 1 << bits

    def check(value: Any) -> int:
        if type(value) is not int or not 0 <= value < limit:
            raise WireError(f"expected an unsigned {bits}-bit integer, got {value!r:.40}")
        return value
    return check


def boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise WireError(f"expected a boolean, got {value!r:.40}")
    return value


def number(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise WireError(f"expected a finite number, got {value!r:.40}")
    return float(value)


def text(max_len: int, min_len: int = 0) -> Checker:
    def check(value: Any) -> str:
        if type(value) is not str or not min_len <= len(value) <= max_len:
            raise WireError(f"expected a string of {min_len}..{max_len} characters, got {value!r:.40}")
        return value
    return check


def blob(max_len: int) -> Checker:
    def check(value: Any) -> bytes:
        if type(value) is not bytes or len(value) > max_len:
            raise WireError(f"expected at most {max_len} bytes, got {type(value).__name__}")
        return value
    return check


def seq(item: Checker, max_items: int) -> Checker:
    def check(value: Any) -> tuple:
        if type(value) is not tuple or len(value) > max_items:
            raise WireError(f"expected a list of at most {max_items} items")
        return tuple(item(v) for v in value)
    return check


def pairs(key: Checker, val: Checker, max_items: int) -> Checker:
    """A mapping sent as a list of [key, value] pairs, kept sorted and unique."""
    def check(value: Any) -> tuple:
        if type(value) is not tuple or len(value) > max_items:
            raise WireError(f"expected a list of at most {max_items} pairs")
        out = []
        for entry in value:
            if type(entry) is not tuple or len(entry) != 2:
                raise WireError("expected a [key, value] pair")
            out.append((key(entry[0]), val(entry[1])))
        keys = [k for k, _ in out]
        if len(set(keys)) != len(keys):
            raise WireError("duplicate key in pairs")
        return tuple(sorted(out))
    return check


def one_of(*choices: str) -> Checker:
    allowed = frozenset(choices)

    def check(value: Any) -> str:
        if type(value) is not str or value not in allowed:
            raise WireError(f"expected one of {sorted(allowed)}, got {value!r:.40}")
        return value
    return check


def nested(cls: type) -> Checker:
    def check(value: Any) -> Any:
        return _from_fields(cls, value)
    return check


def any_message(*classes: type) -> Checker:
    """A tagged union: ``[kind, field...]`` restricted to the given classes."""
    by_kind = {c.KIND: c for c in classes}

    def check(value: Any) -> Any:
        if type(value) is not tuple or not value or type(value[0]) is not int or value[0] not in by_kind:
            raise WireError("unknown or missing item kind")
        return _from_fields(by_kind[value[0]], value[1:])
    return check


NODE_ID = text(MAX_ID_LEN, 1)
ADDR = text(MAX_ADDR_LEN, 3)
LABELS = pairs(text(MAX_LABEL_LEN, 1), text(MAX_LABEL_LEN), MAX_LABELS)


# ---------------------------------------------------------------- registry

_REGISTRY: dict[int, type] = {}


def _check_schema(cls: type) -> None:
    names = tuple(f.name for f in dataclasses.fields(cls))
    schema_names = tuple(name for name, _ in cls.SCHEMA)
    if names != schema_names:
        raise TypeError(f"{cls.__name__}: schema {schema_names} does not match fields {names}")


def message(kind: int) -> Callable[[type], type]:
    """Register a frozen dataclass as top-level wire message ``kind``."""
    def register(cls: type) -> type:
        _check_schema(cls)
        if kind in _REGISTRY:
            raise TypeError(f"wire kind {kind} registered twice")
        cls.KIND = kind
        _REGISTRY[kind] = cls
        return cls
    return register


def item(kind: int) -> Callable[[type], type]:
    """Declare a nested, tagged item (e.g. one piece of gossip news) of ``kind``."""
    def declare(cls: type) -> type:
        _check_schema(cls)
        cls.KIND = kind
        cls.TAGGED = True
        return cls
    return declare


def struct(cls: type) -> type:
    """Declare a nested, untagged structure."""
    _check_schema(cls)
    return cls


def _from_fields(cls: type, values: Any) -> Any:
    if type(values) is not tuple or len(values) != len(cls.SCHEMA):
        raise WireError(f"{cls.__name__}: expected {len(cls.SCHEMA)} fields")
    return cls(*(check(v) for (_, check), v in zip(cls.SCHEMA, values)))


def _to_plain(value: Any) -> Any:
    if isinstance(value, WireStruct):
        if value.TAGGED:
            return [value.KIND, *(_to_plain(getattr(value, n)) for n, _ in value.SCHEMA)]
        return [_to_plain(getattr(value, n)) for n, _ in value.SCHEMA]
    if type(value) is tuple:
        return [_to_plain(v) for v in value]
    return value


class WireStruct:
    """Base of every wire dataclass; ``TAGGED`` items carry their kind when nested."""

    KIND: ClassVar[int] = -1
    TAGGED: ClassVar[bool] = False
    SCHEMA: ClassVar[tuple] = ()
    __slots__ = ()


def encode(msg: WireStruct) -> bytes:
    """Encode a registered message; raises ValueError for our own misuse (a bug)."""
    if not isinstance(msg, WireStruct) or _REGISTRY.get(msg.KIND) is not type(msg):
        raise ValueError(f"{type(msg).__name__} is not a registered wire message")
    data = msgpack.packb([PROTOCOL_VERSION, msg.KIND, *(_to_plain(getattr(msg, n)) for n, _ in msg.SCHEMA)],
                         use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{type(msg).__name__} encodes to {len(data)} bytes, over the limit")
    return data


def decode(data: bytes) -> Any:
    """Decode and validate one message. Raises only :class:`WireError`."""
    if type(data) is not bytes:
        raise WireError("message is not bytes")
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        top = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True,
                              max_bin_len=MAX_MESSAGE_BYTES, max_str_len=MAX_MESSAGE_BYTES)
    except Exception as exc:  # the C decoder raises many types on hostile input
        raise WireError(f"undecodable message: {type(exc).__name__}") from None
    if type(top) is not tuple or len(top) < 2:
        raise WireError("message is not a [version, kind, ...] array")
    version, kind = top[0], top[1]
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise WireError(f"unsupported protocol version {version!r:.20}")
    cls = _REGISTRY.get(kind) if type(kind) is int else None
    if cls is None:
        raise WireError(f"unknown message kind {kind!r:.20}")
    return _from_fields(cls, top[2:])


def encoded_size(msg: WireStruct) -> int:
    """Bytes that ``encode(msg)`` produces (used to budget piggybacked news)."""
    return len(msgpack.packb(_to_plain(msg), use_bin_type=True))
