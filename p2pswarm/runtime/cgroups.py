"""Task cgroups: each task in a cgroup of its own, with enforced cpu, memory and pids limits.

Layout: ``p2pswarm/<node id>/<task id>``, in cgroup v2 (one unified hierarchy) when it offers the
cpu, memory and pids controllers, else in cgroup v1 (one hierarchy per controller, mounted at
``/sys/fs/cgroup/<controller>``). Hybrid machines often mount v2 at ``/sys/fs/cgroup/unified``
with every controller bound to v1; such a v2 cannot limit anything, so v1 is used there.

In v1 the ``p2pswarm`` parent is nested under the node's own cgroup in each hierarchy, so whatever
supervises the node (systemd, a container, a job runner) still accounts, bounds and can kill its
tasks. v2 forbids that while the node's cgroup holds processes (the "no internal processes" rule),
so there the parent sits at the root of the hierarchy, as Docker's ``/docker`` does.

Limits (0: none) are written when a task's cgroup is made, before its process enters it:

- cpu, in cores: quota = limit_cpu × period (µs, at least :data:`MIN_CPU_QUOTA_US`), period =
  :data:`CPU_PERIOD_US`; v2 ``cpu.max`` = "quota period", v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``.
- memory, in bytes: v2 ``memory.max``, and ``memory.swap.max`` = 0; v1 ``memory.limit_in_bytes``, and
  ``memory.memsw.limit_in_bytes`` (memory + swap) = the same. Without the swap limit a task at its
  limit would be swapped out rather than killed. The swap files exist only with swap accounting.
- pids: ``pids.max``, the processes and threads the cgroup may hold at once (fork fails beyond).

Killing a cgroup reaches every process in it, ``setsid`` escapes included: only root can move a
process out of its cgroup. v2 has ``cgroup.kill``; elsewhere we SIGKILL whatever ``cgroup.procs``
lists until it is empty (a killed process forks no more, so the rounds converge).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path("/sys/fs/cgroup")
SELF = Path("/proc/self/cgroup")
CONTROLLERS = ("cpu", "memory", "pids")
PARENT = "p2pswarm"
"""The directory under which each node keeps its tasks' cgroups (``PARENT/<node id>/<task id>``)."""
CPU_PERIOD_US = 100_000
"""The CFS period (µs) a cpu quota is a share of: 100 ms, the kernel's default."""
MIN_CPU_QUOTA_US = 1_000
"""The smallest quota (µs) the kernel accepts."""
KILL_TIMEOUT = 5.0
"""Seconds to wait for a killed cgroup to empty (a process in uninterruptible sleep dies when it wakes)."""
KILL_POLL = 0.01
"""Seconds between two rounds of SIGKILL (or checks after ``cgroup.kill``)."""
V1_MARKERS = {"cpu": "cpu.cfs_quota_us", "memory": "memory.limit_in_bytes", "pids": "cgroup.procs"}
"""A file each v1 hierarchy's root holds: the controller is really mounted there."""


class CgroupError(Exception):
    """A task's cgroup could not be made or set up (one line)."""


@dataclass(frozen=True)
class Isolation:
    """What a node can do to isolate its tasks (``p2pswarm node inspect`` shows it)."""

    kind: str
    """``cgroup-v2``, ``cgroup-v1`` or ``none``."""
    reason: str
    """Why ``none``, or where the cgroups are."""


@dataclass(frozen=True)
class Limits:
    cpu: float = 0.0
    """Cores (0.5: half of one core's time)."""
    memory: int = 0
    """Bytes."""
    pids: int = 0
    """Processes and threads."""

    @property
    def any(self) -> bool:
        return bool(self.cpu or self.memory or self.pids)

    def describe(self) -> str:
        parts = [f"cpu {self.cpu:g}" if self.cpu else "", f"memory {human_bytes(self.memory)}" if self.memory else "",
                 f"pids {self.pids}" if self.pids else ""]
        return ", ".join(p for p in parts if p) or "none"

    def cpu_quota_us(self) -> int:
        """quota = limit_cpu × :data:`CPU_PERIOD_US`, at least :data:`MIN_CPU_QUOTA_US`."""
        return max(MIN_CPU_QUOTA_US, round(self.cpu * CPU_PERIOD_US))


def human_bytes(n: int) -> str:
    """``33554432`` → ``32MiB``: the largest binary unit that divides ``n`` (else one decimal)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n // size}{unit}" if n % size == 0 else f"{n / size:.1f}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class Layout:
    """Where the ``p2pswarm`` parent directory is, per controller (in v2 all three share one)."""

    version: int
    parents: tuple[tuple[str, Path], ...]

    def describe(self) -> str:
        """Short (it travels in the node's gossip record): ``cpu, memory, pids under /sys/fs/cgroup``."""
        return ", ".join(CONTROLLERS) + " under " + os.path.commonpath([str(p) for _, p in self.parents])


def own_cgroups(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` → {controller: path} for v1 hierarchies, {"": path} for v2."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if not path:
            continue
        if hierarchy == "0" and not names:
            out[""] = path
        for name in names.split(","):
            if name:
                out[name] = path
    return out


def _under(base: Path, path: str) -> Path:
    return base / path.lstrip("/") if path.strip("/") else base


def locate(root: Path = ROOT, self_cgroup: str | None = None, euid: int | None = None) -> Layout | str:
    """The layout tasks would use, or one line saying why there is none. Reads, never writes."""
    if (os.geteuid() if euid is None else euid) != 0:
        return f"not root (uid {os.geteuid() if euid is None else euid}): tasks run as the node's user, unlimited"
    try:
        own = own_cgroups(self_cgroup if self_cgroup is not None else SELF.read_text())
    except OSError as exc:
        return f"cannot read {SELF}: {exc.strerror or exc}"
    why_not_v2 = "no cgroup v2 mounted"
    for v2 in (root, root / "unified"):
        try:
            available = set((v2 / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            why_not_v2 = f"cgroup v2 at {v2} lacks {', '.join(missing)}"
            continue
        if not os.access(v2, os.W_OK):
            return f"{v2} is not writable"
        return Layout(2, tuple((c, v2 / PARENT) for c in CONTROLLERS))
    parents = []
    for c in CONTROLLERS:
        base = root / c
        if c not in own or not (base / V1_MARKERS[c]).exists():
            return f"{why_not_v2}, and no cgroup v1 {c} hierarchy at {base}"
        mine = _under(base, own[c])
        if not os.access(mine, os.W_OK):
            return f"{mine} is not writable"
        parents.append((c, mine / PARENT))
    return Layout(1, tuple(parents))


def probe(root: Path = ROOT, self_cgroup: str | None = None, euid: int | None = None) -> Isolation:
    """What this node can enforce: ``cgroup-v2``, ``cgroup-v1`` or ``none (reason)``."""
    found = locate(root, self_cgroup, euid)
    if isinstance(found, str):
        return Isolation("none", found)
    return Isolation(f"cgroup-v{found.version}", found.describe())


def for_node(node_id: str, root: Path = ROOT) -> tuple[NodeCgroups | None, Isolation]:
    """This node's task cgroups (None when it cannot isolate) and what :func:`probe` says."""
    found = locate(root)
    if isinstance(found, str):
        return None, Isolation("none", found)
    return NodeCgroups(found, node_id), Isolation(f"cgroup-v{found.version}", found.describe())


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_pids(path: Path) -> set[int]:
    try:
        return {int(line) for line in path.read_text().split()}
    except (OSError, ValueError):
        return set()


@dataclass(frozen=True)
class TaskCgroup:
    """One task's cgroup: a directory per hierarchy (one in v2)."""

    version: int
    task_id: str
    where: tuple[tuple[str, Path], ...]

    @property
    def dirs(self) -> list[Path]:
        return list(dict.fromkeys(p for _, p in self.where))

    def dir(self, controller: str) -> Path:
        return dict(self.where)[controller]

    @property
    def procs_files(self) -> tuple[str, ...]:
        """The files a process writes ``0`` to in order to enter this cgroup (one per hierarchy)."""
        return tuple(str(d / "cgroup.procs") for d in self.dirs)

    def apply(self, limits: Limits) -> None:
        """Write the limits (see the module docstring for the files and units); raises OSError."""
        if limits.cpu:
            cpu = self.dir("cpu")
            if self.version == 2:
                _write(cpu / "cpu.max", f"{limits.cpu_quota_us()} {CPU_PERIOD_US}")
            else:
                _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(cpu / "cpu.cfs_quota_us", str(limits.cpu_quota_us()))
        if limits.memory:
            mem = self.dir("memory")
            memory_file, swap_file, swap = (("memory.max", "memory.swap.max", "0") if self.version == 2 else
                                            ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
                                             str(limits.memory)))
            _write(mem / memory_file, str(limits.memory))  # first: v1 refuses memsw below the memory limit
            if (mem / swap_file).exists():
                _write(mem / swap_file, swap)
        if limits.pids:
            _write(self.dir("pids") / "pids.max", str(limits.pids))

    def pids(self) -> set[int]:
        """Every process in the cgroup (in any of its hierarchies)."""
        out: set[int] = set()
        for d in self.dirs:
            out |= _read_pids(d / "cgroup.procs")
        return out

    def signal(self, sig: int) -> int:
        """Send ``sig`` to every process in the cgroup; returns how many there were."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return len(pids)

    def _kill_round(self) -> bool:
        """One round of killing; True once the cgroup is empty."""
        kill_file = self.dirs[0] / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            if not self.pids():
                return True
            try:
                _write(kill_file, "1")
            except FileNotFoundError:
                return True
            return False
        return self.signal(signal.SIGKILL) == 0

    def kill_all(self, timeout: float = KILL_TIMEOUT) -> bool:
        """SIGKILL everything in the cgroup and wait until it is empty; False if it did not empty in time."""
        deadline = time.monotonic() + timeout
        while not self._kill_round():
            if time.monotonic() > deadline:
                return False
            time.sleep(KILL_POLL)
        return True

    async def kill_all_async(self, timeout: float = KILL_TIMEOUT) -> bool:
        """:meth:`kill_all` without blocking the node's loop."""
        deadline = time.monotonic() + timeout
        while not self._kill_round():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(KILL_POLL)
        return True

    def oom_kills(self) -> int:
        """Processes the kernel killed for reaching the memory limit: v2 ``memory.events`` or v1
        ``memory.oom_control`` (``oom_kill``); kernels before 4.13 only count hits of the limit
        (``memory.failcnt``), which is then the best hint there is."""
        mem = self.dir("memory")
        for name in ("memory.events", "memory.oom_control"):
            try:
                for line in (mem / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
            except (OSError, ValueError):
                continue
        try:
            return int((mem / "memory.failcnt").read_text())
        except (OSError, ValueError):
            return 0

    def remove(self) -> bool:
        """Remove the (empty) cgroup; False if some hierarchy still holds it (busy)."""
        gone = True
        for d in self.dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                gone = False
        return gone


@dataclass(frozen=True)
class NodeCgroups:
    """The task cgroups of one node: ``<parent>/<node id>/<task id>`` in each hierarchy."""

    layout: Layout
    node_id: str

    def node_dirs(self) -> list[Path]:
        return list(dict.fromkeys(p / self.node_id for _, p in self.layout.parents))

    def task(self, task_id: str) -> TaskCgroup:
        return TaskCgroup(self.layout.version, task_id,
                          tuple((c, p / self.node_id / task_id) for c, p in self.layout.parents))

    def create(self, task_id: str, limits: Limits) -> TaskCgroup:
        """A fresh cgroup for the task, limits set; a stale one of the same id is killed and remade.
        Raises CgroupError (one line)."""
        cgroup = self.task(task_id)
        path = cgroup.dirs[0]
        try:
            if any(d.exists() for d in cgroup.dirs):
                cgroup.kill_all()
                cgroup.remove()
            for d in self.node_dirs():
                d.mkdir(parents=True, exist_ok=True)
            if self.layout.version == 2:
                self._delegate()
            for d in cgroup.dirs:
                path = d
                d.mkdir()
            cgroup.apply(limits)
        except OSError as exc:
            try:
                cgroup.remove()
            except OSError:
                pass
            raise CgroupError(f"cannot set up the task's cgroup {path}: {exc.strerror or exc}") from None
        return cgroup

    def _delegate(self) -> None:
        """v2: enable the controllers for the children of the hierarchy's root, the parent and the node's
        directory (a child can only use a controller its parent enabled)."""
        node_dir = self.node_dirs()[0]
        for d in (node_dir.parent.parent, node_dir.parent, node_dir):
            enabled = set((d / "cgroup.subtree_control").read_text().split())
            wanted = [c for c in CONTROLLERS if c not in enabled]
            if wanted:
                _write(d / "cgroup.subtree_control", " ".join("+" + c for c in wanted))

    def task_ids(self) -> list[str]:
        """The tasks that have a cgroup under this node (leftovers, after a restart)."""
        ids: set[str] = set()
        for d in self.node_dirs():
            try:
                ids |= {e.name for e in d.iterdir() if e.is_dir()}
            except OSError:
                continue
        return sorted(ids)

    def reap(self, timeout: float = KILL_TIMEOUT) -> list[str]:
        """Kill every task of this node and remove their cgroups and the node's directory; returns the
        tasks that had processes. What the reaper does when the node dies."""
        killed = []
        for task_id in self.task_ids():
            cgroup = self.task(task_id)
            if cgroup.pids():
                killed.append(task_id)
            cgroup.kill_all(timeout)
            remove_when_empty(cgroup)
        self.remove_node_dir()
        return killed

    def remove_node_dir(self) -> None:
        """Remove the node's directory (and the shared parent) where they are empty."""
        for d in self.node_dirs():
            for empty in (d, d.parent):
                try:
                    empty.rmdir()
                except OSError:
                    break

    def to_json(self) -> dict[str, Any]:
        return {"version": self.layout.version, "node_id": self.node_id,
                "parents": [[c, str(p)] for c, p in self.layout.parents]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeCgroups:
        parents = tuple((str(c), Path(p)) for c, p in data["parents"])
        return cls(Layout(int(data["version"]), parents), str(data["node_id"]))


def remove_when_empty(cgroup: TaskCgroup, tries: int = 50) -> bool:
    """Remove a cgroup whose processes were killed; the kernel may hold it busy for a moment."""
    for _ in range(tries):
        if cgroup.remove():
            return True
        time.sleep(KILL_POLL)
    return False
