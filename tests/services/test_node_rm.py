"""`node rm`: the API's refusals and the leader taking removed nodes out of the Raft configuration."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest

from p2pswarm.api.server import HttpError
from p2pswarm.cluster import commands as cmd
from p2pswarm.consensus.driver import RaftDriver
from p2pswarm.node.presets import TEST

from .test_node_stack_cli import router  # noqa: F401  (a fixture)
from .test_service_routes import call


def test_a_drained_live_node_is_removed_without_force(router):  # noqa: F811
    driver = router.node.raft_driver()
    asyncio.run(driver.write_cluster(cmd.update_node("d", 2.0, "aab2", availability="drain")))
    assert call(router, "DELETE", "/v1/nodes/b")["name"] == "b"


def test_a_voter_whose_removal_loses_the_quorum_is_refused(router):  # noqa: F811
    driver = router.node.raft_driver()
    driver.removal_blocker = lambda node: "1 of the other 2 voters are reachable, a quorum of them is 2"
    with pytest.raises(HttpError) as err:
        call(router, "DELETE", "/v1/nodes/c")
    assert err.value.status == 409 and "would lose the quorum: 1 of the other 2" in str(err.value)
    assert "\n" not in str(err.value) and "ccc3" not in driver.cluster.removed_nodes


class FakeRaft:
    def __init__(self, voters, learners=(), match=None):
        self.conf = SimpleNamespace(voters=tuple(voters), learners=tuple(learners),
                                    members=tuple(sorted((*voters, *learners))))
        self.progress = {n: SimpleNamespace(match=(match or {}).get(n, 100), last_active=None)
                         for n in self.conf.members}
        self.proposed = []
        self.conf_index, self.log = 0, SimpleNamespace(committed=0, last_index=lambda: 100)

    def propose_conf_change(self, now, op, node):
        self.proposed.append((op, node))


@pytest.fixture
def driver(tmp_path):
    """Builds RaftDriver "L" through its constructor (storage in a temp raft dir), then gives it a
    FakeRaft core holding the configuration and progress the test needs."""
    opened = []

    def build(voters, learners=(), status=None, removed=(), match=None, applied=50):
        status = status or {}
        members = {n: SimpleNamespace(node=n, status=status.get(n, "alive"), status_since=0.0,
                                      meta=SimpleNamespace(name=n, labels=(), started_ms=1))
                   for n in {*voters, *learners, *status}}
        swim = SimpleNamespace(member=members.get, members=lambda: list(members.values()))
        d = RaftDriver("L", "c1", str(tmp_path / f"raft{len(opened)}"), "test", swim=swim, transport=None,
                       clock=lambda: 0.0, rng=random.Random(1), bootstrap=False)
        opened.append(d)
        assert d.leader_since == 0.0 and d.autopilot_cfg == TEST.autopilot
        d.raft, d.applied = FakeRaft(voters, learners, match), applied
        d.cluster.removed_nodes.update(removed)
        return d

    yield build
    for d in opened:
        d.storage.close()


def test_removal_blocker_keeps_a_quorum_of_the_other_voters(driver):
    assert driver(["L", "a", "b"]).removal_blocker("a") is None
    assert driver(["L", "a", "b"]).removal_blocker("x") is None  # not a voter
    assert driver(["L"]).removal_blocker("L") == "it is the only voter"
    blocked = driver(["L", "a", "b"], status={"b": "dead"}).removal_blocker("a")
    assert blocked == "1 of the other 2 voters are reachable, a quorum of them is 2"
    assert driver(["L", "a", "b"], status={"a": "dead"}).removal_blocker("a") is None


def test_the_leader_removes_removed_members_one_at_a_time_and_never_re_adds_them(driver):
    d = driver(["L", "a", "b"], ["c"], removed={"a", "c"})
    d._autopilot(10.0)
    assert d.raft.proposed == [("remove", "a")]
    d = driver(["L", "a", "b"], status={"b": "dead"}, removed={"a"})  # a's removal would lose the quorum
    d._autopilot(10.0)
    assert ("remove", "a") not in d.raft.proposed
    # a live removed node that has not replicated its own removal yet waits for it
    d = driver(["L", "a", "b"], removed={"a"}, match={"a": 40}, applied=50)
    d._autopilot(10.0)
    assert d.raft.proposed == []
    d.raft.progress["a"].match = 50
    d._autopilot(11.0)
    assert d.raft.proposed == [("remove", "a")]
    # alive, removed and outside the configuration: autopilot does not add it back as a learner
    d = driver(["L", "b", "c"], status={"x": "alive"}, removed={"x"})
    d._autopilot(10.0)
    assert all(node != "x" for _, node in d.raft.proposed)
    d = driver(["L", "b", "c"], status={"x": "alive"})
    d._autopilot(10.0)
    assert d.raft.proposed == [("add_learner", "x")]  # the same node, not removed, would be


def test_a_leaving_leader_changes_nothing(driver):
    d = driver(["L", "a", "b"], status={"L": "left"})
    d._autopilot(10.0)  # with L counted as gone the target would drop to 1 and a voter would go
    assert d.raft.proposed == []
