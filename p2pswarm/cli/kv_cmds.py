"""`p2pswarm kv put|get|rm`: the replicated key/value store, through the local node."""

from __future__ import annotations

import urllib.parse

import click

from p2pswarm.api.client import ApiClient
from p2pswarm.cli.node_cmds import _datadir, data_dir_option

KV_TIMEOUT = 60.0
"""Seconds the CLI waits for the node; the node's own write timeout (preset) is shorter."""


def _client(data_dir) -> ApiClient:
    return ApiClient(_datadir(data_dir), timeout=KV_TIMEOUT)


def _path(key: str) -> str:
    return "/v1/kv/" + urllib.parse.quote(key, safe="")


@click.group()
def kv():
    """Read and write the replicated key/value store (any node forwards writes to the leader)."""


@kv.command("put")
@click.argument("key")
@click.argument("value")
@data_dir_option
def put(key, value, data_dir):
    """Set KEY to VALUE; returns once the write is committed and applied."""
    _client(data_dir).request("PUT", _path(key), {"value": value})
    click.echo(f"{key} = {value}")
    return 0


@kv.command("get")
@click.argument("key")
@click.option("--stale", is_flag=True, help="Read this node's local state (fast, maybe behind).")
@data_dir_option
def get(key, stale, data_dir):
    """Print KEY's value (a linearizable read unless --stale)."""
    click.echo(_client(data_dir).get(_path(key) + ("?stale=1" if stale else ""))["value"])
    return 0


@kv.command("rm")
@click.argument("key")
@data_dir_option
def rm(key, data_dir):
    """Delete KEY."""
    done = _client(data_dir).request("DELETE", _path(key))
    click.echo(f"{key} deleted" if done["deleted"] else f"{key} did not exist")
    return 0
