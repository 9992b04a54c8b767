"""`p2pswarm lab chaos`: run a scenario against a fresh lab, then write the report.

The run, in order:

1. **Lab.** A new lab of ``nodes`` nodes in its own directory (loopback addresses
   ``127.0.77.x``, or one network namespace per node with ``netns``), the Raft group
   elected, the demo service deployed and converged.
2. **Run** (``duration`` seconds from t = 0):
   * the load process (:mod:`p2pswarm.lab.load`) sends ``load.rate`` requests per second,
     round-robin to the published port of every node (from the bridge namespace with netns);
   * the writer issues ``writer.rate`` writes per second, one at a time, to a node that is up,
     taking ``writer.kinds`` in turn: ``kv`` (put ``chaos/<run>/<seq>``), ``service`` (a
     service update of a field that restarts no task: the rollback delay is set to
     ``seq`` ms) or ``env`` (``GEN=seq``: a rolling update); each acknowledged one is recorded;
   * observers poll every node's member list and the leader's task list (``POLL`` s);
   * the actions fire at their ``at``.
3. **Settle.** Faults are healed, paused nodes resumed, killed nodes restarted; then up to
   ``settle`` seconds for every node to see every node alive and the demo to converge.
4. **Verify.** Every acknowledged kv put is read back (linearizable reads) and the final
   service spec must carry the last acknowledged service/env generation or a later one.
   An acknowledged write missing from the final state is *lost*; there must be none.
5. **Report.** ``chaos-<name>.json`` and ``chaos-<name>.png`` in the output directory
   (:mod:`p2pswarm.lab.report`); the lab is stopped and its namespaces deleted.

Partitions and loss are nftables rules inside each node's namespace with netns, and the
node's fault-injection transport (``POST /v1/faults``: node-to-node messages only, not the
clients' connections) otherwise.
"""

from __future__ import annotations

import heapq
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from p2pswarm.api.client import ApiError
from p2pswarm.lab import netns, report
from p2pswarm.lab.cluster import DEMO_SERVICE, Lab, LabError, LabNode
from p2pswarm.lab.faults import ChaosFaults
from p2pswarm.lab.scenario import Action, Scenario
from p2pswarm.lab.writes import ChaosWrites

POLL = 0.25
"""Seconds between two polls of one node's member list (detection times are late by up to this)."""
TASK_POLL = 0.5
"""Seconds between two reads of the demo's tasks."""
LOAD_START = 1.5
"""Seconds between starting the load process and t = 0 (its interpreter must be up by then)."""
LOOPBACK_NET = 77
"""Chaos labs on loopback use 127.0.77.x, apart from `lab up`'s 127.0.0.x."""


def _now() -> float:
    return time.monotonic()


class ChaosRun(ChaosFaults, ChaosWrites):
    """One chaos run, from a fresh lab to the report; its actions and faults come from
    :class:`ChaosFaults`, its writer and verifier from :class:`ChaosWrites`."""

    def __init__(self, scenario: Scenario, lab_dir: Path, out_dir: Path, use_netns: bool = False,
                 say: Callable[[str], None] = lambda s: None, keep: bool = False, port: int = 7946) -> None:
        self.sc = scenario
        self.lab_dir = Path(lab_dir).absolute()
        self.out_dir = Path(out_dir).absolute()
        self.use_netns = use_netns
        self.say = say
        self.keep = keep
        self.port = port
        self.run_id = secrets.token_hex(3)
        self.lab: Lab | None = None
        self.t0 = 0.0
        self.lock = threading.Lock()
        self.stop_writer = threading.Event()
        self.stop_observers = threading.Event()
        self.down: dict[str, list[list[float | None]]] = {}
        self.paused: set[str] = set()
        self.killed_order: list[str] = []
        self.loss: dict[str, float] = {}
        self.blocked: dict[str, set[str]] = {}
        self.views: dict[str, list] = {}
        self.tasks: list = []
        self.writes: list[dict] = []
        self.actions: list[dict] = []
        self.notes: list[str] = []
        self.unverified: list[dict] = []
        self.skipped_writes = 0
        self.raft: list = []
        """[t, leader name or None, term, [voter names]] from the leader, every TASK_POLL s."""
        self.writing: list[str] = []
        """Nodes with a write in flight (one entry per write)."""
        self.procs: list[subprocess.Popen] = []
        self.starting: dict[str, tuple[float, subprocess.Popen]] = {}
        """Restarted node name -> (end of its start grace on the run's clock, its process)."""
        self.load_proc: subprocess.Popen | None = None
        self.events: list = []
        self._seq = 0

    # ------------------------------------------------------------ helpers

    def t(self) -> float:
        return round(_now() - self.t0, 3)

    def node_by_name(self, name: str) -> LabNode:
        return next(n for n in self.lab.nodes if n.name == name)

    def is_up(self, node: LabNode) -> bool:
        with self.lock:
            return not report.is_down(self.down, node.name, self.t()) and node.name not in self.paused

    def up_nodes(self) -> list[LabNode]:
        return [n for n in self.lab.nodes if self.is_up(n)]

    def leader(self, record: bool = False) -> LabNode | None:
        """The up node that says it is the Raft leader (the highest term wins), or None."""
        best: tuple[int, LabNode, dict] | None = None
        for node in self.up_nodes():
            try:
                status = node.api(timeout=1.0).get("/v1/cluster")
            except ApiError:
                continue
            if status.get("leader") and status.get("leader") == status.get("id"):
                if best is None or status.get("term", 0) > best[0]:
                    best = (status.get("term", 0), node, status)
        if record:
            status = best[2] if best else {}
            self.raft.append([self.t(), best[1].name if best else None, status.get("term"),
                              sorted(m["name"] for m in status.get("members", ()) if m.get("role") == "voter")])
        return best[1] if best else None

    def schedule(self, at: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at, self._seq, fn))

    # ------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        sc = self.sc
        if self.use_netns:
            netns.check_available(need_nft=True)
        existing = Lab.load(self.lab_dir)
        if existing is not None and existing.any_running():
            raise LabError(f"a lab is running in {self.lab_dir}; stop it with "
                           f"`p2pswarm lab down --dir {self.lab_dir}` or pass another --dir")
        if existing is not None and existing.mode == "netns":
            existing.stop_all()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lab = self.lab = Lab.plan(self.lab_dir, sc.nodes, self.port, sc.preset, self.use_netns,
                                  loopback_net=LOOPBACK_NET)
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            lab.prepare_dir()
            lab.create_network()
            lab.save()
            lab.start_all(self.say)
            lab.wait_converged(self.say)
            lab.wait_raft(self.say)
            lab.deploy_demo(sc.port, sc.replicas)
            lab.wait_demo(self.say)
            mesh = lab.mesh_supported()
            if mesh is False:
                self.notes.append("the nodes have no routing mesh (GET /v1/mesh answers 404): every request to the "
                                  "published port fails until it lands")
            self.say(f"running scenario {sc.name} for {sc.duration:g} s "
                     f"({'nftables' if self.use_netns else 'fault-injection transport'} faults)...")
            observations = self._run_scenario(mesh, started_at)
        finally:
            self._cleanup()
        rep = report.build(observations)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        json_path = self.out_dir / f"chaos-{sc.name}.json"
        json_path.write_text(json.dumps(rep, indent=1, sort_keys=False) + "\n")
        rep["files"] = {"json": str(json_path)}
        try:
            png = self.out_dir / f"chaos-{sc.name}.png"
            report.plot(rep, str(png))
            rep["files"]["png"] = str(png)
        except RuntimeError as exc:  # no matplotlib
            rep["files"]["png_error"] = str(exc)
        return rep

    def _run_scenario(self, mesh: bool | None, started_at: str) -> dict[str, Any]:
        sc, lab = self.sc, self.lab
        self.t0 = _now() + LOAD_START
        self._start_load()
        threads = [threading.Thread(target=self._observe_members, args=(n,), daemon=True) for n in lab.nodes]
        threads.append(threading.Thread(target=self._observe_tasks, daemon=True))
        writer = threading.Thread(target=self._writer, daemon=True)
        for th in threads:
            th.start()
        writer.start()
        for action in sc.actions:
            self.schedule(action.at, lambda a=action: self._act(a))
        self._loop_until(sc.duration)
        self.stop_writer.set()
        self.say("load and actions done; healing and waiting for the cluster to settle...")
        self._finish_load()
        writer.join(timeout=sc.write_timeout + 5)
        self.writes.sort(key=lambda w: w["seq"])
        settle_start = self.t()
        self._heal_everything()
        settled = self._settle(sc.settle)
        final = self._final_state(settled, settle_start)
        self.say("verifying acknowledged writes...")
        lost = self._verify_writes()
        end = self.t()
        self.stop_observers.set()
        for th in threads:
            th.join(timeout=5)
        return {
            "scenario": sc.name, "mode": "netns" if self.use_netns else "transport", "nodes": sc.nodes,
            "duration": sc.duration, "started_at": started_at, "preset": sc.preset, "mesh": mesh,
            "replicas": sc.replicas, "down": self.down, "views": self.views, "tasks": self.tasks,
            "actions": self.actions, "requests": self._load_results(), "writes": self.writes, "lost": lost,
            "final": final, "end": end, "notes": self.notes, "unverified": self.unverified,
            "skipped_writes": self.skipped_writes, "raft": self.raft, "targets": [n.name for n in lab.nodes],
        }

    def _loop_until(self, until: float) -> None:
        """Fire scheduled events in time order until ``until`` (events due later are dropped)."""
        while True:
            now = self.t()
            if self.events and self.events[0][0] <= now:
                _, _, fn = heapq.heappop(self.events)
                fn()
                continue
            if now >= until:
                break
            nxt = self.events[0][0] if self.events else until
            time.sleep(max(0.0, min(nxt, until) - now, 0.0))
        self.events.clear()

    # ------------------------------------------------------------ load

    def _load_out(self) -> Path:
        return self.lab_dir / f"load-{self.run_id}.json"

    def _start_load(self) -> None:
        sc, lab = self.sc, self.lab
        if sc.load_rate <= 0:
            return
        targets = ",".join(f"{n.host}:{sc.port}" for n in lab.nodes)
        argv = [sys.executable, "-m", "p2pswarm.lab.load", "--targets", targets, "--rate", str(sc.load_rate),
                "--duration", str(sc.duration), "--timeout", str(sc.load_timeout), "--t0", repr(self.t0),
                "--out", str(self._load_out())]
        if self.use_netns:
            argv = netns.exec_prefix(lab.bridge_ns) + argv
        env = dict(os.environ)
        import p2pswarm
        src_root = str(Path(p2pswarm.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
        with open(self.lab_dir / "load.log", "w") as log:
            self.load_proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=log, env=env)

    def _finish_load(self) -> None:
        proc = self.load_proc
        if proc is None:
            return
        try:
            proc.wait(timeout=self.sc.load_timeout + 15)
        except subprocess.TimeoutExpired:
            self.notes.append("the load process did not end in time and was stopped")
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _load_results(self) -> list:
        path = self._load_out()
        if self.sc.load_rate <= 0:
            return []
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            self.notes.append(f"no load results: {exc}")
            return []
        finally:
            path.unlink(missing_ok=True)
        return data["requests"]

    # ------------------------------------------------------------ observers

    def _observe_members(self, node: LabNode) -> None:
        rows = self.views.setdefault(node.name, [])
        while not self.stop_observers.is_set():
            if self.is_up(node):
                try:
                    members = node.api(timeout=1.0).get("/v1/members")["members"]
                    rows.append([self.t(), {m["name"]: m["status"] for m in members}])
                except (ApiError, KeyError, TypeError):
                    pass
            self.stop_observers.wait(POLL)

    def _observe_tasks(self) -> None:
        """The demo's tasks and the Raft leader, term and voters, as the current leader sees them."""
        while not self.stop_observers.is_set():
            source = self.leader(record=True)
            if source is not None:
                try:
                    rows = source.api(timeout=1.0).get(f"/v1/services/{DEMO_SERVICE}/tasks")["tasks"]
                    current = [[r.get("node_name"), r["state"], r.get("id")] for r in rows
                               if r.get("current") and r.get("desired") == "running"]
                    self.tasks.append([self.t(), self.sc.replicas, current])
                except (ApiError, KeyError, TypeError):
                    pass
            self.stop_observers.wait(TASK_POLL)

    # ------------------------------------------------------------ settle

    def _heal_everything(self) -> None:
        for name in sorted(self.paused):
            self.lab.signal_node(self.node_by_name(name), signal.SIGCONT)
            self._log("resume", f"resume {name}", True, name, "SIGCONT", auto=True)
        with self.lock:
            self.paused.clear()
        if self.blocked or self.loss:
            self._do_heal(None)
        for node in self.lab.nodes:
            if report.is_down(self.down, node.name, self.t()):
                self._do_restart(Action(self.t(), "restart", node=node.index), auto=True)
        self._loop_until(self.t())  # nothing else is due; drop follow-ups
        if not self.use_netns:
            for node in self.lab.nodes:
                self._apply_faults(node, quiet=True)

    def _settle(self, timeout: float) -> bool:
        deadline = _now() + timeout
        lab = self.lab
        while _now() < deadline:
            if not self.use_netns:
                for node in lab.nodes:  # restarted nodes: make sure no stale fault survives
                    try:
                        faults = node.api(timeout=1.0).get("/v1/faults")
                        if faults.get("cut") or faults.get("drop_rate"):
                            node.api(timeout=1.0).request("DELETE", "/v1/faults")
                    except ApiError:
                        pass
            try:
                alive = min(len([m for m in lab_members(n) if m == "alive"]) for n in lab.nodes)
                info = lab.nodes[0].api(timeout=2.0).get(f"/v1/services/{DEMO_SERVICE}")
                converged = info["running_current"] >= info["desired"] and info["running"] == info["running_current"]
            except (ApiError, KeyError):
                alive, converged = 0, False
            self.say(f"settling: every node sees at least {alive}/{len(lab.nodes)} alive, "
                     f"demo {'converged' if converged else 'converging'}")
            if alive >= len(lab.nodes) and converged and self.leader() is not None:
                return True
            time.sleep(0.5)
        self.notes.append(f"the cluster did not settle within {timeout:g} s after the run")
        return False

    def _final_state(self, settled: bool, settle_start: float) -> dict[str, Any]:
        out: dict[str, Any] = {"settled": settled, "settle_s": round(self.t() - settle_start, 3)}
        try:
            info = self.lab.nodes[0].api(timeout=2.0).get(f"/v1/services/{DEMO_SERVICE}")
            out.update(replicas_running=info["running_current"], replicas_desired=info["desired"])
        except ApiError:
            pass
        out["alive_seen"] = {n.name: len([m for m in lab_members(n) if m == "alive"]) for n in self.lab.nodes}
        leader = self.leader()
        out["leader"] = leader.name if leader else None
        return out

    # ------------------------------------------------------------ cleanup

    def _cleanup(self) -> None:
        self.stop_writer.set()
        self.stop_observers.set()
        if self.load_proc is not None and self.load_proc.poll() is None:
            self.load_proc.kill()
            self.load_proc.wait()
        if self.lab is not None:
            for name in list(self.paused):
                self.lab.signal_node(self.node_by_name(name), signal.SIGCONT)
            if not self.keep:
                self.say("stopping the lab...")
                result = self.lab.stop_all()
                if result["failed_ns"]:
                    self.notes.append(f"could not delete namespaces {', '.join(result['failed_ns'])}")
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def lab_members(node: LabNode) -> list[str]:
    try:
        return [m["status"] for m in node.api(timeout=2.0).get("/v1/members")["members"]]
    except (ApiError, KeyError, TypeError):
        return []
