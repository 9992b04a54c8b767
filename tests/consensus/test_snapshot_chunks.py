"""Snapshots travel in acknowledged chunks: in order, resumed or restarted on a mismatch, hostile ones refused."""

import random

import msgpack
import pytest

from p2pswarm.consensus.driver import _impossible
from p2pswarm.consensus.messages import MAX_SNAPSHOT_BYTES, MAX_SNAPSHOT_CHUNK, ConfState, InstallSnapshot, SnapshotResp
from p2pswarm.consensus.raft import Raft
from p2pswarm.wire import PROTOCOL_VERSION, WireError, decode, encode

from .harness import CFG, Cluster

ABC = ["a", "b", "c"]
CHUNKED = CFG.with_changes(snapshot_chunk_bytes=64)
IMAGE = bytes(random.Random(7).randrange(256) for _ in range(1000))
CONF = ConfState(("a", "b"), ())


def chunk(offset, data, *, index=10, term=2, snap_term=2, size=10, source="a"):
    return InstallSnapshot(term, source, index, snap_term, CONF, size, offset, data, offset + len(data) == size)


def lagging_follower(keep=0):
    """Leader a has compacted all but its last ``keep`` entries into IMAGE while c was down; c is back."""
    c = Cluster(ABC, cfg=CHUNKED)
    c.elect("a")
    c.crash("c")
    for k in range(20):
        c.propose(b"v%d" % k)
    a = c.nodes["a"]
    a.compact(c.now, a.log.applied - keep, IMAGE)
    c.flush()
    c.restart("c")
    return c


def run(c, seconds, **deliver):
    """Like Cluster.advance, with a drop or rewrite hook on every delivery."""
    for _ in range(round(seconds / 0.05)):
        c.now += 0.05
        for node in c.nodes.values():
            node.tick(c.now)
        c.flush()
        c.deliver(**deliver)


def chunks_to(c, dst):
    return [m for s, d, m in c.sent if d == dst and isinstance(m, InstallSnapshot)]


def test_a_large_snapshot_arrives_in_order_in_small_chunks_and_is_installed():
    c = lagging_follower()
    c.advance(1.0)
    sent = chunks_to(c, "c")
    assert [m.offset for m in sent] == list(range(0, len(IMAGE), 64))
    assert all(len(m.data) <= 64 for m in sent) and [m.done for m in sent][-2:] == [False, True]
    assert c.restored["c"][-1].data == IMAGE and c.disks["c"].snapshot.data == IMAGE
    c.propose(b"after")
    c.advance(0.2)
    assert c.applied["c"][-1].data == b"after"  # replication continues after the snapshot's index


def test_a_lost_chunk_resumes_where_the_follower_stopped():
    c = lagging_follower()
    dropped = []

    def drop(src, dst, msg):
        if isinstance(msg, InstallSnapshot) and msg.offset == 320 and not dropped:
            dropped.append(msg)
            return True
        return False
    run(c, 3.0, drop=drop)  # the leader notices the silence after an election timeout and sends again
    assert dropped and c.restored["c"][-1].data == IMAGE
    offsets = [m.offset for m in chunks_to(c, "c")]
    resumed = offsets.index(320, offsets.index(320) + 1)
    assert offsets[resumed - 1] == 0  # restarted at 0, the follower answered "I hold 320 bytes"
    assert offsets[resumed:] == list(range(320, len(IMAGE), 64))  # nothing already held is sent again


def test_the_leader_finishes_the_snapshot_it_started_even_if_it_compacts_meanwhile():
    c = lagging_follower(keep=5)
    a = c.nodes["a"]
    first = a.log.snap_index
    compacted = []

    def rewrite(src, dst, msg):
        if isinstance(msg, InstallSnapshot) and msg.offset == 128 and not compacted:
            compacted.append(a.compact(c.now, a.log.applied, b"newer image"))
            c.flush()
        return msg
    run(c, 1.0, rewrite=rewrite)
    assert compacted[0] is not None and compacted[0].index == first + 5
    # the transfer under way went on to its end (never restarted), then the newer one followed
    assert [m.offset for m in chunks_to(c, "c") if m.index == first] == list(range(0, len(IMAGE), 64))
    assert [s.data for s in c.restored["c"]] == [IMAGE, b"newer image"]
    assert c.nodes["c"].log.committed == a.log.committed


def test_follower_assembles_in_order_and_asks_for_the_offset_it_needs():
    b = Raft("b", CFG, random.Random(1), 0.0)
    replies = []

    def step(msg):
        b.step(0.0, msg)
        rd = b.ready()
        replies.extend(env.msg for env in rd.messages)
        b.advance(rd)
        return rd
    step(chunk(0, b"01234"))
    assert replies[-1] == SnapshotResp(2, "b", 0, 10, 5)
    step(chunk(7, b"789"))  # out of order: nothing changes, it asks again for byte 5
    assert replies[-1] == SnapshotResp(2, "b", 0, 10, 5)
    step(chunk(0, b"01234"))  # a duplicate
    assert replies[-1] == SnapshotResp(2, "b", 0, 10, 5)
    rd = step(chunk(5, b"56789"))
    assert rd.snapshot.data == b"0123456789" and (rd.snapshot.index, rd.snapshot.term) == (10, 2)
    assert replies[-1] == SnapshotResp(2, "b", 10)
    assert b.conf == CONF and b.log.committed == 10


@pytest.mark.parametrize("other", [
    dict(index=12), dict(snap_term=1), dict(size=11), dict(term=3), dict(source="c", term=3),
], ids=["snapshot index", "snapshot term", "size", "term", "leader"])
def test_a_chunk_of_another_snapshot_restarts_the_assembly_from_zero(other):
    b = Raft("b", CFG, random.Random(1), 0.0)
    b.step(0.0, chunk(0, b"01234"))
    b.advance(b.ready())
    size = other.get("size", 10)
    b.step(0.0, chunk(5, b"56789"[:size - 5], **other))  # not the assembly's continuation: start over
    rd = b.ready()
    b.advance(rd)
    assert rd.snapshot is None
    assert [(m.snapshot, m.received) for m in (env.msg for env in rd.messages)] == [(other.get("index", 10), 0)]
    b.step(0.0, chunk(5, b"56789"))  # the old assembly is gone: its tail alone installs nothing
    rd = b.ready()
    assert rd.snapshot is None and all(getattr(env.msg, "received", 0) == 0 for env in rd.messages)


def _raw_chunk(size, offset, data, done):
    return msgpack.packb([PROTOCOL_VERSION, InstallSnapshot.KIND, 2, "a", 10, 2, [["a", "b"], []], size, offset,
                          data, done], use_bin_type=True)


@pytest.mark.parametrize("size, offset, data, done", [
    (MAX_SNAPSHOT_BYTES + 1, 0, b"x", False),  # would make the follower buffer more than the bound
    (10, 8, b"xyz", False),  # reaches past the declared size
    (10, 0, b"x" * 10, False),  # done flag lies
    (10, 0, b"x", True),
    (10, 3, b"", False),  # empty: no progress
    (2 ** 64 - 1, 2 ** 64 - 2, b"xx", False),
    (4 * MAX_SNAPSHOT_CHUNK, 0, b"x" * (MAX_SNAPSHOT_CHUNK + 1), False),  # over the chunk limit
])
def test_hostile_chunks_are_refused_at_decode(size, offset, data, done):
    with pytest.raises(WireError):
        decode(_raw_chunk(size, offset, data, done))


def test_a_valid_chunk_round_trips_and_a_future_snapshot_term_is_impossible():
    assert decode(_raw_chunk(10, 8, b"xy", True)) == InstallSnapshot(2, "a", 10, 2, CONF, 10, 8, b"xy", True)
    ok = chunk(0, b"0123456789")
    assert decode(encode(ok)) == ok and not _impossible(ok)
    assert _impossible(chunk(0, b"0123456789", snap_term=3))
