"""`volume ls|rm` through the API and the CLI, and bind sources checked at create (in memory: no sockets, no Raft)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from p2pswarm.api.routes import Router
from p2pswarm.api.server import HttpError
from p2pswarm.cli import volume_cmds
from p2pswarm.cli.main import main
from p2pswarm.cluster import commands as cmd
from p2pswarm.runtime.volumes import Volumes

from .test_node_stack_cli import RouterClient
from .test_service_routes import FakeDriver, call

NODE = "node-a1b2c3"


@pytest.fixture
def router(tmp_path):
    driver = FakeDriver()
    asyncio.run(driver.write_cluster(cmd.update_node("n", 1.0, NODE, name="a")))
    agent = SimpleNamespace(volumes=Volumes(tmp_path / "vols", NODE))
    node = SimpleNamespace(raft_driver=lambda: driver, agent=agent, node_id=NODE, name="a", security=None, logs=None,
                           own_ports=dict)
    return Router(node)


def run_task(router, mount: str, state: str = "running") -> str:
    """A service mounting ``mount`` with its one task placed on this node and reported in ``state``."""
    driver = router.node.raft_driver()
    call(router, "POST", "/v1/services", {"spec": {"name": "web", "command": "x", "mounts": [mount]}})
    asyncio.run(driver.write_cluster(cmd.assign_tasks("p", 1.0, (1, driver.cluster.applied),
                                                      [cmd.placement("web", 1, 1, NODE)])))
    tid = next(iter(driver.cluster.tasks))
    asyncio.run(driver.write_cluster(cmd.report_task_status("s", 2.0, tid, state, node=NODE)))
    return tid


def test_ls_shows_each_volume_with_its_size_and_users_and_rm_waits_until_unused(router):
    volumes = router.node.agent.volumes
    (volumes.ensure("data", None, None) / "f").write_bytes(b"x" * 8192)
    volumes.ensure("cache", None, None)
    tid = run_task(router, "source=data,target=/data")
    listed = call(router, "GET", "/v1/volumes")
    assert (listed["node"], listed["node_name"], listed["in_use_known"]) == (NODE, "a", True)
    assert [(v["name"], v["in_use"]) for v in listed["volumes"]] == [("cache", []), ("data", ["web.1"])]
    assert listed["volumes"][1]["size"] >= 8192 and listed["volumes"][1]["size_complete"]
    with pytest.raises(HttpError) as err:
        call(router, "DELETE", "/v1/volumes/data")
    assert err.value.status == 409 and str(err.value) == ("volume data is in use by task(s) web.1 on node a; remove "
                                                          "or update the services that mount it first")
    assert volumes.path("data").is_dir()
    driver = router.node.raft_driver()
    asyncio.run(driver.write_cluster(cmd.report_task_status("s2", 3.0, tid, "failed", node=NODE)))
    with pytest.raises(HttpError, match="in use by task"):  # between two restarts: the service still mounts it
        call(router, "DELETE", "/v1/volumes/data")
    call(router, "DELETE", "/v1/services/web")
    assert call(router, "DELETE", "/v1/volumes/data") == {"removed": "data", "node": NODE}
    assert not volumes.path("data").exists() and volumes.names() == ["cache"]


@pytest.mark.parametrize("method,path,query,status,words", [
    ("DELETE", "/v1/volumes/ghost", "", 404, "volume ghost does not exist on node a"),
    ("DELETE", "/v1/volumes/..", "", 400, "volume name '..' must be"),
    ("GET", "/v1/volumes", "node=node-zz", 400, "run `p2pswarm volume ls` on node node-zz"),
])
def test_volume_errors_are_one_line(router, method, path, query, status, words):
    with pytest.raises(HttpError) as err:
        call(router, method, path, query=query)
    assert err.value.status == status and words in str(err.value) and "\n" not in str(err.value)


def test_ls_accepts_this_nodes_id_prefix_or_name(router):
    for node in (NODE, "node-a1", "a"):
        assert call(router, "GET", "/v1/volumes", query=f"node={node}")["node"] == NODE


def test_create_refuses_a_bind_source_missing_on_the_receiving_node(router, tmp_path):
    bad = {"name": "web", "command": "x", "mounts": ["type=bind,source=/srv/no-such-p2ps,target=/x"]}
    with pytest.raises(HttpError) as err:
        call(router, "POST", "/v1/services", {"spec": bad})
    assert err.value.status == 400 and "bind source path does not exist: /srv/no-such-p2ps" in str(err.value)
    good = {**bad, "mounts": [f"type=bind,source={tmp_path},target=/x,readonly"]}
    assert call(router, "POST", "/v1/services", {"spec": good})["name"] == "web"


def test_the_cli_lists_and_removes(router, monkeypatch):
    monkeypatch.setattr(volume_cmds, "_client", lambda data_dir: RouterClient(router))
    router.node.agent.volumes.ensure("data", None, None)
    runner = CliRunner()
    out = runner.invoke(main, ["volume", "ls"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == f"NODE a ({NODE[:12]})" and lines[1].split() == ["VOLUME", "NAME", "SIZE", "IN", "USE", "BY"]
    assert lines[2].split()[0] == "data" and lines[2].split()[-1] == "-"
    assert json.loads(runner.invoke(main, ["volume", "ls", "--format", "json"]).output)["volumes"][0]["name"] == "data"
    assert runner.invoke(main, ["volume", "rm", "data"]).output == "data\n"
    out = runner.invoke(main, ["volume", "rm", "data"])
    assert out.exit_code == 1 and out.output.strip() == "error: volume data does not exist on node a (see `p2pswarm " \
                                                        "volume ls`)"
