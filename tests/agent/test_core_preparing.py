"""The agent core's ``preparing`` state: a start that waits for its runtime (an image pull)."""

from __future__ import annotations

from p2pswarm.agent.core import AgentCore, Assignment, RestartPolicy, Start, Stop
from p2pswarm.runtime.base import PortSpec, TaskSpec


def image_task(version: int = 1, network: str = "bridge") -> Assignment:
    spec = TaskSpec("t1", "web", 1, "n1", (), image="nginx:1.27", network=network,
                    publish=(PortSpec(8080, 80), PortSpec(8443, None)), ports=1, stop_grace=3)
    return Assignment(spec, version, "running", RestartPolicy("none"))


def state(core: AgentCore) -> str:
    return core.digest()["tasks"]["t1"]["s"]


def test_preparing_is_gossiped_until_the_run_starts_then_the_mapped_ports_serve():
    core = AgentCore()
    core.assign(0, [image_task()])
    (start,) = core.take_actions()
    assert isinstance(start, Start) and state(core) == "starting"
    version = core.digest()["v"]
    core.preparing(0.1, "t1", start.run)
    assert state(core) == "preparing" and core.digest()["v"] > version
    core.started(5.0, "t1", start.run, (31001, 31002))
    record = core.digest()["tasks"]["t1"]
    assert record["s"] == "running" and record["m"] == [[8080, 31001, False], [8443, 31002, False]]


def test_ports_published_with_the_userspace_option_are_named_in_the_record():
    spec = TaskSpec("t1", "web", 1, "n1", ("x",), publish=(PortSpec(8080, None, userspace=True), PortSpec(9090, None),
                                                           PortSpec(5353, None, protocol="udp", userspace=True)),
                    ports=3)
    core = AgentCore()
    core.assign(0, [Assignment(spec, 1, "running", RestartPolicy("none"))])
    (start,) = core.take_actions()
    core.started(1.0, "t1", start.run, (31001, 31002, 31003))
    record = core.digest()["tasks"]["t1"]
    assert record["u"] == [8080, "5353/udp"] and len(record["m"]) == 3


def test_a_failed_pull_fails_the_task_and_a_stop_while_preparing_waits_for_the_start():
    core = AgentCore()
    core.assign(0, [image_task()])
    (start,) = core.take_actions()
    core.preparing(0, "t1", start.run)
    core.exited(1, "t1", start.run, error="No such image: nginx:1.27")
    assert core.digest()["tasks"]["t1"]["s"] == "failed"
    assert core.digest()["tasks"]["t1"]["e"] == "No such image: nginx:1.27"

    core = AgentCore()
    core.assign(0, [image_task()])
    (start,) = core.take_actions()
    core.preparing(0, "t1", start.run)
    core.assign(1, [image_task(version=2)])
    assert core.take_actions() == [Stop("t1", start.run, 3)]
    core.preparing(1, "t1", start.run)  # late: the run is being stopped already
    assert state(core) == "stopping"
