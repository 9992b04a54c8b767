"""The access record (client certificates, revocations, the audit log) as a replicated state machine,
and the CLI's target selection (contexts, --host) refusing unusable input with one line."""

from __future__ import annotations

import subprocess
import sys

import msgpack

from p2pswarm.node.statemachine import StateMachines, encode_access
from p2pswarm.security import access
from p2pswarm.security.access import AccessRecord
from p2pswarm.testing.localcluster import REPO, cli_env


def client(serial="ab12", name="alice", role="operator"):
    return access.client_command(f"c.{serial}", serial=serial, name=name, role=role, issued_at=1.0, not_after=9.0,
                                 by="local")


def audit(i):
    return access.audit_command(f"a.{i}", at=float(i), who="alice (ab12)", role="operator", node="n1",
                                method="POST", path=f"/v1/services/s{i}/scale", status=200)


def test_issue_revoke_by_name_and_refuse_bad_commands():
    rec = AccessRecord()
    assert rec.apply(client("ab12")) == (True, "") and rec.apply(client("cd34")) == (True, "")
    assert rec.apply(client("ef56", name="bob", role="admin"))[0]
    assert rec.serials_of("alice") == ["ab12", "cd34"] and rec.serials_of("ef56") == ["ef56"]
    assert rec.serials_of("carol") == []
    assert rec.apply(access.revoke_command("r1", rec.serials_of("alice"))) == (True, "")
    assert rec.revoked == {"ab12", "cd34"}
    version = rec.version
    for bad in (client(serial="XYZ"), client(role="root"), {"id": "x", "op": "revoke", "serials": []},
                {"id": "x", "op": "revoke", "serials": ["not hex"]}, {"id": "x", "op": "audit", "entry": "no"},
                {"id": "x", "op": "drop-table"}):
        ok, why = rec.apply(bad)
        assert not ok and why and "\n" not in why
    assert rec.version == version  # a refused command changes nothing


def test_audit_log_is_bounded_and_keeps_the_newest():
    rec = AccessRecord()
    for i in range(access.AUDIT_KEEP + 25):
        assert rec.apply(audit(i))[0]
    assert len(rec.audit) == access.AUDIT_KEEP and rec.audit_total == access.AUDIT_KEEP + 25
    assert rec.audit[0]["seq"] == 26 and rec.audit[-1]["path"] == f"/v1/services/s{access.AUDIT_KEEP + 24}/scale"
    long = access.audit_command("a.long", at=1.0, who="x" * 5000, role="admin", node="n", method="POST",
                                path="/p", status=200)
    assert rec.apply(long)[0] and len(rec.audit[-1]["who"]) == access.MAX_TEXT


def test_replicas_agree_and_snapshots_restore_the_access_record():
    commands = [client("ab12"), access.revoke_command("r", ["ab12"]), audit(1), client("cd34", name="bob")]
    a, b = StateMachines(), StateMachines()
    for i, command in enumerate(commands, 1):
        key, result = a.apply(i, 1, encode_access(command))
        assert key == command["id"] and result.ok
        b.apply(i, 1, encode_access(command))
    assert a.snapshot() == b.snapshot()
    c = StateMachines()
    c.restore(a.snapshot())
    assert (c.access.revoked, c.access.clients, list(c.access.audit)) == \
        (a.access.revoked, a.access.clients, list(a.access.audit))
    old = msgpack.packb({"kv": a.kv.snapshot(), "cluster": a.cluster.snapshot()}, use_bin_type=True)
    c.restore(old)  # a snapshot from before the access record: empty, not an error
    assert c.access.revoked == set() and c.access.clients == {}


def cli(tmp_path, *args, **env_extra):
    env = {**cli_env(), "HOME": str(tmp_path / "home"), "P2PSWARM_CONFIG_DIR": str(tmp_path / "cfg"), **env_extra}
    env.pop("P2PSWARM_HOST", None)
    return subprocess.run([sys.executable, "-m", "p2pswarm.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)


def test_unusable_targets_are_one_line(tmp_path):
    cases = [
        (("--host", "https://127.0.0.1:1", "service", "ls"), "--host needs a client bundle"),
        (("--host", "ftp://h:1", "--bundle", str(tmp_path), "service", "ls"), "--host must look like https://"),
        (("--host", "https://127.0.0.1:1", "--bundle", str(tmp_path), "service", "ls"), "is not a client bundle"),
        (("context", "create", "x", "--host", "https://h:1", "--bundle", str(tmp_path)), "is not a client bundle"),
        (("context", "use", "nope"), "no context is named nope"),
        (("--context", "nope", "service", "ls"), "no context is named nope"),
    ]
    for args, words in cases:
        result = cli(tmp_path, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1 and words in lines[0], (args, result.stderr)
    assert "* " in cli(tmp_path, "context", "ls").stdout.splitlines()[1]  # default is current
