"""A node's trust boundaries, with real `p2pswarm up` processes: a task (run as another user by a
root node) can read no key and cannot open the API socket; the data dir is made private at every
start, node.log is 0600 and no log line holds the join token."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from p2pswarm.runtime import taskuser
from p2pswarm.testing.localcluster import REPO, LocalCluster, free_host, free_port, wait_until

from .cli_results import ok

TRESPASS = str(REPO / "tests" / "apps" / "trespass.py")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def task_python() -> str | None:
    """A Python that a task user can run (the tests' own may live under /root, which is 0700)."""
    for path in ("/usr/bin/python3", "/bin/python3", shutil.which("python3") or ""):
        if path and os.path.exists(path) and taskuser.runnable_by_others(path):
            return path
    return None


@pytest.fixture
def open_tmp():
    """A dir that other users can traverse (pytest's tmp is 0700): the data dir's own mode must be
    what keeps a task out, not the directories above it."""
    path = Path(tempfile.mkdtemp(prefix="p2ps-trust-", dir="/tmp"))
    os.chmod(path, 0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def report(cluster: LocalCluster, data_dir: Path) -> dict | None:
    """The JSON line the trespass task printed (from `service logs`), or None yet."""
    out = cluster.cli("service", "logs", "trespass", "--data-dir", str(data_dir))
    for line in out.stdout.splitlines():
        if "{" in line:
            return json.loads(line[line.index("{"):])
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="a node runs tasks as another user only when it runs as root")
def test_a_task_cannot_read_the_keys_or_open_the_api_socket(open_tmp):
    python = task_python()
    if python is None:
        pytest.skip("no Python interpreter that an unprivileged task user can run")
    cluster = LocalCluster(open_tmp, isolate_tasks=True)
    try:
        node = cluster.start(0)
        wait_until(node.info, 30, "the node's API")
        security = node.data_dir / "security"
        assert (security / "cluster.key").is_file() and (security / "curve.key").is_file()
        ok(cluster.cli("service", "create", "trespass", "--detach", "--data-dir", str(node.data_dir), "--",
                       python, TRESPASS, str(node.data_dir), timeout=120))
        seen = wait_until(lambda: report(cluster, node.data_dir), 60, "the task's report in its log")
        task_dirs = list((node.data_dir / "tasks").iterdir())
        assert len(task_dirs) == 1
        logs = [task_dirs[0] / "stdout.log", task_dirs[0] / "stderr.log"]
        assert all(mode(p) == 0o600 and os.stat(p).st_uid == 0 for p in logs)  # the node's, written for the task
        home = Path(seen["home"])
        assert os.stat(home).st_uid == seen["uid"] and mode(home) == 0o700
        assert "tasks run as user" in node.log() and "isolation is off" not in node.log()
    finally:
        cluster.close()
    assert not home.exists()  # the tasks' homes live outside the data dir; the harness removed them
    assert seen["uid"] != 0
    attempts = {k: seen[k] for k in ("cluster.key", "curve.key", "api.sock", "list")}
    assert attempts == dict.fromkeys(attempts, "PermissionError")
    assert mode(node.data_dir) == 0o700
    # the task still has a place of its own: $HOME, also its working directory, outside the data dir
    assert seen["write_home"] == "ok" and seen["write_cwd"] == "ok" and seen["cwd"] == seen["home"]
    assert Path(node.data_dir) not in home.parents


def test_an_old_data_dir_is_made_private_and_no_log_line_holds_the_token(cluster):
    data_dir = cluster.tmp / "old"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)  # made by hand, or by a version that set 0700 only at creation
    log = data_dir / "node.log"
    log.write_text("a line of an earlier run\n")
    os.chmod(log, 0o644)
    host = free_host()
    addr = f"{host}:{free_port(host)}"
    up = cluster.cli("up", "--detach", "--data-dir", str(data_dir), "--bind", addr, "--preset", "test")
    cluster.track_pid_file(data_dir)
    assert up.returncode == 0, up.stderr
    token = ok(cluster.cli("cluster", "join-token", "--quiet", "--data-dir", str(data_dir))).stdout.strip()
    assert token.startswith("P2PS-1-")
    assert f"--token {token}" in up.stdout  # the operator still sees it, on the terminal
    assert mode(data_dir) == 0o700 and mode(log) == 0o600
    ok(cluster.cli("down", "--data-dir", str(data_dir)))
    text = log.read_text()
    assert "created secure cluster" in text and "a line of an earlier run" in text
    secret = token.rsplit("-", 1)[1]
    assert token not in text and secret not in text
