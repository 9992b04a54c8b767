"""Raft wire messages round-trip and refuse anything malformed or oversized."""

import msgpack
import pytest

from p2pswarm.consensus.messages import (
    MAX_ENTRIES,
    RAFT_MESSAGES,
    AppendEntries,
    AppendResp,
    ConfChange,
    ConfState,
    Entry,
    InstallSnapshot,
    Propose,
    RequestVote,
    SnapshotResp,
    decode_conf,
    encode_conf,
)
from p2pswarm.wire import PROTOCOL_VERSION, WireError, decode, encode


def test_kinds_are_in_the_raft_range():
    assert all(32 <= cls.KIND <= 63 for cls in RAFT_MESSAGES)


@pytest.mark.parametrize("msg", [
    AppendEntries(3, "a", 4, 2, 4, (Entry(3, 5, "normal", b"x"), Entry(3, 6, "noop"))),
    AppendResp(3, "b", 6),
    AppendResp(3, "b", 9, True, 7, 2),
    RequestVote(4, "c", 10, 3, pre_vote=True),
    InstallSnapshot(3, "a", 9, 3, ConfState(("a", "b"), ("c",)), 5, 2, b"img", True),
    SnapshotResp(3, "b", 4, 9, 2),
    Propose(3, "b", (b"p1", b"p2")),
])
def test_round_trip(msg):
    assert decode(encode(msg)) == msg


def _raw(kind, *fields):
    return msgpack.packb([PROTOCOL_VERSION, kind, *fields], use_bin_type=True)


def test_rejects_entries_that_do_not_follow_prev_index():
    bad = _raw(32, 3, "a", 4, 2, 4, [[3, 7, "normal", b""]])
    with pytest.raises(WireError):
        decode(bad)


def test_rejects_gaps_and_unknown_entry_kinds():
    with pytest.raises(WireError):
        decode(_raw(32, 3, "a", 4, 2, 4, [[3, 5, "normal", b""], [3, 7, "normal", b""]]))
    with pytest.raises(WireError):
        decode(_raw(32, 3, "a", 4, 2, 4, [[3, 5, "evil", b""]]))


def test_rejects_too_many_entries():
    many = [[1, 5 + k, "noop", b""] for k in range(MAX_ENTRIES + 1)]
    with pytest.raises(WireError):
        decode(_raw(32, 1, "a", 4, 1, 0, many))


def test_rejects_negative_terms_and_wrong_types():
    with pytest.raises(WireError):
        decode(_raw(34, -1, "c", 1, 1, False, False))
    with pytest.raises(WireError):
        decode(_raw(34, 1, "c", 1, 1, "yes", False))


def test_conf_state_must_be_sorted_and_disjoint():
    with pytest.raises(WireError):
        ConfState(("b", "a"), ())
    with pytest.raises(WireError):
        ConfState(("a",), ("a",))


def test_conf_change_round_trip_and_garbage():
    change = ConfChange("add_learner", "d", ConfState(("a", "b", "c"), ("d",)))
    assert decode_conf(encode_conf(change)) == change
    for junk in (b"", b"\xc1", msgpack.packb(["add_voter", "x"]), msgpack.packb(["nope", "x", [[], []]])):
        with pytest.raises(WireError):
            decode_conf(junk)
