"""`p2pswarm cluster ca --rotate` end to end with real processes: a new CA, no downtime.

While a 3-node secure cluster keeps committing writes, the CA is rotated from one member: every
member ends up holding a certificate from the new CA, only the new CA is trusted, no write fails,
every node still admits the other two, the new join token admits a fourth node, and the old token
is refused (it pins the old CA).
"""

from __future__ import annotations

import threading
import time

import pytest

from p2pswarm.api.client import ApiError
from p2pswarm.testing.localcluster import LocalCluster, wait_until

pytestmark = pytest.mark.timeout(300)  # a rotation waits for every node, seconds each on a busy machine


def ca(node) -> dict:
    return node.api.get("/v1/security/ca")


class Writer(threading.Thread):
    """KV writes through node 0 every 50 ms until stopped; counts successes and failures."""

    def __init__(self, node) -> None:
        super().__init__(daemon=True)
        self.node, self.ok, self.failed = node, 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                self.node.api.request("PUT", f"/v1/kv/rot{i}", {"value": str(i)})
                self.ok += 1
            except ApiError as exc:
                self.failed.append(str(exc))
            i += 1
            time.sleep(0.05)


def test_ca_rotation_reissues_every_certificate_without_downtime(tmp_path):
    c = LocalCluster(tmp_path)
    try:
        nodes = c.start_group(3)
        wait_until(lambda: all(len(n.api.get("/v1/security")["admitted"]) == 3 for n in nodes), 30,
                   "every node admitting all three certificates")
        before = ca(nodes[0])
        assert not before["rotating"] and before["trusted"] == [before["ca_fingerprint"]]
        # every member's certificate is in the Raft state (renewal and rotation work from there)
        wait_until(lambda: ca(nodes[0])["members"] == 3, 10, "all three certificates recorded")
        old_token = before["token"]
        writer = Writer(nodes[0])
        writer.start()
        time.sleep(0.5)
        out = c.cli("cluster", "ca", "--rotate", "--format", "json", "--data-dir", str(nodes[1].data_dir),
                    timeout=90)
        time.sleep(0.5)
        writer.stop.set()
        writer.join(timeout=10)
        assert out.returncode == 0, out.stderr
        assert "CA rotation finished" in out.stderr
        new_fp = ca(nodes[1])["ca_fingerprint"]
        assert new_fp != before["ca_fingerprint"]
        assert writer.ok > 10 and writer.failed == []  # no downtime: every write during the rotation committed

        def settled() -> bool:
            views = [ca(n) for n in nodes]
            return all(v["trusted"] == [new_fp] and not v["rotating"] for v in views)
        wait_until(settled, 20, "every node trusting only the new CA")
        for n in nodes:
            view = n.api.get("/v1/security")
            assert view["ca_fingerprint"] == new_fp
            refusals = {k: v for k, v in view["counters"].items() if "refused" in k or "dropped" in k}
            assert len(view["admitted"]) == 3, (view["admitted"], refusals, n.log()[-3000:])  # nobody was cut off
        put = c.cli("kv", "put", "after", "rotation", "--data-dir", str(nodes[2].data_dir))
        assert put.returncode == 0, put.stderr

        new_token = ca(nodes[0])["token"]
        assert new_token != old_token
        refused = c.start(3, (nodes[0].addr,), "--token", old_token)
        assert refused.proc.wait(timeout=30) != 0
        assert "CA" in refused.log() and "token" in refused.log()
        c.nodes.pop(3)
        fourth = c.start(4, (nodes[0].addr,), "--token", new_token)
        wait_until(lambda: (fourth.api.get("/v1/security") if fourth.info() else {}).get("state") == "member",
                   30, "a fourth node admitted with the new token")
        assert fourth.api.get("/v1/security")["ca_fingerprint"] == new_fp
    finally:
        c.close()
