"""``p2pswarm events``: what happened in the cluster and on this node, then what happens next (like
``docker events``).  Events of the cluster state come from the Raft log (every node shows the same
ones, in log order); those this node saw itself (SWIM's view of members, the leader it follows) are
marked ``local``.  Following polls the node with a cursor (``GET /v1/events``)."""

from __future__ import annotations

import json
import time
import urllib.parse

import click

from p2pswarm.api.client import ApiClient
from p2pswarm.cli.node_cmds import _datadir, data_dir_option
from p2pswarm.events.derive import TYPES
from p2pswarm.events.timespec import parse_time

POLL = 0.5
"""Seconds between two polls while following."""
API_TIMEOUT = 10.0


def parse_option_time(value: str | None, option: str) -> float | None:
    """Unix seconds of a ``--since`` / ``--until`` value (None when not given); a click error (one line)."""
    if value is None:
        return None
    try:
        return parse_time(value, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _types(filters: tuple[str, ...]) -> list[str]:
    out = []
    for f in filters:
        key, sep, value = f.partition("=")
        if key != "type" or not sep:
            raise click.BadParameter(f"expected type=TYPE, got {f[:40]!r}", param_hint="--filter")
        if value not in TYPES:
            raise click.BadParameter(f"type must be one of {', '.join(TYPES)}, got {value[:40]!r}",
                                     param_hint="--filter")
        out.append(value)
    return out


def stamp(at: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return f"{whole}.{int(round((at % 1) * 1e6)) % 1000000:06d}Z"


def render(event: dict) -> str:
    """``2026-12-06T15:04:05.000000Z task rescheduled 12.0 (node=n2, reason=orphaned: ...)`` on one line."""
    attrs = ", ".join(f"{k}={v}" for k, v in sorted(event["attrs"].items()))
    where = f" #{event['index']}" if event["index"] else " local"
    line = f"{stamp(event['at'])} {event['type']} {event['action']} {event['subject']}"
    return line + (f" ({attrs})" if attrs else "") + where


@click.command("events")
@click.option("--since", default=None, help="Show events from this time on (RFC 3339, unix seconds or e.g. 10m).")
@click.option("--until", default=None, help="Stop at this time instead of following (same forms as --since).")
@click.option("--filter", "filters", multiple=True, metavar="type=TYPE",
              help=f"Only events of TYPE ({', '.join(TYPES)}); repeatable.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per line.")
@data_dir_option
def events(since, until, filters, fmt, data_dir):
    """Print the cluster's events (service, task, node, raft, cluster) and follow new ones until Ctrl-C
    (or until --until). Without --since only new events are shown."""
    since_at, until_at = parse_option_time(since, "--since"), parse_option_time(until, "--until")
    types = _types(filters)
    client = ApiClient(_datadir(data_dir), timeout=API_TIMEOUT)
    options: dict[str, str] = {"type": ",".join(types)}
    if since_at is not None:
        options["since"] = repr(since_at)
    if until_at is not None:
        options["until"] = repr(until_at)
    cursor = None
    try:
        while True:
            query = dict(options, **({} if cursor is None else {"after": str(cursor)}))
            got = client.get("/v1/events?" + urllib.parse.urlencode(query))
            for event in got["events"]:
                click.echo(json.dumps(event, sort_keys=True) if fmt == "json" else render(event))
            cursor = got["cursor"]
            if got["more"]:
                continue
            if until_at is not None and time.time() >= until_at:
                return 0
            time.sleep(POLL)
    except KeyboardInterrupt:
        return 0
