"""The actions of a chaos run and the faults they leave in place.

Split from :mod:`p2pswarm.lab.chaos` because *doing* damage is one concern: each scenario
action (kill, restart, partition, heal, loss, slow) changes the lab and is logged in the
report's action list, and the wanted faults (cut links, loss) are applied the same way
everywhere: nftables inside the node's namespace with netns, the node's fault-injection
transport (``POST /v1/faults``) otherwise, again after a node comes back.
:class:`ChaosFaults` is mixed into :class:`p2pswarm.lab.chaos.ChaosRun`.

A restarted node's process opens its API a second or more after it starts (several on a busy
machine): an action that finds such a node not answering yet waits for it (up to
:data:`START_GRACE` after the restart) instead of leaving the fault off that node.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Callable

from p2pswarm.api.client import ApiError
from p2pswarm.lab import netns, report
from p2pswarm.lab.cluster import Lab, LabError, LabNode
from p2pswarm.lab.scenario import Action

START_GRACE = 8.0
"""Seconds after a restart during which a node whose API does not answer yet is still starting: faults for it
are retried (every :data:`START_RETRY` s) rather than reported as not applied."""
START_RETRY = 0.1


class ChaosFaults:
    """Actions and fault application of :class:`p2pswarm.lab.chaos.ChaosRun` (see the module docstring)."""

    if TYPE_CHECKING:  # what the run provides (set in ChaosRun.__init__ / defined on ChaosRun)
        lab: Lab | None
        use_netns: bool
        say: Callable[[str], None]
        lock: threading.Lock
        down: dict[str, list[list[float | None]]]
        paused: set[str]
        killed_order: list[str]
        loss: dict[str, float]
        blocked: dict[str, set[str]]
        actions: list[dict]
        notes: list[str]
        procs: list
        starting: dict[str, tuple[float, subprocess.Popen]]

        def t(self) -> float: ...
        def node_by_name(self, name: str) -> LabNode: ...
        def is_up(self, node: LabNode) -> bool: ...
        def leader(self, record: bool = False) -> LabNode | None: ...
        def schedule(self, at: float, fn: Callable[[], None]) -> None: ...

    def _log(self, do: str, label: str, ok: bool, node: str | None = None, detail: str = "",
             at: float | None = None, auto: bool = False) -> None:
        entry = {"at": at, "t": self.t(), "do": do, "label": label, "node": node, "ok": ok, "detail": detail}
        if auto:
            entry["auto"] = True
        self.actions.append(entry)
        self.say(f"t={entry['t']:.1f}s {label}: {'ok' if ok else 'FAILED'}{f' ({detail})' if detail else ''}")

    def _resolve(self, ref: int | str | None) -> LabNode | None:
        if ref == "leader":
            return self.leader()
        if ref == "last":
            with self.lock:
                name = next((n for n in reversed(self.killed_order)
                             if report.is_down(self.down, n, self.t())), None)
            return self.node_by_name(name) if name else None
        return self.lab.node(int(ref))

    def _act(self, a: Action) -> None:
        try:
            getattr(self, f"_do_{a.do}")(a)
        except (ApiError, LabError, netns.NetnsError, OSError) as exc:
            self._log(a.do, a.label(), False, detail=str(exc), at=a.at)

    def _do_kill(self, a: Action) -> None:
        node = self._resolve(a.node)
        if node is None or report.is_down(self.down, node.name, self.t()):
            self._log("kill", a.label(), False, getattr(node, "name", None), "no such node up", a.at)
            return
        pids = self.lab.crash(node)
        with self.lock:
            self.down.setdefault(node.name, []).append([self.t(), None])
            self.killed_order.append(node.name)
            self.paused.discard(node.name)
        self._log("kill", f"kill {node.name}", True, node.name, f"SIGKILL to {len(pids)} processes", a.at)

    def _do_restart(self, a: Action, auto: bool = False) -> None:
        node = self._resolve(a.node)
        if node is None or not report.is_down(self.down, node.name, self.t()):
            self._log("restart", a.label(), False, getattr(node, "name", None), "no killed node to restart", a.at)
            return
        proc = self.lab.restart(node)
        self.procs.append(proc)
        with self.lock:
            self.down[node.name][-1][1] = self.t()
        self.starting[node.name] = (self.t() + START_GRACE, proc)
        self._log("restart", f"restart {node.name}", True, node.name, at=a.at, auto=auto)
        if not self.use_netns:  # a new process starts without the faults its transport had
            for delay in (1.0, 3.0, 6.0):
                self.schedule(self.t() + delay, lambda n=node: self._apply_faults(n, quiet=True))

    def _do_partition(self, a: Action) -> None:
        groups = [[self.lab.node(i) for i in g] for g in a.groups]
        with self.lock:
            for g in groups:
                others = {n.name for other in groups if other is not g for n in other}
                for n in g:
                    self.blocked[n.name] = others
        failed = self._apply_all()
        self._log("partition", a.label(), not failed, detail=f"not applied on {', '.join(failed)}" if failed else "",
                  at=a.at)

    def _do_heal(self, a: Action | None = None) -> None:
        with self.lock:
            self.blocked.clear()
            self.loss.clear()
        failed = self._apply_all()
        self._log("heal", "heal", not failed, detail=f"not applied on {', '.join(failed)}" if failed else "",
                  at=a.at if a else None, auto=a is None)

    def _do_loss(self, a: Action) -> None:
        targets = [self.lab.node(i) for i in a.nodes] if a.nodes else list(self.lab.nodes)
        with self.lock:
            for n in targets:
                self.loss[n.name] = a.percent
        failed = self._apply_all(targets)
        self._log("loss", a.label(), not failed, detail=f"not applied on {', '.join(failed)}" if failed else "",
                  at=a.at)
        if a.duration:
            def end() -> None:
                with self.lock:
                    for n in targets:
                        if self.loss.get(n.name) == a.percent:
                            self.loss.pop(n.name)
                failed_end = self._apply_all(targets)
                self._log("loss", "loss ends", not failed_end, auto=True)
            self.schedule(a.at + a.duration, end)

    def _do_slow(self, a: Action) -> None:
        node = self._resolve(a.node)
        if node is None or not self.lab.signal_node(node, signal.SIGSTOP):
            self._log("slow", a.label(), False, getattr(node, "name", None), "node not running", a.at)
            return
        with self.lock:
            self.paused.add(node.name)
        self._log("slow", f"slow {node.name} {a.duration:g}s", True, node.name, "SIGSTOP", a.at)

        def resume() -> None:
            self.lab.signal_node(node, signal.SIGCONT)
            with self.lock:
                self.paused.discard(node.name)
            self._log("resume", f"resume {node.name}", True, node.name, "SIGCONT", auto=True)
            if not self.use_netns:
                self._apply_faults(node, quiet=True)
        self.schedule(a.at + a.duration, resume)

    # ------------------------------------------------------------ faults

    def _apply_all(self, nodes: list[LabNode] | None = None) -> list[str]:
        failed = []
        for node in nodes or self.lab.nodes:
            if not self._apply_faults(node):
                failed.append(node.name)
        return failed

    def _apply_faults(self, node: LabNode, quiet: bool = False) -> bool:
        """Make ``node``'s faults what the run wants now. False if it could not be applied
        (a killed or paused node in transport mode; it is applied again when it comes back)."""
        with self.lock:
            loss = self.loss.get(node.name, 0.0)
            blocked = [self.node_by_name(b) for b in sorted(self.blocked.get(node.name, ()))]
        if self.use_netns:
            try:
                netns.apply_faults(node.netns, loss, [b.host for b in blocked])
                return True
            except netns.NetnsError as exc:
                if not quiet:
                    self.notes.append(f"faults on {node.name}: {exc}")
                return False
        if not self.is_up(node):
            return False
        faults = {"drop_rate": loss / 100.0, "cut": [b.addr for b in blocked]}
        while True:
            try:
                node.api(timeout=2.0).post("/v1/faults", faults)
                return True
            except ApiError as exc:
                if exc.status is None and self._still_starting(node):  # not reached: its API is not up yet
                    time.sleep(START_RETRY)
                    continue
                if not quiet:
                    self.notes.append(f"faults on {node.name}: {exc}")
                return False

    def _still_starting(self, node: LabNode) -> bool:
        """True while ``node`` was restarted less than START_GRACE s ago and its process runs."""
        until, proc = self.starting.get(node.name, (0.0, None))
        return proc is not None and self.t() < until and proc.poll() is None and self.is_up(node)
