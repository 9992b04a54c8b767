"""Ports as a user types them (short and Docker's long syntax, mode=host), the ports a task holds on
its node, the port clashes refused at create, and the engine/isolation constraints."""

from __future__ import annotations

import pytest

from p2pswarm.cluster.capabilities import engine_text, isolation_text
from p2pswarm.cluster.spec import (
    Constraint,
    PortSpec,
    ServiceSpec,
    SpecError,
    check_mesh_ports,
    check_own_ports,
    parse_port,
)


@pytest.mark.parametrize("text,port", [
    ("published=8080,target=80,protocol=tcp,mode=host", PortSpec(8080, 80, mode="host")),
    ("published=5353,target=53,protocol=udp", PortSpec(5353, 53, protocol="udp")),
    (" published=8080 , mode=host ", PortSpec(8080, None, mode="host")),
    ("published=8080,target=dynamic,encrypted", PortSpec(8080, None, encrypted=True)),
    ("8080:80", PortSpec(8080, 80)),  # the short forms stay
    ("8080:dynamic/udp", PortSpec(8080, None, protocol="udp")),
    ("8080:80,userspace", PortSpec(8080, 80, userspace=True)),
    ("published=5353,protocol=udp,userspace", PortSpec(5353, None, protocol="udp", userspace=True)),
])
def test_the_long_syntax_and_the_short_forms_parse_and_print_back(text, port):
    assert parse_port(text) == port and parse_port(str(port)) == port


@pytest.mark.parametrize("text,words", [
    ("target=80", "needs published=PORT"),
    ("published=80,foo=1", "the long syntax is published=8080,target=80,protocol=tcp,mode=host"),
    ("published=80,published=81", "each field once"),
    ("published=http", "published must be a port number"),
    ("published=80,mode=global", "ports.mode: must be one of ingress, host"),
    ("published=80,mode=host,proxy-protocol", "not by the routing mesh: remove proxy-protocol"),
    ("published=80,mode=host,userspace", "not by the routing mesh: remove userspace"),
    ("published=80,protocol=sctp", "protocol"),
])
def test_a_bad_long_syntax_is_one_line(text, words):
    with pytest.raises(SpecError) as err:
        parse_port(text)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_mode_is_encoded_only_when_not_ingress_so_older_specs_decode_the_same():
    old = {"name": "web", "command": "x", "ports": [{"published": 8080, "target": 80, "proxy_protocol": False}]}
    spec = ServiceSpec.from_dict(old)
    assert spec.ports[0].mode == "ingress" and spec.to_dict()["ports"] == old["ports"]
    host = spec.replace(ports=(PortSpec(8080, mode="host"),))
    assert host.to_dict()["ports"] == [{"published": 8080, "target": None, "proxy_protocol": False, "mode": "host"}]
    assert ServiceSpec.from_dict(host.to_dict()) == host


def test_the_userspace_option_is_encoded_only_when_set_and_refused_where_the_mesh_does_not_serve():
    spec = ServiceSpec("web", "x", ports=("8080:80,userspace", "9090:90"))
    assert [p.get("userspace") for p in spec.to_dict()["ports"]] == [True, None]
    assert ServiceSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match="the options are proxy-protocol, encrypted, userspace"):
        parse_port("8080:80,user-space")


def test_the_host_ports_a_task_holds_on_its_node():
    ports = ("8091:8000", "9000", "published=7000,mode=host", "5353:53/udp")
    assert ServiceSpec("p", "x", ports=ports).host_ports == ((8000, "tcp"), (7000, "tcp"), (53, "udp"))
    # a bridge container's targets are inside the container; only its mode=host port is the node's
    assert ServiceSpec("c", "", image="nginx", ports=ports).host_ports == ((7000, "tcp"),)
    assert ServiceSpec("h", "", image="nginx", network="host", ports=ports[:1]).host_ports == ((8000, "tcp"),)


def test_a_process_in_mode_host_serves_its_published_port_so_another_target_is_refused():
    with pytest.raises(SpecError, match="drop target=80 or make it 8080"):
        ServiceSpec("p", "x", ports=("published=8080,target=80,mode=host",))
    assert ServiceSpec("c", "", image="nginx", ports=("published=8080,target=80,mode=host",))  # mapped


def test_a_task_port_the_mesh_holds_is_refused_at_create():
    with pytest.raises(SpecError) as err:
        check_mesh_ports(ServiceSpec("t", "python3", ports=("8000:8000",)))
    assert str(err.value) == ("ports: 8000:8000 cannot work for a task on the host network: the routing mesh "
                              "listens on 8000 on every node; publish another port (e.g. 18000:8000) or use "
                              "mode=host")
    with pytest.raises(SpecError, match="which service web publishes through the routing mesh"):
        check_mesh_ports(ServiceSpec("t", "python3", ports=("9000:8080",)), {(8080, "tcp"): "web"})
    check_mesh_ports(ServiceSpec("t", "python3", ports=("8091:8000",)), {(8000, "udp"): "dns"})  # other protocol
    check_mesh_ports(ServiceSpec("c", "", image="nginx", ports=("8000:8000",)))  # inside its container: fine
    check_mesh_ports(ServiceSpec("h", "python3", ports=("published=8000,mode=host",)))  # the mesh stays out


def test_engine_and_isolation_constraints():
    docker = Constraint.parse("node.engine==docker")
    assert docker.matches("i", "n", {}, engine="docker") and not docker.matches("i", "n", {}, engine="none")
    assert not docker.matches("i", "n", {})  # not reported yet: counts as none
    assert Constraint.parse("node.engine!=docker").matches("i", "n", {})
    isolated = Constraint.parse(" node.isolation != none ")
    assert isolated.matches("i", "n", {}, isolation="cgroup-v1") and not isolated.matches("i", "n", {})
    for bad in ("node.engine==podman", "node.isolation==cgroup-v3"):
        with pytest.raises(SpecError, match="is one of"):
            Constraint.parse(bad)


def test_capabilities_as_node_inspect_shows_them():
    assert engine_text("docker", "20.10.24") == "docker (20.10.24)"
    assert engine_text("none", "unix:///var/run/docker.sock: not reachable") == (
        "unavailable (unix:///var/run/docker.sock: not reachable)")
    assert isolation_text("cgroup-v1", "/sys/fs/cgroup/memory") == "cgroup-v1"
    assert isolation_text("none", "not root") == "none (not root)"
    assert engine_text(None).startswith("unknown") and isolation_text(None).startswith("unknown")


def test_a_port_a_node_listens_on_itself_is_refused_for_the_mesh_only():
    own = {(7946, "tcp"): "node n1's gossip port", (53, "udp"): "node n1's DNS port"}
    with pytest.raises(SpecError) as err:
        check_own_ports(ServiceSpec("web", "python3", ports=("7946:8000",)), own)
    assert str(err.value) == ("ports: 7946/tcp is node n1's gossip port, so the routing mesh cannot listen on it "
                              "there; publish another port")
    with pytest.raises(SpecError, match="53/udp is node n1's DNS port"):
        check_own_ports(ServiceSpec("dns", "python3", ports=("53:5353/udp",)), own)
    check_own_ports(ServiceSpec("dns", "python3", ports=("7946:5353/udp",)), own)  # gossip is TCP only
    check_own_ports(ServiceSpec("h", "python3", ports=("published=7946,mode=host",)), own)  # not the mesh's
