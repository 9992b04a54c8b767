"""The replicated kv state machine: semantics, exactly-once retries, snapshots."""

from p2pswarm.consensus.kv import KVStore, encode_command


def test_operations():
    kv = KVStore()
    assert kv.apply(1, encode_command(1, 1, "put", "k", 5)) is True
    assert kv.apply(2, encode_command(1, 2, "cas", "k", 4, 6)) is False
    assert kv.apply(3, encode_command(1, 3, "cas", "k", 5, 6)) is True
    assert kv.apply(4, encode_command(1, 4, "get", "k")) == 6
    assert kv.apply(5, encode_command(1, 5, "delete", "k")) is True
    assert kv.apply(6, encode_command(1, 6, "delete", "k")) is False
    assert kv.get("k") is None and kv.applied == 6


def test_duplicate_retry_is_answered_from_the_session_not_reapplied():
    kv = KVStore()
    kv.apply(1, encode_command(7, 1, "put", "k", 1))
    kv.apply(2, encode_command(8, 1, "put", "k", 2))
    assert kv.apply(3, encode_command(7, 1, "put", "k", 1)) is True  # the retry
    assert kv.get("k") == 2


def test_junk_command_is_a_deterministic_no_op():
    kv = KVStore()
    assert kv.apply(1, b"\xc1garbage") is None and kv.applied == 1 and kv.data == {}


def test_snapshot_restore_is_exact():
    kv = KVStore()
    for i in range(20):
        kv.apply(i + 1, encode_command(i % 3, i, "put", f"k{i % 4}", i))
    other = KVStore()
    other.restore(kv.snapshot())
    assert other.snapshot() == kv.snapshot() and other.sessions == kv.sessions
    assert other.apply(21, encode_command(1, 10, "put", "k0", 99)) is None  # an older seq stays ignored
