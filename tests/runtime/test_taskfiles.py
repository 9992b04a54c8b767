"""A task's secrets and configs: private files of the task's user, in memory, gone when the task ends."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import stat

import pytest

from p2pswarm.cluster.workload import FileRef
from p2pswarm.runtime import reaper, taskuser
from p2pswarm.runtime.base import TaskFile, TaskSpec
from p2pswarm.runtime.process import ProcessConfig, ProcessRuntime
from p2pswarm.runtime.taskfiles import MOUNT_BASE, TaskFiles, TaskFilesError

pytestmark = pytest.mark.timeout(60)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounting and switching users need root")
FILES = (TaskFile("secret", FileRef("db-pass", "db-pass", 0o400), b"hunter2"),
         TaskFile("secret", FileRef("tls", "tls.key", 0o440), b"-----KEY-----"),
         TaskFile("config", FileRef("nginx", "/etc/nginx/nginx.conf", 0o444), b"listen 80;"))


def spec(task_id: str = "t1", files=FILES, command=("true",)) -> TaskSpec:
    return TaskSpec(task_id, "web", 1, "node-a", command, files=files)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_are_written_with_their_modes_and_removed(tmp_path):
    files = TaskFiles(tmp_path / "data", base=tmp_path / "run", mount=False)
    dirs = files.materialize(spec())
    assert dirs.secrets == files.path("t1") / "secrets" and dirs.configs == files.path("t1") / "configs"
    assert (dirs.secrets / "db-pass").read_bytes() == b"hunter2" and (dirs.secrets / "tls.key").exists()
    assert (dirs.configs / "nginx.conf").read_bytes() == b"listen 80;"
    assert dirs.config_files == ((dirs.configs / "nginx.conf", "/etc/nginx/nginx.conf"),)
    assert dirs.env() == {"P2PSWARM_SECRETS": str(dirs.secrets), "P2PSWARM_CONFIGS": str(dirs.configs)}
    assert (mode(files.path("t1")), mode(dirs.secrets)) == (0o700, 0o700)
    assert [mode(dirs.secrets / n) for n in ("db-pass", "tls.key")] == [0o400, 0o440]
    assert mode(dirs.configs / "nginx.conf") == 0o444
    again = files.materialize(spec())  # a later run of the task starts from fresh files
    assert again == dirs
    files.remove("t1")
    assert not files.path("t1").exists()
    assert files.materialize(spec(files=())).env() == {} and not files.path("t1").exists()


def test_a_file_the_node_could_not_open_fails_the_task_in_one_line(tmp_path):
    files = TaskFiles(tmp_path / "data", base=tmp_path / "run", mount=False)
    broken = FILES[:1] + (TaskFile("secret", FileRef("api", "api", 0o400), b"", "secret api no longer exists"),)
    with pytest.raises(TaskFilesError, match="^secret api: secret api no longer exists$"):
        files.materialize(spec(files=broken))
    assert not files.path("t1").exists()


def test_leftovers_of_a_previous_life_are_removed(tmp_path):
    files = TaskFiles(tmp_path / "data", base=tmp_path / "run", mount=False)
    for task in ("t1", "t2", "t3"):
        files.materialize(spec(task))
    files.remove_all_but({"t2"})
    assert sorted(p.name for p in files.root.iterdir()) == ["t2"]


def test_a_directory_others_may_write_is_refused(tmp_path):
    (tmp_path / "run").mkdir(mode=0o777)
    os.chmod(tmp_path / "run", 0o777)  # like /dev/shm without the sticky bit: someone could swap our files
    files = TaskFiles(tmp_path / "data", base=tmp_path / "run", mount=False)
    with pytest.raises(TaskFilesError, match="only it may write"):
        files.materialize(spec())


@root_only
def test_a_root_node_mounts_a_private_tmpfs_owned_by_the_task_user(tmp_path):
    nobody = pwd.getpwnam("nobody")
    files = TaskFiles(tmp_path / "data", base=tmp_path / "run", mount=True)
    dirs = files.materialize(spec(), nobody.pw_uid, nobody.pw_gid)
    folder = files.path("t1")
    try:
        assert os.path.ismount(folder) and files.mounting
        assert os.stat(folder).st_uid == nobody.pw_uid and mode(folder) == 0o700
        assert os.stat(dirs.secrets / "db-pass").st_uid == nobody.pw_uid
        with open("/proc/self/mounts") as mounts:
            assert any(line.split()[1] == str(folder) and line.split()[2] == "tmpfs" for line in mounts)
    finally:
        files.remove("t1")
    assert not os.path.ismount(folder) and not folder.exists()


@root_only
def test_a_process_task_as_its_user_reads_its_files_through_the_environment(tmp_path):
    nobody = pwd.getpwnam("nobody")
    user = taskuser.TaskUser("nobody", nobody.pw_uid, nobody.pw_gid)
    rt = ProcessRuntime(tmp_path / "data", ProcessConfig(task_user=user, task_homes=tmp_path / "homes"))
    script = 'cat "$P2PSWARM_SECRETS/db-pass"; echo; cat "$P2PSWARM_CONFIGS/nginx.conf"; echo; echo "$P2PSWARM_SECRETS"'

    async def main():
        handle = await rt.start(spec(command=("/bin/sh", "-c", script)))
        return await rt.wait(handle)

    try:
        ended = asyncio.run(main())
        assert ended.ok, ended
        out = "".join(p.read_text() for p in rt.log_paths("t1")["stdout"]).split()
        assert out == ["hunter2", "listen", "80;", str(rt.files.path("t1") / "secrets")]
        assert not rt.files.path("t1").exists()  # unmounted and deleted once the task ended
        assert rt.files.root.parent == MOUNT_BASE
        assert not rt.files.root.exists()  # nor the node's directory, with no task left in it
    finally:
        rt.files.remove_all_but(set())


def test_the_reaper_removes_the_files_of_a_dead_nodes_tasks(tmp_path):
    files = TaskFiles(tmp_path / "data", base=tmp_path / "run", mount=os.geteuid() == 0)
    for task in ("t1", "t2"):
        files.materialize(spec(task))
    out = io.StringIO()
    reaper.run(io.BytesIO(json.dumps({"step": "task-files", **files.to_json()}).encode() + b"\n"), out)
    assert "removed the secrets and configs of tasks t1, t2" in out.getvalue()
    assert not files.root.exists() and not any(os.path.ismount(files.path(t)) for t in ("t1", "t2"))
