"""A node joining a cluster whose state is over 50 MB installs the leader's snapshot (sent in chunks)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from p2pswarm.api.routes import MAX_VALUE_LEN
from p2pswarm.node.presets import PRESETS
from p2pswarm.testing.localcluster import wait_until
from p2pswarm.testing.raftcluster import cluster_status, get, put

STATE_BYTES = 50 * 1000 * 1000
VALUES = -(-STATE_BYTES // MAX_VALUE_LEN)  # the largest values the API takes, enough of them for 50 MB
SNAPSHOT_EVERY = PRESETS["test"].raft_driver.snapshot_every


def value(k: int) -> str:
    return f"{k:08d}" + "x" * (MAX_VALUE_LEN - 8)


def test_a_new_node_installs_a_snapshot_of_a_50_mb_state_and_serves_it(cluster):
    first = cluster.start(0)
    wait_until(first.info, 30, "the first node's API")
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:  # concurrent writers share fsyncs (group commit)
        list(pool.map(lambda k: put(first, f"big{k}", value(k)), range(VALUES)))
        # the node snapshots every SNAPSHOT_EVERY applied entries: so many more writes make it
        # take one after the last large value
        list(pool.map(lambda k: put(first, f"small{k}", "."), range(SNAPSHOT_EVERY)))
    snapshot = first.data_dir / "raft" / "snapshot"  # saved with the Ready after the one that applied
    wait_until(lambda: snapshot.stat().st_size >= STATE_BYTES, 30, "the leader's snapshot of the whole state")
    lead = cluster_status(first)
    assert lead["snapshot_index"] > 0  # the log before it is gone: the only way in is the snapshot

    joined = time.monotonic()
    print(f"{VALUES} values written in {joined - started:.1f} s")
    joiner = cluster.start(1, (first.addr,))

    def caught_up():  # installed the snapshot, then replicated up to its own addition to the group
        st = cluster_status(joiner)
        return (st is not None and st["snapshot_index"] >= lead["snapshot_index"]
                and st["applied_index"] >= lead["applied_index"]
                and joiner.name in [m["name"] for m in st["members"]])
    wait_until(caught_up, 120, "the new node's replica to install the snapshot and catch up")
    print(f"snapshot installed and caught up {time.monotonic() - joined:.1f} s after the join started")
    assert (joiner.data_dir / "raft" / "snapshot").stat().st_size >= STATE_BYTES
    assert get(joiner, "big0") == value(0)  # a linearizable read served by the new replica
    assert get(joiner, f"big{VALUES - 1}", stale=True) == value(VALUES - 1)
