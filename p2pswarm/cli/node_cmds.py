"""`p2pswarm up`, `p2pswarm down` and `p2pswarm node ...`: start, stop and inspect the local node."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import click

import p2pswarm
from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.cli.lazy import LazyGroup
from p2pswarm.cli.output import end_progress, fmt_labels, fmt_rtt, progress, table, to_json
from p2pswarm.consensus.messages import MAX_LEARNERS
from p2pswarm.node.datadir import ENV_VAR, DataDir, DataDirError, default_data_dir
from p2pswarm.node.options import DEFAULT_BIND, NodeOptions, configure_logging
from p2pswarm.node.presets import PRESETS
from p2pswarm.transport.addr import format_addr, parse_addr

START_TIMEOUT = 60.0
"""Seconds `up --detach` waits for the new node's API to answer before it stops the node (a start
loads the state, the CA and the Raft log: seconds on a slow edge machine, so generous)."""
JOIN_WAIT = 10.0
"""Seconds `up --detach` shows join progress before leaving the node to retry on its own."""
STOP_TIMEOUT = 15.0
"""Seconds `down` waits for the node to leave and exit."""
LOG_LEVELS = ("debug", "info", "warning", "error")


# ------------------------------------------------------------ parameter parsing

def addr_param(value: str, what: str, allow_port_zero: bool = False) -> str:
    """Check a ``host:port`` address with the transport's own parser (so the node never starts with an address
    its peers would drop); returns it normalised, or raises BadParameter with one line."""
    parsed = parse_addr(value.strip(), allow_port_zero=allow_port_zero)
    if parsed is None:
        raise click.BadParameter(f"expected host:port with an IPv4 address, [IPv6] or DNS name "
                                 f"(e.g. 10.0.0.5:7946), got {value!r}", param_hint=what)
    return format_addr(*parsed)


def _addr_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else addr_param(value, f"--{param.name}", allow_port_zero=param.name == "bind")


def _peers_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    peers: list[str] = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                addr = addr_param(part, "--peers")
                if addr not in peers:
                    peers.append(addr)
    return tuple(peers)


def _labels_option(ctx: click.Context, param: click.Parameter,
                   values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise click.BadParameter(f"expected key=value (e.g. zone=a), got {value!r}", param_hint="--label")
        labels[key] = val
    return tuple(sorted(labels.items()))


def _dns_addr_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from p2pswarm.dns.host import parse_dns_addr
    try:
        return parse_dns_addr(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _dns_domain_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from p2pswarm.dns.zone import normalize_domain
    try:
        return normalize_domain(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _api_addr_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from p2pswarm.api.remote import parse_api_addr
    if value is None:
        return None
    try:
        parse_api_addr(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def data_dir_option(fn):
    return click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help=f"Node data dir [default: ${ENV_VAR} or ~/.local/share/p2pswarm].")(fn)


def _datadir(path: Path | None) -> DataDir:
    return DataDir(path or default_data_dir())


# ------------------------------------------------------------ up

@click.command()
@click.option("--peers", multiple=True, callback=_peers_option, metavar="HOST:PORT,...",
              help="Join the cluster through these members; without it, start a new cluster.")
@click.option("--bind", default=DEFAULT_BIND, show_default=True, callback=_addr_option,
              help="Address to listen on for cluster traffic (port 0: any free port).")
@click.option("--advertise", default=None, callback=_addr_option,
              help="Address peers should use to reach this node [default: the bind address].")
@click.option("--name", default=None, help="Node name [default: kept from the data dir, else node-<id>].")
@data_dir_option
@click.option("--label", "labels", multiple=True, callback=_labels_option, metavar="KEY=VALUE",
              help="Node label (repeatable), e.g. --label zone=a.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="lan", show_default=True,
              help="Gossip timing preset.")
@click.option("--relay-port", type=click.IntRange(0, 65535), default=0,
              help="TCP port for routing-mesh relays from other nodes [default: the --bind port + 2 if free].")
@click.option("--token", default=None, envvar="P2PSWARM_TOKEN", metavar="P2PS-1-...",
              help="Join token of the secure cluster to join (`p2pswarm cluster join-token` on a member prints "
                   "it) [env: P2PSWARM_TOKEN; prefer it: a command line is visible to every user in `ps`].")
@click.option("--insecure", is_flag=True,
              help="Plaintext: no CA, no certificates, no encryption (a cluster of --insecure nodes only).")
@click.option("--autolock", "autolock_on", is_flag=True,
              help="Encrypt this node's Raft log, snapshots and key files at rest (a used data dir is encrypted "
                   "in place first); prints the unlock key that `p2pswarm unlock` needs after every restart.")
@click.option("--unlock-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
              help="With --autolock: use the unlock key in PATH (e.g. one key for several nodes) instead of making "
                   "one; on a locked node: unlock at start. '-' reads it from stdin.")
@click.option("--api-addr", default=None, callback=_api_addr_option, metavar="HOST:PORT",
              help="Also serve the API here over TLS 1.3 to remote CLIs holding a client certificate "
                   "(`p2pswarm cluster client-cert`) [default: off].")
@click.option("--task-user", default=None, metavar="USER",
              help="When the node runs as root: the user its tasks run as [default: p2pswarm-task, created if "
                   "missing, else nobody]; `root` turns task isolation off.")
@click.option("--engine-socket", default=None, metavar="URL",
              help="The Docker Engine API that runs image tasks [default: $DOCKER_HOST or "
                   "unix:///var/run/docker.sock]; without a working engine the node runs process tasks only.")
@click.option("--dns-addr", default="auto", show_default=True, callback=_dns_addr_option, metavar="HOST:PORT|auto|off",
              help="Where the node answers DNS for its services (UDP and TCP): auto takes port 53 on the node's "
                   "address when it may, else the --bind port + 4, else a free port (`node inspect` shows which).")
@click.option("--dns-domain", default="p2pswarm.", show_default=True, callback=_dns_domain_option,
              help="The domain the node's DNS answers for (web.p2pswarm, tasks.web.p2pswarm); others are refused.")
@click.option("--max-learners", type=click.IntRange(0, MAX_LEARNERS), default=None, metavar="N",
              help="Raft learners the leader keeps besides the voters [default: the preset's]; every other "
                   "node is a worker that gets its assignments from them.")
@click.option("--mesh", "mesh_path", type=click.Choice(["auto", "kernel", "userspace"]), default="auto",
              show_default=True,
              help="How the routing mesh forwards published ports: kernel = nftables DNAT (root; ports with "
                   "proxy-protocol, encrypted or userspace, and relayed ones, stay in user space; without "
                   "nftables: one warning, user space), userspace = this process's data plane, auto = kernel "
                   "when it works.")
@click.option("--detach", is_flag=True, help="Run in the background; logs go to <data-dir>/node.log.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
def up(peers, bind, advertise, name, data_dir, labels, preset, relay_port, token, insecure, autolock_on,
       unlock_key_file, api_addr, task_user, engine_socket, dns_addr, dns_domain, max_learners, mesh_path, detach,
       log_level):
    """Start a node: create a new cluster, or join one with --peers (and --token).

    Clusters are secure by default: the first node creates the cluster CA and prints
    the join token; every other node joins with `--peers ADDR --token TOKEN`, and all
    node-to-node traffic is authenticated and encrypted (ZeroMQ CURVE). The join
    endpoint listens on the --bind port + 1.
    """
    datadir = _datadir(data_dir)
    datadir.prepare()
    if name is not None and not 1 <= len(name) <= 128:
        raise click.BadParameter("must be 1 to 128 characters", param_hint="--name")
    if bind.startswith("0.0.0.0:") and advertise is None:
        raise click.BadParameter("binding to all interfaces needs --advertise HOST:PORT "
                                 "(the address peers should use)", param_hint="--bind")
    if insecure and token:
        raise click.BadParameter("a join token is for secure clusters; drop --insecure to join with it",
                                 param_hint="--token")
    if insecure and api_addr:
        raise click.BadParameter("the remote API needs the cluster CA's client certificates; drop --insecure",
                                 param_hint="--api-addr")
    unlock_key = _prepare_autolock(datadir, autolock_on, unlock_key_file)
    options = NodeOptions(data_dir=str(datadir.path), bind=bind, advertise=advertise, peers=peers,
                          name=name, labels=labels, preset=preset, relay_port=relay_port, secure=not insecure,
                          insecure=insecure, token=token, autolock=autolock_on, unlock_key=unlock_key,
                          api_addr=api_addr, task_user=task_user, engine_socket=engine_socket, dns_addr=dns_addr,
                          dns_domain=dns_domain, max_learners=max_learners, mesh=mesh_path)
    if detach:
        return _up_detached(options, log_level)
    configure_logging(log_level)
    from p2pswarm.node.daemon import Node  # only `up` needs it: every other command starts without it
    return asyncio.run(Node(options).run())


def _prepare_autolock(datadir: DataDir, autolock_on: bool, key_file: Path | None) -> str | None:
    """The unlock key text the node starts with (None: it waits locked, or has no autolock).

    ``--autolock`` on a data dir without a lock file makes it here (encrypting data already there,
    :mod:`p2pswarm.security.sealing`), before the node (or its detached child) starts, and shows
    a made-up unlock key once on stderr, never in the node's log.
    """
    from p2pswarm.security import autolock
    key = None
    if key_file is not None:
        key = autolock.read_unlock_key_file(key_file)
    if autolock.has_lock(datadir):
        if key is not None:  # a wrong key is one line now, not a node that fails in the background
            autolock.unlock(datadir, key)
            autolock.forget(datadir.path)
        return key
    if not autolock_on:
        if key is not None:
            raise click.BadParameter("this data dir does not use --autolock (add --autolock to turn it on)",
                                     param_hint="--unlock-key-file")
        return None
    if datadir.is_locked():
        raise DataDirError(f"a p2pswarm node is running with data dir {datadir.path}; stop it (`p2pswarm down`) "
                           f"before turning --autolock on")
    raw = autolock.parse_unlock_key(key) if key is not None else autolock.new_unlock_key()
    datadir.lock()  # no node may start on it meanwhile
    try:
        if autolock.plaintext_data(datadir):
            from p2pswarm.security import sealing
            click.echo(f"autolock: encrypting the Raft log, snapshot and key files already in {datadir.path}...",
                       err=True)
            sealing.seal_existing(datadir, raw)
        else:
            autolock.create_lock(datadir, raw)
    finally:
        datadir.unlock()
        autolock.forget(datadir.path)  # the node unlocks it itself
        if key is None and autolock.has_lock(datadir):  # shown even if a later step failed: the data needs it
            click.echo(f"autolock: this node's Raft log, snapshots and key files are encrypted; its unlock key is\n"
                       f"    {autolock.format_unlock_key(raw)}\n"
                       f"keep it safe: `p2pswarm unlock` needs it after every restart of this node "
                       f"(it is not shown again)", err=True)
    return key if key is not None else autolock.format_unlock_key(raw)


def _child_argv(options: NodeOptions, log_level: str) -> list[str]:
    argv = [sys.executable, "-m", "p2pswarm.cli.main", "up", "--data-dir", options.data_dir,
            "--bind", options.bind, "--preset", options.preset, "--log-level", log_level]
    if options.advertise:
        argv += ["--advertise", options.advertise]
    if options.peers:
        argv += ["--peers", ",".join(options.peers)]
    if options.name:
        argv += ["--name", options.name]
    for key, value in options.labels:
        argv += ["--label", f"{key}={value}"]
    if options.relay_port:
        argv += ["--relay-port", str(options.relay_port)]
    if options.insecure:
        argv += ["--insecure"]
    if options.autolock:
        argv += ["--autolock"]
    if options.task_user:
        argv += ["--task-user", options.task_user]
    if options.engine_socket:
        argv += ["--engine-socket", options.engine_socket]
    if options.max_learners is not None:
        argv += ["--max-learners", str(options.max_learners)]
    if options.api_addr:
        argv += ["--api-addr", options.api_addr]
    argv += ["--dns-addr", options.dns_addr, "--dns-domain", options.dns_domain, "--mesh", options.mesh]
    if options.unlock_key:
        argv += ["--unlock-key-file", "-"]  # the key goes through a pipe: not in argv, env or the log
    return argv


def _child_env(options: NodeOptions) -> dict[str, str]:
    env = dict(os.environ)
    src_root = str(Path(p2pswarm.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
    env.pop("P2PSWARM_TOKEN", None)
    if options.token:
        env["P2PSWARM_TOKEN"] = options.token  # not on the command line, where `ps` would show it
    return env


def _up_detached(options: NodeOptions, log_level: str, quiet: bool = False) -> int:
    datadir = DataDir(options.data_dir)
    if datadir.is_locked():
        pid = datadir.read_pid()
        raise DataDirError(f"a p2pswarm node{f' (pid {pid})' if pid else ''} is already running with data dir "
                           f"{datadir.path}; stop it with `p2pswarm down --data-dir {datadir.path}`")
    with datadir.open_log() as log_file:
        offset = log_file.tell()
        proc = subprocess.Popen(_child_argv(options, log_level),
                                stdin=subprocess.PIPE if options.unlock_key else subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                cwd=str(datadir.path), env=_child_env(options))
        if options.unlock_key:
            proc.stdin.write(f"{options.unlock_key}\n".encode())
            proc.stdin.close()
    client = ApiClient(datadir, timeout=2.0)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise click.ClickException(_last_error(datadir.log_path, offset)
                                       or f"the node exited with code {proc.returncode}; see {datadir.log_path}")
        try:
            info = client.get("/v1/info")
            break
        except ApiError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise click.ClickException(f"the node did not start within {START_TIMEOUT:g} s "
                                       f"and was stopped; see {datadir.log_path}")
        time.sleep(0.1)
    if info.get("state") == "locked":
        if not quiet:
            click.echo(f"node {info['name']} ({info['id']}) is running but locked (encryption at rest): run "
                       f"`p2pswarm unlock --data-dir {datadir.path}` with its unlock key (pid {info['pid']})")
        return 0
    if options.peers:
        info = _wait_for_join(client, info, proc)
        if proc.poll() is not None:  # refused for good (wrong token, other cluster...): the node said why
            raise click.ClickException(_last_error(datadir.log_path, offset)
                                       or f"the node exited with code {proc.returncode}; see {datadir.log_path}")
    where = f"data dir {datadir.path}, logs {datadir.log_path}, pid {info['pid']}"
    if quiet:
        return 0
    if info["joined"] or not options.peers:
        click.echo(f"node {info['name']} ({info['id']}) is up at {info['addr']}: "
                   f"cluster of {info['cluster_size']} ({where})")
        if not options.peers and info.get("secure"):
            _show_join_command(client, info["addr"])
    else:
        why = f": {info['join_error']}" if info.get("join_error") else ""
        click.echo(f"node {info['name']} ({info['id']}) is running at {info['addr']} but no peer answered yet "
                   f"({info['join_attempts']} attempts{why}); it keeps retrying with backoff in the background "
                   f"(check with `p2pswarm node ls`; {where})")
    return 0


def _show_join_command(client: ApiClient, addr: str) -> None:
    """After creating a secure cluster: the command that adds a node (as `docker swarm init` prints)."""
    try:
        token = client.get("/v1/security/join-token")["token"]
    except (ApiError, KeyError, TypeError):
        return
    click.echo(f"add nodes with: p2pswarm up --peers {addr} --token {token}")


def _wait_for_join(client: ApiClient, info: dict, proc: subprocess.Popen) -> dict:
    deadline = time.monotonic() + JOIN_WAIT
    shown = 0
    while not info["joined"] and time.monotonic() < deadline and proc.poll() is None:
        if info["join_attempts"] > shown:
            shown = info["join_attempts"]
            progress(f"joining via {', '.join(info['peers'])}: attempt {shown}, retrying with backoff...")
        time.sleep(0.1)
        try:
            info = client.get("/v1/info")
        except ApiError:  # the node is going away (a refused join): let the caller report why
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            break
    if shown:
        end_progress()
    return info


def _last_error(log_path: Path, offset: int) -> str | None:
    """The last error line the child wrote in this run (after ``offset``)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for marker in ("error: ", " ERROR ", " CRITICAL "):
        for line in reversed(lines):
            if marker in line or line.startswith(marker.strip()):
                text = line.split("error: ", 1)[1] if line.startswith("error: ") else line
                return f"the node failed to start: {text.strip()}"
    return None


# ------------------------------------------------------------ down

def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited process left unreaped (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@click.command()
@data_dir_option
def down(data_dir):
    """Leave the cluster gracefully and stop the local node."""
    datadir = _datadir(data_dir)
    client = ApiClient(datadir)
    info = client.get("/v1/info")
    client.post("/v1/shutdown")
    deadline = time.monotonic() + STOP_TIMEOUT
    pid = int(info["pid"])
    # Wait for the process itself, not just the data-dir lock: the lock is released a moment
    # before the interpreter has finished exiting.
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise click.ClickException(f"node pid {pid} did not stop within {STOP_TIMEOUT:g} s; `kill {pid}` "
                                       f"stops it (the cluster then sees it dead, not left)")
        time.sleep(0.05)
    click.echo(f"node {info['name']} ({info['id']}) left the cluster and stopped")
    return 0


# ------------------------------------------------------------ node ...

@click.group(cls=LazyGroup, lazy={"inspect": "p2pswarm.cli.node_admin_cmds:node_inspect",
                                  "rm": "p2pswarm.cli.node_admin_cmds:node_rm",
                                  "update": "p2pswarm.cli.service_cmds:node_update"})
def node():
    """Inspect the cluster's nodes (as the local node sees them)."""


@node.command("ls")
@data_dir_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def node_ls(data_dir, fmt):
    """List every member: id, name, address, status, availability (active, pause, drain), Raft role, RTT,
    container engine, task isolation and labels (`node inspect` says why a node has no engine or isolation)."""
    members = ApiClient(_datadir(data_dir)).get("/v1/members")["members"]
    if fmt == "json":
        click.echo(to_json(members))
        return 0
    rows = [(m["id"] + (" *" if m.get("self") else ""), m["name"], m["addr"], m["status"],
             m.get("availability", "-"), m.get("role", "-"), fmt_rtt(m.get("rtt_ms")), _brief(m.get("engine", "-")),
             _brief(m.get("isolation", "-")), fmt_labels(m.get("labels", {}))) for m in members]
    click.echo(table(("ID", "NAME", "ADDRESS", "STATUS", "AVAILABILITY", "ROLE", "RTT", "ENGINE", "ISOLATION",
                      "LABELS"), rows))
    return 0


def _brief(capability: str) -> str:
    """An engine or isolation without the reason it is missing (too long for a table): ``docker (20.10.24)``,
    ``unavailable``, ``cgroup-v1``, ``none``."""
    return capability if capability.startswith("docker") else capability.split(" (")[0]

