"""`cluster backup` / `cluster restore` refusals that need no node: each bad file or key is one line, exit 1,
and nothing is sent to a node (the data dir below has none running)."""

from __future__ import annotations

import struct

import pytest
from click.testing import CliRunner

from p2pswarm.backup import fileformat as ff
from p2pswarm.cli.main import main
from p2pswarm.security.autolock import format_unlock_key

pytestmark = pytest.mark.timeout(60)
PASSPHRASE = "a long and careful passphrase"


@pytest.fixture
def files(tmp_path):
    blob = ff.seal_backup({"services": [], "kv": [["k", "v"]]}, secret=PASSPHRASE.encode(), key=ff.KEY_PASSPHRASE,
                          cluster="feed", index=9, created=0.0, summary={"kv": 1}, kdf=ff.Kdf(n=2 ** 10))
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    (tmp_path / "wrong").write_text("some other passphrase\n")
    (tmp_path / "short").write_text("short\n")
    (tmp_path / "good.bak").write_bytes(blob)
    (tmp_path / "truncated.bak").write_bytes(blob[:-7])
    flipped = bytearray(blob)
    flipped[-30] ^= 0x80
    (tmp_path / "corrupt.bak").write_bytes(bytes(flipped))
    newer = bytearray(blob)
    struct.pack_into(">H", newer, len(ff.MAGIC), 3)
    (tmp_path / "newer.bak").write_bytes(bytes(newer))
    (tmp_path / "key").write_text(format_unlock_key(bytes(range(32))) + "\n")
    return tmp_path


def restore(files, name: str, *extra: str):
    return CliRunner().invoke(main, ["cluster", "restore", str(files / name), "--data-dir", str(files / "none"),
                                     *extra])


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_bad_backup_files_are_one_line_each(files):
    passfile = ("--passphrase-file", str(files / "pass"))
    assert one_line(restore(files, "truncated.bak", *passfile)) == \
        f"error: {files / 'truncated.bak'} is truncated ({len((files / 'good.bak').read_bytes()) - 7} bytes, " \
        f"expected {len((files / 'good.bak').read_bytes())})"
    assert "is corrupt: its contents fail authentication" in one_line(restore(files, "corrupt.bak", *passfile))
    assert "is backup format 3, made by a newer p2pswarm" in one_line(restore(files, "newer.bak", *passfile))
    assert one_line(restore(files, "good.bak", "--passphrase-file", str(files / "wrong"))) == \
        f"error: wrong passphrase for {files / 'good.bak'}"
    assert one_line(restore(files, "missing.bak", *passfile)) == \
        f"error: cannot read {files / 'missing.bak'}: No such file or directory"
    assert "is sealed with a passphrase: give --passphrase-file" in one_line(
        restore(files, "good.bak", "--unlock-key-file", str(files / "key")))
    # the file opens: only then does the CLI look for the node
    assert "no p2pswarm node is running" in one_line(restore(files, "good.bak", *passfile))


def test_backup_refuses_a_short_passphrase_and_an_existing_file(files):
    run = CliRunner().invoke
    dd = ("--data-dir", str(files / "none"))
    assert one_line(run(main, ["cluster", "backup", str(files / "new.bak"), "--passphrase-file",
                               str(files / "short"), *dd])) == "error: a backup passphrase has at least 8 characters"
    assert one_line(run(main, ["cluster", "backup", str(files / "good.bak"), "--passphrase-file",
                               str(files / "pass"), *dd])) == \
        f"error: {files / 'good.bak'} exists; choose another name or replace it with --force"
    assert not (files / "new.bak").exists()


def test_a_file_sealed_with_an_unlock_key_asks_for_that_key(files):
    key = bytes(range(32))
    blob = ff.seal_backup({"kv": []}, secret=key, key=ff.KEY_UNLOCK, cluster="feed", index=1, created=0.0,
                          summary={}, kdf=ff.Kdf(n=2 ** 10))
    (files / "locked.bak").write_bytes(blob)
    (files / "other-key").write_text(format_unlock_key(bytes(32)) + "\n")
    assert "sealed with the unlock key of cluster feed: give --unlock-key-file" in one_line(
        restore(files, "locked.bak", "--passphrase-file", str(files / "pass")))
    assert one_line(restore(files, "locked.bak", "--unlock-key-file", str(files / "other-key"))) == \
        f"error: wrong unlock key (it must be the backed-up cluster's) for {files / 'locked.bak'}"
    assert "no p2pswarm node is running" in one_line(restore(files, "locked.bak", "--unlock-key-file",
                                                             str(files / "key")))
