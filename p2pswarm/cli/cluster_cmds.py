"""`p2pswarm cluster status`, `cluster join-token [--rotate]`, `cluster ca [--rotate]` and
`cluster recover --force-new-cluster`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from p2pswarm.api.client import ApiClient
from p2pswarm.cli.lazy import LazyGroup
from p2pswarm.cli.node_cmds import _datadir, data_dir_option
from p2pswarm.cli.output import table, to_json

RECOVER_HELP = """Rescue a cluster that lost its Raft quorum for good.

Run on the data dir of a STOPPED surviving voter. It rewrites that node's Raft
configuration, from its own state, to a single voter (itself). Start the node
again afterwards (`p2pswarm up --data-dir DIR`, without --peers): it becomes the
leader of a one-voter group and autopilot adds the other live nodes back.

Risks: writes committed only on the lost voters are gone for good; keep the
survivor with the most recent log (highest commit index in `cluster status`).
Never restart a lost voter with its old data dir afterwards: it could form a
rival majority with other old voters. Wipe their data dirs and let them join as
new nodes. See docs/operations.md, "Recovery after quorum loss".
"""


@click.group(cls=LazyGroup, lazy={"backup": "p2pswarm.cli.backup_cmds:backup",
                                  "restore": "p2pswarm.cli.backup_cmds:restore",
                                  "client-cert": "p2pswarm.cli.access_cmds:client_cert",
                                  "client-certs": "p2pswarm.cli.access_cmds:client_certs",
                                  "api-ca": "p2pswarm.cli.access_cmds:api_ca"})
def cluster():
    """The cluster's Raft group and security: status, join token, recovery, backups."""


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise click.BadParameter(f"expected a duration such as 30m, 24h or 7d, got {value!r}") from None
    if not 1 <= seconds <= 10 * 365 * 86400:
        raise click.BadParameter("must be from 1 second to 10 years")
    return seconds


@cluster.command("join-token")
@data_dir_option
@click.option("--rotate", is_flag=True, help="Replace the token: the old one no longer admits new nodes "
                                              "(members are not affected).")
@click.option("--ttl", callback=_duration, default=None, metavar="DURATION",
              help="With --rotate: the new token expires after this long (e.g. 1h, 7d) [default: never].")
@click.option("-q", "--quiet", is_flag=True, help="Print only the token.")
def join_token(data_dir, rotate, ttl, quiet):
    """Print the join token that admits new nodes (secure clusters), or rotate it."""
    if ttl is not None and not rotate:
        raise click.UsageError("--ttl applies to a new token: use it with --rotate")
    client = ApiClient(_datadir(data_dir), timeout=30.0)  # a rotation waits for its Raft commit
    if rotate:
        body = {"rotate": True, "ttl": ttl}
        out = client.request("POST", "/v1/security/join-token", body)
    else:
        out = client.get("/v1/security/join-token")
    if quiet:
        click.echo(out["token"])
        return 0
    addr = client.get("/v1/info")["addr"]
    if rotate:
        click.echo(f"the join token was rotated (generation {out['generation']}); the old one no longer admits "
                   f"new nodes")
    expiry = ""
    if out.get("expires_at"):
        expiry = f" (expires {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(out['expires_at']))})"
    click.echo(f"to add a node to this cluster{expiry}, run on it:\n\n"
               f"    p2pswarm up --peers {addr} --token {out['token']}\n")
    return 0


CA_ROTATION_WAIT = 300.0
"""Seconds `cluster ca --rotate` shows progress before it gives up waiting (the rotation goes on)."""
CA_POLL_INTERVAL = 0.5


@cluster.command("ca")
@data_dir_option
@click.option("--rotate", is_flag=True, help="Replace the cluster CA: a new CA cross-signed by the old one, every "
                                              "member's certificate re-issued, then the old CA dropped (no downtime).")
@click.option("--detach", "-d", is_flag=True, help="With --rotate: return once the rotation started.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def ca(data_dir, rotate, detach, fmt):
    """Show the cluster CA (and a rotation's progress), or rotate it.

    A rotation waits for every member: a node that is down keeps the old CA trusted
    until it is back (or removed with `p2pswarm node rm`). The join token changes
    with the CA: the new one is printed at the end.
    """
    if detach and not rotate:
        raise click.UsageError("--detach applies to --rotate")
    client = ApiClient(_datadir(data_dir), timeout=30.0)
    if rotate:
        out = client.request("POST", "/v1/security/ca", {"rotate": True})
        if not detach:
            out = _follow_rotation(client, out)
    else:
        out = client.get("/v1/security/ca")
    if fmt == "json":
        click.echo(to_json(out))
        return 0
    click.echo(f"cluster CA {out['ca_fingerprint']} (generation {out['generation']})")
    if out["rotating"]:
        click.echo(f"rotation in progress: trusted CAs {', '.join(out['trusted'])}")
        rows = [(node, why) for node, why in sorted(out["pending"].items())]
        if rows:
            click.echo(table(("NODE", "WAITING FOR"), rows))
    if out.get("token"):
        click.echo(f"join token: {out['token']}")
    return 0


def _rotation_line(out: dict) -> str:
    members = out.get("members") or 0
    done = members - len(out.get("pending") or {})
    return f"CA rotation: {done} out of {members} members hold a certificate from CA {out['ca_fingerprint'][:23]}…"


def _follow_rotation(client: ApiClient, out: dict) -> dict:
    """Progress on stderr until the rotation finished; exit 1 with one line if it does not in time."""
    deadline = time.monotonic() + CA_ROTATION_WAIT
    shown = ""
    while out["rotating"]:
        line = _rotation_line(out)
        if line != shown:
            click.echo(("\r\x1b[K" if sys.stderr.isatty() and shown else "") + line,
                       err=True, nl=not sys.stderr.isatty())
            shown = line
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{n} ({why})" for n, why in sorted(out["pending"].items()))
            raise click.ClickException(f"the CA rotation has not finished after {CA_ROTATION_WAIT:.0f} s; it goes "
                                       f"on and waits for: {waiting} (`node rm` a node that will not come back)")
        time.sleep(CA_POLL_INTERVAL)
        out = client.get("/v1/security/ca")
    if shown and sys.stderr.isatty():
        click.echo("", err=True)
    click.echo("CA rotation finished: the old CA is no longer trusted", err=True)
    return out


@cluster.command("status")
@data_dir_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status(data_dir, fmt):
    """Leader, term, commit and applied index, voters and learners with their health."""
    st = ApiClient(_datadir(data_dir)).get("/v1/cluster")
    if fmt == "json":
        click.echo(to_json(st))
        return 0
    leader = f"{st['leader_name']} ({st['leader']})" if st["leader"] else "none (no quorum?)"
    click.echo(f"cluster {st['cluster_id']}  leader {leader}  term {st['term']}")
    click.echo(f"commit index {st['commit_index']}  applied index {st['applied_index']}  "
               f"snapshot index {st['snapshot_index']}")
    if st.get("error"):
        click.echo(f"raft stopped on this node: {st['error']}")
    members = sorted(st["members"], key=lambda m: (not m["leader"], ROLE_ORDER.get(m["role"], 9), m["name"], m["id"]))
    rows = [(m["id"], m["name"], m["addr"] or "-", "leader" if m["leader"] else m["role"], m["health"],
             "-" if m["match"] is None else m["match"]) for m in members]
    click.echo(table(("ID", "NAME", "ADDRESS", "ROLE", "HEALTH", "MATCH"), rows))
    if st["leader"] and st["leader"] != st.get("id") and all(m["match"] is None for m in members):
        click.echo(f"MATCH (how far each member's log matches the leader's) is known to the leader only: run "
                   f"`p2pswarm cluster status` on {st['leader_name'] or st['leader']}")
    return 0


ROLE_ORDER = {"voter": 0, "learner": 1, "worker": 2}
"""``cluster status`` lists the leader, then voters, learners and workers, each by name."""


@cluster.command("recover", help=RECOVER_HELP)
@click.option("--force-new-cluster", is_flag=True, help="Required: confirms the single-voter rewrite.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Data dir of the stopped surviving voter.")
@click.option("--unlock-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
              help="The node's unlock key, if it uses --autolock ('-' reads it from stdin).")
def recover(force_new_cluster, data_dir, unlock_key_file):
    from p2pswarm.consensus.recovery import force_new_cluster as rewrite
    from p2pswarm.security.autolock import read_unlock_key_file
    if not force_new_cluster:
        raise click.UsageError("recover only knows --force-new-cluster; read `p2pswarm cluster recover --help` "
                               "for what it does and its risks")
    done = rewrite(data_dir, None if unlock_key_file is None else read_unlock_key_file(unlock_key_file))
    click.echo(f"node {done['node']} is now the only voter of cluster {done['cluster_id']} (config entry "
               f"{done['index']}, term {done['term']}; old voters {', '.join(done['old_voters'])}); "
               f"start it with `p2pswarm up --data-dir {data_dir}` and autopilot adds the others back")
    return 0
