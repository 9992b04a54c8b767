"""The glue between the pure service cores and the node: log envelope, gossip digest, observation, CLI flags."""

from __future__ import annotations

from types import SimpleNamespace

import click
import msgpack
import pytest

from p2pswarm.agent.host import assignments
from p2pswarm.cli.service_cmds import apply_flags
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.checks import SpecError
from p2pswarm.cluster.spec import HealthCheck, ServiceSpec
from p2pswarm.cluster.state import Result
from p2pswarm.consensus.kv import KVStore, encode_command
from p2pswarm.node.record import EMPTY, GossipRecord, RaftFacts, Record, TaskDigest, decode_record, encode_record
from p2pswarm.node.statemachine import StateMachines, encode_cluster
from p2pswarm.scheduler.driver import SchedulerConfig, SchedulerDriver, _report

SPEC = ServiceSpec("web", "python", ("app.py",), env=(("A", "1"),), health=HealthCheck("http", "/health"))


def placed_state() -> StateMachines:
    sm = StateMachines()
    sm.apply(1, 1, encode_cluster(cmd.update_node("n", 1.0, "node-a", name="a")))
    sm.apply(2, 1, encode_cluster(cmd.create_service("c", 1.0, SPEC)))
    sm.apply(3, 1, encode_cluster(cmd.assign_tasks("p", 1.0, (1, 2), [cmd.placement("web", 1, 1, "node-a")])))
    return sm


def test_both_machines_share_the_log_and_the_snapshot():
    sm = placed_state()
    key, result = sm.apply(4, 1, encode_command(7, 1, "put", "k", "v"))
    assert key == (7, 1) and result is True
    key, result = sm.apply(5, 1, encode_cluster(cmd.create_service("c", 2.0, SPEC)))
    assert key == "c" and result.ok  # a retried id is answered from memory
    assert sm.apply(6, 1, msgpack.packb({"sm": "other"})) == (None, None)
    copy = StateMachines()
    copy.restore(sm.snapshot())
    assert copy.snapshot() == sm.snapshot() and copy.kv.get("k") == "v" and "web" in copy.cluster.services


def test_a_kv_only_snapshot_from_before_the_cluster_state_restores():
    kv = KVStore()
    kv.apply(1, encode_command(1, 1, "put", "k", "v"))
    sm = placed_state()
    sm.restore(kv.snapshot())
    assert sm.kv.get("k") == "v" and sm.cluster.services == {}


def test_records_carry_the_digest_and_raft_only_records_still_decode():
    raft, digest = RaftFacts("c1", "learner", 3), TaskDigest(5, {"t1": {"s": "running", "v": 1, "p": 20001}})
    assert decode_record(encode_record([raft, digest])) == Record(raft=raft, tasks=digest)
    assert decode_record(encode_record([RaftFacts("c1", "voter", 2)])) == Record(raft=RaftFacts("c1", "voter", 2))
    reader = GossipRecord()
    junk = msgpack.packb({"raft": ["c1", "V", 2], "tasks": [1, {"t": "junk"}]})
    assert reader.of(SimpleNamespace(node="b", record=junk)) is EMPTY and reader.counters["malformed_records"] == 1
    # a section this version does not know is ignored (all members run one version: see node/record.py)
    extra = msgpack.packb({"raft": ["c1", "V", 2], "tasks": [1, {}], "extra": "x"})
    assert decode_record(extra) == Record(raft=RaftFacts("c1", "voter", 2), tasks=TaskDigest(1, {}))


def test_digest_records_become_observed_states_and_junk_is_ignored():
    assert _report({"s": "running", "v": 1, "p": 20001, "h": "healthy"}) == ("running", 20001, "healthy", None, "")
    assert _report({"s": "failed", "v": 1, "g": 9, "e": "boom"}) == ("failed", None, None, -9, "boom")
    assert _report({"s": "stopping", "v": 1}) is None
    assert _report({"s": 5}) is None
    assert _report({"s": "running", "p": "x", "h": "weird"}) == ("running", None, None, None, "")


def member(node, digest, status="alive"):
    record = encode_record([RaftFacts("c1", "learner", 1), TaskDigest(*digest)])
    return SimpleNamespace(node=node, status=status, record=record, record_version=1,
                           meta=SimpleNamespace(name="a", labels=(), capacity=()))


def test_only_changes_are_reported():
    state = placed_state().cluster
    tid = next(iter(state.tasks))
    sched = SchedulerDriver(None, None, SchedulerConfig())
    running = {tid: {"s": "running", "v": 1, "p": 20001}}

    def reports(members, wall):
        return [r for c in sched.observations(state, members, wall) if c["op"] == "report_tasks" for r in c["reports"]]
    (batch,) = [c for c in sched.observations(state, [member("node-a", (1, running))], 2.0)
                if c["op"] == "report_tasks"]
    assert [(r["task"], r["state"], r["port"]) for r in batch["reports"]] == [(tid, "running", 20001)]
    assert state.apply(batch, 1, 4).ok
    assert reports([member("node-a", (2, running))], 3.0) == []
    assert reports([member("node-b", (1, running))], 3.0) == []  # not its task
    assert reports([member("node-a", (3, {tid: {"s": "starting", "v": 1}}))], 3.0) == []


def test_registration_adds_gossiped_labels_and_capacity_once():
    state = placed_state().cluster
    sched = SchedulerDriver(None, None, SchedulerConfig())
    m = SimpleNamespace(node="node-a", status="alive", record=b"", meta=SimpleNamespace(
        name="a", labels=(("zone", "z1"),), capacity=(("cpus", 2.0), ("memory_mb", 1024.0))))
    out = sched._register(state, [m], 2.0)
    assert len(out) == 1 and out[0]["label_add"] == {"zone": "z1"} and out[0]["memory"] == 1 << 30
    state.apply(out[0], 1, 4)
    assert sched._register(state, [m], 3.0) == []


def test_assignments_map_the_spec_and_keep_ended_tasks_shut_down_for_their_logs():
    state = placed_state().cluster
    [a] = assignments(state, "node-a")
    assert a.spec.command == ("python", "app.py") and a.spec.env == {"A": "1"} and a.spec.health.kind == "http"
    assert a.restart.condition == "none" and a.desired == "running"
    tid = a.spec.task_id
    state.apply(cmd.report_task_status("r", 2.0, tid, "failed", node="node-a"), 1, 4)
    # the ended task stays assigned, never to run again, while the history keeps it
    ended = [x for x in assignments(state, "node-a") if x.spec.task_id == tid]
    assert [x.desired for x in ended] == ["shutdown"]
    assert all(x.spec.task_id != tid for x in assignments(state, "node-b"))


FLAGS = dict.fromkeys(
    ["replicas", "mode", "workdir", "reserve_cpu", "placement_pref", "reserve_memory", "restart_condition",
     "restart_delay", "restart_max_attempts", "restart_window", "update_parallelism", "update_delay",
     "update_failure_action", "update_order", "update_monitor", "health_cmd", "health_http", "health_interval",
     "health_timeout", "health_retries", "health_start_period", "image", "network", "user", "limit_cpu",
     "limit_memory", "limit_pids", "stop_signal", "stop_grace_period"])


def flags(**given):
    return {**FLAGS, "publish": (), "env": (), "constraint": (), "health_tcp": False, "mount": (), "secret": (),
            "config_refs": (), **given}


def test_cli_flags_build_and_change_specs():
    spec = apply_flags(ServiceSpec("web", "python"), flags(
        replicas=3, publish=("8080",), env=("A=1",), constraint=("node.labels.zone==a",),
        placement_pref="spread=node.labels.zone", restart_delay="500ms", update_parallelism=2,
        health_tcp=True, health_interval="2s", reserve_memory="64M"))
    assert (spec.replicas, spec.restart.delay, spec.update.parallelism, spec.health.kind, spec.health.interval,
            spec.reserve_memory, spec.spread) == (3, 0.5, 2, "tcp", 2.0, 64 << 20, "node.labels.zone")
    changed = apply_flags(spec, flags(env=("B=2",)))
    assert changed.env == (("A", "1"), ("B", "2")) and changed.health == spec.health and changed.replicas == 3
    with pytest.raises(SpecError, match="replicas"):
        apply_flags(spec, flags(replicas=-1))
    with pytest.raises(SpecError, match="restart.delay"):
        apply_flags(spec, flags(restart_delay="soon"))
    with pytest.raises(click.UsageError):
        apply_flags(spec, flags(health_tcp=True, health_http="/h"))


def test_workload_flags_reach_the_spec_and_update_replaces_the_lists():
    spec = apply_flags(ServiceSpec("web", "", image="nginx"), flags(
        image="nginx:1.27", limit_memory="64M", limit_cpu=0.5, limit_pids=64, stop_signal="SIGQUIT",
        stop_grace_period="3s", user="1000", mount=("type=volume,source=data,target=/data",),
        secret=("db",), config_refs=("source=site,target=/etc/site.conf",)))
    assert (spec.image, spec.limit_memory, spec.limit_cpu, spec.limit_pids, spec.stop_signal, spec.stop_grace,
            spec.user) == ("nginx:1.27", 64 << 20, 0.5, 64, "SIGQUIT", 3.0, "1000")
    assert [str(m) for m in spec.mounts] == ["type=volume,source=data,target=/data"]
    assert [r.name for r in spec.secrets] == ["db"] and spec.configs[0].target == "/etc/site.conf"
    changed = apply_flags(spec, flags(secret=("db-v2",)))
    assert [r.name for r in changed.secrets] == ["db-v2"] and changed.mounts == spec.mounts


def test_a_refused_observation_is_not_proposed_again():
    import asyncio

    class Driver:
        def __init__(self):
            self.cluster, self.raft = placed_state().cluster, SimpleNamespace(term=1)
            self.failed, self.writes = None, []

        async def write_cluster(self, command):
            self.writes.append(command["op"])
            return Result(False, "no")

    driver = Driver()
    bad = SimpleNamespace(node="node-b", status="alive", record=b"", record_version=1,
                          meta=SimpleNamespace(name="b", labels=(), capacity=()))
    sched = SchedulerDriver(SimpleNamespace(driver=driver), SimpleNamespace(members=lambda: [bad]),
                            SchedulerConfig())
    asyncio.run(sched._round(driver))
    sched._seen = None
    asyncio.run(sched._round(driver))
    assert driver.writes.count("update_node") == 1


def test_task_errors_name_nodes_by_name():
    from p2pswarm.api.service_routes import named_nodes

    nodes = {"3f2a9c0d11e84b7a": SimpleNamespace(name="n2")}
    assert named_nodes("node 3f2a9c0d11e84b7a is down", nodes) == "node n2 is down"
    assert named_nodes("node 0123456789abcdef is down", nodes) == "node 0123456789abcdef is down"  # unknown: kept
    assert named_nodes("exit code 1", nodes) == "exit code 1"
