"""Scheduling decisions fit Raft entries: split by encoded size, one service's commands apart from another's."""

from __future__ import annotations

from collections import Counter
from itertools import count

import pytest

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.state import ClusterState, Result
from p2pswarm.consensus.messages import MAX_ENTRY_BYTES
from p2pswarm.node.statemachine import encode_cluster
from p2pswarm.scheduler.reconcile import MAX_PENDING, reconcile

from .schedbox import Box


def ids():
    """Command ids as long as ids get, which the packer assumes (so a batch's size is exactly what it counted)."""
    numbers = count()
    return lambda: f"b.{next(numbers)}".ljust(cmd.MAX_ID, "0")


def placements(n: int, message: str = "") -> list[dict]:
    return [cmd.placement("big", 1, slot, None, message=message) for slot in range(1, n + 1)]


def test_batches_encode_under_the_entry_limit_and_keep_every_decision_in_order():
    place = placements(60_000, "no node satisfies node.labels.zone==nowhere")
    stop = [(f"task.{i}", "scaled down") for i in range(25_000)]
    batches = list(cmd.assign_batches(ids(), 5.0, (1, 9), place, stop))
    sizes = [len(encode_cluster(b)) for b in batches]
    assert max(sizes) <= MAX_ENTRY_BYTES
    assert all(len(b["place"]) <= cmd.MAX_BATCH and len(b["stop"]) <= cmd.MAX_BATCH for b in batches)
    assert [p for b in batches for p in b["place"]] == place
    assert [tuple(s) for b in batches for s in b["stop"]] == stop
    # stops come first: no batch places anything before every stop was sent
    first_place = next(i for i, b in enumerate(batches) if b["place"])
    assert not any(b["stop"] for b in batches[first_place + 1:])
    # packed by measured size: every batch but the last is full to within one entry (or MAX_BATCH entries)
    largest = max(cmd.encoded_size(p) for p in place)
    assert all(size > MAX_ENTRY_BYTES - cmd.ENTRY_HEADROOM - largest or max(len(b["place"]), len(b["stop"])) ==
               cmd.MAX_BATCH for b, size in zip(batches[:-1], sizes))
    assert len(batches) == 9  # 2 of 10,000 stops, then 1 MiB each: 5,000 stops + 8,844 placements, 5 x 9,984, ...
    assert len({b["id"] for b in batches}) == len(batches) and all(b["basis"] == [1, 9] for b in batches)
    for b in batches:
        assert cmd.check(b)[0] == "assign_tasks"  # each one passes the state machine's checks


def test_a_batch_limit_too_small_for_one_entry_is_our_own_bug():
    with pytest.raises(ValueError, match="no command of 200 bytes"):
        list(cmd.assign_batches(ids(), 5.0, (1, 9), placements(1, "x" * 300), limit=200))
    assert list(cmd.assign_batches(ids(), 5.0, (1, 9), [])) == []


def test_a_service_too_large_for_one_entry_converges_over_several_and_the_others_get_their_own():
    box = Box({"node-" + "a" * 100: {}, "node-" + "b" * 100: {}, "node-" + "c" * 100: {}})  # long ids: big entries
    box.create(ServiceSpec("big", "srv", replicas=12_000))
    box.create(ServiceSpec("small", "srv", replicas=3))
    plan = reconcile(box.state, box.members, box.now, box.term)
    sizes = [len(encode_cluster(c)) for c in plan.commands]
    big = plan.about.count("big")
    assert big >= 2 and plan.about == ("big",) * big + ("small",) and max(sizes) <= MAX_ENTRY_BYTES < sum(sizes)
    assert all(len(c["place"]) < cmd.MAX_BATCH for c in plan.commands)  # split by bytes, not by count
    assert all(box.apply(c).ok for c in plan.commands)
    assigned = [t for t in box.state.tasks.values() if t.state == "assigned"]
    assert len(assigned) == 12_003 and len({(t.service, t.slot) for t in assigned}) == 12_003
    assert reconcile(box.state, box.members, box.now, box.term).commands == ()


def test_an_unsatisfiable_huge_service_records_a_bounded_number_of_pending_tasks():
    box = Box(3)
    box.create(ServiceSpec("big", "srv", replicas=100_000, constraints=("node.labels.zone==nowhere",)))
    box.create(ServiceSpec("small", "srv", replicas=3))
    box.settle(2)
    pending = box.state.service_ps("big")
    assert len(pending) == MAX_PENDING and {r["state"] for r in pending} == {"new"}
    assert {r["error"] for r in pending} == {"no node satisfies node.labels.zone==nowhere"}
    assert len(box.running("small")) == 3
    assert reconcile(box.state, box.members, box.now, box.term).commands == ()  # nothing more to say
    # once a node satisfies the constraint, the pending tasks and then the rest are placed
    box.apply(cmd.update_node(box.cid(), box.now, "n1", label_add={"zone": "nowhere"}))
    box.apply(cmd.scale_service(box.cid(), box.now, "big", 500))
    box.settle(3)
    assert len(box.running("big")) == 500 and set(box.per_node("big")) == {"n1"}


def test_only_a_decision_planned_on_outdated_state_is_stale():
    state = ClusterState()
    state.apply(cmd.update_node("n", 1.0, "n1", name="n1"), 1, 1)
    state.apply(cmd.create_service("c", 1.0, ServiceSpec("web", "srv", replicas=2)), 1, 2)
    state.apply(cmd.scale_service("s", 1.0, "web", 3), 1, 3)
    stale = state.apply(cmd.assign_tasks("a", 1.0, (1, 2), [cmd.placement("web", 1, 1, "n1")]), 1, 4)
    assert not stale.ok and stale.stale
    other_term = state.apply(cmd.assign_tasks("b", 1.0, (0, 3), [cmd.placement("web", 2, 1, "n1")]), 1, 5)
    assert other_term.stale
    unknown = state.apply(cmd.assign_tasks("d", 1.0, (1, 5), [cmd.placement("web", 2, 1, "nx")]), 1, 6)
    assert not unknown.ok and not unknown.stale and "node nx is unknown" in unknown.error
    assert not Result(True).stale


def test_the_scheduling_note_neither_changes_the_service_nor_survives_a_new_version():
    state = ClusterState()
    state.apply(cmd.create_service("c", 1.0, ServiceSpec("web", "srv")), 1, 1)
    changed = state.services["web"].changed
    assert state.apply(cmd.set_scheduling_error("e", 2.0, "web", "scheduling: refused: boom"), 1, 2).ok
    assert state.services["web"].scheduling_error == "scheduling: refused: boom"
    assert state.services["web"].changed == changed  # decisions planned before the note stay valid
    assert state.service_summaries()[0]["scheduling_error"] == "scheduling: refused: boom"
    copy = ClusterState()
    copy.restore(state.snapshot())
    assert copy.services["web"].scheduling_error == "scheduling: refused: boom"
    state.apply(cmd.scale_service("s", 3.0, "web", 2), 1, 3)
    assert state.services["web"].scheduling_error == ""
    assert not state.apply(cmd.set_scheduling_error("f", 4.0, "ghost", "x"), 1, 4).ok


def test_a_100000_replica_service_is_scheduled_in_entries_under_the_limit():
    nodes = {f"node-{i:02d}-" + "x" * 100: {} for i in range(50)}  # long node ids: about 1 MB per 6,000 tasks
    box = Box(nodes)
    box.create(ServiceSpec("huge", "srv", replicas=100_000))
    box.create(ServiceSpec("small", "srv", replicas=3))
    plan = reconcile(box.state, box.members, box.now, box.term)
    sizes = [len(encode_cluster(c)) for c in plan.commands]
    huge = plan.about.count("huge")
    assert max(sizes) <= MAX_ENTRY_BYTES and huge >= 10 and plan.about == ("huge",) * huge + ("small",)
    assert all(box.apply(c).ok for c in plan.commands)  # every one commits: none is refused as too large
    assigned = Counter(t.node for t in box.state.tasks_of("huge") if t.state == "assigned")
    assert len(assigned) == 50 and sum(assigned.values()) == 100_000
    assert reconcile(box.state, box.members, box.now, box.term).commands == ()


def test_new_placements_are_the_placements_one_by_one():
    assert cmd.new_placements("web", 3, [4, 7], ["n1", "n2"]) == [cmd.placement("web", 3, 4, "n1"),
                                                                    cmd.placement("web", 3, 7, "n2")]


def test_report_batches_fit_entries_and_keep_every_report_in_order():
    reports = [cmd.task_report(f"task.{i:06d}", "orphaned", node=None, error=f"node node.{i % 400:04d} is down")
               for i in range(30_000)]
    batches = list(cmd.report_batches(ids(), 5.0, reports))
    assert len(batches) > 1 and all(len(encode_cluster(b)) <= MAX_ENTRY_BYTES for b in batches)
    assert all(len(b["reports"]) <= cmd.MAX_BATCH for b in batches)
    assert [r for b in batches for r in b["reports"]] == reports
    for b in batches:
        assert cmd.check(b)[0] == "report_tasks"
    (one,) = cmd.report_batches(ids(), 5.0, reports[:8_000])  # a 400-node zone's orphans: one entry
    assert len(one["reports"]) == 8_000
    assert list(cmd.report_batches(ids(), 5.0, [])) == []
