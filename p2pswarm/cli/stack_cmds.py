"""`p2pswarm stack deploy|ls|rm`: a compose file's services as one stack (see :mod:`p2pswarm.cluster.stack`).

Deploy creates the stack's new services and updates the changed ones (``service update``:
a change to what tasks run rolls out by the service's update config); unchanged ones are
left alone.  Services the file no longer has are removed only with ``--prune``.  Deploy
returns at once, as `docker stack deploy` does: follow with `p2pswarm service ls`.
"""

from __future__ import annotations

from collections import Counter

import click

from p2pswarm.cli.node_cmds import data_dir_option
from p2pswarm.cli.output import table, to_json
from p2pswarm.cli.service_cmds import _client, _path
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.stack import StackError, check_stack_name, load, translate


def _stack_services(client, name: str) -> list[str]:
    return sorted(r["name"] for r in client.get("/v1/services")["services"] if r.get("stack") == name)


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
    """Create or update stack NAME from a compose file: service S becomes NAME_S."""
    try:
        parsed = translate(load(compose_file), name, compose_file)
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in parsed.warnings:
        click.echo(f"warning: {warning}", err=True)
    client = _client(data_dir)
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
    return 0
