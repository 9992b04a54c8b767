"""Property: any sequence of commands, good, bad or garbage, applies deterministically and never raises.

Two replicas that apply the same log hold byte-identical snapshots, and a replica that
restores a snapshot midway and applies the rest ends up identical as well.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.state import ClusterState

NAMES = st.sampled_from(["a", "b", "c"])
NODES = st.sampled_from(["n1", "n2", "n3"])
IDS = st.sampled_from([f"c{i}" for i in range(12)]) | st.uuids().map(str) | st.uuids().map(str)
"""Command ids: often fresh, sometimes a retry (or a clash) with an earlier command."""
TASKS = st.builds(lambda i, j: f"{i}.{j}", st.integers(6, 50), st.integers(0, 2))
AT = st.floats(0, 1000, allow_nan=False)


@st.composite
def specs(draw) -> ServiceSpec:
    return ServiceSpec(draw(NAMES), draw(st.sampled_from(["srv", "bad"])), args=draw(st.lists(NAMES, max_size=2)),
                       mode=draw(st.sampled_from(["replicated", "replicated", "global"])),
                       replicas=draw(st.integers(0, 4)),
                       ports=draw(st.lists(st.sampled_from(["8080", "9090", "7070:80"]), max_size=2, unique=True)),
                       constraints=draw(st.lists(st.sampled_from(["node.labels.zone==a", "node.name!=n2"]),
                                                 max_size=1)))


def placements(draw) -> list[dict]:
    likely = st.sampled_from  # mostly plausible decisions, sometimes odd ones
    return draw(st.lists(st.builds(cmd.placement, NAMES, likely([1, 1, 1, 2, 3]), likely([1, 2, 3, 0, 4]),
                                   likely(["n1", "n2", "n3", "n1", None]), task=likely([None] * 4) | TASKS,
                                   message=likely(["", "no node satisfies node.labels.zone==c"])),
                         min_size=1, max_size=4))


@st.composite
def commands(draw):
    basis = st.lists(st.integers(0, 60), min_size=2, max_size=2)
    kind = draw(st.integers(0, 21))
    cid, at = draw(IDS), draw(AT)
    if kind == 0:
        return cmd.create_service(cid, at, draw(specs()))
    if kind == 1:
        return cmd.update_service(cid, at, draw(specs()), version=draw(st.none() | st.integers(1, 5)))
    if kind == 2:
        return cmd.scale_service(cid, at, draw(NAMES), draw(st.integers(0, 5)))
    if kind == 3:
        return cmd.rollback_service(cid, at, draw(NAMES), draw(st.none() | basis))
    if kind == 4:
        return cmd.remove_service(cid, at, draw(NAMES))
    if kind in (5, 6):
        stops = draw(st.lists(st.tuples(TASKS, st.text(max_size=5)), max_size=2))
        command = cmd.assign_tasks(cid, at, draw(basis), placements(draw), stops)
        return {**command, "basis": "current"} if draw(st.booleans()) else command
    if kind == 7:
        return cmd.set_task_desired(cid, at, draw(st.lists(TASKS, max_size=3)),
                                    draw(st.sampled_from(["running", "shutdown", "remove"])), "",
                                    draw(st.none() | basis))
    if kind in (8, 9):
        return cmd.report_task_status(cid, at, draw(TASKS), draw(st.sampled_from(
            ["starting", "running", "complete", "failed", "shutdown", "rejected", "orphaned"])),
            node=draw(st.none() | NODES), port=draw(st.none() | st.integers(1, 65535)),
            exit_code=draw(st.none() | st.integers(-1, 2)))
    if kind == 10:
        return cmd.update_node(cid, at, draw(NODES), availability=draw(st.none() | st.sampled_from(
            ["active", "pause", "drain"])), label_add=draw(st.none() | st.just({"zone": "a"})),
            cpu=draw(st.none() | st.floats(0, 8)))
    if kind == 11:
        return cmd.remove_node(cid, at, draw(NODES))
    if kind == 12:
        return cmd.set_update_state(cid, at, draw(NAMES), draw(st.integers(1, 4)),
                                    draw(st.sampled_from(["paused", "completed", "sideways"])))
    if kind >= 14:
        return {"smart": draw(st.sampled_from(["plan", "report"])), "k": draw(st.integers(0, 1000)), "id": cid}
    return draw(st.one_of(st.binary(max_size=20), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
                          st.just({"op": "assign_tasks", "id": "x", "at": 1, "place": "x", "stop": []})))


SETUP = [cmd.update_node(f"setup{i}", 0.0, node, labels={"zone": "ab"[i % 2]}) for i, node in
         enumerate(["n1", "n2", "n3"])] + [cmd.create_service(f"setup-{name}", 0.0,
                                                               ServiceSpec(name, "srv", replicas=3))
                                           for name in "ab"]
"""Every log starts from a small cluster, so that random decisions often hit real objects."""


def replay(log: list, restore_at: int | None = None) -> ClusterState:
    state = ClusterState()
    for index, command in enumerate(SETUP + log, start=1):
        if index == restore_at:
            fresh = ClusterState()
            fresh.restore(state.snapshot())
            state = fresh
        term = 1 + index // 20
        if isinstance(command, dict) and command.get("basis") == "current":
            command = {**command, "basis": [term, state.applied]}  # a leader planning on what it has applied
        if isinstance(command, dict) and "smart" in command:
            command = smart(state, command, term)
        state.apply(command, term, index)
    return state


def smart(state: ClusterState, marker: dict, term: int) -> dict:
    """A plausible decision or report, chosen from the state (deterministically), so that runs
    get past validation and exercise placements, reports, restarts and removals."""
    k, cid = marker["k"], marker["id"]
    if marker["smart"] == "plan" and state.services and state.nodes:
        svc = state.services[sorted(state.services)[k % len(state.services)]]
        node = sorted(state.nodes)[k % len(state.nodes)]
        slot = 0 if svc.spec.mode == "global" else 1 + k % max(1, svc.spec.replicas)
        stop = [(t.id, "moved") for t in state.tasks_of(svc.name) if t.slot == slot and t.live][:1]
        return cmd.assign_tasks(cid, float(k), [term, state.applied], [cmd.placement(svc.name, svc.version, slot,
                                                                                     node)], stop)
    if state.tasks:
        task = state.tasks[sorted(state.tasks)[k % len(state.tasks)]]
        return cmd.report_task_status(cid, float(k), task.id, ["starting", "running", "failed", "complete",
                                                               "shutdown"][k % 5], node=task.node, exit_code=k % 2)
    return {"op": "nothing to do"}


@settings(max_examples=200, deadline=None)
@given(st.lists(commands(), min_size=5, max_size=60), st.integers(1, 65))
def test_replicas_agree_byte_for_byte(log, restore_at):
    one, two = replay(log), replay(log)
    assert one.snapshot() == two.snapshot()
    assert replay(log, restore_at).snapshot() == one.snapshot()
    # every surviving task belongs to a known service or is on its way out
    for task in one.tasks.values():
        assert task.service in one.services or task.desired == "remove"
