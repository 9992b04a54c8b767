"""The services API against an in-memory cluster state (no sockets, no Raft)."""

from __future__ import annotations

import asyncio
import inspect
import json
from types import SimpleNamespace

import pytest

from p2pswarm.api.routes import Router
from p2pswarm.api.server import HttpError, Request
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import MAX_ARG_LEN, MAX_ARGS, MAX_REPLICAS, ServiceSpec
from p2pswarm.cluster.state import ClusterState


class FakeDriver:
    """Applies cluster writes at once, as a committed Raft entry would be applied."""

    def __init__(self) -> None:
        self.cluster = ClusterState()
        self.index = 0

    async def write_cluster(self, command: dict):
        self.index += 1
        return self.cluster.apply(command, 1, self.index)

    def removal_blocker(self, node: str) -> str | None:
        return None  # no Raft configuration here: no removal loses a quorum

    def role_of(self, node: str) -> str:
        return "-"


def call(router: Router, method: str, path: str, body=None, query: str = ""):
    request = Request(method, path, {}, b"" if body is None else json.dumps(body).encode(), query)

    async def run():
        response = router(request)
        return await response if inspect.isawaitable(response) else response
    response = asyncio.run(run())
    return json.loads(response.body)


@pytest.fixture
def router():
    driver = FakeDriver()
    asyncio.run(driver.write_cluster(cmd.update_node("n", 1.0, "node-a", name="a")))
    node = SimpleNamespace(raft_driver=lambda: driver, agent=None, node_id="node-a", security=None, logs=None,
                           port_errors=dict, own_ports=dict)
    return Router(node)


def test_create_inspect_scale_update_rm(router):
    spec = ServiceSpec("web", "python", ("app.py",), replicas=2).to_dict()
    assert call(router, "POST", "/v1/services", {"spec": spec}) == {"name": "web", "version": 1}
    info = call(router, "GET", "/v1/services/web")
    assert (info["desired"], info["running"], info["spec"]["args"]) == (2, 0, ["app.py"])
    assert call(router, "POST", "/v1/services/web/scale", {"replicas": 3})["version"] == 2
    assert call(router, "POST", "/v1/services/web/update", {"spec": {**spec, "args": ["b.py"]}, "version": 2})
    assert call(router, "GET", "/v1/services")["services"][0]["desired"] == 2
    assert call(router, "POST", "/v1/services/web/rollback")["version"] == 4
    assert call(router, "GET", "/v1/services/web/tasks") == {"tasks": [], "scheduling_error": "", "port_errors": []}
    assert call(router, "POST", "/v1/nodes/a/update", {"availability": "drain"}) == {"node": "node-a"}
    assert call(router, "DELETE", "/v1/services/web") == {"removed": "web"}
    assert call(router, "GET", "/v1/services") == {"services": []}


@pytest.mark.parametrize("method,path,body,status,words", [
    ("POST", "/v1/services", {"spec": {"name": "Bad!", "command": "x"}}, 400, "name"),
    ("POST", "/v1/services", {"nope": 1}, 400, "spec"),
    ("GET", "/v1/services/ghost", None, 404, "does not exist"),
    ("POST", "/v1/services/ghost/scale", {"replicas": 1}, 400, "does not exist"),
    ("POST", "/v1/services/ghost/scale", {"replicas": -1}, 400, "replicas"),
    ("POST", "/v1/services/ghost/scale", {"replicas": MAX_REPLICAS + 1}, 400, f"from 0 to {MAX_REPLICAS}"),
    ("POST", "/v1/nodes/zz/update", {"availability": "drain"}, 404, "unknown"),
    ("POST", "/v1/nodes/a/update", {"availability": "sleepy"}, 400, "availability"),
    ("PUT", "/v1/services", None, 405, "no such endpoint"),
])
def test_bad_requests_get_one_line(router, method, path, body, status, words):
    with pytest.raises(HttpError) as err:
        call(router, method, path, body)
    assert err.value.status == status and words in str(err.value) and "\n" not in str(err.value)


def test_a_node_port_is_refused_when_a_spec_adds_it_not_when_an_update_keeps_it(router):
    own: dict = {(7946, "tcp"): "node a's gossip port"}
    router.node.own_ports = lambda: dict(own)
    with pytest.raises(HttpError) as err:
        call(router, "POST", "/v1/services", {"spec": ServiceSpec("gossipy", "python", ports=("7946:80",)).to_dict()})
    assert err.value.status == 400 and str(err.value) == (
        "ports: 7946/tcp is node a's gossip port, so the routing mesh cannot listen on it there; publish another port")
    web = ServiceSpec("web", "python", ports=("8080:80",)).to_dict()
    call(router, "POST", "/v1/services", {"spec": web})
    own[(8080, "tcp")] = "node b's gossip port"  # a member that joined later listens on it
    assert call(router, "POST", "/v1/services/web/update", {"spec": {**web, "args": ["b.py"]}, "version": 1})
    with pytest.raises(HttpError, match="7946/tcp is node a's gossip port"):
        call(router, "POST", "/v1/services/web/update",
             {"spec": {**web, "ports": ["8080:80", "7946:81"]}, "version": 2})


def test_a_spec_too_large_for_one_raft_entry_is_refused_in_one_line(router):
    huge = ServiceSpec("web", "python", ("a" * MAX_ARG_LEN,) * MAX_ARGS).to_dict()
    with pytest.raises(HttpError) as err:
        call(router, "POST", "/v1/services", {"spec": huge})
    assert err.value.status == 400 and "\n" not in str(err.value)
    assert str(err.value).startswith("the service spec encodes to ")
    assert f"bytes, over the {cmd.MAX_COMMAND_BYTES}-byte limit of one cluster command" in str(err.value)
    assert call(router, "GET", "/v1/services") == {"services": []}


def test_the_scheduling_error_shows_in_inspect_and_tasks(router):
    spec = ServiceSpec("web", "python", replicas=2).to_dict()
    call(router, "POST", "/v1/services", {"spec": spec})
    driver = router.node.raft_driver()
    asyncio.run(driver.write_cluster(cmd.set_scheduling_error("e", 2.0, "web", "scheduling: refused: boom")))
    assert call(router, "GET", "/v1/services/web")["scheduling_error"] == "scheduling: refused: boom"
    assert call(router, "GET", "/v1/services/web/tasks")["scheduling_error"] == "scheduling: refused: boom"


def test_inspect_says_how_the_answering_node_forwards_each_published_port(router):
    spec = ServiceSpec.from_dict({"name": "web", "command": "python", "replicas": 1,
                                  "ports": [{"published": 8080, "target": 80},
                                            {"published": 5353, "target": 53, "protocol": "udp"}]})
    call(router, "POST", "/v1/services", {"spec": spec.to_dict()})
    routes = [{"port": 8080, "protocol": "tcp", "path": "userspace", "path_why": "PROXY v2 needs user space"}]
    router.node.name = "a"
    router.node.mesh_view = lambda: {"routes": routes}
    paths = call(router, "GET", "/v1/services/web")["mesh_paths"]
    assert paths == [
        {"node": "a", "port": 5353, "protocol": "udp", "path": "none", "path_why": "no route on this node yet"},
        {"node": "a", "port": 8080, "protocol": "tcp", "path": "userspace", "path_why": "PROXY v2 needs user space"}]
    routes[0].update(path="kernel", path_why="")
    assert call(router, "GET", "/v1/services/web")["mesh_paths"][1]["path"] == "kernel"
