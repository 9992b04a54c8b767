"""The reaper: a watchdog process that kills a node's tasks when the node dies, however it dies.

A task leader gets SIGKILL with its node (``PR_SET_PDEATHSIG``, :mod:`.procfs`), but what it forked,
``setsid`` escapes included, would live on. So each node starts ``python -m p2pswarm.runtime.reaper``
with a pipe on its stdin, and tells it over that pipe, one JSON line each, the cleanup steps that
undo the node's tasks (``{"step": "cgroups", ...arguments}``). The node never writes anything else
and keeps the pipe open; when the pipe reaches EOF (the node exited: cleanly, crashed or SIGKILL),
the reaper runs the steps in order and exits. It has a session of its own, so the node's terminal
signals (^C) do not reach it, and it holds no other reference to the node.

Extension point: a runtime registers a function in :data:`STEPS` under a name, and asks the node's
:class:`Watchdog` to run it with :meth:`Watchdog.add` (e.g. the container runtime: "remove this
node's containers"). A step gets its JSON arguments, returns a line for the node's log (or None),
and must be bounded in time: the node's tasks must be gone within 5 s of its death.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Callable

from p2pswarm.runtime import procfs
from p2pswarm.runtime.cgroups import NodeCgroups

log = logging.getLogger("p2pswarm.runtime")
CLOSE_WAIT = 10.0
"""Seconds a node closing cleanly waits for its reaper to finish its steps."""


def reap_cgroups(args: dict[str, Any]) -> str | None:
    """Kill every task cgroup of the node and remove them (:meth:`NodeCgroups.reap`)."""
    cgroups = NodeCgroups.from_json(args)
    killed = cgroups.reap()
    return f"node {cgroups.node_id} is gone: killed tasks {', '.join(killed)}" if killed else None


def reap_process_groups(args: dict[str, Any]) -> str | None:
    """Without cgroups: SIGKILL each task's process group recorded in ``<tasks_dir>/<task>/pid``, if it
    still holds a process carrying that task's id (so a recycled pid is never killed)."""
    killed = []
    for pidfile in sorted(Path(args["tasks_dir"]).glob("*/pid")):
        task_id = pidfile.parent.name
        try:
            pgid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if pgid > 0 and any(procfs.environ_has(p, "P2PSWARM_TASK_ID", task_id) for p in procfs.group_members(pgid)):
            procfs.kill_group(pgid, signal.SIGKILL)
            killed.append(task_id)
    return f"the node is gone: killed the process groups of tasks {', '.join(killed)}" if killed else None


def reap_containers(args: dict[str, Any]) -> str | None:
    """Remove the node's containers from its engine (by the node's label; other nodes may share the engine)."""
    from p2pswarm.runtime.container import remove_node_containers  # the Docker SDK, only when a node had an engine
    removed = remove_node_containers(args.get("socket"), args["node_id"])
    return f"node {args['node_id']} is gone: removed the containers of tasks {', '.join(removed)}" if removed else None


def reap_task_files(args: dict[str, Any]) -> str | None:
    """Unmount and delete the node's task files: secrets must not stay on a tmpfs after their tasks died."""
    from p2pswarm.runtime.taskfiles import reap
    return reap(args)


STEPS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "cgroups": reap_cgroups,
    "task-files": reap_task_files,
    "process-groups": reap_process_groups,
    "containers": reap_containers,
}
"""Cleanup steps by name (see the module docstring)."""


class Watchdog:
    """The node's end of the reaper: :meth:`add` steps (before or after :meth:`start`), :meth:`close` at a
    clean shutdown, after the tasks were stopped (the reaper then finds nothing left to kill)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.process: subprocess.Popen[bytes] | None = None

    def add(self, step: str, **args: Any) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown reaper step {step!r}")  # the caller's bug
        line = {"step": step, **args}
        self.steps.append(line)
        if self.process is not None:
            self._send(line)

    def start(self) -> None:
        if self.process is not None:
            return
        self.process = subprocess.Popen([sys.executable, "-m", "p2pswarm.runtime.reaper"], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, start_new_session=True)
        for line in self.steps:
            self._send(line)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _send(self, line: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(line).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            log.error("the reaper (pid %s) is gone: this node's tasks would outlive it", self.process.pid)

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Let the reaper run its steps and wait for it (it is this node's child)."""
        if self.process is None:
            return
        process, self.process = self.process, None
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(pipe: IO[bytes], out: IO[str]) -> int:
    """Read steps until EOF, then run them; each step's line, or its failure, goes to ``out``."""
    plan = []
    for raw in pipe:
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("step") in STEPS:
            plan.append(line)
    for line in plan:
        step = line.pop("step")
        try:
            said = STEPS[step](line)
        except Exception as exc:  # one failing step must not keep the others from running
            said = f"step {step} failed: {exc}"
        if said:
            print(f"p2pswarm reaper: {said}", file=out, flush=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(run(sys.stdin.buffer, sys.stderr))
