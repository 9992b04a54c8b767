"""The node's kernel path: plans from every table the mesh host builds, applied off the event loop.

``up --mesh auto`` (the default) uses it when the node runs as root and nftables accepts the
mesh's rules (:func:`p2pswarm.mesh.nft.probe`); ``--mesh kernel`` insists on it, but also falls
back to user space (with the same one warning) when it cannot work; ``--mesh userspace`` never
uses it. The user-space data plane serves every port in every mode: what the kernel forwards
never reaches it, and the rest (:mod:`p2pswarm.mesh.kernel_plan`) it serves as before.

Every ``nft`` and ``conntrack`` run happens in the loop's executor, one at a time, so the SWIM
loop never waits for them; tables pushed while one applies are collapsed into the newest.
At start the node deletes a table of its own that a crash left behind; at close it deletes its
table. An apply that fails deletes the table and leaves the node in user space (one warning):
never half installed.
"""

from __future__ import annotations

import asyncio
import logging
from types import ModuleType
from typing import Any, Iterable, Mapping

from p2pswarm.mesh import kernel_plan, nft
from p2pswarm.mesh.kernel_plan import KernelPlan, PortPath

log = logging.getLogger("p2pswarm.mesh")

MODES = ("auto", "kernel", "userspace")
USERSPACE_CHOSEN = "this node runs with --mesh userspace"


class KernelPath:
    """One node's nftables table, kept equal to the plan of its newest route table."""

    def __init__(self, mode: str, table: str, *, ops: ModuleType | Any = nft) -> None:
        """``table``: the node's table name (:func:`kernel_plan.table_name`); ``ops``: the host side
        (:mod:`p2pswarm.mesh.nft`; tests pass a fake)."""
        if mode not in MODES:
            raise ValueError(f"mesh mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.table, self.ops = mode, table, ops
        self.off = USERSPACE_CHOSEN if mode == "userspace" else "kernel path not probed yet"
        """Why every port stays in user space ("" while the kernel path is in use)."""
        self.forwarding = False
        self.applied: KernelPlan | None = None
        """The plan the kernel holds (None: no table of ours)."""
        self.shown: KernelPlan | None = None
        """What ``mesh routes`` reports: the applied plan, or the user-space plan while the path is off."""
        self._wanted: tuple[KernelPlan, frozenset[tuple[str, int, str]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._conntrack_warned = False
        self.stats = {"applies": 0, "apply_errors": 0, "flows_reset": 0}
        self.last_apply_ms: float | None = None

    # ------------------------------------------------------------ the mesh host calls these

    async def start(self) -> None:
        """Remove a table a crash left behind, then probe (off the loop)."""
        self.off = await asyncio.get_running_loop().run_in_executor(None, self._start_blocking)
        if self.off and self.mode != "userspace":
            log.warning("routing mesh: kernel path unavailable (%s); forwarding in user space", self.off)
        elif not self.off:
            log.info("routing mesh: kernel path on (nftables table %s)", self.table)

    def push(self, table: Mapping[str, Any], listed: Iterable[tuple[str, int, str]]) -> None:
        """Plan ``table`` and apply the plan when it differs from the kernel's. ``listed``: every route
        row's ``(protocol, port, "ip:port")`` (replicas that disappeared from it get their flows reset)."""
        new = kernel_plan.plan(table, off=self.off, forwarding=self.forwarding)
        if self.off:
            self.shown = new
            return
        self._wanted = (new, frozenset(listed))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._apply_wanted())

    def path(self, protocol: str, port: int) -> tuple[str, str]:
        """``("kernel" | "userspace", why)`` of a published port, as the kernel holds it now."""
        found = self.shown.paths.get((protocol, port)) if self.shown is not None else None
        if found is None:
            return "userspace", self.off or "not in the kernel yet"
        return ("kernel", "") if found.kernel else ("userspace", found.why)

    def status(self) -> dict[str, Any]:
        kernel_ports = len(self.applied.kernel_paths()) if self.applied is not None else 0
        return {"mode": self.mode, "table": self.table, "on": not self.off, "off_why": self.off,
                "kernel_ports": kernel_ports, "last_apply_ms": self.last_apply_ms, **self.stats}

    async def close(self) -> None:
        """Wait for an apply in flight, then delete the table."""
        self._wanted = None
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)
        if self.applied is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._remove_quietly)
            self.applied = None

    # ------------------------------------------------------------ off the loop

    def _start_blocking(self) -> str:
        if self.mode == "userspace":  # a crash under another mode may have left rules that bypass us
            if self.ops.remove_all([self.table]):
                log.warning("routing mesh: cannot remove nftables table %s left by an earlier run", self.table)
            return USERSPACE_CHOSEN
        why = self.ops.probe()
        if why is not None:
            return why
        try:
            self.ops.remove(self.table)
        except nft.NftError as exc:
            return f"cannot remove this node's old table: {exc}"
        self.forwarding = self.ops.forwarding()
        return ""

    def _remove_quietly(self) -> None:
        try:
            self.ops.remove(self.table)
        except nft.NftError as exc:
            log.warning("routing mesh: cannot remove nftables table %s: %s", self.table, exc)

    async def _apply_wanted(self) -> None:
        loop = asyncio.get_running_loop()
        while self._wanted is not None and not self.off:
            new, listed = self._wanted
            self._wanted = None
            if new == self.applied:
                continue
            old = self.applied
            outcome = await loop.run_in_executor(None, self._apply, old, new, listed)
            if isinstance(outcome, str):
                self.stats["apply_errors"] += 1
                self._fall_back(new, outcome)
                await loop.run_in_executor(None, self._remove_quietly)
                return
            seconds, reset = outcome
            self.stats["applies"] += 1
            self.stats["flows_reset"] += reset
            self.last_apply_ms = round(seconds * 1000, 3)
            self.applied = self.shown = new

    def _apply(self, old: KernelPlan | None, new: KernelPlan,
               listed: frozenset[tuple[str, int, str]]) -> tuple[float, int] | str:
        """(seconds, flows reset), or why the transaction failed (runs in the executor)."""
        try:
            seconds = self.ops.run(kernel_plan.transaction(old, new, self.table))
        except nft.NftError as exc:
            return f"an nftables update failed: {exc}"
        gone = kernel_plan.dropped(old, new, listed)
        if not gone:
            return seconds, 0
        if self.ops.have_conntrack():
            return seconds, self.ops.reset_flows(new.host, gone)
        if not self._conntrack_warned:
            self._conntrack_warned = True
            log.warning("routing mesh: the conntrack command is missing (apt-get install -y conntrack): open "
                        "kernel flows to replicas that are gone are not reset and wait for their timeout")
        return seconds, 0

    def _fall_back(self, new: KernelPlan, why: str) -> None:
        log.warning("routing mesh: %s; removing table %s and forwarding in user space", why, self.table)
        self.off, self.applied = why, None
        self.shown = KernelPlan(new.host, {key: PortPath(p.protocol, p.port, why=why) for key, p in new.paths.items()})
