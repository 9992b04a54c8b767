#!/usr/bin/env python3
"""Does the simulator agree with real processes?  One zone-outage scenario, run both ways, measured one way.

The scenario (:data:`SCENARIO`, ``--quick``: :data:`QUICK`): ``nodes`` nodes in three zones (node i in zone
``abc[i % 3]``, as both the lab and ``sim cluster`` lay them out), ``services`` services of ``replicas``
replicas spread over the zones, one preset; once every replica runs, one zone crashes at one instant: ``b``,
or ``c`` when ``b`` holds the Raft leader.

* **sim**: :class:`~p2pswarm.sim.cluster_sim.ClusterSimulation` (``p2pswarm sim cluster``), seeds 1..N;
* **real**: a loopback lab (:class:`~p2pswarm.lab.cluster.Lab`: one ``p2pswarm up`` process per node,
  secure, the zone labels above), services of ``sleep`` tasks, the zone SIGKILLed at one instant (nodes and their
  tasks, :meth:`Lab.victims`, found before the clock starts); a fresh lab per repeat.

Both sides are measured from what the nodes themselves recorded, read after the outage (never by polling,
whose period would blur the figures), with the same functions:

* ``detect_*``: per crashed node, from the kill until *every* live node's SWIM view marks it dead (the time
  each view entered ``dead``: ``status_since`` in the core, ``status_for_s`` through ``/v1/members``);
  p50 and max over the crashed nodes;
* ``restore_*``: per service that ran a replica in the zone, from the kill until the replacements all run
  (the ``since`` of the current running tasks in ``service ps`` rows of the Raft leader's applied state:
  when the leader recorded them running); p50, p99 and max over those services.

Each side's figure is the median over its repeats; ``ratio`` is sim / real and ``agree`` says every ratio
is within 0.75..1.25.  ``probe_failures_before``: SWIM probes that failed in the ``PRE_KILL_WINDOW`` seconds
before the outage, all nodes together; nobody is down then, so on the real side each one is a probe the busy
machine answered late, and Lifeguard stretches the probing (and the detection) of the nodes that saw it.
Prints progress on stderr and one JSON object as the last line of stdout.
Everything it starts is killed by pid (:meth:`Lab.stop_all`).  ``--quick`` is the short run tests make.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pswarm.api.client import ApiError  # noqa: E402
from p2pswarm.cluster.spec import ServiceSpec  # noqa: E402
from p2pswarm.consensus.autopilot import target_voters  # noqa: E402
from p2pswarm.lab.cluster import Lab, LabNode, kill_at_once  # noqa: E402
from p2pswarm.membership.messages import DEAD  # noqa: E402
from p2pswarm.node.presets import preset as load_preset  # noqa: E402
from p2pswarm.sim import cluster_scenario  # noqa: E402
from p2pswarm.sim.cluster_scenario import Fault  # noqa: E402
from p2pswarm.sim.cluster_sched import EPOCH  # noqa: E402
from p2pswarm.sim.cluster_sim import ClusterSimulation  # noqa: E402
from p2pswarm.sim.stats import percentile  # noqa: E402
from p2pswarm.testing.localcluster import free_port, wait_until  # noqa: E402


@dataclass(frozen=True)
class Shape:
    nodes: int = 20
    services: int = 6
    replicas: int = 3
    preset: str = "local"
    repeats: int = 3
    zones: int = 3
    """Fixed: the lab labels node i (1-based) with zone ``abc[(i - 1) % 3]``."""
    killed_zone: int = 1
    """Zone ``b`` (it holds voters), or ``c`` if the Raft leader is in ``b``: the outage never takes the leader
    (that is the leader-loss scenario), on either side."""


SCENARIO = Shape()
QUICK = replace(SCENARIO, nodes=6, services=2, repeats=1)
FIGURES = ("detect_p50_s", "detect_max_s", "restore_p50_s", "restore_p99_s", "restore_max_s")
AGREE = (0.75, 1.25)
SIM_SEEDS = 20
"""Simulated runs (cheap, and the slowest detection varies a lot from seed to seed)."""
WARMUP = 20.0
"""Simulated seconds before the outage: the Raft group and autopilot's learners settle, every replica runs."""
AFTER = 60.0
"""Seconds (simulated, or at most real) the outage is watched."""
SETTLE = 3.0
"""Real seconds between the last replica running and the outage (the simulator has its warm-up)."""
PRE_KILL_WINDOW = SETTLE
"""Seconds before the outage over which SWIM probe failures are counted: with nobody down, each is a probe that
a busy machine answered late (Lifeguard then stretches that node's probing, and detection with it)."""
LOOPBACK_NET = 78
"""Labs of this benchmark use 127.0.78.x (chaos uses .77, `lab up` .0)."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def service_spec(k: int, replicas: int) -> ServiceSpec:
    """Service ``k`` of the real side: a task that just runs, spread over the zones like the simulator's."""
    return ServiceSpec(name=f"svc{k:05d}", command="sleep", args=("3600",), replicas=replicas,
                       spread="node.labels.zone")


# ------------------------------------------------------------------ the measures (the same for both sides)

def detection(dead_at: dict[str, dict[str, float | None]], crashed: Iterable[str], kill_at: float) -> list[float]:
    """Per crashed node: seconds from ``kill_at`` until every observer (``dead_at``: observer -> crashed node ->
    when that observer's view entered dead, None if it has not) had it dead; inf if one never did."""
    out = []
    for node in sorted(crashed):
        marks = [views.get(node) for views in dead_at.values()]
        out.append(math.inf if any(m is None for m in marks) else max(m for m in marks if m is not None) - kill_at)
    return out


def running_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["current"] and r["desired"] == "running" and r["state"] == "running"]


def restoration(before: dict[str, set[str]], after: dict[str, list[dict]], replicas: int,
                kill_at: float) -> list[float]:
    """Per service that lost a running task at the kill (``before``: service -> ids of its running tasks then
    on the crashed nodes): seconds from ``kill_at`` until its replacements all ran, by the ``since`` of its
    current running tasks in ``after`` (``service ps`` rows); inf if it is short at the end."""
    out = []
    for name in sorted(s for s, lost in before.items() if lost):
        running = running_rows(after.get(name, []))
        fresh = [r["since"] for r in running if r["since"] > kill_at]
        out.append(max(fresh) - kill_at if len(running) >= replicas and fresh else math.inf)
    return out


def figures(detect: list[float], restore: list[float]) -> dict[str, float | None]:
    def num(v: float | None) -> float | None:
        return None if v is None else round(v, 3) if math.isfinite(v) else math.inf
    return {"detect_p50_s": num(percentile(detect, 50)), "detect_max_s": num(max(detect, default=None)),
            "restore_p50_s": num(percentile(restore, 50)), "restore_p99_s": num(percentile(restore, 99)),
            "restore_max_s": num(max(restore, default=None))}


# ------------------------------------------------------------------ the simulator

def zone_to_kill(shape: Shape, leader_zone: int) -> int:
    return shape.killed_zone if leader_zone != shape.killed_zone else (shape.killed_zone + 1) % shape.zones


def run_sim(shape: Shape, seed: int) -> dict[str, Any]:
    sc = replace(cluster_scenario.builtin("zone-outage", nodes=shape.nodes, zones=shape.zones, services=shape.services,
                                          replicas=shape.replicas, seed=seed, preset=shape.preset, warmup=WARMUP,
                                          duration=AFTER, requests_per_s=0.0), faults=())
    sim = ClusterSimulation(sc)
    crashed: list[int] = []
    before: dict[str, set[str]] = {}
    failures: list[int] = []

    def probe_failures() -> None:
        failures.append(sum(core.counters.get("probe_failures", 0) for core in sim.cores))

    def outage() -> None:  # what the real side does once every replica runs: choose the zone, note, crash
        leader = sim.group.leader()
        if leader is None:
            raise SystemExit(f"bench_sim_vs_real: no Raft leader at the end of the warm-up (seed {seed})")
        zone = zone_to_kill(shape, sim.zone_of[leader.index])
        crashed.extend(i for i in range(sc.nodes) if sim.zone_of[i] == zone)
        probe_failures()
        ids = {sim.ids[i] for i in crashed}
        for name in sim.service_names:
            before[name] = {r["id"] for r in running_rows(leader.state.service_ps(name)) if r["node"] in ids}
        sim._fault(Fault(0.0, "zone-down", zone=zone))
    sim.at(sc.warmup - PRE_KILL_WINDOW, probe_failures)
    sim.at(sc.warmup, outage)  # after the simulation's own fault-window mark at the same instant
    started = time.monotonic()
    sim.run()
    kill_at = sc.warmup
    dead_at: dict[str, dict[str, float | None]] = {}
    for j, core in enumerate(sim.cores):
        if sim.crashed(j):
            continue
        views = dead_at[sim.ids[j]] = {}
        for i in crashed:
            m = core.member(sim.ids[i])
            views[sim.ids[i]] = m.status_since if m is not None and m.status == DEAD else None
    state = (sim.group.leader() or sim.group.live()[0]).state
    after = {name: state.service_ps(name) for name in sim.service_names}
    for rows in after.values():  # the leader's wall clock -> simulated seconds
        for r in rows:
            r["since"] -= EPOCH
    return {"seed": seed, "zone": "abc"[sim.zone_of[crashed[0]]], "probe_failures_before": failures[1] - failures[0],
            "wall_s": round(time.monotonic() - started, 2),
            **figures(detection(dead_at, [sim.ids[i] for i in crashed], kill_at),
                      restoration(before, after, shape.replicas, kill_at))}


# ------------------------------------------------------------------ real processes

def poll(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """:func:`wait_until` at a gentle 0.25 s pace; a timeout ends the bench with one line."""
    try:
        return wait_until(cond, timeout, what, interval=0.25)
    except AssertionError as exc:
        raise SystemExit(f"bench_sim_vs_real: {exc}") from None


def get(node: LabNode, path: str) -> Any:
    try:
        return node.api(timeout=3.0).get(path)
    except ApiError:
        return None


def members_at(node: LabNode) -> tuple[float, list[dict]] | None:
    """(wall time of the answer, ``/v1/members``) of ``node``; the time is the middle of the round trip."""
    sent = time.time()
    answer = get(node, "/v1/members")
    return None if answer is None else ((sent + time.time()) / 2, answer["members"])


def leader_of(nodes: list[LabNode]) -> LabNode | None:
    for node in nodes:
        status = get(node, "/v1/cluster") or {}
        if status.get("leader") and status.get("leader") == status.get("id"):
            return node
    return None


def service_rows(node: LabNode, shape: Shape) -> dict[str, list[dict]] | None:
    out = {}
    for k in range(shape.services):
        answer = get(node, f"/v1/services/{service_spec(k, 0).name}/tasks")
        if answer is None:
            return None
        out[service_spec(k, 0).name] = answer["tasks"]
    return out


def restored(rows: dict[str, list[dict]] | None, replicas: int, gone: set[str]) -> bool:
    return rows is not None and all(
        len([r for r in running_rows(svc) if r["node"] not in gone]) >= replicas for svc in rows.values())


def probe_failures(nodes: list[LabNode]) -> int:
    """SWIM probe failures the nodes counted so far (``p2pswarm_swim_probe_failures_total`` of ``/metrics``)."""
    total = 0
    for node in nodes:
        for line in str(get(node, "/metrics") or "").splitlines():
            if line.startswith("p2pswarm_swim_probe_failures_total "):
                total += int(float(line.split()[1]))
    return total


def run_real(shape: Shape, repeat: int, workdir: Path) -> dict[str, Any]:
    port = free_port(f"127.0.{LOOPBACK_NET}.11")  # the nodes share it, each on its own address
    lab = Lab.plan(workdir / f"lab-{repeat}", shape.nodes, port, shape.preset, False, loopback_net=LOOPBACK_NET)
    try:
        lab.prepare_dir()
        lab.save()
        lab.start_all(say)
        lab.wait_converged(say)
        lab.wait_raft(say)
        first = lab.nodes[0]
        members = target_voters(shape.nodes) + min(load_preset(shape.preset).autopilot.max_learners,
                                                   shape.nodes - target_voters(shape.nodes))
        poll(lambda: len([m for m in (get(first, "/v1/cluster") or {}).get("members", ())
                          if m.get("role") in ("voter", "learner")]) >= members, 60, f"{members} Raft members")
        for k in range(shape.services):
            first.api(timeout=30.0).request("POST", "/v1/services", {"spec": service_spec(k, shape.replicas).to_dict()})
        poll(lambda: restored(service_rows(first, shape), shape.replicas, set()), 120, "every replica running")
        failures = probe_failures(lab.nodes)
        time.sleep(PRE_KILL_WINDOW)
        leader = poll(lambda: leader_of(lab.nodes), 30, "a Raft leader")
        zone = zone_to_kill(shape, (leader.index - 1) % shape.zones)
        victims = [n for n in lab.nodes if (n.index - 1) % shape.zones == zone]
        live = [n for n in lab.nodes if n not in victims]
        ids = {m["name"]: m["id"] for m in (get(first, "/v1/members") or {}).get("members", ())}
        gone = {ids[n.name] for n in victims}
        snapshot = service_rows(leader, shape) or {}
        before = {name: {r["id"] for r in running_rows(rows) if r["node"] in gone} for name, rows in snapshot.items()}
        failures = probe_failures(lab.nodes) - failures
        say(f"real #{repeat}: crashing zone {'abc'[zone]} ({', '.join(n.name for n in victims)}); leader {leader.name}")
        pids = lab.victims(*victims)  # found first: scanning /proc takes a second or more on a busy machine
        kill_at = time.time()
        kill_at_once(pids)

        def all_dead() -> bool:
            for node in live:
                seen = members_at(node)
                if seen is None or any(m["status"] != "dead" for m in seen[1] if m["id"] in gone):
                    return False
            return True
        poll(all_dead, AFTER, "every live node to see the zone dead")
        poll(lambda: (lead := leader_of(live)) is not None and restored(service_rows(lead, shape), shape.replicas,
                                                                        gone), AFTER, "the replicas restored")
        dead_at: dict[str, dict[str, float | None]] = {}
        for node in live:
            seen = members_at(node)
            if seen is None:
                continue
            read_at, rows = seen
            dead_at[node.name] = {m["id"]: read_at - m["status_for_s"] if m["status"] == "dead" else None
                                  for m in rows if m["id"] in gone}
        after = service_rows(leader_of(live) or live[0], shape) or {}
        return {"repeat": repeat, "zone": "abc"[zone], "probe_failures_before": failures,
                "load_average_1m": round(os.getloadavg()[0], 2),
                **figures(detection(dead_at, gone, kill_at), restoration(before, after, shape.replicas, kill_at))}
    finally:
        lab.stop_all()


# ------------------------------------------------------------------ both

def medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    out = {}
    for key in FIGURES:
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    return out


def compare(sim: dict[str, float | None], real: dict[str, float | None]) -> tuple[dict[str, float | None], bool]:
    ratio: dict[str, float | None] = {}
    for key in FIGURES:
        s, r = sim[key], real[key]
        ratio[key] = round(s / r, 3) if s is not None and r and math.isfinite(s) and math.isfinite(r) else None
    return ratio, all(v is not None and AGREE[0] <= v <= AGREE[1] for v in ratio.values())


def finite(value: Any) -> Any:
    """JSON has no infinity: ``"inf"`` instead."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=SCENARIO.nodes)
    parser.add_argument("--services", type=int, default=SCENARIO.services)
    parser.add_argument("--replicas", type=int, default=SCENARIO.replicas)
    parser.add_argument("--preset", default=SCENARIO.preset)
    parser.add_argument("--repeats", type=int, default=SCENARIO.repeats, help="real runs (a fresh lab each)")
    parser.add_argument("--sim-repeats", type=int, default=None,
                        help=f"simulated runs, seeds 1..N (default {SIM_SEEDS})")
    parser.add_argument("--sim-only", action="store_true", help="skip the real processes")
    parser.add_argument("--quick", action="store_true", help=f"a short run for the smoke test: {QUICK}")
    args = parser.parse_args()
    base = QUICK if args.quick else SCENARIO
    shape = replace(base, nodes=args.nodes if args.nodes != SCENARIO.nodes else base.nodes,
                    services=args.services if args.services != SCENARIO.services else base.services,
                    replicas=args.replicas, preset=args.preset,
                    repeats=args.repeats if args.repeats != SCENARIO.repeats else base.repeats)
    sim_repeats = args.sim_repeats or (1 if args.quick else SIM_SEEDS)
    out: dict[str, Any] = {"bench": "sim_vs_real", "quick": args.quick, "nodes": shape.nodes, "zones": shape.zones,
                           "killed_zone": "abc"[shape.killed_zone], "services": shape.services,
                           "replicas": shape.replicas, "preset": shape.preset}
    sim_runs = []
    for seed in range(1, sim_repeats + 1):
        sim_runs.append(run_sim(shape, seed))
        say(f"sim seed {seed}: {finite(sim_runs[-1])}")
    out["sim"] = {"seeds": list(range(1, sim_repeats + 1)), "median": medians(sim_runs),
                  "probe_failures_before_median": statistics.median(r["probe_failures_before"] for r in sim_runs),
                  "runs": sim_runs}
    if not args.sim_only:
        real_runs = []
        with tempfile.TemporaryDirectory(prefix="p2ps-svr-") as tmp:
            for repeat in range(1, shape.repeats + 1):
                real_runs.append(run_real(shape, repeat, Path(tmp)))
                say(f"real #{repeat}: {finite(real_runs[-1])}")
        out["real"] = {"repeats": shape.repeats, "median": medians(real_runs),
                       "probe_failures_before_median": statistics.median(r["probe_failures_before"] for r in real_runs),
                       "runs": real_runs}
        out["ratio"], out["agree"] = compare(out["sim"]["median"], out["real"]["median"])
    print(json.dumps(finite(out)))


if __name__ == "__main__":
    main()
