"""Turning autolock on for a used data dir: everything sealed, nothing lost, a crash at any step recoverable."""

import re

import pytest

from p2pswarm.consensus.messages import ConfState, Entry, Snapshot
from p2pswarm.consensus.raft import HardState
from p2pswarm.consensus.storage import FileStorage, StorageError
from p2pswarm.node.datadir import DataDir
from p2pswarm.security import autolock, sealing
from p2pswarm.security.errors import KeyFileError

MARKER = b"MARKER-XYZ"
KEY = b"\x05" * 32


@pytest.fixture
def datadir(tmp_path):
    """A node's data dir as a plaintext node leaves it: a snapshot, log entries after it, two key files."""
    d = DataDir(tmp_path / "d")
    d.prepare()
    st = FileStorage(str(d.path / "raft"), "c1")
    st.save(HardState(2, "n1", 3), tuple(Entry(2, i, "normal", MARKER + b" %d" % i) for i in range(1, 4)))
    st.save(None, (), Snapshot(2, 2, ConfState(("n1", "n2", "n3"), ()), MARKER + b" state"))
    st.save(HardState(2, "n1", 5), tuple(Entry(2, i, "normal", MARKER + b" %d" % i) for i in range(4, 6)))
    st.close()
    d.write_private("curve.key", MARKER + b" curve")
    d.write_private("cluster.key", MARKER + b" cluster")
    yield d
    autolock.forget(d.path)


def image(d: DataDir, cipher=None):
    st = FileStorage(str(d.path / "raft"), "c1", cipher=cipher)
    try:
        return st.load()
    finally:
        st.close()


def files(d: DataDir) -> dict:
    return {p.relative_to(d.path): p.read_bytes() for p in d.path.rglob("*") if p.is_file()}


def assert_sealed_and_whole(d: DataDir, before) -> None:
    on_disk = files(d)
    assert not [p for p, data in on_disk.items() if MARKER in data and p.name not in ("node.json",)]
    assert not [p for p in on_disk if sealing.STAGED in str(p) or sealing.OLD in str(p)]  # no copies left
    cipher = autolock.unlock(d, autolock.format_unlock_key(KEY))
    assert image(d, cipher) == before
    for name in autolock.KEY_FILES:
        assert autolock.open_file(d, name, d.read_private(name)).startswith(MARKER)


def test_sealing_a_used_data_dir_encrypts_everything_and_loses_nothing(datadir):
    before = image(datadir)
    assert before.snapshot is not None and [e.index for e in before.entries] == [3, 4, 5]
    sealing.seal_existing(datadir, KEY)
    assert autolock.plaintext_data(datadir)  # the same files, now sealed...
    assert_sealed_and_whole(datadir, before)
    with pytest.raises(StorageError, match="encrypted .* no unlocked data key"):
        image(datadir)  # ...and unreadable without the key
    with pytest.raises(KeyFileError, match="already uses --autolock"):
        sealing.seal_existing(datadir, KEY)


def test_a_crash_before_the_lock_file_leaves_the_plaintext_node_as_it_was(datadir, monkeypatch):
    before, was = image(datadir), files(datadir)

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(autolock, "write_lock", crash)
    with pytest.raises(OSError):
        sealing.seal_existing(datadir, KEY)
    assert files(datadir) == was and image(datadir) == before  # leftovers removed, plaintext intact
    monkeypatch.undo()
    sealing.seal_existing(datadir, KEY)  # a later try succeeds
    assert_sealed_and_whole(datadir, before)


@pytest.mark.parametrize("crash_after", ["commit", "first_rename"])
def test_a_crash_after_the_lock_file_is_finished_by_the_next_start(datadir, monkeypatch, crash_after):
    before = image(datadir)

    def die(d):
        raise KeyboardInterrupt  # the process dies right after writing the lock file
    monkeypatch.setattr(sealing, "finish", die)
    with pytest.raises(KeyboardInterrupt):
        sealing.seal_existing(datadir, KEY)
    monkeypatch.undo()
    assert autolock.has_lock(datadir)
    raft = datadir.path / "raft"
    if crash_after == "first_rename":  # finish had moved the plaintext aside, not yet the sealed copy in
        raft.rename(raft.with_name("raft" + sealing.OLD))
    assert sealing.finish(datadir)  # what the node runs first at its next start
    assert_sealed_and_whole(datadir, before)
    assert not sealing.finish(datadir)  # nothing left to do


def test_a_running_node_is_not_sealed_under_it(datadir):
    running = FileStorage(str(datadir.path / "raft"), "c1")  # holds the raft dir's lock, as a node does
    try:
        with pytest.raises(StorageError, match="in use by another process"):
            sealing.seal_existing(datadir, KEY)
    finally:
        running.close()
    assert not autolock.has_lock(datadir)
    assert not (datadir.path / ("raft" + sealing.STAGED)).exists()


def test_a_data_dir_without_a_raft_log_gets_its_key_files_sealed(tmp_path):
    d = DataDir(tmp_path / "k")
    d.prepare()
    d.write_private("curve.key", MARKER)
    sealing.seal_existing(d, KEY)
    autolock.unlock(d, autolock.format_unlock_key(KEY))
    assert autolock.open_file(d, "curve.key", d.read_private("curve.key")) == MARKER
    assert MARKER not in d.read_private("curve.key")
    autolock.forget(d.path)


def test_an_interrupt_right_after_the_lock_file_keeps_the_sealed_copies(datadir, monkeypatch):
    before = image(datadir)
    real_write_lock = autolock.write_lock

    def write_then_die(*args, **kwargs):
        real_write_lock(*args, **kwargs)
        raise KeyboardInterrupt  # committed, then the process is interrupted
    monkeypatch.setattr(autolock, "write_lock", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        sealing.seal_existing(datadir, KEY)
    monkeypatch.undo()
    assert (datadir.path / ("raft" + sealing.STAGED)).exists()  # not removed as "leftovers"
    assert sealing.finish(datadir)
    assert_sealed_and_whole(datadir, before)


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_the_made_up_unlock_key_is_shown_even_when_a_step_after_the_commit_fails(datadir, monkeypatch, capsys,
                                                                                  failure):
    from p2pswarm.cli.node_cmds import _prepare_autolock

    def fail(d):
        raise failure
    monkeypatch.setattr(sealing, "finish", fail)  # moving the sealed copies in place fails after the commit
    if isinstance(failure, OSError):
        _prepare_autolock(datadir, True, None)  # logged: the next start finishes it
    else:
        with pytest.raises(KeyboardInterrupt):
            _prepare_autolock(datadir, True, None)
    shown = re.search(r"P2PSU-1-[A-Z2-7]+", capsys.readouterr().err)
    assert autolock.has_lock(datadir) and shown
    monkeypatch.undo()
    assert sealing.finish(datadir)  # the next start finishes the job, and the shown key opens the data
    cipher = autolock.unlock(datadir, shown.group(0))
    assert image(datadir, cipher).entries[-1].data == MARKER + b" 5"
