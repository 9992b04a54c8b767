"""The wire codec never trusts a peer: SWIM messages round-trip, and everything else is a WireError.

Rule 3 of the house: every message decodes into a frozen, slotted dataclass with
checked field types and size limits; anything else raises ``WireError`` (and only
``WireError``), so a peer can never crash a node.  Our own misuse of ``encode`` is a
bug and raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import math
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from p2pswarm import wire
from p2pswarm.membership.messages import (
    SWIM_MESSAGES,
    Ack,
    Alive,
    Dead,
    Gossip,
    MemberState,
    Meta,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Record,
    Suspect,
)
from p2pswarm.testing import hostile
from p2pswarm.testing.msgtree import paths, replaced
from p2pswarm.wire import WireError, decode, encode

META = Meta(name="node-a", labels=(("rack", "r1"), ("zone", "eu-1")),
            capacity=(("cpu", 4.0), ("mem_mb", 8192.0)), version="0.1.0", started_ms=1_700_000_000_000)
NEWS = (
    Alive("a", 3, "10.0.0.1:7946", META),
    Suspect("b", 0, "a"),
    Dead("c", 7, "a", False),
    Dead("d", 2, "d", True),
    Record("a", 12, b"\x00\x01task-digest\xff"),
)

SAMPLES = [
    Ping(1, "a", "10.0.0.1:7946", "b"),
    Ping(0xFFFF_FFFF, "a", "10.0.0.1:7946", "b", NEWS),
    Ack(42, "b"),
    Ack(42, "b", NEWS[:2]),
    PingReq(7, "a", "10.0.0.1:7946", "c", "10.0.0.3:7946", NEWS[2:]),
    Nack(7, "d"),
    Gossip("a", "10.0.0.1:7946", NEWS),
    Gossip("a", "10.0.0.1:7946", ()),
    PushPull("a", "10.0.0.1:7946", True, False,
             (MemberState("a", "10.0.0.1:7946", 3, "alive", META),
              MemberState("b", "10.0.0.2:7946", 0, "suspect", Meta("b")),
              MemberState("c", "10.0.0.3:7946", 7, "dead", Meta("c")),
              MemberState("d", "10.0.0.4:7946", 2, "left", Meta("d"))),
             (Record("a", 12, b"digest"), Record("b", 1, b""))),
    PushPull("b", "10.0.0.2:7946", False, True, (), ()),
]


def plain(msg) -> list:
    """The msgpack structure of a valid message, as mutable nested lists."""
    return msgpack.unpackb(encode(msg), raw=False, use_list=True)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def rejects(obj) -> None:
    data = obj if type(obj) is bytes else pack(obj)
    with pytest.raises(WireError):
        decode(data)


# ------------------------------------------------------------------ round trips

def test_every_swim_message_kind_is_sampled():
    assert {type(m) for m in SAMPLES} == set(SWIM_MESSAGES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    data = encode(msg)
    back = decode(data)
    assert back == msg
    assert type(back) is type(msg)
    assert encode(back) == data
    assert wire.encoded_size(msg) <= len(data)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_decoded_messages_are_frozen_and_slotted(msg):
    back = decode(encode(msg))
    assert not hasattr(back, "__dict__")
    field = dataclasses.fields(back)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(back, field, getattr(back, field))


def test_nested_items_decode_to_their_classes():
    back = decode(encode(SAMPLES[1]))
    assert [type(n) for n in back.news] == [Alive, Suspect, Dead, Dead, Record]
    assert type(back.news[0].meta) is Meta
    pp = decode(encode(SAMPLES[8]))
    assert all(type(m) is MemberState for m in pp.members)
    assert [m.status for m in pp.members] == ["alive", "suspect", "dead", "left"]


def test_label_pairs_come_back_sorted_and_numbers_as_floats():
    meta = Meta("x", labels=(("zone", "b"), ("arch", "arm")), capacity=(("cpu", 2),))
    back = decode(encode(Ping(1, "a", "h:1", "b", (Alive("a", 0, "h:1", meta),)))).news[0].meta
    assert back.labels == (("arch", "arm"), ("zone", "b"))
    assert back.capacity == (("cpu", 2.0),) and type(back.capacity[0][1]) is float


def test_limits_are_inclusive():
    longest = "n" * wire.MAX_ID_LEN
    msg = Gossip(longest, "h" * wire.MAX_ADDR_LEN,
                 (Record(longest, 2**64 - 1, b"x" * wire.MAX_RECORD_BYTES),)
                 + tuple(Suspect(longest, 2**32 - 1, longest) for _ in range(wire.MAX_UPDATES - 1)))
    assert decode(encode(msg)) == msg


# ------------------------------------------------------------------ rejections

def with_field(msg, index, value) -> list:
    """``msg``'s plain form with top-level field ``index`` (0 = first dataclass field) replaced."""
    out = plain(msg)
    out[2 + index] = value
    return out


PING = SAMPLES[1]
PUSHPULL = SAMPLES[8]


@pytest.mark.parametrize("version", [0, 2, 255, -1, "1", 1.0, True, None, [1]])
def test_wrong_version(version):
    out = plain(SAMPLES[0])
    out[0] = version
    rejects(out)


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4, 9, 99, 2**40, -10, "10", 10.0, True, None, [10]])
def test_unknown_kind(kind):
    # 1..4 are news items: valid nested, never valid at the top level.
    out = plain(SAMPLES[0])
    out[1] = kind
    rejects(out)


@pytest.mark.parametrize("top", [None, 1, "ping", b"\x01", [], [1], {"v": 1, "k": 10}, [[1, 10]]])
def test_not_a_message_array(top):
    rejects(top)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_wrong_field_count(msg):
    out = plain(msg)
    rejects(out[:-1])
    rejects(out + [0])
    rejects(out + [out[-1]])


@pytest.mark.parametrize("field,value", [
    (0, "1"), (0, -1), (0, 2**32), (0, 1.5), (0, None), (0, [1]),   # seq
    (1, 7), (1, b"a"), (1, None), (1, ["a"]),                         # source
    (2, 7946), (2, b"10.0.0.1:7946"),                                 # source_addr
    (3, {"b": 1}),                                                    # target
    (4, "news"), (4, b""), (4, 0), (4, {}),                          # news
], ids=str)
def test_wrong_field_types(field, value):
    rejects(with_field(PING, field, value))


@pytest.mark.parametrize("field,value", [
    (0, True), (0, False),                       # Ping.seq: bool is not an int
])
def test_bool_is_not_an_int(field, value):
    rejects(with_field(PING, field, value))


def test_bool_vs_int_in_nested_fields():
    out = plain(PING)
    out[6][0][1] = True                  # Alive.incarnation
    rejects(out)
    out = plain(PING)
    out[6][0][4][4] = False              # Meta.started_ms
    rejects(out)
    out = plain(PING)
    out[6][2][3] = 0                     # Dead.left: an int is not a bool
    rejects(out)
    out = plain(PING)
    out[6][0][4][2] = [["cpu", True]]    # capacity: a bool is not a number
    rejects(out)
    rejects(with_field(PUSHPULL, 2, 1))  # PushPull.join
    rejects(with_field(PUSHPULL, 3, 0))  # PushPull.reply


@pytest.mark.parametrize("value", [
    "",                                   # node ids are never empty
    "n" * (wire.MAX_ID_LEN + 1),
    "n" * 10_000,
])
def test_oversize_or_empty_node_id(value):
    rejects(with_field(PING, 1, value))
    rejects(with_field(PING, 3, value))


def test_oversize_strings():
    rejects(with_field(PING, 2, "h" * (wire.MAX_ADDR_LEN + 1)))
    rejects(with_field(PING, 2, "h:"))  # addresses have at least 3 characters
    meta = plain(PING)[6][0][4]
    for index, value in [(0, "m" * (wire.MAX_NAME_LEN + 1)), (3, "v" * 65),
                         (1, [["k" * (wire.MAX_LABEL_LEN + 1), "v"]]),
                         (1, [["k", "v" * (wire.MAX_LABEL_LEN + 1)]]),
                         (1, [["", "v"]])]:
        out = plain(PING)
        bad = list(meta)
        bad[index] = value
        out[6][0][4] = bad
        rejects(out)


def test_oversize_bytes():
    out = plain(PING)
    out[6][4][2] = b"x" * (wire.MAX_RECORD_BYTES + 1)
    rejects(out)


def test_oversize_lists():
    suspect = plain(PING)[6][1]
    rejects(with_field(PING, 4, [suspect] * (wire.MAX_UPDATES + 1)))
    out = plain(PING)
    out[6][0][4][1] = [[f"k{i:03d}", "v"] for i in range(wire.MAX_LABELS + 1)]
    rejects(out)


def test_oversize_message():
    rejects(b"\x91" + b"\xc0" * wire.MAX_MESSAGE_BYTES)
    big = pack([1, 14, "a", "h:1", [[4, "a", 1, b"x" * 60_000]] * 80])
    assert len(big) > wire.MAX_MESSAGE_BYTES
    rejects(big)


def test_non_utf8_strings():
    good = pack(with_field(PING, 1, "zz"))
    bad = good.replace(b"\xa2zz", b"\xa2\xff\xfe", 1)
    assert bad != good
    rejects(bad)
    overlong = good.replace(b"\xa2zz", b"\xa2\xc0\xaf", 1)   # overlong encoding of "/"
    rejects(overlong)
    surrogate = pack(with_field(PING, 1, "zzz")).replace(b"\xa3zzz", b"\xa3\xed\xa0\x80", 1)
    rejects(surrogate)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers(value):
    out = plain(PING)
    out[6][0][4][2] = [["cpu", value]]
    rejects(out)


def test_duplicate_label_keys():
    out = plain(PING)
    out[6][0][4][1] = [["zone", "a"], ["zone", "b"]]
    rejects(out)
    out = plain(PING)
    out[6][0][4][2] = [["cpu", 1.0], ["cpu", 1.0]]
    rejects(out)


@pytest.mark.parametrize("garbage", [
    [0, "a", 1, "h:1", []],            # news item of kind 0
    [10, 1, "a", "h:1", "b", []],      # a whole message where an item belongs
    [2, "b", 0],                        # Suspect with a field missing
    [2, "b", 0, "a", "x"],              # Suspect with a field too many
    [1, "a", 0, "h:1", 5],              # Alive whose meta is a number
    [1, "a", 0, "h:1", ["m"]],          # Alive whose meta has too few fields
    [1, "a", 0, "h:1", ["m", [["k"]], [], "", 0]],            # a label that is not a pair
    [1, "a", 0, "h:1", ["m", [["k", "v", "w"]], [], "", 0]],  # a label with three parts
    [1, "a", 0, "h:1", ["m", ["kv"], [], "", 0]],             # a label that is a string
    [4, "a", 1, "payload"],             # a record whose payload is text
    [],                                 # an empty item
    "suspect",
    None,
    msgpack.ExtType(1, b"\x01"),
])
def test_nested_garbage_in_news(garbage):
    rejects(with_field(PING, 4, [garbage]))


@pytest.mark.parametrize("garbage", [
    ["a", "h:1", 0, "zombie", ["a", [], [], "", 0]],   # unknown status
    ["a", "h:1", 0, "ALIVE", ["a", [], [], "", 0]],
    ["a", "h:1", 0, 1, ["a", [], [], "", 0]],
    ["a", "h:1", 0, b"alive", ["a", [], [], "", 0]],
    ["a", "h:1", 0, "alive"],
    ["a", "h:1", -1, "alive", ["a", [], [], "", 0]],
    [1, "a", 0, "h:1", ["a", [], [], "", 0]],          # a news item is not a member state
])
def test_nested_garbage_in_push_pull(garbage):
    rejects(with_field(PUSHPULL, 4, [garbage]))


def test_push_pull_records_must_be_records():
    rejects(with_field(PUSHPULL, 5, [[2, "b", 0, "a"]]))  # a Suspect where only Records belong
    rejects(with_field(PUSHPULL, 5, [["a", 1, b""]]))     # an untagged record


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x93\x01\x0a", b"\xdc\xff\xff", b"\x91" * 100_000 + b"\xc0",
    pack([1, 13, 1, "a"]) + b"\x00",                      # trailing bytes after a valid Nack
    pack([1, 13, 1, "a"])[:-1],                            # truncated
    b"\x82\x01\x02\x03\x04",                                # a map with integer keys
    b"\xd4\xff\x00",                                        # a timestamp extension
])
def test_undecodable_bytes(data):
    rejects(data)


@pytest.mark.parametrize("data", [bytearray(pack([1, 13, 1, "a"])), memoryview(pack([1, 13, 1, "a"])),
                                  "\x94\x01\x0d\x01\xa1a", None])
def test_only_bytes_are_decoded(data):
    with pytest.raises(WireError):
        decode(data)


def test_valid_nack_still_decodes():
    # the control for the cases above
    assert decode(pack([1, 13, 1, "a"])) == Nack(1, "a")


# A msgpack map decodes to a dict, which is unhashable: checkers must check the type before
# looking a peer's value up in a set or dict (regressions: these once raised TypeError).

def test_map_in_status_field_is_a_wire_error():
    out = plain(PUSHPULL)
    out[6][0][3] = {"alive": 1}
    rejects(out)


def test_map_as_news_item_kind_is_a_wire_error():
    rejects(with_field(PING, 4, [[{"k": 1}, "a", 0, "a"]]))


# Found by test_mutated_encodings_only_raise_wire_error: one bit flip (0x01 -> 0x80) turns the
# kind of the first news item of an Ack into an empty map.
FLIPPED_ACK = encode(SAMPLES[3]).replace(b"\x92\x95\x01", b"\x92\x95\x80", 1)


def test_flipped_ack_is_the_documented_example():
    tree = msgpack.unpackb(FLIPPED_ACK, raw=False)
    assert tree[:3] == [1, Ack.KIND, 42] and tree[4][0][0] == {}


def test_one_flipped_bit_is_a_wire_error():
    rejects(FLIPPED_ACK)


def test_list_containing_a_map_in_status_field_is_a_wire_error():
    out = plain(PUSHPULL)
    out[6][0][3] = [{"k": 1}]
    rejects(out)


# ------------------------------------------------------------------ encode misuse

@dataclasses.dataclass(frozen=True, slots=True)
class Unregistered(wire.WireStruct):
    x: int
    SCHEMA = (("x", wire.uint()),)


class FakePing(wire.WireStruct):
    """Claims Ping's kind without being Ping."""

    KIND = Ping.KIND
    SCHEMA = Ping.SCHEMA
    __slots__ = ()


@pytest.mark.parametrize("obj", [Unregistered(1), META, NEWS[0], NEWS[4], PUSHPULL.members[0], FakePing()],
                         ids=lambda o: type(o).__name__)
def test_encode_of_unregistered_wire_struct_raises_value_error(obj):
    with pytest.raises(ValueError) as info:
        encode(obj)
    assert not isinstance(info.value, WireError)


@pytest.mark.parametrize("obj", [object(), {"kind": 10}, None, b"\x01"], ids=["object", "dict", "None", "bytes"])
def test_encode_of_arbitrary_object_raises_value_error(obj):
    with pytest.raises(ValueError):
        encode(obj)


def test_encode_of_oversize_message_raises_value_error():
    records = tuple(Record(f"n{i}", 1, b"x" * wire.MAX_RECORD_BYTES) for i in range(70))
    with pytest.raises(ValueError):
        encode(PushPull("a", "h:1", False, False, (), records))


# ------------------------------------------------------------------ property: only WireError

VALID = [encode(m) for m in SAMPLES]

def only_wire_error(data: bytes) -> None:
    """decode either raises WireError or returns a message that round-trips exactly."""
    try:
        msg = decode(data)
    except WireError:
        return
    assert type(msg) in wire._REGISTRY.values()
    again = encode(msg)
    assert decode(again) == msg


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(VALID)))
    how = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "overwrite", "mixed"]))
    steps = draw(st.integers(1, 4)) if how == "mixed" else 1
    for _ in range(steps):
        op = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "overwrite"])) if how == "mixed" else how
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            for _ in range(draw(st.integers(1, 3))):
                j = draw(st.integers(0, len(data) - 1))
                data[j] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[i:]
        elif op == "splice":
            other = draw(st.sampled_from(VALID))
            data[i:] = other[draw(st.integers(0, len(other) - 1)):]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[i] = draw(st.sampled_from([0x80, 0x90, 0xa0, 0xc0, 0xc2, 0xc3, 0xc4, 0xcb, 0xcc, 0xcf,
                                            0xd0, 0xd4, 0xd9, 0xdc, 0xde, 0xff, 0x00, 0x7f]))
    return bytes(data)


FUZZ = settings(max_examples=2500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STRUCTURAL_FUZZ = settings(FUZZ, max_examples=600)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_wire_error(data):
    only_wire_error(data)


# FLIPPED_ACK (found by this very test) stays as an explicit example.
@FUZZ
@given(mutated())
@example(FLIPPED_ACK)
def test_mutated_encodings_only_raise_wire_error(data):
    only_wire_error(data)


# Structural fuzz: replace nodes of a valid message's msgpack tree with any msgpack values.
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=80),
                    st.binary(max_size=80), st.sampled_from(["alive", "dead", "a", "h:1", 1, 4, 10, 14]))


VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=6)
                      | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=12)


@st.composite
def structurally_mutated(draw):
    tree = plain(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(list(paths(tree))))
        tree = replaced(tree, path, draw(VALUES))
    return pack(tree)


@STRUCTURAL_FUZZ
@given(structurally_mutated())
@example(pack(with_field(PUSHPULL, 4, [["a", "h:1", 0, {"alive": None}, ["a", [], [], "", 0]]])))
def test_structurally_mutated_messages_only_raise_wire_error(data):
    only_wire_error(data)


# ------------------------------------------------------------------ hostile containers (bounded decoding)
# Finding: one 4 MiB frame of 0x80 bytes cost 0.35 s and ~330 MB to decode, because unpackb built
# every container before the schema saw it.  Decoding is now guided by the schema: a container
# where the schema has none, or larger than the schema allows, is refused before it is built.

HOSTILE_PEAK_BYTES = 32 * 1024 * 1024
"""Generous: the decoder copies the 4 MiB frame once; building the hostile tree cost ~300 MB."""


HOSTILE_FRAMES = hostile.frames()


@pytest.mark.parametrize("name", sorted(HOSTILE_FRAMES))
def test_hostile_containers_are_refused_with_little_memory(name):
    data = HOSTILE_FRAMES[name]
    assert len(data) <= wire.MAX_MESSAGE_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(WireError):
            decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < HOSTILE_PEAK_BYTES, f"{name}: decoding took {peak / 1e6:.0f} MB"


def test_bounds_come_from_the_schema():
    assert Ping.BOUNDS.bin == wire.MAX_RECORD_BYTES  # the largest byte string a Ping can carry: a record
    assert Nack.BOUNDS.bin == 0 and Nack.BOUNDS.str == wire.UTF8_MAX_BYTES * wire.MAX_ID_LEN
    assert PushPull.BOUNDS.array >= wire.MAX_MEMBERS and Ping.BOUNDS.map == Ping.BOUNDS.ext == 0


def test_a_string_or_list_over_its_bound_is_refused_before_it_is_built():
    too_long = msgpack.packb([1, Nack.KIND, 5, "x" * (wire.UTF8_MAX_BYTES * wire.MAX_ID_LEN + 1)])
    with pytest.raises(WireError, match="undecodable"):  # refused by the unpacker, not by the checker
        decode(too_long)
    members = [["a", "10.0.0.1:7946", 1, "alive", [""] * 7]] * (wire.MAX_MEMBERS + 1)
    with pytest.raises(WireError, match=f"0..{wire.MAX_MEMBERS}"):
        decode(msgpack.packb([1, PushPull.KIND, "a", "10.0.0.1:7946", True, False, members, []]))


def test_multibyte_text_up_to_its_character_limit_still_decodes():
    msg = Ping(1, "\U0001f600" * wire.MAX_ID_LEN, "10.0.0.1:7946", "b")
    assert decode(encode(msg)) == msg


def test_trailing_bytes_after_a_message_are_refused():
    with pytest.raises(WireError, match="after its end"):
        decode(encode(Nack(1, "a")) + b"\xc0")


def test_unpack_helper_bounds_schemaless_payloads():
    bounds = wire.Bounds(array=3, map=2, str=8, bin=4)
    assert wire.unpack(msgpack.packb([1, {"a": b"xy"}, "abc"]), bounds) == (1, {"a": b"xy"}, "abc")
    for bad in ([1, 2, 3, 4], {"a": 1, "b": 2, "c": 3}, "x" * 9, b"x" * 5, msgpack.ExtType(1, b"x")):
        with pytest.raises(WireError):
            wire.unpack(msgpack.packb(bad), bounds)
    with pytest.raises(WireError, match="after its end"):
        wire.unpack(b"\x01\x02", bounds)
