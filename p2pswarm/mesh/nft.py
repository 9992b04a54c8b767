"""The host side of the mesh's kernel path: the ``nft`` and ``conntrack`` commands.

Blocking calls (a subprocess each); the node runs them off its event loop
(:mod:`p2pswarm.mesh.kernel`). What the table holds is decided in
:mod:`p2pswarm.mesh.kernel_plan` (pure); this module only runs its text, checks that
nftables can run it at all (:func:`probe`), and resets the conntrack flows of replicas
that are gone (:func:`reset_flows`).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from typing import Iterable

from p2pswarm.mesh.kernel_plan import MARK, removal

TIMEOUT = 10.0
"""Seconds one ``nft`` or ``conntrack`` run may take."""
PROBE_TABLE = "p2pswarm_mesh_probe"


class NftError(Exception):
    """``nft`` refused a script or could not run; the message is one line."""


def probe() -> str | None:
    """None when this node can use the kernel path, else one line saying why not: not root, no ``nft``
    command, or nftables refusing (a check-only run, nothing installed) a small table that uses every
    feature the mesh table does (an old kernel, missing NAT modules, a sandbox without netfilter)."""
    if os.geteuid() != 0:
        return "not root (nftables needs CAP_NET_ADMIN)"
    if shutil.which("nft") is None:
        return "the nft command is missing (apt-get install -y nftables)"
    t = f"inet {PROBE_TABLE}"
    test = (f"add table {t}\n"
            f"add map {t} ports {{ type inet_service : verdict ; }}\n"
            f"add map {t} backends {{ typeof tcp dport . numgen random mod 2 : ip daddr . tcp dport ; }}\n"
            f"add chain {t} pre {{ type nat hook prerouting priority -100 ; policy accept ; }}\n"
            f"add chain {t} post {{ type nat hook postrouting priority srcnat ; policy accept ; }}\n"
            f"add chain {t} two\n"
            f"add rule {t} pre ip daddr 127.0.0.1 tcp dport vmap @ports\n"
            f"add rule {t} two ct mark set ct mark or {MARK:#x} dnat ip to tcp dport . numgen random mod 2 "
            f"map @backends\n"
            f'add rule {t} post ct mark and {MARK:#x} != 0 oifname != "lo" masquerade\n'
            f"add element {t} ports {{ 1 : goto two }}\n"
            f"add element {t} backends {{ 1 . 0 : 127.0.0.1 . 2, 1 . 1 : 127.0.0.1 . 3 }}\n")
    try:
        run(test, check_only=True)
    except NftError as exc:
        return f"nftables refuses the mesh's rules: {exc}"
    return None


def forwarding() -> bool:
    """Whether this machine forwards IPv4 packets: ``net.ipv4.ip_forward`` is on and no forward hook
    drops by default (Docker sets its FORWARD chain's policy to drop). Remote replicas on other
    machines need it for clients on other machines."""
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            if f.read().strip() != "1":
                return False
    except OSError:
        return False
    listed = _nft(["list", "chains"])
    if listed.returncode != 0:
        return False
    return not any("hook forward" in line and "policy drop" in line for line in listed.stdout.splitlines())


def run(script: str, *, check_only: bool = False) -> float:
    """Run ``script`` as one ``nft -f -`` transaction (``check_only``: ``nft -c``, nothing changes);
    returns the seconds it took. Raises NftError with nft's last error line."""
    start = time.perf_counter()
    done = _nft(["-c", "-f", "-"] if check_only else ["-f", "-"], script)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise NftError(_last_line(done))
    return elapsed


def remove(table: str) -> None:
    """Delete the node's table; nothing happens when it does not exist. Raises NftError."""
    run(removal(table))


def remove_all(tables: Iterable[str]) -> list[str]:
    """Delete these tables where they exist (a stopped lab's, on loopback); returns those that stay. Nothing to
    do, and nothing tried, when this process is not root or has no ``nft``."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        return []
    left = []
    for table in tables:
        try:
            remove(table)
        except NftError:
            left.append(table)
    return left


def exists(table: str) -> bool:
    return _nft(["list", "table", "inet", table]).returncode == 0


def have_conntrack() -> bool:
    return shutil.which("conntrack") is not None


def reset_flows(host: str, flows: Iterable[tuple[str, int, tuple[str, int]]]) -> int:
    """Delete the conntrack entries of connections to ``host``'s published ports that the kernel sent to
    replicas that are gone (``(protocol, port, (ip, port))``), so that their next packet is answered
    with a reset (TCP) or goes to a live replica (UDP) instead of waiting for a dead one. Returns the
    entries deleted; needs the ``conntrack`` command (:func:`have_conntrack`)."""
    deleted = 0
    for protocol, port, (ip, backend_port) in flows:
        argv = ["conntrack", "-D", "-p", protocol, "--orig-port-dst", str(port),
                "--reply-src", ip, "--reply-port-src", str(backend_port)]
        if host not in ("", "0.0.0.0"):
            argv[4:4] = ["--orig-dst", host]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        for word in done.stderr.split():  # "... 2 flow entries have been deleted."
            if word.isdigit():
                deleted += int(word)
                break
    return deleted


def measure_apply(ports: int = 2000, backends: int = 3, table: str = "p2pswarm_mesh_measure") -> dict[str, float]:
    """Milliseconds to install a table of ``ports`` TCP ports x ``backends`` remote replicas in one transaction
    (``full_ms``, and the CPU time of that nft run: ``full_cpu_ms``), to change one port's replicas
    (``change_one_ms``) and to delete the table (``remove_ms``). It installs the table in this network
    namespace (matching only 192.0.2.1, a documentation address) and deletes it again: run it in a namespace
    of your own (``ip netns exec NS python -m p2pswarm.mesh.nft``)."""
    from p2pswarm.mesh.kernel_plan import plan, transaction

    def made(first_backend: int) -> dict:
        return {"host": "192.0.2.1", "ports": [
            {"port": 10000 + p, "backends": [{"addr": f"198.51.100.{b + first_backend}:{20000 + p}", "local": False}
                                              for b in range(backends)]} for p in range(ports)]}
    full = plan(made(1), forwarding=True)
    changed = plan({**made(1), "ports": [{**made(2)["ports"][0]}] + made(1)["ports"][1:]}, forwarding=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    full_s = run(transaction(None, full, table))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        change_s = run(transaction(full, changed, table))
    finally:
        start = time.perf_counter()
        remove(table)
        remove_s = time.perf_counter() - start
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"ports": ports, "backends": backends, "full_ms": round(full_s * 1000, 1),
            "full_cpu_ms": round(cpu * 1000, 1), "change_one_ms": round(change_s * 1000, 1),
            "remove_ms": round(remove_s * 1000, 1)}


def _nft(args: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["nft", *args], input=script, capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=None if script is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 1, "", f"nft took more than {TIMEOUT:g} s")
    except OSError as exc:
        return subprocess.CompletedProcess(args, 1, "", f"cannot run nft: {exc}")


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line]
    line = (errors or lines or [f"exit {done.returncode}"])[-1]
    return line[:300]


if __name__ == "__main__":
    import json
    print(json.dumps(measure_apply()))
