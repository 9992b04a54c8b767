"""The report of a cluster simulation run (metric definitions: :mod:`p2pswarm.sim.cluster_sim`)."""

from __future__ import annotations

import math
import resource
from typing import TYPE_CHECKING, Any

from p2pswarm.sim.stats import percentile

if TYPE_CHECKING:
    from p2pswarm.sim.cluster_sim import ClusterSimulation

WALL_CLOCK_KEYS = frozenset({"wall_seconds", "speedup", "cpu_seconds", "cpu_speedup", "peak_rss_mib",
                             "scheduler_plan_wall_seconds", "wall_seconds_by_part"})
"""Report keys measured on the machine, not simulated: left out of the digest."""
WORK_KEYS = frozenset({"swim_news_queued"})
"""How much work the run took (the same for the same seed, but not an outcome): left out of the digest too, so
that digests stay comparable with runs from before it was counted."""


def unassigned_live_nodes(sim: ClusterSimulation) -> int:
    """Live nodes whose agent lacks a task the leader's applied state has them run (-1: no Raft member left)."""
    leader = sim.group.leader() or next(iter(sim.group.live()), None)
    if leader is None:
        return -1
    state = leader.state
    missing = 0
    for i, node_id in enumerate(sim.ids):
        if sim.crashed(i):
            continue
        wanted = {t.id for t in state.tasks_on(node_id) if t.desired == "running" and t.live}
        agent = sim.side.agents.get(i)
        if wanted and (agent is None or not wanted <= set(agent.tasks)):
            missing += 1
    return missing


def restore_times(sim: ClusterSimulation) -> list[float]:
    """Per service that lost a running replica after the first fault: seconds until it had them all again."""
    if sim.fault_at is None:
        return []
    affected = set(sim.restored) | set(sim.short_since)
    return [math.inf if name in sim.short_since else sim.restored[name] - sim.fault_at for name in sorted(affected)]


def _num(value: float | None, digits: int = 3) -> Any:
    return None if value is None else round(value, digits) if math.isfinite(value) else "inf"


def by_part(seconds: dict[str, float], wall: float) -> dict[str, float]:
    """Wall seconds per part, largest first, and ``loop``: what no part's timer saw (queue, network, glue)."""
    parts = dict(sorted(seconds.items(), key=lambda kv: -kv[1]))
    parts["loop"] = max(0.0, wall - sum(parts.values()))
    return {name: round(value, 2) for name, value in parts.items()}


def report(sim: ClusterSimulation, wall: float, cpu: float) -> dict:
    sc = sim.sc
    end = sc.end
    restore = restore_times(sim)
    leader = sim.group.leader()
    workers = max(1, sc.nodes - len(sim.group.live()))
    swim_bytes = sim.sampled_bytes / sim.sampled_msgs * sim.msgs if sim.sampled_msgs else 0.0
    mesh, side, detections = sim.mesh, sim.side, sim.detections
    out = {
        "scenario": sc.name, "nodes": sc.nodes, "zones": sc.zones, "services": sc.services,
        "replicas": sc.replicas, "loss": sc.loss, "seed": sc.seed, "preset": sc.preset,
        "sim_seconds": end, "fault_at": sc.warmup, "crashes": sim.crashes,
        "detect_seconds_p50": _num(percentile(detections, 50)),
        "detect_seconds_p99": _num(percentile(detections, 99)),
        "detect_seconds_max": _num(max(detections, default=None)),
        "undetected": sim.undetected + len(sim.pending_detect),
        "services_affected": len(restore),
        "services_not_ready_at_fault": sim.not_ready_at_fault,
        "replicas_restored_seconds_p50": _num(percentile(restore, 50)),
        "replicas_restored_seconds_p99": _num(percentile(restore, 99)),
        "replicas_restored_seconds_max": _num(max(restore, default=None)),
        "services_short_at_end": len(sim.short_since),
        "requests": mesh.sent, "failed_requests": mesh.failed, "requests_without_backend": mesh.no_backend,
        "failed_request_fraction": round(mesh.failed / mesh.sent, 5) if mesh.sent else None,
        "unassigned_live_nodes": unassigned_live_nodes(sim),
        "leader": sim.ids[leader.index] if leader is not None else None,
        "leader_changes": sim.leader_changes, "raft_members": len(sim.group.live()),
        "raft_config_changes": sim.raft_changes,
        "leader_entries_per_s": round(sim.group.entries / end, 2),
        "leader_bytes_per_s": round(sim.group.leader_bytes / end, 1),
        "worker_bytes_per_s": round((swim_bytes / sc.nodes + side.worker_bytes / workers) / end, 1),
        "worker_swim_bytes_per_s": round(swim_bytes / sc.nodes / end, 1),
        "worker_assignment_bytes_per_s": round(side.worker_bytes / workers / end, 1),
        "assignment_requests": side.requests, "assignment_resyncs": side.resyncs,
        "scheduler_rounds": sim.scheduler.rounds,
        "scheduler_plan_wall_seconds": round(sim.scheduler.plan_seconds, 3),
        "events": sim.heap.processed, "messages": sim.msgs,
        "wall_seconds": round(wall, 2), "speedup": round(end / wall, 2) if wall else None,
        "cpu_seconds": round(cpu, 2), "cpu_speedup": round(end / cpu, 2) if cpu else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "swim_news_queued": sim.retired_news + sum(core.news_queued() for core in sim.cores),
        "wall_seconds_by_part": by_part(sim.part_seconds, wall),
    }
    left_out = WALL_CLOCK_KEYS | WORK_KEYS
    sim.digest.update(repr(sorted((k, v) for k, v in out.items() if k not in left_out)).encode())
    out["digest"] = sim.digest.hexdigest()
    return out
