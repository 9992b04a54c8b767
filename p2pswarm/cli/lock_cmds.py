"""`p2pswarm unlock` (give a locked node its unlock key) and `p2pswarm unlock-key --rotate`."""

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
    key = _read_key(key_file, "unlock key")
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


@click.command("unlock-key")
@click.option("--rotate", is_flag=True, required=True,
              help="Replace this node's unlock key (the only action: the current key is never stored).")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="The current unlock key [default: stdin when it is not a terminal, else a hidden prompt].")
@click.option("--new-key-file", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Use the unlock key in PATH (e.g. one shared by several nodes) instead of making one.")
@data_dir_option
def unlock_key(rotate, key_file, new_key_file, data_dir):
    """Rotate the unlock key of this node's encrypted data (--autolock).

    The data key stays; only its lock file is rewritten (atomically), sealed under the new
    unlock key. Works whether the node runs or not; the old key stops working at once.
    """
    from p2pswarm.security import autolock
    datadir = _datadir(data_dir)
    if not autolock.has_lock(datadir):
        raise click.ClickException(f"data dir {datadir.path} does not use --autolock: there is no unlock key "
                                   f"to rotate")
    old = autolock.parse_unlock_key(_read_key(key_file, "current unlock key"))
    new_text = autolock.read_unlock_key_file(new_key_file) if new_key_file else None
    new = autolock.parse_unlock_key(new_text) if new_text else autolock.new_unlock_key()
    autolock.write_lock(datadir, new, autolock.open_lock(datadir, old))
    if new_text:
        click.echo("unlock key rotated: the key in " + new_key_file + " now unlocks this node")
    else:
        click.echo(f"unlock key rotated; the new unlock key is\n    {autolock.format_unlock_key(new)}\n"
                   f"keep it safe: the old key no longer unlocks this node (it is not shown again)")
    return 0


def _read_key(key_file: str | None, what: str) -> str:
    """An unlock key text from ``key_file``, else stdin when piped, else a hidden prompt."""
    from p2pswarm.security.autolock import check_key_text, read_unlock_key_file
    if key_file is not None:
        return read_unlock_key_file(key_file)
    if not sys.stdin.isatty():
        return check_key_text(sys.stdin.read(4096), f"the {what} on stdin")
    return check_key_text(click.prompt(what, hide_input=True, err=True))
