"""Durable storage: durability, group commit, torn tails, corruption, full disks, cluster ids."""

import errno
import os

import pytest

from p2pswarm.consensus import storage as storage_mod
from p2pswarm.consensus.messages import ConfState, Entry, Snapshot
from p2pswarm.consensus.raft import HardState
from p2pswarm.consensus.storage import ClusterMismatchError, CorruptLogError, FileStorage, MemoryStorage, StorageError


def entries(lo, hi, term=1):
    return tuple(Entry(term, i, "normal", b"data-%d" % i) for i in range(lo, hi + 1))


def reopen(path, cluster="c1"):
    st = FileStorage(str(path), cluster)
    got = st.load()
    st.close()
    return got


def test_save_and_reload(tmp_path):
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(3, "n2", 4), entries(1, 5, term=3))
    st.save(None, entries(6, 6, term=3))
    st.close()
    got = reopen(tmp_path)
    assert got.hard_state == HardState(3, "n2", 4)
    assert [e.index for e in got.entries] == [1, 2, 3, 4, 5, 6]


def test_overwritten_suffix_replays_to_the_newest_log(tmp_path):
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(1, None, 0), entries(1, 5, term=1))
    st.save(HardState(2, None, 2), entries(3, 4, term=2))
    st.close()
    got = reopen(tmp_path)
    assert [(e.index, e.term) for e in got.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_group_commit_is_one_fsync_per_save(tmp_path, monkeypatch):
    st = FileStorage(str(tmp_path), "c1")
    calls = []
    real = os.fsync
    monkeypatch.setattr(storage_mod.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    st.save(HardState(1, "a", 0), entries(1, 500))
    assert len(calls) == 1
    st.close()


def test_torn_tail_is_truncated(tmp_path):
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(1, "a", 2), entries(1, 3))
    st.close()
    wal = tmp_path / "wal"
    good = wal.stat().st_size
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(1, "a", 3), entries(4, 6))
    st.close()
    with open(wal, "r+b") as f:  # the crash hit the second batch half way
        f.truncate(good + (wal.stat().st_size - good) // 2)
    got = reopen(tmp_path)
    assert [e.index for e in got.entries] == [1, 2, 3] and got.hard_state.commit == 2
    assert wal.stat().st_size == good  # repaired on disk, so appends continue cleanly
    st = FileStorage(str(tmp_path), "c1")
    st.save(None, entries(4, 4))
    st.close()
    assert [e.index for e in reopen(tmp_path).entries] == [1, 2, 3, 4]


def test_garbage_tail_is_truncated(tmp_path):
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(1, "a", 1), entries(1, 2))
    st.close()
    with open(tmp_path / "wal", "ab") as f:
        f.write(b"\0" * 100)
    assert [e.index for e in reopen(tmp_path).entries] == [1, 2]


def test_corrupt_committed_entry_is_an_error(tmp_path):
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(1, "a", 3), entries(1, 3))
    st.save(HardState(1, "a", 6), entries(4, 6))
    st.close()
    wal = tmp_path / "wal"
    data = bytearray(wal.read_bytes())
    at = data.index(b"data-2")
    data[at] ^= 0xFF
    wal.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="corrupt"):
        FileStorage(str(tmp_path), "c1")


def test_corrupt_length_field_is_an_error_not_a_torn_tail(tmp_path):
    st = FileStorage(str(tmp_path), "c1")
    for k in range(1, 6):
        st.save(HardState(1, "a", k), entries(k, k))
    st.close()
    wal = tmp_path / "wal"
    data = bytearray(wal.read_bytes())
    data[1] ^= 0x40  # first record's length
    wal.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        FileStorage(str(tmp_path), "c1")


def test_disk_full_raises_storage_error_and_keeps_the_log_intact(tmp_path, monkeypatch):
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(1, "a", 1), entries(1, 2))
    real = os.write

    def full(fd, data):
        real(fd, bytes(data[:7]))  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(storage_mod.os, "write", full)
    with pytest.raises(StorageError, match="disk full"):
        st.save(HardState(2, "b", 2), entries(3, 4))
    monkeypatch.setattr(storage_mod.os, "write", real)
    with pytest.raises(StorageError, match="restart"):
        st.save(None, entries(3, 3))  # a failed log is not written to again
    st.close()
    got = reopen(tmp_path)
    assert [e.index for e in got.entries] == [1, 2] and got.hard_state == HardState(1, "a", 1)


def test_other_cluster_is_refused(tmp_path):
    FileStorage(str(tmp_path), "c1").close()
    with pytest.raises(ClusterMismatchError, match="belongs to cluster c1"):
        FileStorage(str(tmp_path), "c2")


def test_second_opener_is_refused(tmp_path):
    st = FileStorage(str(tmp_path), "c1")
    with pytest.raises(StorageError, match="in use"):
        FileStorage(str(tmp_path), "c1")
    st.close()


def test_snapshot_compacts_the_log(tmp_path):
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(2, "a", 8), entries(1, 10, term=2))
    snap = Snapshot(8, 2, ConfState(("a", "b", "c"), ("d",)), b"image")
    st.save(None, (), snap)
    st.save(None, entries(11, 11, term=2))
    st.close()
    got = reopen(tmp_path)
    assert got.snapshot == snap
    assert [e.index for e in got.entries] == [9, 10, 11]
    assert os.path.getsize(tmp_path / "wal") < 400


def test_snapshot_from_leader_replaces_a_conflicting_log(tmp_path):
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(2, "a", 1), entries(1, 4, term=1))
    snap = Snapshot(6, 3, ConfState(("a",), ()), b"leader-image")
    st.save(HardState(3, None, 6), (), snap)
    st.close()
    got = reopen(tmp_path)
    assert got.snapshot == snap and got.entries == [] and got.hard_state.commit == 6


def test_memory_storage_crash_loses_only_unsynced_writes():
    durable = MemoryStorage(fsync=True)
    careless = MemoryStorage(fsync=False)
    for st in (durable, careless):
        st.save(HardState(1, "a", 0), entries(1, 2))
    careless.flush()
    for st in (durable, careless):
        st.save(HardState(2, "b", 3), entries(3, 3))
        st.crash()
    assert durable.load().hard_state == HardState(2, "b", 3) and len(durable.load().entries) == 3
    assert careless.load().hard_state == HardState(1, "a", 0) and len(careless.load().entries) == 2


def test_a_raft_core_restarts_from_file_storage(tmp_path):
    import random

    from p2pswarm.consensus.raft import LEADER, Raft
    from p2pswarm.node.presets import preset

    def drive(node, st):
        while node.has_ready():
            rd = node.ready()
            st.save(rd.hard_state, rd.entries, rd.snapshot)
            node.advance(rd)

    st = FileStorage(str(tmp_path), "c1")
    node = Raft("solo", preset("test").raft, random.Random(1), 0.0, bootstrap=("solo",))
    drive(node, st)
    node.tick(10.0)
    drive(node, st)
    assert node.role == LEADER
    for k in range(5):
        node.propose(10.0, b"e%d" % k)
    drive(node, st)
    node.compact(10.0, node.log.applied, b"image")
    drive(node, st)
    node.propose(10.0, b"after-snapshot")
    drive(node, st)
    before = (node.term, node.vote, node.log.committed, node.log.last_index(), node.log.snap_index)
    st.close()
    st = FileStorage(str(tmp_path), "c1")
    got = st.load()
    again = Raft("solo", preset("test").raft, random.Random(2), 20.0, hard_state=got.hard_state,
                 snapshot=got.snapshot, entries=tuple(got.entries), bootstrap=("solo",))
    assert (again.term, again.vote, again.log.committed, again.log.last_index(),
            again.log.snap_index) == before
    assert again.log.entry(again.log.last_index()).data == b"after-snapshot"
    assert again.conf.voters == ("solo",)
    st.close()


# ---------------------------------------------------------------- encryption at rest (--autolock)

def _cipher(key=b"k" * 32):
    from p2pswarm.security.autolock import RecordCipher
    return RecordCipher(key)


def _raw_files(path):
    return b"".join(p.read_bytes() for p in path.iterdir() if p.is_file())


def test_encrypted_round_trip_hides_the_data(tmp_path):
    st = FileStorage(str(tmp_path), "c1", cipher=_cipher())
    st.save(HardState(3, "n2", 2), (Entry(3, 1, "normal", b"MARKER-XYZ one"), Entry(3, 2, "normal", b"two")))
    st.save(None, entries(3, 3, term=3))
    st.close()
    assert b"MARKER-XYZ" not in _raw_files(tmp_path) and b"n2" not in (tmp_path / "wal").read_bytes()
    assert (tmp_path / "CLUSTER").read_text().splitlines() == ["p2pswarm-raft 1 encrypted", "c1"]
    st = FileStorage(str(tmp_path), "c1", cipher=_cipher())
    got = st.load()
    st.close()
    assert got.hard_state == HardState(3, "n2", 2)
    assert [(e.index, e.data) for e in got.entries] == [(1, b"MARKER-XYZ one"), (2, b"two"), (3, b"data-3")]


def test_encrypted_snapshot(tmp_path):
    st = FileStorage(str(tmp_path), "c1", cipher=_cipher())
    st.save(HardState(2, "a", 8), entries(1, 10, term=2))
    snap = Snapshot(8, 2, ConfState(("a", "b"), ()), b"MARKER-XYZ image")
    st.save(None, (), snap)
    st.save(None, entries(11, 11, term=2))
    st.close()
    assert b"MARKER-XYZ" not in (tmp_path / "snapshot").read_bytes()
    assert b"MARKER-XYZ" not in _raw_files(tmp_path)
    st = FileStorage(str(tmp_path), "c1", cipher=_cipher())
    got = st.load()
    st.close()
    assert got.snapshot == snap and [e.index for e in got.entries] == [9, 10, 11]


def test_plaintext_format_is_unchanged_without_a_cipher(tmp_path):
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(1, "a", 1), (Entry(1, 1, "normal", b"MARKER-XYZ"),))
    st.close()
    assert (tmp_path / "CLUSTER").read_bytes() == b"p2pswarm-raft 1\nc1\n"
    assert b"MARKER-XYZ" in (tmp_path / "wal").read_bytes()


def test_encrypted_log_with_the_wrong_key_is_refused(tmp_path):
    st = FileStorage(str(tmp_path), "c1", cipher=_cipher())
    st.save(HardState(1, "a", 1), entries(1, 2))
    st.close()
    with pytest.raises(CorruptLogError, match="could not be decrypted at byte 0: wrong key or tampered") as exc:
        FileStorage(str(tmp_path), "c1", cipher=_cipher(b"w" * 32))
    assert "\n" not in str(exc.value)
    assert [e.index for e in reopen_encrypted(tmp_path).entries] == [1, 2]  # nothing was truncated


def reopen_encrypted(path, key=b"k" * 32):
    st = FileStorage(str(path), "c1", cipher=_cipher(key))
    got = st.load()
    st.close()
    return got


def test_encrypted_and_plaintext_logs_are_not_mixed(tmp_path):
    enc, plain = tmp_path / "enc", tmp_path / "plain"
    FileStorage(str(enc), "c1", cipher=_cipher()).close()
    FileStorage(str(plain), "c1").close()
    with pytest.raises(StorageError, match="is encrypted .*no unlocked data key"):
        FileStorage(str(enc), "c1")
    with pytest.raises(StorageError, match="is not encrypted but this node uses --autolock"):
        FileStorage(str(plain), "c1", cipher=_cipher())


def test_encrypted_tampered_byte_is_refused(tmp_path):
    st = FileStorage(str(tmp_path), "c1", cipher=_cipher())
    st.save(HardState(1, "a", 3), entries(1, 3))
    st.save(HardState(1, "a", 6), entries(4, 6))
    st.close()
    wal = tmp_path / "wal"
    data = bytearray(wal.read_bytes())
    data[30] ^= 0x01  # inside the first record's sealed body
    wal.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="corrupt"):
        FileStorage(str(tmp_path), "c1", cipher=_cipher())
    # the same change with the CRCs recomputed: the AEAD tag still refuses it
    length, _, _ = storage_mod._HEADER.unpack_from(data, 0)
    body = bytes(data[12:12 + length])
    data[:12 + length] = storage_mod._frame_body(body)
    wal.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="could not be decrypted.*wrong key or tampered"):
        FileStorage(str(tmp_path), "c1", cipher=_cipher())


def test_encrypted_torn_tail_is_repaired(tmp_path):
    st = FileStorage(str(tmp_path), "c1", cipher=_cipher())
    st.save(HardState(1, "a", 2), entries(1, 3))
    st.close()
    wal = tmp_path / "wal"
    good = wal.stat().st_size
    st = FileStorage(str(tmp_path), "c1", cipher=_cipher())
    st.save(HardState(1, "a", 3), entries(4, 6))
    st.close()
    with open(wal, "r+b") as f:
        f.truncate(good + (wal.stat().st_size - good) // 2)
    got = reopen_encrypted(tmp_path)
    assert [e.index for e in got.entries] == [1, 2, 3] and got.hard_state.commit == 2
    assert wal.stat().st_size == good
    st = FileStorage(str(tmp_path), "c1", cipher=_cipher())
    st.save(None, entries(4, 4))
    st.close()
    assert [e.index for e in reopen_encrypted(tmp_path).entries] == [1, 2, 3, 4]


def test_encrypted_records_use_fresh_nonces(tmp_path):
    from p2pswarm.security.autolock import RecordCipher
    nonces = []

    def source(n):
        nonces.append(os.urandom(n))
        return nonces[-1]
    st = FileStorage(str(tmp_path), "c1", cipher=RecordCipher(b"k" * 32, nonce_source=source))
    st.save(HardState(1, "a", 1), entries(1, 3))
    st.close()
    assert len(nonces) == 4 and len(set(nonces)) == 4  # 3 entries + the hard state


def _batches(path, *ranges):
    """Save one batch per (lo, hi) range; returns the wal's size before each batch and at the end."""
    st = FileStorage(str(path), "c1")
    sizes = []
    for lo, hi in ranges:
        sizes.append((path / "wal").stat().st_size)
        st.save(HardState(1, "a", lo - 1), entries(lo, hi))
    st.close()
    return sizes + [(path / "wal").stat().st_size]


@pytest.mark.parametrize("damage", ["flipped byte in its first record", "lost page in its middle"])
def test_a_torn_final_batch_that_is_not_a_clean_prefix_is_dropped_with_a_warning(tmp_path, caplog, damage):
    start, end = _batches(tmp_path, (1, 3), (4, 6))[1:]
    wal = tmp_path / "wal"
    data = bytearray(wal.read_bytes())
    if damage.startswith("flipped"):
        data[data.index(b"data-4")] ^= 0xFF  # its later records and hard state reached the disk intact
    else:
        data[start + 20:start + 40] = bytes(20)  # a block of zeros the crash left inside the batch
    wal.write_bytes(bytes(data))
    got = reopen(tmp_path)
    assert [e.index for e in got.entries] == [1, 2, 3] and got.hard_state.commit == 0
    assert wal.stat().st_size == start < end  # repaired on disk, so appends continue cleanly
    assert "torn final batch" in caplog.text
    st = FileStorage(str(tmp_path), "c1")
    st.save(None, entries(4, 4))
    st.close()
    assert [e.index for e in reopen(tmp_path).entries] == [1, 2, 3, 4]


def test_damage_before_later_complete_saves_stops_with_one_line(tmp_path):
    _batches(tmp_path, (1, 3), (4, 6), (7, 7))
    wal = tmp_path / "wal"
    data = bytearray(wal.read_bytes())
    data[data.index(b"data-5")] ^= 0xFF  # the middle batch: the last one was saved after its fsync
    wal.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as err:
        FileStorage(str(tmp_path), "c1")
    assert "\n" not in str(err.value) and "restore this node from a peer" in str(err.value)
    assert wal.read_bytes() == bytes(data)  # nothing durable is thrown away


def test_new_files_are_made_durable_by_a_directory_fsync(tmp_path, monkeypatch):
    raft_dir = tmp_path / "raft"
    synced = []
    real = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            synced.append((st.st_ino, sorted(os.listdir(f"/proc/self/fd/{fd}"))))
        real(fd)
    monkeypatch.setattr(storage_mod.os, "fsync", fsync)
    st = FileStorage(str(raft_dir), "c1")
    st.save(HardState(1, "a", 0), entries(1, 2))
    st.save(None, (), Snapshot(2, 1, ConfState(("a",), ()), b"image"))
    st.close()
    parent, own = tmp_path.stat().st_ino, raft_dir.stat().st_ino
    assert any(ino == parent and "raft" in names for ino, names in synced)  # the new raft dir's entry
    assert any(ino == own and "wal" in names and "snapshot" not in names for ino, names in synced)  # wal created
    assert any(ino == own and "snapshot" in names for ino, names in synced)  # snapshot renamed in


def test_a_snapshot_larger_than_a_wal_record_is_stored_and_read_back(tmp_path):
    image = os.urandom(storage_mod._MAX_RECORD + 1024)
    st = FileStorage(str(tmp_path), "c1")
    st.save(HardState(1, "a", 2), entries(1, 2))
    st.save(None, (), Snapshot(2, 1, ConfState(("a",), ()), image))
    st.close()
    assert reopen(tmp_path).snapshot.data == image
