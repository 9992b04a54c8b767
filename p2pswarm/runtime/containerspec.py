"""A task as a Docker container: its name, labels, ports, environment, limits and mounts (pure).

Containers are named ``p2pswarm-<node id>-<service>.<slot>.<task id>`` and carry the labels
:data:`NODE`, :data:`SERVICE`, :data:`SLOT` and :data:`TASK`: several nodes may share one engine
(a lab on one machine), and a node removes exactly its own leftovers, found by its label.

Ports, by network mode:

- ``host``: the container shares the node's network and gets ``$PORT``... exactly as a process
  does (:func:`p2pswarm.runtime.base.task_ports`: a fixed target *is* its port, a dynamic one is taken
  from the node's range).
- ``bridge``: each published port's target is a container port (a dynamic target: the port given
  in ``$PORT``/``$PORT<i>`` inside, the same number as its node port) mapped to a dynamic node port
  of its own on the node's task address, so two replicas on one node never collide; a ``mode=host``
  port is mapped from its published port. The run's ports (what the mesh forwards to) are those
  node ports, one per published port, in order (:func:`p2pswarm.runtime.base.maps_ports`); a service
  that publishes nothing still gets one, so that tcp and http health checks have a port to probe.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Iterable

from p2pswarm.runtime.base import TaskSpec, fixed_ports, maps_ports, port_env, substitute, task_ports
from p2pswarm.transport.addr import parse_addr

PREFIX = "p2pswarm"
NODE, SERVICE, SLOT, TASK = (f"{PREFIX}.{k}" for k in ("node", "service", "slot", "task"))
SECRETS_DIR = "/run/secrets"
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class PortMap:
    """One port of a bridge container: ``container`` port (and protocol) served on ``host`` port."""

    container: int
    host: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class Bind:
    """A node path at ``target`` in the container."""

    source: str
    target: str
    readonly: bool


def container_name(spec: TaskSpec) -> str:
    return _NAME_UNSAFE.sub("-", f"{PREFIX}-{spec.node_id}-{spec.service}.{spec.slot}.{spec.task_id}")


def labels(spec: TaskSpec) -> dict[str, str]:
    return {NODE: spec.node_id, SERVICE: spec.service, SLOT: str(spec.slot), TASK: spec.task_id}


def dynamic_ports_needed(spec: TaskSpec) -> int:
    """Host ports a run takes from the node's dynamic range."""
    if not maps_ports(spec):
        return spec.ports
    return sum(1 for p in spec.publish if p.mode != "host") if spec.publish else 1


def fixed_host_ports(spec: TaskSpec) -> tuple[int, ...]:
    """Node ports a run must have as they are (no other task of the node may hold them meanwhile)."""
    if not maps_ports(spec):
        return fixed_ports(spec)
    return tuple(dict.fromkeys(p.published for p in spec.publish if p.mode == "host"))


def run_ports(spec: TaskSpec, dynamic: tuple[int, ...]) -> tuple[int, ...]:
    """The run's ports (``TaskHandle.ports``, what the mesh forwards to): where on the node the task is
    reached, one per published port in order; ``dynamic``: the :func:`dynamic_ports_needed` ports taken."""
    if not maps_ports(spec):
        return task_ports(spec, dynamic)
    free = iter(dynamic)
    return tuple(p.published if p.mode == "host" else next(free) for p in spec.publish) or dynamic[:1]


def bridge_ports(spec: TaskSpec, ports: tuple[int, ...]) -> list[PortMap]:
    """A bridge container's port map for the run's ``ports`` (:func:`run_ports`): each published port's
    target, or for a dynamic target the node port's own number, served on its node port."""
    if not spec.publish:
        return [PortMap(port, port) for port in ports]
    return [PortMap(p.target if p.target is not None else port, port, p.protocol)
            for p, port in zip(spec.publish, ports)]


def environment(spec: TaskSpec, inside_ports: tuple[int, ...], host: str | None,
                dns: str | None = None) -> dict[str, str]:
    """The spec's environment, then the task's identity, the node's address, its DNS and the ports the
    task listens on (which a spec cannot override). Unlike a process, a container gets none of
    the node's own environment: the image brings its own."""
    env = dict(spec.env)
    env.update(P2PSWARM_TASK_ID=spec.task_id, P2PSWARM_SERVICE=spec.service, P2PSWARM_SLOT=str(spec.slot),
               P2PSWARM_NODE=spec.node_id)
    if host:
        env["P2PSWARM_HOST"] = host
    if dns:
        env["P2PSWARM_DNS"] = dns
    env.update(port_env(inside_ports))
    return env


def create_options(spec: TaskSpec, *, ports: tuple[int, ...], bind_host: str, task_host: str | None,
                   binds: Iterable[Bind] = (), dns: str | None = None,
                   upstream: Iterable[str] = ()) -> dict[str, Any]:
    """Keyword arguments of the Docker SDK's ``containers.create`` for one run of ``spec`` on ``ports``
    (:func:`run_ports`); bridge ports are bound on ``bind_host``, a host-network task is told ``task_host``.
    ``dns``: the node's DNS ``HOST:PORT``; on port 53 it becomes a bridge container's first resolver
    (``/etc/resolv.conf``: the engine takes no port), followed by ``upstream`` (the node's own resolvers), which a
    resolver asks for the names ours refuses (glibc moves to the next server on REFUSED). Not for a loopback
    address (the container's loopback is its own) nor a host-network container (the engine refuses ``dns``
    there; it has the node's resolv.conf and ``P2PSWARM_DNS``)."""
    if maps_ports(spec):
        plan = bridge_ports(spec, ports)
        inside = tuple(m.container for m in plan)
        network: dict[str, Any] = {"network_mode": "bridge",
                                   "ports": {f"{m.container}/{m.protocol}": (bind_host, m.host) for m in plan}}
        task_host = None  # inside its own network namespace, the task listens on its own interfaces
    else:
        inside = ports
        network = {"network_mode": "host"}
    options: dict[str, Any] = {
        "image": spec.image, "name": container_name(spec), "labels": labels(spec),
        "environment": environment(spec, inside, task_host, dns), "stop_signal": spec.stop_signal,
        "log_config": {"Type": "none", "Config": {}},  # the runtime reads the output into the task's own logs
        **network}
    resolver = parse_addr(dns) if dns else None
    if resolver is not None and resolver[1] == 53 and maps_ports(spec) and not _loopback(resolver[0]):
        options["dns"] = list(dict.fromkeys((resolver[0], *upstream)))
    if spec.command:
        options["command"] = list(substitute(spec.command, inside))
    if spec.workdir:
        options["working_dir"] = spec.workdir
    if spec.user:
        options["user"] = spec.user
    if spec.limit_cpu:
        options["nano_cpus"] = int(spec.limit_cpu * 1e9)
    if spec.limit_memory:
        options["mem_limit"] = options["memswap_limit"] = spec.limit_memory  # no swap beyond the limit
    if spec.limit_pids:
        options["pids_limit"] = spec.limit_pids
    mounts = [f"{b.source}:{b.target}:{'ro' if b.readonly else 'rw'}" for b in binds]
    if mounts:
        options["volumes"] = mounts
    return options


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
