"""The issue's must-show scenario on real processes: converge, crash, restart, graceful leave."""

from __future__ import annotations

import re

from p2pswarm.testing.localcluster import wait_until

ALL = ("n0", "n1", "n2", "n3", "n4")


def all_see(nodes, expected: dict[str, str]):
    """True when every node's view contains ``expected`` (name -> status)."""
    for node in nodes:
        view = node.statuses()
        if view is None or any(view.get(name) != status for name, status in expected.items()):
            return False
    return True


def test_five_nodes_converge_detect_a_crash_take_it_back_and_see_a_leave(cluster):
    seed = cluster.start(0)
    wait_until(seed.info, 30, "the first node's API")
    nodes = [seed] + [cluster.start(i, (seed.addr,)) for i in range(1, 5)]

    # All five alive everywhere.  How fast is measured by simulations/bench_membership.py
    # (converge_s); a loaded CI machine only has to get there.
    converged = {name: "alive" for name in ALL}
    wait_until(lambda: all_see(nodes, converged), 30, "all five alive everywhere")

    # SIGKILL one: every survivor declares it dead.
    victim = nodes[2]
    victim_id = victim.info()["id"]
    cluster.kill(2)
    survivors = [n for n in nodes if n is not victim]
    wait_until(lambda: all_see(survivors, {"n2": "dead"}), 30, "every survivor to show n2 dead")

    # Restart it on the same data dir: same id, alive again everywhere.
    cluster.start(2, (seed.addr,))
    wait_until(lambda: all_see(nodes, converged), 30, "n2 alive again everywhere")
    assert victim.info()["id"] == victim_id
    for node in nodes:
        assert [m["id"] for m in node.api.get("/v1/members")["members"] if m["name"] == "n2"] == [victim_id]

    # A graceful `p2pswarm down`: the others show it left, not dead.
    leaver = nodes[3]
    leaver_id = leaver.info()["id"]
    result = cluster.cli("down", "--data-dir", str(leaver.data_dir))
    assert result.returncode == 0, result.stderr
    assert "left the cluster" in result.stdout
    assert leaver.proc.wait(timeout=30) == 0
    others = [n for n in nodes if n is not leaver]
    wait_until(lambda: all_see(others, {"n3": "left"}), 30, "every other node to show n3 left")
    for node in others:
        assert not re.search(rf"\({leaver_id}\) at \S+: \w+ -> dead", node.log()), node.name
