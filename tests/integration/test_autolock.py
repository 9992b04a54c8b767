"""Encryption at rest end to end: `up --autolock`, nothing readable on disk, a locked restart, `unlock`."""

from __future__ import annotations

import os
import re
import signal

from p2pswarm.security.autolock import format_unlock_key, new_unlock_key
from p2pswarm.testing.localcluster import wait_until


def ok(result):
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def test_autolock_encrypts_locks_on_restart_and_unlocks(cluster):
    node = cluster.node(0)
    dd = ["--data-dir", str(node.data_dir)]
    start = ["up", "--detach", *dd, "--bind", node.addr, "--name", "n0", "--preset", "test"]

    def track():
        cluster.track_pid_file(node.data_dir)  # the fixture kills it at teardown
    try:
        up = cluster.cli(*start, "--autolock")
        track()
        ok(up)
        key = re.search(r"P2PSU-1-[A-Z2-7]+", up.stderr).group(0)
        assert "unlock` needs it after every restart" in up.stderr
        assert key not in (node.data_dir / "node.log").read_text(errors="replace")
        ok(cluster.cli("kv", "put", "greeting", "MARKER-XYZ-42", *dd))
        ok(cluster.cli("down", *dd))

        on_disk = {p: p.read_bytes() for p in (node.data_dir / "raft").rglob("*") if p.is_file()}
        assert on_disk and not [p for p, data in on_disk.items() if b"MARKER-XYZ" in data]
        for name in ("curve.key", "cluster.key"):
            assert (node.data_dir / "security" / name).read_bytes().startswith(b"p2pswarm-sealed 1\n")

        again = ok(cluster.cli(*start))
        track()
        assert "locked" in again.stdout
        assert node.info()["state"] == "locked"
        assert "is locked" in cluster.cli("kv", "get", "greeting", *dd).stderr

        wrong = cluster.tmp / "wrong.key"
        wrong.write_text(format_unlock_key(new_unlock_key()) + "\n")
        bad = cluster.cli("unlock", "--key-file", str(wrong), *dd)
        assert bad.returncode == 1
        assert bad.stderr.strip().splitlines() == ["error: wrong unlock key for this node's data "
                                                   "(or the lock file is corrupt)"]
        assert node.info()["state"] == "locked"

        right = cluster.tmp / "right.key"
        right.write_text(key + "\n")
        assert ok(cluster.cli("unlock", "--key-file", str(right), *dd)).stdout.strip() == "node unlocked"

        def value():
            got = cluster.cli("kv", "get", "greeting", *dd, timeout=30)
            return got.returncode == 0 and got.stdout.strip() == "MARKER-XYZ-42"
        wait_until(value, 60, "the KV value back after unlock")
        assert node.info()["state"] == "running"
        ok(cluster.cli("down", *dd))
    finally:
        try:  # a node still running (the test failed half way): kill it by its pid
            os.kill(int((node.data_dir / "node.pid").read_text().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def test_autolock_turned_on_for_a_used_data_dir_keeps_its_data(cluster):
    node = cluster.node(0)
    dd = ["--data-dir", str(node.data_dir)]
    start = ["up", "--detach", *dd, "--bind", node.addr, "--name", "n0", "--preset", "test"]

    def value():
        got = cluster.cli("kv", "get", "greeting", *dd, timeout=30)
        return got.returncode == 0 and got.stdout.strip() == "MARKER-XYZ-42"
    try:
        ok(cluster.cli(*start))
        cluster.track_pid_file(node.data_dir)
        wait_until(lambda: cluster.cli("kv", "put", "greeting", "MARKER-XYZ-42", *dd, timeout=30).returncode == 0,
                   60, "a KV write on the plaintext node")
        ok(cluster.cli("down", *dd))
        assert any(b"MARKER-XYZ" in p.read_bytes() for p in (node.data_dir / "raft").rglob("*") if p.is_file())

        up = ok(cluster.cli(*start, "--autolock"))
        cluster.track_pid_file(node.data_dir)
        assert "encrypting the Raft log, snapshot and key files already in" in up.stderr
        key = re.search(r"P2PSU-1-[A-Z2-7]+", up.stderr).group(0)
        wait_until(value, 60, "the KV value written before autolock")
        ok(cluster.cli("down", *dd))

        on_disk = {p: p.read_bytes() for p in node.data_dir.rglob("*") if p.is_file() and "raft" in p.parts[-3:]}
        assert on_disk and not [p for p, data in on_disk.items() if b"MARKER-XYZ" in data]
        assert sorted(p.name for p in node.data_dir.iterdir() if p.name.startswith("raft")) == ["raft"]
        for name in ("curve.key", "cluster.key"):
            assert (node.data_dir / "security" / name).read_bytes().startswith(b"p2pswarm-sealed 1\n")

        key_file = cluster.tmp / "migrated.key"
        key_file.write_text(key + "\n")
        ok(cluster.cli(*start, "--unlock-key-file", str(key_file)))
        cluster.track_pid_file(node.data_dir)
        wait_until(value, 60, "the KV value after a restart with the unlock key")
        ok(cluster.cli("down", *dd))
    finally:
        try:
            os.kill(int((node.data_dir / "node.pid").read_text().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
