"""bench_mesh's kernel cases: two real nodes started with ``--mesh kernel`` in front of its backend.

Node A binds the backend's own address (bench_mesh's ``NGINX``), node B another loopback address.
One service with one replica, placed on A: a stand-in process (``sleep``) with two published ports
whose fixed targets are two of the backend's ports, one per case. The replica's addresses are then
A's host and those ports: the nginx that every other case of the benchmark measures (on ports of
their own), so the kernel figures compare with the direct, HAProxy and user-space ones on the same
server. A connection to A's first published port is DNATed on A's rules to A's own replica
(``kernel_local``); one to B's second published port to A's replica, a remote replica
(``kernel_remote``). Each case's own backend port keeps its connections from meeting nginx's
TIME_WAIT sockets of another case (see simulations/mesh_servers.py). Nothing in user space touches
those connections, which the user-space data planes' counters of the ports show
(``userspace_conns``: 0 when every connection took the kernel path).

When the kernel path is unusable (not root, no nft, a node fell back to user space) the kernel
cases are not run and ``reason`` says why in one line. The nodes stop with SIGTERM, which removes
their nft tables; ``tables_left`` lists any that stayed (then removed here, by their names).
"""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pswarm.api.client import ApiError  # noqa: E402
from p2pswarm.mesh import nft  # noqa: E402
from p2pswarm.mesh.kernel_plan import table_name  # noqa: E402
from p2pswarm.testing.localcluster import LocalCluster, LocalNode, free_port, wait_until  # noqa: E402

SERVICE = "kernelbench"
NODE_B = "127.0.6.21"
READY_TIMEOUT = 90.0
"""Seconds for the two nodes, the service and both kernel routes (a loaded 2-core machine)."""
STOP_TIMEOUT = 20.0
"""Seconds a node has after SIGTERM to remove its rules and exit."""


def nft_tables() -> set[str]:
    """``family name`` of every nftables table in this namespace (empty when nft cannot list them)."""
    try:
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.removeprefix("table ").strip() for line in out.splitlines() if line.startswith("table ")}


class KernelMesh:
    """Two ``--mesh kernel`` nodes serving two published ports, one per case (see the module docstring)."""

    def __init__(self, backend_host: str, local_port: int, remote_port: int, preset: str = "local",
                 skip: str | None = None) -> None:
        """``local_port``, ``remote_port``: the backend's port for ``kernel_local`` and for ``kernel_remote``;
        ``preset``: the nodes' (``local`` probes less often than ``test``: less CPU taken from the load);
        ``skip``: why this run leaves the kernel cases out (then nothing starts)."""
        self.backend = (backend_host, local_port, remote_port)
        self.preset = preset
        self.reason: str | None = skip or nft.probe()
        self.urls: dict[str, str] = {}
        """{kernel_local, kernel_remote: base URL}; empty when the kernel path is unavailable."""
        self.tables_left: list[str] | None = None
        self.ports = (0, 0)
        """The published ports of ``kernel_local`` (on A) and ``kernel_remote`` (on B)."""
        self.tmp: Path | None = None
        self.cluster: LocalCluster | None = None
        self._baseline: dict[str, int] = {}
        self.userspace: int | None = None
        """Connections user space accepted on the published port during the run (see :meth:`count_userspace`)."""

    # ------------------------------------------------------------ start

    def start(self) -> "KernelMesh":
        if self.reason is not None:
            return self
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-mesh-k-"))
        self.cluster = LocalCluster(self.tmp, preset=self.preset, mesh="kernel")
        a = self._node(0, self.backend[0])
        b = self._node(1, NODE_B)
        self.cluster.start(0)
        wait_until(lambda: self.cluster.join_token((a.addr,)), READY_TIMEOUT, "node A's join token", 0.1)
        self.cluster.start(1, (a.addr,))
        first = self.cluster.published_port()
        self.ports = (first, self.cluster.published_port(taken=(first,)))
        publish = [arg for pub, target in zip(self.ports, self.backend[1:]) for arg in ("-p", f"{pub}:{target}")]
        made = self.cluster.cli("service", "create", SERVICE, "--replicas", "1", "--constraint", f"node.name=={a.name}",
                                *publish, "--detach", "--data-dir", str(a.data_dir), "--", "sleep", "86400")
        if made.returncode != 0:
            raise RuntimeError(f"kernel nodes: service create failed: {made.stderr.strip()}")
        (off,) = wait_until(lambda: self._kernel_state(a, b), READY_TIMEOUT,
                            "both nodes routing the kernel service's ports in the kernel", 0.2)
        if off:
            self.reason = f"--mesh kernel nodes forward in user space: {off}"
            return self
        self.urls = {"kernel_local": f"http://{a.host}:{self.ports[0]}",
                     "kernel_remote": f"http://{b.host}:{self.ports[1]}"}
        for url in self.urls.values():
            wait_until(lambda: answers(url), 15, f"{url} to answer")
        self._baseline = self._userspace_accepted()
        return self

    def _node(self, index: int, host: str) -> LocalNode:
        node = self.cluster.node(index)
        node.host, node.port = host, free_port(host)
        node.addr = f"{host}:{node.port}"
        return node

    def _kernel_state(self, *nodes: LocalNode) -> tuple[str] | None:
        """``("",)`` once every node routes both published ports in the kernel; ``(why not,)`` once a node has
        fallen back to user space for good (its kernel path is off); None while routes or rules are on their way."""
        for node in nodes:
            try:
                view = node.api.get("/v1/mesh")
                rows = [r for r in view["routes"] if r["port"] in self.ports and r["route"] != "excluded"]
            except (ApiError, KeyError, TypeError):
                return None
            kernel = view.get("kernel") or {}
            if kernel.get("on") is False and "not probed" not in str(kernel.get("off_why")):
                return (f"{node.name}: {kernel.get('off_why') or 'kernel path off'}",)
            if {r["port"] for r in rows} != set(self.ports) or any(r.get("path") != "kernel" for r in rows):
                return None
        return ("",)

    # ------------------------------------------------------------ during the run

    def _userspace_accepted(self) -> dict[str, int]:
        """Connections each node's user-space data plane accepted on the published ports so far."""
        out = {}
        for node in self.cluster.nodes.values():
            try:
                ports = node.api.get("/v1/mesh")["data_plane"].get("ports") or {}
            except (ApiError, KeyError, TypeError, AttributeError):
                continue
            out[node.name] = sum(int((ports.get(str(port)) or {}).get("accepted", 0)) for port in self.ports)
        return out

    def count_userspace(self) -> None:
        """Set ``userspace``: connections to the published ports that the nodes' user-space data planes
        accepted since the start (0: every connection took the kernel path). Call it after the load."""
        if not self.urls:
            return
        time.sleep(1.2)  # the data planes report their counters about once a second
        now = self._userspace_accepted()
        self.userspace = sum(now.get(name, 0) - self._baseline.get(name, 0) for name in now)

    # ------------------------------------------------------------ stop

    def close(self) -> None:
        """SIGTERM both nodes (they remove their tables), note any table left and remove it, clean up."""
        if self.cluster is None:
            return
        try:
            for node in self.cluster.nodes.values():
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGTERM)
            for node in self.cluster.nodes.values():
                if node.proc is not None:
                    try:
                        node.proc.wait(STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        pass
            ours = {f"inet {table_name(n.host, n.port)}" for n in self.cluster.nodes.values()}
            self.tables_left = sorted(ours & nft_tables())  # only ours: other tests may run nodes meanwhile
            for table in self.tables_left:
                subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True, timeout=10)
        finally:
            self.cluster.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "KernelMesh":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/small.txt", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


CONNTRACK_COUNTERS = ("invalid", "insert_failed", "drop", "early_drop", "clashres")


def conntrack_counters() -> dict[str, int]:
    """This namespace's conntrack counters (summed over CPUs) that lose or delay new connections, and ``entries``
    (the table's size): bench_mesh takes their change over its small-request runs, to show whether conntrack
    dropped SYNs (a full table) while it measured. Empty when conntrack is not loaded."""
    try:
        lines = Path("/proc/net/stat/nf_conntrack").read_text().split("\n")
    except OSError:
        return {}
    names = lines[0].split()
    rows = [dict(zip(names, (int(v, 16) for v in line.split()))) for line in lines[1:] if line.strip()]
    if not rows:
        return {}
    return {"entries": rows[0].get("entries", 0), **{k: sum(r.get(k, 0) for r in rows) for k in CONNTRACK_COUNTERS}}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def bulk_figures(km: KernelMesh, bulk: dict[str, dict], bulk_haproxy: str) -> dict:
    """``kernel_bulk_mb_s`` and its ratio to the ``bulk_haproxy`` case of the same run (``bulk``: run_bulk's,
    with a ``kernel`` case when measured), also as the median of per-round ratios (``_paired``)."""
    key = f"kernel_bulk_ratio_vs_{bulk_haproxy}"
    if not km.urls or "kernel" not in bulk or bulk_haproxy not in bulk:
        return {"kernel_bulk_mb_s": None, key: None, f"{key}_paired": None}
    mine, theirs = bulk["kernel"], bulk[bulk_haproxy]
    paired = [x / y for x, y in zip(mine["runs"], theirs["runs"]) if y]
    return {"kernel_bulk_mb_s": mine["mbps"], key: ratio(mine["mbps"], theirs["mbps"]),
            f"{key}_paired": round(statistics.median(paired), 3) if paired else None}


def figures(km: KernelMesh, small: dict[str, dict[str, dict]], bulk: dict[str, dict], *, latency: str,
            bulk_haproxy: str) -> dict:
    """The kernel keys of bench_mesh's result, from the medians of the same run as the other cases
    (``small``: run_cases's, ``bulk``: run_bulk's with a ``kernel`` case); ``latency``: the mode whose
    p50 gives the added latency; ``bulk_haproxy``: the HAProxy bulk case compared with. Null figures and
    ``kernel_unavailable`` (one line) when the kernel path was not measured."""
    names = ("kernel_local_rps", "kernel_remote_rps", "kernel_newconn_per_s", "kernel_remote_newconn_per_s",
             "kernel_added_p50_ms", "kernel_added_p50_ms_remote", "kernel_ratio_vs_haproxy",
             "kernel_newconn_ratio_vs_haproxy", "kernel_ratio_vs_direct", "kernel_newconn_ratio_vs_direct")
    out: dict = {"kernel_unavailable": km.reason, **dict.fromkeys(names), **bulk_figures(km, bulk, bulk_haproxy),
                 "kernel_userspace_conns": km.userspace, "kernel_tables_left": km.tables_left}
    if not km.urls:
        return out

    def g(case: str, mode: str, key: str = "rps") -> float | None:
        return small[case][mode][key] if case in small else None

    def added(case: str) -> float | None:
        mine, direct = g(case, latency, "p50_ms"), g("direct", latency, "p50_ms")
        return round(mine - direct, 3) if mine is not None and direct is not None else None

    out.update({
        "kernel_local_rps": g("kernel_local", "keepalive"), "kernel_remote_rps": g("kernel_remote", "keepalive"),
        "kernel_newconn_per_s": g("kernel_local", "newconn"),
        "kernel_remote_newconn_per_s": g("kernel_remote", "newconn"),
        "kernel_added_p50_ms": added("kernel_local"), "kernel_added_p50_ms_remote": added("kernel_remote"),
        "kernel_ratio_vs_haproxy": ratio(g("kernel_local", "keepalive"), g("haproxy", "keepalive")),
        "kernel_newconn_ratio_vs_haproxy": ratio(g("kernel_local", "newconn"), g("haproxy", "newconn")),
        "kernel_ratio_vs_direct": ratio(g("kernel_local", "keepalive"), g("direct", "keepalive")),
        "kernel_newconn_ratio_vs_direct": ratio(g("kernel_local", "newconn"), g("direct", "newconn")),
    })
    return out
