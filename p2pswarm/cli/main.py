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

from p2pswarm.cli.lazy import LazyGroup
from p2pswarm.cli.output import error


class OneLineErrors(LazyGroup):
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


COMMANDS = {
    "up": "p2pswarm.cli.node_cmds:up",
    "down": "p2pswarm.cli.node_cmds:down",
    "node": "p2pswarm.cli.node_cmds:node",
    "service": "p2pswarm.cli.service_cmds:service",
    "stack": "p2pswarm.cli.stack_cmds:stack",
    "cluster": "p2pswarm.cli.cluster_cmds:cluster",
    "kv": "p2pswarm.cli.kv_cmds:kv",
    "secret": "p2pswarm.cli.object_cmds:secret",
    "config": "p2pswarm.cli.object_cmds:config",
    "volume": "p2pswarm.cli.volume_cmds:volume",
    "mesh": "p2pswarm.cli.mesh_cmds:mesh",
    "events": "p2pswarm.cli.events_cmds:events",
    "top": "p2pswarm.cli.top_cmds:top",
    "dashboard": "p2pswarm.cli.dashboard_cmds:dashboard",
    "audit": "p2pswarm.cli.access_cmds:audit",
    "context": "p2pswarm.cli.context_cmds:context",
    "unlock": "p2pswarm.cli.lock_cmds:unlock",
    "unlock-key": "p2pswarm.cli.lock_cmds:unlock_key",
    "lab": "p2pswarm.cli.lab_cmds:lab",
    "sim": "p2pswarm.cli.sim_cmds:sim",
}
"""Every top-level command, imported when it runs (:mod:`p2pswarm.cli.lazy`): add new ones here."""


@click.group(cls=OneLineErrors, no_args_is_help=True, lazy=COMMANDS)
@click.version_option(package_name="p2pswarm", message="p2pswarm %(version)s")
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


if __name__ == "__main__":
    main()
