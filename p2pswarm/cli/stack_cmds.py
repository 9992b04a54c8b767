"""`p2pswarm stack deploy|ls|rm`: a compose file's services as one stack (see :mod:`p2pswarm.cluster.stack`).

Deploy creates the stack's new services and updates the changed ones (``service update``:
a change to what tasks run rolls out by the service's update config); unchanged ones are
left alone.  Services the file no longer has are removed only with ``--prune``.  Deploy
returns at once, as `docker stack deploy` does: follow with `p2pswarm service ls`.

Secrets and configs declared with ``file:`` are created first (every file is read before anything is
created), labelled ``p2pswarm.stack=NAME``, and removed by ``stack rm``.  They are immutable: one that
exists is kept (a config whose file changed is refused: give it a new ``name:``; a secret's contents
cannot be compared, so deploy says it kept it).
"""

from __future__ import annotations

import base64
import urllib.parse
from collections import Counter

import click

from p2pswarm.api.client import ApiError
from p2pswarm.cli.node_cmds import data_dir_option
from p2pswarm.cli.object_cmds import read_data
from p2pswarm.cli.output import table, to_json
from p2pswarm.cli.service_cmds import _client, _path
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.stack import Stack, StackError, check_stack_name, load, translate

STACK_LABEL = "p2pswarm.stack"
"""The label of the secrets and configs a stack created from its files (its value: the stack name)."""


def _stack_services(client, name: str) -> list[str]:
    return sorted(r["name"] for r in client.get("/v1/services")["services"] if r.get("stack") == name)


def _object_path(kind: str, name: str = "") -> str:
    return f"/v1/{kind}s" + (f"/{urllib.parse.quote(name, safe='')}" if name else "")


def _existing(client, kind: str, name: str) -> dict | None:
    try:
        return client.get(_object_path(kind, name))
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _make_objects(client, parsed: Stack) -> None:
    """Create the stack's secrets and configs from their files; all files are read (and each existing
    config compared) before anything is created, so a bad file changes nothing."""
    todo = []
    for obj in parsed.objects:
        have = _existing(client, obj.kind, obj.name)
        if have is None:
            todo.append((obj, read_data(obj.kind, obj.file)))
        elif obj.kind == "config" and base64.b64decode(have.get("data", "")) != read_data(obj.kind, obj.file):
            raise click.ClickException(f"config {obj.name} exists with other contents, and configs are immutable: "
                                       f"give it a new name (name: in the file) and deploy again")
        elif obj.kind == "secret":
            click.echo(f"Secret {obj.name} exists: kept (secrets are immutable: to change one, give it a new name)")
    for obj, data in todo:
        click.echo(f"Creating {obj.kind} {obj.name}")
        client.request("POST", _object_path(obj.kind), {"name": obj.name, "labels": {STACK_LABEL: parsed.name},
                                                        "data": base64.b64encode(data).decode()})


@click.group()
def stack():
    """Deploy and manage stacks: the services of a compose file (a supported subset)."""


@stack.command("deploy")
@click.argument("name")
@click.option("--compose-file", "-c", "compose_file", required=True, type=click.Path(dir_okay=False),
              help="The compose file (YAML).")
@click.option("--prune", is_flag=True, help="Remove the stack's services that the file no longer has.")
@data_dir_option
def deploy(name, compose_file, prune, data_dir):
    """Create or update stack NAME from a compose file: service S becomes NAME_S.

    \b
    The compose subset honoured (anything else is refused or warned about, one line each):
      services.S: image, command, environment, ports (short "8080:80" or long with mode: host),
        healthcheck, working_dir, user, stop_signal, stop_grace_period, volumes (name:/path[:ro],
        /abs:/path, long syntax), secrets, configs,
        deploy: replicas, mode, placement (constraints, preferences spread),
        update_config, rollback_config, restart_policy,
        resources (reservations and limits: cpus, memory, pids)
      top level: services, volumes, secrets and configs (file: created as NAME_X, external: true used as is)
    """
    try:
        parsed = translate(load(compose_file), name, compose_file)
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in parsed.warnings:
        click.echo(f"warning: {warning}", err=True)
    client = _client(data_dir)
    _make_objects(client, parsed)
    existing = set(_stack_services(client, name))
    for spec in parsed.specs:
        if spec.name not in existing:
            click.echo(f"Creating service {spec.name}")
            client.request("POST", "/v1/services", {"spec": spec.to_dict()})
            continue
        info = client.get(_path(spec.name))
        if ServiceSpec.from_dict(info["spec"]) == spec:
            click.echo(f"Service {spec.name} is unchanged")
            continue
        click.echo(f"Updating service {spec.name}")
        client.request("POST", _path(spec.name, "update"), {"spec": spec.to_dict(), "version": info["version"]})
    for gone in sorted(existing - {s.name for s in parsed.specs}):
        if prune:
            click.echo(f"Removing service {gone}")
            client.request("DELETE", _path(gone))
        else:
            click.echo(f"warning: service {gone} is no longer in {compose_file}; kept (use --prune to remove it)",
                       err=True)
    return 0


@stack.command("ls")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@data_dir_option
def ls(fmt, data_dir):
    """List stacks and how many services each has."""
    counts = Counter(r["stack"] for r in _client(data_dir).get("/v1/services")["services"] if r.get("stack"))
    rows = [{"name": k, "services": counts[k]} for k in sorted(counts)]
    click.echo(to_json(rows) if fmt == "json" else table(["NAME", "SERVICES"],
                                                         [[r["name"], r["services"]] for r in rows]))
    return 0


@stack.command("rm")
@click.argument("name")
@data_dir_option
def rm(name, data_dir):
    """Remove stack NAME: every service it deployed (their tasks are stopped)."""
    try:
        check_stack_name(name)
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    client = _client(data_dir)
    services = _stack_services(client, name)
    if not services:
        raise click.ClickException(f"stack {name} has no services (see `p2pswarm stack ls`)")
    for svc in services:
        click.echo(f"Removing service {svc}")
        client.request("DELETE", _path(svc))
    for kind in ("secret", "config"):
        for row in client.get(_object_path(kind))[f"{kind}s"]:
            if row.get("labels", {}).get(STACK_LABEL) != name:
                continue
            click.echo(f"Removing {kind} {row['name']}")
            try:
                client.request("DELETE", _object_path(kind, row["name"]))
            except ApiError as exc:  # e.g. a removed service's tasks still stopping: not worth failing rm
                click.echo(f"warning: {kind} {row['name']} kept: {exc}; remove it later with "
                           f"`p2pswarm {kind} rm {row['name']}`", err=True)
    return 0
