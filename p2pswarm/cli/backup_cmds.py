"""`p2pswarm cluster backup FILE` and `cluster restore FILE`: the cluster's services, stacks, kv, secrets and
configs in one encrypted file, and back into a new cluster (see docs/operations.md, "Backups")."""

from __future__ import annotations

import base64
import secrets
import sys
import time
from pathlib import Path

import click
import msgpack

from p2pswarm.api.client import ApiClient
from p2pswarm.backup import contents as backup_contents
from p2pswarm.backup.fileformat import (
    KEY_UNLOCK,
    check_passphrase,
    open_backup,
    read_header,
    write_atomic,
)
from p2pswarm.cli.node_cmds import _datadir, data_dir_option

BACKUP_TIMEOUT = 120.0
"""Seconds the CLI waits for the node (a read barrier, reading the state, scrypt)."""
MAX_FILE_BYTES = 4 * 1024 ** 3


def _passphrase_from(path: Path) -> str:
    """A passphrase file's first line (``-``: standard input), without its line break."""
    try:
        text = sys.stdin.readline() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not readable text"
        raise click.ClickException(f"cannot read the passphrase file {path}: {why}") from None
    return text.splitlines()[0] if text.strip() else ""


def _unlock_key_from(path: Path | None, prompt: str) -> str:
    from p2pswarm.security.autolock import check_key_text, read_unlock_key_file
    if path is not None:
        return read_unlock_key_file(path)
    return check_key_text(click.prompt(prompt, hide_input=True))


passphrase_option = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
    help="Read the passphrase from the first line of PATH ('-': stdin) instead of prompting.")
unlock_key_option = click.option(
    "--unlock-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
    help="The cluster's unlock key (clusters with --autolock; '-': stdin).")


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@data_dir_option
@passphrase_option
@unlock_key_option
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
def backup(file, data_dir, passphrase_file, unlock_key_file, force):
    """Write a consistent, encrypted backup of the cluster to FILE.

    It holds the services (stacks too), kv pairs, configs and secrets as of one point in the Raft log
    (a read through the leader), sealed with a passphrase (prompted, or --passphrase-file) or, on a
    cluster with --autolock, with its unlock key (--unlock-key-file). Keep the passphrase: without it
    the file opens for nobody. Restore it into a new cluster with `p2pswarm cluster restore FILE`.
    """
    if passphrase_file is not None and unlock_key_file is not None:
        raise click.UsageError("give --passphrase-file or --unlock-key-file, not both")
    if file.exists() and not force:
        raise click.ClickException(f"{file} exists; choose another name or replace it with --force")
    if unlock_key_file is not None:
        body = {"unlock_key": _unlock_key_from(unlock_key_file, "")}
    else:
        text = _passphrase_from(passphrase_file) if passphrase_file is not None else click.prompt(
            "Backup passphrase", hide_input=True, confirmation_prompt=True)
        check_passphrase(text)
        body = {"passphrase": text}
    out = ApiClient(_datadir(data_dir), timeout=BACKUP_TIMEOUT).post("/v1/cluster/backup", body)
    write_atomic(file, base64.b64decode(out["file"]))
    sealed = "the unlock key" if unlock_key_file is not None else "a passphrase"
    click.echo(f"backed up cluster {out['cluster']} at index {out['index']}: "
               f"{backup_contents.describe(out['summary'])} -> {file} ({out['bytes']} bytes, sealed with {sealed})")
    return 0


@click.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@data_dir_option
@passphrase_option
@unlock_key_option
def restore(file, data_dir, passphrase_file, unlock_key_file):
    """Restore a backup into a NEW cluster: its services, stacks, kv pairs, secrets and configs.

    Run it on a cluster that holds nothing yet (`p2pswarm up` on a fresh data dir), then join the other
    nodes. The new cluster keeps its own node identities, CA, join token and Raft members; the secrets
    are sealed again under its keys. A cluster that already holds state refuses the restore.
    """
    from p2pswarm.security.autolock import parse_unlock_key
    if passphrase_file is not None and unlock_key_file is not None:
        raise click.UsageError("give --passphrase-file or --unlock-key-file, not both")
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise click.ClickException(f"{file} is over {MAX_FILE_BYTES // 1024 ** 3} GiB: not a p2pswarm backup")
        blob = file.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror or exc}") from None
    header = read_header(blob, str(file))
    if header.key == KEY_UNLOCK:
        if passphrase_file is not None:
            raise click.UsageError(f"{file} is sealed with the unlock key of cluster {header.cluster}: give "
                                   "--unlock-key-file, not --passphrase-file")
        secret = parse_unlock_key(_unlock_key_from(unlock_key_file, f"Unlock key of cluster {header.cluster}"))
    else:
        if unlock_key_file is not None:
            raise click.UsageError(f"{file} is sealed with a passphrase: give --passphrase-file, not "
                                   "--unlock-key-file")
        text = _passphrase_from(passphrase_file) if passphrase_file is not None else click.prompt(
            "Backup passphrase", hide_input=True)
        secret = text.encode("utf-8")
    _, contents = open_backup(blob, secret, str(file))
    client = ApiClient(_datadir(data_dir), timeout=BACKUP_TIMEOUT)
    token = secrets.token_hex(8)
    parts = list(backup_contents.parts(backup_contents.items(contents)))
    parts = parts or [[]]
    for number, part in enumerate(parts):
        items = base64.b64encode(msgpack.packb(part, use_bin_type=True)).decode()
        client.post("/v1/cluster/restore", {"restore": token, "part": number, "last": number == len(parts) - 1,
                                            "items": items})
    new = client.get("/v1/cluster")["cluster_id"]
    made = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(header.created))
    click.echo(f"restored {backup_contents.describe(backup_contents.summary(contents))} from cluster "
               f"{header.cluster} (backed up {made}, index {header.index}) into cluster {new}")
    return 0

