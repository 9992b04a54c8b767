"""Process workloads on 3 real nodes: a memory limit that kills and a restart policy that restarts, a named
volume that outlives its task, a `setsid` grandchild that dies with its task, and a SIGKILLed node that leaves
no task process behind. (Image services on real nodes: test_containers.py.)

One cluster for the module (starting three nodes costs seconds); the node-killing test runs last.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from p2pswarm.runtime import cgroups
from p2pswarm.testing.localcluster import LocalCluster, wait_until

pytestmark = pytest.mark.timeout(300)

ESCAPE = "setsid sleep 3600 & exec sleep 3600"
"""A task whose child leaves its session and process group (only the task's cgroup still holds it)."""
HOG = "b = bytearray(256 << 20); b[::4096] = b'x' * ((256 << 20) // 4096)"
ROOT = pytest.mark.skipif(os.geteuid() != 0 or cgroups.probe().kind == "none",
                          reason="limits and whole-task kills need a root node with cgroups")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("w", numbered=True))
    try:
        cluster.start_group(3)
        yield cluster
    finally:
        cluster.close()


def cli(lab: LocalCluster, group: str, command: str, *args: str):
    """``p2pswarm GROUP COMMAND`` on node n0 (its data dir before ARGS, which may end with ``-- COMMAND``)."""
    result = lab.cli(group, command, "--data-dir", str(lab.nodes[0].data_dir), *args, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def tasks(lab: LocalCluster, service: str) -> list[dict]:
    result = lab.cli("service", "ps", service, "--format", "json", "--data-dir", str(lab.nodes[0].data_dir))
    return json.loads(result.stdout) if result.returncode == 0 else []


def running(lab: LocalCluster, service: str, count: int) -> list[dict] | None:
    rows = [r for r in tasks(lab, service) if r.get("current") and r["desired"] == "running"]
    return rows if len(rows) == count and all(r["state"] == "running" and r["port"] for r in rows) else None


@ROOT
def test_a_memory_hog_is_killed_by_its_limit_and_restarted(lab):
    cli(lab, "service", "create", "hog", "--limit-memory", "32M", "--restart-delay", "200ms", "--detach",
        "--", sys.executable, "-c", HOG)

    def killed_twice():
        ended = [r for r in tasks(lab, "hog") if r["state"] == "failed" and "memory limit" in (r.get("error") or "")]
        return ended if len(ended) >= 2 else None
    ended = wait_until(killed_twice, 90, "two tasks of the hog killed by their memory limit")
    assert "32MiB" in ended[0]["error"], ended[0]
    cli(lab, "service", "rm", "hog")


def test_a_named_volume_keeps_a_file_across_task_restarts(lab):
    cli(lab, "service", "create", "notes", "--mount", "type=volume,source=notes,target=/notes",
        "--restart-delay", "200ms", "--constraint", "node.name==n2", "--detach",
        "--", "sh", "-c", 'echo "run $P2PSWARM_TASK_ID" >> "$P2PSWARM_MOUNT_NOTES/log"; sleep 0.5; exit 3')

    def lines():
        out = lab.cli("volume", "ls", "--format", "json", "--data-dir", str(lab.nodes[2].data_dir))
        volumes = json.loads(out.stdout)["volumes"] if out.returncode == 0 else []
        path = next((Path(v["path"]) for v in volumes if v.get("name") == "notes" and v.get("path")), None)
        try:
            found = path.joinpath("log").read_text().splitlines() if path is not None else []
        except OSError:
            return None
        return found if len(found) >= 3 else None
    found = wait_until(lines, 90, "three runs writing to the same volume")
    assert len({line.split()[1] for line in found}) >= 3  # three different tasks, one file
    cli(lab, "service", "rm", "notes")


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (``P2PSWARM_NODE=…``: tasks and all they forked)."""
    wanted, found = marker.encode(), []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


@ROOT
def test_a_setsid_grandchild_dies_with_its_task(lab, task_pids):
    cli(lab, "service", "create", "escaper", "--detach", "--", "sh", "-c", ESCAPE)
    wait_until(lambda: running(lab, "escaper", 1), 60, "escaper running")
    pids = wait_until(lambda: (lambda p: p if len(p) >= 2 else None)(processes_with("P2PSWARM_SERVICE=escaper")),
                      30, "the task and its setsid grandchild")
    task_pids.update(pids)
    cli(lab, "service", "rm", "escaper")
    wait_until(lambda: not processes_with("P2PSWARM_SERVICE=escaper"), 20, "every process of the task gone")


@ROOT
def test_a_killed_node_leaves_no_process_behind(lab, task_pids):
    cli(lab, "service", "create", "everywhere", "--mode", "global", "--detach", "--", "sh", "-c", ESCAPE)
    rows = wait_until(lambda: running(lab, "everywhere", 3), 60, "a task on every node")
    victim = lab.nodes[2]
    victim_id = next(r["node"] for r in rows if r["node_name"] == victim.name)
    task_pids.update(processes_with(f"P2PSWARM_NODE={victim_id}"))
    assert len(task_pids) >= 2  # the task and its grandchild, before the kill
    killed_at = time.monotonic()
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=30)
    wait_until(lambda: not processes_with(f"P2PSWARM_NODE={victim_id}"), 30, f"{victim.name}'s task processes gone",
               seen=lambda: processes_with(f"P2PSWARM_NODE={victim_id}"))
    print(f"{victim.name}'s task processes gone {time.monotonic() - killed_at:.2f} s after its SIGKILL "
          f"(bench_runtime's orphans_after_node_kill counts them 5 s after each kill)")
