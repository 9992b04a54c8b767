"""Compose-file translation (p2pswarm.cluster.stack): pure, no cluster."""

from __future__ import annotations

import pytest

from p2pswarm.cluster.stack import STACK_ENV, StackError, load, parse_yaml, stack_of, translate

FULL = """
version: "3.8"
networks: {}
x-common: &c {}
services:
  web:
    command: python -m http.server
    environment: ["A=1", "B"]
    ports: ["8080:80", 9090, "7070/tcp", {target: 80, published: 6060}]
    healthcheck: {test: ["CMD-SHELL", "curl -f localhost"], interval: 5s, timeout: 2s, retries: 2, start_period: 1m}
    deploy:
      replicas: 3
      placement: {constraints: ["node.labels.zone == a"], preferences: [{spread: node.labels.zone}]}
      update_config: {parallelism: 2, delay: 1s, failure_action: rollback, order: start-first, monitor: 10s}
      restart_policy: {condition: on-failure, delay: 500ms, max_attempts: 3, window: 1m}
      resources: {reservations: {cpus: "0.5", memory: 64M}, limits: {cpus: "1"}}
  api:
    command: [python, app.py, 8080]
    environment: {DEBUG: true, N: 3}
    healthcheck: {test: ["CMD", "true"]}
    deploy: {mode: global}
    networks: [front]
"""


def specs(text: str, stack: str = "shop"):
    return translate(parse_yaml(text), stack)


def test_every_supported_key_translates():
    out = specs(FULL)
    api, web = out.specs
    assert (web.name, web.command, web.args) == ("shop_web", "python", ("-m", "http.server"))
    assert dict(web.env) == {"A": "1", STACK_ENV: "shop"} and stack_of(web) == "shop"
    assert [str(p) for p in web.ports] == ["8080:80", "9090:dynamic", "7070:dynamic", "6060:80"]
    assert web.health.command == ("/bin/sh", "-c", "curl -f localhost")
    assert (web.health.interval, web.health.timeout, web.health.retries, web.health.start_period) == (5, 2, 2, 60)
    assert (web.replicas, [str(c) for c in web.constraints], web.spread) == (3, ["node.labels.zone==a"],
                                                                            "node.labels.zone")
    assert (web.update.parallelism, web.update.delay, web.update.failure_action, web.update.order,
            web.update.monitor) == (2, 1.0, "rollback", "start-first", 10.0)
    assert (web.restart.condition, web.restart.delay, web.restart.max_attempts, web.restart.window) == \
        ("on-failure", 0.5, 3, 60.0)
    assert (web.reserve_cpu, web.reserve_memory, web.limit_cpu) == (0.5, 64 << 20, 1.0)
    assert (api.name, api.argv, api.mode, api.health.command) == ("shop_api", ("python", "app.py", "8080"),
                                                                  "global", ("true",))
    assert dict(api.env) == {"DEBUG": "true", "N": "3", STACK_ENV: "shop"}


def test_unsupported_keys_are_one_line_warnings():
    warnings = specs(FULL).warnings
    assert all("\n" not in w for w in warnings)
    assert any("top-level key 'networks'" in w for w in warnings)
    assert not any("x-common" in w for w in warnings)
    assert any("service api: key 'networks'" in w for w in warnings)
    assert not any("deploy.resources.limits" in w for w in warnings)  # honoured now: limit_cpu
    assert any("environment B has no value" in w for w in warnings)


def test_health_none_and_minimal_service():
    [spec] = specs("services:\n  w:\n    command: sleep 1\n    healthcheck: {test: [NONE]}\n").specs
    assert spec.health is None and spec.replicas == 1 and spec.name == "shop_w"


@pytest.mark.parametrize("text,words", [
    ("services:\n  web: {}\n", "service web: needs a command or an image"),
    ("services: {}\n", "non-empty 'services'"),
    ("- a\n", "non-empty 'services'"),
    ("services:\n  web: {command: x, deploy: {replicas: -1}}\n", "service web: replicas"),
    ("services:\n  web: {command: x, deploy: {mode: daemon}}\n", "service web: mode"),
    ("services:\n  web: {command: x, ports: ['1.2.3.4:80:80']}\n", "host address"),
    ("services:\n  web: {command: x, ports: ['53:53/sctp']}\n", "must be tcp or udp"),
    ("services:\n  web: {command: x, ports: [{published: 53, protocol: sctp}]}\n", "must be tcp or udp"),
    ("services:\n  web: {command: x, ports: [{target: 80}]}\n", "published"),
    ("services:\n  web: {command: x, healthcheck: {test: [CMD]}}\n", "healthcheck.test"),
    ("services:\n  web: {command: x, healthcheck: {test: [CMD, a], interval: soon}}\n", "healthcheck.interval"),
    ("services:\n  web: {command: x, deploy: {placement: {constraints: [zone=a]}}}\n", "constraints"),
    ("services:\n  web: {command: x, deploy: {update_config: {order: sideways}}}\n", "update_config.order"),
    ("services:\n  web: {command: x, deploy: {restart_policy: {delay: later}}}\n", "restart_policy.delay"),
    ("services:\n  web: {command: x, deploy: {resources: {reservations: {cpus: many}}}}\n", "reserve_cpu"),
    ("services:\n  Web: {command: x}\n", "service Web: name"),
    ("services:\n  web: {command: x, environment: [P2PSWARM_STACK=b]}\n", "set by the stack"),
])
def test_bad_files_get_one_line(text, words):
    with pytest.raises(StackError) as err:
        specs(text)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_udp_ports_in_both_syntaxes():
    (spec,) = specs("services:\n  dns: {command: x, ports: ['53:5353/udp', {published: 54, protocol: udp}]}\n").specs
    assert [(p.published, p.target, p.protocol) for p in spec.ports] == [(53, 5353, "udp"), (54, None, "udp")]


def test_bad_stack_name():
    with pytest.raises(StackError, match="stack name"):
        specs("services:\n  web: {command: x}\n", "my_stack")


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "stack.yml"
    path.write_text("services:\n  web:\n    command: [a\n")
    with pytest.raises(StackError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}:4: malformed YAML") and "\n" not in str(err.value)
    with pytest.raises(StackError, match="cannot read"):
        load(tmp_path / "missing.yml")


def test_service_names_may_hold_underscores_inside():
    from p2pswarm.cluster.spec import ServiceSpec, SpecError
    assert ServiceSpec("shop_web", "x").name == "shop_web"
    for bad in ("_web", "web_", "Web_a"):
        with pytest.raises(SpecError, match="name"):
            ServiceSpec(bad, "x")
