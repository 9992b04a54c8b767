"""`node inspect`, `node rm` and `stack deploy|ls|rm` against an in-memory cluster state (no sockets, no Raft)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from p2pswarm.api.client import ApiError
from p2pswarm.api.routes import Router
from p2pswarm.api.server import HttpError
from p2pswarm.cli import node_admin_cmds, stack_cmds
from p2pswarm.cli.main import main
from p2pswarm.cluster import commands as cmd

from .test_service_routes import FakeDriver, call


def view(nid, name, status):
    return {"id": nid, "name": name, "addr": f"127.0.0.1:{len(name)}", "status": status, "incarnation": 1,
            "labels": {"zone": "a"}, "capacity": {"cpus": 2.0}, "version": "0.1", "rtt_ms": 1.5, "role": "voter",
            "self": nid == "aaa1", "status_for_s": 1.0}


@pytest.fixture
def router():
    driver = FakeDriver()
    for nid, name in (("aaa1", "a"), ("aab2", "b"), ("ccc3", "c")):
        asyncio.run(driver.write_cluster(cmd.update_node("n" + nid, 1.0, nid, name=name)))
    views = [view("aaa1", "a", "alive"), view("aab2", "b", "alive"), view("ccc3", "c", "dead")]
    node = SimpleNamespace(raft_driver=lambda: driver, agent=None, node_id="aaa1", member_views=lambda: views,
                           security=None, logs=None, port_errors=dict, own_ports=dict)
    return Router(node)


def placed(router, node="ccc3"):
    state = router.node.raft_driver().cluster
    call(router, "POST", "/v1/services", {"spec": {"name": "web", "command": "x"}})
    index = state.applied
    asyncio.run(router.node.raft_driver().write_cluster(
        cmd.assign_tasks("p", 1.0, (1, index), [cmd.placement("web", 1, 1, node)])))
    return next(iter(state.tasks))


def test_node_inspect_merges_swim_and_cluster_state(router):
    tid = placed(router)
    info = call(router, "GET", "/v1/nodes/ccc")
    assert (info["id"], info["name"], info["swim"]["status"], info["swim"]["role"]) == ("ccc3", "c", "dead", "voter")
    assert info["cluster"]["availability"] == "active" and [t["id"] for t in info["cluster"]["tasks"]] == [tid]
    assert call(router, "GET", "/v1/nodes/b")["id"] == "aab2"
    assert call(router, "GET", "/v1/nodes/aab2")["name"] == "b"


@pytest.mark.parametrize("method,path,status,words", [
    ("GET", "/v1/nodes/aa", 400, "ambiguous"),
    ("GET", "/v1/nodes/zzz", 404, "unknown"),
    ("DELETE", "/v1/nodes/a", 409, "is alive"),
    ("DELETE", "/v1/nodes/zzz", 404, "unknown"),
])
def test_node_errors_are_one_line(router, method, path, status, words):
    with pytest.raises(HttpError) as err:
        call(router, method, path)
    assert err.value.status == status and words in str(err.value) and "\n" not in str(err.value)


def test_node_rm_orphans_its_tasks_and_the_id_is_never_reused(router):
    tid = placed(router)
    assert call(router, "DELETE", "/v1/nodes/c") == {"node": "ccc3", "name": "c", "tasks": 1, "raft": "-",
                                                      "secure": False}
    state = router.node.raft_driver().cluster
    assert "ccc3" not in state.nodes and state.tasks[tid].state == "orphaned"
    assert state.tasks[tid].desired == "shutdown"
    with pytest.raises(HttpError, match="no record"):
        call(router, "DELETE", "/v1/nodes/c")
    again = asyncio.run(router.node.raft_driver().write_cluster(cmd.update_node("r", 2.0, "ccc3", name="c")))
    assert not again.ok and "never reused" in again.error
    assert call(router, "DELETE", "/v1/nodes/b", query="force=1")["name"] == "b"  # alive: only with force


class RouterClient:
    """The CLI's ApiClient, answered by the router in memory."""

    def __init__(self, router):
        self.router = router

    def request(self, method, path, body=None):
        path, _, query = path.partition("?")
        try:
            return call(self.router, method, path, body, query)
        except HttpError as exc:
            raise ApiError(str(exc), exc.status) from None

    def get(self, path):
        return self.request("GET", path)


@pytest.fixture
def cli(router, monkeypatch):
    client = RouterClient(router)
    for module in (stack_cmds, node_admin_cmds):
        monkeypatch.setattr(module, "_client", lambda data_dir: client)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, list(args), standalone_mode=False, catch_exceptions=True)
    return run


STACK = """
services:
  web: {command: python app.py, deploy: {replicas: 2}}
  api: {command: python api.py, networks: [x]}
"""


def test_stack_deploy_update_prune_ls_rm(cli, router, tmp_path):
    path = tmp_path / "stack.yml"
    path.write_text(STACK)
    out = cli("stack", "deploy", "-c", str(path), "shop")
    assert out.exit_code == 0, out.output
    assert "Creating service shop_api" in out.output and "Creating service shop_web" in out.output
    assert "warning: service api: key 'networks' is not supported; ignored" in out.output
    services = {s["name"]: s for s in call(router, "GET", "/v1/services")["services"]}
    assert services["shop_web"]["desired"] == 2 and services["shop_web"]["stack"] == "shop"

    path.write_text(STACK.replace("replicas: 2", "replicas: 3").replace("  api: {command: python api.py, "
                                                                        "networks: [x]}\n", ""))
    out = cli("stack", "deploy", "-c", str(path), "shop")
    assert "Updating service shop_web" in out.output and "shop_api is no longer in" in out.output
    assert call(router, "GET", "/v1/services/shop_web")["spec"]["replicas"] == 3
    out = cli("stack", "deploy", "-c", str(path), "shop", "--prune")
    assert "Service shop_web is unchanged" in out.output and "Removing service shop_api" in out.output

    call(router, "POST", "/v1/services", {"spec": {"name": "loner", "command": "x"}})
    out = cli("stack", "ls", "--format", "json")
    assert out.exit_code == 0 and '"services": 1' in out.output and '"shop"' in out.output
    out = cli("stack", "rm", "shop")
    assert "Removing service shop_web" in out.output
    assert [s["name"] for s in call(router, "GET", "/v1/services")["services"]] == ["loner"]
    out = cli("stack", "rm", "shop")
    assert out.exit_code != 0 and "error: stack shop has no services" in out.output


CONFIGURED = """
services:
  web: {image: nginx, configs: [{source: site, target: /etc/nginx/conf.d/site.conf}]}
configs:
  site: {file: site.conf}
"""


def test_stack_deploy_makes_configs_from_files_and_rm_removes_them(cli, router, tmp_path):
    path = tmp_path / "stack.yml"
    path.write_text(CONFIGURED)
    (tmp_path / "site.conf").write_text("server {}\n")
    out = cli("stack", "deploy", "-c", str(path), "shop")
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[:2] == ["Creating config shop_site", "Creating service shop_web"]
    config = call(router, "GET", "/v1/configs/shop_site")
    assert config["labels"] == {"p2pswarm.stack": "shop"} and config["services"] == ["shop_web"]
    assert call(router, "GET", "/v1/services/shop_web")["spec"]["configs"][0]["name"] == "shop_site"
    assert cli("stack", "deploy", "-c", str(path), "shop").output == "Service shop_web is unchanged\n"
    (tmp_path / "site.conf").write_text("server { listen 80; }\n")
    out = cli("stack", "deploy", "-c", str(path), "shop")
    assert out.exit_code != 0 and "config shop_site exists with other contents" in out.output
    (tmp_path / "site.conf").unlink()
    path.write_text(CONFIGURED.replace("site: {file: site.conf}", "site: {file: site.conf, name: site_v2}"))
    out = cli("stack", "deploy", "-c", str(path), "shop")
    assert out.exit_code != 0 and f"cannot read {tmp_path / 'site.conf'}" in out.output  # read before any change
    out = cli("stack", "rm", "shop")
    assert "Removing config shop_site" in out.output, out.output
    assert call(router, "GET", "/v1/configs")["configs"] == []


def test_node_inspect_and_rm_cli(cli, router):
    placed(router)
    out = cli("node", "inspect", "c", "--format", "pretty")
    assert out.exit_code == 0 and "Status:        dead" in out.output and "web.1" in out.output
    out = cli("node", "rm", "a")
    assert out.exit_code != 0 and "error: node a is alive" in out.output
    out = cli("node", "rm", "ccc")
    assert out.exit_code == 0 and "c (ccc3) removed; 1 of its tasks" in out.output
