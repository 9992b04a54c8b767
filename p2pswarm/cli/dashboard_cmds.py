"""``p2pswarm dashboard``: serve the read-only web dashboard of the local node (:mod:`p2pswarm.dashboard`)."""

from __future__ import annotations

from pathlib import Path

import click

from p2pswarm.api.client import ApiClient
from p2pswarm.cli.node_cmds import _datadir, data_dir_option
from p2pswarm.dashboard.server import NodeReader, loopback_host, make_server
from p2pswarm.node.datadir import default_lab_dir

DEFAULT_LISTEN = "127.0.0.1:8765"
API_TIMEOUT = 5.0


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); a click error otherwise."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT (e.g. {DEFAULT_LISTEN}), got {value[:60]!r}",
                                 param_hint="--listen")
    return host, int(port)


def chaos_paths(report: Path | None) -> list[Path]:
    """Where the chaos charts come from: the given file or directory, else the current directory (where
    ``lab chaos`` writes by default) and the chaos lab's directory."""
    if report is not None:
        return [report]
    lab = default_lab_dir()
    return [Path.cwd(), lab.with_name(lab.name + "-chaos")]


@click.command()
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Address to serve the page on (loopback unless --public).")
@click.option("--public", is_flag=True, help="Allow a --listen address that is not loopback: anyone who can reach "
                                             "it sees the cluster's nodes, services and events.")
@click.option("--chaos-report", type=click.Path(exists=True, path_type=Path), default=None,
              help="A `lab chaos` JSON report, or a directory whose newest chaos-*.json is charted "
                   "[default: the current directory and the chaos lab's directory].")
@data_dir_option
def dashboard(listen, public, chaos_report, data_dir):
    """Serve a live, read-only web page of the cluster (nodes by zone, services, tasks, mesh routes, events,
    the last chaos run) until Ctrl-C."""
    host, port = parse_listen(listen)
    if not loopback_host(host) and not public:
        raise click.UsageError(f"--listen {listen} is not a loopback address: add --public to show the cluster "
                               f"to everyone who can reach it")
    reader = NodeReader(ApiClient(_datadir(data_dir), timeout=API_TIMEOUT), chaos_paths(chaos_report))
    try:
        server = make_server(host, port, reader)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    click.echo(f"dashboard: http://{shown}:{bound_port}/ (Ctrl-C stops it)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
