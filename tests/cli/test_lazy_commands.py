"""Commands are imported when they run: a command that talks to a node's API does not load the daemon,
the certificate code or the simulator, and every command named in the table exists."""

from __future__ import annotations

import json
import subprocess
import sys

import click
from click.testing import CliRunner

from p2pswarm.cli.main import COMMANDS, main
from p2pswarm.testing.localcluster import REPO, cli_env

PROBE = """
import json, sys
from p2pswarm.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("p2pswarm.", "cryptography")))))
"""


def modules_loaded_by(*argv: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=REPO,
                         env=cli_env(), timeout=60, stdin=subprocess.DEVNULL)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_api_command_loads_neither_the_daemon_nor_certificates_nor_other_commands(tmp_path):
    loaded = modules_loaded_by("service", "ls", "--data-dir", str(tmp_path))
    assert "p2pswarm.cli.service_cmds" in loaded
    for heavy in ("p2pswarm.node.daemon", "cryptography", "p2pswarm.sim.raft_sim", "p2pswarm.lab.cluster",
                  "p2pswarm.cli.stack_cmds", "p2pswarm.api.remote_client"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in loaded), heavy


def test_every_command_in_the_table_resolves_and_is_listed():
    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    node = main.get_command(ctx, "node")
    cluster = main.get_command(ctx, "cluster")
    assert isinstance(node, click.Group) and isinstance(cluster, click.Group)
    assert set(node.list_commands(ctx)) == {"inspect", "ls", "rm", "update"}
    for group in (node, cluster):
        for name in group.list_commands(ctx):
            assert group.get_command(ctx, name) is not None, name
    assert {"backup", "restore", "client-cert", "client-certs", "api-ca", "status"} <= set(cluster.list_commands(ctx))


def test_a_mistyped_command_names_the_closest_one_and_version_answers():
    typo = CliRunner().invoke(main, ["servce", "ls"])
    assert typo.exit_code == 2
    assert typo.output.strip() == "error: No such command 'servce' (did you mean 'service'?)."
    sub = CliRunner().invoke(main, ["node", "lss"])
    assert (sub.exit_code, sub.output.strip()) == (2, "error: No such command 'lss' (did you mean 'ls'?).")
    nothing = CliRunner().invoke(main, ["zzzz"])
    assert (nothing.exit_code, nothing.output.strip()) == (2, "error: No such command 'zzzz'.")
    version = CliRunner().invoke(main, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("p2pswarm ")
