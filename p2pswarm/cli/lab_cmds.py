"""`p2pswarm lab ...`: a whole cluster on this machine, one node process per 127.0.0.x address."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import click

from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.cli.node_cmds import _up_detached, pid_alive
from p2pswarm.cli.output import end_progress, progress, table
from p2pswarm.consensus.autopilot import target_voters
from p2pswarm.datadir import DataDir
from p2pswarm.membership.config import PRESETS
from p2pswarm.node import NodeOptions

CONVERGE_TIMEOUT = 30.0
"""Seconds `lab up` waits for every node to see every other alive."""
STOP_TIMEOUT = 10.0
RAFT_TIMEOUT = 60.0
"""Seconds `lab up` waits for autopilot to elect the Raft group (learners are promoted once stable)."""


def default_lab_dir() -> Path:
    env = os.environ.get("P2PSWARM_LAB_DIR")
    return Path(env) if env else Path.home() / ".local" / "share" / "p2pswarm" / "lab"


def lab_dir_option(fn):
    return click.option("--dir", "lab_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Lab directory with one data dir per node "
                             "[default: $P2PSWARM_LAB_DIR or ~/.local/share/p2pswarm/lab].")(fn)


def _node_dirs(lab: Path) -> list[Path]:
    if not lab.is_dir():
        return []
    return sorted((p for p in lab.iterdir() if p.name.startswith("node-") and p.is_dir()),
                  key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else 0)


def _running(datadir: DataDir) -> bool:
    return datadir.is_locked()


@click.group()
def lab() -> None:
    """Run a local cluster for experiments: `lab up`, `lab status`, `lab down`."""


@lab.command("up")
@click.option("--nodes", default=5, show_default=True, type=click.IntRange(1, 200))
@lab_dir_option
@click.option("--port", default=7946, show_default=True, type=click.IntRange(1, 65535),
              help="Cluster port; node i listens on 127.0.0.(10+i):PORT.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="local", show_default=True)
def lab_up(nodes, lab_dir, port, preset):
    """Start NODES node processes on loopback and wait until they form one cluster."""
    lab = lab_dir or default_lab_dir()
    dirs = [lab / f"node-{i}" for i in range(1, nodes + 1)]
    if any(_running(DataDir(d)) for d in _node_dirs(lab)):
        raise click.ClickException(f"a lab is already running in {lab}; stop it with `p2pswarm lab down`")
    lab.mkdir(parents=True, exist_ok=True)
    seed = f"127.0.0.11:{port}"
    for i, path in enumerate(dirs, start=1):
        addr = f"127.0.0.{10 + i}:{port}"
        progress(f"starting node {i}/{nodes} at {addr}...")
        options = NodeOptions(data_dir=str(path), bind=addr, peers=() if i == 1 else (seed,),
                              name=f"node-{i}", labels=(("lab", "1"), ("zone", "abc"[(i - 1) % 3])),
                              preset=preset)
        DataDir(path).prepare()
        try:
            _up_detached(options, "info", quiet=True)
        except click.ClickException:
            end_progress()
            raise
    end_progress()
    _wait_converged([DataDir(d) for d in dirs], nodes)
    _wait_raft_group(DataDir(dirs[0]), target_voters(nodes))
    _print_status(lab)
    click.echo(f"\nlab of {nodes} nodes is up. Try: p2pswarm node ls --data-dir {dirs[-1]}")
    click.echo("stop it with: p2pswarm lab down" + ("" if lab_dir is None else f" --dir {lab}"))


def _members(datadir: DataDir) -> list[dict]:
    try:
        return ApiClient(datadir, timeout=2.0).get("/v1/members")["members"]
    except ApiError:
        return []


def _alive_seen(datadir: DataDir) -> int:
    return sum(1 for m in _members(datadir) if m["status"] == "alive")


def _wait_converged(datadirs: list[DataDir], expected: int) -> None:
    """Wait until every node sees every node alive, showing the least converged view."""
    def converged() -> tuple[bool, str]:
        worst = min(_alive_seen(d) for d in datadirs)
        return worst >= expected, f"every node sees at least {worst}/{expected} alive"

    if not _poll(converged, CONVERGE_TIMEOUT, "waiting for the cluster to converge"):
        raise click.ClickException(f"not every node saw {expected} nodes alive after {CONVERGE_TIMEOUT:g} s; "
                                   f"see the node.log files under {datadirs[0].path.parent}")


def _poll(check, timeout: float, what: str, interval: float = 0.1) -> bool:
    """Call ``check() -> (done, state)`` until done or ``timeout``, showing ``what: state``."""
    deadline = time.monotonic() + timeout
    done = False
    while not done and time.monotonic() < deadline:
        done, state = check()
        progress(f"{what}: {state}")
        if not done:
            time.sleep(interval)
    end_progress()
    return done


def _wait_raft_group(datadir: DataDir, voters: int) -> None:
    """Wait until the elected Raft group has its target number of voters and a leader."""
    client = ApiClient(datadir, timeout=2.0)

    def elected() -> tuple[bool, str]:
        try:
            status = client.get("/v1/cluster")
            have = sum(1 for m in status["members"] if m["role"] == "voter")
            leader = status["leader"]
        except (ApiError, KeyError, TypeError):
            have, leader = 0, None
        return have >= voters and bool(leader), f"{have}/{voters} voters, {'a leader' if leader else 'no leader yet'}"

    if not _poll(elected, RAFT_TIMEOUT, "electing the Raft group", interval=0.2):
        raise click.ClickException(f"the Raft group did not reach {voters} voters and a leader within "
                                   f"{RAFT_TIMEOUT:g} s; see `p2pswarm cluster status --data-dir {datadir.path}`")


def _print_status(lab: Path) -> int:
    rows = []
    running = 0
    for path in _node_dirs(lab):
        datadir = DataDir(path)
        if not _running(datadir):
            rows.append((path.name, "-", "-", "stopped", "-", "-"))
            continue
        try:
            info = ApiClient(datadir, timeout=2.0).get("/v1/info")
        except ApiError as exc:
            rows.append((path.name, "-", "-", f"not answering ({exc})", "-", "-"))
            continue
        running += 1
        role = next((m["role"] for m in _members(datadir) if m.get("self")), "-")
        rows.append((path.name, info["id"], info["addr"], "running", role, str(info["cluster_size"])))
    if not rows:
        click.echo(f"no lab in {lab}")
    else:
        click.echo(table(("NODE", "ID", "ADDRESS", "STATE", "RAFT ROLE", "SEES ALIVE"), rows))
    return running


@lab.command("status")
@lab_dir_option
def lab_status(lab_dir):
    """Show every lab node: running or not, and how many members it sees alive."""
    _print_status(lab_dir or default_lab_dir())


@lab.command("down")
@lab_dir_option
def lab_down(lab_dir):
    """Stop every lab node (gracefully; SIGKILL after a timeout). Leaves no process behind."""
    lab = lab_dir or default_lab_dir()
    stopped = 0
    pids = []
    for path in _node_dirs(lab):
        datadir = DataDir(path)
        pid = datadir.read_pid()
        if not _running(datadir) or pid is None:
            continue
        try:
            ApiClient(datadir, timeout=2.0).post("/v1/shutdown")
        except ApiError:
            os.kill(pid, signal.SIGTERM)
        pids.append(pid)
    deadline = time.monotonic() + STOP_TIMEOUT
    for pid in pids:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped += 1
    click.echo(f"stopped {stopped} lab node(s) in {lab}")
