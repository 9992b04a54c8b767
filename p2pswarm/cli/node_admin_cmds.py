"""`p2pswarm node inspect` and `p2pswarm node rm`: one node's merged view, and removing a node."""

from __future__ import annotations

import urllib.parse

import click

from p2pswarm.cli.node_cmds import data_dir_option
from p2pswarm.cli.output import fmt_labels, fmt_rtt, to_json
from p2pswarm.cli.service_cmds import _client


def _path(node: str) -> str:
    return "/v1/nodes/" + urllib.parse.quote(node, safe="")


def pretty(info: dict) -> str:
    """``docker node inspect --pretty``-like text of a ``GET /v1/nodes/NODE`` answer."""
    swim, cluster = info["swim"] or {}, info["cluster"] or {}
    lines = [f"ID:            {info['id']}", f"Name:          {info['name']}"]
    if "engine" in info:
        lines += [f"Engine:        {info['engine']}", f"Isolation:     {info['isolation']}"]
    if swim:
        lines += [f"Address:       {swim['addr']}", f"Status:        {swim['status']}",
                  f"Raft role:     {swim['role']}", f"RTT:           {fmt_rtt(swim['rtt_ms'])}",
                  f"DNS:           {swim.get('dns') or '- (none)'}",
                  f"Version:       {swim['version']}", f"SWIM labels:   {fmt_labels(swim['labels'])}",
                  f"Capacity:      {fmt_labels({k: str(v) for k, v in swim['capacity'].items()})}"]
    else:
        lines.append("Status:        not in the SWIM membership (reaped or never seen)")
    if cluster:
        lines += [f"Availability:  {cluster['availability']}", f"Labels:        {fmt_labels(cluster['labels'])}",
                  f"Tasks:         {len(cluster['tasks'])}"]
        lines += [f"  {t['service']}.{t['slot'] or info['id']}  {t['id']}  {t['state']}"
                  + (f" ({t['health']})" if t["health"] else "") for t in cluster["tasks"]]
    else:
        lines.append("Availability:  - (no record in the cluster state yet)")
    return "\n".join(lines)


@click.command("inspect")
@click.argument("node")
@click.option("--format", "fmt", type=click.Choice(["json", "pretty"]), default="json", show_default=True)
@data_dir_option
def node_inspect(node, fmt, data_dir):
    """Show NODE (id, id prefix or name): its SWIM view merged with its cluster record and tasks."""
    info = _client(data_dir).get(_path(node))
    click.echo(to_json(info) if fmt == "json" else pretty(info))
    return 0


@click.command("rm")
@click.argument("node")
@click.option("--force", is_flag=True, help="Remove the node even though it is alive and not drained.")
@data_dir_option
def node_rm(node, force, data_dir):
    """Remove NODE (id, id prefix or name): its tasks are replaced elsewhere and it leaves the Raft group.

    Refused while the node is alive and not drained, unless --force (drain it first:
    `p2pswarm node update --availability drain NODE`), and for a voter whose removal would leave
    the other voters without a quorum (autopilot replaces dead voters first).  Its id is never
    reused: a node restarted with the same data dir gets no tasks and no Raft membership
    (start it with a fresh data dir).

    In a secure cluster the removed node's data dir is treated as lost to an attacker: the
    cluster key, the CA and the join token are rotated (new nodes need the new token from
    `p2pswarm cluster join-token`)."""
    done = _client(data_dir).request("DELETE", _path(node) + ("?force=1" if force else ""))
    role = done.get("raft", "-")
    raft = f"; it leaves the Raft group (it was {'the leader' if role == 'leader' else 'a ' + role})" \
        if role in ("leader", "voter", "learner") else ""
    click.echo(f"{done['name']} ({done['node']}) removed; {done['tasks']} of its tasks will be replaced{raft}")
    if done.get("secure"):
        click.echo("the cluster key, the CA and the join token are being rotated: new nodes need the new token "
                   "(`p2pswarm cluster join-token`)")
    return 0
