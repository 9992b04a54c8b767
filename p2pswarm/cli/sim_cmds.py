"""`p2pswarm sim ...`: deterministic simulations that drive the real protocol cores."""

from __future__ import annotations

import json

import click

from p2pswarm.node.presets import PRESETS
from p2pswarm.sim.raft_sim import BUGS as RAFT_BUGS


def _check_fraction(ctx, param, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise click.BadParameter("must be at least 0 and below 1")
    return value


def _print_report(report: dict, as_json: bool) -> None:
    """One JSON line (for scripts), or aligned key/value lines (for people)."""
    if as_json:
        click.echo(json.dumps(report))
        return
    width = max(len(k) for k in report)
    for key, value in report.items():
        if isinstance(value, dict):  # a breakdown: "swim 1.5, raft 0.2, ..."
            value = ", ".join(f"{name} {part}" for name, part in value.items())
        click.echo(f"{key.ljust(width)}  {value}")


@click.group()
def sim() -> None:
    """Simulate thousands of nodes on a virtual clock (same seed, same run)."""


@sim.command("swim")
@click.option("--nodes", default=1000, show_default=True, type=click.IntRange(2, 100_000))
@click.option("--duration", default=120.0, show_default=True, type=click.FloatRange(1.0, 86_400.0),
              help="Simulated seconds.")
@click.option("--loss", default=0.0, show_default=True, type=float, callback=_check_fraction,
              help="Probability that a message is lost.")
@click.option("--duplicate", default=0.0, show_default=True, type=float, callback=_check_fraction,
              help="Probability that a message is delivered twice.")
@click.option("--crash", default=0, show_default=True, type=click.IntRange(0), help="Members that crash.")
@click.option("--slow", default=0, show_default=True, type=click.IntRange(0),
              help="Healthy members whose message handling and timers run late.")
@click.option("--slow-factor", default=3.0, show_default=True, type=click.FloatRange(0.0),
              help="How late slow members are, in probe timeouts (uniform 0.5x..1.5x).")
@click.option("--lifeguard/--no-lifeguard", default=True, show_default=True)
@click.option("--preset", default="lan", show_default=True, type=click.Choice(sorted(PRESETS)))
@click.option("--partition", default=0.0, show_default=True, type=click.FloatRange(0.0),
              help="Split the cluster in two halves for this many seconds after the warm-up, then heal.")
@click.option("--updates", default=20, show_default=True, type=click.IntRange(0),
              help="State-record updates whose dissemination is timed.")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON line.")
@click.option("--plot", type=click.Path(dir_okay=False, writable=True),
              help="Write a PNG: detection-time CDF and convergence over time.")
def swim_cmd(nodes, duration, loss, duplicate, crash, slow, slow_factor, lifeguard, preset, partition,
             updates, seed, as_json, plot) -> None:
    """Failure detection and dissemination with SWIM + Lifeguard."""
    from p2pswarm.sim.swim_sim import SwimScenario, SwimSimulation

    if crash + slow > nodes - 1:
        raise click.BadParameter(f"--crash {crash} plus --slow {slow} leaves no healthy member", param_hint="--crash")
    scenario = SwimScenario(nodes=nodes, duration=duration, loss=loss, duplicate=duplicate, crash=crash,
                            slow=slow, slow_factor=slow_factor, lifeguard=lifeguard, preset=preset,
                            partition=partition, updates=updates, seed=seed)
    click.echo(f"simulating {nodes} members for {duration:g} s (seed {seed})...", err=True)
    simulation = SwimSimulation(scenario)
    report = simulation.run()
    if plot:
        from p2pswarm.sim.plot import plot_swim
        plot_swim(simulation, plot)
        click.echo(f"plot written to {plot}", err=True)
    _print_report(report, as_json)


@sim.command("raft")
@click.option("--nodes", default=5, show_default=True, type=click.IntRange(1, 9))
@click.option("--runs", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Independent runs, each with its own random fault schedule.")
@click.option("--duration", default=10.0, show_default=True, type=click.FloatRange(1.0, 3600.0),
              help="Simulated seconds per run.")
@click.option("--clients", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--bug", type=click.Choice(RAFT_BUGS),
              help="Deliberately break the core or driver, to see the checker catch it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON line.")
def raft_cmd(nodes, runs, duration, clients, seed, bug, as_json) -> None:
    """Raft under random faults, every history checked for linearizability."""
    from p2pswarm.sim.raft_sim import run_raft_sim

    click.echo(f"simulating {runs} runs of {nodes} Raft nodes (seed {seed})...", err=True)
    report = run_raft_sim(nodes=nodes, runs=runs, seed=seed, bug=bug, duration=duration, clients=clients)
    _print_report(report, as_json)


@sim.command("cluster")
@click.option("--nodes", default=200, show_default=True, type=click.IntRange(2, 100_000))
@click.option("--zones", default=5, show_default=True, type=click.IntRange(1, 26))
@click.option("--services", default=20, show_default=True, type=click.IntRange(1, 50_000))
@click.option("--replicas", default=5, show_default=True, type=click.IntRange(1, 1000), help="Replicas per service.")
@click.option("--loss", default=0.0, show_default=True, type=float, callback=_check_fraction,
              help="Probability that a message is lost.")
@click.option("--scenario", default="zone-outage", show_default=True, metavar="NAME|FILE.toml",
              help="zone-outage, partition, rolling-restart, flapping, leader-loss, or a TOML file.")
@click.option("--duration", default=30.0, show_default=True, type=click.FloatRange(1.0, 86_400.0),
              help="Simulated seconds after the warm-up (a TOML file may set its own).")
@click.option("--warmup", default=15.0, show_default=True, type=click.FloatRange(1.0, 3600.0),
              help="Simulated seconds to place and start every service before the faults.")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON line.")
@click.option("--plot", type=click.Path(dir_okay=False, writable=True),
              help="Write a PNG: replicas running per service, and detection, over time.")
def cluster_cmd(nodes, zones, services, replicas, loss, scenario, duration, warmup, seed, as_json, plot) -> None:
    """The whole orchestrator (SWIM, Raft, scheduler, agents, assignments, mesh) under a failure scenario."""
    from p2pswarm.lab.scenario import ScenarioError
    from p2pswarm.sim import cluster_scenario
    from p2pswarm.sim.cluster_sim import ClusterSimulation

    if zones > nodes:
        raise click.BadParameter(f"{zones} zones need at least as many nodes (got {nodes})", param_hint="--zones")
    shape = dict(nodes=nodes, zones=zones, services=services, replicas=replicas, loss=loss, seed=seed,
                 duration=duration, warmup=warmup)
    try:
        if scenario.endswith(".toml"):
            chosen = cluster_scenario.load(scenario, **shape)
        else:
            chosen = cluster_scenario.builtin(scenario, **shape)
    except ScenarioError as e:
        raise click.BadParameter(str(e), param_hint="--scenario") from None
    click.echo(f"simulating {chosen.nodes} nodes, {chosen.services} services x {chosen.replicas}, "
               f"scenario {chosen.name} (seed {seed})...", err=True)
    simulation = ClusterSimulation(chosen, progress=lambda line: click.echo(line, err=True))
    report = simulation.run()
    if plot:
        from p2pswarm.sim.plot import plot_cluster
        plot_cluster(simulation, plot)
        click.echo(f"plot written to {plot}", err=True)
    _print_report(report, as_json)
