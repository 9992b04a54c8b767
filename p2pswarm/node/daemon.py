"""The node daemon: the ONE place that owns the event loop, sockets, clock, randomness and disk.

It drives the pure SWIM core (:mod:`p2pswarm.membership.swim`): every received
datagram is decoded (bad ones are counted and dropped), handed to the core, the
core is ticked at its own deadline, and whatever it wants sent is encoded and
sent. Nothing a peer sends and no exception inside one step may stop the loop:
each step is guarded, counted and logged. The local control API
(:mod:`p2pswarm.api`) runs on the same loop and reads the core directly.

Raft runs beside SWIM on the same loop and transport: :mod:`p2pswarm.consensus.host`
decides which cluster and when, :mod:`p2pswarm.consensus.driver` drives the core
(its fsyncs run in a worker thread, so they never delay a SWIM ack). This module
only routes Raft messages to it and shows its views.

In a secure cluster (``NodeOptions.secure``, the CLI's default) the transport runs
ZeroMQ CURVE and admits only keys with a valid certificate from the cluster CA
(:mod:`p2pswarm.security.host` keeps the key material, the admission, the join
endpoint and the security record); every received message must come from the node
its sending key belongs to, and the join kinds (64-68) never enter through the
gossip socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import time
from collections import Counter
from typing import Any, Callable, Coroutine

from p2pswarm import wire
from p2pswarm.consensus.host import RaftHost
from p2pswarm.dns.host import DnsHost
from p2pswarm.events.host import attach as attach_events
from p2pswarm.membership.messages import LIVE, Meta
from p2pswarm.membership.swim import Swim
from p2pswarm.node.component import Component
from p2pswarm.node.datadir import DataDir
from p2pswarm.node.inbox import Inbox
from p2pswarm.node.logtag import NODE
from p2pswarm.node.options import NodeOptions
from p2pswarm.node.presets import preset
from p2pswarm.node.record import GossipRecord
from p2pswarm.node.securestart import SecureStart
from p2pswarm.node.signals import SignalHandling
from p2pswarm.node.view import NodeViews, software_version
from p2pswarm.security import messages as _join_messages  # noqa: F401  (registers kinds 64-68, dropped here)
from p2pswarm.transport.base import Transport

log = logging.getLogger("p2pswarm.node.daemon")

LEAVE_GRACE = 1.0
"""Seconds the loop keeps running after a graceful leave so that the news goes out."""
FLUSH_GRACE = 0.1
"""Seconds given to the transport to push the last messages before closing (it closes with linger 0)."""
RECV_BATCH = 64
"""Messages that arrived already, read in the same loop turn as the one that woke it (at most): SWIM's timers
run after them, so that an ack that came in time counts even when the loop was late to read it, and a burst
costs one turn of the components instead of one each; under a flood the timers still run every batch."""


def zmq_transport(options: NodeOptions, security: Any = None) -> Transport:
    from p2pswarm.transport.zmq import ZmqTransport
    if security is None:
        return ZmqTransport(options.bind, options.advertise)
    return ZmqTransport(options.bind, options.advertise, curve=security.keys, authorize=security.authorize,
                        peer_key=security.peer_key)


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


class Node(NodeViews, SecureStart, SignalHandling, Inbox):
    """One node: the loop over SWIM and the components; its API views come from :class:`NodeViews`,
    its secure-cluster start from :class:`SecureStart`, its signal handlers from :class:`SignalHandling`,
    the routing of what the transport receives from :class:`Inbox`."""

    def __init__(self, options: NodeOptions,
                 transport_factory: Callable[[NodeOptions], Transport] = zmq_transport,
                 clock: Callable[[], float] = time.monotonic, *, handle_signals: bool = True) -> None:
        """``handle_signals``: SIGTERM/SIGINT make this node leave; False when the process hosts several
        nodes (:mod:`p2pswarm.testing.multinode` owns the handlers and stops them all)."""
        self.options = options
        self.handle_signals = handle_signals
        self.config = preset(options.preset).membership
        self.datadir = DataDir(options.data_dir)
        self.clock = clock
        self.seed = options.seed if options.seed is not None else secrets.randbits(64)
        self.counters: Counter[str] = Counter()
        self.transport: Any = None
        self.swim: Swim | None = None
        self.record = GossipRecord()
        """This node's gossip record: each component sets its section, the loop flushes it to SWIM."""
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
        self.components: list[Component] = []
        """Started in this order, stepped after every loop turn, closed in reverse (:mod:`p2pswarm.node.component`)."""
        self.raft: RaftHost | None = None
        self.agent: Any = None
        self.scheduler: Any = None
        self.mesh: Any = None
        self.dns: Any = None  # the DnsHost (p2pswarm.dns.host) once the services started
        self.logs: Any = None
        """The :class:`p2pswarm.logs.service.LogsService` once the services started."""
        self.assignments: Any = None
        """The :class:`p2pswarm.assignments.host.AssignmentsHost` once the services started."""
        self.events: Any = None  # the EventsHost (p2pswarm.events.host), attached to Raft before it starts
        self._fatal: Exception | None = None
        self.security: Any = None
        """The SecurityHost in a secure cluster, else None."""
        self._meta: Meta | None = None
        self._background: set[asyncio.Task] = set()
        self._starting: asyncio.Future | None = None
        """The start of Raft and the services while it runs (:meth:`_start_unless_stopped`)."""
        self._secure: Any = None
        """The security component (:class:`p2pswarm.node.secure.SecurityComponent`) in a secure cluster."""
        self.api_handler: Any = None
        """The router wrapped by the audit log (:class:`p2pswarm.api.audit.Audited`), for both listeners."""
        self.remote_api: Any = None
        """The remote API listener (``--api-addr``), else None."""
        self.api_ca: Any = None
        """The API CA keeper (:class:`p2pswarm.security.apicahost.ApiCAHost`) in a secure cluster, else None."""

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Run until shut down; raises DataDirError / TransportError / ValueError with one-line reasons."""
        from p2pswarm.api.audit import Audited
        from p2pswarm.api.forward import for_node as forwarding
        from p2pswarm.api.routes import Router
        from p2pswarm.api.server import ApiServer
        from p2pswarm.transport.faults import FaultyTransport

        self.datadir.prepare()
        self.datadir.lock()
        try:
            self.node_id, self.name, incarnation = self.datadir.identity(self.options.name)
            NODE.set(self.name)  # the tasks and threads started from here on log as this node
            self._saved_incarnation = incarnation
            meta = Meta(name=self.name, labels=tuple(sorted(self.options.labels)), capacity=host_capacity(),
                        version=software_version(), started_ms=int(time.time() * 1000))
            check_meta(meta)
            if not await self._wait_unlocked():
                return 0  # stopped while locked
            self._prepare_security()
            self.transport = FaultyTransport(self._make_transport(), random.Random(self.seed + 1))
            await self.transport.start()
            self.api_handler = forwarding(self, Audited(Router(self)))  # a worker forwards what needs Raft state
            api = ApiServer(str(self.datadir.api_sock), self.api_handler)
            try:
                meta = await self._start_security(meta)
                self._meta = meta
                now = self.clock()
                self.swim = Swim(self.node_id, self.transport.local_addr, meta, self.config,
                                 random.Random(self.seed), now, incarnation=incarnation)
                self.record = GossipRecord(self.swim.set_record, on_change=self._wake.set)
                self.datadir.write_pid()
                await api.start()
                await self._start_remote_api()  # before joining: a port in use fails the start at once
                self._install_signals()
                self._start_cluster(now)
                if await self._start_unless_stopped(self._start_raft_and_services(incarnation)):
                    self.started.set()
                    await self._loop()
            finally:
                self._remove_signals()
                await api.close()
                if self.remote_api is not None:
                    await self.remote_api.close()
                await self.api_handler.close()
                for task in list(self._background):
                    task.cancel()
                await asyncio.gather(*self._background, return_exceptions=True)
                await self._close_components()
                await asyncio.sleep(FLUSH_GRACE)
                await self.transport.close()
                self.datadir.remove_pid()
                self.datadir.api_sock.unlink(missing_ok=True)
        finally:
            from p2pswarm.security.autolock import forget
            forget(self.datadir.path)
            self.datadir.unlock()
        if self._fatal is not None:
            raise self._fatal
        log.info("node %s (%s) stopped", self.name, self.node_id)
        return 0

    async def _start_unless_stopped(self, start: Coroutine[Any, Any, None]) -> bool:
        """Run ``start``; a fatal error or a forced stop meanwhile cancels it (False): a start step waiting on
        something slow, such as a container engine that hangs, must not keep alive a node that has to stop."""
        if self._force_stop:  # it failed before this part began (its security, its API listeners)
            start.close()
            return False
        self._starting = asyncio.ensure_future(start)
        try:
            await self._starting
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self._starting.cancelled() or (current is not None and current.cancelling()):
                raise  # the node itself is being cancelled, not just its start
            return False
        finally:
            self._starting = None
        return True

    def _abort_start(self) -> None:
        if self._starting is not None and not self._starting.done():
            log.info("stopping before the node finished starting")
            self._starting.cancel()

    async def _start_raft_and_services(self, incarnation: int) -> None:
        self.raft = RaftHost(self.node_id, self.datadir.path, self.options.preset, bool(self._peers()),
                             swim=self.swim, transport=self.transport, clock=self.clock, seed=self.seed,
                             fatal=self.fail, record=self.record, max_learners=self.options.max_learners)
        self.events = attach_events(self.raft, self.datadir.path)
        await self._start_component(self.raft)
        await self._start_services(incarnation)

    async def _start_services(self, incarnation: int) -> None:
        """The agent (every node) and the scheduler (acts only while this node leads Raft)."""
        from p2pswarm.agent.host import AgentHost
        from p2pswarm.mesh.host import MeshHost, pick_relay_port
        from p2pswarm.scheduler.driver import SchedulerDriver

        host = self.swim_addr.rsplit(":", 1)[0].strip("[]")
        self.dns = DnsHost.of_node(self)
        await self._start_component(self.dns)  # before the agent: its tasks are told where to ask
        from p2pswarm.assignments.host import AssignmentsHost
        self.assignments = AssignmentsHost(self.node_id, self.raft, self.swim, self.record, self.transport,
                                           preset(self.options.preset).assignments, clock=self.clock)
        await self._start_component(self.assignments)  # before the agent: it reads a worker's assignments
        self.agent = AgentHost(self.node_id, self.datadir.path, self.raft, incarnation, task_host=host,
                               task_user=self.options.task_user, record=self.record,
                               keyring=self.security.keyring if self.security is not None else None,
                               source=self.assignments.agent_state,
                               engine_socket=self.options.engine_socket, dns=self.dns.addr)
        await self._start_component(self.agent)
        await self._start_component(self.events)
        relay_port = self.options.relay_port or pick_relay_port(host, int(self.swim_addr.rsplit(":", 1)[1]))
        self.mesh = MeshHost(self.node_id, self.swim, self.transport, self.raft, relay_port=relay_port,
                             unreachable=self.swim_core().unreachable, security=self.security,
                             state_dir=self.datadir.path, record=self.record, kernel=self._kernel_path())
        self.scheduler = SchedulerDriver(self.raft, self.swim, preset(self.options.preset).scheduler,
                                         record=self.record)
        await self._start_component(self.scheduler)
        await self._start_component(self.mesh)
        from p2pswarm.logs.service import LogsService
        self.logs = LogsService(self)  # answers other nodes' `service logs` requests (wire kinds 48-55)

    def _kernel_path(self) -> Any:
        """The routing mesh's kernel path; its nftables table is named after this node's address."""
        from p2pswarm.mesh.kernel import KernelPath
        from p2pswarm.mesh.kernel_plan import table_name
        host, _, port = self.swim_addr.rpartition(":")
        return KernelPath(self.options.mesh, table_name(host.strip("[]"), int(port)))

    async def _start_remote_api(self) -> None:
        if self.options.api_addr is None:
            return
        from p2pswarm.api.remote import RemoteApiServer, parse_api_addr
        if self.security is None:
            raise ValueError("--api-addr serves the API with client certificates of the cluster, and this "
                             "cluster is plaintext (--insecure): drop --api-addr or run a secure cluster")

        def record() -> Any:
            """A worker checks clients by the access part its member sends; a member by its replica."""
            if self.assignments is not None and self.assignments.worker_trust() is not None:
                return self.assignments.worker_access()
            driver = self.raft_driver()
            return driver.sm.access if driver is not None else None
        self.remote_api = RemoteApiServer(parse_api_addr(self.options.api_addr), self.api_handler, self.api_ca,
                                          record)
        await self.remote_api.start()

    def remote_api_stats(self) -> dict[str, int]:
        """The remote listener's refusals and requests, and the audit log writer's counters."""
        out = dict(self.api_handler.counters) if self.api_handler is not None else {}
        if self.remote_api is not None:
            out.update({f"remote_api_{k}": v for k, v in self.remote_api.stats().items()})
        return out

    async def _start_component(self, component: Component) -> None:
        """Start ``component``; from now on the loop steps it and the stop closes it (even if its start fails)."""
        self.components.append(component)
        await component.start()

    async def _close_components(self) -> None:
        """Close the components in reverse start order; one that fails to close is logged, the others close."""
        while self.components:
            component = self.components.pop()
            try:
                await component.close()
            except Exception:
                log.error("stopping the %s failed", component.name, exc_info=True)

    def fail(self, exc: Exception) -> None:
        """Stop at once because of ``exc``; ``run`` raises it (one line) after cleaning up."""
        if self._fatal is None:
            log.error("%s", exc)
            self._fatal = exc
        self._force_stop = True
        self._abort_start()
        self._wake.set()

    def request_shutdown(self) -> None:
        """Leave gracefully, then stop; a second request stops at once."""
        if self._stop_requested:
            log.warning("second stop request: stopping without waiting for the leave to spread")
            self._force_stop = True
            self._abort_start()
        self._stop_requested = True
        self._wake.set()

    def _peers(self) -> list[str]:
        return [p for p in self.options.peers if p != self.swim_addr]

    def _start_cluster(self, now: float) -> None:
        assert self.swim is not None
        peers = self._peers()
        sec = self.security
        if peers:
            log.info("node %s (%s) at %s joining via %s (preset %s%s)", self.name, self.node_id, self.swim_addr,
                     ", ".join(peers), self.options.preset, ", secure" if sec is not None else ", plaintext")
            if sec is None:
                self.swim_core().join(now, peers)
                if self.options.insecure:
                    self._spawn(self._refuse_secure_cluster(tuple(peers)))
            else:
                self.swim_core().joined = False  # until the handshake (or the seeds' keys) let the gossip join begin
                self._spawn(self._secure.join(tuple(peers)) if sec.mode == "join"
                            else self._secure.rejoin(tuple(peers)))
        else:
            log.info("node %s (%s) at %s started a new cluster (preset %s%s)", self.name, self.node_id,
                     self.swim_addr, self.options.preset, ", secure" if sec is not None else ", plaintext")
        if sec is not None and sec.token_created:
            self._log_join_token()

    def _spawn(self, coro: Any) -> None:
        """A background task of the node; an exception in it is counted and logged, never lost."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters["handler_errors"] += 1
            log.error("error in a background task (counted, node keeps running)", exc_info=task.exception())

    def _gossip_join(self, peers: tuple[str, ...]) -> None:
        """Start SWIM's join; the loop sends the push/pull (and handles the reply) at its next step."""
        self.swim_core().join(self.clock(), list(peers))
        self._wake.set()

    # ------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        recv = asyncio.ensure_future(self.transport.recv_with_key())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            while True:
                now = self.clock()
                ticked = False
                deadline = self._guard("deadline", self._deadline, default=now)
                if now >= deadline:
                    self._guard("stall", self.swim_core().stalled, now, now - deadline)
                    self._guard("tick", self.swim_core().tick, now)
                    ticked = True
                self._after_step(now)
                self._guard("record", self.record.flush, now)  # once per turn, after every component set its part
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
                    else:
                        for data, key in self._guard("recv", self.transport.recv_ready, RECV_BATCH, default=()):
                            self._on_message(data, key)
                    recv = asyncio.ensure_future(self.transport.recv_with_key())
                if wake in done:
                    self._wake.clear()
                    wake = asyncio.ensure_future(self._wake.wait())
        finally:
            recv.cancel()
            wake.cancel()

    def _deadline(self) -> float:
        return self.swim_core().next_deadline()

    def _after_step(self, now: float) -> None:
        if self._stop_requested and self._leave_started is None:
            self._leave_started = now
            self._guard("leave", self.swim_core().leave, now)
        self._guard("flush", self._flush)
        self._guard("events", self._handle_events)
        self._guard("join progress", self._report_join)
        self._guard("persist", self._persist_incarnation)
        for component in self.components:
            self._guard(component.name, component.step, now)

    def refresh_meta(self, now: float) -> None:
        """Gossip the security host's current metadata (our certificate) in place of ours."""
        if self._meta is not None:
            self._meta = self.security.meta(self._meta)
            self.swim_core().update_meta(now, self._meta)

    def _finished(self, now: float) -> bool:
        if self._force_stop:
            return True
        if self._leave_started is None:
            return False
        if self.swim_core().leave_done or now >= self._leave_started + LEAVE_GRACE:
            return True
        return not any(m.status in LIVE and m.node != self.node_id for m in self.swim_core().members())

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        """Run one step; an exception is counted and logged, never fatal."""
        try:
            return fn(*args)
        except Exception:
            self.counters["handler_errors"] += 1
            log.error("error in %s (counted, node keeps running)", what, exc_info=True)
            return default

    def _flush(self) -> None:
        for out in self.swim_core().drain_outbox():
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
        for ev in self.swim_core().drain_events():
            member = self.swim_core().member(ev.node)
            name = member.meta.name if member else "?"
            addr = member.addr if member else "?"
            self.events.member(ev.node, name, ev.old, ev.new)  # attached before the loop runs
            if ev.old is None:
                log.info("member %s (%s) at %s is %s", name, ev.node, addr, ev.new)
            else:
                log.info("member %s (%s) at %s: %s -> %s", name, ev.node, addr, ev.old, ev.new)

    def _report_join(self) -> None:
        if not self.options.peers or self._leave_started is not None:
            return
        if self.swim_core().joined:
            if not self._joined_logged:
                self._joined_logged = True
                log.info("joined the cluster: %d members", self.cluster_size())
            return
        attempts = self.swim_core().join_attempts
        if attempts > self._join_attempts_seen and attempts >= 2:
            log.warning("no answer yet from %s; retrying join with backoff (attempt %d)",
                        ", ".join(self.options.peers), attempts)
        self._join_attempts_seen = attempts

    def _persist_incarnation(self) -> None:
        me = self.swim_core().member(self.node_id)
        if me is not None and me.incarnation > self._saved_incarnation:
            self.datadir.save_incarnation(me.incarnation)
            self._saved_incarnation = me.incarnation

    # ------------------------------------------------------------ what the loop and the views share

    @property
    def swim_addr(self) -> str:
        return self.transport.local_addr if self.transport is not None else self.options.bind

    def cluster_size(self) -> int:
        return sum(1 for m in self.swim_core().members() if m.status in LIVE)
