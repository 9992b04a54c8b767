"""Raft views of a LocalCluster, shared by the Raft integration tests and bench_raft.py."""

from __future__ import annotations

import urllib.parse

from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.testing.localcluster import LocalNode

WRITE_CLIENT_TIMEOUT = 30.0
"""Seconds a test client waits for a write; the node's own write timeout is shorter."""


def client(node: LocalNode) -> ApiClient:
    return ApiClient(node.data_dir, timeout=WRITE_CLIENT_TIMEOUT)


def cluster_status(node: LocalNode) -> dict | None:
    try:
        return node.api.get("/v1/cluster")
    except ApiError:
        return None


def roles(node: LocalNode) -> dict[str, str] | None:
    """{member name: role} from this node's /v1/cluster, the leader shown as "leader"."""
    st = cluster_status(node)
    if st is None:
        return None
    return {m["name"]: "leader" if m["leader"] else m["role"] for m in st["members"]}


def leader(nodes) -> LocalNode | None:
    """The node that says it leads and whose every peer in ``nodes`` agrees (or None)."""
    names = {n.name: n for n in nodes}
    seen = set()
    for node in nodes:
        st = cluster_status(node)
        if st is None or st["leader_name"] is None:
            return None
        seen.add(st["leader_name"])
    if len(seen) != 1:
        return None
    return names.get(seen.pop())


def voters(node: LocalNode) -> list[str] | None:
    r = roles(node)
    return None if r is None else sorted(n for n, role in r.items() if role in ("voter", "leader"))


def put(node: LocalNode, key: str, value: str) -> None:
    client(node).request("PUT", "/v1/kv/" + urllib.parse.quote(key, safe=""), {"value": value})


def get(node: LocalNode, key: str, stale: bool = False) -> str | None:
    try:
        path = "/v1/kv/" + urllib.parse.quote(key, safe="") + ("?stale=1" if stale else "")
        return client(node).get(path)["value"]
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def try_put(node: LocalNode, key: str, value: str) -> bool:
    try:
        put(node, key, value)
        return True
    except ApiError:
        return False


def crash_and_restart(cluster, nodes, acked: dict, label: str, writes: int = 80, timeout: float = 60) -> None:
    """One whole-cluster crash: write until ``writes`` more are acknowledged (recorded in ``acked``),
    SIGKILL every node while writes are in flight, restart them all and wait for a leader.

    ``nodes[0]`` is restarted first, without peers; the others join through it.
    """
    import signal
    import threading

    from p2pswarm.testing.localcluster import wait_until

    stop = threading.Event()
    target = nodes[len(acked) % len(nodes)]
    refused: list[str] = []

    def writer() -> None:
        """Writes one key after another; a refused write (an election, with the test preset's 0.3 s
        timeout) is tried again until the crash (the same value: a retry of a write that did commit
        changes nothing). Only acknowledged writes are recorded."""
        i = 0
        while not stop.is_set():
            key, value = f"{label}-{i}", f"{label}:{i}"
            try:
                put(target, key, value)
            except ApiError as exc:
                refused[:] = [f"{key}: {exc}"]
                stop.wait(0.1)
                continue
            acked[key] = value
            i += 1

    before = len(acked)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(acked) >= before + writes, timeout, f"{writes} acknowledged writes before the crash",
                   interval=0.01, seen=lambda: f"{len(acked) - before} acknowledged; last refusal {refused or 'none'}")
        for node in nodes:
            node.proc.send_signal(signal.SIGKILL)
        for node in nodes:
            node.proc.wait(timeout=30)
    finally:
        stop.set()
        thread.join(timeout)
    cluster.start(nodes[0].index)
    for node in nodes[1:]:
        cluster.start(node.index, (nodes[0].addr,))
    wait_until(lambda: leader(nodes), timeout, f"a leader after crash {label}")


def lost_writes(node, acked: dict) -> list[str]:
    """Acknowledged keys whose value ``node`` does not return (linearizable reads)."""
    return [k for k, v in acked.items() if get(node, k) != v]
