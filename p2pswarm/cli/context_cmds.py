"""`p2pswarm context create|use|ls|rm`: named remote targets, like `docker context`.

A context is a name for ``--host https://HOST:PORT --bundle DIR``; the contexts live in
``contexts.json`` (0600) under ``$P2PSWARM_CONFIG_DIR``, else ``~/.config/p2pswarm``.  The
target of one command, first match wins: ``--host``/``P2PSWARM_HOST`` (with ``--bundle``/
``P2PSWARM_BUNDLE``), ``--context``/``P2PSWARM_CONTEXT``, the context chosen with
``context use``; else the local node (``default``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from p2pswarm.cli.output import table

if TYPE_CHECKING:
    from p2pswarm.api.remote_client import Remote

CONFIG_ENV = "P2PSWARM_CONFIG_DIR"
DEFAULT = "default"
"""The built-in context: the local node of the default data dir."""


def config_path() -> Path:
    base = os.environ.get(CONFIG_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".config" / "p2pswarm") / "contexts.json"


def load() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"current": DEFAULT, "contexts": {}}
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path} is unreadable ({exc}); fix or remove it") from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts"), dict):
        raise click.ClickException(f"{path} is not a p2pswarm context file; fix or remove it")
    return data


def save(data: dict[str, Any]) -> None:
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def target(host: str | None, bundle: str | None, context: str | None) -> Remote | None:
    """The remote target of this command (None: the local node); ClickException with one line."""
    if host:
        if not bundle:
            raise click.ClickException("--host needs a client bundle: add --bundle DIR (or set P2PSWARM_BUNDLE), "
                                       "or use a context (`p2pswarm context create`)")
        return checked_remote(host, bundle)
    data = load()
    name = context or data.get("current") or DEFAULT
    if name == DEFAULT:
        return None
    entry = data["contexts"].get(name)
    if not isinstance(entry, dict):
        raise click.ClickException(f"no context is named {name} (see `p2pswarm context ls`)")
    return checked_remote(entry.get("host", ""), entry.get("bundle", ""))


def checked_remote(host: str, bundle: str | Path) -> Remote:
    """The remote target ``host`` reached with ``bundle``; ClickException with one line.  Imported here: only a
    remote target needs the TLS and certificate code, and every command asks :func:`target`."""
    from p2pswarm.api.remote_client import RemoteError, remote
    try:
        return remote(host, bundle)
    except RemoteError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def context():
    """Named remote targets (a node's --api-addr and a client bundle), like `docker context`."""


@context.command("create")
@click.argument("name")
@click.option("--host", required=True, metavar="https://HOST:PORT", help="A node's --api-addr.")
@click.option("--bundle", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The client bundle directory (`p2pswarm cluster client-cert --out DIR`).")
@click.option("--use", "use_it", is_flag=True, help="Also make it the current context.")
def create(name, host, bundle, use_it):
    """Create a context NAME for a remote node."""
    if name == DEFAULT or not name.isprintable() or not 1 <= len(name) <= 64:
        raise click.BadParameter(f"a context name is 1 to 64 printable characters, not {DEFAULT!r}")
    checked = checked_remote(host, bundle)
    data = load()
    if name in data["contexts"]:
        raise click.ClickException(f"context {name} exists; remove it first (`p2pswarm context rm {name}`)")
    data["contexts"][name] = {"host": checked.url, "bundle": str(checked.bundle)}
    if use_it:
        data["current"] = name
    save(data)
    click.echo(f"context {name}: {checked.url} as {checked.name} ({checked.role}) of cluster {checked.cluster_id}")


@context.command("use")
@click.argument("name")
def use(name):
    """Make NAME the current context (`default` is the local node)."""
    data = load()
    if name != DEFAULT and name not in data["contexts"]:
        raise click.ClickException(f"no context is named {name} (see `p2pswarm context ls`)")
    data["current"] = name
    save(data)
    click.echo(f"current context: {name}")


@context.command("ls")
def ls():
    """List the contexts; * marks the current one."""
    data = load()
    current = data.get("current") or DEFAULT
    rows = [("*" if current == DEFAULT else "", DEFAULT, "local node (unix socket)", "-", "-")]
    for name, entry in sorted(data["contexts"].items()):
        try:
            t = checked_remote(entry.get("host", ""), entry.get("bundle", ""))
            who = f"{t.name} ({t.role}) of {t.cluster_id}"
        except click.ClickException as exc:
            who = f"unusable: {exc.format_message()}"
        rows.append(("*" if current == name else "", name, entry.get("host", "-"), entry.get("bundle", "-"), who))
    click.echo(table(("", "NAME", "HOST", "BUNDLE", "CLIENT"), rows))


@context.command("rm")
@click.argument("name")
def rm(name):
    """Remove context NAME (its bundle directory stays)."""
    data = load()
    if name not in data["contexts"]:
        raise click.ClickException(f"no context is named {name} (see `p2pswarm context ls`)")
    del data["contexts"][name]
    if data.get("current") == name:
        data["current"] = DEFAULT
    save(data)
    click.echo(f"removed context {name}")
