"""The node daemon: the ONE place that owns the event loop, sockets, clock, randomness and disk.

It drives the pure SWIM core (:mod:`p2pswarm.membership.swim`): every received
datagram is decoded (bad ones are counted and dropped), handed to the core, the
core is ticked at its own deadline, and whatever it wants sent is encoded and
sent. Nothing a peer sends and no exception inside one step may stop the loop:
each step is guarded, counted and logged. The local control API
(:mod:`p2pswarm.api`) runs on the same loop and reads the core directly.

Raft runs beside SWIM on the same loop and transport: :mod:`p2pswarm.raftnode`
decides which cluster and when, :mod:`p2pswarm.raftdriver` drives the core
(its fsyncs run in a worker thread, so they never delay a SWIM ack). This module
only routes Raft messages to it and shows its views.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any, Callable

from p2pswarm import wire
from p2pswarm.datadir import DataDir
from p2pswarm.membership.config import preset
from p2pswarm.membership.messages import STATUSES, Meta
from p2pswarm.membership.swim import Swim
from p2pswarm.consensus.messages import RAFT_MESSAGES
from p2pswarm.raftnode import RaftHost
from p2pswarm.transport.base import Transport

log = logging.getLogger("p2pswarm.node")

DEFAULT_PORT = 7946
DEFAULT_BIND = f"127.0.0.1:{DEFAULT_PORT}"
LEAVE_GRACE = 1.0
"""Seconds the loop keeps running after a graceful leave so that the news goes out."""
FLUSH_GRACE = 0.1
"""Seconds given to the transport to push the last messages before closing (it closes with linger 0)."""


@dataclass(frozen=True)
class NodeOptions:
    data_dir: str | None = None
    bind: str = DEFAULT_BIND
    advertise: str | None = None
    peers: tuple[str, ...] = ()
    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    preset: str = "lan"
    seed: int | None = None
    """Seeds the core's rng; random by default. Fixed seeds are for reproducing a run."""
    relay_port: int = 0
    """TCP port of this node's mesh relay listener; 0 picks the SWIM port + 2 when free."""


def zmq_transport(options: NodeOptions) -> Transport:
    from p2pswarm.transport.zmq import ZmqTransport
    return ZmqTransport(options.bind, options.advertise)


def software_version() -> str:
    try:
        return metadata.version("p2pswarm")
    except metadata.PackageNotFoundError:
        return "dev"


def host_capacity() -> tuple[tuple[str, float], ...]:
    cpus = float(os.cpu_count() or 1)
    try:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        memory_mb = 0.0
    return (("cpus", cpus), ("memory_mb", float(int(memory_mb))))


def check_meta(meta: Meta) -> None:
    """Peers reject metadata over the wire limits, so refuse it here, loudly, instead."""
    for field, check in Meta.SCHEMA:
        try:
            check(getattr(meta, field))
        except wire.WireError as exc:
            raise ValueError(f"invalid node {field}: {exc}") from None


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True)


class Node:
    def __init__(self, options: NodeOptions,
                 transport_factory: Callable[[NodeOptions], Transport] = zmq_transport,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.config = preset(options.preset)
        self.datadir = DataDir(options.data_dir)
        self.clock = clock
        self.seed = options.seed if options.seed is not None else secrets.randbits(64)
        self.counters: Counter[str] = Counter()
        self.transport: Any = None
        self.swim: Swim | None = None
        self.node_id = ""
        self.name = ""
        self.started = asyncio.Event()
        self._transport_factory = transport_factory
        self._wake = asyncio.Event()
        self._stop_requested = False
        self._leave_started: float | None = None
        self._force_stop = False
        self._join_attempts_seen = 0
        self._joined_logged = False
        self._saved_incarnation = -1
        self.raft: RaftHost | None = None
        self.agent: Any = None
        self.scheduler: Any = None
        self.mesh: Any = None
        self._scheduler_task: asyncio.Task | None = None
        self._fatal: Exception | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Run until shut down; raises DataDirError / TransportError / ValueError with one-line reasons."""
        from p2pswarm.api.routes import Router
        from p2pswarm.api.server import ApiServer
        from p2pswarm.transport.faults import FaultyTransport

        self.datadir.prepare()
        self.datadir.lock()
        try:
            self.node_id, self.name, incarnation = self.datadir.identity(self.options.name)
            self._saved_incarnation = incarnation
            meta = Meta(name=self.name, labels=tuple(sorted(self.options.labels)), capacity=host_capacity(),
                        version=software_version(), started_ms=int(time.time() * 1000))
            check_meta(meta)
            self.transport = FaultyTransport(self._transport_factory(self.options), random.Random(self.seed + 1))
            await self.transport.start()
            api = ApiServer(str(self.datadir.api_sock), Router(self))
            try:
                now = self.clock()
                self.swim = Swim(self.node_id, self.transport.local_addr, meta, self.config,
                                 random.Random(self.seed), now, incarnation=incarnation)
                self.datadir.write_pid()
                await api.start()
                self._install_signals()
                self._start_cluster(now)
                self.raft = RaftHost(self.node_id, self.datadir.path, self.options.preset, bool(self._peers()),
                                     swim=self.swim, transport=self.transport, clock=self.clock, seed=self.seed,
                                     fatal=self.fail)
                self.raft.start(now)
                await self._start_services(incarnation)
                self.started.set()
                await self._loop()
            finally:
                self._remove_signals()
                await api.close()
                await self._stop_services()
                if self.raft is not None:
                    await self.raft.close()
                await asyncio.sleep(FLUSH_GRACE)
                await self.transport.close()
                self.datadir.remove_pid()
                self.datadir.api_sock.unlink(missing_ok=True)
        finally:
            self.datadir.unlock()
        if self._fatal is not None:
            raise self._fatal
        log.info("node %s (%s) stopped", self.name, self.node_id)
        return 0

    async def _start_services(self, incarnation: int) -> None:
        """The agent (every node) and the scheduler (acts only while this node leads Raft)."""
        from p2pswarm.agent.host import AgentHost
        from p2pswarm.meshhost import MeshHost, pick_relay_port
        from p2pswarm.scheduler_driver import PRESETS, SchedulerDriver

        host = self.swim_addr.rsplit(":", 1)[0].strip("[]")
        self.agent = AgentHost(self.node_id, self.datadir.path, self.raft, incarnation, task_host=host)
        await self.agent.start()
        relay_port = self.options.relay_port or pick_relay_port(host, int(self.swim_addr.rsplit(":", 1)[1]))
        self.mesh = MeshHost(self.node_id, self.swim, self.transport, self.raft, relay_port=relay_port,
                             unreachable=self.swim.unreachable)
        self.scheduler = SchedulerDriver(self.raft, self.swim, PRESETS[self.options.preset])
        self._scheduler_task = asyncio.ensure_future(self.scheduler.run())
        from p2pswarm.api.logs import LogsService
        self.logs = LogsService(self)  # answers other nodes' `service logs` requests (wire kinds 48-55)

    async def _stop_services(self) -> None:
        if self.mesh is not None:
            await self.mesh.close()
        if self._scheduler_task is not None:
            self._scheduler_task.cancel()
            await asyncio.gather(self._scheduler_task, return_exceptions=True)
        if self.agent is not None:
            try:
                await self.agent.close()
            except Exception:
                log.error("stopping tasks failed", exc_info=True)

    def fail(self, exc: Exception) -> None:
        """Stop at once because of ``exc``; ``run`` raises it (one line) after cleaning up."""
        if self._fatal is None:
            log.error("%s", exc)
            self._fatal = exc
        self._force_stop = True
        self._wake.set()

    def request_shutdown(self) -> None:
        """Leave gracefully, then stop; a second request stops at once."""
        if self._stop_requested:
            log.warning("second stop request: stopping without waiting for the leave to spread")
            self._force_stop = True
        self._stop_requested = True
        self._wake.set()

    def _peers(self) -> list[str]:
        return [p for p in self.options.peers if p != self.swim_addr]

    def _start_cluster(self, now: float) -> None:
        assert self.swim is not None
        peers = self._peers()
        if peers:
            log.info("node %s (%s) at %s joining via %s (preset %s)", self.name, self.node_id, self.swim_addr,
                     ", ".join(peers), self.options.preset)
            self.swim.join(now, peers)
        else:
            log.info("node %s (%s) at %s started a new cluster (preset %s)", self.name, self.node_id,
                     self.swim_addr, self.options.preset)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (e.g. tests)
                pass

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s: leaving the cluster", signal.Signals(sig).name)
        self.request_shutdown()

    # ------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        recv = asyncio.ensure_future(self.transport.recv())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            while True:
                now = self.clock()
                ticked = False
                if now >= self._guard("deadline", self._deadline, default=now):
                    self._guard("tick", self.swim.tick, now)
                    ticked = True
                self._after_step(now)
                if self._finished(now):
                    break
                delay = max(0.0, self._guard("deadline", self._deadline, default=now + 0.1) - self.clock())
                if ticked and delay == 0.0:
                    delay = 0.001  # a core that asks to be ticked again at once must not spin the CPU
                if self._leave_started is not None:
                    delay = min(delay, max(0.0, self._leave_started + LEAVE_GRACE - now))
                done, _ = await asyncio.wait({recv, wake}, timeout=delay,
                                             return_when=asyncio.FIRST_COMPLETED)
                if recv in done:
                    self._on_recv(recv)
                    if recv.exception() is not None:
                        await asyncio.sleep(0.05)  # a failing transport must not spin the CPU either
                    recv = asyncio.ensure_future(self.transport.recv())
                if wake in done:
                    self._wake.clear()
                    wake = asyncio.ensure_future(self._wake.wait())
        finally:
            recv.cancel()
            wake.cancel()

    def _deadline(self) -> float:
        return self.swim.next_deadline()

    def _on_recv(self, fut: asyncio.Future) -> None:
        exc = fut.exception()
        if exc is not None:
            self.counters["recv_errors"] += 1
            log.warning("transport receive failed: %s", exc)
            return
        try:
            msg = wire.decode(fut.result())
        except wire.WireError as err:
            self.counters["wire_errors"] += 1
            log.debug("dropped a bad message: %s", err)
            return
        if isinstance(msg, RAFT_MESSAGES):
            if not self._guard("raft receive", self.raft.receive, msg):
                self.counters["raft_not_started"] += 1
            return
        logs = getattr(self, "logs", None)
        if logs is not None and isinstance(msg, logs.MESSAGES):
            self._guard("logs", logs.receive, msg)
            return
        self._guard("receive", self.swim.receive, self.clock(), msg)

    def _after_step(self, now: float) -> None:
        if self._stop_requested and self._leave_started is None:
            self._leave_started = now
            self._guard("leave", self.swim.leave, now)
        self._guard("flush", self._flush)
        self._guard("events", self._handle_events)
        self._guard("join progress", self._report_join)
        self._guard("persist", self._persist_incarnation)
        if self.raft is not None:
            self._guard("raft membership", self.raft.step, now)
        if self.mesh is not None:
            self._guard("mesh", self.mesh.step, now)

    def _finished(self, now: float) -> bool:
        if self._force_stop:
            return True
        if self._leave_started is None:
            return False
        if self.swim.leave_done or now >= self._leave_started + LEAVE_GRACE:
            return True
        return not any(m.status in ("alive", "suspect") and m.node != self.node_id for m in self.swim.members())

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        """Run one step; an exception is counted and logged, never fatal."""
        try:
            return fn(*args)
        except Exception:
            self.counters["handler_errors"] += 1
            log.error("error in %s (counted, node keeps running)", what, exc_info=True)
            return default

    def _flush(self) -> None:
        for out in self.swim.drain_outbox():
            try:
                data = wire.encode(out.msg)
            except ValueError:
                self.counters["encode_errors"] += 1
                log.error("cannot encode %s for %s", type(out.msg).__name__, out.addr, exc_info=True)
                continue
            try:
                self.transport.send(out.addr, data, out.bulk)
            except Exception as exc:
                self.counters["send_errors"] += 1
                log.debug("send to %s failed: %s", out.addr, exc)

    def _handle_events(self) -> None:
        for ev in self.swim.drain_events():
            member = self.swim.member(ev.node)
            name = member.meta.name if member else "?"
            addr = member.addr if member else "?"
            if ev.old is None:
                log.info("member %s (%s) at %s is %s", name, ev.node, addr, ev.new)
            else:
                log.info("member %s (%s) at %s: %s -> %s", name, ev.node, addr, ev.old, ev.new)

    def _report_join(self) -> None:
        if not self.options.peers or self._leave_started is not None:
            return
        if self.swim.joined:
            if not self._joined_logged:
                self._joined_logged = True
                log.info("joined the cluster: %d members", self.cluster_size())
            return
        attempts = self.swim.join_attempts
        if attempts > self._join_attempts_seen and attempts >= 2:
            log.warning("no answer yet from %s; retrying join with backoff (attempt %d)",
                        ", ".join(self.options.peers), attempts)
        self._join_attempts_seen = attempts

    def _persist_incarnation(self) -> None:
        me = self.swim.member(self.node_id)
        if me is not None and me.incarnation > self._saved_incarnation:
            self.datadir.save_incarnation(me.incarnation)
            self._saved_incarnation = me.incarnation

    # ------------------------------------------------------------ views for the API

    @property
    def swim_addr(self) -> str:
        return self.transport.local_addr if self.transport is not None else self.options.bind

    def cluster_size(self) -> int:
        return sum(1 for m in self.swim.members() if m.status in ("alive", "suspect"))

    def info(self) -> dict[str, Any]:
        members = self.swim.members()
        by_status = {s: 0 for s in STATUSES}
        for m in members:
            by_status[m.status] = by_status.get(m.status, 0) + 1
        return {
            "id": self.node_id, "name": self.name, "addr": self.swim_addr, "pid": os.getpid(),
            "data_dir": str(self.datadir.path), "preset": self.options.preset, "version": software_version(),
            "cluster_size": by_status["alive"] + by_status["suspect"], "members_by_status": by_status,
            "peers": list(self.options.peers), "joined": self.swim.joined, "join_attempts": self.swim.join_attempts,
            "leaving": self._stop_requested,
        }

    def member_views(self) -> list[dict[str, Any]]:
        now = self.clock()
        views = []
        for m in self.swim.members():
            views.append({
                "id": m.node, "name": m.meta.name, "addr": m.addr, "status": m.status,
                "incarnation": m.incarnation, "labels": dict(m.meta.labels), "capacity": dict(m.meta.capacity),
                "version": m.meta.version, "rtt_ms": None if m.rtt is None else round(m.rtt * 1000, 3),
                "status_for_s": round(max(0.0, now - m.status_since), 3), "self": m.node == self.node_id,
                "role": self.raft_role(m.node),
            })
        return sorted(views, key=lambda v: (v["name"], v["id"]))

    def fault_settings(self) -> dict[str, Any]:
        return self.transport.describe()

    def configure_faults(self, settings: dict[str, Any]) -> dict[str, Any]:
        self.transport.configure(settings)
        log.warning("fault injection configured: %s", self.transport.describe())
        return self.transport.describe()

    def heal_faults(self) -> dict[str, Any]:
        self.transport.heal()
        log.info("fault injection cleared")
        return self.transport.describe()

    def metrics_snapshot(self) -> dict[str, Any]:
        info = self.info()
        driver = self.raft_driver()
        return {"members_by_status": info["members_by_status"], "joined": info["joined"],
                "swim": dict(self.swim.counters),
                "transport": dict(self.transport.stats()), "node": dict(self.counters),
                "raft": driver.metrics() if driver is not None else {}}

    def mesh_view(self) -> dict[str, Any]:
        if self.mesh is None:
            return {"running": False, "routes": [], "ports": []}
        status = self.mesh.status()
        plane = status["data_plane"]
        status["routes"] = [asdict(r) for r in self.mesh.routes]
        status["ports"] = sorted({r.port for r in self.mesh.routes})
        status["bind_errors"] = plane.get("bind_errors", {})
        return status

    def mesh_metrics(self) -> dict[str, int]:
        return self.mesh.metrics() if self.mesh is not None else {}

    # ------------------------------------------------------------ raft views for the API

    def raft_driver(self):
        """The running Raft driver, or None while this node has not learned its cluster yet."""
        return self.raft.driver if self.raft is not None else None

    def raft_role(self, node: str) -> str:
        driver = self.raft_driver()
        return driver.role_of(node) if driver is not None else "-"
