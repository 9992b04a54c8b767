"""The incremental reconciler plans only what changed, and plans it exactly as a full pass would."""

from __future__ import annotations

import random

import pytest

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import Constraint, PortSpec, ServiceSpec
from p2pswarm.scheduler.incremental import Reconciler
from p2pswarm.scheduler.reconcile import ReconcileConfig, Reconciliation, reconcile

from .schedbox import Box


class IncrementalBox(Box):
    """A box whose rounds are the leader's incremental reconciler, each checked against a full pass."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reconciler = Reconciler(self.config)
        self.planned: list[tuple[str, ...]] = []

    def round(self) -> bool:
        before = self.state.applied
        plan = self.plan()
        for command in plan.commands:
            self.apply(command)
        self._agents()
        self.now += 1.0
        return self.state.applied != before

    def plan(self) -> Reconciliation:
        full = reconcile(self.state, self.members, self.now, self.term, self.config)
        plan = self.reconciler.reconcile(self.state, self.members, self.now, self.term)
        assert without_ids(plan) == without_ids(full)
        self.planned.append(plan.planned)
        return plan


def without_ids(plan: Reconciliation) -> list[tuple[str, dict]]:
    return [(about, {k: v for k, v in c.items() if k != "id"}) for c, about in zip(plan.commands, plan.about)]


def web(name: str = "web", **kw) -> ServiceSpec:
    return ServiceSpec(name=name, command="serve", **kw)


def random_service(rng: random.Random, i: int) -> ServiceSpec:
    kind = rng.randrange(6)
    kw: dict = {"replicas": rng.randint(1, 12), "rebalance": rng.random() < 0.5}
    if kind == 1:
        kw["spread"] = "node.labels.zone"
    elif kind == 2:
        kw["constraints"] = (Constraint.parse(f"node.labels.zone=={rng.choice('abc')}"),)
    elif kind == 3:
        kw["reserve_cpu"], kw["reserve_memory"] = rng.choice([0.5, 1.0, 1.5]), rng.choice([0, 256 << 20])
    elif kind == 4:
        kw = {"mode": "global"}
    elif kind == 5:
        kw["ports"] = (PortSpec(published=8000 + i, mode="host"),)
        kw["replicas"] = rng.randint(1, 4)
    return web(f"s{i}", **kw)


def event(box: IncrementalBox, rng: random.Random) -> None:
    """Something that happens to a settled cluster."""
    nodes = sorted(box.state.nodes)
    alive = [n for n in nodes if box.members[n] == "alive"]
    suspect = [n for n in nodes if box.members[n] == "suspect"]
    what = rng.randrange(7)
    if what == 0 and len(alive) > 2:
        pool = suspect if suspect and rng.random() < 0.7 else alive  # most deaths follow a suspicion, as in SWIM
        for node in rng.sample(pool, min(len(pool), rng.randint(1, 2))):
            box.members[node] = "dead"
    elif what == 1:
        box.add_node(f"m{box.index}", {"zone": rng.choice("abc")}, cpu=4.0, memory=8 << 30)
    elif what == 2:
        svc = rng.choice(sorted(box.state.services.values(), key=lambda s: s.name))
        if svc.spec.mode == "replicated":
            box.apply(cmd.scale_service(box.cid(), box.now, svc.name, rng.randint(0, 14)))
    elif what == 3 and alive:
        box.apply(cmd.update_node(box.cid(), box.now, rng.choice(alive), availability=rng.choice(["drain", "pause"])))
    elif what == 4 and alive:
        box.apply(cmd.update_node(box.cid(), box.now, rng.choice(alive), label_add={"zone": rng.choice("abc")}))
    elif what == 5:
        back = [n for n in nodes if box.members[n] != "alive"]  # dead or suspect
        if back:
            box.members[rng.choice(back)] = "alive"
    elif what == 6 and alive:
        for node in rng.sample(alive, rng.randint(1, min(2, len(alive)))):
            box.members[node] = "suspect"  # later alive again (what == 5) or dead (what == 0)


@pytest.mark.parametrize("seed", range(16))
def test_every_round_proposes_what_a_full_pass_would(seed):
    rng = random.Random(seed)
    box = IncrementalBox({f"n{i}": {"zone": "abc"[i % 3]} for i in range(8)}, cpu=4.0, memory=8 << 30)
    for i in range(rng.randint(3, 7)):
        box.create(random_service(rng, i))
    box.settle(8)
    for _ in range(6):
        event(box, rng)
        box.settle(6)
    assert any(len(p) < len(box.state.services) for p in box.planned)  # some rounds were incremental


def settled_box(max_moves: int = 2) -> IncrementalBox:
    box = IncrementalBox({"n1": {"zone": "a"}, "n2": {"zone": "b"}, "n3": {"zone": "a"}, "n4": {"zone": "b"}},
                         max_moves=max_moves)
    box.create(web("api", replicas=2, constraints=(Constraint.parse("node.labels.zone==a"),)))
    box.create(web("db", replicas=2, constraints=(Constraint.parse("node.labels.zone==b"),)))
    box.create(web("cache", replicas=4, spread="node.labels.zone"))
    box.settle(6)
    assert box.plan().planned == ()  # settled: nothing to plan
    return box


def test_a_dead_node_replans_only_the_services_that_ran_there():
    box = settled_box()
    [node] = [n for n in ("n2", "n4") if box.per_node("db")[n] and box.per_node("cache")[n]][:1]
    box.members[node] = "dead"
    plan = box.plan()
    assert plan.planned == ("cache", "db")  # api runs in zone a only: left alone
    assert {about for about in plan.about} == {"", "cache", "db"}
    box.settle(4)
    assert len(box.running("db")) == 2 and box.per_node("db")[node] == 0 and len(box.running("cache")) == 4


def test_a_spec_change_replans_that_service_alone():
    box = settled_box()
    box.apply(cmd.scale_service(box.cid(), box.now, "api", 3))
    plan = box.plan()
    assert plan.planned == ("api",) and set(plan.about) == {"api"}


def test_an_unapplied_plan_is_made_again():
    box = settled_box()
    box.apply(cmd.scale_service(box.cid(), box.now, "api", 3))
    first = box.plan()
    assert first.commands  # ... and they are lost (a failed proposal): the service is planned again
    again = box.plan()
    assert again.planned == ("api",) and without_ids(again) == without_ids(first)


def test_a_full_pass_comes_every_full_every_seconds():
    box = settled_box()
    box.reconciler = Reconciler(ReconcileConfig(full_every=30.0))
    assert box.plan().planned == ("api", "cache", "db")  # the first round of a leadership is a full pass
    box.now += 10.0
    assert box.plan().planned == ()
    box.now += 25.0
    assert box.plan().planned == ("api", "cache", "db")
    assert box.reconciler.full_rounds == 2


def test_a_new_term_plans_in_full():
    box = settled_box()
    box.term += 1
    assert box.plan().planned == ("api", "cache", "db")


def test_a_node_that_joins_brings_rebalancing_services_back():
    box = settled_box(max_moves=4)
    box.add_node("n5", {"zone": "c"})
    assert "cache" in box.plan().planned
    box.settle(6)
    assert box.per_node("cache")["n5"] == 1  # 4 spread over zones a, b and now c: one moved to the new node


def test_a_suspect_node_keeps_its_tasks_gets_no_replacement_and_is_eligible_once_alive_again():
    """A zone going dark: one node is declared dead while another of its zone is only suspected.  The
    replacements must not land on the suspect one (it may be down too), nor may its own tasks move yet."""
    box = IncrementalBox({"n1": {"zone": "a"}, "n2": {"zone": "b"}, "n3": {"zone": "c"}, "n4": {"zone": "a"},
                          "n5": {"zone": "b"}, "n6": {"zone": "c"}})
    box.create(web("cache", replicas=6, spread="node.labels.zone"))
    box.create(web("db", replicas=2, constraints=(Constraint.parse("node.labels.zone==b"),)))
    box.settle(6)
    assert box.per_node("db") == {"n2": 1, "n5": 1} and box.per_node("cache")["n5"] == 1
    kept = {t.id for t in box.state.tasks_on("n5") if t.live}
    box.members.update(n2="dead", n5="suspect")
    box.settle(4)
    assert kept <= {t.id for t in box.state.tasks_on("n5") if t.live}  # not moved off: a suspect is not dead
    assert len(box.running("cache")) == 6 and box.per_node("cache")["n5"] == 1  # n2's went to zones a and c
    [waiting] = [t for t in box.state.tasks_of("db") if t.live and t.node is None]  # only n5 could take it
    assert waiting.message
    box.members["n5"] = "alive"
    box.settle(3)
    assert box.per_node("db") == {"n5": 2}
