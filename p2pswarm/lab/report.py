"""The chaos report: what a run observed, reduced to numbers (pure), and its PNG timeline.

:func:`build` takes the raw observations of :mod:`p2pswarm.lab.chaos` (times in seconds
from the start of the run) and returns the JSON-ready report:

* ``requests``: totals, ``error_rate`` (failed / sent), errors by kind, latency
  percentiles of the ok ones, and ``per_second`` ok/failed counts (by sending second);
* ``kills``: per kill, ``detected_after_s`` (until every other node that was up saw the
  victim dead, from polls of each node's member list every ``poll`` s, so it is late by
  up to one poll) and ``recovered_after_s`` (until the service again had its replica count
  running on nodes that were up, from the applied cluster state);
* ``heals``: per heal, ``merged_after_s`` (until every up node saw every up node alive);
* ``replicas``: ``[t, running on up nodes, desired]`` over time;
* ``writes``: acknowledged / failed / lost (an acknowledged write missing from the final
  state; must be 0), by kind.

:func:`plot` draws the timeline (needs the ``plot`` extra, matplotlib).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from p2pswarm.sim.stats import percentile

DEAD = ("dead", "left")


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def is_down(intervals: Mapping[str, Sequence[Sequence[float | None]]], node: str, t: float) -> bool:
    """``node`` was crashed at ``t`` (``intervals``: node → [[killed_at, restarted_at or None], ...])."""
    for start, end in intervals.get(node, ()):
        if start <= t and (end is None or t < end):
            return True
    return False


# ------------------------------------------------------------------ requests

def request_stats(requests: Sequence[Sequence[Any]], duration: float, targets: Sequence[str] = (),
                  down: Mapping[str, Sequence[Sequence[float | None]]] | None = None) -> dict[str, Any]:
    """``requests``: ``[t_sent, target index, ok, latency_ms, error]`` rows (see :mod:`p2pswarm.lab.load`);
    ``targets``: the node name of each target index; ``down``: when nodes were crashed.

    A request sent to a crashed node's address fails whatever the mesh does (as it would
    behind a load balancer without health checks), so those are also counted apart:
    ``error_rate_up_targets`` is the error rate of requests sent to nodes that were up."""
    down = down or {}
    seconds = max(1, math.ceil(duration))
    ok = [0] * seconds
    failed = [0] * seconds
    failed_crashed = [0] * seconds
    errors: Counter[str] = Counter()
    latencies = []
    per_target: dict[str, list[int]] = {}
    to_crashed = [0, 0]
    for t, target, good, ms, err in requests:
        sec = min(seconds - 1, max(0, int(t)))
        name = targets[target] if 0 <= target < len(targets) else str(target)
        crashed = is_down(down, name, t)
        counts = per_target.setdefault(name, [0, 0])
        counts[0 if good else 1] += 1
        if crashed:
            to_crashed[0 if good else 1] += 1
        if good:
            ok[sec] += 1
            latencies.append(ms)
        else:
            failed[sec] += 1
            if crashed:
                failed_crashed[sec] += 1
            errors[err or "unknown"] += 1
    total = len(requests)
    n_failed = sum(failed)
    up_total = total - sum(to_crashed)
    up_failed = n_failed - to_crashed[1]
    return {
        "sent": total, "ok": total - n_failed, "failed": n_failed,
        "error_rate": _r(n_failed / total, 4) if total else None,
        "sent_to_crashed_nodes": sum(to_crashed), "failed_to_crashed_nodes": to_crashed[1],
        "error_rate_up_targets": _r(up_failed / up_total, 4) if up_total else None,
        "errors": dict(errors.most_common()),
        "by_target": {name: {"ok": c[0], "failed": c[1]} for name, c in sorted(per_target.items())},
        "latency_ms": {"p50": _r(percentile(latencies, 50), 2), "p99": _r(percentile(latencies, 99), 2),
                       "max": _r(max(latencies), 2) if latencies else None},
        "per_second": [{"t": s, "ok": ok[s], "failed": failed[s], "failed_crashed_target": failed_crashed[s]}
                       for s in range(seconds)],
    }


# ------------------------------------------------------------------ membership

def detection(victim: str, t_kill: float, views: Mapping[str, Sequence[Sequence[Any]]],
              down: Mapping[str, Sequence[Sequence[float | None]]]) -> dict[str, Any]:
    """How long until every other up node saw ``victim`` dead after its kill at ``t_kill``.

    ``views``: observer → ``[[t, {member: status}], ...]``. An observer that was down at the
    kill, or went down before seeing it, does not count; the victim's restart ends the wait."""
    restart = min((end for start, end in down.get(victim, ()) if start <= t_kill + 1e-9 and end is not None
                   and end > t_kill), default=math.inf)
    seen: dict[str, float] = {}
    missing = []
    for observer, rows in sorted(views.items()):
        if observer == victim or is_down(down, observer, t_kill):
            continue
        first = None
        went_down = False
        for t, view in rows:
            if t < t_kill:
                continue
            if t >= restart:
                break
            if is_down(down, observer, t):
                went_down = True
                break
            if view.get(victim, "dead") in DEAD:
                first = t
                break
        if first is not None:
            seen[observer] = round(first - t_kill, 3)
        elif not went_down:
            missing.append(observer)
    return {"detected_after_s": max(seen.values()) if seen and not missing else None,
            "seen_dead_after_s": seen, "never_saw_it_dead": missing}


def merged_after(t_heal: float, views: Mapping[str, Sequence[Sequence[Any]]],
                 down: Mapping[str, Sequence[Sequence[float | None]]], until: float) -> float | None:
    """Seconds from ``t_heal`` until every up node's latest view (taken after the heal) had
    every other up node alive; None if that never happened before ``until``."""
    events = sorted((t, o, view) for o, rows in views.items() for t, view in rows if t_heal <= t <= until)
    latest: dict[str, Mapping[str, str]] = {}
    for t, observer, view in events:
        latest[observer] = view
        up = [n for n in views if not is_down(down, n, t)]
        if all(n in latest and all(latest[n].get(p) == "alive" for p in up if p != n) for n in up):
            return round(t - t_heal, 3)
    return None


# ------------------------------------------------------------------ replicas

def crashed_tasks(samples: Sequence[Sequence[Any]], kills: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Task id -> the time its node was killed, for every task the last sample before a kill
    placed on the victim: those processes died with it, whatever the cluster state still says."""
    dead: dict[str, float] = {}
    for victim, t_kill in kills:
        before = [s for s in samples if s[0] <= t_kill]
        if before:
            for row in before[-1][2]:
                if row[0] == victim and len(row) > 2:
                    dead.setdefault(row[2], t_kill)
    return dead


def replica_series(samples: Sequence[Sequence[Any]], down: Mapping[str, Sequence[Sequence[float | None]]],
                   dead: Mapping[str, float] | None = None) -> list[list]:
    """``samples``: ``[t, desired, [[node, state, task id], ...]]`` (current tasks meant to run) →
    ``[t, running, desired]``, where a task counts if it is running on a node that is up and
    was not on a node when that node was killed (``dead``, see :func:`crashed_tasks`)."""
    dead = dead or {}
    out = []
    for t, desired, tasks in samples:
        running = sum(1 for row in tasks if row[1] == "running" and not is_down(down, row[0], t)
                      and not (len(row) > 2 and row[2] in dead and dead[row[2]] <= t))
        out.append([round(t, 3), running, desired])
    return out


def recovery(victim: str, t_kill: float, samples: Sequence[Sequence[Any]],
             series: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Tasks the victim ran when killed, and seconds until the replica count was running again."""
    before = [s for s in samples if s[0] <= t_kill]
    on_victim = sum(1 for row in before[-1][2] if row[0] == victim and row[1] == "running") if before else 0
    for t, running, desired in series:
        if t >= t_kill and running >= desired:
            return {"tasks_on_victim": on_victim, "recovered_after_s": round(max(0.0, t - t_kill), 3)}
    return {"tasks_on_victim": on_victim, "recovered_after_s": None}


# ------------------------------------------------------------------ raft

def raft_changes(samples: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """``samples``: ``[t, leader or None, term, [voters]]`` → the moments any of them changed,
    the leader changes, and the seconds without a known leader (sum of gaps between samples)."""
    changes = []
    last = None
    no_leader = 0.0
    for i, (t, leader, term, voters) in enumerate(samples):
        key = (leader, term, tuple(voters))
        if key != last:
            changes.append({"t": round(t, 3), "leader": leader, "term": term, "voters": list(voters)})
            last = key
        if leader is None and i + 1 < len(samples):
            no_leader += samples[i + 1][0] - t
    leaders = [c for c in changes if c["leader"] is not None]
    switches = sum(1 for a, b in zip(leaders, leaders[1:]) if a["leader"] != b["leader"])
    return {"leader_changes": switches, "seconds_without_leader": round(no_leader, 2), "changes": changes}


# ------------------------------------------------------------------ writes

def write_stats(writes: Sequence[Mapping[str, Any]], lost: Iterable[Mapping[str, Any]],
                unverified: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    lost = list(lost)
    unverified = list(unverified)
    by_kind: dict[str, dict[str, int]] = {}
    for w in writes:
        k = by_kind.setdefault(w["kind"], {"acked": 0, "failed": 0, "lost": 0})
        k["acked" if w["ok"] else "failed"] += 1
    for w in lost:
        by_kind.setdefault(w["kind"], {"acked": 0, "failed": 0, "lost": 0})["lost"] += 1
    acked_latency = [w["dt"] for w in writes if w["ok"]]
    return {
        "attempted": len(writes), "acked": sum(1 for w in writes if w["ok"]),
        "failed": sum(1 for w in writes if not w["ok"]), "lost": len(lost), "unverified": len(unverified),
        "acked_latency_s": {"p50": _r(percentile(acked_latency, 50)), "p99": _r(percentile(acked_latency, 99))},
        "by_kind": by_kind, "lost_detail": lost[:50],
        "errors": dict(Counter(w["error"] for w in writes if not w["ok"]).most_common(10)),
    }


# ------------------------------------------------------------------ the whole report

def build(obs: Mapping[str, Any]) -> dict[str, Any]:
    """The report from a run's observations (see :meth:`p2pswarm.lab.chaos.ChaosRun.observations`)."""
    down = obs["down"]
    views = obs["views"]
    kill_times = [(a["node"], a["t"]) for a in obs["actions"] if a["do"] == "kill" and a.get("ok") and a.get("node")]
    series = replica_series(obs["tasks"], down, crashed_tasks(obs["tasks"], kill_times))
    kills, heals = [], []
    for a in obs["actions"]:
        if a["do"] == "kill" and a.get("ok") and a.get("node"):
            k = {"node": a["node"], "t": a["t"]}
            k.update(detection(a["node"], a["t"], views, down))
            k.update(recovery(a["node"], a["t"], obs["tasks"], series))
            kills.append(k)
        if a["do"] == "heal" and a.get("ok"):
            heals.append({"t": a["t"], "merged_after_s": merged_after(a["t"], views, down, obs["end"])})
    requests = request_stats(obs["requests"], obs["duration"], obs.get("targets", ()), down)
    writes = write_stats(obs["writes"], obs["lost"], obs.get("unverified", ()))
    writes["skipped_busy"] = obs.get("skipped_writes", 0)
    return {
        "scenario": obs["scenario"], "mode": obs["mode"], "nodes": obs["nodes"], "duration_s": obs["duration"],
        "started_at": obs["started_at"], "preset": obs["preset"], "mesh": obs["mesh"],
        "summary": {
            "requests_sent": requests["sent"], "requests_ok": requests["ok"], "requests_failed": requests["failed"],
            "request_error_rate": requests["error_rate"],
            "request_error_rate_up_targets": requests["error_rate_up_targets"],
            "writes_acked": writes["acked"], "writes_failed": writes["failed"],
            "acknowledged_writes_lost": writes["lost"],
            "detection_s": [k["detected_after_s"] for k in kills],
            "recovery_s": [k["recovered_after_s"] for k in kills],
        },
        "actions": obs["actions"], "kills": kills, "heals": heals, "requests": requests,
        "replicas": {"desired": obs["replicas"], "series": series}, "writes": writes,
        "raft": raft_changes(obs.get("raft", ())),
        "final": obs["final"], "end_s": obs["end"], "notes": obs.get("notes", []),
        "write_log": [{k: w[k] for k in ("t", "dt", "kind", "ok")} for w in obs["writes"]],
    }


# ------------------------------------------------------------------ the picture

def plot(report: Mapping[str, Any], path: str) -> None:
    """Timeline PNG: requests ok/failed per second, running replicas, writes; actions as markers."""
    from p2pswarm.sim.plot import _pyplot
    plt = _pyplot()
    fig, (ax_req, ax_rep, ax_wr) = plt.subplots(3, 1, figsize=(12, 8.5), sharex=True,
                                                 gridspec_kw={"height_ratios": [3, 2, 1.6]})
    per = report["requests"]["per_second"]
    xs = [p["t"] + 0.5 for p in per]
    oks = [p["ok"] for p in per]
    crashed = [p.get("failed_crashed_target", 0) for p in per]
    fails = [p["failed"] - c for p, c in zip(per, crashed)]
    ax_req.bar(xs, oks, width=0.9, color="#3a923a", label="ok")
    ax_req.bar(xs, fails, width=0.9, bottom=oks, color="#d62728", label="failed")
    ax_req.bar(xs, crashed, width=0.9, bottom=[o + f for o, f in zip(oks, fails)], color="#f4a6a6",
               hatch="//", edgecolor="#d62728", linewidth=0, label="failed: sent to a crashed node")
    ax_req.set_ylabel("requests / s")
    rq = report["requests"]
    rate, up_rate = rq["error_rate"], rq.get("error_rate_up_targets")
    ax_req.set_title(f"client requests to the published port of every node, round-robin: error rate "
                     f"{'-' if rate is None else f'{rate:.1%}'} "
                     f"({'-' if up_rate is None else f'{up_rate:.1%}'} of those sent to nodes that were up)",
                     fontsize=10, loc="left")
    ax_req.legend(loc="lower left", fontsize=8, ncol=3)
    fails = [f + c for f, c in zip(fails, crashed)]
    top = max([o + f for o, f in zip(oks, fails)] + [1])
    ax_req.set_ylim(0, top * 1.45)

    series = report["replicas"]["series"]
    if series:
        ax_rep.step([s[0] for s in series], [s[1] for s in series], where="post", color="#1f77b4",
                    label="running on up nodes")
        ax_rep.step([s[0] for s in series], [s[2] for s in series], where="post", color="gray", ls="--",
                    label="desired")
    changes = report.get("raft", {}).get("changes", [])
    ymax = max([s[2] for s in series] + [s[1] for s in series] + [1]) + 1
    prev = None
    for c, nxt in zip(changes, changes[1:] + [None]):
        until = nxt["t"] if nxt else report.get("end_s") or report["duration_s"]
        if c["leader"] is None:
            ax_rep.axvspan(max(0.0, c["t"]), until, color="gray", alpha=0.15, lw=0)
        elif c["leader"] != prev:
            ax_rep.text(max(0.0, c["t"]), ymax - 0.35, f" leader {c['leader']} (term {c['term']})", fontsize=7,
                        color="#555555", va="center")
        prev = c["leader"] if c["leader"] is not None else prev
    ax_rep.set_ylabel("replicas")
    ax_rep.set_ylim(-0.2, ymax)
    ax_rep.legend(loc="lower left", fontsize=8, ncol=2)
    ax_rep.set_title("demo service replicas (the leader's applied state); Raft leader; gray: no leader",
                     fontsize=10, loc="left")

    writes = report.get("write_log", [])
    acked = [(w["t"] + w["dt"], w["dt"]) for w in writes if w["ok"]]
    failed = [(w["t"] + w["dt"], w["dt"]) for w in writes if not w["ok"]]
    if acked:
        ax_wr.scatter(*zip(*acked), s=12, color="#3a923a", label="acknowledged")
    if failed:
        ax_wr.scatter(*zip(*failed), s=22, marker="x", color="#d62728", label="failed (not acknowledged)")
    w = report["writes"]
    ax_wr.set_title(f"writes (kv puts, service updates): {w['acked']} acknowledged, {w['failed']} failed, "
                    f"{w['lost']} acknowledged lost", fontsize=10, loc="left")
    ax_wr.set_ylabel("write latency (s)")
    ax_wr.set_xlabel("seconds since the start of the run")
    if acked or failed:
        ax_wr.legend(loc="upper left", fontsize=8, ncol=2)
        ax_wr.set_yscale("symlog", linthresh=0.1)

    duration = report["duration_s"]
    end = max(duration + 0.5, report.get("end_s") or 0)
    for ax in (ax_req, ax_rep, ax_wr):
        ax.set_xlim(0, end)
        ax.grid(alpha=0.3)
        ax.axvline(duration, color="black", ls=":", lw=1)
    room = end - duration > 0.12 * end
    ax_req.text(duration, top * 1.02, " end of load:\n heal, restart,\n verify" if room else "end of load ",
                fontsize=7, va="bottom", ha="left" if room else "right")
    for i, a in enumerate(report["actions"]):
        color = {"kill": "#d62728", "restart": "#2ca02c", "partition": "#9467bd", "heal": "#17becf",
                 "loss": "#ff7f0e", "slow": "#8c564b"}.get(a["do"], "black")
        for ax in (ax_req, ax_rep, ax_wr):
            ax.axvline(a["t"], color=color, lw=1.2, alpha=0.8)
        ax_req.text(a["t"], top * (1.42 - 0.11 * (i % 3)), " " + a["label"], color=color, fontsize=8,
                    va="top", ha="left", rotation=0)
    s = report["summary"]
    det = ", ".join("-" if d is None else f"{d:.1f}s" for d in s["detection_s"]) or "-"
    rec = ", ".join("-" if d is None else f"{d:.1f}s" for d in s["recovery_s"]) or "-"
    kills = f" | kill detection {det} | replicas recovered {rec}" if s["detection_s"] else ""
    fig.suptitle(f"chaos run '{report['scenario']}': {report['nodes']} nodes, {report['mode']} faults, "
                 f"preset {report['preset']}{kills}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
