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


def test_rotating_the_unlock_key_keeps_the_data_key_and_retires_the_old_key(tmp_path):
    import re

    from p2pswarm.node.datadir import DataDir
    from p2pswarm.security import autolock
    d = DataDir(tmp_path / "d")
    d.prepare()
    old = autolock.new_unlock_key()
    autolock.create_lock(d, old)
    dek = autolock.open_lock(d, old)
    autolock.forget(d.path)
    dd = ("--data-dir", str(d.path))
    assert "does not use --autolock" in one_line_error(run("unlock-key", "--rotate", "--data-dir",
                                                           str(tmp_path / "plain")), 1)
    wrong = autolock.format_unlock_key(autolock.new_unlock_key())
    assert "wrong unlock key" in one_line_error(run("unlock-key", "--rotate", *dd, input=wrong + "\n"), 1)
    assert autolock.open_lock(d, old) == dek  # a wrong key changed nothing

    result = run("unlock-key", "--rotate", *dd, input=autolock.format_unlock_key(old) + "\n")
    assert result.exit_code == 0, result.output
    new = autolock.parse_unlock_key(re.search(r"P2PSU-1-[A-Z2-7]+", result.stdout).group(0))
    assert autolock.open_lock(d, new) == dek  # the same data key: the encrypted data stays readable
    with pytest.raises(autolock.WrongUnlockKey):
        autolock.open_lock(d, old)

    shared = tmp_path / "shared.key"
    chosen = autolock.new_unlock_key()
    shared.write_text(autolock.format_unlock_key(chosen) + "\n")
    result = run("unlock-key", "--rotate", *dd, "--new-key-file", str(shared),
                 input=autolock.format_unlock_key(new) + "\n")
    assert result.exit_code == 0 and "P2PSU-1-" not in result.stdout, result.output
    assert autolock.open_lock(d, chosen) == dek
