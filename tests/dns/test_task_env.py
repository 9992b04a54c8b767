"""Tasks are told where to ask: ``P2PSWARM_DNS`` for processes and containers, and a container's
resolver (``dns`` in its create options, then the node's own non-loopback resolvers) when it is port 53."""

from __future__ import annotations

from p2pswarm.runtime import containerspec as cs
from p2pswarm.runtime.base import PortSpec, TaskSpec
from p2pswarm.runtime.container import host_resolvers
from p2pswarm.runtime.process import task_env


def spec(**kw) -> TaskSpec:
    return TaskSpec("5.0", "web", 1, "node-a", ("app",), **kw)


def test_a_process_task_gets_the_node_dns_and_cannot_override_it():
    env = task_env(spec(env={"P2PSWARM_DNS": "1.2.3.4:53"}), (31000,), "10.0.0.1", "10.0.0.1:53")
    assert env["P2PSWARM_DNS"] == "10.0.0.1:53" and env["PORT"] == "31000"
    assert "P2PSWARM_DNS" not in task_env(spec(), (31000,), "10.0.0.1")  # a node without DNS says nothing


def test_a_container_resolves_through_the_node_on_port_53_then_the_upstream_resolvers():
    bridge = spec(image="busybox", network="bridge", publish=(PortSpec(8080, 80),))
    options = cs.create_options(bridge, ports=(31000,), bind_host="10.0.0.1", task_host="10.0.0.1",
                                dns="10.0.0.1:53", upstream=("192.0.2.53", "10.0.0.1"))
    assert options["dns"] == ["10.0.0.1", "192.0.2.53"]
    assert options["environment"]["P2PSWARM_DNS"] == "10.0.0.1:53"
    other_port = cs.create_options(bridge, ports=(31000,), bind_host="10.0.0.1", task_host="10.0.0.1",
                                   dns="10.0.0.1:7950")
    assert "dns" not in other_port and other_port["environment"]["P2PSWARM_DNS"] == "10.0.0.1:7950"
    loopback = cs.create_options(bridge, ports=(31000,), bind_host="127.0.0.5", task_host="127.0.0.5",
                                 dns="127.0.0.5:53")
    assert "dns" not in loopback  # the container's loopback is its own: it keeps the engine's resolvers
    host_net = cs.create_options(spec(image="busybox", network="host"), ports=(31000,), bind_host="10.0.0.1",
                                 task_host="10.0.0.1", dns="10.0.0.1:53")
    assert "dns" not in host_net and host_net["environment"]["P2PSWARM_DNS"] == "10.0.0.1:53"


def test_host_resolvers_skips_loopback_and_junk(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver nonsense\nsearch lan\n"
                    "nameserver 2001:db8::1\n")
    assert host_resolvers(str(conf)) == ("192.0.2.1", "2001:db8::1")
    assert host_resolvers(str(tmp_path / "missing")) == ()
