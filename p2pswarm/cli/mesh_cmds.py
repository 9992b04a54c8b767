"""`p2pswarm mesh ...`: what this node's routing mesh does with each published port, and why."""

from __future__ import annotations

import click

from p2pswarm.api.client import ApiClient
from p2pswarm.cli.node_cmds import _datadir, data_dir_option
from p2pswarm.cli.output import table, to_json


@click.group()
def mesh():
    """The routing mesh: every node serves every published port."""


@mesh.command("routes")
@click.argument("port", type=click.IntRange(1, 65535), required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@data_dir_option
def routes(port, fmt, data_dir):
    """Show where this node sends connections to each published port (or PORT only)."""
    view = ApiClient(_datadir(data_dir)).get("/v1/mesh")
    rows = [r for r in view.get("routes", []) if port is None or r["port"] == port]
    errors = {key: e for key, e in view.get("bind_errors", {}).items()
              if port is None or _port_number(key) == port}
    if fmt == "json":
        click.echo(to_json({"routes": rows, "bind_errors": errors, "running": view.get("running", False),
                            "relay_port": view.get("relay_port"), "kernel": view.get("kernel") or {}}))
        return 0
    if not rows and not errors:
        click.echo("no published ports" + (f" on {port}" if port else ""))
        return 0
    click.echo(table(["PORT", "PROTO", "SERVICE", "TASK", "NODE", "BACKEND", "ROUTE", "PATH", "WHY"],
                     [[r["port"], r.get("protocol", "tcp"), r["service"], r["task"], r["node_name"], r["addr"],
                       r["route"], r.get("path", "userspace"), r["why"]]
                      for r in sorted(rows, key=lambda r: (r["port"], r.get("protocol", "tcp"),
                                                           r["route"] == "excluded", r["task"]))]))
    for line in _userspace_notes(rows, view.get("kernel") or {}):
        click.echo(line)
    for key, message in sorted(errors.items(), key=lambda kv: (_port_number(kv[0]), kv[0])):
        where = key if "/" in str(key) else f"{key}/tcp"
        click.echo(f"port {where}: not served on this node: {message}", err=True)
    plane = view.get("data_plane") or {}
    for name, what in (("relay", "relay"), ("tls_relay", "TLS relay (encrypted ports)")):
        if (plane.get(name) or {}).get("error"):
            click.echo(f"mesh {what}: not listening on this node: {plane[name]['error']}", err=True)
    udp_relay = (plane.get("udp") or {}).get("relay") or {}
    if udp_relay.get("error"):
        click.echo(f"mesh UDP relay: not listening on this node: {udp_relay['error']}", err=True)
    return 0


def _userspace_notes(rows: list[dict], kernel: dict) -> list[str]:
    """Why ports take the user-space path: one line for the whole node when its kernel path is off,
    else one line per such port."""
    if not kernel.get("on"):
        why = kernel.get("off_why") or "no kernel path on this node"
        return [f"path: user space for every port ({why})"] if rows else []
    notes = {}
    for r in rows:
        if r.get("path") == "userspace":
            notes[(r["port"], r.get("protocol", "tcp"))] = r.get("path_why", "")
    return [f"port {port}/{proto}: user space: {why}" for (port, proto), why in sorted(notes.items())]


def _port_number(key: object) -> int:
    """``8080`` (TCP) or ``"5353/udp"`` (UDP): the keys of the data plane's ``bind_errors``."""
    text = str(key).partition("/")[0]
    return int(text) if text.isdigit() else 0
