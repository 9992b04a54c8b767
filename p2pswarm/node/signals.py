"""SIGTERM and SIGINT make a node leave the cluster gracefully.

Split from :mod:`p2pswarm.node.daemon` because the handlers are installed twice (while the
data dir waits to be unlocked, :mod:`p2pswarm.node.unlock`, and while the loop runs) and
must be removed again each time; outside the main thread (tests) there are none.
:class:`SignalHandling` is mixed into :class:`p2pswarm.node.daemon.Node`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

log = logging.getLogger("p2pswarm.node.daemon")  # the daemon's logger: these lines are the daemon's


class SignalHandling:
    """Signal handlers of :class:`p2pswarm.node.daemon.Node` (see the module docstring)."""

    handle_signals = True
    """False when the process hosts several nodes: its host owns the handlers (one per signal and loop)."""

    if TYPE_CHECKING:  # defined on Node
        def request_shutdown(self) -> None: ...

    def _install_signals(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (e.g. tests)
                pass

    def _remove_signals(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s: leaving the cluster", signal.Signals(sig).name)
        self.request_shutdown()
