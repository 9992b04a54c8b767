"""Durable Raft storage: hard state, log entries and the latest snapshot.

Why an append-only file with checksums rather than sqlite: Raft needs exactly
three guarantees — a save is durable when it returns, a save is all-or-nothing,
and damage is either a torn tail (repairable) or corruption (fatal, reported).
With our own framing each of these is a few visible lines, one ``save`` is one
``write`` plus one ``fsync`` (group commit), and a full disk is caught at the
exact write that failed, so nothing half-written is ever followed by good data.

Data directory::

    CLUSTER   "p2pswarm-raft 1" and the cluster id; written once, atomically
    LOCK      flock'ed while open, so two processes never share a log
    wal       records; each save appends one batch: entry records then a hard-state record
    snapshot  the latest snapshot in one record, replaced atomically

A record is a 12-byte header ``len, crc32(payload), crc32(first 8 header bytes)``
followed by a msgpack payload.  At open the wal is scanned.  Damage (a header that
fails its checksum, a payload cut short or with a bad checksum) inside the *final*
batch is a torn tail: the crash hit a write that was never fsynced, so never
acknowledged, and the disk may have kept any subset of its pages.  The file is
truncated back to the end of the last complete batch, with a warning.  Damage
followed by a complete batch and then more records (so that a later save had begun
after that batch's fsync) is corruption of something that was durable, possibly
committed: opening fails with :class:`CorruptLogError`.  (Damage that leaves one
intact hard-state record at the very end cannot be told from a torn final batch;
that data is dropped, as a crash before its fsync would.)

New files and renames are made durable by an fsync of the directory too: without
it a crash can lose the wal's (or snapshot's) directory entry even though its
contents were fsynced.

Saving a snapshot rewrites the wal without the entries it covers (write a new
file, fsync, rename), so the log stays as short as the snapshot policy keeps it.

**Encryption at rest** (``up --autolock``, :mod:`p2pswarm.security.autolock`): with a
``cipher`` every record's msgpack payload (wal and snapshot) is sealed (AEAD, bound to
the file and the cluster id) before framing, and opened after its CRC passed, so a torn
tail is still found and repaired by the CRCs.  A record whose CRC is right but which does
not open was written whole and then changed, or the key is wrong: :class:`CorruptLogError`.
The CLUSTER file's magic line says whether the log is encrypted (``p2pswarm-raft 1
encrypted``); opening it with the other mode is refused, never guessed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from p2pswarm.consensus.messages import MAX_SNAPSHOT_BYTES, Entry, Snapshot
from p2pswarm.consensus.raft import HardState
from p2pswarm.wire import WireError, nested

logger = logging.getLogger("p2pswarm.raft")

_HEADER = struct.Struct("<III")
_MAX_RECORD = 64 * 1024 * 1024
"""Largest wal record (an entry is at most 1 MiB; anything larger is a damaged header)."""
_MAX_SNAPSHOT_RECORD = MAX_SNAPSHOT_BYTES + 1024 * 1024
"""The snapshot file's one record: the image plus its index, term and configuration (≤ 73 ids of
64 bytes) and the AEAD overhead, which 1 MiB covers many times over."""
_MAGIC = "p2pswarm-raft 1"
_MAGIC_ENCRYPTED = _MAGIC + " encrypted"


class StorageError(Exception):
    """The log cannot be read or written; the node must stop (the message says why and what to do)."""


class CorruptLogError(StorageError):
    pass


class ClusterMismatchError(StorageError):
    pass


@dataclass
class Stored:
    """Everything a Raft core restarts from."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list = field(default_factory=list)

    def copy(self) -> "Stored":
        return Stored(self.hard_state, self.snapshot, list(self.entries))

    def apply(self, hard_state: HardState | None, entries: tuple, snapshot: Snapshot | None) -> None:
        """The effect of one save: the rules both storages share."""
        if snapshot is not None:
            self.snapshot = snapshot
            self.entries = self._after(snapshot)
        if entries:
            self.check(entries)
            base = self.snapshot.index if self.snapshot else 0
            del self.entries[entries[0].index - base - 1:]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def check(self, entries: tuple) -> None:
        """Refuse (as our own bug) entries that would leave a gap or rewrite the snapshot."""
        if not entries:
            return
        first = entries[0].index
        base = self.snapshot.index if self.snapshot else 0
        last = self.entries[-1].index if self.entries else base
        if first > last + 1 or first <= base:
            raise ValueError(f"entries from {first} do not continue the log ending at {last}")

    def _after(self, snap: Snapshot) -> list:
        """Entries kept after a snapshot: the later ones, if our log agrees with it at its index."""
        for e in self.entries:
            if e.index == snap.index and e.term == snap.term:
                return [x for x in self.entries if x.index > snap.index]
        return []


class MemoryStorage:
    """Storage for simulation; ``fsync=False`` models a driver that forgets to fsync.

    Writes go to a volatile image; with fsync they become durable at once, without
    it only when ``flush`` (the OS writeback) runs.  ``crash`` drops what is not durable.
    """

    def __init__(self, cluster_id: str = "sim", fsync: bool = True) -> None:
        self.cluster_id = cluster_id
        self.fsync = fsync
        self._volatile = Stored()
        self._durable = self._volatile if fsync else Stored()
        self.saves = 0

    def load(self) -> Stored:
        return self._volatile.copy()

    def save(self, hard_state: HardState | None, entries: tuple = (), snapshot: Snapshot | None = None) -> None:
        self._volatile.apply(hard_state, entries, snapshot)
        self.saves += 1

    def flush(self) -> None:
        if not self.fsync:
            self._durable = self._volatile.copy()

    def crash(self) -> None:
        if not self.fsync:
            self._volatile = self._durable.copy()

    def close(self) -> None:
        pass


class FileStorage:
    def __init__(self, path: str, cluster_id: str, cipher: Any = None) -> None:
        """Open (creating if empty) the data dir ``path`` for cluster ``cluster_id`` and recover it.

        ``cipher`` (``seal(data, ad)`` / ``open(data, ad)`` raising ValueError) encrypts every
        record; None keeps the plaintext format.
        """
        self.path = path
        self.cluster_id = cluster_id
        self._cipher = cipher
        self._ad = {what: f"p2pswarm-raft|{what}|{cluster_id}".encode() for what in ("wal", "snapshot")}
        self._failed: str | None = None
        self._fd = -1
        if not os.path.isdir(path):
            os.makedirs(path)
            _fsync_dir(os.path.dirname(os.path.abspath(path)))  # the new dir's own entry
        self._lock = os.open(os.path.join(path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock)
            raise StorageError(f"data dir {path} is in use by another process; stop it or pick another dir") from None
        try:
            self._check_cluster()
            self._image = Stored()
            self._load_snapshot()
            self._recover_wal()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ public

    def load(self) -> Stored:
        return self._image.copy()

    def save(self, hard_state: HardState | None, entries: tuple = (), snapshot: Snapshot | None = None) -> None:
        """Make the hard state, entries and snapshot durable (one fsync unless a snapshot is saved)."""
        if self._failed:
            raise StorageError(f"raft storage in {self.path} failed earlier ({self._failed}); restart the node")
        if hard_state is None and not entries and snapshot is None:
            return
        if snapshot is not None:
            image = self._image.copy()
            image.apply(hard_state, entries, snapshot)
            self._guard(self._write_snapshot, snapshot)
            self._guard(self._rewrite_wal, image)
            self._image = image
            return
        self._image.check(entries)
        buf = b"".join(self._frame(_entry_payload(e)) for e in entries)
        hs = hard_state or self._image.hard_state
        buf += self._frame(_hs_payload(hs))
        self._guard(self._append, buf)
        self._image.apply(hard_state, entries, None)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    # ------------------------------------------------------------ writing

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except OSError as exc:
            what = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            self._failed = what
            raise StorageError(f"cannot write raft log in {self.path}: {what}; "
                               f"free space or fix the disk, then restart the node") from exc

    def _append(self, buf: bytes) -> None:
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            _write_all(self._fd, buf)
            os.fsync(self._fd)
        except OSError:
            try:  # leave no partial batch behind a later good one
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise

    def _write_snapshot(self, snap: Snapshot) -> None:
        payload = [snap.index, snap.term, list(snap.conf.voters), list(snap.conf.learners), snap.data]
        self._atomic_write("snapshot", self._frame(payload, "snapshot"))

    def _rewrite_wal(self, image: Stored) -> None:
        snap = image.snapshot
        buf = self._frame(["S", snap.index, snap.term]) if snap else b""
        buf += b"".join(self._frame(_entry_payload(e)) for e in image.entries)
        buf += self._frame(_hs_payload(image.hard_state))
        self._atomic_write("wal", buf)
        os.close(self._fd)
        self._fd = os.open(os.path.join(self.path, "wal"), os.O_RDWR | os.O_APPEND)

    def _frame(self, payload: list, what: str = "wal") -> bytes:
        body = msgpack.packb(payload, use_bin_type=True)
        if self._cipher is not None:
            body = self._cipher.seal(body, self._ad[what])
        return _frame_body(body)

    def _open(self, what: str):
        """The function turning a record body back into msgpack bytes (None: plaintext)."""
        cipher, ad = self._cipher, self._ad[what]
        return None if cipher is None else (lambda body: cipher.open(body, ad))

    def _undecryptable(self, name: str, pos: int) -> CorruptLogError:
        return CorruptLogError(f"{name} could not be decrypted at byte {pos}: wrong key or tampered data; "
                               f"restore this node from a peer")

    def _atomic_write(self, name: str, data: bytes) -> None:
        tmp = os.path.join(self.path, name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(self.path, name))
        _fsync_dir(self.path)

    # ------------------------------------------------------------ reading

    def _check_cluster(self) -> None:
        name = os.path.join(self.path, "CLUSTER")
        if os.path.exists(name):
            with open(name, encoding="utf-8") as f:
                lines = f.read().splitlines()
            if len(lines) != 2 or lines[0] not in (_MAGIC, _MAGIC_ENCRYPTED):
                raise CorruptLogError(f"{name} is not a p2pswarm raft data dir marker")
            if lines[1] != self.cluster_id:
                raise ClusterMismatchError(
                    f"data dir {self.path} belongs to cluster {lines[1]}, not {self.cluster_id}; "
                    f"use another data dir or remove this one to leave that cluster")
            encrypted = lines[0] == _MAGIC_ENCRYPTED
            if encrypted and self._cipher is None:
                raise StorageError(f"the raft log in {self.path} is encrypted (--autolock) but this node has no "
                                   f"unlocked data key; unlock it (`p2pswarm unlock`) or restore "
                                   f"security/autolock")
            if not encrypted and self._cipher is not None:
                raise StorageError(f"the raft log in {self.path} is not encrypted but this node uses --autolock; "
                                   f"refusing to mix them: start without --autolock or use a fresh data dir")
            return
        if os.path.exists(os.path.join(self.path, "wal")):
            raise CorruptLogError(f"{self.path} has a raft log but no CLUSTER file; refusing to guess")
        magic = _MAGIC if self._cipher is None else _MAGIC_ENCRYPTED
        self._atomic_write("CLUSTER", f"{magic}\n{self.cluster_id}\n".encode())

    def _load_snapshot(self) -> None:
        name = os.path.join(self.path, "snapshot")
        for leftover in ("snapshot.tmp", "wal.tmp"):
            if os.path.exists(os.path.join(self.path, leftover)):
                os.unlink(os.path.join(self.path, leftover))
        if not os.path.exists(name):
            return
        with open(name, "rb") as f:
            data = f.read()
        try:
            records, end, bad = _scan(data, self._open("snapshot"), _MAX_SNAPSHOT_RECORD)
        except _Undecryptable as exc:
            raise self._undecryptable(f"snapshot file {name}", exc.pos) from None
        if bad is not None or len(records) != 1 or end != len(data):
            raise CorruptLogError(f"snapshot file {name} is damaged; restore the data dir from a peer")
        try:
            index, term, voters, learners, blob = records[0][1]
            self._image.snapshot = nested(Snapshot)((index, term, (tuple(voters), tuple(learners)), blob))
        except (WireError, ValueError, TypeError):
            raise CorruptLogError(f"snapshot file {name} does not decode") from None

    def _recover_wal(self) -> None:
        name = os.path.join(self.path, "wal")
        created = not os.path.exists(name)
        self._fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if created:
            _fsync_dir(self.path)
        with open(name, "rb") as f:
            data = f.read()
        try:
            records, _, bad = _scan(data, self._open("wal"))
            corrupt = bad is not None and _later_batch(data, bad, self._open("wal"))
        except _Undecryptable as exc:
            raise self._undecryptable(f"raft log {name}", exc.pos) from None
        if corrupt:
            raise CorruptLogError(f"raft log {name} is corrupt at byte {bad}, before later complete saves: "
                                  f"data that was durable is damaged; restore this node from a peer")
        keep, marker = 0, None
        log: list[Entry] = []
        batch: list[Entry] = []
        for offset, payload in records:
            try:
                kind = payload[0]
                if kind == "E":
                    batch.append(nested(Entry)(tuple(payload[1:])))
                elif kind == "S" and offset == records[0][0]:
                    marker = (payload[1], payload[2])
                elif kind == "H":
                    term, vote, commit = payload[1:]
                    if type(term) is not int or type(commit) is not int or type(vote) is not str:
                        raise ValueError("hard state")
                    for e in batch:
                        _splice(log, e)
                    self._image.hard_state = HardState(term, vote or None, commit)
                    batch, keep = [], offset
                else:
                    raise ValueError(kind)
            except (WireError, ValueError, TypeError, IndexError):
                raise CorruptLogError(f"raft log {name} has a bad record ending at byte {offset}; "
                                      f"restore this node from a peer") from None
        snap = self._image.snapshot
        if snap is not None:
            agrees = marker == (snap.index, snap.term) or any(
                e.index == snap.index and e.term == snap.term for e in log)
            log = [e for e in log if e.index > snap.index] if agrees else []
        elif marker is not None:
            raise CorruptLogError(f"raft log {name} starts after a snapshot that is missing")
        base = snap.index if snap else 0
        if log and log[0].index != base + 1:
            raise CorruptLogError(f"raft log {name} does not continue its snapshot at {base}")
        self._image.entries = log
        if keep != len(data):
            if bad is not None:
                logger.warning("raft log %s: dropped a torn final batch (bytes %d-%d, damaged at %d) that a "
                               "crash left half-written; it was never acknowledged", name, keep, len(data), bad)
            os.ftruncate(self._fd, keep)  # torn tail: drop the incomplete batch
            os.fsync(self._fd)


def _splice(log: list, e: Entry) -> None:
    """Replay one entry record: a lower index replaces the suffix it conflicts with."""
    if log and e.index <= log[-1].index:
        del log[max(0, e.index - log[0].index):]
    elif log and e.index != log[-1].index + 1:
        raise ValueError("gap in log")
    log.append(e)


# ---------------------------------------------------------------- framing

class _Undecryptable(Exception):
    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


def _frame(payload: list) -> bytes:
    return _frame_body(msgpack.packb(payload, use_bin_type=True))


def _frame_body(body: bytes) -> bytes:
    head = struct.pack("<II", len(body), zlib.crc32(body))
    return head + struct.pack("<I", zlib.crc32(head)) + body


def _entry_payload(e: Entry) -> list:
    return ["E", e.term, e.index, e.kind, e.data]


def _hs_payload(hs: HardState) -> list:
    return ["H", hs.term, hs.vote or "", hs.commit]


def _scan(data: bytes, open_body: Any = None, max_record: int = _MAX_RECORD,
          start: int = 0) -> tuple[list, int, int | None]:
    """Records from ``start`` as (end offset, payload); the end of the good prefix; the offset of a bad
    record or None.

    ``open_body`` decrypts a body whose CRC passed; when it fails, :class:`_Undecryptable` is raised
    (a whole record that does not open is a wrong key or tampering, never a torn write).
    """
    records: list[tuple[int, Any]] = []
    pos = start
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            return records, pos, pos
        length, crc, hcrc = _HEADER.unpack_from(data, pos)
        if zlib.crc32(data[pos:pos + 8]) != hcrc or length > max_record:
            return records, pos, pos
        body = data[pos + _HEADER.size:pos + _HEADER.size + length]
        if len(body) < length or zlib.crc32(body) != crc:
            return records, pos, pos
        if open_body is not None:
            try:
                body = open_body(body)
            except ValueError:
                raise _Undecryptable(pos) from None
        try:
            payload = msgpack.unpackb(body, raw=False, use_list=True)
        except Exception:
            return records, pos, pos
        pos += _HEADER.size + length
        records.append((pos, payload))
    return records, pos, None


def _later_batch(data: bytes, bad: int, open_body: Any) -> bool:
    """Is the damage at ``bad`` followed by a complete batch and then more data?

    Each save appends one batch (entries, then a hard-state record) and fsyncs it before the next
    save starts; so bytes after an intact hard-state record mean that its batch, and the damage
    before it, were durable.  Otherwise the damage lies in the final batch: a torn write."""
    after = bad + 1
    while (pos := _next_record(data, after)) is not None:
        records, _, again = _scan(data, open_body, start=pos)
        if any(isinstance(p, list) and p[:1] == ["H"] and end < len(data) for end, p in records):
            return True
        if again is None:
            return False
        after = again + 1
    return False


def _next_record(data: bytes, pos: int) -> int | None:
    """The first offset at or after ``pos`` where a whole record with good checksums starts."""
    for at in range(pos, len(data) - _HEADER.size + 1):
        length, crc, hcrc = _HEADER.unpack_from(data, at)
        body = at + _HEADER.size
        if (zlib.crc32(data[at:at + 8]) == hcrc and length <= min(_MAX_RECORD, len(data) - body)
                and zlib.crc32(data[body:body + length]) == crc):
            return at
    return None


def _fsync_dir(path: str) -> None:
    """Make the names in directory ``path`` (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, buf: bytes) -> None:
    view = memoryview(buf)
    while view:
        n = os.write(fd, view)
        view = view[n:]
