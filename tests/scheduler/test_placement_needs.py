"""Placement of what a task needs of its node: a container engine, task isolation, and host ports
(a process's fixed target, a mode=host port) that no other task of the node holds."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec, UpdateConfig
from p2pswarm.node.record import NodeCaps, encode_record
from p2pswarm.scheduler.config import SchedulerConfig
from p2pswarm.scheduler.driver import SchedulerDriver
from p2pswarm.scheduler.placement import Demand, NodeInfo, plan

from .schedbox import Box

DOCKER_V1 = {"engine": "docker", "isolation": "cgroup-v1"}
BARE = {"engine": "none", "isolation": "none"}


def placed(p, service: str = "web") -> Counter:
    return Counter(node for s, node in p.place if s == service)


def test_image_tasks_go_only_to_nodes_with_a_container_engine():
    nodes = [NodeInfo("n1", **BARE), NodeInfo("n2", **DOCKER_V1), NodeInfo("n3")]  # n3 has not reported: unknown
    p = plan(nodes, [Demand(ServiceSpec("web", "", image="nginx:1.27", replicas=3))])
    assert placed(p) == {"n2": 3} and not p.unplaced
    none = plan([NodeInfo("n1", **BARE), NodeInfo("n3")], [Demand(ServiceSpec("web", "", image="nginx", replicas=2))])
    assert none.unplaced == {"web": (2, "no node has a container engine (node.engine==docker)")}


def test_limits_and_another_user_need_a_node_that_can_isolate_but_a_container_does_not():
    nodes = [NodeInfo("n1", **BARE), NodeInfo("n2", engine="docker", isolation="cgroup-v2"), NodeInfo("n3")]
    for spec in (ServiceSpec("web", "x", replicas=2, limit_memory=64 << 20), ServiceSpec("web", "x", user="nobody")):
        assert set(placed(plan(nodes, [Demand(spec)]))) == {"n2"}
    p = plan([NodeInfo("n1", **BARE), NodeInfo("n3")], [Demand(ServiceSpec("web", "x", limit_pids=10))])
    assert p.unplaced["web"][1] == ("no node can isolate tasks (node.isolation!=none), which limits and --user "
                                    "need")
    plain = plan([NodeInfo("n1", **BARE)], [Demand(ServiceSpec("web", "x", replicas=2))])
    assert placed(plain) == {"n1": 2}  # a plain process runs anywhere
    docker_only = [NodeInfo("n1", engine="docker", isolation="none")]
    assert placed(plan(docker_only, [Demand(ServiceSpec("web", "", image="i", limit_cpu=0.5))])) == {"n1": 1}


def test_a_node_that_lost_its_engine_gives_its_image_tasks_up():
    p = plan([NodeInfo("n1", **BARE), NodeInfo("n2", **DOCKER_V1)],
             [Demand(ServiceSpec("web", "", image="nginx"), tasks=(("t1", "n1"),))])
    assert p.stop == (("t1", "node n1 lacks a container engine (node.engine==docker)"),)
    assert p.place == (("web", "n2"),)


def test_engine_and_isolation_constraints_read_the_node_with_unknown_as_none():
    nodes = [NodeInfo("n1", **BARE), NodeInfo("n2", **DOCKER_V1), NodeInfo("n3")]
    no_engine = ServiceSpec("web", "x", replicas=4, constraints=("node.engine==none",))
    assert set(placed(plan(nodes, [Demand(no_engine)]))) == {"n1", "n3"}
    v1 = ServiceSpec("web", "x", replicas=2, constraints=("node.isolation==cgroup-v1",))
    assert set(placed(plan(nodes, [Demand(v1)]))) == {"n2"}
    v2 = ServiceSpec("web", "x", constraints=("node.isolation==cgroup-v2",))
    assert plan(nodes, [Demand(v2)]).unplaced["web"][1] == "no node satisfies node.isolation==cgroup-v2"


def test_two_replicas_needing_one_host_port_on_a_one_node_cluster_place_one():
    spec = ServiceSpec("web", "python3", replicas=2, ports=("8091:8000",))
    p = plan([NodeInfo("n1")], [Demand(spec)])
    assert p.place == (("web", "n1"),)
    assert p.unplaced == {"web": (1, "host port 8000 is taken on every eligible node")}
    # on three nodes each gets at most one; the fourth replica has nowhere to go
    p = plan([NodeInfo(f"n{i}") for i in (1, 2, 3)], [Demand(spec.replace(replicas=4))])
    assert placed(p) == {"n1": 1, "n2": 1, "n3": 1} and p.unplaced["web"][0] == 1


def test_host_ports_are_shared_between_services_and_mapped_container_ports_are_not():
    a = ServiceSpec("a", "x", replicas=1, ports=("published=7000,mode=host",))
    b = ServiceSpec("b", "x", replicas=1, ports=("9000:7000",))  # its process listens on 7000 too
    bridge = ServiceSpec("c", "", image="nginx", replicas=3, ports=("8080:80",))  # mapped: no host port
    nodes = [NodeInfo("n1", **DOCKER_V1), NodeInfo("n2", **DOCKER_V1)]
    p = plan(nodes, [Demand(a), Demand(b), Demand(bridge)])
    assert placed(p, "a").keys() != placed(p, "b").keys() and sum(placed(p, "c").values()) == 3
    full = plan(nodes[:1], [Demand(a), Demand(b)])
    assert full.unplaced == {"b": (1, "host port 7000 is taken on every eligible node")}
    held = plan(nodes, [Demand(a)], held_ports={"n1": [(7000, "tcp")]})  # an old task still holds it on n1
    assert placed(held, "a") == {"n2": 1}
    udp = ServiceSpec("d", "x", ports=("5353:7000/udp",))  # same number, other protocol: no clash
    assert placed(plan(nodes[:1], [Demand(a), Demand(udp)]), "d") == {"n1": 1}


def test_a_kept_task_whose_host_port_another_holds_moves():
    spec = ServiceSpec("web", "x", replicas=2, ports=("8091:8000",))
    p = plan([NodeInfo("n1"), NodeInfo("n2")], [Demand(spec, tasks=(("t1", "n1"), ("t2", "n1")))])
    assert p.stop == (("t2", "host port 8000 is taken on node n1"),) and p.place == (("web", "n2"),)


def test_a_global_service_says_where_its_host_port_is_taken():
    holder = ServiceSpec("a", "x", ports=("published=7000,mode=host",))
    glob = ServiceSpec("g", "x", mode="global", ports=("published=7000,mode=host",))
    p = plan([NodeInfo("n1"), NodeInfo("n2")], [Demand(holder, tasks=(("a1", "n1"),)), Demand(glob)])
    assert placed(p, "g") == {"n2": 1}
    assert p.unplaced == {"g": (1, "host port 7000 is taken on 1 eligible node (n1)")}


def test_a_stop_first_update_of_a_fixed_port_service_replaces_its_task_on_a_one_node_cluster():
    box = Box(1)
    spec = ServiceSpec("web", "srv", args=("v1",), ports=("8091:8000",), update=UpdateConfig(order="stop-first"))
    box.create(spec)
    box.settle(3)
    [old] = box.running("web")
    box.update(spec.replace(args=("v2",)))
    box.round()  # the stop frees the port at once: the replacement is placed in the same decision
    assert [t.node for t in box.state.tasks_of("web") if t.version == 2] == ["n1"]
    box.settle(5)
    [new] = box.running("web")
    assert new.id != old.id and new.version == 2 and box.state.tasks[old.id].desired != "running"


def test_the_scheduler_registers_what_a_node_gossips_of_its_engine_and_isolation():
    box = Box(0)
    caps = NodeCaps("docker", "20.10.24", "none", "not root")
    member = SimpleNamespace(node="n1", status="alive", record=encode_record([caps]),
                             meta=SimpleNamespace(name="n1", labels=(), capacity=()))
    sched = SchedulerDriver(None, None, SchedulerConfig())
    [register] = sched._register(box.state, [member], 1.0)
    box.apply(register)
    assert sched._register(box.state, [member], 2.0) == []  # registered once, until it changes
    node = box.state.nodes["n1"]
    assert (node.engine, node.engine_detail, node.isolation, node.isolation_detail) == (
        "docker", "20.10.24", "none", "not root")
    box.apply(cmd.update_node("r2", 2.0, "n1", cpu=2.0))  # other updates keep them
    assert box.state.nodes["n1"].engine == "docker" and NodeInfo.of(box.state.nodes["n1"]).isolation == "none"
