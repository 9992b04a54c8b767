"""Wire format: message dataclasses, msgpack encoding and strict validation.

Every message on the wire is one msgpack array ``[version, kind, field...]``.
Decoding never trusts the peer: the array is checked field by field against the
message's schema (types, string and byte lengths, element counts, integer ranges)
and anything that does not fit raises :class:`WireError`, the only exception a
caller of :func:`decode` ever has to handle.  Peers cannot crash a node.

Schemas are declared next to the dataclass as ``SCHEMA`` (field name, checker)
pairs in field order; :func:`message` registers a class under its kind number
and verifies that schema and dataclass agree, so the two cannot drift apart.

Decoding is bounded by the schema, not by the frame: the bytes are read with a
streaming unpacker *guided by the schema* (an array header is read where the schema
has a list or a structure and checked against its bound before any element is
built; everywhere else one scalar is read with every container length bounded to 0),
and strings and byte strings are bounded by the largest the message's schema allows
(:class:`Bounds`).  A hostile frame therefore costs at most what a valid message of
its kind could: 4 MiB of empty maps or nested arrays is refused at its first byte
out of place.  Other decoders of peer bytes use :func:`unpack` with their own bounds.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

import msgpack

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest encoded message accepted (full-state push/pull of a large cluster)."""
KINDS: dict[str, range] = {
    "membership": range(1, 32),  # SWIM probes, gossip, push/pull (10-15) and news items (1-4)
    "consensus": range(32, 48),  # Raft (32-43 in use)
    "logs": range(48, 56),  # `service logs` between nodes (48-49 in use)
    "assignments": range(56, 64),  # workers outside the Raft group ask members (56-57 in use)
    "security": range(64, 80),  # the join handshake, join endpoint only (64-68 in use)
    "api": range(80, 88),  # API calls a worker forwards to a Raft member (80-81 in use)
}
"""The one table of wire kind ranges: each subsystem registers its messages (``<subsystem>/messages.py``)
inside its own range, checked by :func:`message`; 88 up are free.  Other docstrings point here."""

MAX_ID_LEN = 64
MAX_ADDR_LEN = 255
MAX_NAME_LEN = 128
MAX_LABELS = 64
MAX_LABEL_LEN = 256
MAX_UPDATES = 512
MAX_MEMBERS = 20_000
MAX_RECORD_BYTES = 64 * 1024


KIND_PEEK_BYTES = 32
"""Enough for ``[version, kind`` however encoded: an array header (5 bytes) and two integers (9 each)."""
READ_SIZE = 64 * 1024
"""Bytes a decoder copies from a frame at a time (a hostile 4 MiB frame costs this, not 4 MiB)."""
UTF8_MAX_BYTES = 4
"""Bytes one character can take in UTF-8: a text of n characters is at most 4n bytes on the wire."""


class WireError(ValueError):
    """A message from the wire is malformed, oversized or of an unknown version."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """The largest msgpack containers and strings a decoder accepts (msgpack's ``max_*_len``).

    Everything defaults to 0: a decoder allows only what its schema names.  ``str`` counts
    UTF-8 bytes, ``array`` and ``map`` count elements, as msgpack does.  A wire message's
    ``array`` is its longest list; the guided decoder checks each list against its own bound."""

    array: int = 0
    map: int = 0
    str: int = 0
    bin: int = 0
    ext: int = 0

    def __or__(self, other: "Bounds") -> "Bounds":
        return Bounds(*(max(a, b) for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def unpacker(self, data: bytes, **options: Any) -> msgpack.Unpacker:
        """A streaming unpacker over ``data`` that refuses anything larger than these bounds
        (``options``: other Unpacker options, e.g. ``use_list=True``; arrays are tuples by default).

        It reads ``data`` in pieces of READ_SIZE: a frame refused early is never copied whole."""
        return msgpack.Unpacker(io.BytesIO(data), **{"raw": False, "use_list": False, "strict_map_key": True,
                                                     **options},
                                read_size=min(READ_SIZE, max(len(data), 1)), max_buffer_size=max(len(data), 1),
                                max_array_len=self.array, max_map_len=self.map, max_str_len=self.str,
                                max_bin_len=self.bin, max_ext_len=self.ext)


SCALAR = Bounds()


Checker = Callable[[Any], Any]
Reader = Callable[[msgpack.Unpacker], Any]


def _read_scalar(u: msgpack.Unpacker) -> Any:
    return u.unpack()  # the unpacker's container bounds are 0: a list or map here is refused unbuilt


def _shaped(check: Checker, read: Reader = _read_scalar, bounds: Bounds = SCALAR) -> Checker:
    """Attach to ``check`` how the guided decoder reads its value and the bounds that value needs."""
    check.read = read  # type: ignore[attr-defined]
    check.bounds = bounds  # type: ignore[attr-defined]
    return check


def reader_of(check: Checker) -> Reader:
    """How to read a checker's value (a plain function checks a scalar)."""
    return getattr(check, "read", _read_scalar)


def bounds_of(check: Checker) -> Bounds:
    return getattr(check, "bounds", SCALAR)


def refine(base: Checker, extra: Callable[[Any], None]) -> Checker:
    """``base``'s check (and its shape and bounds), then ``extra`` on the checked value."""
    def check(value: Any) -> Any:
        out = base(value)
        extra(out)
        return out
    return _shaped(check, reader_of(base), bounds_of(base))


def _array_header(u: msgpack.Unpacker, lo: int, hi: int, what: str) -> int:
    n = u.read_array_header()
    if not lo <= n <= hi:
        raise WireError(f"expected {what} of {lo}..{hi} items, got {n}")
    return n


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
    return _shaped(check, bounds=Bounds(str=UTF8_MAX_BYTES * max_len))


def blob(max_len: int) -> Checker:
    def check(value: Any) -> bytes:
        if type(value) is not bytes or len(value) > max_len:
            raise WireError(f"expected at most {max_len} bytes, got {type(value).__name__}")
        return value
    return _shaped(check, bounds=Bounds(bin=max_len))


def seq(item: Checker, max_items: int) -> Checker:
    read_item = reader_of(item)

    def check(value: Any) -> tuple:
        if type(value) is not tuple or len(value) > max_items:
            raise WireError(f"expected a list of at most {max_items} items")
        return tuple(item(v) for v in value)

    def read(u: msgpack.Unpacker) -> tuple:
        return tuple(read_item(u) for _ in range(_array_header(u, 0, max_items, "a list")))
    return _shaped(check, read, bounds_of(item) | Bounds(array=max_items))


def pairs(key: Checker, val: Checker, max_items: int) -> Checker:
    """A mapping sent as a list of [key, value] pairs, kept sorted and unique."""
    read_key, read_val = reader_of(key), reader_of(val)

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

    def read_pair(u: msgpack.Unpacker) -> tuple:
        _array_header(u, 2, 2, "a [key, value] pair")
        return read_key(u), read_val(u)

    def read(u: msgpack.Unpacker) -> tuple:
        return tuple(read_pair(u) for _ in range(_array_header(u, 0, max_items, "a list of pairs")))
    return _shaped(check, read, bounds_of(key) | bounds_of(val) | Bounds(array=max(2, max_items)))


def one_of(*choices: str) -> Checker:
    allowed = frozenset(choices)

    def check(value: Any) -> str:
        if type(value) is not str or value not in allowed:
            raise WireError(f"expected one of {sorted(allowed)}, got {value!r:.40}")
        return value
    return _shaped(check, bounds=Bounds(str=max(len(c.encode()) for c in choices)))


def _fields_reader(cls: type[WireStruct]) -> Reader:
    """Read a structure's ``[field...]`` array."""
    readers = tuple(reader_of(check) for _, check in cls.SCHEMA)
    n = len(readers)

    def read(u: msgpack.Unpacker) -> tuple:
        _array_header(u, n, n, cls.__name__)
        return tuple(r(u) for r in readers)
    return read


def schema_bounds(cls: type[WireStruct]) -> Bounds:
    """What a structure's fields can need (its own array of fields included)."""
    out = Bounds(array=len(cls.SCHEMA) + 1)
    for _, check in cls.SCHEMA:
        out = out | bounds_of(check)
    return out


def nested(cls: type[WireStruct]) -> Checker:
    def check(value: Any) -> Any:
        return _from_fields(cls, value)
    return _shaped(check, _fields_reader(cls), schema_bounds(cls))


def any_message(*classes: type[WireStruct]) -> Checker:
    """A tagged union: ``[kind, field...]`` restricted to the given classes."""
    by_kind = {c.KIND: c for c in classes}
    readers = {c.KIND: tuple(reader_of(check) for _, check in c.SCHEMA) for c in classes}
    widest = max(len(r) for r in readers.values()) + 1

    def check(value: Any) -> Any:
        if type(value) is not tuple or not value or type(value[0]) is not int or value[0] not in by_kind:
            raise WireError("unknown or missing item kind")
        return _from_fields(by_kind[value[0]], value[1:])

    def read(u: msgpack.Unpacker) -> tuple:
        n = _array_header(u, 1, widest, "a tagged item")
        kind = u.unpack()
        fields = readers.get(kind) if type(kind) is int else None
        if fields is None or n != len(fields) + 1:
            raise WireError("unknown item kind or wrong field count")
        return (kind, *(r(u) for r in fields))
    bounds = SCALAR
    for c in classes:
        bounds = bounds | schema_bounds(c)
    return _shaped(check, read, bounds)


NODE_ID = text(MAX_ID_LEN, 1)
ADDR = text(MAX_ADDR_LEN, 3)
LABELS = pairs(text(MAX_LABEL_LEN, 1), text(MAX_LABEL_LEN), MAX_LABELS)


# ---------------------------------------------------------------- registry

_REGISTRY: dict[int, type[WireStruct]] = {}
W = TypeVar("W", bound="type[WireStruct]")
"""A wire class, as the registering decorators hand it back."""


def _check_schema(cls: type[WireStruct]) -> None:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__}: a wire class must be a dataclass")
    names = tuple(f.name for f in dataclasses.fields(cls))
    schema_names = tuple(name for name, _ in cls.SCHEMA)
    if names != schema_names:
        raise TypeError(f"{cls.__name__}: schema {schema_names} does not match fields {names}")


def message(kind: int) -> Callable[[W], W]:
    """Register a frozen dataclass as top-level wire message ``kind``."""
    def register(cls: W) -> W:
        _check_schema(cls)
        if kind in _REGISTRY:
            raise TypeError(f"wire kind {kind} registered twice")
        owner = cls.__module__.split(".")[1] if cls.__module__.startswith("p2pswarm.") else ""
        if kind not in KINDS.get(owner, range(0)):
            raise TypeError(f"wire kind {kind} of {cls.__name__} is outside {owner or cls.__module__}'s range in KINDS")
        cls.KIND = kind
        cls.READERS = tuple(reader_of(check) for _, check in cls.SCHEMA)
        cls.BOUNDS = schema_bounds(cls)
        _REGISTRY[kind] = cls
        return cls
    return register


def item(kind: int) -> Callable[[W], W]:
    """Declare a nested, tagged item (e.g. one piece of gossip news) of ``kind``."""
    def declare(cls: W) -> W:
        _check_schema(cls)
        cls.KIND = kind
        cls.TAGGED = True
        return cls
    return declare


def struct(cls: W) -> W:
    """Declare a nested, untagged structure."""
    _check_schema(cls)
    return cls


def _from_fields(cls: type[WireStruct], values: Any) -> Any:
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
    READERS: ClassVar[tuple[Reader, ...]]
    BOUNDS: ClassVar[Bounds]
    """READERS and BOUNDS: set by ``message`` on registered top-level messages only."""
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


def _read_all(data: bytes, bounds: Bounds, read: Reader, what: str, **options: Any) -> Any:
    """Run ``read`` over all of ``data`` within ``bounds``; raises only :class:`WireError`."""
    try:
        u = bounds.unpacker(data, **options)
        value = read(u)
        if u.tell() != len(data):
            raise WireError(f"{what} has {len(data) - u.tell()} bytes after its end")
    except WireError:
        raise
    except Exception as exc:  # the C decoder raises many types on hostile input
        raise WireError(f"undecodable {what}: {type(exc).__name__}") from None
    return value


def _strings_only(bounds: Bounds) -> Bounds:
    """A schema's string bounds, containers at 0: a guided read takes lists only by their headers."""
    return Bounds(str=bounds.str, bin=bounds.bin)


def _message_kind(u: msgpack.Unpacker) -> type[WireStruct]:
    """Read ``[version, kind`` and return the registered class (its field count checked)."""
    n = u.read_array_header()
    version = u.unpack()
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise WireError(f"unsupported protocol version {version!r:.20}")
    kind = u.unpack()
    cls = _REGISTRY.get(kind) if type(kind) is int else None
    if cls is None:
        raise WireError(f"unknown message kind {kind!r:.20}")
    if n != len(cls.SCHEMA) + 2:
        raise WireError(f"{cls.__name__}: expected {len(cls.SCHEMA)} fields, got {n - 2}")
    return cls


def decode(data: bytes) -> Any:
    """Decode and validate one message. Raises only :class:`WireError`.

    Two passes over the first bytes: the kind is read with every bound at 0 (no string,
    byte string or container can be built), then the whole message with its kind's bounds."""
    if type(data) is not bytes:
        raise WireError("message is not bytes")
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        cls = _message_kind(SCALAR.unpacker(data[:KIND_PEEK_BYTES]))
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"message is not a [version, kind, ...] array: {type(exc).__name__}") from None

    def read(u: msgpack.Unpacker) -> tuple:
        _message_kind(u)
        return tuple(r(u) for r in cls.READERS)
    return _from_fields(cls, _read_all(data, _strings_only(cls.BOUNDS), read, "message"))


def decode_struct(cls: type[WireStruct], data: bytes, what: str) -> Any:
    """Decode an untagged structure (``[field...]``, e.g. a log entry's payload) as strictly as a message."""
    if type(data) is not bytes:
        raise WireError(f"{what} is not bytes")
    return _from_fields(cls, _read_all(data, _strings_only(schema_bounds(cls)), _fields_reader(cls), what))


def unpack(data: bytes, bounds: Bounds, what: str = "message", **options: Any) -> Any:
    """Decode one msgpack value of peer bytes within ``bounds``; raises only :class:`WireError`.

    For formats without a wire schema (a gossiped record, a log entry's payload): every
    container and string larger than ``bounds`` is refused before it is built."""
    if type(data) is not bytes:
        raise WireError(f"{what} is not bytes")
    return _read_all(data, bounds, _read_scalar, what, **options)


def encoded_size(msg: WireStruct) -> int:
    """Bytes that ``encode(msg)`` produces (used to budget piggybacked news)."""
    return len(msgpack.packb(_to_plain(msg), use_bin_type=True))
