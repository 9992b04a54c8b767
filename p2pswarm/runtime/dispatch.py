"""The node's runtime: image tasks go to the container runtime, every other task to the process runtime.

Both write a task's logs to the same files (``<data-dir>/tasks/<task id>/``) and share one port
allocator, so ``service logs`` and the dynamic port range do not care which one ran a task. A node
without a working engine still runs process tasks; its image tasks fail at start with
``engine: unavailable (reason)`` (and the scheduler, told by the node's gossip record, sends it none).
"""

from __future__ import annotations

from pathlib import Path

from p2pswarm.runtime.base import TaskExit, TaskHandle, TaskSpec
from p2pswarm.runtime.container import ContainerHandle, ContainerRuntime
from p2pswarm.runtime.process import ProcessRuntime


class DispatchRuntime:
    """A :class:`~p2pswarm.runtime.base.Runtime` over a process and a container runtime."""

    def __init__(self, processes: ProcessRuntime, containers: ContainerRuntime) -> None:
        self.processes, self.containers = processes, containers
        self.config = processes.config
        """The process runtime's settings; its log rotation is the container runtime's too."""
        self._images: set[str] = set()
        """Tasks the container runtime ran (and whose files it forgets)."""

    def task_dir(self, task_id: str) -> Path:
        """Where a task's logs are, whichever runtime runs it."""
        return self.processes.task_dir(task_id)

    @property
    def live(self) -> dict[str, TaskHandle]:
        """The runs that have not ended, of both runtimes."""
        return {**self.processes.live, **self.containers.live}

    async def prepare(self, spec: TaskSpec) -> None:
        if spec.image is not None:
            await self.containers.prepare(spec)

    async def start(self, spec: TaskSpec) -> TaskHandle:
        if spec.image is None:
            return await self.processes.start(spec)
        self._images.add(spec.task_id)
        return await self.containers.start(spec)

    def _for(self, handle: TaskHandle) -> ProcessRuntime | ContainerRuntime:
        return self.containers if isinstance(handle, ContainerHandle) else self.processes

    async def wait(self, handle: TaskHandle) -> TaskExit:
        return await self._for(handle).wait(handle)

    def poll(self, handle: TaskHandle) -> TaskExit | None:
        return self._for(handle).poll(handle)

    async def stop(self, handle: TaskHandle, grace: float) -> TaskExit:
        return await self._for(handle).stop(handle, grace)

    def log_paths(self, task_id: str) -> dict[str, list[Path]]:
        return self.processes.log_paths(task_id)  # the same files for both

    def forget(self, task_id: str, spec: TaskSpec | None = None) -> None:
        if task_id in self._images:
            self._images.discard(task_id)
            self.containers.forget(task_id, spec)
        else:
            self.processes.forget(task_id, spec)

    def retired(self, service: str) -> list[tuple[str, int]]:
        return self.processes.retired(service)  # both runtimes keep their tasks' folders in one place

    def sweep_retired(self, now: float) -> list[str]:
        return self.processes.sweep_retired(now)

    async def adopt_or_stop_leftovers(self) -> list[str]:
        return sorted(await self.processes.adopt_or_stop_leftovers() + await self.containers.adopt_or_stop_leftovers())

    def close(self) -> None:
        self.containers.close()
