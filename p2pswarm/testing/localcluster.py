"""Real `p2pswarm up` processes on distinct 127.0.0.x addresses, for tests and benchmarks.

Conditions are polled with generous deadlines (never fixed sleeps), and every
process a test started is killed by its pid at teardown, never by name.

Clusters are secure (the CLI's default): :meth:`LocalCluster.start` with peers
fetches the join token from a running node of this cluster (the peers' nodes
first) and passes it, unless the node already holds a certificate, the caller
passes ``--token`` or ``--insecure`` itself, or no node of this cluster can give one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.mesh import nft
from p2pswarm.mesh.kernel_plan import table_name
from p2pswarm.runtime.taskuser import own_interpreter_args, remove_homes_of
from p2pswarm.runtime.volumes import remove_volumes_of
from p2pswarm.transport.ports import NODE_PORT_SPAN

REPO = Path(__file__).resolve().parents[2]
"""The source tree, put on PYTHONPATH of the children so they run this checkout."""
_used_hosts: set[str] = set()


def free_host() -> str:
    """A loopback address no other test of this run uses (all of 127/8 reaches lo on Linux)."""
    while True:
        host = f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"
        if host not in _used_hosts:
            _used_hosts.add(host)
            return host


def free_port(host: str, kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out on ``host`` (TCP, or UDP with ``socket.SOCK_DGRAM``)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def published_port(hosts, kind: int = socket.SOCK_STREAM, taken=()) -> int:
    """A port free on every one of ``hosts`` and not in ``taken``: what a published port needs, since
    every node listens on it at its own address. A port free on one node's address only can be another
    node's gossip or relay port (a CI run published its second node's SWIM port)."""
    hosts = list(hosts)
    while True:
        port = free_port(hosts[0], kind)
        if port not in taken and all(_bindable(h, port, kind) for h in hosts[1:]):
            return port


def _bindable(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("P2PSWARM_DATA_DIR", None)
    return env


def wait_until(cond, timeout: float, what: str, interval: float = 0.05, seen=None):
    """Poll ``cond`` until it returns a truthy value; fail with ``what`` after ``timeout`` seconds.

    ``seen``, if given, is called on timeout and its text ends the failure message: what the test last
    observed is what tells a slow cluster from a stuck one when a CI run fails."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"; last seen: {seen()}" if seen is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{tail}")
        time.sleep(interval)


class LocalNode:
    def __init__(self, cluster: "LocalCluster", index: int) -> None:
        self.index = index
        self.name = f"n{index}"
        self.host = free_host()
        self.port = free_port(self.host)
        self.addr = f"{self.host}:{self.port}"
        self.data_dir = cluster.tmp / self.name
        self.log_path = cluster.tmp / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self.api = ApiClient(self.data_dir, timeout=10.0)
        """Generous: a node on a loaded 2-core machine may take seconds to answer, and a test's
        wait loop does not catch the error a timeout raises."""
        self.insecure = False
        """Started with ``--insecure``: it gives no join token, and a node joining through it needs none."""
        self.kernel_mesh = False
        """Started with a kernel path (``--mesh`` auto or kernel): a killed node leaves its nftables table."""

    def info(self) -> dict | None:
        try:
            return self.api.get("/v1/info")
        except ApiError:
            return None

    def statuses(self) -> dict[str, str] | None:
        """{member name: status} as this node sees it, or None if its API does not answer."""
        try:
            return {m["name"]: m["status"] for m in self.api.get("/v1/members")["members"]}
        except ApiError:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LocalCluster:
    def __init__(self, tmp: Path, preset: str = "test", isolate_tasks: bool | None = None,
                 node_args: tuple[str, ...] = (), mesh: str = "userspace") -> None:
        """``isolate_tasks`` (root only): True runs tasks as the nodes' default task user, False as root;
        None as the default unless the tests' interpreter (what their tasks run) is closed to it.
        ``node_args``: options every node starts with (e.g. ``--engine-socket URL``).
        ``mesh``: the nodes' ``up --mesh`` unless ``node_args`` or a start's options say it; ``userspace`` by
        default, so that tests run as root keep testing the user-space data plane."""
        self.tmp = tmp
        self.preset = preset
        self.mesh = mesh
        self.node_args = tuple(node_args)
        self.task_args = (own_interpreter_args(sys.executable) if isolate_tasks is None
                          else [] if isolate_tasks or os.geteuid() != 0 else ["--task-user", "root"])
        self.task_user = self.task_args[1] if self.task_args else None
        """The ``--task-user`` of ``task_args`` (None: the default), for nodes started without the CLI."""
        self.nodes: dict[int, LocalNode] = {}
        self.pids: set[int] = set()
        self._procs: list[subprocess.Popen] = []

    def node(self, index: int) -> LocalNode:
        if index not in self.nodes:
            self.nodes[index] = LocalNode(self, index)
        return self.nodes[index]

    def published_port(self, kind: int = socket.SOCK_STREAM, taken=()) -> int:
        """A port to publish a service on: free on every node's address, and none of a node's own ports
        (:mod:`p2pswarm.transport.ports`; the relays bind when the mesh starts, after a test picks its port)."""
        own = {n.port + offset for n in self.nodes.values() for offset in range(NODE_PORT_SPAN)}
        return published_port([n.host for n in self.nodes.values()], kind, own | set(taken))

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "p2pswarm.cli.main", *args]

    def start(self, index: int, peers: tuple[str, ...] = (), *extra: str, token: str | None = None) -> LocalNode:
        """Start `p2pswarm up` in the foreground (as a child we own) with the cluster's preset.

        A node joining through ``peers`` without ``--token``/``--insecure`` in its arguments and without a data dir of
        its own gets ``token``, else the one a running node gives: waited for, since a joiner started without one
        exits at once (a busy node's API answering late once left a 3-node group at two members)."""
        node = self.node(index)
        args = ["up", "--data-dir", str(node.data_dir), "--bind", node.addr, "--name", node.name,
                "--preset", self.preset, *self.task_args, *self.node_args, *extra]
        if "--mesh" not in args:
            args += ["--mesh", self.mesh]
        node.kernel_mesh = args[args.index("--mesh") + 1] != "userspace"
        node.insecure = "--insecure" in args
        env = cli_env()
        if peers:
            args += ["--peers", ",".join(peers)]
            if "--token" not in args and "--insecure" not in args and not (node.data_dir / "security" /
                                                                           "state").exists():
                if token is None:
                    token = self.wait_for_token(peers, exclude=index)
                if token is not None:
                    env["P2PSWARM_TOKEN"] = token  # not in argv: /proc/PID/cmdline is readable by all
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(self.command(*args), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self._procs.append(node.proc)
        self.pids.add(node.proc.pid)
        return node

    def start_shared(self, indices: list[int], peers: tuple[str, ...] = (), **options: Any) -> list[LocalNode]:
        """Start the nodes ``indices`` in ONE process (:mod:`p2pswarm.testing.multinode`), each with its own
        address, sockets and data dir, with the cluster's preset and ``options`` (NodeOptions fields, e.g.
        ``max_learners=1``). They share the Popen (``node.proc``) and its log; killing one kills them all."""
        nodes = [self.node(i) for i in indices]
        spec = {"nodes": [{"data_dir": str(n.data_dir), "bind": n.addr, "name": n.name, "preset": self.preset,
                           "secure": True, "task_user": self.task_user, "peers": list(peers), "mesh": self.mesh,
                           **options}
                          for n in nodes]}
        spec_path = self.tmp / f"{nodes[0].name}-group.json"
        spec_path.write_text(json.dumps(spec))
        env = cli_env()
        token = self.wait_for_token(peers) if peers else None
        if token is not None:
            env["P2PSWARM_TOKEN"] = token
        log_path = self.tmp / f"{nodes[0].name}-group.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "p2pswarm.testing.multinode", str(spec_path)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self._procs.append(proc)
        self.pids.add(proc.pid)
        for node in nodes:
            node.proc, node.log_path = proc, log_path
            node.kernel_mesh = options.get("mesh", self.mesh) != "userspace"
        return nodes

    def wait_for_token(self, peers: tuple[str, ...], exclude: int | None = None) -> str | None:
        """The join token for a node joining through ``peers``: waited for while a secure node of this cluster
        runs at one of them (it will give one; a joiner without it exits at once), else asked once (None: none)."""
        if any(n.addr in peers and n.index != exclude and not n.insecure and n.proc is not None
               and n.proc.poll() is None for n in self.nodes.values()):
            return wait_until(lambda: self.join_token(peers, exclude), 30, "a join token from a running node",
                              interval=0.2)
        return self.join_token(peers, exclude)

    def join_token(self, peers: tuple[str, ...] = (), exclude: int | None = None) -> str | None:
        """The join token from a running node of this cluster (those at ``peers`` first), or None."""
        nodes = [n for n in self.nodes.values() if n.index != exclude and n.proc is not None and n.proc.poll() is None]
        nodes.sort(key=lambda n: n.addr not in peers)
        for node in nodes:
            try:
                return node.api.get("/v1/security/join-token")["token"]
            except (ApiError, KeyError, TypeError):
                continue
        return None

    def start_joined(self, n: int, timeout: float = 30) -> list[LocalNode]:
        """Nodes 0..n-1: node 0 creates the cluster, the others join through it with its join token.

        Waits until node 0 gives the token: a joiner started before that gets none (``start``
        then passes none) and a secure cluster refuses it."""
        first = self.start(0)
        token = wait_until(lambda: self.join_token((first.addr,)), timeout, "the first node's join token")
        return [first] + [self.start(i, (first.addr,), token=token) for i in range(1, n)]

    def start_group(self, n: int, timeout: float = 60) -> list[LocalNode]:
        """Nodes 0..n-1, joined through node 0, once all n are in its Raft group and autopilot has
        promoted as many voters as it wants for n members. Until then a group growing from one
        voter passes through two, where losing either loses quorum: a test that kills a node
        must not start in that window."""
        from p2pswarm.consensus.autopilot import target_voters
        nodes = self.start_joined(n)
        voters = target_voters(n)
        views: dict[str, object] = {}

        def in_group() -> bool:
            for node in nodes:
                try:
                    views[node.name] = node.api.get("/v1/cluster")["members"]
                except Exception as exc:  # not up yet, or no Raft driver yet
                    views[node.name] = f"{type(exc).__name__}: {exc}"
            return all(isinstance(members, list) and len(members) == n
                       and sum(1 for m in members if m["role"] == "voter" or m["leader"]) == voters
                       for members in views.values())

        def seen() -> str:
            def brief(members: object) -> object:
                if not isinstance(members, list):
                    return members
                return [f"{m.get('name')}:{'leader' if m.get('leader') else m.get('role')}/{m.get('status')}"
                        for m in members]
            return "; ".join(f"{name} sees {brief(members)}" for name, members in views.items())
        wait_until(in_group, timeout, f"all {n} nodes in the Raft group, {voters} of them voters", seen=seen)
        return nodes

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), capture_output=True, text=True, cwd=REPO, env=cli_env(),
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[index]
        node.proc.send_signal(sig)
        node.proc.wait(timeout=30)

    def track_pid_file(self, data_dir: Path) -> None:
        """Remember the pid of a detached node so that teardown can kill it."""
        try:
            self.pids.add(int((data_dir / "node.pid").read_text().strip()))
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        for node in self.nodes.values():
            self.track_pid_file(node.data_dir)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        own = {p.pid for p in self._procs}
        for pid in self.pids - own:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        nft.remove_all(table_name(n.host, n.port) for n in self.nodes.values() if n.kernel_mesh)
        for node in self.nodes.values():
            remove_homes_of(node.data_dir)  # the tasks' homes live outside the (temporary) data dirs
            remove_volumes_of(node.data_dir)  # and so do the named volumes
