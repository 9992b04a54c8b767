"""Tasks of a root node run as an unprivileged user, in a home of their own; their logs stay the node's."""

from __future__ import annotations

import asyncio
import os
import pwd
import stat

import pytest

from p2pswarm.runtime import taskuser
from p2pswarm.runtime.base import HealthCheck, TaskSpec
from p2pswarm.runtime.health import probe
from p2pswarm.runtime.logs import RotatingLog
from p2pswarm.runtime.process import ProcessConfig, ProcessRuntime

pytestmark = pytest.mark.timeout(60)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
SCRIPT = 'id -u; echo "$HOME"; pwd; echo mine > here && echo wrote; cat "$1" 2>/dev/null || echo denied'


def test_task_logs_are_created_0600(tmp_path):
    old = os.umask(0o022)
    try:
        log = RotatingLog(tmp_path / "stdout.log", max_bytes=100, keep=2)
        log.write(b"x" * 150)  # rotates: the new files are private too
        log.close()
    finally:
        os.umask(old)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["stdout.idx", "stdout.idx.1", "stdout.log", "stdout.log.1"]
    assert all(stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o600 for f in files)


def test_not_root_means_no_isolation_and_says_why(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    user, why = taskuser.resolve(None)
    assert user is None and "isolation is off" in why and "not root" in why


@root_only
def test_unknown_task_user_is_one_line():
    with pytest.raises(taskuser.TaskUserError, match="does not exist; create it"):
        taskuser.resolve("no-such-user-p2ps")
    assert taskuser.resolve("root")[0] is None


@root_only
def test_task_runs_as_the_task_user_in_its_own_home(tmp_path):
    nobody = pwd.getpwnam("nobody")
    user = taskuser.TaskUser("nobody", nobody.pw_uid, nobody.pw_gid)
    secret = tmp_path / "data" / "secret"
    secret.parent.mkdir(mode=0o700)
    secret.write_text("key")
    rt = ProcessRuntime(tmp_path / "data", ProcessConfig(task_user=user, task_homes=tmp_path / "homes"))
    spec = TaskSpec("t1", "web", 1, "node-a", ("/bin/sh", "-c", SCRIPT, "sh", str(secret)),
                    health=HealthCheck("exec", command=("/bin/sh", "-c", "test $(id -u) = " + str(user.uid)),
                                       interval=0.1))

    async def main():
        handle = await rt.start(spec)
        passed, detail = await probe(spec.health, None, run_as=handle.run_as)
        return handle, await rt.wait(handle), passed, detail

    handle, ended, passed, detail = asyncio.run(main())
    home = tmp_path / "homes" / "t1"
    assert ended.ok, ended
    lines = "".join(p.read_text() for p in rt.log_paths("t1")["stdout"]).split()
    assert lines == [str(user.uid), str(home), str(home), "wrote", "denied"]
    assert os.stat(home).st_uid == user.uid and stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert os.stat(home / "here").st_uid == user.uid
    log = rt.log_paths("t1")["stdout"][0]
    assert os.stat(log).st_uid == 0 and stat.S_IMODE(os.stat(log).st_mode) == 0o600
    assert passed, detail  # an exec health probe runs as the task does
    rt.forget("t1")
    assert not home.exists() and not (tmp_path / "data" / "tasks" / "t1").exists()
