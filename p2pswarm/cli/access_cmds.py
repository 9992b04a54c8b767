"""`p2pswarm cluster client-cert NAME --role ROLE`, `cluster client-certs`, `cluster api-ca` and `p2pswarm audit`.

The key of a client bundle is made here and never leaves this machine: the node signs its
public key (:mod:`p2pswarm.api.access_routes`).
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from pathlib import Path

import click

from p2pswarm.api.client import ApiClient
from p2pswarm.cli.cluster_cmds import _duration
from p2pswarm.cli.node_cmds import _datadir, data_dir_option
from p2pswarm.cli.output import table, to_json
from p2pswarm.security.access import ROLES
from p2pswarm.security.clientcerts import BundleError, new_client_key, write_bundle

WRITE_TIMEOUT = 30.0
"""Seconds to wait for an issue or a revocation to commit through Raft (an election fits)."""


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


@click.command("client-cert")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default=None,
              help="What the bundle may do: read-only (ls, ps, inspect, logs, metrics, top), operator (services, "
                   "stacks, kv) or admin (nodes, tokens, CA, client certificates).")
@click.option("--ttl", callback=_duration, default=None, metavar="DURATION",
              help="Lifetime of the certificate (e.g. 12h, 30d) [default: 30d].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write the bundle to [default: ./p2pswarm-client-NAME].")
@click.option("--revoke", is_flag=True, help="Revoke every certificate issued to NAME (or the one with serial NAME).")
@data_dir_option
def client_cert(name, role, ttl, out, revoke, data_dir):
    """Issue a client bundle for remote CLIs (ca.pem, cert.pem, key.pem, bundle.json), or revoke NAME's.

    Use it with `p2pswarm context create CTX --host https://NODE:PORT --bundle DIR`.
    """
    client = ApiClient(_datadir(data_dir), timeout=WRITE_TIMEOUT)
    if revoke:
        if role or ttl or out:
            raise click.UsageError("--revoke takes only NAME")
        done = client.request("DELETE", f"/v1/security/client-certs/{urllib.parse.quote(name, safe='')}")
        click.echo(f"revoked {len(done['revoked'])} client certificate(s) of {name}: {', '.join(done['revoked'])}")
        return 0
    if role is None:
        raise click.UsageError(f"--role is required: one of {', '.join(ROLES)}")
    out = out or Path(f"p2pswarm-client-{name}")
    if out.exists() and any(out.iterdir()):
        raise click.ClickException(f"{out} exists and is not empty; choose another --out")
    public, key_pem = new_client_key(secrets.token_bytes(32))
    body = {"name": name, "role": role, "public_key": public.hex(), **({"ttl": ttl} if ttl else {})}
    got = client.post("/v1/security/client-certs", body)
    info = {k: got[k] for k in ("cluster_id", "name", "role", "serial", "not_after")}
    try:
        write_bundle(out, ca_pem=got["ca"], cert_pem=got["cert"], key_pem=key_pem, info=info)
    except (BundleError, OSError) as exc:
        raise click.ClickException(f"the certificate was issued (serial {got['serial']}) but the bundle cannot be "
                                   f"written: {exc}; revoke it with `p2pswarm cluster client-cert {got['serial']} "
                                   f"--revoke`") from None
    click.echo(f"client bundle for {name} ({role}, serial {got['serial']}, expires {_when(got['not_after'])} UTC) "
               f"written to {out}\nuse it with: p2pswarm context create NAME --host https://NODE:PORT --bundle {out}")
    return 0


@click.command("client-certs")
@data_dir_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def client_certs(data_dir, fmt):
    """List the client certificates issued in this cluster."""
    rows = ApiClient(_datadir(data_dir)).get("/v1/security/client-certs")["client_certs"]
    if fmt == "json":
        click.echo(to_json(rows))
        return 0
    now = time.time()
    click.echo(table(("NAME", "ROLE", "SERIAL", "ISSUED", "EXPIRES", "STATE"),
                     [(r["name"], r["role"], r["serial"], _when(r["issued_at"]), _when(r["not_after"]),
                       "revoked" if r["revoked"] else "expired" if r["not_after"] < now else "valid") for r in rows]))
    return 0


@click.command("api-ca")
@data_dir_option
@click.option("--rotate", is_flag=True, help="Replace the API CA: every client bundle stops working and must be "
                                              "issued again (use it after removing a node whose data dir may leak).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def api_ca(data_dir, rotate, fmt):
    """Show the API CA (which signs client bundles and the nodes' --api-addr certificates), or rotate it."""
    client = ApiClient(_datadir(data_dir), timeout=WRITE_TIMEOUT)
    out = client.request("POST", "/v1/security/api-ca", {"rotate": True}) if rotate else \
        client.get("/v1/security/api-ca")
    if fmt == "json":
        click.echo(to_json(out))
    elif out["fingerprint"] is None:
        click.echo("no API CA yet: the first `p2pswarm cluster client-cert` or node serving --api-addr makes it")
    else:
        click.echo(f"API CA {out['fingerprint']} (generation {out['generation']}, {out['clients']} client "
                   f"certificate(s) issued)")
        if rotate:
            click.echo("rotated: every client bundle of the old API CA is refused; issue new ones with "
                       "`p2pswarm cluster client-cert NAME --role ROLE`")
    return 0


@click.command("audit")
@data_dir_option
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Newest entries to show.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def audit(data_dir, limit, fmt):
    """Show the audit log: every mutating API call (who, what, when, on which node, with what result)."""
    got = ApiClient(_datadir(data_dir)).get(f"/v1/audit?limit={limit}")
    if fmt == "json":
        click.echo(to_json(got))
        return 0
    click.echo(table(("WHEN (UTC)", "WHO", "ROLE", "NODE", "CALL", "STATUS"),
                     [(_when(e["at"]), e["who"], e["role"], e["node"], f"{e['method']} {e['path']}", e["status"])
                      for e in got["entries"]]))
    return 0
