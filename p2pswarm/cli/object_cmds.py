"""`p2pswarm secret ...` and `p2pswarm config ...`: named data that services read as files (like `docker secret`).

Both groups are made by one factory: the commands are the same, only what `inspect` shows differs
(a config's data, never a secret's).  The data travels to the node base64-encoded in the request
body; the node seals a secret before it goes into the Raft log.
"""

from __future__ import annotations

import base64
import sys
import time
import urllib.parse

import click

from p2pswarm.api.client import ApiClient
from p2pswarm.cli.node_cmds import _datadir, data_dir_option
from p2pswarm.cli.output import fmt_labels, remove_each, table, to_json
from p2pswarm.cluster.objects import MAX_DATA

API_TIMEOUT = 60.0
"""Seconds the CLI waits for one answer (a create commits through Raft)."""


def _client(data_dir) -> ApiClient:
    return ApiClient(_datadir(data_dir), timeout=API_TIMEOUT)


def read_data(kind: str, source: str | None) -> bytes:
    """The contents of FILE, or of stdin for ``-`` (or no FILE when stdin is not a terminal); one-line errors."""
    if source is None:
        if sys.stdin.isatty():
            raise click.UsageError(f"give the FILE holding the {kind}, or - to read it from stdin")
        source = "-"
    if source == "-":
        data = sys.stdin.buffer.read(MAX_DATA + 1)
        where = "stdin"
    else:
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_DATA + 1)
        except OSError as exc:
            raise click.ClickException(f"cannot read {source}: {exc.strerror or exc}") from None
        where = source
    if not data:
        raise click.ClickException(f"{where} is empty: a {kind} holds 1 to {MAX_DATA // 1024} KiB")
    if len(data) > MAX_DATA:
        raise click.ClickException(f"{where} is over {MAX_DATA // 1024} KiB, the most a {kind} holds")
    return data


def ago(at: float, now: float | None = None) -> str:
    """``12 seconds ago``, ``3 minutes ago``, ``2 days ago`` (as `docker secret ls` shows CREATED)."""
    seconds = max(0, int((time.time() if now is None else now) - at))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return f"{seconds} second{'s' if seconds != 1 else ''} ago"


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint="--label")
        out[key] = val if sep else ""
    return out


def object_group(kind: str, about: str) -> click.Group:
    """The `p2pswarm secret` or `p2pswarm config` group."""
    base = f"/v1/{kind}s"

    def path(name: str) -> str:
        return f"{base}/{urllib.parse.quote(name, safe='')}"

    @click.group(kind, help=about)
    def group():
        pass

    @group.command("create")
    @click.argument("name")
    @click.argument("file", required=False, type=click.Path(dir_okay=False, allow_dash=True))
    @click.option("--label", "-l", multiple=True, help="KEY=VALUE label (repeatable).")
    @data_dir_option
    def create(name, file, label, data_dir):
        data = read_data(kind, file)
        done = _client(data_dir).request("POST", base, {"name": name, "labels": _labels(label),
                                                        "data": base64.b64encode(data).decode()})
        click.echo(done["id"])
        return 0

    create.help = (f"Create {kind} NAME from FILE (- or no FILE: stdin), at most {MAX_DATA // 1024} KiB. "
                   f"{kind.capitalize()}s are immutable: to change one, create a new one and update the services.")

    @group.command("ls")
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    @data_dir_option
    def ls(fmt, data_dir):
        rows = _client(data_dir).get(base)[f"{kind}s"]
        if fmt == "json":
            click.echo(to_json(rows))
            return 0
        click.echo(table(["ID", "NAME", "CREATED", "SERVICES"],
                         [[r["id"], r["name"], ago(r["created_at"]), ",".join(r["services"]) or "-"] for r in rows]))
        return 0

    ls.help = f"List the cluster's {kind}s and the services using each."

    @group.command("inspect")
    @click.argument("name")
    @click.option("--pretty", is_flag=True, help="Human-readable instead of JSON.")
    @data_dir_option
    def inspect(name, pretty, data_dir):
        info = _client(data_dir).get(path(name))
        if not pretty:
            click.echo(to_json(info))
            return 0
        created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["created_at"]))
        for key, value in (("ID", info["id"]), ("Name", info["name"]), ("Labels", fmt_labels(info["labels"])),
                           ("Created at", created), ("Size", f"{info['size']} bytes"),
                           ("Services", ", ".join(info["services"]) or "-")):
            click.echo(f"{key + ':':<12}{value}")
        if "data" in info:
            click.echo("Data:")
            click.echo(base64.b64decode(info["data"]).decode("utf-8", "replace"))
        return 0

    inspect.help = (f"Show {kind} NAME (or id){'' if kind == 'config' else ': never its data'}."
                    + (" JSON carries the data in base64; --pretty prints it." if kind == "config" else ""))

    @group.command("rm")
    @click.argument("names", nargs=-1, required=True)
    @data_dir_option
    def rm(names, data_dir):
        return remove_each(_client(data_dir), names, path)

    rm.help = f"Remove {kind}s (refused while a service uses one)."
    return group


secret = object_group("secret", "Manage secrets: sensitive data sealed in the cluster state, delivered only to the "
                                "tasks that use them, as files ($P2PSWARM_SECRETS/NAME, /run/secrets/NAME).")
config = object_group("config", "Manage configs: non-secret data delivered to tasks as files "
                                "($P2PSWARM_CONFIGS/NAME, or the target path in a container).")
