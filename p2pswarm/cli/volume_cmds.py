"""`p2pswarm volume ls|rm`: the named volumes of one node (see :mod:`p2pswarm.runtime.volumes`).

A named volume lives on the node where a task first mounted it (``--mount type=volume,source=NAME,...``),
so these commands answer for the node they talk to: the local node, or the node ``--host``/``--context``
points at.  Volumes are made on first use; there is no ``volume create``.
"""

from __future__ import annotations

import urllib.parse

import click

from p2pswarm.cli.node_cmds import data_dir_option
from p2pswarm.cli.output import table, to_json
from p2pswarm.cli.service_cmds import _client


def human_size(size: int, complete: bool = True) -> str:
    """``4.0K``, ``12.5M``, ``3.1G`` (binary units); ``>=`` when not every file was counted."""
    value, unit = float(size), "B"
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            break
        value /= 1024
    text = f"{int(value)}B" if unit == "B" else f"{value:.1f}{unit}"
    return text if complete else ">=" + text


@click.group()
def volume():
    """The named volumes of a node: made on first use, kept across task restarts, removed when unused."""


@volume.command("ls")
@click.option("--node", default="", metavar="ID", help="The node to list (the node this command talks to).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@data_dir_option
def ls(node, fmt, data_dir):
    """List the node's volumes: name, size on disk and the tasks that mount them."""
    query = f"?node={urllib.parse.quote(node, safe='')}" if node else ""
    answer = _client(data_dir).get("/v1/volumes" + query)
    if fmt == "json":
        click.echo(to_json(answer))
        return 0
    unknown = "?" if not answer.get("in_use_known", True) else "-"
    rows = [[v["name"], human_size(v["size"], v["size_complete"]), ", ".join(v["in_use"]) or unknown]
            for v in answer["volumes"]]
    click.echo(f"NODE {answer['node_name']} ({answer['node'][:12]})")
    click.echo(table(["VOLUME NAME", "SIZE", "IN USE BY"], rows))
    return 0


@volume.command("rm")
@click.argument("name")
@data_dir_option
def rm(name, data_dir):
    """Remove volume NAME and its files from the node (refused while a task there uses it)."""
    answer = _client(data_dir).request("DELETE", "/v1/volumes/" + urllib.parse.quote(name, safe=""))
    click.echo(answer["removed"])
    return 0
