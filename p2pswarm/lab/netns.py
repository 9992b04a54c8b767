"""Network namespaces for `lab up --netns` and nftables faults for chaos runs (root only).

Layout of lab ``L`` (an integer 1..250 picked so that no ``p2ps-L-*`` namespace exists)::

    p2ps-L-br   the lab's "switch": bridge br0 with 10.77.L.254/24 (where the load client runs)
    p2ps-L-i    node i: eth0 = 10.77.L.i/24, a veth whose peer vi sits on br0; lo up

Node namespaces forward IPv4 (the mesh's kernel path DNATs to other nodes' replicas) without
ICMP redirects. Everything is created inside namespaces this module made (the host's own network is
never touched: not one address, route or rule), and :func:`destroy` deletes them,
which deletes their veths and rules with them.

Faults are one nftables table, ``inet p2pswarm_chaos``, per node namespace, rewritten as a
whole from the node's wanted state (:func:`apply_faults`): packets from/to blocked
addresses are dropped (a partition), and ``numgen random mod 100 < P`` drops P % of
everything else that is not loopback (packet loss, both directions).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Iterable

SUBNET = "10.77"
BRIDGE_HOST = 254
"""Host part of the bridge namespace's address (the load client's source address)."""
TABLE = "p2pswarm_chaos"
PREFIX = "p2ps-"
MAX_LAB_ID = 250
MAX_NODES = 200
TIMEOUT = 20.0


class NetnsError(Exception):
    """A namespace operation failed; the message is one line."""


class LabIdTaken(NetnsError):
    """Another lab created ``p2ps-L-br`` between our look and our create (a race): pick another id."""


def ns_name(lab_id: int, index: int | str) -> str:
    return f"{PREFIX}{lab_id}-{index}"


def bridge_ns(lab_id: int) -> str:
    return ns_name(lab_id, "br")


def node_ip(lab_id: int, index: int) -> str:
    return f"{SUBNET}.{lab_id}.{index}"


def bridge_ip(lab_id: int) -> str:
    return f"{SUBNET}.{lab_id}.{BRIDGE_HOST}"


def check_available(need_nft: bool = False) -> None:
    """Raise NetnsError (one line) unless we are root and `ip` (and `nft`) exist."""
    if os.geteuid() != 0:
        raise NetnsError("--netns needs root (network namespaces and nftables); run as root or drop --netns")
    for tool in ("ip",) + (("nft",) if need_nft else ()):
        if shutil.which(tool) is None:
            raise NetnsError(f"--netns needs the `{tool}` command: apt-get install -y "
                             f"{'iproute2' if tool == 'ip' else 'nftables'}")


def _run(*argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"`{' '.join(argv)}` failed: {exc}") from None
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise NetnsError(f"`{' '.join(argv)}` failed: {detail[-1] if detail else f'exit {done.returncode}'}")
    return done


def list_namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def free_lab_id(avoid: Iterable[int] = ()) -> int:
    """The lowest lab id without any ``p2ps-<id>-*`` namespace (and not in ``avoid``)."""
    used = set(avoid)
    for name in list_namespaces():
        m = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if m:
            used.add(int(m.group(1)))
    for lab_id in range(1, MAX_LAB_ID + 1):
        if lab_id not in used:
            return lab_id
    raise NetnsError(f"all {MAX_LAB_ID} lab ids are in use (see `ip netns list`); stop a lab first")


def create(lab_id: int, nodes: int) -> list[str]:
    """Create the bridge namespace and one namespace per node; returns the node namespaces.

    On failure whatever was created is deleted again before the error is raised."""
    if not 1 <= nodes <= MAX_NODES:
        raise NetnsError(f"a netns lab has 1 to {MAX_NODES} nodes, got {nodes}")
    br = bridge_ns(lab_id)
    made: list[str] = []
    try:
        if _run("ip", "netns", "add", br, check=False).returncode != 0:
            if br in list_namespaces():
                raise LabIdTaken(f"lab id {lab_id} is taken")
            _run("ip", "netns", "add", br)
        made.append(br)
        _run("ip", "-n", br, "link", "set", "lo", "up")
        _run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", br, "addr", "add", f"{bridge_ip(lab_id)}/24", "dev", "br0")
        _run("ip", "-n", br, "link", "set", "br0", "up")
        names = []
        for i in range(1, nodes + 1):
            ns = ns_name(lab_id, i)
            _run("ip", "netns", "add", ns)
            made.append(ns)
            names.append(ns)
            _run("ip", "-n", br, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "-n", br, "link", "set", f"v{i}", "master", "br0")
            _run("ip", "-n", br, "link", "set", f"v{i}", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{node_ip(lab_id, i)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            # a node forwards what its kernel path sends to another node's replica (DNAT, masquerade); a
            # forwarded packet leaves by the interface it came in on, which must not teach the client a shortcut
            _run(*exec_prefix(ns), "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                 "net.ipv4.conf.eth0.send_redirects=0")
        return names
    except NetnsError:
        destroy(made)
        raise


def pids_in(ns: str) -> list[int]:
    out = _run("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def destroy(namespaces: Iterable[str]) -> list[str]:
    """SIGKILL every process still inside, then delete the namespaces (only ``p2ps-*`` ones).
    Returns the names that could not be deleted."""
    import signal
    failed = []
    existing = set(list_namespaces())
    for ns in namespaces:
        if not ns.startswith(PREFIX) or ns not in existing:
            continue
        for pid in pids_in(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if _run("ip", "netns", "del", ns, check=False).returncode != 0:
            failed.append(ns)
    return failed


def exec_prefix(ns: str) -> list[str]:
    """argv prefix that runs a command inside ``ns`` (``ip netns exec`` execs it: same pid)."""
    return ["ip", "netns", "exec", ns]


# ------------------------------------------------------------------ nftables faults

def ruleset(loss_percent: float, blocked: Iterable[str]) -> str:
    """The ``inet p2pswarm_chaos`` table for one node: drop ``blocked`` peers, lose ``loss_percent``.

    Loopback is never touched (the node's own tasks and health checks)."""
    blocked = sorted(set(blocked))
    pct = int(round(loss_percent))
    rules_in, rules_out = ['iif "lo" accept'], ['oif "lo" accept']
    if blocked:
        addrs = ", ".join(blocked)
        rules_in.append(f"ip saddr {{ {addrs} }} drop")
        rules_out.append(f"ip daddr {{ {addrs} }} drop")
    if pct > 0:
        rules_in.append(f"numgen random mod 100 < {pct} drop")
        rules_out.append(f"numgen random mod 100 < {pct} drop")
    body = "\n".join([
        f"table inet {TABLE} {{",
        "  chain input {",
        "    type filter hook input priority 0; policy accept;",
        *(f"    {r}" for r in rules_in),
        "  }",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        *(f"    {r}" for r in rules_out),
        "  }",
        "}",
    ])
    # Declaring the table first makes the delete succeed whether or not it existed.
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n{body}\n"


def apply_faults(ns: str, loss_percent: float, blocked: Iterable[str]) -> None:
    """Make ``ns``'s fault table say exactly this (no faults: the table is removed)."""
    blocked = list(blocked)
    if loss_percent <= 0 and not blocked:
        clear_faults(ns)
        return
    _run("ip", "netns", "exec", ns, "nft", "-f", "-", input=ruleset(loss_percent, blocked))


def clear_faults(ns: str) -> None:
    _run("ip", "netns", "exec", ns, "nft", "-f", "-", input=f"table inet {TABLE}\ndelete table inet {TABLE}\n")
