"""A scheduling command that cannot commit is one warning in the log and an error in `service ps`, never a
silent stall; the error goes away (and the log says so) once scheduling succeeds again."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from click.testing import CliRunner

from p2pswarm.api.routes import Router
from p2pswarm.cli import service_cmds
from p2pswarm.cli.main import main
from p2pswarm.consensus.requests import RaftUnavailable

from ..services.test_node_stack_cli import RouterClient
from .test_driver import for_bad, setup

TIMEOUT = "no commit within 10 s: 1 of 3 voters reachable; restore a quorum"


def service_ps(leader, monkeypatch, name):
    router = Router(SimpleNamespace(raft_driver=lambda: leader, agent=None, node_id="node-a", security=None,
                                    logs=None, port_errors=dict, own_ports=dict))
    monkeypatch.setattr(service_cmds, "_client", lambda data_dir: RouterClient(router))
    out = CliRunner().invoke(main, ["service", "ps", name], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return out


def test_a_command_that_cannot_commit_warns_once_and_shows_in_service_ps(caplog, monkeypatch):
    leader, sched, clock = setup()
    leader.refuse = for_bad(RaftUnavailable(TIMEOUT))
    with caplog.at_level(logging.DEBUG, logger="p2pswarm.scheduler"):
        for turn in range(40):  # 40 scheduler turns of 0.5 s: several back-offs end and the service is retried
            clock[0] = turn * 0.5
            asyncio.run(sched._round(leader))
    assert leader.attempts("bad") >= 4 and leader.assigned("good") == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"service bad: scheduling: proposal failed: {TIMEOUT} (assign_tasks ")
    assert warnings[0].endswith("; retrying in 1 s")
    out = service_ps(leader, monkeypatch, "bad")
    assert out.stderr == f"bad: scheduling: proposal failed: {TIMEOUT}\n"
    assert service_ps(leader, monkeypatch, "good").stderr == ""

    caplog.clear()
    leader.refuse = lambda command: None
    with caplog.at_level(logging.INFO, logger="p2pswarm.scheduler"):
        clock[0] = 60.0
        asyncio.run(sched._round(leader))
    assert leader.assigned("bad") == 2 and service_ps(leader, monkeypatch, "bad").stderr == ""
    assert [r.getMessage() for r in caplog.records] == ["service bad: scheduling succeeds again"]


def test_a_different_error_is_warned_about_again(caplog):
    leader, sched, clock = setup()
    leader.refuse = for_bad(RaftUnavailable(TIMEOUT))
    with caplog.at_level(logging.WARNING, logger="p2pswarm.scheduler"):
        asyncio.run(sched._round(leader))
        leader.refuse = for_bad(ValueError("the command is 1048600 bytes; the limit is 1048576"))
        clock[0] = 1.0
        asyncio.run(sched._round(leader))
    assert [r.getMessage().split(": ", 3)[3].split(" (")[0] for r in caplog.records] == [
        TIMEOUT, "the command is 1048600 bytes; the limit is 1048576"]
    assert leader.cluster.services["bad"].scheduling_error.endswith("the limit is 1048576")

