"""`p2pswarm lab ...`: a whole cluster on this machine, its demo service, and chaos runs.

The work is done in :mod:`p2pswarm.lab`; these commands parse flags, show progress and
turn every failure into one line.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click

from p2pswarm.api.client import ApiError
from p2pswarm.cli.output import end_progress, progress, table
from p2pswarm.lab.cluster import DEMO_PORT, DEMO_SERVICE, Lab, LabError, members
from p2pswarm.lab.netns import NetnsError
from p2pswarm.node.datadir import default_lab_dir
from p2pswarm.node.presets import PRESETS


def lab_dir_option(fn):
    return click.option("--dir", "lab_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Lab directory with one data dir per node "
                             "[default: $P2PSWARM_LAB_DIR or ~/.local/share/p2pswarm/lab].")(fn)


def _errors(fn):
    """LabError / NetnsError / ApiError become one-line click errors."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (LabError, NetnsError, ApiError) as exc:
            end_progress()
            raise click.ClickException(str(exc)) from None
    return wrapper


@click.group()
def lab() -> None:
    """Run a local cluster for experiments: `lab up`, `lab status`, `lab down`, `lab chaos`."""


@lab.command("up")
@click.option("--nodes", default=5, show_default=True, type=click.IntRange(1, 200))
@lab_dir_option
@click.option("--port", default=7946, show_default=True, type=click.IntRange(1, 65535),
              help="Cluster port; node i listens on 127.0.0.(10+i):PORT (with --netns: 10.77.L.i:PORT).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="local", show_default=True)
@click.option("--netns", "use_netns", is_flag=True,
              help="Root only: one network namespace per node, joined by veths to a bridge (separate hosts).")
@click.option("--demo/--no-demo", default=True, show_default=True,
              help="Deploy the demo web service (3 replicas, published port).")
@click.option("--demo-port", default=DEMO_PORT, show_default=True, type=click.IntRange(1, 65535),
              help="Published port of the demo service.")
@_errors
def lab_up(nodes, lab_dir, port, preset, use_netns, demo, demo_port):
    """Start NODES node processes on this machine, form one cluster and deploy the demo service.

    A lab starts fresh: node dirs left by a stopped lab in the same directory are removed."""
    path = (lab_dir or default_lab_dir()).absolute()
    existing = Lab.load(path)
    if existing is not None and existing.any_running():
        raise LabError(f"a lab is already running in {path}; stop it with `p2pswarm lab down`"
                       + ("" if lab_dir is None else f" --dir {path}"))
    if existing is not None and existing.mode == "netns":
        existing.stop_all()  # namespaces of a lab that was not stopped cleanly
    lab = Lab.plan(path, nodes, port, preset, use_netns)
    lab.prepare_dir()
    try:
        lab.create_network()
        lab.save()
        lab.start_all(progress)
        end_progress()
        lab.wait_converged(progress)
        end_progress()
        lab.wait_raft(progress)
        end_progress()
    except BaseException:
        end_progress()
        lab.stop_all()
        raise
    down_hint = "p2pswarm lab down" + ("" if lab_dir is None else f" --dir {path}")
    if demo:
        try:
            lab.deploy_demo(demo_port)
            lab.wait_demo(progress)
            lab.wait_mesh(progress)
            end_progress()
        except LabError as exc:
            end_progress()
            raise LabError(f"{exc} (the lab keeps running; stop it with `{down_hint}`)") from None
    _print_status(lab)
    click.echo(f"\nlab of {nodes} nodes is up. Try: p2pswarm node ls --data-dir {lab.nodes[-1].dir}")
    if demo:
        mesh = lab.mesh_supported()
        click.echo(f"try: {lab.try_command()}"
                   + ("" if mesh is not False else "   (this build has no routing mesh yet: it will be refused)"))
    click.echo(f"stop it with: {down_hint}")


def _print_status(lab: Lab) -> int:
    rows = []
    running = 0
    for node in lab.nodes:
        ns = [node.netns or "-"] if lab.mode == "netns" else []
        if not lab.running(node):
            rows.append((node.name, "-", node.addr, *ns, "stopped", "-", "-"))
            continue
        try:
            info = node.api().get("/v1/info")
        except ApiError as exc:
            rows.append((node.name, "-", node.addr, *ns, f"not answering ({exc})", "-", "-"))
            continue
        running += 1
        role = next((m.get("role", "-") for m in members(node) if m.get("self")), "-")
        rows.append((node.name, info["id"], info["addr"], *ns, "running", role, str(info["cluster_size"])))
    headers = ("NODE", "ID", "ADDRESS") + (("NETNS",) if lab.mode == "netns" else ()) + \
        ("STATE", "RAFT ROLE", "SEES ALIVE")
    click.echo(table(headers, rows))
    if lab.demo and running:
        node = next(n for n in lab.nodes if lab.running(n))
        try:
            info = node.api().get(f"/v1/services/{DEMO_SERVICE}")
            click.echo(f"\n{DEMO_SERVICE}: {info['running_current']}/{info['desired']} tasks running, "
                       f"published on port {lab.demo['port']} of every node")
        except ApiError as exc:
            click.echo(f"\n{DEMO_SERVICE}: {exc}")
    return running


@lab.command("status")
@lab_dir_option
@_errors
def lab_status(lab_dir):
    """Show every lab node: running or not, its Raft role, how many members it sees alive; and the demo."""
    path = (lab_dir or default_lab_dir()).absolute()
    lab = Lab.load(path)
    if lab is None:
        click.echo(f"no lab in {path}")
        return
    if _print_status(lab) and lab.demo:
        click.echo(f"try: {lab.try_command()}")


@lab.command("down")
@lab_dir_option
@_errors
def lab_down(lab_dir):
    """Stop every lab node (gracefully; SIGKILL after a timeout), their tasks and namespaces."""
    path = (lab_dir or default_lab_dir()).absolute()
    lab = Lab.load(path)
    if lab is None:
        click.echo(f"no lab in {path}")
        return
    result = lab.stop_all()
    extra = []
    if result["killed"]:
        extra.append(f"{result['killed']} needed SIGKILL")
    if result["leftovers"]:
        extra.append(f"{result['leftovers']} leftover task processes killed")
    if lab.mode == "netns":
        extra.append("namespaces deleted" if not result["failed_ns"]
                     else f"could not delete {', '.join(result['failed_ns'])}")
    click.echo(f"stopped {result['stopped']} lab node(s) in {path}" + (f" ({'; '.join(extra)})" if extra else ""))
    if result["failed_ns"]:
        raise LabError(f"namespaces {', '.join(result['failed_ns'])} are left; delete them with `ip netns del`")


def replot_report(report_path: Path) -> Path:
    """The PNG timeline of a saved chaos report, written beside it; one-line errors for a bad file."""
    from p2pswarm.lab import report

    try:
        rep = json.loads(report_path.read_text())
    except OSError as exc:
        raise click.ClickException(f"cannot read {report_path}: {exc.strerror or exc}") from None
    except ValueError:
        raise click.ClickException(f"{report_path} is not a chaos report (not JSON)") from None
    if not isinstance(rep, dict) or "requests" not in rep:
        raise click.ClickException(f"{report_path} is not a chaos report (no requests section)")
    png = report_path.with_suffix(".png")
    try:
        report.plot(rep, str(png))
    except RuntimeError as exc:  # no matplotlib
        raise click.ClickException(f"{exc} (pip install -e '.[plot]')") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise click.ClickException(f"{report_path} is not a complete chaos report ({type(exc).__name__}: {exc})") \
            from None
    return png


@lab.command("chaos")
@click.option("--scenario", "scenario_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Scenario TOML (see simulations/chaos/).")
@click.option("--replot", "replot", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw the PNG timeline of an earlier run's JSON report again (no run; needs the plot extra).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where chaos-<name>.json and .png are written.")
@click.option("--dir", "lab_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of the run's own lab [default: <lab dir>-chaos].")
@click.option("--netns", "use_netns", is_flag=True,
              help="Root only: namespaces per node; loss and partitions by nftables (else by fault injection).")
@click.option("--port", default=7946, show_default=True, type=click.IntRange(1, 65535), help="Cluster port.")
@click.option("--keep", is_flag=True, help="Leave the lab running after the run (stop it with `lab down`).")
@_errors
def lab_chaos(scenario_file, replot, out_dir, lab_dir, use_netns, port, keep):
    """Run a chaos scenario on a fresh lab: timed kills, partitions, loss and pauses under client load
    and acknowledged writes; writes a JSON report and a PNG timeline (`--replot REPORT.json` draws it again)."""
    from p2pswarm.lab.chaos import ChaosRun
    from p2pswarm.lab.scenario import ScenarioError, load

    if replot is not None:
        click.echo(f"timeline: {replot_report(replot)}")
        return
    if scenario_file is None:
        raise click.UsageError("give --scenario FILE (or --replot REPORT.json)")

    try:
        sc = load(scenario_file)
    except ScenarioError as exc:
        raise click.ClickException(str(exc)) from None
    path = lab_dir or default_lab_dir().with_name(default_lab_dir().name + "-chaos")

    def say(text: str) -> None:
        if text.startswith(("t=", "running", "load and", "verifying", "stopping")):
            end_progress()
            click.echo(text, err=True)
        else:
            progress(text)

    def on_term(signum, frame):  # stop like Ctrl-C: the run's cleanup stops the lab and deletes namespaces
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rep = ChaosRun(sc, path, out_dir, use_netns=use_netns, say=say, keep=keep, port=port).run()
    end_progress()
    s = rep["summary"]
    rate = s["request_error_rate"]
    click.echo(f"scenario {rep['scenario']} ({rep['mode']} faults, {rep['nodes']} nodes, {rep['duration_s']:g} s)")
    up_rate = s["request_error_rate_up_targets"]
    click.echo(f"requests: {s['requests_ok']} ok, {s['requests_failed']} failed of {s['requests_sent']}"
               f" (error rate {'-' if rate is None else f'{rate:.2%}'}; "
               f"{'-' if up_rate is None else f'{up_rate:.2%}'} of those sent to nodes that were up)")
    for k in rep["kills"]:
        det, rec = k["detected_after_s"], k["recovered_after_s"]
        click.echo(f"kill {k['node']} at {k['t']:.1f}s: detected by all after "
                   f"{'-' if det is None else f'{det:.2f}s'}, {k['tasks_on_victim']} task(s) lost, replicas back after "
                   f"{'-' if rec is None else f'{rec:.2f}s'}")
    for h in rep["heals"]:
        merged = h["merged_after_s"]
        click.echo(f"heal at {h['t']:.1f}s: every node saw every node alive after "
                   f"{'-' if merged is None else f'{merged:.2f}s'}")
    w = rep["writes"]
    click.echo(f"writes: {w['acked']} acknowledged, {w['failed']} failed, acknowledged writes lost: {w['lost']}"
               + (f", {w['unverified']} could not be read back" if w["unverified"] else ""))
    for note in rep["notes"]:
        click.echo(f"note: {note}")
    files = rep["files"]
    click.echo(f"report: {files['json']}" + (f", timeline: {files['png']}" if "png" in files
                                              else f" (no PNG: {files.get('png_error')})"))
    if keep:
        click.echo(f"the lab keeps running: p2pswarm lab down --dir {path}")
    if w["lost"]:
        raise click.ClickException(f"{w['lost']} acknowledged writes were lost (see {files['json']})")
