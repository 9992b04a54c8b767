"""A lab: N real `p2pswarm up` processes on one machine, described by ``<lab dir>/lab.json``.

Two layouts:

* **loopback** (default): node i binds ``127.0.0.(10+i):PORT``; every loopback address
  reaches ``lo`` on Linux, so N nodes share one port number.
* **netns** (root): node i runs inside its own network namespace ``p2ps-L-i`` with
  address ``10.77.L.i`` on a veth to the lab's bridge (see :mod:`p2pswarm.lab.netns`):
  separate hosts on one machine, which nftables can then partition and make lossy.

Either way the API socket is a unix socket in the node's data dir ``<lab>/node-i``,
so the CLI reaches every node from the host. Node processes are started detached (their
own session) and found again through ``node.pid``; a "kill" is a machine crash: SIGKILL
to the node, every process it started (the mesh data plane, its tasks) and, with netns,
every process left in its namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import p2pswarm
from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.consensus.autopilot import target_voters
from p2pswarm.lab import netns
from p2pswarm.mesh import kernel_plan, nft
from p2pswarm.node.datadir import DataDir
from p2pswarm.runtime import procfs
from p2pswarm.runtime.taskuser import own_interpreter_args, remove_homes_of
from p2pswarm.runtime.volumes import remove_volumes_of

STATE_FILE = "lab.json"
DEMO_SERVICE = "demo"
DEMO_PORT = 8080
DEMO_REPLICAS = 3
START_TIMEOUT = 20.0
"""Seconds a new node process has to answer on its API socket."""
CONVERGE_TIMEOUT = 60.0
"""Seconds to wait for every node to see every other alive."""
RAFT_TIMEOUT = 60.0
"""Seconds to wait for autopilot to elect the Raft group (learners are promoted once stable)."""
STOP_TIMEOUT = 10.0
"""Seconds a node has to stop gracefully before SIGKILL."""


class LabError(Exception):
    """Something a lab user must fix or know; the message is one line."""


Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class LabNode:
    index: int
    name: str
    dir: str
    host: str
    port: int
    netns: str | None = None

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def datadir(self) -> DataDir:
        return DataDir(self.dir)

    def api(self, timeout: float = 2.0) -> ApiClient:
        return ApiClient(self.datadir, timeout=timeout)


@dataclass
class Lab:
    path: Path
    mode: str = "loopback"
    """``loopback`` or ``netns``."""
    port: int = 7946
    preset: str = "local"
    lab_id: int | None = None
    bridge_ns: str | None = None
    nodes: list[LabNode] = None  # type: ignore[assignment]
    demo: dict | None = None
    """``{"service": name, "port": published port}`` once the demo is deployed."""
    loopback_net: int = 0
    """Loopback layout: node i binds ``127.0.<loopback_net>.(10+i)``."""
    mesh: str = "auto"
    """The nodes' ``up --mesh`` (``auto``, ``kernel`` or ``userspace``), kept for restarts."""

    # ------------------------------------------------------------ layout and state

    @classmethod
    def plan(cls, path: Path, nodes: int, port: int, preset: str, use_netns: bool,
             loopback_net: int = 0) -> "Lab":
        """A new lab's layout (namespaces are created by :meth:`create_network`)."""
        path = Path(path).absolute()
        lab = cls(path=path, mode="netns" if use_netns else "loopback", port=port, preset=preset, nodes=[],
                  loopback_net=loopback_net)
        if use_netns:
            netns.check_available()
            lab.lab_id = netns.free_lab_id()
            lab.bridge_ns = netns.bridge_ns(lab.lab_id)
        for i in range(1, nodes + 1):
            host = netns.node_ip(lab.lab_id, i) if use_netns else f"127.0.{loopback_net}.{10 + i}"
            lab.nodes.append(LabNode(i, f"node-{i}", str(path / f"node-{i}"), host, port,
                                     netns.ns_name(lab.lab_id, i) if use_netns else None))
        return lab

    @classmethod
    def load(cls, path: Path) -> "Lab | None":
        """The lab described in ``path/lab.json``; for an older lab without one, its node dirs."""
        path = Path(path).absolute()
        try:
            data = json.loads((path / STATE_FILE).read_text())
        except FileNotFoundError:
            dirs = node_dirs(path)
            if not dirs:
                return None
            nodes = [LabNode(int(d.name.split("-")[1]), d.name, str(d), "?", 0) for d in dirs]
            return cls(path=path, nodes=nodes)
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {path / STATE_FILE}: {exc}") from None
        nodes = [LabNode(**n) for n in data.pop("nodes")]
        data.pop("path", None)
        return cls(path=path, nodes=nodes, **data)

    def save(self) -> None:
        data = asdict(self)
        data["path"] = str(self.path)
        tmp = self.path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path / STATE_FILE)

    def node(self, index: int) -> LabNode:
        for n in self.nodes:
            if n.index == index:
                return n
        raise LabError(f"the lab has no node {index} (nodes 1 to {len(self.nodes)})")

    # ------------------------------------------------------------ process state

    def running(self, node: LabNode) -> bool:
        return node.datadir.is_locked()

    def pid(self, node: LabNode) -> int | None:
        pid = node.datadir.read_pid()
        return pid if pid is not None and procfs.is_alive(pid) else None

    def any_running(self) -> bool:
        return any(self.running(n) for n in self.nodes)

    # ------------------------------------------------------------ bring up

    def prepare_dir(self) -> None:
        """Create the lab dir; remove node dirs left by a previous (stopped) lab: a lab starts fresh."""
        self.path.mkdir(parents=True, exist_ok=True)
        for d in node_dirs(self.path):
            remove_homes_of(d)
            remove_volumes_of(d)
            shutil.rmtree(d, ignore_errors=True)
        (self.path / STATE_FILE).unlink(missing_ok=True)

    def create_network(self) -> None:
        """Create the namespaces (netns labs); another lab racing for the same id makes us take the next."""
        if self.mode != "netns":
            return
        tried: list[int] = []
        while True:
            try:
                netns.create(self.lab_id, len(self.nodes))
                return
            except netns.LabIdTaken:
                tried.append(self.lab_id)
                if len(tried) >= 10:
                    raise
                self._renumber(netns.free_lab_id(avoid=tried))

    def _renumber(self, lab_id: int) -> None:
        self.lab_id = lab_id
        self.bridge_ns = netns.bridge_ns(lab_id)
        for node in self.nodes:
            node.host = netns.node_ip(lab_id, node.index)
            node.netns = netns.ns_name(lab_id, node.index)

    def spawn(self, node: LabNode, peers: tuple[str, ...], token: str | None = None) -> subprocess.Popen:
        """Start ``p2pswarm up`` for ``node`` in the background (own session; logs in node.log).

        ``token``: the cluster's join token, for a node that joins for the first time (a
        restarted node holds its certificate and needs none).  It goes in the environment
        (P2PSWARM_TOKEN), not on the command line.
        """
        datadir = node.datadir
        datadir.prepare()
        argv = [sys.executable, "-m", "p2pswarm.cli.main", "up", "--data-dir", str(datadir.path),
                "--bind", node.addr, "--name", node.name, "--preset", self.preset, "--log-level", "info",
                "--label", "lab=1", "--label", f"zone={'abc'[(node.index - 1) % 3]}", "--mesh", self.mesh,
                *own_interpreter_args(sys.executable)]  # the demo service runs this interpreter
        if peers:
            argv += ["--peers", ",".join(peers)]
        if node.netns:
            argv = netns.exec_prefix(node.netns) + argv
        env = dict(os.environ)
        src_root = str(Path(p2pswarm.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
        env.pop("P2PSWARM_DATA_DIR", None)
        env.pop("P2PSWARM_TOKEN", None)
        if token:
            env["P2PSWARM_TOKEN"] = token
        with datadir.open_log() as log:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, cwd=str(datadir.path), env=env)

    def wait_api(self, node: LabNode, proc: subprocess.Popen, timeout: float = START_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        client = node.api()
        while True:
            if proc.poll() is not None:
                raise LabError(f"{node.name} exited with code {proc.returncode} at start: "
                               f"{last_log_line(node.datadir.log_path)} (log: {node.datadir.log_path})")
            try:
                return client.get("/v1/info")
            except ApiError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"{node.name} did not answer within {timeout:g} s; see {node.datadir.log_path}")
            time.sleep(0.1)

    def start_all(self, say: Say = _quiet) -> None:
        """Start every node (node 1 creates the cluster, the others join through it)."""
        seed = self.nodes[0].addr
        token = None
        for node in self.nodes:
            say(f"starting {node.name}/{len(self.nodes)} at {node.addr}"
                + (f" in namespace {node.netns}" if node.netns else "") + "...")
            proc = self.spawn(node, () if node.index == 1 else (seed,), token)
            self.wait_api(node, proc)
            if node.index == 1:
                token = self.join_token(node)

    def join_token(self, node: LabNode) -> str:
        """The secure cluster's join token, from ``node``'s API."""
        try:
            return node.api().get("/v1/security/join-token")["token"]
        except (ApiError, KeyError, TypeError) as exc:
            raise LabError(f"cannot read the join token from {node.name}: {exc}; see {node.datadir.log_path}") \
                from None

    def wait_converged(self, say: Say = _quiet, timeout: float = CONVERGE_TIMEOUT) -> None:
        expected = len(self.nodes)

        def check() -> tuple[bool, str]:
            worst = min(alive_seen(n) for n in self.nodes)
            return worst >= expected, f"every node sees at least {worst}/{expected} alive"

        if not poll(check, timeout, "waiting for the cluster to converge", say):
            raise LabError(f"not every node saw {expected} nodes alive after {timeout:g} s; "
                           f"see the node.log files under {self.path}")

    def wait_raft(self, say: Say = _quiet, timeout: float = RAFT_TIMEOUT) -> None:
        voters = target_voters(len(self.nodes))
        client = self.nodes[0].api()

        def check() -> tuple[bool, str]:
            try:
                status = client.get("/v1/cluster")
                have = sum(1 for m in status["members"] if m["role"] == "voter")
                leader = status["leader"]
            except (ApiError, KeyError, TypeError):
                have, leader = 0, None
            return (have >= voters and bool(leader),
                    f"{have}/{voters} voters, {'a leader' if leader else 'no leader yet'}")

        if not poll(check, timeout, "electing the Raft group", say, interval=0.2):
            raise LabError(f"the Raft group did not reach {voters} voters and a leader within {timeout:g} s; "
                           f"see `p2pswarm cluster status --data-dir {self.nodes[0].dir}`")

    # ------------------------------------------------------------ the demo service

    def demo_spec(self, port: int = DEMO_PORT, replicas: int = DEMO_REPLICAS):
        from p2pswarm.cluster.spec import HealthCheck, PortSpec, RestartPolicy, ServiceSpec
        return ServiceSpec(DEMO_SERVICE, sys.executable, ("-m", "p2pswarm.lab.demo_app"), replicas=replicas,
                           ports=(PortSpec(published=port),),
                           restart=RestartPolicy(condition="any", delay=1.0),
                           # a start period: Python on a busy machine may need seconds to listen, and
                           # without one the agent would stop a replica that was only slow to start
                           health=HealthCheck("http", path="/health", interval=1.0, timeout=2.0, retries=3,
                                              start_period=15.0))

    def deploy_demo(self, port: int = DEMO_PORT, replicas: int = DEMO_REPLICAS) -> None:
        """Create the demo service (unless it exists) and record it; does not wait."""
        client = ApiClient(self.nodes[0].datadir, timeout=60.0)
        try:
            client.get(f"/v1/services/{DEMO_SERVICE}")
        except ApiError as exc:
            if exc.status != 404:
                raise LabError(f"cannot deploy the demo: {exc}") from None
            try:
                client.request("POST", "/v1/services", {"spec": self.demo_spec(port, replicas).to_dict()})
            except ApiError as exc2:
                raise LabError(f"cannot deploy the demo: {exc2}") from None
        self.demo = {"service": DEMO_SERVICE, "port": port}
        self.save()

    def wait_demo(self, say: Say = _quiet, timeout: float = 90.0) -> None:
        """Wait until the demo has its replica count running (health checks passed)."""
        client = ApiClient(self.nodes[0].datadir, timeout=5.0)

        def check() -> tuple[bool, str]:
            try:
                info = client.get(f"/v1/services/{DEMO_SERVICE}")
            except ApiError as exc:
                return False, f"no answer yet ({exc})"
            running, desired = info["running_current"], info["desired"]
            return (running >= desired and info["running"] == running,
                    f"{running} out of {desired} tasks running")

        if not poll(check, timeout, f"{DEMO_SERVICE}: overall progress", say, interval=0.2):
            raise LabError(f"the {DEMO_SERVICE} service did not converge within {timeout:g} s; see "
                           f"`p2pswarm service ps {DEMO_SERVICE} --data-dir {self.nodes[0].dir}`")

    def wait_mesh(self, say: Say = _quiet, timeout: float = 30.0) -> None:
        """Wait until every node's mesh listens on the demo port with a healthy backend to send to."""
        port = self.demo["port"]

        def serving(node: LabNode) -> bool:
            try:
                view = node.api().get("/v1/mesh")
            except ApiError:
                return False
            listening = port in view.get("data_plane", {}).get("listening", [])
            return listening and any(r["port"] == port and r["route"] != "excluded" for r in view["routes"])

        def check() -> tuple[bool, str]:
            ready = sum(serving(n) for n in self.nodes)
            return ready == len(self.nodes), f"{ready}/{len(self.nodes)} nodes serving port {port}"

        if not poll(check, timeout, "routing mesh", say, interval=0.2):
            raise LabError(f"the routing mesh does not serve port {port} on every node after {timeout:g} s; "
                           f"see `p2pswarm mesh routes {port} --data-dir {self.nodes[0].dir}`")

    def demo_urls(self) -> list[str]:
        if not self.demo:
            return []
        return [f"http://{n.host}:{self.demo['port']}/" for n in self.nodes]

    def try_command(self) -> str | None:
        """What a person on this machine can run to reach the demo through the mesh."""
        urls = self.demo_urls()
        if not urls:
            return None
        if self.mode == "netns":
            return f"ip netns exec {self.bridge_ns} curl {urls[0]}"
        return f"curl {urls[0]}"

    def mesh_supported(self) -> bool | None:
        """True if node 1 serves /v1/mesh, False if it answers 404, None if it does not answer."""
        try:
            self.nodes[0].api().get("/v1/mesh")
            return True
        except ApiError as exc:
            return False if exc.status == 404 else None

    # ------------------------------------------------------------ chaos primitives

    def crash(self, *nodes: LabNode) -> list[int]:
        """SIGKILL the nodes and everything they run, as machine crashes would; returns the pids killed."""
        return kill_at_once(self.victims(*nodes))

    def victims(self, *nodes: LabNode) -> set[int]:
        """What a crash of ``nodes`` kills: each node, every process it started, its tasks and, with netns, every
        process in its namespace.  Finding them scans /proc (a second or more on a busy machine): a caller that
        times the crash finds them first and then calls :func:`kill_at_once`."""
        victims: set[int] = set()
        for node in nodes:
            pid = self.pid(node)
            if pid is not None:
                victims.add(pid)
                victims.update(descendants(pid))
            victims.update(task_processes(Path(node.dir)))
            if node.netns:
                victims.update(netns.pids_in(node.netns))
        victims.discard(os.getpid())
        return victims

    def restart(self, node: LabNode) -> subprocess.Popen:
        """Start a stopped or crashed node again with its data dir, joining through the others."""
        if self.running(node):
            raise LabError(f"{node.name} is running; kill or stop it first")
        return self.spawn(node, tuple(n.addr for n in self.nodes if n.index != node.index))

    def signal_node(self, node: LabNode, sig: int) -> bool:
        pid = self.pid(node)
        if pid is None:
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    # ------------------------------------------------------------ tear down

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> dict:
        """Stop every node (gracefully, then SIGKILL), kill leftovers, delete the namespaces."""
        pids = []
        for node in self.nodes:
            pid = self.pid(node)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGCONT)  # a node a chaos run paused must be able to stop
            except ProcessLookupError:
                continue
            try:
                node.api().post("/v1/shutdown")
            except ApiError:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
            pids.append(pid)
        deadline = time.monotonic() + timeout
        killed = 0
        for pid in pids:
            while procfs.is_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if procfs.is_alive(pid):
                killed += 1
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        leftovers = []
        for node in self.nodes:
            leftovers += task_processes(Path(node.dir))
        for p in leftovers:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        failed_ns: list[str] = []
        if self.mode == "netns":  # the kernel path's tables go with the namespaces
            failed_ns = netns.destroy([n.netns for n in self.nodes if n.netns] + [self.bridge_ns])
        else:  # a node killed above could not remove its table: the lab's nodes share this namespace
            nft.remove_all(kernel_plan.table_name(n.host, n.port) for n in self.nodes)
        return {"stopped": len(pids), "killed": killed, "leftovers": len(leftovers), "failed_ns": failed_ns}


# ------------------------------------------------------------------ helpers

def node_dirs(lab: Path) -> list[Path]:
    if not lab.is_dir():
        return []
    return sorted((p for p in lab.iterdir() if p.is_dir() and p.name.startswith("node-")
                   and p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))


def members(node: LabNode, timeout: float = 2.0) -> list[dict]:
    try:
        return node.api(timeout).get("/v1/members")["members"]
    except (ApiError, KeyError, TypeError):
        return []


def alive_seen(node: LabNode) -> int:
    return sum(1 for m in members(node) if m.get("status") == "alive")


def poll(check: Callable[[], tuple[bool, str]], timeout: float, what: str, say: Say = _quiet,
         interval: float = 0.1) -> bool:
    """Call ``check() -> (done, state)`` until done or ``timeout``, reporting ``what: state``."""
    deadline = time.monotonic() + timeout
    while True:
        done, state = check()
        say(f"{what}: {state}")
        if done:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def kill_at_once(victims: set[int]) -> list[int]:
    """SIGKILL every pid in ``victims``, then wait (10 s at most) until they are gone; returns them sorted."""
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 10.0
    while any(procfs.is_alive(p) for p in victims) and time.monotonic() < deadline:
        time.sleep(0.02)
    return sorted(victims)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in procfs.PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def task_processes(data_dir: Path) -> list[int]:
    """Live processes of the node's tasks (each task's process group, checked by its task id)."""
    out = []
    for pidfile in sorted((data_dir / "tasks").glob("*/pid")):
        try:
            pgid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        task_id = pidfile.parent.name
        out += [p for p in procfs.group_members(pgid) if procfs.environ_has(p, "P2PSWARM_TASK_ID", task_id)]
    return out


def last_log_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if "error" in line.lower():
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no log"
