"""Named volumes and bind mounts on a node (p2pswarm.runtime.volumes), and process tasks that use them."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from p2pswarm.cluster.workload import Mount
from p2pswarm.runtime import mountns, volumes
from p2pswarm.runtime.base import TaskSpec
from p2pswarm.runtime.process import ProcessConfig, ProcessRuntime
from p2pswarm.runtime.taskuser import TaskUser
from p2pswarm.runtime.volumes import MountError, Volumes, env_name, refusal, resolve

pytestmark = pytest.mark.timeout(60)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="changing a volume's owner needs root")
NODE = "node-a"


def task(task_id: str, *mounts: str, command: tuple[str, ...] = ("true",)) -> TaskSpec:
    return TaskSpec(task_id, "web", 1, NODE, command, mounts=tuple(Mount.parse(m) for m in mounts))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_named_volume_is_made_on_first_use_and_kept(tmp_path):
    [first] = resolve(task("t1", "source=data,target=/data"), NODE, None, None, tmp_path)
    assert first.source == tmp_path / NODE / "data" and first.target == "/data" and not first.readonly
    assert first.source.is_dir() and mode(first.source) == 0o755  # no user known: a new Docker volume's mode
    (first.source / "kept").write_text("x")
    [again] = resolve(task("t2", "source=data,target=/srv,readonly"), NODE, os.geteuid(), os.getegid(), tmp_path)
    assert again.source == first.source and again.readonly and (again.source / "kept").read_text() == "x"
    assert Volumes(tmp_path, NODE).names() == ["data"] and Volumes(tmp_path, "node-b").names() == []


def test_parents_are_traversable_but_not_listable(tmp_path):
    resolve(task("t1", "source=data,target=/data"), NODE, os.geteuid(), os.getegid(), tmp_path / "vols")
    assert mode(tmp_path / "vols") == mode(tmp_path / "vols" / NODE) == 0o711
    assert mode(tmp_path / "vols" / NODE / "data") == 0o700


@root_only
def test_a_volume_is_owned_by_the_tasks_user(tmp_path):
    nobody = pwd.getpwnam("nobody")
    [m] = resolve(task("t1", "source=data,target=/data"), NODE, nobody.pw_uid, nobody.pw_gid, tmp_path)
    st = os.stat(m.source)
    assert (st.st_uid, st.st_gid, mode(m.source)) == (nobody.pw_uid, nobody.pw_gid, 0o700)
    assert os.stat(tmp_path / NODE).st_uid == 0
    resolve(task("t2", "source=data,target=/data"), NODE, 0, 0, tmp_path)  # another user takes it over
    assert os.stat(m.source).st_uid == 0


def test_a_missing_bind_source_fails_the_task_in_one_line(tmp_path):
    [m] = resolve(task("t1", f"type=bind,source={tmp_path},target=/host,ro"), NODE, None, None, tmp_path / "v")
    assert (m.source, m.target, m.readonly) == (tmp_path, "/host", True)
    with pytest.raises(MountError) as err:
        resolve(task("t1", "type=bind,source=/srv/no-such-p2ps,target=/x"), NODE, None, None, tmp_path / "v")
    assert str(err.value) == "bind source path does not exist: /srv/no-such-p2ps"


def test_a_volume_path_taken_by_a_file_is_one_line(tmp_path):
    (tmp_path / NODE).mkdir(mode=0o711)
    (tmp_path / NODE / "data").write_text("not a dir")
    with pytest.raises(MountError, match=f"cannot make volume data in {tmp_path / NODE}: .* is not a directory"):
        resolve(task("t1", "source=data,target=/data"), NODE, None, None, tmp_path)


@pytest.mark.parametrize("target,name", [
    ("/data", "P2PSWARM_MOUNT_DATA"), ("/var/lib/x", "P2PSWARM_MOUNT_VAR_LIB_X"),
    ("/my-data.d", "P2PSWARM_MOUNT_MY_DATA_D"), ("/srv/app2/Cache", "P2PSWARM_MOUNT_SRV_APP2_CACHE"),
])
def test_env_names_follow_the_target(target, name):
    assert env_name(target) == name


def test_create_refuses_a_missing_bind_source_and_clashing_env_names(tmp_path):
    assert refusal([Mount("bind", str(tmp_path), "/a"), Mount("volume", "v", "/b")], process=True) is None
    missing = refusal([Mount("bind", "/srv/no-such-p2ps", "/a")], process=False)
    assert missing.startswith("mounts: bind source path does not exist: /srv/no-such-p2ps (on the node that")
    clash = [Mount("volume", "a", "/my-data"), Mount("volume", "b", "/my_data")]
    assert refusal(clash, process=True) == ("mounts: targets /my-data and /my_data both give a process task "
                                            "$P2PSWARM_MOUNT_MY_DATA; change one of them")
    assert refusal(clash, process=False) is None  # a container sees each at its own target


def test_size_remove_and_cleanup_of_a_nodes_volumes(tmp_path):
    vols = Volumes(tmp_path, NODE)
    path = vols.ensure("data", None, None)
    (path / "sub").mkdir()
    (path / "sub" / "f").write_bytes(b"x" * 10000)
    os.symlink("/etc", path / "link")
    size, complete = vols.size("data")
    assert complete and size >= 10000
    assert vols.remove("data") and not path.exists() and Path("/etc").is_dir()
    assert not vols.remove("data")
    vols.ensure("other", None, None)
    datadir = tmp_path / "d"
    datadir.mkdir()
    (datadir / "node.json").write_text('{"id": "%s"}' % NODE)
    volumes.remove_volumes_of(datadir, tmp_path)
    assert not (tmp_path / NODE).exists() and tmp_path.exists()


WRITE = 'echo "$1" > "$P2PSWARM_MOUNT_VAR_DATA/note" && cat "$P2PSWARM_MOUNT_VAR_DATA/note"'


def _run_twice(rt: ProcessRuntime) -> tuple[list, str]:
    """Two runs of a task (two task ids, as a restart makes): the first writes to its volume, the second reads."""
    async def main():
        ends = []
        for task_id, cmd in (("t1", WRITE), ("t2", 'cat "$P2PSWARM_MOUNT_VAR_DATA/note"')):
            spec = task(task_id, "source=data,target=/var/data", command=("/bin/sh", "-c", cmd, "sh", "kept"))
            ends.append(await rt.wait(await rt.start(spec)))
        return ends
    ends = asyncio.run(main())
    return ends, "".join(p.read_text() for p in rt.log_paths("t2")["stdout"])


def test_a_process_task_finds_its_volume_again_after_a_restart(tmp_path):
    rt = ProcessRuntime(tmp_path / "data", ProcessConfig(volumes_root=tmp_path / "vols"))
    ends, second = _run_twice(rt)
    assert all(e.ok for e in ends), ends
    assert second == "kept\n" and (tmp_path / "vols" / NODE / "data" / "note").read_text() == "kept\n"


@root_only
def test_a_task_user_writes_its_volume_and_the_next_run_reads_it(tmp_path):
    nobody = pwd.getpwnam("nobody")
    user = TaskUser("nobody", nobody.pw_uid, nobody.pw_gid)
    vols = Path(tempfile.mkdtemp(prefix="p2ps-vols-"))  # under /tmp: a path the task user can traverse
    try:
        os.chmod(vols, 0o711)
        rt = ProcessRuntime(tmp_path / "data", ProcessConfig(task_user=user, task_homes=tmp_path / "homes",
                                                             volumes_root=vols / "root"))
        ends, second = _run_twice(rt)
        assert all(e.ok for e in ends), (ends, "".join(p.read_text() for p in rt.log_paths("t1")["stderr"]))
        assert second == "kept\n" and os.stat(vols / "root" / NODE / "data" / "note").st_uid == user.uid
    finally:
        shutil.rmtree(vols)


def test_a_process_task_with_a_missing_bind_source_fails_with_one_line(tmp_path):
    rt = ProcessRuntime(tmp_path / "data", ProcessConfig(volumes_root=tmp_path / "vols"))

    async def main():
        return await rt.wait(await rt.start(task("t1", "type=bind,source=/srv/no-such-p2ps,target=/x")))
    ended = asyncio.run(main())
    assert ended.error == "bind source path does not exist: /srv/no-such-p2ps"
    assert "".join(p.read_text() for p in rt.log_paths("t1")["stderr"]) == f"p2pswarm: {ended.error}\n"


@pytest.mark.skipif(not mountns.available(), reason="read-only views need root with mount namespaces")
def test_a_readonly_mount_is_read_only_for_the_process_task_only(tmp_path):
    rt = ProcessRuntime(tmp_path / "data", ProcessConfig(volumes_root=tmp_path / "vols"))
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("seen\n")
    script = ('cat "$P2PSWARM_MOUNT_RO/in"; echo x > "$P2PSWARM_MOUNT_RO/out" 2>/dev/null && echo wrote-ro; '
              'echo x > "$P2PSWARM_MOUNT_RW/out" && echo wrote-rw; echo x > "$P2PSWARM_MOUNT_V/out" || echo denied-v')

    async def main():
        spec = task("t1", f"type=bind,source={shared},target=/ro,readonly", "source=vol,target=/v,readonly",
                    f"type=bind,source={tmp_path / 'data'},target=/rw", command=("/bin/sh", "-c", script))
        return await rt.wait(await rt.start(spec))
    ended = asyncio.run(main())
    assert ended.ok, ended
    assert "".join(p.read_text() for p in rt.log_paths("t1")["stdout"]).split() == ["seen", "wrote-rw", "denied-v"]
    assert not (shared / "out").exists() and (tmp_path / "data" / "out").exists()
    (shared / "by-node").write_text("the node's own view stays writable")
    assert str(shared) not in open("/proc/self/mountinfo").read()


def test_without_mount_namespaces_readonly_is_a_warning_not_a_failure(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(mountns, "available", lambda: False)
    mounts = volumes.for_process(task("t1", "source=v,target=/v,readonly"), None, None, tmp_path)
    assert mounts.readonly == () and mounts.env == {"P2PSWARM_MOUNT_V": str(tmp_path / NODE / "v")}
    assert "its read-only mounts (/v) are writable" in caplog.text
