"""The container runtime: a task whose spec names an image runs as a container of the node's Docker Engine.

Every engine call blocks (the Docker SDK is synchronous), so each runs on this runtime's own small
thread pool and the node's loop never waits on the engine; a pull of a big image cannot starve the
loop's default executor either. A run:

1. the image is pulled if the engine does not have it (:meth:`ContainerRuntime.prepare`, which the
   agent shows as the task state ``preparing``); a failed pull fails the run with one line in
   Docker's words (``No such image: app:2 (...)``) and the restart policy backs off as for any failure;
2. the container is created (named and labelled as :mod:`.containerspec` says), attached to and
   started; a host port another process took since it was checked free costs a retry with others;
3. one thread per run copies the container's stdout and stderr into the task's
   :class:`~.logs.RotatingLog` files, the same files a process writes, so ``service logs`` works
   unchanged (the engine keeps no log of its own: log driver ``none``), then collects the exit
   code, whether the memory limit killed it, and removes the container.

An engine that goes away fails the runs that need it with ``engine: unavailable (...)``; process
tasks of the node (:mod:`.dispatch`) never notice. On a node restart
:meth:`ContainerRuntime.adopt_or_stop_leftovers` removes the containers labelled with this node's
id, and only those: nodes of a lab may share one engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import docker
import docker.errors

from p2pswarm.node.datadir import open_private_append
from p2pswarm.runtime import containerspec as cs
from p2pswarm.runtime import engine as eng
from p2pswarm.runtime.base import STDERR, STDOUT, TaskExit, TaskHandle, TaskSpec
from p2pswarm.runtime.logs import RotatingLog, TaskFolders
from p2pswarm.runtime.ports import PortAllocator, PortsExhausted
from p2pswarm.runtime.reaper import Watchdog
from p2pswarm.runtime.taskfiles import TaskFiles, TaskFilesError
from p2pswarm.runtime.volumes import MountError, resolve

log = logging.getLogger("p2pswarm.runtime")

OOM_ERROR = "killed: memory limit reached"
STOP_UNCONFIRMED = "engine: did not confirm the stop"
"""How a run ends when the engine does not confirm its SIGKILL within ``ContainerConfig.kill_wait``."""


@dataclass(frozen=True)
class ContainerConfig:
    node_id: str
    """Labels this node's containers (several nodes may share an engine)."""
    socket: str | None = None
    """The engine's API (``up --engine-socket``); None: ``$DOCKER_HOST`` or the standard socket."""
    task_host: str | None = None
    """The node's task address: bridge ports are bound on it; host-network tasks get it as ``P2PSWARM_HOST``."""
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 3
    """As the process runtime's (:class:`~.process.ProcessConfig`): the same files, the same rotation."""
    api_timeout: float = 30.0
    """Seconds one engine call may take (a pull: between two progress messages)."""
    engine_threads: int = 8
    """Engine calls that may run at once (pulls, creates, stops...); log copies have threads of their own."""
    start_attempts: int = 3
    """Starts tried with fresh node ports when the engine finds one taken (by a process of another node)."""
    fixed_port_wait: float = 15.0
    """As the process runtime's: seconds a run waits for a fixed node port another task of the node holds."""
    volumes_root: Path | None = None
    """Where named volumes live (:mod:`.volumes`; None: its default)."""
    dns: str | None = None
    """``HOST:PORT`` of the node's DNS: ``P2PSWARM_DNS``, and the container's resolver when on port 53."""
    kill_wait: float = 10.0
    """Seconds a stop waits for the engine to confirm a SIGKILL; then the run ends as ``engine: did not confirm
    the stop`` (its container is removed once the engine answers), so a hung engine cannot hold the node's stop."""


class ContainerHandle(TaskHandle):
    done: asyncio.Future[TaskExit]
    """Resolves when the container has exited and is removed."""
    container_id: str = ""
    ended: asyncio.Future | None = None
    """What the run's follower thread resolves with (exit code, OOM killed, error); a stop the engine does not
    confirm resolves it instead."""


class EngineDown(Exception):
    """No engine answers (one line: ``engine: unavailable (...)``)."""


class ContainerRuntime(TaskFolders):
    """Runs image tasks as containers; see the module docstring. One per node."""

    def __init__(self, data_dir: str | Path, config: ContainerConfig, ports: PortAllocator | None = None,
                 files: TaskFiles | None = None, watchdog: Watchdog | None = None) -> None:
        """``ports`` and ``files``: the node's, shared with its process runtime; ``watchdog``: the node's
        reaper, told to remove this node's containers if the node dies (once an engine answered: a node
        without one spares its reaper the Docker SDK)."""
        self.config = config
        self.files = files or TaskFiles(data_dir)
        self.tasks_dir = Path(data_dir) / "tasks"
        self.ports = ports or PortAllocator()
        """Shared with the node's process runtime: a port is never handed to two tasks."""
        self.live: dict[str, ContainerHandle] = {}
        self._client: docker.DockerClient | None = None
        self._streams: docker.DockerClient | None = None
        """A second client without a timeout, for the call that lasts as long as a container (wait)."""
        self._slots = asyncio.Semaphore(config.engine_threads)
        self._closed = False
        self._connecting = asyncio.Lock()
        self._pulls: dict[str, asyncio.Lock] = {}
        self._prepared: dict[str, str | None] = {}
        self._watchdog = watchdog
        self._removing: set[asyncio.Future] = set()
        """Removals of containers whose stop the engine did not confirm (:meth:`_remove_when_it_answers`)."""

    # ------------------------------------------------------------------ the engine

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking engine call on a daemon thread of its own, at most ``engine_threads`` at once: a pool's
        threads are joined when Python exits, so a call stuck in a hung engine (or a long pull) held the node's
        exit; a daemon thread is dropped with the process instead."""
        async with self._slots:
            if self._closed:
                raise RuntimeError("the container runtime is closed")
            loop = asyncio.get_running_loop()
            answer: asyncio.Future = loop.create_future()
            context = contextvars.copy_context()  # (the node's log tag, as asyncio.to_thread keeps it)

            def run() -> None:
                try:
                    result: tuple[Any, BaseException | None] = (fn(*args, **kwargs), None)
                except BaseException as exc:  # handed to the caller, whatever it is
                    result = (None, exc)
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(_resolve, answer, *result)
            threading.Thread(target=context.run, args=(run,), daemon=True, name=f"engine-{fn.__name__}").start()
            return await answer

    async def _engine(self) -> docker.DockerClient:
        """The engine's client, connected on first use (and again after the engine was not there)."""
        async with self._connecting:
            if self._client is None:
                try:
                    client = await self._call(eng.connect, self.config.socket, self.config.api_timeout,
                                              max_pool_size=1024)  # (each running container's stream holds one)
                    # the streams client takes the API version the timed one negotiated: asking the engine
                    # again without a timeout would hang this thread, and the node's exit, on a stuck engine
                    self._streams = await self._call(eng.connect, self.config.socket, None,
                                                     version=client.api.api_version, max_pool_size=1024)
                    self._client = client
                except eng.ERRORS as exc:
                    raise EngineDown(eng.task_error(exc)) from None
                if self._watchdog is not None:
                    self._watchdog.add("containers", socket=self.config.socket, node_id=self.config.node_id)
                    self._watchdog = None
        return self._client

    def close(self) -> None:
        """Release the engine clients and threads (the containers' own threads end with them); removals still
        waiting for the engine are left to the node's reaper."""
        for removal in self._removing:
            removal.cancel()
        for client in (self._client, self._streams):
            if client is not None:
                client.close()
        self._closed = True  # (calls still waiting for a thread fail; running ones end with their engine call)

    # ------------------------------------------------------------------ images

    async def prepare(self, spec: TaskSpec) -> None:
        """Pull the task's image unless the engine has it; the outcome is kept for :meth:`start`."""
        self._prepared[spec.task_id] = await self._ensure_image(spec.image or "")

    async def _ensure_image(self, image: str) -> str | None:
        """None when the engine has ``image`` (pulled if needed), else why not (one line)."""
        lock = self._pulls.setdefault(image, asyncio.Lock())
        async with lock:  # two tasks of one image: one pull
            try:
                client = await self._engine()
                return await self._call(_pull_if_missing, client, image)
            except EngineDown as exc:
                return str(exc)
            except eng.ERRORS as exc:
                return eng.task_error(exc)

    # ------------------------------------------------------------------ runs

    async def start(self, spec: TaskSpec) -> ContainerHandle:
        if spec.task_id in self.live:
            raise RuntimeError(f"task {spec.task_id} is already running")  # the agent's bug
        if spec.image is None:
            raise ValueError(f"task {spec.task_id} has no image")  # the dispatcher's bug
        folder = self.task_dir(spec.task_id)
        folder.mkdir(parents=True, exist_ok=True)
        error = self._prepared.pop(spec.task_id) if spec.task_id in self._prepared else \
            await self._ensure_image(spec.image)
        if error is not None:
            return self._failed(spec, folder, error)
        try:
            binds = self._binds(spec)
        except (MountError, TaskFilesError) as exc:
            return self._failed(spec, folder, str(exc))
        try:
            handle = await self._launch(spec, folder, binds)
        except (EngineDown, PortsExhausted) as exc:
            self.files.remove(spec.task_id)
            return self._failed(spec, folder, str(exc))
        except eng.ERRORS as exc:
            self.files.remove(spec.task_id)
            return self._failed(spec, folder, eng.task_error(exc))
        self.live[spec.task_id] = handle
        log.info("task %s started: container %s ports %s", spec.task_id, handle.container_id[:12], handle.ports)
        return handle

    async def _launch(self, spec: TaskSpec, folder: Path, binds: list[cs.Bind]) -> ContainerHandle:
        """Create, attach and start the container (new host ports when one was taken meanwhile)."""
        client = await self._engine()
        name = cs.container_name(spec)
        for attempt in range(self.config.start_attempts):
            ports = cs.run_ports(spec, await self.ports.take_when_free(
                cs.dynamic_ports_needed(spec), cs.fixed_host_ports(spec), self.config.fixed_port_wait))
            options = cs.create_options(spec, ports=ports, bind_host=self.config.task_host or "127.0.0.1",
                                        task_host=self.config.task_host, binds=binds, dns=self.config.dns,
                                        upstream=host_resolvers())
            try:
                cid, stream = await self._call(self._create_and_attach, client, name, options)
            except BaseException:
                self.ports.release(ports)
                raise
            try:
                pid = await self._call(_start, client, cid)
            except eng.ERRORS as exc:
                stream.close()
                await self._call(_remove, client, cid)
                self.ports.release(ports)
                if attempt + 1 < self.config.start_attempts and _port_taken(exc):
                    log.info("task %s: a node port was taken meanwhile (%s); trying others", spec.task_id,
                             eng.describe(exc))
                    continue
                raise
            break
        handle = ContainerHandle(spec, pid, ports, folder)
        handle.container_id = cid
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[tuple[int | None, bool, str | None]] = loop.create_future()
        logs = {name: RotatingLog(folder / f"{name}.log", self.config.log_max_bytes, self.config.log_keep)
                for name in (STDOUT, STDERR)}
        threading.Thread(target=self._follow, args=(cid, stream, logs, ended, loop), daemon=True,
                         name=f"container-{spec.task_id}").start()
        handle.ended = ended
        handle.done = asyncio.ensure_future(self._watch(handle, ended))
        return handle

    def _create_and_attach(self, client: docker.DockerClient, name: str, options: dict[str, Any]) -> tuple[str, Any]:
        """(In a thread.) The container, created, and its output stream, attached before it starts so that
        no byte is missed. A container of that name left by an earlier run of this task is replaced."""
        try:
            container = client.containers.create(**options)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: the name is taken
                raise
            _remove(client, name)
            container = client.containers.create(**options)
        # attached through the timed client, so that a hung engine costs api_timeout, not this thread for good
        # (the stream's reads wait for data with poll(), without the timeout: a container may stay silent for hours)
        stream = client.api.attach(container.id, stdout=True, stderr=True, stream=True, demux=True)
        return container.id, stream

    def _follow(self, cid: str, stream: Any, logs: dict[str, RotatingLog],
                ended: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        """(The run's own thread.) Copy the output until the container closes it, then collect how it ended
        and remove the container; resolve ``ended`` with ``(exit code, OOM killed, error)`` on the loop."""
        try:
            for out, err in stream:
                for data, name in ((out, STDOUT), (err, STDERR)):
                    if data:
                        logs[name].write(data)
                        logs[name].flush()
        except (*eng.ERRORS, ValueError):
            pass  # the engine went away: wait() below says so
        finally:
            stream.close()
            for f in logs.values():
                f.close()
        assert self._streams is not None and self._client is not None
        try:
            self._streams.api.wait(cid)
            state = self._client.api.inspect_container(cid)["State"]
            result: tuple[int | None, bool, str | None] = (state.get("ExitCode"), bool(state.get("OOMKilled")), None)
        except eng.ERRORS as exc:
            result = (None, False, eng.task_error(exc))
        _remove(self._client, cid)
        try:
            loop.call_soon_threadsafe(_resolve, ended, result)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    async def _watch(self, handle: ContainerHandle, ended: asyncio.Future) -> TaskExit:
        try:
            code, oom, error = await ended
        finally:
            self.ports.release(handle.ports)
            self.files.remove(handle.spec.task_id)
            self.live.pop(handle.spec.task_id, None)
        if error is not None:
            exit = TaskExit(error=error)
        elif oom:
            exit = TaskExit(code=code, error=OOM_ERROR)
        else:
            exit = TaskExit(code=code)
        log.info("task %s exited: %s", handle.spec.task_id, exit)
        return exit

    def _binds(self, spec: TaskSpec) -> list[cs.Bind]:
        """The node paths the container mounts: its volumes and bind mounts, its secrets (a read-only
        directory at /run/secrets) and each config file at its target. Raises MountError or TaskFilesError."""
        uid, gid = _numeric_user(spec.user)
        mounts = resolve(spec, spec.node_id, uid, gid, self.config.volumes_root) if spec.mounts else []
        binds = [cs.Bind(str(m.source), m.target, m.readonly) for m in mounts]
        dirs = self.files.materialize(spec, uid, gid)
        if dirs.secrets is not None:
            binds.append(cs.Bind(str(dirs.secrets), cs.SECRETS_DIR, True))
        binds += [cs.Bind(str(path), target, True) for path, target in dirs.config_files]
        return binds

    def _failed(self, spec: TaskSpec, folder: Path, error: str) -> ContainerHandle:
        handle = ContainerHandle(spec, None, (), folder, error)
        handle.done = asyncio.get_running_loop().create_future()
        handle.done.set_result(TaskExit(error=error))
        with open_private_append(folder / f"{STDERR}.log") as stderr:  # so that `service logs` shows it too
            stderr.write(f"p2pswarm: {error}\n".encode())
        log.info("task %s did not start: %s", spec.task_id, error)
        return handle

    async def wait(self, handle: TaskHandle) -> TaskExit:
        return await asyncio.shield(handle.done)  # type: ignore[attr-defined]

    def poll(self, handle: TaskHandle) -> TaskExit | None:
        done = handle.done  # type: ignore[attr-defined]
        return done.result() if done.done() else None

    async def stop(self, handle: TaskHandle, grace: float) -> TaskExit:
        """The spec's stop signal, ``grace`` seconds, then SIGKILL (as ``docker stop``, without holding an
        engine connection for the grace period); a SIGKILL the engine does not confirm within ``kill_wait``
        ends the run as STOP_UNCONFIRMED and leaves its container to be removed once the engine answers."""
        assert isinstance(handle, ContainerHandle)
        if handle.done.done():
            return handle.done.result()
        answered = await self._kill(handle, handle.spec.stop_signal)
        ended = await self._ended_within(handle, grace)
        if ended is None and answered:
            log.info("task %s ignored %s for %ss: SIGKILL", handle.spec.task_id, handle.spec.stop_signal, grace)
            await self._kill(handle, "SIGKILL")
        if ended is None:  # (an engine that did not answer the signal gets no second api_timeout for SIGKILL)
            ended = await self._ended_within(handle, self.config.kill_wait)
        if ended is None:
            log.warning("task %s: the engine did not confirm the stop in %ss; its container is removed once the "
                        "engine answers", handle.spec.task_id, self.config.kill_wait)
            if handle.ended is not None:
                _resolve(handle.ended, (None, False, STOP_UNCONFIRMED))
            removal = asyncio.ensure_future(self._remove_when_it_answers(handle.container_id))
            self._removing.add(removal)
            removal.add_done_callback(self._removing.discard)
            ended = await self.wait(handle)
        return ended

    @staticmethod
    async def _ended_within(handle: ContainerHandle, seconds: float) -> TaskExit | None:
        try:
            return await asyncio.wait_for(asyncio.shield(handle.done), seconds)
        except asyncio.TimeoutError:
            return None

    async def _remove_when_it_answers(self, cid: str) -> None:
        """Remove a container whose stop the engine did not confirm, retrying until the engine answers: once it
        recovers the old run must not go on beside its replacement (on node ports handed out again)."""
        while True:
            try:
                client = await self._engine()
                await self._call(client.api.remove_container, cid, force=True)
                return
            except docker.errors.NotFound:
                return
            except (EngineDown, *eng.ERRORS) as exc:
                log.debug("container %s not removed yet: %s", cid[:12], exc)
            await asyncio.sleep(self.config.kill_wait)

    async def _kill(self, handle: ContainerHandle, signal: str) -> bool:
        """Send ``signal``; False when the engine is gone or did not answer (an answer refusing it is one)."""
        try:
            client = await self._engine()
            await self._call(client.api.kill, handle.container_id, signal=signal)
        except (EngineDown, *eng.ERRORS) as exc:  # already exited, or the engine is gone: the run ends anyway
            log.debug("task %s: %s not sent: %s", handle.spec.task_id, signal, exc)
            return not isinstance(exc, EngineDown) and not eng.unreachable(exc)
        return True

    def forget(self, task_id: str, spec: TaskSpec | None = None) -> None:
        """Delete a finished task's files; its logs stay for the retention ``spec`` gives."""
        self.retire_task_dir(task_id, spec)
        self._prepared.pop(task_id, None)

    async def adopt_or_stop_leftovers(self) -> list[str]:
        """Remove the containers of this node's previous life (by label, so other nodes' are never
        touched); returns their task ids. As with processes we remove rather than adopt: the agent
        starts again what is still assigned, with its output piped into its logs."""
        try:
            client = await self._engine()
            found = await self._call(client.api.containers, all=True,
                                     filters={"label": f"{cs.NODE}={self.config.node_id}"})
        except (EngineDown, *eng.ERRORS) as exc:
            log.info("no leftover containers looked for: %s", exc)
            return []
        left = {c["Id"]: (c.get("Labels") or {}).get(cs.TASK, "?") for c in found}
        left = {cid: task for cid, task in left.items() if task not in self.live}
        for cid in left:
            await self._call(_remove, client, cid)
        if left:
            log.warning("removed %d container(s) left over by a previous run of this node", len(left))
        return sorted(left.values())


def _pull_if_missing(client: docker.DockerClient, image: str) -> str | None:
    """(In a thread.) None once the engine has ``image``, else the task's error (one line, Docker's words)."""
    try:
        client.api.inspect_image(image)
        return None
    except docker.errors.ImageNotFound:
        pass
    repository, tag = docker.utils.parse_repository_tag(image)
    began = time.monotonic()
    try:
        for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if isinstance(event, dict) and event.get("error"):
                return f"No such image: {image} ({_first_line(str(event['error']))})"
    except docker.errors.APIError as exc:
        return f"No such image: {image} ({eng.describe(exc)})"
    log.info("image %s pulled in %.1fs", image, time.monotonic() - began)
    return None


def _start(client: docker.DockerClient, cid: str) -> int | None:
    """(In a thread.) Start the container; its main process's pid on the node."""
    client.api.start(cid)
    return client.api.inspect_container(cid)["State"].get("Pid") or None


def _remove(client: docker.DockerClient, cid: str) -> None:
    """(In a thread.) Remove a container, running or not; gone already (or going: 409) is fine."""
    try:
        client.api.remove_container(cid, force=True)
    except docker.errors.NotFound:
        pass
    except eng.ERRORS as exc:
        if not (isinstance(exc, docker.errors.APIError) and exc.status_code == 409):
            log.warning("cannot remove container %s: %s", cid[:12], eng.describe(exc))


def _port_taken(exc: BaseException) -> bool:
    text = eng.describe(exc).lower()
    return "address already in use" in text or "port is already allocated" in text


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None = None) -> None:
    """(On the loop.) ``future`` gets ``error`` or else ``result``, unless it is settled already (its caller gave
    up on it, or a stop the engine did not confirm ended the run first)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else text


def _numeric_user(user: str | None) -> tuple[int | None, int | None]:
    """(uid, gid) when the spec names them as numbers; a name is the image's business (None)."""
    if not user:
        return None, None
    name, _, group = user.partition(":")
    uid = int(name) if name.isdigit() else None
    return uid, int(group) if group.isdigit() else uid if uid is not None and not group else None


def remove_node_containers(socket: str | None, node_id: str, timeout: float = 3.0) -> list[str]:
    """Remove every container labelled with ``node_id`` at once (SIGKILL; the reaper's step when the
    node died); returns their task ids (none when no engine answers). Bounded by ``timeout`` per engine call."""
    try:
        client = eng.connect(socket, timeout)
    except eng.ERRORS as exc:
        if eng.unreachable(exc):
            return []
        raise
    with contextlib.closing(client):
        found = client.api.containers(all=True, filters={"label": f"{cs.NODE}={node_id}"})
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(functools.partial(_remove, client), [c["Id"] for c in found]))
    return sorted((c.get("Labels") or {}).get(cs.TASK, "?") for c in found)


@functools.lru_cache(maxsize=1)
def host_resolvers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The node's own nameservers that a container can reach (not loopback: a bridge container's loopback
    is its own), for the names the node's DNS refuses; read once."""
    import ipaddress
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                if not ipaddress.ip_address(parts[1]).is_loopback:
                    out.append(parts[1])
            except ValueError:
                continue
    return tuple(out)
