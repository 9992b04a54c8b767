"""Stacks: a compose file's subset translated to service specs (pure: no I/O but :func:`load`).

Service ``web`` of stack ``shop`` becomes service ``shop_web`` whose env carries
``P2PSWARM_STACK=shop`` (our ``com.docker.stack.namespace``): ``stack ls`` and
``stack rm`` find a stack's services by that marker.  A stack name has no '_',
so the part before the first '_' of a service name is always its stack.

Supported per service: image, command, environment, ports, healthcheck, working_dir, user,
stop_signal, stop_grace_period, volumes, secrets, configs and deploy.{replicas, mode, placement,
update_config, rollback_config, restart_policy, resources.reservations, resources.limits}; at the
top level: services, volumes, secrets and configs (see :mod:`p2pswarm.cluster.stack_workload`
for the last four).  Other keys are warnings (one line each); a bad value or an unsupported form
of a supported key is a :class:`StackError` of one line naming the service and the field.  A
short port ``"8080"`` publishes 8080 to the task's dynamic port (as ``service create -p 8080``);
the long syntax's ``mode: host`` serves the port on the task's node only, not through the mesh.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from p2pswarm.cluster import stack_workload as workload
from p2pswarm.cluster.checks import SpecError
from p2pswarm.cluster.spec import (
    Constraint,
    HealthCheck,
    PortSpec,
    RestartPolicy,
    ServiceSpec,
    UpdateConfig,
    parse_duration,
    parse_memory,
    parse_port,
)
from p2pswarm.cluster.stack_messages import MAX_MESSAGE, MAX_QUOTE, StackError, cut, mapping, quote  # noqa: F401

STACK_ENV = "P2PSWARM_STACK"
"""The env variable that marks a service as part of a stack (its value: the stack name)."""
STACK_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")
STACK_NAME_WHAT = "must be 1-32 lowercase letters, digits or '-' (no '_'), starting and ending with a letter or digit"
TOP_KEYS = ("version", "name", "services", "volumes", "secrets", "configs")
SERVICE_KEYS = ("command", "environment", "ports", "healthcheck", "deploy", "working_dir", "image", "user",
                "stop_signal", "stop_grace_period", "volumes", "secrets", "configs")
DEPLOY_KEYS = ("replicas", "mode", "placement", "update_config", "rollback_config", "restart_policy", "resources")
UPDATE_KEYS = {"parallelism": None, "delay": "d", "failure_action": None, "order": None, "monitor": "d",
               "max_failure_ratio": None}
RESTART_KEYS = {"condition": None, "delay": "d", "max_attempts": None, "window": "d"}


MAX_YAML_NODES = 100_000
"""Nodes a compose document may hold once its aliases are expanded. A large real stack (100
services × ~100 scalars each) is ~10,000; a "billion laughs" file (9 aliases per level × 9
levels = 9^9 ≈ 387 million nodes) is refused before anything expands or prints it."""
@dataclass
class Stack:
    name: str
    specs: list[ServiceSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    objects: list[workload.StackObject] = field(default_factory=list)
    """Secrets and configs to create from files before the services (``stack deploy``)."""


@dataclass
class _Declared:
    """The top-level sections a service refers to: compose name -> name in the cluster (or on the node)."""
    volumes: dict[str, str]
    secrets: dict[str, str]
    configs: dict[str, str]


def service_name(stack: str, service: str) -> str:
    return f"{stack}_{service}"


def stack_of(spec: ServiceSpec) -> str | None:
    """The stack a service belongs to (its marker), or None."""
    return dict(spec.env).get(STACK_ENV)


def check_stack_name(name: str) -> str:
    if not isinstance(name, str) or not STACK_NAME.fullmatch(name):
        raise StackError(f"stack name {quote(name)} {STACK_NAME_WHAT}")
    return name


def load(path: str | Path) -> Any:
    """The parsed YAML of ``path``; unreadable or malformed → StackError naming the file (and line)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise StackError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str = "stack.yml") -> Any:
    """``yaml.safe_load`` that refuses documents expanding (through aliases) to over ``MAX_YAML_NODES``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = expanded_size(node, MAX_YAML_NODES)
        if size > MAX_YAML_NODES:
            raise StackError(f"{source}: refused: its aliases expand to over {MAX_YAML_NODES:,} YAML nodes "
                             f"(an alias bomb?); write the values out or use fewer nested aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StackError(f"{where}: malformed YAML: {problem}") from None
    finally:
        loader.dispose()


def expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes of ``root`` with every alias expanded, counted without expanding (each distinct node
    once, memoised); stops early above ``limit``. A recursive alias counts as over the limit."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = _children(node)
        if not children_done:
            if id(node) in open_:
                return limit + 1  # a node inside itself: infinite once expanded
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        if any(id(k) not in sizes for k in kids):
            return limit + 1  # a child still open: a cycle
        open_.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(k)] for k in kids)
        if sizes[id(node)] > limit:
            return sizes[id(node)]
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def translate(doc: Any, stack: str, source: str = "stack.yml") -> Stack:
    """The specs (sorted by name) and warnings of compose document ``doc`` deployed as ``stack``."""
    check_stack_name(stack)
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
        raise StackError(f"{source}: must be a mapping with a non-empty 'services' mapping")
    out = Stack(stack)
    for key in doc:
        if key not in TOP_KEYS and not str(key).startswith("x-"):
            out.warnings.append(f"{source}: top-level key {quote(key)} is not supported; ignored")
    try:
        base = posixpath.dirname(source)
        secrets, made = workload.top_objects("secret", doc.get("secrets"), stack, base, out.warnings, source)
        configs, made_configs = workload.top_objects("config", doc.get("configs"), stack, base, out.warnings, source)
        declared = _Declared(workload.top_volumes(doc.get("volumes"), stack, out.warnings, source), secrets, configs)
    except SpecError as exc:
        raise StackError(f"{source}: {exc}") from None
    out.objects = made + made_configs
    for name in sorted(doc["services"], key=str):
        out.specs.append(_service(stack, str(name), doc["services"][name], declared, out.warnings))
    out.warnings = [cut(w, MAX_MESSAGE) for w in out.warnings]
    return out


def _service(stack: str, name: str, svc: Any, declared: _Declared, warnings: list[str]) -> ServiceSpec:
    where = f"service {name}"
    if svc is None:
        svc = {}
    if not isinstance(svc, dict):
        raise StackError(f"{where}: must be a mapping")
    for key in svc:
        if key not in SERVICE_KEYS and not str(key).startswith("x-"):
            warnings.append(f"{where}: key {quote(key)} is not supported; ignored")
    try:
        env = {**_environment(svc.get("environment"), where, warnings), STACK_ENV: stack}
        spec: dict[str, Any] = {
            "name": service_name(stack, name), **workload.run_fields(svc),
            "env": tuple(sorted(env.items())), "ports": tuple(_port(p) for p in _list(svc.get("ports"), "ports")),
            "workdir": svc.get("working_dir"), "health": _health(svc.get("healthcheck")),
            "mounts": workload.mounts(svc.get("volumes"), declared.volumes),
            "secrets": workload.files("secret", svc.get("secrets"), declared.secrets),
            "configs": workload.files("config", svc.get("configs"), declared.configs)}
        spec.update(_deploy(svc.get("deploy"), where, warnings))
        return ServiceSpec(**spec)
    except SpecError as exc:
        raise StackError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise StackError(f"{where}: {exc}") from None


def _list(value: Any, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{what}: must be a list")
    return value


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _environment(value: Any, where: str, warnings: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list):
        items = [(str(v).partition("=")[0], str(v).partition("=")[2] if "=" in str(v) else None) for v in value]
    elif isinstance(value, dict):
        items = [(str(k), None if v is None else _scalar(v)) for k, v in value.items()]
    else:
        raise SpecError("environment: must be a list of K=V or a mapping")
    out = {}
    for key, val in items:
        if key == STACK_ENV:
            raise SpecError(f"environment: {STACK_ENV} is set by the stack itself")
        if val is None:
            warnings.append(f"{where}: environment {key} has no value (values are not taken from the shell); "
                            "ignored")
            continue
        out[key] = val
    return out


def _port(value: Any) -> PortSpec:
    if isinstance(value, int) and not isinstance(value, bool):
        return parse_port(str(value))
    if isinstance(value, str):
        text, _, proto = value.partition("/")
        if proto not in ("", "tcp", "udp"):
            raise SpecError(f"ports: the protocol must be tcp or udp, got {quote(value)}")
        if text.count(":") > 1:
            raise SpecError(f"ports: a host address is not supported, got {quote(value)}")
        return parse_port(text + (f"/{proto}" if proto else ""))
    port = mapping(value, "ports")
    unknown = sorted(set(port) - {"target", "published", "protocol", "mode"})
    if unknown:
        raise SpecError(f"ports: unsupported field {quote(unknown[0])} (allowed: target, published, protocol, mode)")
    if port.get("protocol", "tcp") not in ("tcp", "udp"):
        raise SpecError(f"ports: the protocol must be tcp or udp, got {quote(port['protocol'])}")
    if port.get("published") is None:
        raise SpecError("ports: the long syntax needs 'published'")
    if port.get("mode", "ingress") not in ("ingress", "host"):
        raise SpecError(f"ports: the mode must be ingress or host, got {quote(port['mode'])}")
    published = port["published"]
    return PortSpec(int(published) if isinstance(published, str) and published.isdigit() else published,
                    port.get("target"), protocol=port.get("protocol", "tcp"), mode=port.get("mode", "ingress"))


def _health(value: Any) -> HealthCheck | None:
    hc = mapping(value, "healthcheck")
    if not hc or hc.get("disable") is True:
        return None
    test = hc.get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if not isinstance(test, list) or not test or not all(isinstance(t, str) for t in test):
        raise SpecError('healthcheck.test: must be ["CMD", ...], ["CMD-SHELL", "..."], ["NONE"] or a string')
    if test[0] == "NONE":
        return None
    if test[0] == "CMD" and len(test) > 1:
        command = tuple(test[1:])
    elif test[0] == "CMD-SHELL" and len(test) == 2:
        command = ("/bin/sh", "-c", test[1])
    else:
        raise SpecError('healthcheck.test: must be ["CMD", ...], ["CMD-SHELL", "..."] or ["NONE"]')
    fields: dict[str, Any] = {}
    for key in ("interval", "timeout", "start_period"):
        if hc.get(key) is not None:
            fields[key] = parse_duration(hc[key], f"healthcheck.{key}")
    if hc.get("retries") is not None:
        fields["retries"] = hc["retries"]
    try:
        return HealthCheck("exec", command=command, **fields)
    except SpecError as exc:
        raise exc.under("healthcheck") from None


def _policy(kind: type, value: Any, keys: dict, what: str, where: str, warnings: list[str]) -> Any:
    given = mapping(value, what)
    fields = {}
    for key, val in given.items():
        if key not in keys:
            warnings.append(f"{where}: {what}.{key} is not supported; ignored")
        elif val is not None:
            fields[key] = parse_duration(val, f"{what}.{key}") if keys[key] == "d" else val
    try:
        return kind(**fields)
    except SpecError as exc:
        raise exc.under(what) from None


def _deploy(value: Any, where: str, warnings: list[str]) -> dict[str, Any]:
    deploy = mapping(value, "deploy")
    out: dict[str, Any] = {}
    for key in deploy:
        if key not in DEPLOY_KEYS:
            warnings.append(f"{where}: deploy.{key} is not supported; ignored")
    if deploy.get("mode") is not None:
        out["mode"] = deploy["mode"]
    if deploy.get("replicas") is not None:
        out["replicas"] = deploy["replicas"]
    placement = mapping(deploy.get("placement"), "deploy.placement")
    for key in placement:
        if key not in ("constraints", "preferences"):
            warnings.append(f"{where}: deploy.placement.{key} is not supported; ignored")
    out["constraints"] = tuple(Constraint.parse(c) for c in _list(placement.get("constraints"),
                                                                  "deploy.placement.constraints"))
    prefs = _list(placement.get("preferences"), "deploy.placement.preferences")
    spreads = [p.get("spread") for p in prefs if isinstance(p, dict)]
    if len(spreads) != len(prefs) or len(spreads) > 1 or not all(isinstance(s, str) for s in spreads):
        raise SpecError("deploy.placement.preferences: at most one entry, spread: node.labels.KEY")
    if spreads:
        out["spread"] = spreads[0]
    out["update"] = _policy(UpdateConfig, deploy.get("update_config"), UPDATE_KEYS, "update_config", where, warnings)
    out["rollback"] = _policy(UpdateConfig, deploy.get("rollback_config"), UPDATE_KEYS, "rollback_config", where,
                              warnings)
    out["restart"] = _policy(RestartPolicy, deploy.get("restart_policy"), RESTART_KEYS, "restart_policy", where,
                             warnings)
    resources = mapping(deploy.get("resources"), "deploy.resources")
    for key in resources:
        if key not in ("reservations", "limits"):
            warnings.append(f"{where}: deploy.resources.{key} is not supported; ignored")
    out.update(workload.limits(resources.get("limits"), where, warnings))
    reservations = mapping(resources.get("reservations"), "deploy.resources.reservations")
    for key in reservations:
        if key not in ("cpus", "memory"):
            warnings.append(f"{where}: deploy.resources.reservations.{key} is not supported; ignored")
    if reservations.get("cpus") is not None:
        try:
            out["reserve_cpu"] = float(reservations["cpus"])
        except (TypeError, ValueError):
            raise SpecError(f"reserve_cpu: must be a number of cores, got {quote(reservations['cpus'])}") from None
    if reservations.get("memory") is not None:
        out["reserve_memory"] = parse_memory(reservations["memory"])
    return out
