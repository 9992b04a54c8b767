"""The security host and the API CA keeper as one node component.

:class:`p2pswarm.security.host.SecurityHost` is started by the node before the gossip
(its key material decides the transport and the node's metadata), so ``start`` has
nothing left to do; each loop turn it publishes and applies the security record,
reconnects what peers refused, and hands a changed certificate to SWIM's metadata.
It also runs the secure join (the handshake, or a restart's key exchange with its
seeds) and introduces the node to the members it meets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from p2pswarm.consensus.host import ClusterMismatch
from p2pswarm.membership.messages import LIVE
from p2pswarm.security.errors import SecurityError

log = logging.getLogger("p2pswarm.node.daemon")

REFUSED_SCAN_INTERVAL = 0.5
"""Seconds between scans for connections a peer refused (it did not know our key yet): they reconnect."""
SEED_KEYS_INTERVAL = 2.0
"""Seconds between a restarted secure node's key requests and introductions to its seeds while it has not
joined (a seed that restarted too may have lost our key)."""
INTRODUCE_WINDOW = 30.0
"""Seconds after a secure join (or restart) during which the node introduces itself to each member it sees."""
INTRODUCE_PARALLEL = 16
"""Introductions in flight at once (a join into a large cluster meets every member within the window)."""


class SecurityComponent:
    name = "security"

    def __init__(self, security: Any, api_ca: Any, node: Any) -> None:
        """``node``: the :class:`p2pswarm.node.daemon.Node` (its ``raft_driver()``, ``swim``, ``transport``
        and ``refresh_meta(now)``, which hands the security host's new metadata to SWIM)."""
        self.security, self.api_ca, self.node = security, api_ca, node
        self._next_refused_scan = 0.0
        self._introduced: set[str] = set()

    async def start(self) -> None:
        """Nothing: the node activated the keys and the join endpoint before the gossip started."""

    def step(self, now: float) -> None:
        sec, node = self.security, self.node
        assignments = getattr(node, "assignments", None)
        worker = assignments.worker_trust() if assignments is not None else None
        sec.step(node.raft_driver(), node.swim, worker)
        if now >= self._next_refused_scan:
            self._next_refused_scan = now + REFUSED_SCAN_INTERVAL
            node.transport.drop_refused()
        if sec.meta_changed:
            sec.meta_changed = False
            node.refresh_meta(now)
        if worker is not None:
            self.api_ca.step_worker(assignments.worker_access(), now)  # type: ignore[union-attr]
        else:
            self.api_ca.step(node.raft_driver(), now)

    async def close(self) -> None:
        await self.security.close()
        await self.api_ca.close()

    def metrics(self) -> dict[str, Any]:
        return self.security.stats()

    # ------------------------------------------------------------ joining

    async def join(self, peers: tuple[str, ...]) -> None:
        """The join handshake (retried while nobody answers), then the gossip join with our certificate."""
        sec, node = self.security, self.node

        def on_attempt(attempt: int, why: str) -> None:
            log.warning("%s; retrying join with backoff (attempt %d)", why, attempt)
        try:
            await sec.join(peers, on_attempt)
            await sec.start_endpoint(node.options.bind, node.swim_addr)
        except Exception as exc:  # one line: refused token, clock, join endpoint port in use...
            node.fail(exc if isinstance(exc, SecurityError) else SecurityError(str(exc)))
            return
        node.refresh_meta(node.clock())
        node._gossip_join(peers)
        await self.introduce_known()

    async def rejoin(self, peers: tuple[str, ...]) -> None:
        """A restart with --peers: learn the seeds' keys we do not know, then join the gossip."""
        sec, node = self.security, self.node
        other = await sec.learn_keys(peers)
        if other and not any(sec.peer_key(p) for p in peers):
            node.fail(ClusterMismatch(
                f"data dir {node.datadir.path} holds raft cluster {sec.cluster_id}, but the peer at {other[0]} is "
                f"in another cluster (its CA is not this data dir's); use another --data-dir to join it (or move "
                f"{node.datadir.path} away to leave the old cluster)"))
            return
        await asyncio.gather(*(sec.introduce(None, p) for p in peers))  # they may have forgotten our key
        node.transport.drop_refused()
        node._gossip_join(peers)
        while not node.swim.joined and not node._stop_requested:
            await asyncio.sleep(SEED_KEYS_INTERVAL)
            if not node.swim.joined:  # a seed that was down, or restarted and forgot us: tell it again
                await sec.learn_keys(peers)
                if any(await asyncio.gather(*(sec.introduce(None, p) for p in peers))):
                    node.transport.drop_refused()
        await self.introduce_known()

    async def introduce_known(self) -> None:
        """For INTRODUCE_WINDOW seconds, introduce ourselves to each member we see (so that it admits our key
        before gossip tells it about us), then reconnect whatever those members had refused."""
        node = self.node
        deadline = node.clock() + INTRODUCE_WINDOW
        while node.clock() < deadline and not node._stop_requested:
            await self.introduce_to([(m.node, m.addr) for m in node.swim.members() if m.status in LIVE])
            await asyncio.sleep(0.1)

    async def introduce_to(self, members: list[tuple[str, str]]) -> None:
        """Introduce ourselves to those of ``members`` (node, addr) we have not introduced ourselves to yet."""
        me = self.node.node_id
        todo = [(peer, addr) for peer, addr in members if peer != me and peer not in self._introduced]
        if not todo:
            return
        self._introduced.update(peer for peer, _ in todo)
        gate = asyncio.Semaphore(INTRODUCE_PARALLEL)

        async def one(peer: str, addr: str) -> bool:
            async with gate:
                return await self.security.introduce(peer, addr)
        if any(await asyncio.gather(*(one(peer, addr) for peer, addr in todo))):
            self.node.transport.drop_refused()
            self.node._wake.set()
