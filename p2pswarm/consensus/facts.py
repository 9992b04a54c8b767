"""Small Raft facts every node gossips in its SWIM record, and the cluster id on disk.

A node's record payload is msgpack ``[cluster_id, role, term]`` (role: ``L`` leader,
``V`` voter, ``l`` learner, ``""`` none): a joiner learns which cluster to join from
it, a non-member finds the leader to forward writes to, and ``node ls`` shows roles
of members whose configuration this node has not replicated.  Records are a few
dozen bytes, so they ride on gossip for free.

A node running tasks appends its agent's task digest as a fourth element
``[version, {task_id: record}]`` (see :meth:`p2pswarm.agent.core.AgentCore.digest`);
three-element records still decode (no digest).  The digest is only checked for
shape here; whoever reads its records checks them (:mod:`p2pswarm.scheduler.driver`).

The routing mesh appends a fifth element ``[relay_port, [unreachable member ids]]``
(the digest is then nil if the node has none): where this node's relay listener is,
and which members its direct probes cannot reach, so that others pick relays that can.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

import msgpack

from p2pswarm.wire import MAX_ID_LEN, MAX_RECORD_BYTES, Bounds, unpack

ROLE_CODES = {"leader": "L", "voter": "V", "learner": "l", "-": ""}
ROLE_NAMES = {code: name for name, code in ROLE_CODES.items()}
MIN_ITEM_BYTES = 16
"""Fewest bytes one task of a digest takes (its id and ``{"s": .., "v": ..}``); no list or map
in a record can hold more than MAX_RECORD_BYTES / MIN_ITEM_BYTES items."""
FACTS_BOUNDS = Bounds(array=MAX_RECORD_BYTES // MIN_ITEM_BYTES, map=MAX_RECORD_BYTES // MIN_ITEM_BYTES,
                      str=MAX_RECORD_BYTES, bin=MAX_RECORD_BYTES)
"""What decoding a peer's record may build (its payload is at most wire.MAX_RECORD_BYTES)."""
CLUSTER_FILE = "CLUSTER"
"""Written by consensus.storage.FileStorage in the raft dir: a magic line, then the cluster id."""


@dataclass(frozen=True, slots=True)
class Facts:
    cluster_id: str
    role: str = "-"
    term: int = 0
    digest: tuple[int, dict] | None = None
    """This node's task digest: (version, {task id: record}), or None when it runs no agent yet."""
    mesh: tuple[int, tuple[str, ...]] | None = None
    """(relay port, members this node cannot reach directly), or None without a mesh."""

    def encode(self) -> bytes:
        fields: list = [self.cluster_id, ROLE_CODES[self.role], self.term]
        if self.digest is not None or self.mesh is not None:
            fields.append(list(self.digest) if self.digest is not None else None)
        if self.mesh is not None:
            fields.append([self.mesh[0], list(self.mesh[1])])
        return msgpack.packb(fields, use_bin_type=True)


def decode_facts(payload: bytes) -> Facts | None:
    """A peer's facts, or None for an empty or malformed record (peers are not trusted)."""
    if not payload:
        return None
    try:
        fields = unpack(payload, FACTS_BOUNDS, "facts record", use_list=True)
        cluster_id, role, term = fields[:3]
        digest = _digest(fields[3]) if len(fields) >= 4 and fields[3] is not None else None
        mesh = _mesh(fields[4]) if len(fields) == 5 else None
    except Exception:
        return None
    if (len(fields) > 5 or type(cluster_id) is not str or not 0 < len(cluster_id) <= MAX_ID_LEN
            or role not in ROLE_NAMES or type(term) is not int or term < 0):
        return None
    return Facts(cluster_id, ROLE_NAMES[role], term, digest, mesh)


def _digest(value: object) -> tuple[int, dict]:
    version, tasks = value  # type: ignore[misc]
    if type(version) is not int or not isinstance(tasks, dict) or not all(
            type(k) is str and isinstance(v, dict) for k, v in tasks.items()):
        raise ValueError("malformed task digest")
    return version, tasks


def _mesh(value: object) -> tuple[int, tuple[str, ...]]:
    relay_port, unreachable = value  # type: ignore[misc]
    if (type(relay_port) is not int or not 0 <= relay_port < 65536 or not isinstance(unreachable, list)
            or not all(type(n) is str and len(n) <= MAX_ID_LEN for n in unreachable)):
        raise ValueError("malformed mesh facts")
    return relay_port, tuple(unreachable)


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
