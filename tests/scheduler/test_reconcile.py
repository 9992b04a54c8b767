"""Reconciler scenarios on a small fake cluster (schedbox): failures, drains, scaling, restart policy, global mode."""

from __future__ import annotations

from collections import Counter

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.model import Task
from p2pswarm.cluster.spec import RestartPolicy, ServiceSpec
from p2pswarm.cluster.state import ClusterState
from p2pswarm.scheduler.reconcile import reconcile, restart_decision

from .schedbox import Box


def web(**kw) -> ServiceSpec:
    return ServiceSpec("web", "srv", **{"replicas": 6, "ports": ["8080"], **kw})


def test_a_new_service_converges_spread_evenly():
    box = Box(5)
    box.create(web())
    box.settle(3)
    assert sorted(box.per_node("web").values()) == [1, 1, 1, 1, 2]
    assert [r["current"] for r in box.state.service_ps("web")] == [True] * 6
    assert box.state.service_summaries()[0]["running"] == 6


def test_dead_node_tasks_are_replaced_elsewhere_and_kept_in_history():
    box = Box(5)
    box.create(web())
    box.settle(3)
    victim = box.per_node("web").most_common(1)[0][0]
    box.members[victim] = "dead"
    box.settle(3)
    assert len(box.running("web")) == 6 and victim not in box.per_node("web")
    history = [r for r in box.state.service_ps("web") if not r["current"]]
    assert [(r["node"], r["state"], r["desired"]) for r in history] == [(victim, "orphaned", "shutdown")] * 2
    assert {r["error"] for r in history} == {f"node {victim} is down"}


def test_suspect_nodes_keep_their_tasks_but_get_no_new_ones():
    box = Box(3)
    box.create(web(replicas=3))
    box.settle(3)
    before = {t.id for t in box.running("web")}
    box.members["n1"] = "suspect"
    box.apply(cmd.scale_service(box.cid(), box.now, "web", 5))
    box.settle(3)
    assert before <= {t.id for t in box.state.tasks.values() if t.live}
    assert box.per_node("web") == Counter({"n1": 1, "n2": 2, "n3": 2})  # the new ones went elsewhere


def test_drain_moves_tasks_and_a_returning_node_gets_some_back_within_the_bound():
    box = Box(3, max_moves=1)
    box.create(web())
    box.settle(3)
    box.apply(cmd.update_node(box.cid(), box.now, "n1", availability="drain"))
    box.round()
    assert box.per_node("web") == Counter({"n2": 3, "n3": 3})
    assert {r["error"] for r in box.state.service_ps("web") if not r["current"]} == {"node n1 is drained"}
    box.apply(cmd.update_node(box.cid(), box.now, "n1", availability="active"))
    moved = []
    for _ in range(4):
        box.round()
        moved.append(box.per_node("web")["n1"])
    assert moved == [1, 2, 2, 2]  # one move per round, then balanced and still
    assert len(box.running("web")) == 6


def test_scale_up_and_down():
    box = Box(5)
    box.create(web())
    box.settle(3)
    box.apply(cmd.scale_service(box.cid(), box.now, "web", 10))
    box.settle(3)
    assert box.per_node("web") == Counter({f"n{i}": 2 for i in range(1, 6)})
    box.apply(cmd.scale_service(box.cid(), box.now, "web", 3))
    box.settle(3)
    assert len(box.running("web")) == 3 and len(box.per_node("web")) == 3
    assert sum(1 for t in box.state.tasks.values() if t.live) == 3


def test_restart_policy_delay_and_attempts():
    box = Box(2)
    box.behaviour["web"] = lambda task: ("failed", 1, "exit status 1")
    box.create(web(replicas=1, restart=RestartPolicy("on-failure", delay=3, max_attempts=2)))
    starts = []
    for _ in range(15):
        box.round()
        starts = sorted(t.created_at for t in box.state.tasks_of("web"))
    assert len(starts) == 3  # the first start and two restarts, then it stays failed
    assert starts[1] - starts[0] >= 3 and starts[2] - starts[1] >= 3
    current = box.state.service_ps("web")[0]
    assert (current["state"], current["desired"], current["error"]) == ("failed", "running", "exit status 1")


def test_restart_conditions():
    def ended(state, code=None, restarts=()):
        return Task("t", "web", 1, "n1", 1, state=state, exit_code=code, finished_at=10.0, restarts=restarts)

    assert restart_decision(RestartPolicy("none"), ended("failed", 1), 20) == ("never", None)
    assert restart_decision(RestartPolicy("on-failure"), ended("complete", 0), 20) == ("never", None)
    assert restart_decision(RestartPolicy("on-failure", delay=5), ended("failed", 2), 12) == ("wait", 15.0)
    assert restart_decision(RestartPolicy("any", delay=5), ended("complete", 0), 16) == ("now", (10.0,))
    window = RestartPolicy("any", delay=0, max_attempts=2, window=60)
    assert restart_decision(window, ended("failed", 1, (1.0, 50.0)), 55) == ("wait", 61.0)
    assert restart_decision(window, ended("failed", 1, (1.0, 50.0)), 70) == ("now", (1.0, 50.0, 10.0))
    assert restart_decision(RestartPolicy("none"), ended("orphaned"), 11) == ("now", ())  # not an exit


def test_global_service_follows_the_nodes():
    box = Box(3)
    box.create(ServiceSpec("agent", "srv", mode="global"))
    box.settle(2)
    assert box.per_node("agent") == Counter({"n1": 1, "n2": 1, "n3": 1})
    box.add_node("n4")
    box.apply(cmd.update_node(box.cid(), box.now, "n2", availability="drain"))
    box.settle(2)
    assert box.per_node("agent") == Counter({"n1": 1, "n3": 1, "n4": 1})


def test_unplaceable_tasks_say_why_until_a_node_fits():
    box = Box(2)
    box.create(web(replicas=2, constraints=["node.labels.zone==c"]))
    box.settle(2)
    rows = box.state.service_ps("web")
    wanted = [("new", None, "no node satisfies node.labels.zone==c")] * 2
    assert [(r["state"], r["node"], r["error"]) for r in rows] == wanted
    pending = {r["id"] for r in rows}
    box.add_node("n3", {"zone": "c"})
    box.settle(2)
    assert {t.id for t in box.running("web")} == pending  # the pending tasks themselves were placed
    assert box.per_node("web") == Counter({"n3": 2})


def test_a_plan_that_went_stale_is_rejected_and_replanned():
    box = Box(3)
    box.create(web(replicas=3))
    plan = reconcile(box.state, box.members, box.now, box.term)
    box.apply(cmd.scale_service(box.cid(), box.now, "web", 1))
    result = box.apply(plan.commands[0])
    assert not result.ok and "changed after the plan" in result.error and not box.state.tasks
    box.settle(2)
    assert len(box.running("web")) == 1


def test_the_same_round_twice_applies_once():
    box = Box(3)
    box.create(web(replicas=3))
    plan = reconcile(box.state, box.members, box.now, box.term)
    assert reconcile(box.state, box.members, box.now, box.term) == plan
    for command in plan.commands + plan.commands:
        box.apply(command)
    assert len(box.state.tasks) == 3


def test_reconcile_is_deterministic_across_a_restore():
    box = Box(4)
    box.create(web(spread="node.labels.zone"))
    box.settle(2)
    box.members["n2"] = "dead"
    copy = ClusterState()
    copy.restore(box.state.snapshot())
    assert reconcile(copy, box.members, box.now, box.term) == reconcile(box.state, box.members, box.now, box.term)


def test_removed_service_tasks_stop():
    box = Box(2)
    box.create(web(replicas=2))
    box.settle(2)
    box.apply(cmd.remove_service(box.cid(), box.now, "web"))
    box.settle(2)
    assert not box.state.tasks and not box.state.services
