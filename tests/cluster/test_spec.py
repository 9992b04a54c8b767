"""The service spec: Docker-like defaults, text forms, strict codec, and one clear line per bad input."""

from __future__ import annotations

import msgpack
import pytest

from p2pswarm.cluster.spec import (
    Constraint,
    HealthCheck,
    PortSpec,
    RestartPolicy,
    ServiceSpec,
    SpecError,
    UpdateConfig,
    parse_duration,
    parse_memory,
    parse_port,
)


def full_spec() -> ServiceSpec:
    return ServiceSpec("web", "python3", args=["-m", "http.server", "{port}"], env={"B": "2", "A": "1"},
                       workdir="/srv", replicas=6, ports=["8080:80,proxy-protocol", "9090"],
                       constraints=["node.labels.zone!=c", "node.name!=n9"], spread="node.labels.zone",
                       reserve_cpu=0.5, reserve_memory=parse_memory("512M"),
                       restart=RestartPolicy("on-failure", delay=1, max_attempts=3, window=60),
                       update=UpdateConfig(parallelism=2, failure_action="rollback", order="start-first"),
                       health=HealthCheck("http", path="/health", interval=2, timeout=1, retries=2),
                       rebalance=False)


def test_defaults_follow_docker():
    spec = ServiceSpec("web", "sleep", args=("60",))
    assert spec.replicas == 1 and spec.mode == "replicated"
    assert spec.restart == RestartPolicy("any", 5.0, 0, 0.0)
    assert (spec.update.parallelism, spec.update.delay, spec.update.failure_action, spec.update.monitor,
            spec.update.order) == (1, 0.0, "pause", 5.0, "stop-first")
    assert spec.health is None and spec.rebalance
    assert HealthCheck("tcp").interval == 30 and HealthCheck("tcp").retries == 3
    assert spec.argv == ("sleep", "60")


def test_normalisation():
    spec = full_spec()
    assert spec.env == (("A", "1"), ("B", "2"))
    assert spec.args == ("-m", "http.server", "{port}")
    assert spec.ports == (PortSpec(8080, 80, True), PortSpec(9090, None))
    assert spec.constraints[0] == Constraint("node.labels.zone", "!=", "c")
    assert spec.spread_label == "zone"
    assert ServiceSpec("g", "x", mode="global", replicas=5).replicas == 0


def test_codec_round_trip_through_msgpack():
    spec = full_spec()
    data = msgpack.unpackb(msgpack.packb(spec.to_dict()), raw=False)
    assert ServiceSpec.from_dict(data) == spec
    assert ServiceSpec.from_dict(ServiceSpec("a", "b").to_dict()) == ServiceSpec("a", "b")


@pytest.mark.parametrize("text,expected", [
    ("8080", PortSpec(8080, None)),
    ("8080:80", PortSpec(8080, 80)),
    ("8080:dynamic", PortSpec(8080, None)),
    ("1:65535,proxy-protocol", PortSpec(1, 65535, True)),
])
def test_ports(text, expected):
    assert parse_port(text) == expected
    assert parse_port(str(expected)) == expected


@pytest.mark.parametrize("text,size", [("512M", 512 << 20), ("1G", 1 << 30), ("1.5g", 3 << 29), ("2048", 2048),
                                       ("64MiB", 64 << 20), ("10kb", 10240), (4096, 4096)])
def test_memory(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text,seconds", [("5", 5.0), ("2.5s", 2.5), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0),
                                          (3, 3.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_constraints_evaluate_against_a_node():
    zone_a = Constraint.parse("node.labels.zone==a")
    assert zone_a.matches("id1", "n1", {"zone": "a"})
    assert not zone_a.matches("id1", "n1", {"zone": "b"})
    assert not zone_a.matches("id1", "n1", {})  # a missing label fails ==
    assert Constraint.parse("node.labels.zone!=a").matches("id1", "n1", {})  # ... and passes !=
    assert Constraint.parse("node.name!=n1").matches("id2", "n2", {})
    assert Constraint.parse("node.hostname==n1") == Constraint("node.name", "==", "n1")
    assert Constraint.parse(" node.id == id7 ").matches("id7", "x", {})
    assert str(zone_a) == "node.labels.zone==a"


BAD = [
    ({"name": "Web"}, "name:"),
    ({"name": "-web"}, "name:"),
    ({"name": "w" * 64}, "name:"),
    ({"command": ""}, "command:"),
    ({"args": "not a list"}, "args:"),
    ({"args": [1]}, "args:"),
    ({"env": {"1X": "a"}}, "env:"),
    ({"env": {"A": 1}}, "env.A:"),
    ({"workdir": "relative"}, "workdir:"),
    ({"mode": "daemon"}, "mode:"),
    ({"replicas": -1}, "replicas:"),
    ({"replicas": 1.5}, "replicas:"),
    ({"replicas": True}, "replicas:"),
    ({"ports": ["0"]}, "ports.published:"),
    ({"ports": ["70000"]}, "ports.published:"),
    ({"ports": ["8080:99999"]}, "ports.target:"),
    ({"ports": ["8080:http"]}, "ports: must look like"),
    ({"ports": ["8080,tls"]}, "ports: the options are"),
    ({"ports": ["8080", "8080:80"]}, "ports: each published port"),
    ({"ports": [{"published": 8080, "tls": True}]}, "ports: unknown field"),
    ({"constraints": ["zone==a"]}, "constraints:"),
    ({"constraints": ["node.labels.zone=a"]}, "constraints:"),
    ({"constraints": ["node.labels.zone~=a"]}, "constraints:"),
    ({"constraints": ["node.labels.zone=="]}, "constraints:"),
    ({"spread": "zone"}, "spread:"),
    ({"spread": "node.name"}, "spread:"),
    ({"reserve_cpu": -0.5}, "reserve_cpu:"),
    ({"reserve_cpu": float("nan")}, "reserve_cpu:"),
    ({"reserve_memory": "512M"}, "reserve_memory:"),
    ({"restart": {"condition": "always"}}, "restart.condition:"),
    ({"restart": {"delay": -1}}, "restart.delay:"),
    ({"restart": {"max_attempts": -2}}, "restart.max_attempts:"),
    ({"restart": {"bogus": 1}}, "restart: unknown field"),
    ({"update": {"parallelism": -1}}, "update.parallelism:"),
    ({"update": {"failure_action": "explode"}}, "update.failure_action:"),
    ({"update": {"order": "random"}}, "update.order:"),
    ({"update": {"max_failure_ratio": 2}}, "update.max_failure_ratio:"),
    ({"rollback": {"monitor": -3}}, "rollback.monitor:"),
    ({"health": {"kind": "udp"}}, "health.kind:"),
    ({"health": {"kind": "http", "path": "health"}}, "health.path:"),
    ({"health": {"kind": "exec"}}, "health.command:"),
    ({"health": {"kind": "tcp", "command": ["true"]}}, "health.command:"),
    ({"health": {"kind": "tcp", "interval": 0}}, "health.interval:"),
    ({"health": {"kind": "tcp", "retries": 0}}, "health.retries:"),
    ({"health": {"path": "/"}}, "health: missing required field 'kind'"),
    ({"rebalance": "yes"}, "rebalance:"),
    ({"colour": "red"}, "spec: unknown field 'colour'"),
]


@pytest.mark.parametrize("change,prefix", BAD, ids=[p for _, p in BAD])
def test_every_bad_input_gives_one_clear_line(change, prefix):
    data = {**ServiceSpec("web", "sleep").to_dict(), **change}
    with pytest.raises(SpecError) as info:
        ServiceSpec.from_dict(data)
    message = str(info.value)
    assert "\n" not in message and len(message) < 200
    assert message.startswith(prefix), message


@pytest.mark.parametrize("call,prefix", [
    (lambda: parse_port("x"), "ports:"),
    (lambda: parse_memory("lots"), "reserve_memory:"),
    (lambda: parse_memory("-1G"), "reserve_memory:"),
    (lambda: parse_duration("5 minutes"), "duration:"),
    (lambda: parse_duration("-1"), "duration:"),
    (lambda: ServiceSpec.from_dict([1, 2]), "spec: must be a mapping"),
    (lambda: ServiceSpec.from_dict({"name": "w"}), "spec: missing required field 'command'"),
    (lambda: Constraint.parse(5), "constraints:"),
])
def test_parsers_fail_with_one_line(call, prefix):
    with pytest.raises(SpecError) as info:
        call()
    assert str(info.value).startswith(prefix) and "\n" not in str(info.value)


def test_runs_like_ignores_what_does_not_touch_a_running_task():
    spec = full_spec()
    assert spec.runs_like(spec.replace(replicas=2, constraints=(), update=UpdateConfig(), rebalance=True))
    assert not spec.runs_like(spec.replace(args=("other",)))
    assert not spec.runs_like(spec.replace(env={"A": "3"}))
    assert not spec.runs_like(spec.replace(health=None))


@pytest.mark.parametrize("text,expected", [
    ("5353:5353/udp", PortSpec(5353, 5353, protocol="udp")),
    ("8080:dynamic/udp", PortSpec(8080, None, protocol="udp")),
    ("53/udp", PortSpec(53, None, protocol="udp")),
    ("8080:80/tcp", PortSpec(8080, 80)),
    ("8080:80/tcp,proxy-protocol", PortSpec(8080, 80, True)),
])
def test_udp_ports_parse_and_print(text, expected):
    assert parse_port(text) == expected
    assert parse_port(str(expected)) == expected
    assert str(PortSpec(5353, 5353, protocol="udp")) == "5353:5353/udp"


def test_udp_ports_round_trip_and_tcp_ports_encode_as_before():
    spec = ServiceSpec("dns", "x", ports=["53:53/udp", "53:53", "8080:dynamic/udp"])
    data = msgpack.unpackb(msgpack.packb(spec.to_dict()), raw=False)
    assert ServiceSpec.from_dict(data) == spec
    assert data["ports"][0]["protocol"] == "udp"
    assert data["ports"][1] == {"published": 53, "target": 53, "proxy_protocol": False}  # no "protocol"
    old = {**ServiceSpec("web", "x").to_dict(), "ports": [{"published": 80, "target": None, "proxy_protocol": False}]}
    assert ServiceSpec.from_dict(old).ports == (PortSpec(80, None, protocol="tcp"),)


def test_a_published_number_once_per_protocol():
    assert len(ServiceSpec("dns", "x", ports=["53/udp", "53"]).ports) == 2
    with pytest.raises(SpecError) as e:
        ServiceSpec("dns", "x", ports=["53/udp", "53:54/udp"])
    assert str(e.value) == "ports: each published port may appear once per protocol (got ['53/udp', '53/udp'])"


@pytest.mark.parametrize("bad,message", [
    ("53/sctp", "ports: the protocol must be tcp or udp (got 'sctp')"),
    ("53:53/udp,proxy-protocol", "ports.proxy_protocol: the PROXY header is for tcp ports only; "
                                 "remove proxy-protocol from 53/udp"),
    ("53/udp/tcp", "ports: must look like 8080, 8080:80, 8080:80/udp or 8080:80,proxy-protocol (got '53/udp/tcp')"),
])
def test_bad_udp_ports_are_one_clear_line(bad, message):
    with pytest.raises(SpecError) as e:
        parse_port(bad)
    assert str(e.value) == message and "\n" not in message
    with pytest.raises(SpecError, match="protocol: must be one of tcp, udp"):
        ServiceSpec.from_dict({**ServiceSpec("a", "b").to_dict(),
                               "ports": [{"published": 1, "target": None, "proxy_protocol": False,
                                          "protocol": "icmp"}]})
