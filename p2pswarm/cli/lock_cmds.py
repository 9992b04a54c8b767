"""`p2pswarm unlock`: give a locked node (``up --autolock``, restarted) its unlock key."""

from __future__ import annotations

import sys

import click

from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.cli.node_cmds import _datadir, data_dir_option


@click.command()
@click.option("--key-file", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Read the unlock key (P2PSU-1-...) from PATH [default: stdin when it is not a terminal, "
                   "else a hidden prompt].")
@data_dir_option
def unlock(key_file, data_dir):
    """Unlock the local node's encrypted data (after a restart of a node started with --autolock)."""
    from p2pswarm.security.autolock import check_key_text, read_unlock_key_file
    if key_file is not None:
        key = read_unlock_key_file(key_file)
    elif not sys.stdin.isatty():
        key = check_key_text(sys.stdin.read(4096), "the unlock key on stdin")
    else:
        key = check_key_text(click.prompt("unlock key", hide_input=True, err=True))
    client = ApiClient(_datadir(data_dir))
    info = client.get("/v1/info")
    if info.get("state") != "locked":
        click.echo(f"node {info.get('name')} ({info.get('id')}) is not locked; nothing to do")
        return 0
    try:
        client.post("/v1/unlock", {"key": key})
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("node unlocked")
    return 0
