"""Which node a log line comes from, when several nodes share one process.

A node sets :data:`NODE` to its name as soon as it knows it (:meth:`p2pswarm.node.daemon.Node.run`). Every
asyncio task and ``asyncio.to_thread`` call started after that copies the variable, so whatever the node's
components log carries the name without any of them passing it around. A process that hosts several nodes
(:mod:`p2pswarm.testing.multinode`) runs each node in its own task and logs through :class:`NodeTag`; a
process with one node does not need the tag and its log format does not show it.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

NODE: ContextVar[str] = ContextVar("p2pswarm_node", default="-")
"""The name of the node the running code belongs to (``-``: none, e.g. the host process itself)."""


class NodeTag(logging.Filter):
    """Adds ``record.node`` (the :data:`NODE` of the code that logged) for a ``%(node)s`` in the format."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = NODE.get()
        return True
