"""The Raft cluster id: a new one, and the one a raft dir belongs to.

What a node gossips about its Raft group (cluster id, role, term) is the ``raft`` section of
its record (:mod:`p2pswarm.node.record`).
"""

from __future__ import annotations

import os
import secrets

CLUSTER_FILE = "CLUSTER"
"""Written by consensus.storage.FileStorage in the raft dir: a magic line, then the cluster id."""


def new_cluster_id() -> str:
    return secrets.token_hex(8)


def stored_cluster_id(raft_dir: str) -> str | None:
    """The cluster id a raft dir belongs to, or None when it was never used."""
    try:
        with open(os.path.join(raft_dir, CLUSTER_FILE), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    return lines[1] if len(lines) == 2 and lines[1] else None
