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
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from p2pswarm.cluster.capabilities import ENGINES, ISOLATIONS, constraint_value
from p2pswarm.cluster.checks import LABEL_KEY, SpecError, choice, fail, flag, integer, number, pairs, strings, text
from p2pswarm.cluster.workload import (
    MAX_FILES,
    MAX_LIMIT_PIDS,
    MAX_MOUNTS,
    MIN_LIMIT_CPU,
    MIN_LIMIT_MEMORY,
    FileRef,
    Mount,
    check_image,
    check_network,
    check_secret_targets,
    check_user,
    parse_signal,
    unique,
)

__all__ = ["SpecError", "PortSpec", "Constraint", "RestartPolicy", "UpdateConfig", "HealthCheck",
           "ServiceSpec", "Mount", "FileRef", "parse_port", "parse_memory", "parse_duration"]

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
PORT_OPTIONS = ("proxy-protocol", "encrypted", "userspace")
PROTOCOLS = ("tcp", "udp")
PORT_MODES = ("ingress", "host")
LONG_PORT_FIELDS = ("published", "target", "protocol", "mode")


def parse_port(spec: str) -> "PortSpec":
    """``8080`` (target dynamic), ``8080:80``, ``8080:dynamic``, ``8080:80,proxy-protocol``;
    a ``/udp`` (or ``/tcp``, the default) suffix after the target: ``5353:5353/udp``, ``8080:dynamic/udp``;
    ``,encrypted``: forwarding between nodes' meshes goes over TLS (secure clusters, TCP); ``,userspace``: the
    routing mesh forwards it in user space even where the kernel path could.  Docker's long
    syntax too: ``published=8080,target=80,protocol=tcp,mode=host`` (see :class:`PortSpec` for ``mode``)."""
    if isinstance(spec, str) and "=" in spec:
        return _parse_long_port(spec)
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
                        encrypted="encrypted" in options, userspace="userspace" in options)
    except SpecError as e:
        raise e.under("ports") from None


def _parse_long_port(spec: str) -> "PortSpec":
    fields: dict[str, str] = {}
    options = []
    for part in spec.strip().split(","):
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq and key in PORT_OPTIONS:
            options.append(key)
        elif not eq or key not in LONG_PORT_FIELDS or key in fields:
            raise fail("ports", "the long syntax is published=8080,target=80,protocol=tcp,mode=host "
                                "(each field once; target, protocol and mode optional)", spec)
        else:
            fields[key] = value
    if "published" not in fields:
        raise fail("ports", "the long syntax needs published=PORT", spec)
    for key in ("published", "target"):
        digits = fields.get(key)
        if digits is not None and not digits.isdigit() and (key, digits) != ("target", "dynamic"):
            raise fail("ports", f"{key} must be a port number", digits)
    target = fields.get("target", "dynamic")
    try:
        return PortSpec(int(fields["published"]), None if target == "dynamic" else int(target),
                        "proxy-protocol" in options, fields.get("protocol", "tcp"), "encrypted" in options,
                        fields.get("mode", "ingress"), "userspace" in options)
    except SpecError as e:
        raise e.under("ports") from None


_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_memory(spec: str | int, name: str = "reserve_memory") -> int:
    """Bytes from ``536870912``, ``512M``, ``512MiB``, ``1G``, ``1.5g`` (binary units, as Docker)."""
    if type(spec) is int:
        return integer(name, spec, 0, MAX_MEMORY)
    m = _MEMORY.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise fail(name, "must be bytes or a size like 512M or 1G", spec)
    value = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))
    return integer(name, value, 0, MAX_MEMORY)


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
    when set, for the same reason).

    A fixed ``target`` means one thing everywhere: for a container, the container's port; for a
    process, its ``$PORT`` (``{port}``) itself.  ``mode`` ``host`` (encoded only when set): the mesh
    does not serve the port; the node a task runs on serves ``published`` itself (a process gets it as
    its port, a container has it mapped to ``target``), so placement never puts two such tasks on one node.
    ``userspace`` (encoded only when set): the routing mesh forwards the port in user space on every node, never
    by the kernel's DNAT (:mod:`p2pswarm.mesh.kernel_plan`): a connect that fails, or a replica that closes before
    its first byte, is then retried on another replica, which a kernel DNAT cannot do."""
    published: int
    target: int | None = None
    proxy_protocol: bool = False
    protocol: str = "tcp"
    encrypted: bool = False
    mode: str = "ingress"
    userspace: bool = False

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
        choice("mode", self.mode, PORT_MODES)
        flag("userspace", self.userspace)
        mesh_only = [o for o, on in (("proxy-protocol", self.proxy_protocol), ("encrypted", self.encrypted),
                                     ("userspace", self.userspace)) if on]
        if self.mode == "host" and mesh_only:
            raise SpecError(f"mode: a mode=host port is served by its task's node, not by the routing mesh: "
                            f"remove {mesh_only[0]} from {self.published}")

    def __str__(self) -> str:
        if self.mode == "host":  # the long syntax, which parse_port reads back
            return (f"published={self.published}" + (f",target={self.target}" if self.target else "")
                    + (",protocol=udp" if self.protocol == "udp" else "") + ",mode=host")
        target = "dynamic" if self.target is None else str(self.target)
        return (f"{self.published}:{target}" + ("/udp" if self.protocol == "udp" else "")
                + (",proxy-protocol" if self.proxy_protocol else "") + (",encrypted" if self.encrypted else "")
                + (",userspace" if self.userspace else ""))


_CONSTRAINT = re.compile(
    r"\s*(node\.(?:id|name|hostname|engine|isolation|labels\.([^\s=!]+)))\s*(==|!=)\s*(\S+)\s*")
CONSTRAINT_WHAT = ("must look like node.labels.KEY==VALUE, node.name!=NAME, node.id==ID, node.engine==docker "
                   "or node.isolation!=none (operators == and !=)")
CAPABILITY_KINDS = {"node.engine": ENGINES, "node.isolation": ISOLATIONS}


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
        kinds = CAPABILITY_KINDS.get(self.key)
        if kinds is not None and self.value not in kinds:
            raise fail("constraints", f"{self.key} is one of {', '.join(kinds)}", f"{self.key}{self.op}{self.value}")

    def matches(self, node_id: str, name: str, labels: Mapping[str, str], engine: str | None = None,
                isolation: str | None = None) -> bool:
        """``engine`` and ``isolation``: the node's kinds (None: not reported, which counts as ``none``)."""
        if self.key == "node.id":
            actual: str | None = node_id
        elif self.key == "node.name":
            actual = name
        elif self.key in CAPABILITY_KINDS:
            actual = constraint_value(engine if self.key == "node.engine" else isolation)
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

WORKLOAD_FIELDS = ("image", "network", "user", "limit_cpu", "limit_memory", "limit_pids", "stop_signal",
                   "stop_grace", "mounts", "secrets", "configs")
"""Fields added with containers and isolation (:mod:`p2pswarm.cluster.workload`): encoded only when set,
so a spec without them encodes as it did before they existed."""
LATER_FIELDS = (*WORKLOAD_FIELDS, "log_retention")
"""Every field encoded only when not default (specs stored before it existed encode the same)."""
DEFAULT_LOG_RETENTION = 3600.0
TASK_FIELDS = ("command", "args", "env", "workdir", "ports", "reserve_cpu", "reserve_memory", "health",
               *WORKLOAD_FIELDS)
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
    image: str | None = None
    """Run tasks as containers of this image (the node's engine); ``command`` may then be empty (the image's)."""
    network: str | None = None
    """``host`` or ``bridge`` (containers only); None: bridge for an image, host for a process."""
    user: str | None = None
    """The user a task runs as (name or uid[:gid]); None: the node's task user (the image's for a container)."""
    limit_cpu: float = 0.0
    """Cores a task may use at most (0: no limit); ``reserve_cpu`` is what placement counts."""
    limit_memory: int = 0
    """Bytes a task may use at most; above it the kernel kills the task (0: no limit)."""
    limit_pids: int = 0
    """Processes (threads included) a task may have at once (0: no limit)."""
    stop_signal: str = "SIGTERM"
    stop_grace: float = 10.0
    """Seconds between ``stop_signal`` and SIGKILL when a task is stopped."""
    mounts: tuple[Mount, ...] = ()
    secrets: tuple[FileRef, ...] = ()
    configs: tuple[FileRef, ...] = ()
    log_retention: float = DEFAULT_LOG_RETENTION
    """Seconds an ended task's logs stay readable on its node after the state forgets the task (counted
    from the task's last output); changing it restarts nothing."""

    def __post_init__(self) -> None:
        text("name", self.name, 63, NAME, NAME_WHAT)
        _set(self, "image", check_image(self.image))
        if self.image is None or self.command != "":
            text("command", self.command, MAX_ARG_LEN)
        elif self.args:
            raise fail("args", "arguments need a command (give the command the image should run)", self.args)
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
        self._check_workload()
        self._check_host_mode()

    def _check_workload(self) -> None:
        if self.network is not None:
            check_network(self.network, self.image)
        _set(self, "user", check_user(self.user))
        if self.limit_cpu:
            number("limit_cpu", self.limit_cpu, MIN_LIMIT_CPU, MAX_CPU, " cores")
        _set(self, "limit_cpu", float(self.limit_cpu))
        integer("limit_memory", self.limit_memory, 0, MAX_MEMORY)
        if 0 < self.limit_memory < MIN_LIMIT_MEMORY:
            raise fail("limit_memory", "must be at least 6M: below it no task can start", self.limit_memory)
        integer("limit_pids", self.limit_pids, 0, MAX_LIMIT_PIDS)
        for limit, reserve in (("limit_cpu", "reserve_cpu"), ("limit_memory", "reserve_memory")):
            if getattr(self, limit) and getattr(self, reserve) > getattr(self, limit):
                raise fail(reserve, f"must not be above {limit}", getattr(self, reserve))
        _set(self, "stop_signal", parse_signal(self.stop_signal))
        _seconds(self, "stop_grace", "log_retention")
        _set(self, "mounts", _items("mounts", self.mounts, MAX_MOUNTS, Mount, _mount))
        unique("mounts", self.mounts, lambda m: m.target)
        _set(self, "secrets", _items("secrets", self.secrets, MAX_FILES, FileRef, _file_ref("secret")))
        _set(self, "configs", _items("configs", self.configs, MAX_FILES, FileRef, _file_ref("config")))
        check_secret_targets(self.secrets)
        unique("secrets", self.secrets, lambda f: f.target)
        unique("configs", self.configs, lambda f: f.file_name())

    @property
    def argv(self) -> tuple[str, ...]:
        """The command line of a task; empty for an image service that runs the image's own command."""
        return (self.command, *self.args) if self.command else ()

    @property
    def network_mode(self) -> str:
        return self.network or ("bridge" if self.image is not None else "host")

    @property
    def host_ports(self) -> tuple[tuple[int, str], ...]:
        """``(port, protocol)`` a task holds on its node's own address, so two such tasks cannot share a
        node: each mode=host port (its published port), and each fixed target of a task on the host
        network (a process, or a container with network host)."""
        ports = [(p.published if p.mode == "host" else p.target, p.protocol) for p in self.ports
                 if p.mode == "host" or (p.target is not None and self.network_mode == "host")]
        return tuple(dict.fromkeys(ports))  # type: ignore[arg-type]  # a target is set where it is used

    def _check_host_mode(self) -> None:
        """On the host network a mode=host port's task serves the published port itself: no other target."""
        for p in self.ports:
            if p.mode == "host" and p.target not in (None, p.published) and self.network_mode == "host":
                raise fail("ports", f"a task on the host network serves a mode=host port itself, on its published "
                                    f"port: drop target={p.target} or make it {p.published}", str(p))

    @property
    def limited(self) -> bool:
        """Asks the node to enforce limits (a process task then needs a node that can isolate)."""
        return bool(self.limit_cpu or self.limit_memory or self.limit_pids)

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


def check_mesh_ports(spec: ServiceSpec, published: Mapping[tuple[int, str], str] = {}) -> None:
    """Refuse (SpecError, one line) a task port that the routing mesh itself holds on every node: a host
    port of ``spec`` (see :attr:`ServiceSpec.host_ports`) that ``spec`` or another service publishes
    through the mesh (``published``: ``(port, protocol) -> service``).  Checked when a service is
    created or updated, not when a stored spec is decoded."""
    mesh = {**published, **{(p.published, p.protocol): spec.name for p in spec.ports if p.mode == "ingress"}}
    for port, protocol in spec.host_ports:
        owner = mesh.get((port, protocol))
        if owner == spec.name:
            raise SpecError(f"ports: {port}:{port} cannot work for a task on the host network: the routing mesh "
                            f"listens on {port} on every node; publish another port (e.g. "
                            f"{port + 10000 if port < 55536 else port - 10000}:{port}) or use mode=host")
        if owner is not None:
            raise SpecError(f"ports: the tasks of {spec.name} would listen on {port}/{protocol}, which service "
                            f"{owner} publishes through the routing mesh on every node")


def check_own_ports(spec: ServiceSpec, own: Mapping[tuple[int, str], str]) -> None:
    """Refuse (SpecError, one line) a port ``spec`` publishes through the mesh that a node listens on
    itself (``own``: ``(port, protocol) -> "node n1's gossip port"``): that node's mesh could never
    listen there, so the port would fail on it for as long as the service exists."""
    for p in spec.ports:
        what = own.get((p.published, p.protocol)) if p.mode == "ingress" else None
        if what is not None:
            raise SpecError(f"ports: {p.published}/{p.protocol} is {what}, so the routing mesh cannot listen on it "
                            f"there; publish another port")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _items(name: str, value: Any, limit: int, kind: type, parse: Any) -> tuple:
    """A tuple of ``kind`` from a list of instances or of their text forms."""
    if not isinstance(value, (list, tuple)) or len(value) > limit:
        raise fail(name, f"must be a list of at most {limit} entries", value)
    return tuple(v if isinstance(v, kind) else parse(v) for v in value)


def _port(value: Any) -> PortSpec:
    return _decode(PortSpec, value, "ports.") if isinstance(value, dict) else parse_port(value)


def _mount(value: Any) -> Mount:
    return _decode(Mount, value, "mounts.") if isinstance(value, dict) else Mount.parse(value)


def _file_ref(kind: str) -> Any:
    def parse(value: Any) -> FileRef:
        return _decode(FileRef, value, f"{kind}s.") if isinstance(value, dict) else FileRef.parse(value, kind)
    return parse


PORT_LATER_FIELDS = ("protocol", "encrypted", "mode", "userspace")
"""PortSpec fields added later: encoded only when not default."""
_NESTED: dict[str, type] = {"restart": RestartPolicy, "update": UpdateConfig, "rollback": UpdateConfig,
                            "health": HealthCheck}


def _encode(obj: Any) -> Any:
    if isinstance(obj, Constraint):
        return str(obj)
    if isinstance(obj, PortSpec):  # defaults left out: specs stored before these fields decode the same
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                if f.name not in PORT_LATER_FIELDS or getattr(obj, f.name) != f.default}
    if isinstance(obj, ServiceSpec):
        return {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.name not in LATER_FIELDS or getattr(obj, f.name) != f.default}
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
        near = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"allowed: {', '.join(names)}"
        message = f"{label}: unknown field {unknown[0]!r} ({hint})"
        raise SpecError(message if len(message) < 200 else message[:195] + "...)")
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
