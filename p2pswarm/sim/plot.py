"""Plots of simulation runs (needs the `plot` extra: matplotlib)."""

from __future__ import annotations

import math


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'p2pswarm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_swim(sim, path: str) -> None:
    """Left: CDF of crash → all-members-agree detection time. Right: agreement over time."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    detect = sorted(d for d in sim.detection_times() if math.isfinite(d))
    if detect:
        ys = [(i + 1) / len(detect) for i in range(len(detect))]
        left.step(detect, ys, where="post")
    left.set_xlabel("seconds from crash until every live member marks it dead")
    left.set_ylabel("fraction of crashes")
    left.set_title("Detection time CDF")
    left.grid(alpha=0.3)
    survivors = [i for i in range(sim.sc.nodes) if i not in sim.crashed_at]
    for subject, crash_time in sorted(sim.crashed_at.items()):
        times = sorted(t - crash_time for i, t in sim.dead_seen[subject].items() if i not in sim.crashed_at)
        if not times:
            continue
        fractions = [(k + 1) / len(survivors) for k in range(len(times))]
        right.step([0.0] + times, [0.0] + fractions, where="post", alpha=0.6)
    right.set_xlabel("seconds since crash")
    right.set_ylabel("fraction of live members that mark it dead")
    right.set_title("Membership convergence per crash")
    right.grid(alpha=0.3)
    lg = "Lifeguard" if sim.sc.lifeguard else "plain SWIM"
    fig.suptitle(f"{sim.sc.nodes} members, {lg}, loss {sim.sc.loss:g}, seed {sim.sc.seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cluster(sim, path: str) -> None:
    """Left: replicas running per service over time (with the fault marked). Right: crashes the
    leader has marked dead over time."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    times = [t for t, _ in sim.samples]
    names = sim.service_names
    step = max(1, len(names) // 50)  # at most ~50 lines: the shape shows, the legend would not
    for k in range(0, len(names), step):
        left.plot(times, [counts[k] for _, counts in sim.samples], alpha=0.5, linewidth=0.8)
    if sim.fault_at is not None:
        left.axvline(sim.fault_at, color="red", linestyle="--", linewidth=1)
        right.axvline(sim.fault_at, color="red", linestyle="--", linewidth=1)
    left.set_xlabel("simulated seconds")
    left.set_ylabel("replicas running")
    shown = len(range(0, len(names), step))
    left.set_title(f"Replicas running per service ({shown} of {len(names)} shown)")
    left.grid(alpha=0.3)
    marks = sorted(t for t, _ in sim.detected_at)
    if marks:
        right.step([marks[0]] + marks, [0] + list(range(1, len(marks) + 1)), where="post")
    right.set_xlabel("simulated seconds")
    right.set_ylabel("crashed nodes the leader marks dead")
    right.set_title(f"Detection ({sim.crashes} crashes)")
    right.grid(alpha=0.3)
    sc = sim.sc
    fig.suptitle(f"{sc.name}: {sc.nodes} nodes, {sc.zones} zones, {sc.services} services x {sc.replicas}, "
                 f"loss {sc.loss:g}, seed {sc.seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
