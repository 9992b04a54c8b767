"""`cluster recover --force-new-cluster`: make a stopped surviving voter the only voter.

When a majority of voters is lost for good, nothing can commit and Raft cannot
fix that by itself.  This rewrites one survivor's configuration from its own
state: it appends a configuration entry naming itself the single voter, in a
term above any it has seen, and keeps every entry it holds (entries it holds but
never saw committed may have been acknowledged by the old leader, so they are
kept and become committed in the new cluster).  Writes that only the lost voters
had are gone: that is the price, and why this is a manual, documented step.
"""

from __future__ import annotations

from pathlib import Path

from p2pswarm.consensus.facts import stored_cluster_id
from p2pswarm.consensus.messages import ConfChange, ConfState, Entry, decode_conf, encode_conf
from p2pswarm.consensus.raft import HardState
from p2pswarm.consensus.storage import FileStorage
from p2pswarm.node.datadir import DataDir


class RecoveryError(Exception):
    """Recovery refused; one line saying why and what to do."""


def force_new_cluster(data_dir: Path | str, unlock_key: str | None = None) -> dict:
    """Rewrite the stopped voter at ``data_dir``; ``unlock_key`` (text) opens an --autolock log."""
    from p2pswarm.security import autolock, sealing
    datadir = DataDir(data_dir)
    if not datadir.path.is_dir():
        raise RecoveryError(f"data dir {datadir.path} does not exist")
    if datadir.is_locked():
        raise RecoveryError(f"a node is running on {datadir.path}; stop it first "
                            f"(`p2pswarm down --data-dir {datadir.path}`), then recover")
    if not autolock.has_lock(datadir):
        if unlock_key is not None:
            raise RecoveryError(f"data dir {datadir.path} does not use --autolock; drop --unlock-key-file")
        return _rewrite(datadir)
    if unlock_key is None:
        raise RecoveryError(f"the raft log in {datadir.path / 'raft'} is encrypted (--autolock): pass this node's "
                            f"unlock key with --unlock-key-file PATH ('-' reads it from stdin)")
    sealing.finish(datadir)  # an `up --autolock` of this dir that stopped half way
    autolock.unlock(datadir, unlock_key)
    try:
        return _rewrite(datadir)
    finally:
        autolock.forget(datadir.path)


def _rewrite(datadir: DataDir) -> dict:
    """Append the single-voter configuration entry to the stopped voter's log."""
    node_id = datadir.load_state().get("id")
    raft_dir = datadir.path / "raft"
    cluster_id = stored_cluster_id(str(raft_dir))
    if not node_id or cluster_id is None:
        raise RecoveryError(f"{datadir.path} holds no raft log; run recover on the data dir of a surviving voter")
    from p2pswarm.security.autolock import cipher_for
    storage = FileStorage(str(raft_dir), cluster_id, cipher=cipher_for(datadir.path))  # None without --autolock
    try:
        stored = storage.load()
        voters = _last_voters(stored)
        if node_id not in voters:
            raise RecoveryError(f"node {node_id} is not a voter in the last configuration it holds "
                                f"(voters: {', '.join(voters) or 'none'}); run recover on a surviving voter")
        base = stored.snapshot.index if stored.snapshot else 0
        last_index = stored.entries[-1].index if stored.entries else base
        last_term = stored.entries[-1].term if stored.entries else (stored.snapshot.term if stored.snapshot else 0)
        term = max(stored.hard_state.term, last_term) + 1
        change = ConfChange("bootstrap", node_id, ConfState((node_id,), ()))
        entry = Entry(term, last_index + 1, "config", encode_conf(change))
        storage.save(HardState(term, node_id, stored.hard_state.commit), (entry,), None)
    finally:
        storage.close()
    return {"node": node_id, "cluster_id": cluster_id, "old_voters": list(voters), "index": entry.index,
            "term": term}


def _last_voters(stored) -> tuple:
    for entry in reversed(stored.entries):
        if entry.kind == "config":
            return decode_conf(entry.data).result.voters
    return stored.snapshot.conf.voters if stored.snapshot else ()
