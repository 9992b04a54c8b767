"""Task cgroups: which version a machine offers, the limit files, killing a whole cgroup, the reaper."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest

from p2pswarm.runtime import cgroups, confine, reaper, taskuser
from p2pswarm.runtime.cgroups import Layout, Limits, NodeCgroups, TaskCgroup

from ..apps.support import PY, app, eventually, pid_gone

pytestmark = pytest.mark.timeout(60)
V1_SELF = "12:pids:/\n4:memory:/job/7\n2:cpu,cpuacct:/\n1:name=systemd:/init.scope\n0::/init.scope\n"
_ids = itertools.count()


def fake_root(tmp_path: Path, v2: str | None = None, unified: str | None = None, v1: tuple[str, ...] = ()) -> Path:
    """A directory shaped like /sys/fs/cgroup: v2 controllers at its root or in unified/, v1 hierarchies."""
    root = tmp_path / "cgroup"
    root.mkdir()
    if v2 is not None:
        (root / "cgroup.controllers").write_text(v2 + "\n")
    if unified is not None:
        (root / "unified").mkdir()
        (root / "unified" / "cgroup.controllers").write_text(unified + "\n")
    for controller in v1:
        (root / controller).mkdir()
        (root / controller / cgroups.V1_MARKERS[controller]).write_text("")
    (root / "memory" / "job" / "7").mkdir(parents=True, exist_ok=True)
    return root


def test_probe_prefers_v2_with_the_controllers(tmp_path):
    root = fake_root(tmp_path, v2="cpuset cpu io memory hugetlb pids", v1=("cpu", "memory", "pids"))
    assert cgroups.probe(root, "0::/\n", euid=0).kind == "cgroup-v2"
    layout = cgroups.locate(root, "0::/user.slice\n", euid=0)
    assert isinstance(layout, Layout) and layout.version == 2
    assert {p for _, p in layout.parents} == {root / "p2pswarm"}  # at the root: v2 has no internal processes


def test_probe_uses_v1_on_a_hybrid_machine_whose_v2_has_no_controllers(tmp_path):
    """This machine's shape: v2 at unified/ with nothing enabled, v1 cpu, memory, pids."""
    root = fake_root(tmp_path, unified="", v1=("cpu", "memory", "pids"))
    assert cgroups.probe(root, V1_SELF, euid=0).kind == "cgroup-v1"
    layout = cgroups.locate(root, V1_SELF, euid=0)
    assert isinstance(layout, Layout) and dict(layout.parents) == {
        "cpu": root / "cpu" / "p2pswarm", "memory": root / "memory" / "job" / "7" / "p2pswarm",
        "pids": root / "pids" / "p2pswarm"}  # nested under the node's own cgroup in each hierarchy


@pytest.mark.parametrize("shape, self_cgroup, euid, reason", [
    ({"v1": ("cpu", "memory", "pids")}, V1_SELF, 1000, "not root (uid 1000)"),
    ({"unified": "cpu memory"}, V1_SELF, 0, "cgroup v2 at {root}/unified lacks pids, and no cgroup v1 cpu hierarchy"),
    ({"v1": ("cpu", "memory")}, V1_SELF, 0, "no cgroup v2 mounted, and no cgroup v1 pids hierarchy at {root}/pids"),
    ({"v1": ("cpu", "memory", "pids")}, "0::/\n", 0, "no cgroup v1 cpu hierarchy"),
])
def test_probe_says_none_and_why(tmp_path, shape, self_cgroup, euid, reason):
    root = fake_root(tmp_path, **shape)
    isolation = cgroups.probe(root, self_cgroup, euid=euid)
    assert isolation.kind == "none" and reason.format(root=root) in isolation.reason


def test_v2_limit_files_hold_the_formulas(tmp_path):
    task = TaskCgroup(2, "t1", tuple((c, tmp_path) for c in cgroups.CONTROLLERS))
    for name in ("cpu.max", "memory.max", "memory.swap.max", "pids.max"):
        (tmp_path / name).write_text("")  # cgroupfs replaces a value on write; a plain file must start empty
    task.apply(Limits(cpu=0.25, memory=64 << 20, pids=12))
    assert (tmp_path / "cpu.max").read_text() == "25000 100000"  # quota = 0.25 × the 100 ms period
    assert (tmp_path / "memory.max").read_text() == str(64 << 20)
    assert (tmp_path / "memory.swap.max").read_text() == "0"  # no swapping past the limit
    assert (tmp_path / "pids.max").read_text() == "12"
    assert Limits(cpu=0.001).cpu_quota_us() == cgroups.MIN_CPU_QUOTA_US


def test_limits_read_as_people_write_them():
    assert cgroups.human_bytes(32 << 20) == "32MiB" and cgroups.human_bytes(3 << 29) == "1.5GiB"
    assert Limits(cpu=1.5, memory=64 << 20).describe() == "cpu 1.5, memory 64MiB"
    assert not Limits().any and Limits(pids=3).any


# --- against the machine's own cgroups (root) ------------------------------------------------------------------

@pytest.fixture
def node_cgroups():
    layout = cgroups.locate()
    if isinstance(layout, str):
        pytest.skip(f"no usable cgroups here: {layout}")
    node = NodeCgroups(layout, f"test{os.getpid()}x{next(_ids)}")
    yield node
    node.reap()  # kills whatever a failed test left in its cgroups


def test_real_limit_files_are_written(node_cgroups):
    task = node_cgroups.create("t1", Limits(cpu=0.5, memory=32 << 20, pids=10))
    if task.version == 1:
        assert (task.dir("cpu") / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (task.dir("cpu") / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert (task.dir("memory") / "memory.limit_in_bytes").read_text().strip() == str(32 << 20)
        memsw = task.dir("memory") / "memory.memsw.limit_in_bytes"
        assert not memsw.exists() or memsw.read_text().strip() == str(32 << 20)
    else:
        assert (task.dir("cpu") / "cpu.max").read_text().split() == ["50000", "100000"]
        assert (task.dir("memory") / "memory.max").read_text().strip() == str(32 << 20)
    assert (task.dir("pids") / "pids.max").read_text().strip() == "10"
    assert node_cgroups.task_ids() == ["t1"]


def _start_in(task: TaskCgroup, *argv: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, preexec_fn=confine.preexec(task.procs_files, None), **kw)


def test_kill_all_empties_a_cgroup_with_a_setsid_escapee(node_cgroups, pids):
    task = node_cgroups.create("t1", Limits())
    leader = _start_in(task, PY, app("escaper.py"), stdout=subprocess.PIPE, text=True)
    child, grandchild = map(int, leader.stdout.readline().split()[1:])
    leader.stdout.close()
    pids.extend([leader.pid, child, grandchild])
    assert task.pids() == {leader.pid, child, grandchild}  # the setsid escapee is still in the cgroup
    assert task.kill_all()
    leader.wait()
    assert task.pids() == set() and pid_gone(child) and pid_gone(grandchild)
    assert cgroups.remove_when_empty(task) and not any(d.exists() for d in task.dirs)


def test_a_stale_cgroup_of_the_same_task_is_emptied_and_remade(node_cgroups, pids):
    old = node_cgroups.create("t1", Limits(pids=3))
    sleeper = _start_in(old, "sleep", "60")
    pids.append(sleeper.pid)
    new = node_cgroups.create("t1", Limits())
    sleeper.wait(10)
    assert new.pids() == set() and (new.dir("pids") / "pids.max").read_text().strip() == "max"


def test_the_reaper_kills_every_task_of_its_node_and_removes_their_cgroups(node_cgroups, pids):
    sleepers = [_start_in(node_cgroups.create(t, Limits()), "sleep", "60") for t in ("a", "b")]
    pids.extend(s.pid for s in sleepers)
    plan = json.dumps({"step": "cgroups", **node_cgroups.to_json()}) + "\nnot json\n"
    out = io.StringIO()
    assert reaper.run(io.BytesIO(plan.encode()), out) == 0  # EOF at once: the node is gone
    assert [s.wait(10) for s in sleepers] == [-9, -9]
    assert out.getvalue() == f"p2pswarm reaper: node {node_cgroups.node_id} is gone: killed tasks a, b\n"
    assert not any(d.exists() for d in node_cgroups.node_dirs())


def test_a_watchdog_closed_cleanly_runs_its_steps_and_exits(node_cgroups, pids):
    sleeper = _start_in(node_cgroups.create("a", Limits()), "sleep", "60")
    pids.append(sleeper.pid)
    watchdog = reaper.Watchdog()
    watchdog.start()
    pids.append(watchdog.pid)
    watchdog.add("cgroups", **node_cgroups.to_json())  # a step added after the start travels too
    with pytest.raises(ValueError):
        watchdog.add("no-such-step")
    watchdog.close()
    assert sleeper.wait(10) == -9
    eventually(lambda: not any(d.exists() for d in node_cgroups.node_dirs()), what="the node's cgroups to go")


@pytest.mark.skipif(os.geteuid() != 0, reason="users are looked up for a root node")
def test_a_service_user_is_resolved_or_refused_in_one_line():
    nobody = taskuser.lookup("nobody")
    assert nobody.uid == 65534 and taskuser.lookup("65534:0") == taskuser.TaskUser("nobody", 65534, 0)
    assert taskuser.lookup("54321").gid == 54321  # a bare uid without a passwd entry: its own number as gid
    with pytest.raises(taskuser.TaskUserError, match="^user 'no-such-user-p2ps' does not exist on this node$"):
        taskuser.lookup("no-such-user-p2ps")
    with pytest.raises(taskuser.TaskUserError, match="^group 'no-such-group' does not exist"):
        taskuser.lookup("nobody:no-such-group")
    with pytest.raises(taskuser.TaskUserError, match="is root"):
        taskuser.lookup("0")


def test_without_cgroups_the_reaper_kills_the_recorded_task_groups_only(tmp_path, pids):
    """A node that cannot isolate: its reaper kills each task's process group, never a stranger's."""
    env = dict(os.environ, P2PSWARM_TASK_ID="t1")
    task = subprocess.Popen(["sleep", "60"], start_new_session=True, env=env)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    pids.extend([task.pid, stranger.pid])
    for task_id, proc in (("t1", task), ("t2", stranger)):
        (tmp_path / task_id).mkdir()
        (tmp_path / task_id / "pid").write_text(f"{proc.pid}\n")
    plan = json.dumps({"step": "process-groups", "tasks_dir": str(tmp_path)}) + "\n"
    out = io.StringIO()
    reaper.run(io.BytesIO(plan.encode()), out)
    assert task.wait(10) == -9 and stranger.poll() is None
    assert "killed the process groups of tasks t1" in out.getvalue()


def test_a_v2_cgroup_is_killed_through_cgroup_kill(pids):
    """Real v2 where mounted: on a hybrid machine the unified hierarchy has no controllers, but it
    still groups processes and has ``cgroup.kill``, the v2 way of killing a whole cgroup."""
    mounts = [m for m in (cgroups.ROOT, cgroups.ROOT / "unified") if (m / "cgroup.controllers").exists()]
    if os.geteuid() != 0 or not mounts:
        pytest.skip("needs root and a cgroup v2 mount")
    where = mounts[0] / f"p2pswarm-test{os.getpid()}"
    where.mkdir()
    try:
        if not (where / "cgroup.kill").exists():
            pytest.skip("this kernel has no cgroup.kill (before 5.14)")
        task = TaskCgroup(2, "t1", tuple((c, where) for c in cgroups.CONTROLLERS))
        leader = _start_in(task, PY, app("escaper.py"), stdout=subprocess.PIPE, text=True)
        pids.extend([leader.pid, *map(int, leader.stdout.readline().split()[1:])])
        leader.stdout.close()
        assert len(task.pids()) == 3
        assert task.kill_all() and leader.wait(10) == -9
    finally:
        cgroups.remove_when_empty(TaskCgroup(2, "t1", (("pids", where),)))
    assert not where.exists()
