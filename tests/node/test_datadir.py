"""The data dir: identity made once, exclusive lock, clear errors."""

import json
import os
import re

import pytest

from p2pswarm.node.datadir import DataDir, DataDirError, default_data_dir


def test_identity_is_created_once_and_kept(tmp_path):
    dd = DataDir(tmp_path / "d")
    dd.prepare()
    node_id, name, inc = dd.identity(None)
    assert re.fullmatch(r"[0-9a-f]{16}", node_id)
    assert name == f"node-{node_id[:6]}" and inc == 0
    again = DataDir(tmp_path / "d").identity("renamed")
    assert again[0] == node_id and again[1] == "renamed" and again[2] == 1
    assert json.loads((tmp_path / "d" / "node.json").read_text())["name"] == "renamed"


def test_ids_differ_between_dirs(tmp_path):
    ids = set()
    for i in range(20):
        dd = DataDir(tmp_path / str(i))
        dd.prepare()
        ids.add(dd.identity(None)[0])
    assert len(ids) == 20


def test_incarnation_is_persisted_and_restart_starts_above_it(tmp_path):
    dd = DataDir(tmp_path)
    dd.prepare()
    dd.identity("a")
    dd.save_incarnation(7)
    assert DataDir(tmp_path).identity(None)[2] == 8


def test_second_lock_is_refused_with_one_line(tmp_path):
    first, second = DataDir(tmp_path), DataDir(tmp_path)
    first.prepare()
    first.lock()
    first.write_pid()
    try:
        assert second.is_locked()
        with pytest.raises(DataDirError) as exc:
            second.lock()
        msg = str(exc.value)
        assert "\n" not in msg and "already running" in msg and str(os.getpid()) in msg
    finally:
        first.unlock()
    assert not second.is_locked()
    second.lock()
    second.unlock()


def test_unusable_dir_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataDirError) as exc:
        DataDir(blocker / "sub").prepare()
    assert "cannot create data dir" in str(exc.value) and "\n" not in str(exc.value)


def test_too_long_for_a_socket(tmp_path):
    with pytest.raises(DataDirError, match="too long"):
        DataDir(tmp_path / ("x" * 120)).prepare()


def test_corrupt_node_json(tmp_path):
    (tmp_path / "node.json").write_text("{nope")
    with pytest.raises(DataDirError, match="unreadable"):
        DataDir(tmp_path).identity(None)


def test_default_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("P2PSWARM_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("P2PSWARM_DATA_DIR")
    assert str(default_data_dir()).endswith(".local/share/p2pswarm")


def test_prepare_makes_an_existing_dir_and_its_log_private(tmp_path):
    """A data dir made 0755 (by hand, or by a version that set 0700 only at creation) and an old
    0644 node.log and security dir become 0700/0600/0700 at the next start."""
    path = tmp_path / "d"
    (path / "security").mkdir(parents=True)
    for d in (path, path / "security"):
        os.chmod(d, 0o755)
    (path / "node.log").write_text("old\n")
    os.chmod(path / "node.log", 0o644)
    dd = DataDir(path)
    dd.prepare()
    modes = {p: oct(os.stat(path / p).st_mode & 0o777) for p in (".", "security", "node.log")}
    assert modes == {".": oct(0o700), "security": oct(0o700), "node.log": oct(0o600)}
    with dd.open_log() as log:
        log.write(b"new\n")
    assert (path / "node.log").read_text() == "old\nnew\n"


def test_open_log_creates_and_keeps_node_log_0600(tmp_path):
    dd = DataDir(tmp_path / "d")
    dd.prepare()
    old = os.umask(0o022)  # a usual umask would make open() files 0644
    try:
        with dd.open_log() as log:
            log.write(b"line\n")
        os.chmod(dd.log_path, 0o644)
        with dd.open_log() as log:  # `up --detach` on a log an older version left 0644
            log.write(b"more\n")
    finally:
        os.umask(old)
    assert os.stat(dd.log_path).st_mode & 0o777 == 0o600
