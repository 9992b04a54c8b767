"""The routing mesh's kernel path: which published ports nftables forwards, and the transaction (pure).

The node hands the table it pushes to the user-space data plane (:func:`p2pswarm.mesh.table.build`)
to :func:`plan`, which decides per published port (TCP and UDP) whether the kernel forwards it by
DNAT, and to which replicas, or why it stays in user space. :func:`transaction` turns the change
from the plan in force to a new one into the text of ONE ``nft -f -`` run, so every update is
atomic and touches only the ports that changed.

**What goes to the kernel.** A port with a local replica is forwarded to its local replicas only
(no SNAT: the replica sees the client's address); a port without one to its remote replicas, with
the connection marked (:data:`MARK`) so that one postrouting rule masquerades it when it leaves on
a real interface (the reply must come back through this node). New connections are spread evenly
(``numgen random``); conntrack keeps each flow on its replica.

**What stays in user space** (``PortPath.why`` says which): ``proxy-protocol`` (the PROXY v2
header is written by the data plane), ``encrypted`` (TLS between meshes), a port whose service
asks for it (the ``userspace`` publish option: the first-byte replay and connect retries, which a
kernel DNAT cannot do), a replica reached only through a relay (a cut link), IPv6, a port with no
replica (the data plane refuses it), and remote replicas on other machines while this one does
not forward packets. The data plane keeps listening on every port, kernel or not.

**The table** (``inet``, one per node: :func:`table_name`)::

    map tcp_ports     port -> goto tcp_<n> | tcp_<n>_masq       (dispatch: the port's verdict)
    map tcp_backends  port . i -> replica ip . port, i < n       (the port's replicas)
    chain tcp_<n>        dnat ip to tcp dport . numgen random mod n map @tcp_backends
    chain tcp_<n>_masq   the same, marking the connection for masquerade
    prerouting / output  ip daddr <node host> tcp dport vmap @tcp_ports   (and udp)
    postrouting          marked connections leaving on a non-loopback interface: masquerade

One chain per *replica count* (made when a port first needs it, deleted when none does), not one
per port: a port is then only map elements, and 2,000 ports apply in a third of the CPU time that
2,000 per-port chains bound to the backends map cost (measured, docs/architecture.md "Kernel path").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

PROTOCOLS = ("tcp", "udp")
MARK = 0x10000000
"""The conntrack mark bit of connections forwarded to another node (masqueraded when they leave)."""
TABLE_PREFIX = "p2pswarm_mesh_"

Addr = tuple[str, int]
PortKey = tuple[str, int]
"""``(protocol, published port)``."""


@dataclass(frozen=True, slots=True)
class PortPath:
    """One published port's path: the replicas the kernel sends it to, or why it stays in user space."""
    protocol: str
    port: int
    backends: tuple[Addr, ...] = ()
    """Sorted; empty when the port stays in user space."""
    masquerade: bool = False
    """The replicas are on other nodes: the reply must come back through this node."""
    why: str = ""
    """Why the port stays in user space ("" when the kernel forwards it)."""

    @property
    def kernel(self) -> bool:
        return bool(self.backends)


@dataclass(frozen=True)
class KernelPlan:
    host: str
    """The node's address: what the hooks match (``0.0.0.0``: every local address)."""
    paths: Mapping[PortKey, PortPath] = field(default_factory=dict)

    def kernel_paths(self) -> dict[PortKey, PortPath]:
        return {key: p for key, p in self.paths.items() if p.kernel}

    def levels(self) -> set[tuple[str, int, bool]]:
        """``(protocol, replica count, masquerade)`` of every kernel port: the chains the table needs."""
        return {(p.protocol, len(p.backends), p.masquerade) for p in self.paths.values() if p.kernel}


def table_name(host: str, swim_port: int) -> str:
    """``p2pswarm_mesh_127_0_5_5_7946``: one table per node, so that the nodes of a loopback lab can share
    one network namespace (an nft identifier: a letter, then letters, digits and ``_``)."""
    return TABLE_PREFIX + "".join(c if c.isalnum() else "_" for c in host) + f"_{swim_port}"


def plan(table: Mapping[str, Any], *, off: str = "", forwarding: bool = True) -> KernelPlan:
    """Every published port's path from a data-plane table.

    ``off``: the kernel path is not used on this node, and why (every port stays in user space).
    ``forwarding``: this machine forwards packets (``net.ipv4.ip_forward`` on, no forward hook that
    drops), which remote replicas on other machines need for clients on other machines."""
    host = str(table.get("host") or "127.0.0.1")
    blocked = frozenset(table.get("blocked_hosts") or ())
    paths: dict[PortKey, PortPath] = {}
    for protocol, entries in (("tcp", table.get("ports") or ()), ("udp", table.get("udp") or ())):
        for entry in entries:
            port = int(entry["port"])
            why = off or _ipv6_host(host) or _port_refusal(entry)
            if why:
                paths[(protocol, port)] = PortPath(protocol, port, why=why)
                continue
            paths[(protocol, port)] = _choose(protocol, port, entry.get("backends") or (), blocked, forwarding)
    return KernelPlan(host, dict(sorted(paths.items())))


def _ipv6_host(host: str) -> str:
    return "IPv6 node address: the kernel path is IPv4 only" if ":" in host else ""


def _port_refusal(entry: Mapping[str, Any]) -> str:
    if entry.get("proxy_protocol"):
        return "proxy-protocol: the PROXY v2 header is written in user space"
    if entry.get("encrypted"):
        return "encrypted: TLS between the nodes' meshes is user space"
    if entry.get("userspace"):
        return "the service publishes it with the userspace option (first-byte replay, connect retries)"
    return ""


def _choose(protocol: str, port: int, backends: Iterable[Mapping[str, Any]], blocked: frozenset[str],
            forwarding: bool) -> PortPath:
    usable = [b for b in backends if b.get("via") is not None or _host_of(b["addr"]) not in blocked]
    if not usable:
        return PortPath(protocol, port, why="no replica to forward to")
    local = [b for b in usable if b.get("local")]
    tier = local or usable
    if not local and any(b.get("via") is not None for b in tier):
        return PortPath(protocol, port, why="a replica is reached through a relay (cut link): relays are user space")
    addrs = sorted({_split(b["addr"]) for b in tier})
    if any(":" in ip for ip, _ in addrs):
        return PortPath(protocol, port, why="an IPv6 replica: the kernel path is IPv4 only")
    if not local and not forwarding and not all(ipaddress.ip_address(ip).is_loopback for ip, _ in addrs):
        return PortPath(protocol, port, why="no local replica and this machine does not forward packets "
                                            "(net.ipv4.ip_forward off or a forward hook that drops)")
    return PortPath(protocol, port, tuple(addrs), masquerade=not local)


def _split(addr: str) -> Addr:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _host_of(addr: str) -> str:
    return addr.rpartition(":")[0].strip("[]")


def dropped(old: KernelPlan | None, new: KernelPlan,
            listed: Iterable[tuple[str, int, str]]) -> list[tuple[str, int, Addr]]:
    """``(protocol, port, replica)`` whose kernel flows must be reset: replicas the old plan forwarded to that
    the new one does not, and that the route list no longer shows at all (``listed``: ``(protocol, port,
    "ip:port")`` of every route row). A replica still listed (draining, on a suspect node, unhealthy) keeps its
    open connections, as the user-space path keeps them; one that is gone (its node dead, its task ended) has
    nobody to answer them."""
    if old is None:
        return []
    still = {(proto, port, _split(addr)) for proto, port, addr in listed}
    out = []
    for key, path in old.kernel_paths().items():
        now = new.paths.get(key)
        keep = set(now.backends) if now is not None else set()
        out += [(key[0], key[1], b) for b in path.backends if b not in keep and (key[0], key[1], b) not in still]
    return out


# ------------------------------------------------------------------ the nft transaction

def transaction(old: KernelPlan | None, new: KernelPlan, table: str) -> str:
    """The ``nft -f -`` text that turns the table of plan ``old`` (None: whatever is there, or nothing)
    into the table of plan ``new``, in one atomic transaction.

    From ``old`` it touches only changed ports: their dispatch element and their replica elements are
    deleted and added again; the chain of a replica count is made when the first port needs it and
    deleted when the last one leaves it. Without ``old`` (or when the node's address changed), the
    table is made from scratch: declared first, so that deleting it never fails, then deleted and
    made again in the same transaction."""
    t = f"inet {table}"
    out: list[str] = []
    if old is None or old.host != new.host:
        out += _skeleton(t, new.host)
        old = KernelPlan(new.host)
    before, after = old.levels(), new.levels()
    out += [line for level in sorted(after - before) for line in _level_chain(t, *level)]
    changed = [key for key in sorted(set(old.paths) | set(new.paths))
               if _kernel_part(old.paths.get(key)) != _kernel_part(new.paths.get(key))]
    for verb, source in (("delete", old), ("add", new)):
        for proto in PROTOCOLS:
            paths = [p for key in changed if key[0] == proto and (p := source.paths.get(key)) is not None and p.kernel]
            if paths:
                out += _elements(t, verb, proto, paths)
    out += [f"delete chain {t} {_level_name(*level)}" for level in sorted(before - after)]
    return "".join(line + "\n" for line in out)


def removal(table: str) -> str:
    """The ``nft -f -`` text that deletes the node's table whether or not it exists."""
    return f"add table inet {table}\ndelete table inet {table}\n"


def _elements(t: str, verb: str, proto: str, paths: list[PortPath]) -> list[str]:
    """Add (or delete) these ports' replicas and dispatch verdicts: one command per map, since a command per
    element costs more than the element (2,000 ports in 4,000 commands took 1.5 times the CPU)."""
    if verb == "delete":
        replicas = [f"{p.port} . {i}" for p in paths for i in range(len(p.backends))]
        dispatch = [str(p.port) for p in paths]
    else:
        replicas = [f"{p.port} . {i} : {ip} . {port}" for p in paths for i, (ip, port) in enumerate(p.backends)]
        dispatch = [f"{p.port} : goto {_level_name(*_level_of(p))}" for p in paths]
    lines = [f"{verb} element {t} {proto}_backends {{ {', '.join(replicas)} }}",
             f"{verb} element {t} {proto}_ports {{ {', '.join(dispatch)} }}"]
    return lines if verb == "add" else lines[::-1]  # no verdict ever names replicas that are not there


def _kernel_part(path: PortPath | None) -> tuple[tuple[Addr, ...], bool]:
    return ((), False) if path is None or not path.kernel else (path.backends, path.masquerade)


def _level_of(path: PortPath) -> tuple[str, int, bool]:
    return path.protocol, len(path.backends), path.masquerade


def _level_name(protocol: str, count: int, masquerade: bool) -> str:
    return f"{protocol}_{count}" + ("_masq" if masquerade else "")


def _level_chain(t: str, protocol: str, count: int, masquerade: bool) -> list[str]:
    name = _level_name(protocol, count, masquerade)
    mark = f"ct mark set ct mark or {MARK:#x} " if masquerade else ""
    return [f"add chain {t} {name}",
            f"add rule {t} {name} {mark}dnat ip to {protocol} dport . numgen random mod {count} "
            f"map @{protocol}_backends"]


def _skeleton(t: str, host: str) -> list[str]:
    match = "fib daddr type local" if host in ("0.0.0.0", "") else f"ip daddr {host}"
    out = [f"add table {t}", f"delete table {t}", f"add table {t}"]
    for proto in PROTOCOLS:
        out.append(f"add map {t} {proto}_ports {{ type inet_service : verdict ; }}")
        out.append(f"add map {t} {proto}_backends {{ typeof {proto} dport . numgen random mod 2 : "
                   f"ip daddr . {proto} dport ; }}")
    for chain in ("prerouting", "output"):  # dstnat (-100); nft names it for prerouting only
        out.append(f"add chain {t} {chain} {{ type nat hook {chain} priority -100 ; policy accept ; }}")
        out += [f"add rule {t} {chain} {match} {proto} dport vmap @{proto}_ports" for proto in PROTOCOLS]
    out.append(f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}")
    out.append(f'add rule {t} postrouting ct mark and {MARK:#x} != 0 oifname != "lo" masquerade')
    return out
