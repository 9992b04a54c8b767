"""How a node starts in (or refuses) a secure cluster: the part of Node.run that depends on security.

Split from :mod:`p2pswarm.node.daemon` so that the daemon reads as the loop it is:
unlocking the data key (encryption at rest), deciding secure create / join / restart,
choosing the CURVE transport, starting the security component, telling the operator how
to add nodes, and stopping an ``--insecure`` joiner that met a secure cluster are one
concern, and all of it happens once, at start.
:class:`SecureStart` is mixed into :class:`p2pswarm.node.daemon.Node`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Any, Callable

from p2pswarm.membership.messages import Meta
from p2pswarm.security.errors import SecurityError
from p2pswarm.transport.base import Transport

if TYPE_CHECKING:
    from p2pswarm.membership.swim import Swim
    from p2pswarm.node.component import Component
    from p2pswarm.node.datadir import DataDir
    from p2pswarm.node.options import NodeOptions

log = logging.getLogger("p2pswarm.node.daemon")  # the daemon's logger: these lines are the daemon's

SECURE_PROBE_INTERVAL = 2.0
"""Seconds between an --insecure joiner's checks for a secure cluster at its peers' join endpoints."""


class SecureStart:
    """The secure-cluster start of :class:`p2pswarm.node.daemon.Node` (see the module docstring)."""

    if TYPE_CHECKING:  # what the node class provides (set in Node.__init__ / defined on Node)
        options: NodeOptions
        datadir: DataDir
        transport: Any
        node_id: str
        name: str
        security: Any
        api_ca: Any
        _secure: Any
        _transport_factory: Callable[[NodeOptions], Transport]

        @property
        def swim_addr(self) -> str: ...

        def swim_core(self) -> Swim: ...
        def _peers(self) -> list[str]: ...
        async def _start_component(self, component: Component) -> None: ...
        def fail(self, exc: Exception) -> None: ...

    async def _wait_unlocked(self) -> bool:
        """Unlock the data key (encryption at rest) before anything reads the data dir; False if stopped
        meanwhile (:func:`p2pswarm.node.unlock.wait_unlocked`)."""
        from p2pswarm.node.unlock import wait_unlocked
        return await wait_unlocked(self)

    def _prepare_security(self) -> None:
        """Decide secure create / join / restart (nothing is logged yet: a bind error must stay the only line)."""
        from p2pswarm.security.host import SecurityHost, inspect
        if self.options.insecure and inspect(self.datadir) == "member":
            raise SecurityError(f"data dir {self.datadir.path} belongs to a secure cluster (it holds key material "
                                f"in {self.datadir.security_path}); start it without --insecure", "secure_dir")
        if not self.options.secure:
            return
        self.security = SecurityHost(self.datadir, self.node_id, self.name)
        self.security.prepare(tuple(self._peers()), self.options.token)
        from p2pswarm.security.apicahost import ApiCAHost
        self.api_ca = ApiCAHost(self.security, serve=self.options.api_addr is not None)

    def _make_transport(self) -> Transport:
        from p2pswarm.node.daemon import zmq_transport  # the daemon imports this module
        if self.security is None:
            return self._transport_factory(self.options)
        if self._transport_factory is not zmq_transport:
            raise ValueError("a secure node needs the ZeroMQ transport (CURVE)")
        return zmq_transport(self.options, self.security)

    async def _start_security(self, meta: Meta) -> Meta:
        """Create the cluster's keys or load ours, then serve the join endpoint; the metadata with our certificate."""
        sec = self.security
        if sec is None:
            return meta
        from p2pswarm.node.secure import SecurityComponent
        self._secure = SecurityComponent(sec, self.api_ca, self)
        await self._start_component(self._secure)
        for path in self.datadir.loosened:
            log.warning("key file %s was readable by others: its mode is now 0600", path)
        if sec.mode == "create":
            sec.create(str(self.datadir.path / "raft"))
            sec.token_created = True
        if sec.mode == "restart":
            sec.activate()
            await sec.start_endpoint(self.options.bind, self.transport.local_addr)
            meta = sec.meta(meta)
        return meta

    def _log_join_token(self) -> None:
        """Say how to add nodes. The token is a secret and never goes into a log line (logs are
        files that get copied around): it is shown on the operator's terminal when the node runs
        on one, else `p2pswarm cluster join-token` prints it (`up --detach` prints the command)."""
        log.info("created secure cluster %s; `p2pswarm cluster join-token --data-dir %s` prints its join token",
                 self.security.cluster_id, self.datadir.path)
        if not sys.stdout.isatty():
            return
        try:
            token = self.security.join_token()["token"]
        except SecurityError:
            return
        print(f"add nodes with: p2pswarm up --peers {self.swim_addr} --token {token}", flush=True)

    async def _refuse_secure_cluster(self, peers: tuple[str, ...]) -> None:
        """An --insecure joiner: a peer whose join endpoint answers is in a secure cluster; stop with one line."""
        from p2pswarm.security.host import probe_secure
        while not self.swim_core().joined:
            peer = await probe_secure(peers)
            if peer is not None:
                self.fail(SecurityError(
                    f"the cluster at {peer} is secure and does not accept plaintext (--insecure) members: join it "
                    f"with --token P2PS-1-... (print it with `p2pswarm cluster join-token` on a member)",
                    "secure_cluster"))
                return
            await asyncio.sleep(SECURE_PROBE_INTERVAL)
