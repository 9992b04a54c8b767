"""The raft record section carries a member's applied index, and still reads without it."""

from __future__ import annotations

import msgpack
import pytest

from p2pswarm.node.record import RaftFacts, decode_record, encode_record


def test_a_member_gossips_its_applied_index_and_an_older_section_still_reads():
    member = decode_record(encode_record([RaftFacts("c1", "learner", 3, 42)])).raft
    assert member == RaftFacts("c1", "learner", 3, 42)
    older = decode_record(msgpack.packb({"raft": ["c1", "V", 3]})).raft
    assert older == RaftFacts("c1", "voter", 3, 0)
    assert RaftFacts("c1", "-", 3).to_wire() == ["c1", "", 3]  # a non-member's section is unchanged


@pytest.mark.parametrize("section", [["c1", "V", 3, -1], ["c1", "V", 3, "9"], ["c1", "V", 3, 4, 5]])
def test_a_bad_applied_index_is_a_malformed_section(section):
    with pytest.raises(ValueError):
        decode_record(msgpack.packb({"raft": section}))
