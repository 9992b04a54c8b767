"""Start a node whose data dir is locked (encryption at rest): only the lock API runs until it is unlocked."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from p2pswarm.node.view import software_version
from p2pswarm.security.errors import SecurityError

log = logging.getLogger("p2pswarm.node.daemon")


async def wait_unlocked(node: Any) -> bool:
    """With encryption at rest, unlock the data key before anything reads the data dir.

    The key given at start (``up --unlock-key-file``) unlocks at once (a wrong one stops the
    node with one line).  Without it only the locked API runs (:mod:`p2pswarm.api.lock_routes`)
    until ``p2pswarm unlock`` sends the right key; False if the node is stopped meanwhile.
    ``node``: the :class:`p2pswarm.node.daemon.Node` (its data dir, options, stop event and signal handlers).
    """
    from p2pswarm.api.lock_routes import LockRoutes
    from p2pswarm.api.server import ApiServer
    from p2pswarm.security import autolock, sealing
    if not autolock.has_lock(node.datadir):
        if node.options.autolock:
            raise SecurityError(f"--autolock: {node.datadir.security_path / autolock.LOCK_FILE} is missing; "
                                f"restore it from a backup (start with `p2pswarm up --autolock`)", "autolock")
        return True
    sealing.finish(node.datadir)  # an `up --autolock` of a used data dir that stopped half way
    if node.options.unlock_key:
        autolock.unlock(node.datadir, node.options.unlock_key)
        return True
    unlocked = asyncio.Event()
    info = {"id": node.node_id, "name": node.name, "pid": os.getpid(), "data_dir": str(node.datadir.path),
            "version": software_version(), "addr": node.options.bind, "secure": node.options.secure}
    api = ApiServer(str(node.datadir.api_sock), LockRoutes(lambda: info, lambda key: autolock.unlock(
        node.datadir, key), unlocked.set, node.request_shutdown))
    node.datadir.write_pid()
    await api.start()
    node._install_signals()
    log.warning("this node is locked: run `p2pswarm unlock --data-dir %s` with its unlock key", node.datadir.path)
    waits = [asyncio.ensure_future(unlocked.wait()), asyncio.ensure_future(node._wake.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        node._remove_signals()
        await api.close()
    if not unlocked.is_set():
        node.datadir.remove_pid()
        node.datadir.api_sock.unlink(missing_ok=True)
        log.info("node %s (%s) stopped while locked", node.name, node.node_id)
        return False
    node._wake.clear()
    log.info("unlocked: starting the node")
    return True
