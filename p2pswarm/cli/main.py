"""The `p2pswarm` command line: a click group whose every error is one line on stderr.

Commands talk to a node's API: the local node's unix socket, or a remote node over TLS with a
client bundle (`--host`/`P2PSWARM_HOST`, `--context`, `p2pswarm context use`); `up` starts a node.
`--debug` (or P2PSWARM_DEBUG=1) shows tracebacks instead of one-line errors.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from p2pswarm.cli.output import error


class OneLineErrors(click.Group):
    """Turn every failure into `error: <one line>` and an exit code: 2 for usage, 1 otherwise."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args or os.environ.get("P2PSWARM_DEBUG") == "1"
        try:
            rv = super().main(args, prog_name or "p2pswarm", complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "", err=False)
            sys.exit(0)
        except click.ClickException as exc:
            if debug:
                traceback.print_exc()
            error(exc.format_message())
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            error("interrupted")
            sys.exit(130)
        except SystemExit:
            raise
        except Exception as exc:
            if debug:
                traceback.print_exc()
            error(exc)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


LOCAL_ONLY = frozenset({"up", "down", "unlock", "unlock-key", "lab", "sim", "context"})
"""Commands that act on this machine only: a remote target (--host, a context) does not apply."""


@click.group(cls=OneLineErrors, no_args_is_help=True)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("--host", envvar="P2PSWARM_HOST", default=None, metavar="https://HOST:PORT",
              help="Talk to a remote node's --api-addr (with --bundle) [env: P2PSWARM_HOST].")
@click.option("--bundle", envvar="P2PSWARM_BUNDLE", default=None, metavar="DIR",
              help="Client bundle for --host (`p2pswarm cluster client-cert`) [env: P2PSWARM_BUNDLE].")
@click.option("--context", "context_name", envvar="P2PSWARM_CONTEXT", default=None, metavar="NAME",
              help="Use this context for one command (`p2pswarm context ls`) [env: P2PSWARM_CONTEXT].")
@click.pass_context
def main(ctx: click.Context, debug: bool, host: str | None, bundle: str | None, context_name: str | None) -> None:
    """p2pswarm: a peer-to-peer cluster orchestrator (every node is equal)."""
    if ctx.invoked_subcommand not in LOCAL_ONLY:
        from p2pswarm.api.client import use_remote
        from p2pswarm.cli.context_cmds import target
        use_remote(target(host, bundle, context_name))


# ---- command groups: add new ones here with main.add_command(...)
from p2pswarm.cli.node_cmds import down, node, up  # noqa: E402

main.add_command(up)
main.add_command(down)
main.add_command(node)

from p2pswarm.cli.sim_cmds import sim  # noqa: E402

main.add_command(sim)

from p2pswarm.cli.lab_cmds import lab  # noqa: E402

main.add_command(lab)

from p2pswarm.cli.cluster_cmds import cluster  # noqa: E402
from p2pswarm.cli.kv_cmds import kv  # noqa: E402

main.add_command(cluster)
main.add_command(kv)

from p2pswarm.cli.service_cmds import node_update, service  # noqa: E402

main.add_command(service)
node.add_command(node_update)

from p2pswarm.cli.node_admin_cmds import node_inspect, node_rm  # noqa: E402
from p2pswarm.cli.stack_cmds import stack  # noqa: E402

node.add_command(node_inspect)
node.add_command(node_rm)
main.add_command(stack)

from p2pswarm.cli.top_cmds import top  # noqa: E402

main.add_command(top)

from p2pswarm.cli.events_cmds import events  # noqa: E402

main.add_command(events)

from p2pswarm.cli.mesh_cmds import mesh  # noqa: E402

main.add_command(mesh)

from p2pswarm.cli.dashboard_cmds import dashboard  # noqa: E402

main.add_command(dashboard)

from p2pswarm.cli.volume_cmds import volume  # noqa: E402

main.add_command(volume)

from p2pswarm.cli.object_cmds import config, secret  # noqa: E402

main.add_command(secret)
main.add_command(config)

from p2pswarm.cli.lock_cmds import unlock, unlock_key  # noqa: E402

main.add_command(unlock)
main.add_command(unlock_key)

from p2pswarm.cli.access_cmds import api_ca, audit, client_cert, client_certs  # noqa: E402
from p2pswarm.cli.backup_cmds import backup, restore  # noqa: E402
from p2pswarm.cli.context_cmds import context  # noqa: E402

cluster.add_command(backup)
cluster.add_command(restore)

cluster.add_command(client_cert)
cluster.add_command(client_certs)
cluster.add_command(api_ca)
main.add_command(audit)
main.add_command(context)


if __name__ == "__main__":
    main()
