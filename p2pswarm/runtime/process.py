"""The default runtime: each task is a plain child process (like Nomad's raw_exec).

A task runs in its own session and process group, so that stopping it reaches everything
it forked: its stop signal (SIGTERM by default) to the group, ``grace`` seconds, SIGKILL. When
the leader exits on its own, the rest of its group is killed too: a task is over when its leader is.
The leader gets SIGKILL if the node dies (:mod:`.procfs`); its group id is recorded in
``<data-dir>/tasks/<task-id>/pid`` so a restarted node can stop what was left behind.
With a task user (:mod:`.taskuser`, a root node) the task runs as that user, in its own home.

On a node that can isolate (:mod:`.cgroups`), each task also has a cgroup of its own, entered
before exec (:mod:`.confine`) and holding its limits. The cgroup is what "everything of the task"
means then: the end of the leader, a stop or a leftover kills all of it, ``setsid`` escapes
included, and the node's reaper (:mod:`.reaper`) kills it when the node dies.

Output arrives through pipes on the node's loop via an :class:`asyncio.SubprocessProtocol`
(the public layer under ``create_subprocess_exec``). We use the protocol because it tells
us when the *leader* exits even while something of the group still holds the pipes; the
stream API's ``wait()`` would not return until every holder had exited.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from p2pswarm.node.datadir import open_private_append
from p2pswarm.runtime import confine, procfs, taskuser, volumes
from p2pswarm.runtime.base import (
    STDERR,
    STDOUT,
    TaskExit,
    TaskHandle,
    TaskSpec,
    fixed_ports,
    port_env,
    substitute,
    task_ports,
)
from p2pswarm.runtime.cgroups import CgroupError, Limits, NodeCgroups, TaskCgroup, human_bytes
from p2pswarm.runtime.logs import RotatingLog, TaskFolders
from p2pswarm.runtime.ports import PortAllocator, PortsExhausted
from p2pswarm.runtime.reaper import Watchdog
from p2pswarm.runtime.taskfiles import TaskFiles, TaskFilesError
from p2pswarm.runtime.taskuser import Homes, TaskUser

log = logging.getLogger("p2pswarm.runtime")


@dataclass(frozen=True)
class ProcessConfig:
    port_low: int = 20000
    port_high: int = 32000
    """Dynamic ports are taken from port_low..port_high (inclusive)."""
    fixed_port_wait: float = 15.0
    """Seconds a task waits for a fixed port (its fixed target, a mode=host port) that another task of
    this node still holds, e.g. the one a stop-first update is stopping; then it fails (and is restarted)."""
    log_max_bytes: int = 10 * 1024 * 1024
    """A log file is rotated before it would exceed this size."""
    log_keep: int = 3
    """Files kept per stream, the current one included."""
    pipe_drain: float = 1.0
    """Seconds to wait for output still in the pipes after the task's group was killed
    (a process that left the group may hold them open forever)."""
    leftover_grace: float = 2.0
    """Seconds between SIGTERM and SIGKILL for leftovers of a previous node life."""
    task_host: str | None = None
    """The node's own address, given to tasks as ``P2PSWARM_HOST``: where they should listen
    so that other nodes' meshes reach them (several nodes may share a machine)."""
    task_user: TaskUser | None = None
    """The user tasks run as (:mod:`.taskuser`); None: the node's own user (no isolation)."""
    dns: str | None = None
    """``HOST:PORT`` of the node's DNS (:mod:`p2pswarm.dns`), given to tasks as ``P2PSWARM_DNS``."""
    task_homes: Path | None = None
    """With ``task_user``: where each task's home is made (``<task_homes>/<task id>``)."""
    cgroups: NodeCgroups | None = None
    """Where this node's task cgroups are (:func:`.cgroups.for_node`); None: process groups only, and a
    task with limits fails to start."""
    cgroups_off: str = "this runtime has no cgroups"
    """Why ``cgroups`` is None (:class:`.cgroups.Isolation` ``reason``), for the task that asks for limits."""
    volumes_root: Path | None = None
    """Where named volumes live (``<volumes_root>/<node id>/<name>``); None: :func:`.volumes.default_root`."""


def task_env(spec: TaskSpec, ports: tuple[int, ...], host: str | None = None,
             dns: str | None = None) -> dict[str, str]:
    """The node's environment without its own ``P2PSWARM_*`` variables, then the spec's,
    then the task identity, the node's address, its DNS and ports (which a spec cannot override)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PSWARM_")}
    env.update(spec.env)
    env.update(P2PSWARM_TASK_ID=spec.task_id, P2PSWARM_SERVICE=spec.service,
               P2PSWARM_SLOT=str(spec.slot), P2PSWARM_NODE=spec.node_id)
    if host:
        env["P2PSWARM_HOST"] = host
    if dns:
        env["P2PSWARM_DNS"] = dns
    env.update(port_env(ports))
    return env


def launch_error(exc: OSError, argv0: str, user: TaskUser | None = None) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"executable not found: {argv0}"
    if isinstance(exc, PermissionError):
        if user is not None:
            return (f"permission denied: {argv0} (tasks run as user {user.name}, who must be able to reach and "
                    f"execute it)")
        return f"permission denied: {argv0}"
    return f"cannot start {argv0}: {exc.strerror or exc}"


class _Pipes(asyncio.SubprocessProtocol):
    """Writes the task's output into its logs; resolves ``exited`` with the leader's
    return code and ``drained`` once both pipes have closed."""

    def __init__(self, logs: dict[int, RotatingLog]) -> None:
        loop = asyncio.get_running_loop()
        self.logs = logs
        self.exited: asyncio.Future[int] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        stream = self.logs[fd]
        stream.write(data)
        stream.flush()

    def pipe_connection_lost(self, fd: int, exc) -> None:
        stream = self.logs.pop(fd, None)  # None once close_logs() has run
        if stream is not None:
            stream.close()
        if not self.logs and not self.drained.done():
            self.drained.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(self.transport.get_returncode())

    def close_logs(self) -> None:
        for stream in self.logs.values():
            stream.close()
        self.logs.clear()


class ProcessHandle(TaskHandle):
    done: asyncio.Future[TaskExit]
    """Resolves when the run has ended and its group (and cgroup) is gone."""
    cgroup: TaskCgroup | None = None


class ProcessRuntime(TaskFolders):
    """Runs tasks as child processes; see the module docstring. One per node."""

    def __init__(self, data_dir: str | os.PathLike[str], config: ProcessConfig = ProcessConfig(),
                 rng: random.Random | None = None, watchdog: Watchdog | None = None) -> None:
        """``watchdog``: the node's reaper, told how to kill this runtime's tasks if the node dies."""
        self.config = config
        self.tasks_dir = Path(data_dir) / "tasks"
        self.ports = PortAllocator(config.port_low, config.port_high, rng)
        self.live: dict[str, ProcessHandle] = {}
        if config.task_user is not None and config.task_homes is None:
            raise ValueError("a task user needs task_homes")  # the caller's bug
        self.homes = Homes(config.task_homes, config.task_user) if config.task_homes is not None else None
        self.files = TaskFiles(data_dir)
        """The tasks' secrets and configs (:mod:`.taskfiles`); the reaper removes them if the node dies."""
        if watchdog is not None and config.cgroups is not None:
            watchdog.add("cgroups", **config.cgroups.to_json())
        elif watchdog is not None:
            watchdog.add("process-groups", tasks_dir=str(self.tasks_dir.resolve()))
        if watchdog is not None:  # after the steps that kill the tasks
            watchdog.add("task-files", **self.files.to_json())

    async def start(self, spec: TaskSpec) -> ProcessHandle:
        if spec.task_id in self.live:
            raise RuntimeError(f"task {spec.task_id} is already running")  # the agent's bug
        folder = self.task_dir(spec.task_id)
        folder.mkdir(parents=True, exist_ok=True)
        if not spec.command:
            return self._failed(spec, folder, "empty command")
        if spec.workdir and not Path(spec.workdir).is_dir():
            return self._failed(spec, folder, f"working directory not found: {spec.workdir}")
        user = self._user(spec)
        if isinstance(user, str):
            return self._failed(spec, folder, user)
        limits = Limits(spec.limit_cpu, spec.limit_memory, spec.limit_pids)
        if limits.any and self.config.cgroups is None:
            return self._failed(spec, folder, f"cannot enforce limits ({limits.describe()}) on this node: "
                                              f"isolation none ({self.config.cgroups_off})")
        home = None
        if self.homes is not None and user is not None:
            try:
                home = self.homes.prepare(spec.task_id, user)
            except OSError as exc:
                return self._failed(spec, folder, f"cannot make the task's home {self.homes.path(spec.task_id)}: "
                                                  f"{exc.strerror or exc}")
        try:  # named volumes made, bind sources checked: one line when one is missing
            mounts = volumes.for_process(spec, *((user.uid, user.gid) if user else (os.geteuid(), os.getegid())),
                                         self.config.volumes_root)
        except volumes.MountError as exc:
            return self._failed(spec, folder, str(exc))
        try:  # secrets and configs as files on a private tmpfs of the task's user (removed when it ends)
            file_env = self.files.materialize(spec, *((user.uid, user.gid) if user else (None, None))).env()
        except TaskFilesError as exc:
            return self._failed(spec, folder, str(exc))
        try:
            ports = task_ports(spec, await self.ports.take_when_free(spec.ports, fixed_ports(spec),
                                                                     self.config.fixed_port_wait))
        except PortsExhausted as exc:
            return self._failed(spec, folder, str(exc))
        argv = substitute(spec.command, ports)
        env = task_env(spec, ports, self.config.task_host, self.config.dns) | mounts.env | file_env
        run_as: dict = {"env": env, "cwd": spec.workdir}
        if user is not None:
            env.update(user.env(home) if home is not None else {})
            run_as.update(user.popen_options(), cwd=spec.workdir or (str(home) if home is not None else None))
        try:
            cgroup = self.config.cgroups.create(spec.task_id, limits) if self.config.cgroups is not None else None
        except CgroupError as exc:
            self.ports.release(ports)
            return self._failed(spec, folder, str(exc))
        launch = {k: v for k, v in run_as.items() if k not in ("user", "group", "extra_groups")}  # confine does it
        logs = {fd: RotatingLog(folder / f"{name}.log", self.config.log_max_bytes, self.config.log_keep)
                for fd, name in ((1, STDOUT), (2, STDERR))}
        pipes = _Pipes(dict(logs))
        try:
            transport, _ = await asyncio.get_running_loop().subprocess_exec(
                lambda: pipes, *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=confine.preexec(cgroup.procs_files if cgroup else (), user,
                                                                      mounts.readonly),
                **launch)
        except (OSError, subprocess.SubprocessError) as exc:
            for stream in logs.values():
                stream.close()
            self.ports.release(ports)
            if cgroup is not None:
                cgroup.remove()
            error = (launch_error(exc, argv[0], user) if isinstance(exc, OSError) else
                     f"cannot confine the task: entering its cgroup"
                     f"{', making its read-only mounts' if mounts.readonly else ''} or becoming user "
                     f"{user.name if user else '?'} failed")
            return self._failed(spec, folder, error)
        handle = ProcessHandle(spec, transport.get_pid(), ports, folder, run_as=run_as)
        handle.cgroup = cgroup
        (folder / "pid").write_text(f"{handle.pid}\n")
        self.live[spec.task_id] = handle
        handle.done = asyncio.ensure_future(self._watch(handle, transport, pipes))
        log.info("task %s started: pid %s ports %s", spec.task_id, handle.pid, ports)
        return handle

    def _user(self, spec: TaskSpec) -> TaskUser | None | str:
        """Who the task runs as: the spec's user, else the node's task user (None: the node's own);
        a string says why it cannot start."""
        if spec.user is None:
            return self.config.task_user
        if os.geteuid() != 0:
            return f"cannot run as user {spec.user}: this node is not root (isolation none)"
        try:
            return taskuser.lookup(spec.user)
        except taskuser.TaskUserError as exc:
            return str(exc)

    def _failed(self, spec: TaskSpec, folder: Path, error: str) -> ProcessHandle:
        self.files.remove(spec.task_id)
        handle = ProcessHandle(spec, None, (), folder, error)
        handle.done = asyncio.get_running_loop().create_future()
        handle.done.set_result(TaskExit(error=error))
        with open_private_append(folder / f"{STDERR}.log") as stderr:  # so that `service logs` shows it too
            stderr.write(f"p2pswarm: {error}\n".encode())
        log.info("task %s did not start: %s", spec.task_id, error)
        return handle

    async def _watch(self, handle: ProcessHandle, transport, pipes: _Pipes) -> TaskExit:
        try:
            rc = await pipes.exited
            procfs.kill_group(handle.pid, signal.SIGKILL)  # whatever the leader left behind
            if handle.cgroup is not None and not await handle.cgroup.kill_all_async():  # setsid escapes too
                log.warning("task %s: processes of its cgroup survive SIGKILL", handle.spec.task_id)
            try:
                await asyncio.wait_for(asyncio.shield(pipes.drained), self.config.pipe_drain)
            except asyncio.TimeoutError:
                log.warning("task %s: a process outside its group holds its output open", handle.spec.task_id)
        finally:
            transport.close()
            pipes.close_logs()
            self.ports.release(handle.ports)
            (handle.log_dir / "pid").unlink(missing_ok=True)
            self.files.remove(handle.spec.task_id)
            self.live.pop(handle.spec.task_id, None)
            oom_kills = handle.cgroup.oom_kills() if handle.cgroup is not None else 0
            if handle.cgroup is not None:
                await _remove_cgroup(handle.cgroup)
        exit = TaskExit(code=rc) if rc >= 0 else TaskExit(signal=-rc)
        if exit.signal == signal.SIGKILL and oom_kills:
            limit = handle.spec.limit_memory
            exit = TaskExit(signal=exit.signal, error=f"killed: memory limit {human_bytes(limit)} reached" if limit
                            else "killed: out of memory")
        log.info("task %s exited: %s", handle.spec.task_id, exit)
        return exit

    async def wait(self, handle: TaskHandle) -> TaskExit:
        return await asyncio.shield(handle.done)

    def poll(self, handle: TaskHandle) -> TaskExit | None:
        return handle.done.result() if handle.done.done() else None

    async def stop(self, handle: TaskHandle, grace: float) -> TaskExit:
        if handle.done.done():
            return handle.done.result()
        first = signal.Signals.__members__.get(handle.spec.stop_signal, signal.SIGTERM)
        procfs.kill_group(handle.pid, first)
        try:
            return await asyncio.wait_for(asyncio.shield(handle.done), grace)
        except asyncio.TimeoutError:
            log.info("task %s ignored %s for %ss: SIGKILL", handle.spec.task_id, first.name, grace)
            procfs.kill_group(handle.pid, signal.SIGKILL)
            cgroup = getattr(handle, "cgroup", None)
            if cgroup is not None:
                cgroup.signal(signal.SIGKILL)  # the leader's end kills the rest; this only saves a round
            return await self.wait(handle)

    def forget(self, task_id: str, spec: TaskSpec | None = None) -> None:
        """Delete a finished task's files; its logs stay for the retention ``spec`` gives."""
        self.retire_task_dir(task_id, spec)
        if self.homes is not None:
            self.homes.remove(task_id)
        self.files.remove(task_id)

    async def adopt_or_stop_leftovers(self) -> list[str]:
        """Stop the task groups and cgroups a previous life of this node left running; returns
        their task ids. We stop rather than adopt: a process that is not our child can be
        neither waited for nor have its output piped, and the agent restarts what is
        still assigned. A group is only touched if one of its processes carries the
        task's ``P2PSWARM_TASK_ID``, so a recycled pid is never killed; a cgroup of this
        node's holds nothing but its tasks."""
        groups: dict[str, int] = {}
        for pidfile in sorted(self.tasks_dir.glob("*/pid")):
            task_id = pidfile.parent.name
            if task_id in self.live:
                continue
            try:
                pgid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pgid = 0
            pidfile.unlink(missing_ok=True)
            if pgid > 0 and any(procfs.environ_has(p, "P2PSWARM_TASK_ID", task_id)
                                for p in procfs.group_members(pgid)):
                groups[task_id] = pgid
                procfs.kill_group(pgid, signal.SIGTERM)
        cgroups = self.config.cgroups
        left = [cgroups.task(t) for t in cgroups.task_ids() if t not in self.live] if cgroups is not None else []
        stopped = set(groups) | {c.task_id for c in left if c.signal(signal.SIGTERM)}
        deadline = time.monotonic() + self.config.leftover_grace
        while (any(procfs.group_members(g) for g in groups.values()) or any(c.pids() for c in left)) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task_id, pgid in groups.items():
            if procfs.kill_group(pgid, signal.SIGKILL):
                log.warning("leftover task %s (group %s) ignored SIGTERM: killed", task_id, pgid)
        for cgroup in left:
            if cgroup.pids():
                log.warning("leftover task %s (cgroup %s) ignored SIGTERM: killed", cgroup.task_id, cgroup.dirs[0])
            await cgroup.kill_all_async()
            await _remove_cgroup(cgroup)
        if self.homes is not None:
            self.homes.remove_all_but({p.name for p in self.tasks_dir.glob("*")} | set(self.live))
        self.files.remove_all_but(set(self.live))
        return sorted(stopped)


async def _remove_cgroup(cgroup: TaskCgroup, tries: int = 50) -> None:
    """Remove a cgroup whose processes are gone (the kernel may hold it busy for a moment). One that
    still holds processes (the run was cancelled, not ended) is left to the reaper or the next life."""
    if cgroup.pids():
        return
    for _ in range(tries):
        try:
            if cgroup.remove():
                return
        except OSError as exc:
            log.warning("cannot remove the cgroup %s: %s", cgroup.dirs[0], exc.strerror or exc)
            return
        await asyncio.sleep(0.01)
    log.warning("the cgroup %s stays busy: left in place", cgroup.dirs[0])
