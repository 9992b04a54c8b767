"""The security flags of the CLI, without processes: one-line usage errors and the token command's output."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from p2pswarm.cli.main import main

pytestmark = pytest.mark.timeout(60)


def run(*args, **kw):
    return CliRunner().invoke(main, list(args), **kw)


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_flag_errors_are_one_line(tmp_path):
    line = one_line_error(run("up", "--data-dir", str(tmp_path / "d"), "--insecure", "--token", "P2PS-1-x"), 2)
    assert "--token" in line and "secure" in line
    assert "--rotate" in one_line_error(run("cluster", "join-token", "--ttl", "1h", "--data-dir", str(tmp_path)), 2)
    assert "duration" in one_line_error(run("cluster", "join-token", "--rotate", "--ttl", "soon",
                                            "--data-dir", str(tmp_path)), 2)
    assert "no p2pswarm node is running" in one_line_error(run("cluster", "join-token", "--data-dir",
                                                                str(tmp_path / "none")), 1)


def test_a_joiner_without_a_token_stops_before_anything_starts(tmp_path):
    line = one_line_error(run("up", "--data-dir", str(tmp_path / "j"), "--bind", "127.0.0.1:0",
                              "--peers", "127.0.0.1:9", "--preset", "test"), 1)
    assert "joining a cluster needs its join token: pass --token" in line
    line = one_line_error(run("up", "--data-dir", str(tmp_path / "j"), "--bind", "127.0.0.1:0",
                              "--peers", "127.0.0.1:9", "--preset", "test", env={"P2PSWARM_TOKEN": "nonsense"}), 1)
    assert "malformed join token" in line
