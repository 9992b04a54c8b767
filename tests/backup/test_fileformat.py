"""The backup file: it opens with the right key and refuses, in one line each, every other file."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from p2pswarm.backup import fileformat as ff
from p2pswarm.backup.fileformat import BackupError, Kdf, open_backup, read_header, seal_backup, write_atomic

FAST = Kdf(n=2 ** 10, r=8, p=1)
"""A cheap scrypt for tests; the header carries it, so open_backup uses it too."""
PASS = b"correct horse battery"
CONTENTS = {"services": [{"name": "web"}], "secrets": [{"name": "db", "data": b"s3cret\x00\xff"}],
            "configs": [], "kv": [["a", "1"], ["b", {"nested": [1, 2]}]]}


def sealed(contents=CONTENTS, secret=PASS, key=ff.KEY_PASSPHRASE) -> bytes:
    return seal_backup(contents, secret=secret, key=key, cluster="c0ffee", index=42, created=1_700_000_000.0,
                       summary={"services": 1, "secrets": 1}, kdf=FAST)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


def test_round_trip_keeps_every_value_and_the_header():
    blob = sealed()
    header, contents = open_backup(blob, PASS)
    assert contents == CONTENTS
    assert (header.cluster, header.index, header.created, header.key, header.kdf) == \
        ("c0ffee", 42, 1_700_000_000.0, "passphrase", FAST)
    assert header.summary == {"services": 1, "secrets": 1}
    assert b"s3cret" not in blob and b"nested" not in blob  # the contents are not in clear


def test_each_file_is_sealed_afresh():
    assert sealed()[-64:] != sealed()[-64:]  # new salt and nonce every time


def test_wrong_passphrase_is_one_line_naming_it():
    with pytest.raises(BackupError) as exc:
        open_backup(sealed(), b"correct horse battery!")
    assert one_line(exc) == "wrong passphrase for the backup"


def test_wrong_unlock_key_names_the_unlock_key():
    blob = sealed(secret=bytes(32), key=ff.KEY_UNLOCK)
    assert read_header(blob).key == ff.KEY_UNLOCK
    with pytest.raises(BackupError) as exc:
        open_backup(blob, bytes(31) + b"\x01", "b.bak")
    assert one_line(exc).startswith("wrong unlock key (it must be the backed-up cluster's) for b.bak")


def test_every_truncation_is_refused_as_truncated():
    blob = sealed()
    for cut in range(0, len(blob)):
        with pytest.raises(BackupError) as exc:
            open_backup(blob[:cut], PASS, "f.bak")
        assert "truncated" in one_line(exc), (cut, str(exc.value))


def test_every_single_bit_flip_is_refused():
    blob = sealed()
    for pos in range(len(blob)):
        for bit in (0, 5):
            flipped = bytearray(blob)
            flipped[pos] ^= 1 << bit
            with pytest.raises(BackupError) as exc:
                open_backup(bytes(flipped), PASS)
            one_line(exc)


def test_damage_is_told_apart_from_a_wrong_passphrase():
    blob = bytearray(sealed())
    blob[-5] ^= 0x10
    with pytest.raises(BackupError) as exc:
        open_backup(bytes(blob), PASS)
    assert "fail authentication" in one_line(exc)
    blob = bytearray(sealed())
    blob[len(ff.MAGIC) + 8] ^= 0x01  # inside the header JSON
    with pytest.raises(BackupError) as exc:
        open_backup(bytes(blob), PASS)
    assert "does not match its checksum" in one_line(exc)
    with pytest.raises(BackupError) as exc:
        open_backup(sealed() + b"x", PASS)
    assert "bytes after its end" in one_line(exc)


def test_a_file_of_another_format_version_names_it():
    blob = bytearray(sealed())
    struct.pack_into(">H", blob, len(ff.MAGIC), 2)
    with pytest.raises(BackupError) as exc:
        open_backup(bytes(blob), PASS, "old.bak")
    assert one_line(exc) == ("old.bak is backup format 2, made by a newer p2pswarm; this one reads format 1: "
                             "restore it with the p2pswarm version that made it")


def test_other_files_are_not_backups():
    with pytest.raises(BackupError) as exc:
        read_header(b"PK\x03\x04 a zip file", "x.zip")
    assert one_line(exc).startswith("x.zip is not a p2pswarm backup")


def reheader(blob: bytes, **changes) -> bytes:
    """``blob`` with header fields changed and a valid checksum (a crafted file, not a damaged one)."""
    import hashlib
    import json
    fixed = len(ff.MAGIC) + 6
    version, length = struct.unpack_from(">HI", blob, len(ff.MAGIC))
    header = json.loads(blob[fixed:fixed + length])
    for key, value in changes.items():
        (header["kdf"] if key in ("n", "r", "p") else header)[key] = value
    raw = json.dumps(header).encode()
    head = ff.MAGIC + struct.pack(">HI", version, len(raw)) + raw
    return head + hashlib.sha256(head).digest() + blob[fixed + length + 32:]


def test_a_crafted_header_cannot_ask_for_a_huge_scrypt():
    blob = sealed()
    assert read_header(reheader(blob)).kdf == FAST
    with pytest.raises(BackupError) as exc:
        read_header(reheader(blob, n=2 ** 24), "evil.bak")
    assert one_line(exc) == ("the backup's key derivation (scrypt n=16777216, r=8, p=1) is outside what p2pswarm "
                             "accepts; the file is corrupt or not made by p2pswarm")
    with pytest.raises(BackupError) as exc:
        read_header(reheader(blob, size=3), "evil.bak")
    assert "header p2pswarm cannot read" in one_line(exc)


def test_short_passphrases_are_refused():
    with pytest.raises(BackupError) as exc:
        ff.check_passphrase("1234567")
    assert one_line(exc) == "a backup passphrase has at least 8 characters"
    assert ff.check_passphrase("12345678") == b"12345678"


def test_write_is_atomic_and_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "c.bak"
    write_atomic(target, b"first")
    assert target.read_bytes() == b"first"
    assert oct(target.stat().st_mode & 0o777) == "0o600"

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ff.os, "write", full)
    with pytest.raises(BackupError) as exc:
        write_atomic(target, b"second")
    assert one_line(exc) == f"cannot write {target}: the disk is full (nothing was written)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bak"] and target.read_bytes() == b"first"
    with pytest.raises(BackupError) as exc:
        write_atomic(tmp_path / "missing" / "c.bak", b"x")
    assert "No such file or directory" in one_line(exc)
