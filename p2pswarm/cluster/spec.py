"""The service spec: what a user declares with ``p2pswarm service create``.

Frozen, slotted dataclasses that check themselves on construction: a spec that
exists is valid, so the state machine, placement and the agent never re-check it.
A bad field raises :class:`SpecError` with one line naming the field and what is
allowed.  Defaults follow Docker's (restart any after 5 s; update one task at a
time, pause on failure, monitor 5 s, stop-first; health every 30 s, 3 retries).

``to_dict`` / ``from_dict`` give plain msgpack-able dicts for the Raft log and
snapshots; decoding is strict (unknown fields and wrong types are errors).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from p2pswarm.cluster.checks import LABEL_KEY, SpecError, choice, fail, flag, integer, number, pairs, strings, text

__all__ = ["SpecError", "PortSpec", "Constraint", "RestartPolicy", "UpdateConfig", "HealthCheck",
           "ServiceSpec", "parse_port", "parse_memory", "parse_duration"]

NAME = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?")
NAME_WHAT = "must be 1-63 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit"
"""'_' is allowed for stack services (``STACK_SERVICE``, see :mod:`p2pswarm.cluster.stack`)."""
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_REPLICAS = 100_000
MAX_ARGS, MAX_ARG_LEN = 256, 4096
MAX_ENV, MAX_ENV_LEN = 256, 4096
MAX_PORTS, MAX_CONSTRAINTS = 64, 32
MAX_CPU = 1024.0
"""Reserved cores per task, at most."""
MAX_MEMORY = 1 << 50
"""Reserved bytes per task, at most (1 PiB)."""
MAX_SECONDS = 365 * 24 * 3600.0
"""Longest delay, window, interval or timeout (a year)."""
SECONDS_WHAT = "must be a number of seconds from 0 to 31536000 (a year)"


# ------------------------------------------------------------------ text forms

_PORT = re.compile(r"(\d{1,5})(?::(\d{1,5}|dynamic))?(?:/([a-z]+))?((?:,[a-z-]+)*)")
PORT_OPTIONS = ("proxy-protocol", "encrypted")
PROTOCOLS = ("tcp", "udp")


def parse_port(spec: str) -> "PortSpec":
    """``8080`` (target dynamic), ``8080:80``, ``8080:dynamic``, ``8080:80,proxy-protocol``;
    a ``/udp`` (or ``/tcp``, the default) suffix after the target: ``5353:5353/udp``, ``8080:dynamic/udp``;
    ``,encrypted``: forwarding between nodes' meshes goes over TLS (secure clusters, TCP)."""
    m = _PORT.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise fail("ports", "must look like 8080, 8080:80, 8080:80/udp or 8080:80,proxy-protocol", spec)
    if m.group(3) is not None and m.group(3) not in PROTOCOLS:
        raise fail("ports", "the protocol must be tcp or udp", m.group(3))
    options = [o for o in m.group(4).split(",") if o]
    for option in options:
        if option not in PORT_OPTIONS:
            raise fail("ports", "the options are " + ", ".join(PORT_OPTIONS), option)
    target = m.group(2)
    try:
        return PortSpec(published=int(m.group(1)), target=None if target in (None, "dynamic") else int(target),
                        proxy_protocol="proxy-protocol" in options, protocol=m.group(3) or "tcp",
                        encrypted="encrypted" in options)
    except SpecError as e:
        raise e.under("ports") from None


_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_memory(spec: str | int) -> int:
    """Bytes from ``536870912``, ``512M``, ``512MiB``, ``1G``, ``1.5g`` (binary units, as Docker)."""
    if type(spec) is int:
        return integer("reserve_memory", spec, 0, MAX_MEMORY)
    m = _MEMORY.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise fail("reserve_memory", "must be bytes or a size like 512M or 1G", spec)
    value = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))
    return integer("reserve_memory", value, 0, MAX_MEMORY)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(spec: str | float, name: str = "duration") -> float:
    """Seconds from ``5``, ``2.5s``, ``500ms``, ``1m30s`` or ``1h``."""
    if type(spec) in (int, float):
        return number(name, spec, 0, MAX_SECONDS, what=SECONDS_WHAT)
    s = spec.strip() if isinstance(spec, str) else ""
    try:
        return number(name, float(s), 0, MAX_SECONDS, what=SECONDS_WHAT)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(s)
    if not s or "".join(a + u for a, u in parts) != s:
        raise fail(name, "must be seconds or a duration like 500ms, 5s, 1m30s, 1h", spec)
    return number(name, sum(float(a) * _UNIT_SECONDS[u] for a, u in parts), 0, MAX_SECONDS, what=SECONDS_WHAT)


# ------------------------------------------------------------------ parts

@dataclass(frozen=True, slots=True)
class PortSpec:
    """A published port: every node listens on ``published``; the task listens on ``target``
    (``None`` = the dynamic port the runtime hands the task in ``PORT``). ``protocol`` is
    ``tcp`` (default) or ``udp``; a UDP port is encoded with its ``protocol`` field, a TCP
    port without it (so that nodes that predate UDP still decode every TCP spec). ``encrypted``:
    the routing mesh forwards this port's connections between nodes over TLS (encoded only
    when set, for the same reason)."""
    published: int
    target: int | None = None
    proxy_protocol: bool = False
    protocol: str = "tcp"
    encrypted: bool = False

    def __post_init__(self) -> None:
        integer("published", self.published, 1, 65535)
        if self.target is not None:
            integer("target", self.target, 1, 65535)
        flag("proxy_protocol", self.proxy_protocol)
        choice("protocol", self.protocol, PROTOCOLS)
        if self.protocol == "udp" and self.proxy_protocol:
            raise SpecError(f"proxy_protocol: the PROXY header is for tcp ports only; remove proxy-protocol "
                            f"from {self.published}/udp")
        flag("encrypted", self.encrypted)
        if self.protocol == "udp" and self.encrypted:
            raise SpecError(f"encrypted: encrypted forwarding is for tcp ports only; remove encrypted from "
                            f"{self.published}/udp")

    def __str__(self) -> str:
        target = "dynamic" if self.target is None else str(self.target)
        return (f"{self.published}:{target}" + ("/udp" if self.protocol == "udp" else "")
                + (",proxy-protocol" if self.proxy_protocol else "") + (",encrypted" if self.encrypted else ""))


_CONSTRAINT = re.compile(r"\s*(node\.(?:id|name|hostname|labels\.([^\s=!]+)))\s*(==|!=)\s*(\S+)\s*")
CONSTRAINT_WHAT = ("must look like node.labels.KEY==VALUE, node.name!=NAME or node.id==ID "
                   "(operators == and !=)")


@dataclass(frozen=True, slots=True)
class Constraint:
    """``node.labels.zone==a``, ``node.name!=x``, ``node.id==...`` (``node.hostname`` = ``node.name``).
    A node without the label fails ``==`` and passes ``!=``, as in Docker."""
    key: str
    op: str
    value: str

    @classmethod
    def parse(cls, spec: Any) -> "Constraint":
        m = _CONSTRAINT.fullmatch(spec) if isinstance(spec, str) else None
        if m is None:
            raise fail("constraints", CONSTRAINT_WHAT, spec)
        key, label, op, value = m.groups()
        if label is not None and not LABEL_KEY.fullmatch(label):
            raise fail("constraints", "the label name must be letters, digits, '_', '.', '-'", spec)
        return cls("node.name" if key == "node.hostname" else key, op, value)

    def __post_init__(self) -> None:
        if _CONSTRAINT.fullmatch(f"{self.key}{self.op}{self.value}") is None:
            raise fail("constraints", CONSTRAINT_WHAT, f"{self.key}{self.op}{self.value}")

    def matches(self, node_id: str, name: str, labels: Mapping[str, str]) -> bool:
        if self.key == "node.id":
            actual: str | None = node_id
        elif self.key == "node.name":
            actual = name
        else:
            actual = labels.get(self.key[len("node.labels."):])
        return (actual == self.value) == (self.op == "==")

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a task ends, start a replacement (condition any / on-failure / none) after ``delay``,
    at most ``max_attempts`` times (0 = no limit) within ``window`` seconds (0 = ever)."""
    condition: str = "any"
    delay: float = 5.0
    max_attempts: int = 0
    window: float = 0.0

    def __post_init__(self) -> None:
        choice("condition", self.condition, ("any", "on-failure", "none"))
        _seconds(self, "delay", "window")
        integer("max_attempts", self.max_attempts, 0, 1_000_000)


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    """Rolling update (or rollback) pacing: ``parallelism`` tasks at a time (0 = all), ``delay``
    between batches, a task failing within ``monitor`` seconds of starting counts as a failed
    update; more than ``max_failure_ratio`` of updated tasks failing triggers ``failure_action``."""
    parallelism: int = 1
    delay: float = 0.0
    failure_action: str = "pause"
    monitor: float = 5.0
    max_failure_ratio: float = 0.0
    order: str = "stop-first"

    def __post_init__(self) -> None:
        integer("parallelism", self.parallelism, 0, MAX_REPLICAS)
        _seconds(self, "delay", "monitor")
        choice("failure_action", self.failure_action, ("pause", "continue", "rollback"))
        number("max_failure_ratio", self.max_failure_ratio, 0, 1)
        choice("order", self.order, ("stop-first", "start-first"))


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """tcp (connect to the task's port), http (GET ``path`` answers 2xx/3xx) or exec (``command``
    exits 0).  Unhealthy after ``retries`` consecutive failures; failures within ``start_period``
    of starting do not count."""
    kind: str
    path: str = "/"
    command: tuple[str, ...] = ()
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0

    def __post_init__(self) -> None:
        choice("kind", self.kind, ("tcp", "http", "exec"))
        text("path", self.path, 2048, re.compile(r"/\S*"), "must be an absolute URL path like /health")
        object.__setattr__(self, "command", strings("command", self.command, MAX_ARGS, MAX_ARG_LEN))
        if self.kind == "exec" and not (self.command and self.command[0]):
            raise fail("command", "an exec health check needs a command", self.command)
        if self.kind != "exec" and self.command:
            raise fail("command", "only an exec health check takes a command", self.command)
        _seconds(self, "interval", "timeout", "start_period")
        if self.interval <= 0 or self.timeout <= 0:
            raise fail("interval" if self.interval <= 0 else "timeout", "must be above 0 seconds",
                       min(self.interval, self.timeout))
        integer("retries", self.retries, 1, 1000)


def _seconds(obj: Any, *names: str) -> None:
    for name in names:
        object.__setattr__(obj, name, number(name, getattr(obj, name), 0, MAX_SECONDS, what=SECONDS_WHAT))


# ------------------------------------------------------------------ the spec

TASK_FIELDS = ("command", "args", "env", "workdir", "ports", "reserve_cpu", "reserve_memory", "health")
"""The fields a running task is made of: a change to any of them replaces the tasks (a rolling
update); a change elsewhere (replicas, constraints, policies) does not restart anything."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    mode: str = "replicated"
    replicas: int = 1
    """Ignored (and stored as 0) in global mode: one task per eligible node."""
    ports: tuple[PortSpec, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    spread: str | None = None
    """Placement preference: ``node.labels.KEY`` spreads tasks evenly over that label's values."""
    reserve_cpu: float = 0.0
    reserve_memory: int = 0
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    rollback: UpdateConfig = field(default_factory=UpdateConfig)
    health: HealthCheck | None = None
    rebalance: bool = True
    """Opt-out of rebalancing: False keeps tasks where they are when nodes join or return."""

    def __post_init__(self) -> None:
        text("name", self.name, 63, NAME, NAME_WHAT)
        text("command", self.command, MAX_ARG_LEN)
        _set(self, "args", strings("args", self.args, MAX_ARGS, MAX_ARG_LEN))
        _set(self, "env", pairs("env", self.env, MAX_ENV, ENV_KEY,
                                "names must be letters, digits and '_', not starting with a digit", MAX_ENV_LEN))
        if self.workdir is not None:
            text("workdir", self.workdir, 4096, re.compile(r"/.*"), "must be an absolute path")
        choice("mode", self.mode, ("replicated", "global"))
        if self.mode == "global":
            _set(self, "replicas", 0)
        integer("replicas", self.replicas, 0, MAX_REPLICAS)
        _set(self, "ports", _items("ports", self.ports, MAX_PORTS, PortSpec, _port))
        published = [(p.published, p.protocol) for p in self.ports]
        if len(set(published)) != len(published):
            raise fail("ports", "each published port may appear once per protocol",
                       sorted(f"{n}/{proto}" for n, proto in published))
        _set(self, "constraints", _items("constraints", self.constraints, MAX_CONSTRAINTS, Constraint,
                                         Constraint.parse))
        if self.spread is not None:
            text("spread", self.spread, 140, re.compile(r"node\.labels\." + LABEL_KEY.pattern),
                 "the only placement preference is spread=node.labels.KEY")
        number("reserve_cpu", self.reserve_cpu, 0, MAX_CPU, " cores")
        _set(self, "reserve_cpu", float(self.reserve_cpu))
        integer("reserve_memory", self.reserve_memory, 0, MAX_MEMORY)
        for name, kind in (("restart", RestartPolicy), ("update", UpdateConfig), ("rollback", UpdateConfig)):
            if not isinstance(getattr(self, name), kind):
                raise fail(name, f"must be a {kind.__name__}", getattr(self, name))
        if self.health is not None and not isinstance(self.health, HealthCheck):
            raise fail("health", "must be a HealthCheck or none", self.health)
        flag("rebalance", self.rebalance)

    @property
    def argv(self) -> tuple[str, ...]:
        return (self.command, *self.args)

    @property
    def spread_label(self) -> str | None:
        return None if self.spread is None else self.spread[len("node.labels."):]

    def runs_like(self, other: "ServiceSpec") -> bool:
        """True when tasks of ``other`` need no replacing to run this spec (see TASK_FIELDS)."""
        return all(getattr(self, f) == getattr(other, f) for f in TASK_FIELDS)

    def replace(self, **changes: Any) -> "ServiceSpec":
        return dataclasses.replace(self, **changes)

    # -------------------------------------------------------------- codec

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)

    @classmethod
    def from_dict(cls, data: Any) -> "ServiceSpec":
        """Strict decode: unknown fields, wrong types and bad values raise SpecError."""
        return _decode(cls, data, "")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _items(name: str, value: Any, limit: int, kind: type, parse: Any) -> tuple:
    """A tuple of ``kind`` from a list of instances or of their text forms."""
    if not isinstance(value, (list, tuple)) or len(value) > limit:
        raise fail(name, f"must be a list of at most {limit} entries", value)
    return tuple(v if isinstance(v, kind) else parse(v) for v in value)


def _port(value: Any) -> PortSpec:
    return _decode(PortSpec, value, "ports.") if isinstance(value, dict) else parse_port(value)


_NESTED: dict[str, type] = {"restart": RestartPolicy, "update": UpdateConfig, "rollback": UpdateConfig,
                            "health": HealthCheck}


def _encode(obj: Any) -> Any:
    if isinstance(obj, Constraint):
        return str(obj)
    if isinstance(obj, PortSpec):  # defaults left out: specs stored before these fields decode the same
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                if not (f.name == "protocol" and obj.protocol == "tcp") and not (f.name == "encrypted" and
                                                                                 not obj.encrypted)}
    if dataclasses.is_dataclass(obj):
        return {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_encode(v) for v in obj]
    return obj


def _decode(cls: type, data: Any, where: str) -> Any:
    label = where.rstrip(".") or "spec"
    if not isinstance(data, dict):
        raise fail(label, "must be a mapping", data)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise SpecError(f"{label}: unknown field {unknown[0]!r} (allowed: {', '.join(names)})")
    kwargs = dict(data)
    try:
        for name, kind in _NESTED.items():
            if cls is ServiceSpec and kwargs.get(name) is not None:
                kwargs[name] = _decode(kind, kwargs[name], f"{where}{name}.")
        return cls(**kwargs)
    except SpecError as e:
        if where and not str(e).startswith(where):
            raise SpecError(f"{where}{e}") from None
        raise
    except TypeError:
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in data]
        raise SpecError(f"{label}: missing required field {missing[0] if missing else '?'!r}") from None
