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

import dataclasses
import heapq
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.lab import netns, report
from p2pswarm.lab.cluster import DEMO_SERVICE, Lab, LabError, LabNode
from p2pswarm.lab.scenario import Action, Scenario

POLL = 0.25
"""Seconds between two polls of one node's member list (detection times are late by up to this)."""
TASK_POLL = 0.5
"""Seconds between two reads of the demo's tasks."""
LOAD_START = 1.5
"""Seconds between starting the load process and t = 0 (its interpreter must be up by then)."""
LOOPBACK_NET = 77
"""Chaos labs on loopback use 127.0.77.x, apart from `lab up`'s 127.0.0.x."""
VERIFY_TIMEOUT = 30.0
KV_LANES = 4
"""kv puts in flight at once, at most."""


def _now() -> float:
    return time.monotonic()


class ChaosRun:
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

    # ------------------------------------------------------------ actions

    def _log(self, do: str, label: str, ok: bool, node: str | None = None, detail: str = "",
             at: float | None = None, auto: bool = False) -> None:
        entry = {"at": at, "t": self.t(), "do": do, "label": label, "node": node, "ok": ok, "detail": detail}
        if auto:
            entry["auto"] = True
        self.actions.append(entry)
        self.say(f"t={entry['t']:.1f}s {label}: {'ok' if ok else 'FAILED'}{f' ({detail})' if detail else ''}")

    def _resolve(self, ref: int | str | None) -> LabNode | None:
        if ref == "leader":
            return self.leader()
        if ref == "last":
            with self.lock:
                name = next((n for n in reversed(self.killed_order)
                             if report.is_down(self.down, n, self.t())), None)
            return self.node_by_name(name) if name else None
        return self.lab.node(int(ref))

    def _act(self, a: Action) -> None:
        try:
            getattr(self, f"_do_{a.do}")(a)
        except (ApiError, LabError, netns.NetnsError, OSError) as exc:
            self._log(a.do, a.label(), False, detail=str(exc), at=a.at)

    def _do_kill(self, a: Action) -> None:
        node = self._resolve(a.node)
        if node is None or report.is_down(self.down, node.name, self.t()):
            self._log("kill", a.label(), False, getattr(node, "name", None), "no such node up", a.at)
            return
        pids = self.lab.crash(node)
        with self.lock:
            self.down.setdefault(node.name, []).append([self.t(), None])
            self.killed_order.append(node.name)
            self.paused.discard(node.name)
        self._log("kill", f"kill {node.name}", True, node.name, f"SIGKILL to {len(pids)} processes", a.at)

    def _do_restart(self, a: Action, auto: bool = False) -> None:
        node = self._resolve(a.node)
        if node is None or not report.is_down(self.down, node.name, self.t()):
            self._log("restart", a.label(), False, getattr(node, "name", None), "no killed node to restart", a.at)
            return
        self.procs.append(self.lab.restart(node))
        with self.lock:
            self.down[node.name][-1][1] = self.t()
        self._log("restart", f"restart {node.name}", True, node.name, at=a.at, auto=auto)
        if not self.use_netns:  # a new process starts without the faults its transport had
            for delay in (1.0, 3.0, 6.0):
                self.schedule(self.t() + delay, lambda n=node: self._apply_faults(n, quiet=True))

    def _do_partition(self, a: Action) -> None:
        groups = [[self.lab.node(i) for i in g] for g in a.groups]
        with self.lock:
            for g in groups:
                others = {n.name for other in groups if other is not g for n in other}
                for n in g:
                    self.blocked[n.name] = others
        failed = self._apply_all()
        self._log("partition", a.label(), not failed, detail=f"not applied on {', '.join(failed)}" if failed else "",
                  at=a.at)

    def _do_heal(self, a: Action | None = None) -> None:
        with self.lock:
            self.blocked.clear()
            self.loss.clear()
        failed = self._apply_all()
        self._log("heal", "heal", not failed, detail=f"not applied on {', '.join(failed)}" if failed else "",
                  at=a.at if a else None, auto=a is None)

    def _do_loss(self, a: Action) -> None:
        targets = [self.lab.node(i) for i in a.nodes] if a.nodes else list(self.lab.nodes)
        with self.lock:
            for n in targets:
                self.loss[n.name] = a.percent
        failed = self._apply_all(targets)
        self._log("loss", a.label(), not failed, detail=f"not applied on {', '.join(failed)}" if failed else "",
                  at=a.at)
        if a.duration:
            def end() -> None:
                with self.lock:
                    for n in targets:
                        if self.loss.get(n.name) == a.percent:
                            self.loss.pop(n.name)
                failed_end = self._apply_all(targets)
                self._log("loss", "loss ends", not failed_end, auto=True)
            self.schedule(a.at + a.duration, end)

    def _do_slow(self, a: Action) -> None:
        node = self._resolve(a.node)
        if node is None or not self.lab.signal_node(node, signal.SIGSTOP):
            self._log("slow", a.label(), False, getattr(node, "name", None), "node not running", a.at)
            return
        with self.lock:
            self.paused.add(node.name)
        self._log("slow", f"slow {node.name} {a.duration:g}s", True, node.name, "SIGSTOP", a.at)

        def resume() -> None:
            self.lab.signal_node(node, signal.SIGCONT)
            with self.lock:
                self.paused.discard(node.name)
            self._log("resume", f"resume {node.name}", True, node.name, "SIGCONT", auto=True)
            if not self.use_netns:
                self._apply_faults(node, quiet=True)
        self.schedule(a.at + a.duration, resume)

    # ------------------------------------------------------------ faults

    def _apply_all(self, nodes: list[LabNode] | None = None) -> list[str]:
        failed = []
        for node in nodes or self.lab.nodes:
            if not self._apply_faults(node):
                failed.append(node.name)
        return failed

    def _apply_faults(self, node: LabNode, quiet: bool = False) -> bool:
        """Make ``node``'s faults what the run wants now. False if it could not be applied
        (a killed or paused node in transport mode; it is applied again when it comes back)."""
        with self.lock:
            loss = self.loss.get(node.name, 0.0)
            blocked = [self.node_by_name(b) for b in sorted(self.blocked.get(node.name, ()))]
        if self.use_netns:
            try:
                netns.apply_faults(node.netns, loss, [b.host for b in blocked])
                return True
            except netns.NetnsError as exc:
                if not quiet:
                    self.notes.append(f"faults on {node.name}: {exc}")
                return False
        if not self.is_up(node):
            return False
        try:
            node.api(timeout=2.0).post("/v1/faults", {"drop_rate": loss / 100.0, "cut": [b.addr for b in blocked]})
            return True
        except ApiError as exc:
            if not quiet:
                self.notes.append(f"faults on {node.name}: {exc}")
            return False

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

    # ------------------------------------------------------------ writer

    def _writer(self) -> None:
        """Dispatch one write per slot (``writer.rate`` per second) until ``duration``.

        kv puts run in up to ``KV_LANES`` threads at once, so that a write stuck on a node
        without quorum does not stop the others; service updates run one at a time (each
        reads the version it updates, so their order is the order they were applied). Nodes
        are taken round-robin among those that are up and have no write in flight. A slot
        without a free lane or node is skipped and counted, never queued."""
        sc = self.sc
        if sc.write_rate <= 0:
            return
        kv_busy = threading.Semaphore(KV_LANES)
        svc_busy = threading.Semaphore(1)
        workers: list[threading.Thread] = []
        i = 0
        rr = 0
        while not self.stop_writer.is_set():
            due = i / sc.write_rate
            if due >= sc.duration:
                break
            wait = due - self.t()
            if wait > 0 and self.stop_writer.wait(wait):
                break
            kind = sc.write_kinds[i % len(sc.write_kinds)]
            i += 1
            with self.lock:  # a node still busy with a write (e.g. no quorum on its side) gets no other
                busy = set(self.writing)
            up = [n for n in self.up_nodes() if n.name not in busy]
            lane = kv_busy if kind == "kv" else svc_busy
            if not up or not lane.acquire(blocking=False):
                self.skipped_writes += 1
                continue
            node = up[rr % len(up)]
            rr += 1
            with self.lock:
                self.writing.append(node.name)
            th = threading.Thread(target=self._write, args=(node, kind, i, lane), daemon=True)
            workers.append(th)
            th.start()
        for th in workers:
            th.join(timeout=max(0.0, sc.write_timeout + 2))

    def _write(self, node: LabNode, kind: str, seq: int, lane: threading.Semaphore) -> None:
        start = self.t()
        entry: dict[str, Any] = {"seq": seq, "kind": kind, "node": node.name, "t": start}
        try:
            if kind == "kv":
                entry["key"] = f"chaos/{self.run_id}/{seq:05d}"
                ApiClient(node.datadir, timeout=self.sc.write_timeout).request(
                    "PUT", "/v1/kv/" + urllib.parse.quote(entry["key"], safe=""), {"value": str(seq)})
            else:
                entry["gen"] = seq
                entry["version"] = self._service_write(node, kind, seq)
            entry.update(ok=True, error="")
        except ApiError as exc:
            entry.update(ok=False, error=str(exc)[:200])
        finally:
            lane.release()
        entry["dt"] = round(self.t() - start, 3)
        with self.lock:
            self.writes.append(entry)
            self.writing.remove(node.name)

    def _service_write(self, node: LabNode, kind: str, gen: int) -> int | None:
        from p2pswarm.cluster.spec import ServiceSpec
        client = ApiClient(node.datadir, timeout=self.sc.write_timeout)
        info = client.get(f"/v1/services/{DEMO_SERVICE}")
        spec = ServiceSpec.from_dict(info["spec"])
        if kind == "service":
            spec = spec.replace(rollback=dataclasses.replace(spec.rollback, delay=gen / 1000.0))
        else:
            spec = spec.replace(env=tuple(sorted({**dict(spec.env), "GEN": str(gen)}.items())))
        done = client.request("POST", f"/v1/services/{DEMO_SERVICE}/update", {"spec": spec.to_dict(),
                                                                              "version": info["version"]})
        return done.get("version") if isinstance(done, dict) else None

    # ------------------------------------------------------------ settle and verify

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

    def _verify_writes(self) -> list[dict]:
        """Acknowledged writes missing from the final state (those that could not be read back
        at all are recorded in ``self.unverified`` instead)."""
        acked = [w for w in self.writes if w["ok"]]
        lost: list[dict] = []
        deadline = _now() + VERIFY_TIMEOUT
        for w in (w for w in acked if w["kind"] == "kv"):
            readable, value = self._read_kv(w["key"], deadline)
            if not readable:
                self.unverified.append({"kind": "kv", "seq": w["seq"], "key": w["key"]})
            elif value != str(w["seq"]):
                lost.append({"kind": "kv", "seq": w["seq"], "key": w["key"], "acked_at": w["t"] + w["dt"],
                             "found": value})
        gens = {k: max((w["gen"] for w in acked if w["kind"] == k), default=0) for k in ("service", "env")}
        if gens["service"] or gens["env"]:
            final = self._final_gens(gens, deadline)
            for w in acked:
                if w["kind"] not in ("service", "env"):
                    continue
                if w["kind"] not in final:
                    self.unverified.append({"kind": w["kind"], "seq": w["seq"], "gen": w["gen"]})
                elif final[w["kind"]] < w["gen"]:
                    lost.append({"kind": w["kind"], "seq": w["seq"], "gen": w["gen"], "acked_at": w["t"] + w["dt"],
                                 "found": final[w["kind"]]})
        if self.unverified:
            self.notes.append(f"{len(self.unverified)} acknowledged writes could not be read back within "
                              f"{VERIFY_TIMEOUT:g} s (not counted as lost)")
        return lost

    def _read_kv(self, key: str, deadline: float) -> tuple[bool, str | None]:
        """(readable, value) by a linearizable read on any up node; value None: no such key."""
        path = "/v1/kv/" + urllib.parse.quote(key, safe="")
        while True:
            for node in self.up_nodes():
                try:
                    return True, node.api(timeout=5.0).get(path)["value"]
                except ApiError as exc:
                    if exc.status == 404:
                        return True, None
            if _now() > deadline:
                return False, None
            time.sleep(0.5)

    def _final_gens(self, want: dict[str, int], deadline: float) -> dict[str, int]:
        """The generations in the leader's applied spec (waiting a moment for it to apply the last writes)."""
        final: dict[str, int] = {}
        while True:
            leader = self.leader()
            if leader is not None:
                try:
                    spec = leader.api(timeout=5.0).get(f"/v1/services/{DEMO_SERVICE}")["spec"]
                    final = {"service": round(float(spec["rollback"]["delay"]) * 1000),
                             "env": int(dict(spec.get("env", [])).get("GEN", 0) or 0)}
                    if all(final[k] >= v for k, v in want.items()):
                        return final
                except (ApiError, KeyError, ValueError, TypeError):
                    pass
            if _now() > deadline:
                return final
            time.sleep(0.5)

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
